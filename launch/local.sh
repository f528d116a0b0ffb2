#!/bin/bash
# One machine via torchrun: 1..8 GPUs (one process each), or CPU processes on gloo.
#   launch/local.sh model=tiny 'data.train=[{path: data/demo/train, weight: 1}]'
#   NPROC=2 launch/local.sh model=tiny parallel=tp2 ...       # processes (default: the GPUs, or 1)
#   DRY_RUN=1 NPROC=2 launch/local.sh model=tiny               # print the command and the layout
set -euo pipefail
POLAR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.sh
source "$POLAR_ROOT/launch/common.sh"

polar_local_launch "$@"
