#!/usr/bin/env bash
# Data-parallel tools/quantize.py with torchrun:
#   bash tools/dist_quantize.sh CONFIG CHECKPOINT NUM_PROCS [quantize.py options...]
# One process per GPU; without GPUs the processes run on CPUs (gloo).
# Environment: NNODES, NODE_RANK, MASTER_ADDR, PORT (default 29500).
set -eo pipefail
if [ $# -lt 3 ]; then
    echo "usage: bash $0 CONFIG CHECKPOINT NUM_PROCS [quantize.py options...]" >&2
    exit 2
fi
exec bash "$(dirname "$0")/torchrun.sh" quantize.py "$3" "$1" "$2" "${@:4}"
