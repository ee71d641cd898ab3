#!/usr/bin/env bash
# Data-parallel training on one machine (or several) with torchrun:
#   bash tools/dist_train.sh CONFIG NUM_PROCS [tools/train.py options...]
# One process per GPU; without GPUs the processes train on CPUs (gloo).
# Environment: NNODES, NODE_RANK, MASTER_ADDR, PORT (default 29500).
set -eo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash $0 CONFIG NUM_PROCS [train.py options...]" >&2
    exit 2
fi
exec bash "$(dirname "$0")/torchrun.sh" train.py "$2" "$1" "${@:3}"
