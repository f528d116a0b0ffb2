#!/bin/bash
# Tokenise triples into one indexed pair dataset across many nodes: a SLURM array, one shard per task,
# then a merge job that joins the shards into the dataset a one-process build would write, byte for byte.
#   bash launch/build_data.sh OUTPUT_PREFIX TOKENIZER INPUT... [-- BUILD OPTIONS...]
# submits `sbatch --array=0-(NUM_SHARDS-1)` of this script (each task runs
# `python -m data_tools build ... --num-shards N --shard-index $SLURM_ARRAY_TASK_ID`) and a merge job that
# starts once every task has succeeded (`python -m data_tools merge build`). A failed task can be rerun
# alone (`sbatch --array=I`); the merge refuses while any shard is incomplete.
# Knobs (environment): NUM_SHARDS (64), CPUS_PER_TASK (32: tokenising processes per task), TIME (4:00:00),
# PYTHON (python3), SBATCH_ARGS (extra sbatch options, e.g. "--partition=cpu --account=x"),
# DRY_RUN=1 (print the commands, run nothing). See docs/data_tools.md for throughput and node-hours.
#SBATCH --job-name=polar-build-data
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

NUM_SHARDS=${NUM_SHARDS:-64}
CPUS_PER_TASK=${CPUS_PER_TASK:-32}
TIME=${TIME:-4:00:00}
PYTHON=${PYTHON:-python3}
STAGE=${POLAR_BUILD_STAGE:-submit}

die() {
	printf 'build_data: error: %s\n' "$*" >&2
	exit 1
}

run() {
	if [[ ${DRY_RUN:-0} == 1 ]]; then
		printf '%q ' "$@"
		printf '\n'
	else
		"$@"
	fi
}

[[ $# -ge 3 ]] || die "usage: build_data.sh OUTPUT_PREFIX TOKENIZER INPUT... [-- BUILD OPTIONS...]"
[[ $NUM_SHARDS =~ ^[1-9][0-9]*$ ]] || die "NUM_SHARDS must be a positive integer, got '$NUM_SHARDS'"
prefix=$1 tokenizer=$2
shift 2
inputs=()
while [[ $# -gt 0 && $1 != -- ]]; do
	inputs+=("$1")
	shift
done
[[ $# -gt 0 ]] && shift # the --
options=("$@")
[[ ${#inputs[@]} -gt 0 ]] || die "no INPUT files"

case $STAGE in
submit)
	# sbatch runs a spooled copy of the script: give it this one's absolute path and the repo on PYTHONPATH.
	script=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
	root=$(cd "$(dirname "$script")/.." && pwd)
	read -r -a extra <<<"${SBATCH_ARGS:-}"
	env="ALL,NUM_SHARDS=$NUM_SHARDS,PYTHON=$PYTHON,PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}"
	common=(--parsable --time="$TIME" --cpus-per-task="$CPUS_PER_TASK" "${extra[@]}")
	args=("$prefix" "$tokenizer" "${inputs[@]}" -- "${options[@]}")
	shards=(sbatch "${common[@]}" --array="0-$((NUM_SHARDS - 1))" --export="$env,POLAR_BUILD_STAGE=shard")
	merge=(sbatch "${common[@]}" --export="$env,POLAR_BUILD_STAGE=merge")
	if [[ ${DRY_RUN:-0} == 1 ]]; then
		run "${shards[@]}" "$script" "${args[@]}"
		run "${merge[@]}" --dependency=afterok:ARRAY_JOB_ID "$script" "${args[@]}"
		exit 0
	fi
	array_id=$("${shards[@]}" "$script" "${args[@]}")
	array_id=${array_id%%;*}
	merge_id=$("${merge[@]}" --dependency="afterok:$array_id" "$script" "${args[@]}")
	printf 'build_data: %s shards in array job %s; merge job %s\n' "$NUM_SHARDS" "$array_id" "${merge_id%%;*}"
	;;
shard)
	index=${SLURM_ARRAY_TASK_ID:?a shard runs as a SLURM array task (SLURM_ARRAY_TASK_ID unset)}
	workers=${SLURM_CPUS_PER_TASK:-$CPUS_PER_TASK}
	run "$PYTHON" -m data_tools build "${inputs[@]}" -o "$prefix" --tokenizer "$tokenizer" \
		--workers "$workers" --num-shards "$NUM_SHARDS" --shard-index "$index" --no-progress "${options[@]}"
	;;
merge)
	overwrite=()
	for opt in "${options[@]}"; do
		[[ $opt == --overwrite ]] && overwrite=(--overwrite)
	done
	run "$PYTHON" -m data_tools merge build -o "$prefix" --num-shards "$NUM_SHARDS" "${overwrite[@]}"
	;;
*)
	die "unknown POLAR_BUILD_STAGE '$STAGE' (submit, shard or merge)"
	;;
esac
