#!/usr/bin/env bash
# Start N mlm-jax processes on this machine as one jax.distributed job over 127.0.0.1.
#
#   scripts/launch_local.sh [--devices-per-process K] [--log-dir DIR] [--port P] N ARGS...
#   scripts/launch_local.sh --devices-per-process 4 2 train --config configs/tiny.yaml
#
# Each process gets K simulated CPU devices (env MLM_JAX_DEVICES_PER_PROCESS, default 1),
# the MLM_JAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID variables that mlm_jax.distributed
# reads, and its own logs: DIR/process-I.log (stderr) and DIR/process-I.out (stdout), echoed
# here with a "[process I]" prefix (process 0's stdout unprefixed, so `eval` JSON stays
# parseable). When one process fails, the others are stopped (SIGTERM, then SIGKILL after
# MLM_JAX_KILL_GRACE_S seconds, default 10) and the launcher exits with the first failure's
# code. SIGINT/SIGTERM to the launcher are forwarded to every process (train saves and exits 0).
# PYTHON selects the interpreter (default: python3).
set -uo pipefail

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

devices="${MLM_JAX_DEVICES_PER_PROCESS:-1}"
log_dir=""
port=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices-per-process) devices="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    -h | --help) usage ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || usage
count="$1"
shift
if ! [[ "$count" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: the process count ($count) and --devices-per-process ($devices) must be" \
    "positive integers" >&2
  exit 2
fi
python="${PYTHON:-python3}"
grace="${MLM_JAX_KILL_GRACE_S:-10}"
if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" || exit 1
fi
log_dir="${log_dir:-$(mktemp -d "${TMPDIR:-/tmp}/mlm-jax-launch.XXXXXX")}"
mkdir -p "$log_dir"
echo "launch_local: $count processes x $devices CPU devices, coordinator 127.0.0.1:$port," \
  "logs in $log_dir" >&2

# The inherited XLA_FLAGS may already fix a device count (pytest's conftest does): replace it.
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")"
xla_flags="${xla_flags} --xla_force_host_platform_device_count=${devices}"

declare -a pids=() echoes=()
declare -A index_of=() running=()

prefix() { # prefix LABEL: prepend "[process I] " to lines that do not carry it yet
  awk -v p="$1" '{ if (index($0, p) == 1) print; else print p $0; fflush() }'
}

for ((i = 0; i < count; i++)); do
  # setsid: each process leads its own group, so stopping it also stops its Grain workers.
  JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" XLA_FLAGS="$xla_flags" \
    MLM_JAX_COORDINATOR="127.0.0.1:$port" MLM_JAX_NUM_PROCESSES="$count" MLM_JAX_PROCESS_ID="$i" \
    setsid "$python" -m mlm_jax.cli "$@" >"$log_dir/process-$i.out" 2>"$log_dir/process-$i.log" &
  pid=$!
  pids+=("$pid")
  index_of[$pid]=$i
  running[$pid]=1
  # The echoes ignore SIGINT/SIGTERM (a Ctrl-C hits the whole terminal group) so the last
  # words of a stopping process still show; they end when their process does.
  (
    trap '' INT TERM
    tail --pid="$pid" -n +1 -F "$log_dir/process-$i.log" 2>/dev/null | prefix "[process $i] " >&2
  ) &
  echoes+=($!)
  (
    trap '' INT TERM
    if [[ $i -eq 0 ]]; then
      tail --pid="$pid" -n +1 -F "$log_dir/process-$i.out" 2>/dev/null
    else
      tail --pid="$pid" -n +1 -F "$log_dir/process-$i.out" 2>/dev/null | prefix "[process $i] "
    fi
  ) &
  echoes+=($!)
done

signal_all() { # signal_all SIG: send SIG to the group of every process still running
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && kill -s "$1" -- "-$pid" 2>/dev/null
  done
}
trap 'echo "launch_local: forwarding SIGTERM" >&2; signal_all TERM' TERM
trap 'echo "launch_local: forwarding SIGINT" >&2; signal_all INT' INT

status=0
stopper=""
while [[ ${#running[@]} -gt 0 ]]; do
  finished=""
  wait -n -p finished "${!running[@]}"
  rc=$?
  [[ -n "${finished:-}" ]] || continue # a forwarded signal interrupted the wait
  unset "running[$finished]"
  if [[ $rc -ne 0 && $status -eq 0 ]]; then
    status=$rc
    echo "launch_local: process ${index_of[$finished]} exited with code $rc;" \
      "stopping the others (log: $log_dir/process-${index_of[$finished]}.log)" >&2
    signal_all TERM
    (
      sleep "$grace"
      for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
    ) >/dev/null 2>&1 &
    stopper=$!
  fi
done
[[ -n "$stopper" ]] && kill "$stopper" 2>/dev/null
wait "${echoes[@]}" 2>/dev/null
exit "$status"
