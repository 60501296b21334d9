#!/usr/bin/env bash
# Train on several GPUs (or CPU processes, over gloo) of one or more machines:
#   bash tools/dist_train.sh CONFIG GPUS [train.py options]
# Several nodes: run it on each node with NNODES, NODE_RANK, MASTER_ADDR (and PORT) set.
# PORT (else MASTER_PORT, else 29500): the rendezvous port, which must be free on node 0.
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
# (auto, gpu and cpu are torchrun's own: one process per GPU, or per CPU core)
if ! [[ $GPUS =~ ^[1-9][0-9]*$|^(auto|gpu|cpu)$ ]]; then
    echo "dist_train.sh: GPUS=$GPUS is not a number of processes: give one, e.g. 8: $USAGE" >&2
    exit 2
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-${MASTER_PORT:-29500}}
if ! [[ $PORT =~ ^[1-9][0-9]*$ && $PORT -le 65535 ]]; then
    echo "dist_train.sh: PORT=$PORT is not a port number: set a free one, e.g. PORT=29500" >&2
    exit 2
fi
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
HERE=$(cd "$(dirname "$0")" && pwd)

# One process per GPU: on a machine with fewer GPUs than GPUS (the configs' "8" on a
# 4-GPU box), each process past them stopped on its own traceback ('CUDA error: invalid
# device ordinal' from mmengine's set_device) and torchrun on a ChildFailedError report.
# Count them as the processes will (CUDA_VISIBLE_DEVICES too); a machine without CUDA
# trains its processes on the CPU over gloo, any number of them. A count that cannot be
# read (no torch on PYTHON) is left to torchrun.
CUDA_COUNT='import torch; print(torch.cuda.device_count())'
if [[ $GPUS =~ ^[0-9]+$ ]]; then
    cuda=$("${PYTHON:-python}" -c "$CUDA_COUNT" 2>/dev/null) || cuda=
    if [[ $cuda =~ ^[1-9][0-9]*$ ]] && (( GPUS > cuda )); then
        seen=${CUDA_VISIBLE_DEVICES+" (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)"}
        echo "dist_train.sh: GPUS=$GPUS but this machine has $cuda CUDA device(s)$seen:" \
            "give $cuda or fewer, one process per GPU" >&2
        exit 2
    fi
fi

# Node 0's torchrun serves the rendezvous on PORT, on every address of the machine: a port
# in use stopped it with a 45-line traceback ending in EADDRINUSE. Look first, binding as
# it will (exit 3: in use, with a free port after it printed; anything else goes on, and
# torchrun says what is wrong).
FREE_PORT='
import errno, socket, sys
def free(port):
    try:
        s = socket.socket(socket.AF_INET6)  # "::" covers the IPv4 addresses too
    except OSError:
        s = socket.socket(socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("::" if s.family == socket.AF_INET6 else "", port))
    except OSError as e:
        return e.errno != errno.EADDRINUSE
    finally:
        s.close()
    return True
port = int(sys.argv[1])
if not free(port):
    print(next((p for p in range(port + 1, min(port + 100, 65536)) if free(p)), ""))
    sys.exit(3)
'
if [[ $NODE_RANK == 0 ]]; then
    status=0
    free_port=$("${PYTHON:-python}" -c "$FREE_PORT" "$PORT" 2>/dev/null) || status=$?
    if [[ $status == 3 ]]; then
        hint=${free_port:+, e.g. PORT=$free_port}
        [[ $NNODES == 1 ]] || hint+=' (the same on every node)'
        echo "dist_train.sh: port $PORT is in use: set PORT to a free one$hint" >&2
        exit 2
    fi
fi

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
