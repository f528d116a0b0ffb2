# shellcheck shell=bash
# Shared logic of the megatron_polar launch scripts. Sourced (with POLAR_ROOT set), never run.
#
# The scripts hold the cluster environment and a handful of Hydra overrides; everything about training
# lives in `python -m megatron_polar.train`. Entry points:
#   polar_slurm_launch OVERRIDES...   one process per GPU on every node of the allocation, via srun
#   polar_local_launch OVERRIDES...   one node via torchrun (1..8 GPUs, or CPU processes with gloo)
#
# Knobs (environment): DRY_RUN=1 (print, run nothing), GPUS_PER_NODE (8), CONTAINER_IMAGE
# (pyxis image; "none" runs on the host), CONTAINER_MOUNTS (extra src:dst,... for data and outputs),
# RUN_DIR (runs/<job name>: metrics and checkpoints; the trainer resumes from it), LOG_DIR
# (logs/<job name>-<job id>), PYTHON (python inside the job), PLAN_PYTHON (python for the layout check
# on the submitting host), MAX_REQUEUES (20), NPROC (local.sh: processes).

POLAR_ROOT=${POLAR_ROOT:?set POLAR_ROOT to the repository root before sourcing common.sh}
POLAR_ENV_VARS=()

polar_log() {
	printf '[launch %s] %s\n' "$(date +%H:%M:%S)" "$*"
	if [[ -n ${POLAR_LAUNCH_LOG:-} ]]; then
		printf '[launch %s] %s\n' "$(date +%H:%M:%S)" "$*" >>"$POLAR_LAUNCH_LOG"
	fi
}

polar_die() {
	printf 'launch: error: %s\n' "$*" >&2
	exit 1
}

# Export NAME with a default that the caller's environment may override; remember it for DRY_RUN.
polar_export() {
	local name=$1 default=$2
	export "$name=${!name:-$default}"
	POLAR_ENV_VARS+=("$name")
}

# Environment every run wants, on a cluster or a workstation.
polar_env_common() {
	# Megatron's TP/SP communication overlap relies on kernels starting in issue order: with a single
	# hardware work queue the all-gather is scheduled before the GEMM that waits on it.
	polar_export CUDA_DEVICE_MAX_CONNECTIONS 1
	# On a collective error or timeout, abort the process instead of hanging: the job then fails
	# (or requeues) and resumes from the last checkpoint rather than burning the allocation.
	polar_export TORCH_NCCL_ASYNC_ERROR_HANDLING 1
	# Async collectives on side streams otherwise pin their tensors until the stream catches up.
	polar_export TORCH_NCCL_AVOID_RECORD_STREAMS 1
	# Long packed rows (32K tokens) make allocation sizes vary; expandable segments curb fragmentation,
	# which the layout planner's memory model does not include.
	polar_export PYTORCH_CUDA_ALLOC_CONF expandable_segments:True
	# Transformer Engine attention: allow the flash and cuDNN fused backends (variable-length packed
	# rows need one of them) and their faster non-deterministic backward; set 0 with train.deterministic.
	polar_export NVTE_FLASH_ATTN 1
	polar_export NVTE_FUSED_ATTN 1
	polar_export NVTE_ALLOW_NONDETERMINISTIC_ALGO 1
	# 8 ranks share a node: one intra-op pool per rank sized to its CPU share, not to the whole node.
	polar_export OMP_NUM_THREADS "${SLURM_CPUS_PER_TASK:-$(polar_threads_per_rank)}"
	# Log lines reach the per-node log files as they happen (and survive a kill).
	polar_export PYTHONUNBUFFERED 1
	# Config errors print the whole cause, not Hydra's one-line summary.
	polar_export HYDRA_FULL_ERROR 1
	export PYTHONPATH="$POLAR_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

polar_threads_per_rank() {
	local cores
	cores=$(nproc 2>/dev/null || echo 8)
	local per=$((cores / ${NPROC:-${GPUS_PER_NODE:-8}}))
	echo $((per > 0 ? per : 1))
}

# NCCL over InfiniBand (RoCE needs NCCL_IB_GID_INDEX=3 in addition; set it in the environment).
polar_env_cluster() {
	# Use the InfiniBand HCAs for inter-node traffic (a prefix: every mlx5_* device).
	polar_export NCCL_IB_HCA mlx5
	# Retry timeout 4.096us * 2^22 (~17 s): rides out link flaps on a 100+ node fabric instead of
	# failing the collective (NCCL's default 18 gives ~1 s).
	polar_export NCCL_IB_TIMEOUT 22
	polar_export NCCL_IB_RETRY_CNT 7
	# NCCL bootstrap and out-of-band traffic: any real interface, never loopback or container bridges
	# (NCCL's own syntax: a leading ^ excludes the listed prefixes).
	polar_export NCCL_SOCKET_IFNAME "^lo,docker0"
	# gloo (the CPU-side groups megatron-core creates by default, checkpoint coordination) takes exact
	# interface names only: torch splits GLOO_SOCKET_IFNAME on ',' and binds to each entry, so NCCL's
	# "^lo,docker0" fails every start with "Unable to find address for: ^lo". Name a real interface.
	polar_gloo_env
	# Warnings only: INFO from 900 ranks floods the logs; set NCCL_DEBUG=INFO to debug a hang.
	polar_export NCCL_DEBUG WARN
}

# The interface that carries this node's default route (the one other nodes reach it through); without
# the `ip` tool, the first interface that is up and is neither loopback nor a container bridge. Prints
# nothing when there is none.
polar_gloo_ifname() {
	local dev path name
	dev=$(ip -o -4 route show default 2>/dev/null |
		awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
	if [[ -z $dev ]]; then
		for path in /sys/class/net/*; do
			name=${path##*/}
			case $name in lo | docker* | veth* | virbr* | br-*) continue ;; esac
			[[ $(cat "$path/operstate" 2>/dev/null) == up ]] || continue
			dev=$name
			break
		done
	fi
	printf '%s' "$dev"
}

# Export GLOO_SOCKET_IFNAME: the caller's value when it is a list of names, else the derived interface;
# leave it unset when none is found (gloo then binds to the address the host name resolves to).
polar_gloo_env() {
	if [[ -n ${GLOO_SOCKET_IFNAME:-} ]]; then
		[[ $GLOO_SOCKET_IFNAME != *[\^=]* ]] || polar_die "GLOO_SOCKET_IFNAME=$GLOO_SOCKET_IFNAME uses NCCL's" \
			"^/= syntax; gloo takes exact interface names (e.g. GLOO_SOCKET_IFNAME=eth0), or unset it"
		polar_export GLOO_SOCKET_IFNAME "$GLOO_SOCKET_IFNAME"
		return
	fi
	local dev
	dev=$(polar_gloo_ifname)
	if [[ -n $dev ]]; then
		polar_export GLOO_SOCKET_IFNAME "$dev"
	fi
}

# Print the resolved layout (python -m megatron_polar.plan --brief). Returns 2 when the layout cannot
# start; any other failure (no python with hydra on this host) only skips the check.
polar_plan() {
	local world=$1
	shift
	local py=${PLAN_PYTHON:-python3} out rc=0
	out=$(cd "$POLAR_ROOT" && PYTHONPATH="$POLAR_ROOT" "$py" -m megatron_polar.plan --brief \
		--gpus "$world" --gpus-per-node "${GPUS_PER_NODE:-8}" "$@" 2>&1) || rc=$?
	if [[ $rc -eq 0 || $rc -eq 2 ]]; then
		printf '%s\n' "$out"
	else
		printf 'warning: layout check skipped (%s -m megatron_polar.plan failed, rc %s): %s\n' \
			"$py" "$rc" "$(printf '%s' "$out" | tail -n 1)"
		rc=0
	fi
	return "$rc"
}

# Shell-quoted command line, as it would be typed.
polar_quote() {
	local out="" arg
	for arg in "$@"; do
		out+=$(printf '%q ' "$arg")
	done
	printf '%s' "${out% }"
}

polar_print_env() {
	local name
	for name in "${POLAR_ENV_VARS[@]}"; do
		printf '  %s=%s\n' "$name" "$(printf '%q' "${!name}")"
	done
	printf '  PYTHONPATH=%s\n' "$(printf '%q' "$PYTHONPATH")"
}

# The #SBATCH header of the running script: srun cannot see it, DRY_RUN shows it.
polar_print_sbatch_header() {
	local script=$1
	[[ -f $script ]] && grep -E '^#SBATCH' "$script" | sed 's/^/  /'
	return 0
}

polar_slurm_launch() {
	[[ -n ${SLURM_JOB_ID:-} && -n ${SLURM_NNODES:-} ]] ||
		polar_die "not inside a SLURM allocation: submit with sbatch (or set DRY_RUN=1 and a SLURM_* environment)"
	local job_name=${SLURM_JOB_NAME:-polar}
	local gpus_per_node=${GPUS_PER_NODE:-8}
	local nnodes=$SLURM_NNODES
	local world=$((nnodes * gpus_per_node))
	local -a hosts
	mapfile -t hosts < <(scontrol show hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}")
	[[ ${#hosts[@]} -ge 1 ]] || polar_die "scontrol show hostnames '$SLURM_JOB_NODELIST' returned no hosts"
	[[ ${#hosts[@]} -eq $nnodes ]] ||
		polar_die "SLURM_NNODES=$nnodes but the node list expands to ${#hosts[@]} hosts"

	# Rank 0 runs on the first node; the port is derived from the job id so that two jobs sharing a
	# node do not collide, and stays the same across requeues of this job.
	export MASTER_ADDR=${MASTER_ADDR:-${hosts[0]}}
	export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
	local log_dir=${LOG_DIR:-$POLAR_ROOT/logs/$job_name-$SLURM_JOB_ID}
	local run_dir=${RUN_DIR:-$POLAR_ROOT/runs/$job_name}
	polar_env_common
	polar_env_cluster

	# Outputs (metrics, checkpoints) keyed by job name, not id: a requeued or resubmitted job resumes.
	local -a overrides=("logging.run_dir=$run_dir" "$@")

	local -a container=()
	local image=${CONTAINER_IMAGE:-nvcr.io#nvidia/pytorch:25.09-py3}
	if [[ $image != none ]]; then
		# The repository is mounted at the same path, so code, logs and run directories keep their names.
		local mounts="$POLAR_ROOT:$POLAR_ROOT${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
		container=(--container-image="$image" --container-mounts="$mounts" --container-workdir="$POLAR_ROOT")
	fi

	# Each task derives its torch.distributed identity from SLURM and then *execs* python, so that the
	# signals srun forwards (USR1 before the time limit, TERM on cancel) reach the trainer itself and
	# not a waiting shell.
	local py=${PYTHON:-python}
	local task
	# shellcheck disable=SC2016  # expanded by each task, not here
	task='export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS NODE_RANK=$SLURM_NODEID; '
	# GLOO_SOCKET_IFNAME was derived on the batch node: where this node has no interface of that name,
	# fall back to gloo's own choice rather than fail at start-up.
	# shellcheck disable=SC2016
	task+='[[ -z ${GLOO_SOCKET_IFNAME:-} || -e /sys/class/net/${GLOO_SOCKET_IFNAME%%,*} ]] || unset GLOO_SOCKET_IFNAME; '
	task+="exec $(printf '%q' "$py")"' -m megatron_polar.train "$@"'
	# srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05): pass it on explicitly.
	local -a srun_cmd=(
		srun
		--nodes="$nnodes" --ntasks="$world" --ntasks-per-node="$gpus_per_node"
		--kill-on-bad-exit=1 --label --output="$log_dir/node-%n.log"
		${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"}
		"${container[@]}"
		bash -c "$task" polar-task "${overrides[@]}"
	)

	if [[ ${DRY_RUN:-0} != 0 ]]; then
		echo "== megatron_polar launch: DRY_RUN (nothing is run) =="
		echo "job: name=$job_name id=$SLURM_JOB_ID nodes=$nnodes gpus_per_node=$gpus_per_node world_size=$world"
		echo "rendezvous: MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT"
		echo "logs: $log_dir"
		echo "run_dir: $run_dir"
		echo "container: ${container[*]:-none (host python)}"
		echo "sbatch header:"
		polar_print_sbatch_header "${POLAR_SCRIPT:-}"
		local rc=0
		polar_plan "$world" "${overrides[@]}" || rc=$?
		echo "env:"
		polar_print_env
		echo "srun: $(polar_quote "${srun_cmd[@]}")"
		echo "per node (srun starts $gpus_per_node tasks on each):"
		local i
		for ((i = 0; i < nnodes; i++)); do
			echo "  node $i host=${hosts[i]} RANK=$((i * gpus_per_node))..$(((i + 1) * gpus_per_node - 1))" \
				"LOCAL_RANK=0..$((gpus_per_node - 1)) NODE_RANK=$i WORLD_SIZE=$world" \
				"MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT"
		done
		echo "python: $(polar_quote "$py" -m megatron_polar.train "${overrides[@]}")"
		return "$rc"
	fi

	mkdir -p "$log_dir"
	POLAR_LAUNCH_LOG=$log_dir/launcher.log
	polar_log "job $job_name ($SLURM_JOB_ID), restart ${SLURM_RESTART_COUNT:-0}: $nnodes nodes x $gpus_per_node GPUs"
	polar_log "rendezvous $MASTER_ADDR:$MASTER_PORT; per-node logs in $log_dir"
	local plan_rc=0 plan_out
	plan_out=$(polar_plan "$world" "${overrides[@]}") || plan_rc=$?
	polar_log "$plan_out"
	[[ $plan_rc -eq 0 ]] || polar_die "the layout cannot start (see above); nothing was launched"
	polar_log "srun: $(polar_quote "${srun_cmd[@]}")"
	polar_run_with_requeue "${srun_cmd[@]}"
}

# Run srun in the background so that this shell can take signals: `#SBATCH --signal=B:USR1@600`
# reaches only the batch shell, which forwards it to srun, which forwards it to every task (the
# trainer saves at the end of the step and exits 0). After a USR1 the job requeues itself and the
# trainer resumes from that checkpoint. A crash (non-zero exit without a signal) is not requeued.
polar_run_with_requeue() {
	POLAR_SIGNAL=""
	POLAR_SRUN_PID=""
	trap 'polar_forward USR1' USR1
	trap 'polar_forward TERM' TERM
	"$@" &
	POLAR_SRUN_PID=$!
	local rc=0
	while :; do
		rc=0
		wait "$POLAR_SRUN_PID" || rc=$?
		# wait returns early (status > 128) when a trapped signal arrives; srun is still running then.
		kill -0 "$POLAR_SRUN_PID" 2>/dev/null || break
	done
	trap - USR1 TERM
	polar_log "srun exited with status $rc${POLAR_SIGNAL:+ after SIG$POLAR_SIGNAL}"
	if [[ $POLAR_SIGNAL == USR1 ]]; then
		local restarts=${SLURM_RESTART_COUNT:-0}
		if ((restarts >= ${MAX_REQUEUES:-20})); then
			polar_log "not requeueing: already restarted $restarts times (MAX_REQUEUES=${MAX_REQUEUES:-20})"
		elif scontrol requeue "$SLURM_JOB_ID"; then
			polar_log "requeued job $SLURM_JOB_ID; it resumes from the newest checkpoint"
			return 0
		else
			polar_log "scontrol requeue failed; resubmit the script to resume"
		fi
	fi
	return "$rc"
}

polar_forward() {
	POLAR_SIGNAL=$1
	polar_log "received SIG$1: forwarding to srun (the trainer checkpoints and exits at the end of the step)"
	if [[ -n $POLAR_SRUN_PID ]]; then
		kill -s "$1" "$POLAR_SRUN_PID" 2>/dev/null || true
	fi
}

# One node, torchrun: `NPROC=2 launch/local.sh model=tiny ...` (CPU: gloo; GPUs: one process each).
polar_local_launch() {
	local nproc=${NPROC:-}
	if [[ -z $nproc ]]; then
		nproc=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
		[[ $nproc -ge 1 ]] || nproc=1
	fi
	NPROC=$nproc polar_env_common
	local -a overrides=("$@")
	local -a cmd=(
		"${PYTHON:-python}" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="$nproc"
		-m megatron_polar.train "${overrides[@]}"
	)
	if [[ ${DRY_RUN:-0} != 0 ]]; then
		echo "== megatron_polar launch: DRY_RUN (nothing is run) =="
		echo "job: local nodes=1 nproc=$nproc world_size=$nproc"
		echo "rendezvous: torchrun --standalone (localhost, free port)"
		local rc=0
		GPUS_PER_NODE=$nproc polar_plan "$nproc" "${overrides[@]}" || rc=$?
		echo "env:"
		polar_print_env
		echo "torchrun: $(polar_quote "${cmd[@]}")"
		return "$rc"
	fi
	cd "$POLAR_ROOT" || polar_die "cannot cd to $POLAR_ROOT"
	exec "${cmd[@]}"
}
