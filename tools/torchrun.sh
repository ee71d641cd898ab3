#!/usr/bin/env bash
# torchrun SCRIPT with one process per GPU (CPUs over gloo without GPUs):
#   bash tools/torchrun.sh SCRIPT NUM_PROCS [script arguments...]
# Used by dist_train.sh and dist_quantize.sh.
# Environment: NNODES, NODE_RANK, MASTER_ADDR, PORT (default 29500).
set -eo pipefail
SCRIPT=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
torchrun \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$ROOT/tools/$SCRIPT" "${@:3}" --launcher pytorch
