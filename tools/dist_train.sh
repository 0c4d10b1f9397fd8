#!/usr/bin/env bash
# Distributed training with torchrun:
#   bash tools/dist_train.sh CONFIG NPROC [train.py args]
#   TOOL=add_task.py bash tools/dist_train.sh CONFIG NPROC --bank B --task T
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
TOOL=${TOOL:-train.py}
PORT=${PORT:-29500}
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NPROC" \
    --master_port="$PORT" "$HERE/$TOOL" "$CONFIG" --launcher pytorch "$@"
