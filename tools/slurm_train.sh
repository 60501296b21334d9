#!/usr/bin/env bash
# Train under slurm: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py options]
# WORK_DIR (default work_dirs/CONFIG_NAME) may be left out before the options, as in a
# requeued job's `bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG --resume`.
# GPUS (default 8), GPUS_PER_NODE (default GPUS, at most 8), CPUS_PER_TASK (5), SRUN_ARGS
# and PYTHON (the interpreter, default python on PATH) come from the environment.
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
HERE=$(cd "$(dirname "$0")" && pwd)

PYTHONPATH="$HERE/..:${PYTHONPATH:-}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "${PYTHON:-python}" -u "$HERE/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher slurm "$@"
