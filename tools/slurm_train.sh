#!/usr/bin/env bash
# Train under slurm: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py options]
# WORK_DIR (default work_dirs/CONFIG_NAME) may be left out before the options, as in a
# requeued job's `bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG --resume`.
# GPUS (default 8), GPUS_PER_NODE (default GPUS, at most 8), CPUS_PER_TASK (5), SRUN_ARGS
# and PYTHON (the interpreter, default python on PATH) come from the environment; so do
# PORT (else MASTER_PORT; by default tools/train.py takes 20000 + the job id % 10000) and
# GRES (default gpu:GPUS_PER_NODE; GRES=none asks for no GPUs, for a CPU-only partition).
set -euo pipefail
USAGE='bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py options]'
NAMES=(PARTITION JOB_NAME CONFIG)
for i in 0 1 2; do
    arg=${*:i+1:1}
    if [[ $# -le $i || $arg == -* ]]; then
        echo "slurm_train.sh: ${NAMES[i]} is missing${arg:+ (got the option $arg in its place)}: $USAGE" >&2
        exit 2
    fi
done
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
# a 4th argument starting with '-' is a train.py option (it went to --work-dir: a
# requeued `... CONFIG --resume` started afresh in ./--resume)
WORK_DIR=
if [[ $# -ge 1 && $1 != -* ]]; then
    WORK_DIR=$1
    shift
fi
WORK_DIR=${WORK_DIR:-"work_dirs/$(basename "${CONFIG%.*}")"}
GPUS=${GPUS:-8}
if ! [[ $GPUS =~ ^[1-9][0-9]*$ ]]; then
    echo "slurm_train.sh: GPUS=$GPUS is not a number of processes: set GPUS to one, e.g. GPUS=16" >&2
    exit 2
fi
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
GRES=${GRES:-gpu:$GPUS_PER_NODE}
GRES_ARGS=(--gres="$GRES")
[[ $GRES != none ]] || GRES_ARGS=()
# train.py's --launcher slurm takes MASTER_PORT from the environment srun passes on
PORT=${PORT:-${MASTER_PORT:-}}
if [[ -n $PORT ]]; then
    if ! [[ $PORT =~ ^[1-9][0-9]*$ && $PORT -le 65535 ]]; then
        echo "slurm_train.sh: PORT=$PORT is not a port number: set one, e.g. PORT=29501" >&2
        exit 2
    fi
    export MASTER_PORT=$PORT
fi
HERE=$(cd "$(dirname "$0")" && pwd)
if ! command -v srun >/dev/null; then
    echo "slurm_train.sh: srun was not found: run this on a slurm login node, or" \
        "tools/dist_train.sh without slurm" >&2
    exit 2
fi

PYTHONPATH="$HERE/..:${PYTHONPATH:-}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    ${GRES_ARGS[@]+"${GRES_ARGS[@]}"} \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "${PYTHON:-python}" -u "$HERE/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher slurm "$@"
