#!/usr/bin/env bash
# Train on several GPUs (or CPU processes, over gloo) of one or more machines:
#   bash tools/dist_train.sh CONFIG GPUS [train.py options]
# Several nodes: run it on each node with NNODES, NODE_RANK, MASTER_ADDR (and PORT) set.
# PYTHON: the interpreter (default: python on PATH, e.g. an activated venv's).
set -euo pipefail
USAGE='bash tools/dist_train.sh CONFIG GPUS [train.py options]'
if [[ $# -lt 1 || $1 == -* ]]; then
    echo "dist_train.sh: CONFIG is missing${1:+ (got the option $1 in its place)}: $USAGE" >&2
    exit 2
fi
if [[ $# -lt 2 || $2 == -* ]]; then
    echo "dist_train.sh: GPUS, the number of processes on this node, is missing${2:+ (got the option $2 in its place)}: $USAGE" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
HERE=$(cd "$(dirname "$0")" && pwd)

# exec: torchrun takes this script's process, so that a job wrapper (or a shell) that
# signals and waits on the script waits on torchrun itself, until its processes have
# saved and stopped (before, bash died of SIGTERM at once, before the checkpoint).
export PYTHONPATH="$HERE/..:${PYTHONPATH:-}"
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$HERE/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
