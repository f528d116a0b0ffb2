#!/bin/bash
# POLAR-7B reward-model pre-training on 114 H800 nodes x 8 = 912 GPUs (the paper's scale: 3.6T tokens, 175 h).
#   sbatch launch/pretrain_7b.sh [hydra overrides...]
#   DRY_RUN=1 bash launch/pretrain_7b.sh [hydra overrides...]   # print what each node would run, run nothing
# Overrides after the script name win over the presets below (see docs/cluster.md).
#SBATCH --job-name=polar-pretrain-7b
#SBATCH --nodes=114
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

# sbatch runs a spooled copy of this file: find the repository next to it or in the submit directory.
POLAR_SCRIPT=${BASH_SOURCE[0]}
for POLAR_ROOT in "${POLAR_ROOT:-}" "$(dirname "$POLAR_SCRIPT")/.." "${SLURM_SUBMIT_DIR:-.}"; do
	[[ -f $POLAR_ROOT/launch/common.sh ]] && break
done
POLAR_ROOT=$(cd "$POLAR_ROOT" && pwd)
# shellcheck source=launch/common.sh
source "$POLAR_ROOT/launch/common.sh"

polar_slurm_launch \
	model=polar_7b parallel=h800_7b stage=pretrain \
	data.seq_length=32768 train.micro_batch_size=1 \
	model.recompute_granularity=full model.recompute_method=block model.recompute_num_layers=20 \
	train.global_batch_size=auto optim.lr=auto train.rm_tokens=3.6e12 \
	"$@"
