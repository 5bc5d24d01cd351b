#!/usr/bin/env bash
# Start the same `python -m apr_jax.MODULE` on every worker of a slice at
# once, detached (it keeps running when this script or your laptop goes
# away), in the environment setup.sh made (~/apr_jax_venv), with the workdir
# (checkpoints, metrics) on a gs:// bucket that setup.sh mounted at
# /mnt/gcs/BUCKET on every worker. Each worker's stdout and stderr go to
# WORKDIR/logs/<hostname>.log; its pid and, once it ends, its exit code to
# ~/apr_jax_run/. A run still holding the TPU from an earlier start is
# stopped first (by that pid file). Rerunning resumes from the newest
# checkpoint in the workdir.
#
#   launch/run.sh --name=apr-v4 --zone=us-central2-b --workdir=gs://BUCKET/runs/apr228m \
#       [--config=configs/countdown4_apr_228m.py] [--module=train] [--compile-cache=gs://BUCKET/xla_cache] \
#       [--follow | --wait | --attach | --status | --stop] [--log-dir=DIR] [--project=P] [--dry-run] \
#       [--config.train.steps=100 ...] [-- MODULE FLAGS ...]
#
# --module: train (default; needs --config), evaluate, compare, convert, aot.
#   train, evaluate and compare get --workdir; every module gets --config when
#   given. --config.* flags and everything after -- are passed to the module
#   as they are, except gs://BUCKET/... values, which become the mounted path.
# --config: a file of this checkout or one setup.sh copied (it runs as
#   configs/<file name>), or one in the bucket (gs://BUCKET/... or
#   /mnt/gcs/BUCKET/...), read there.
# --compile-cache: XLA's compile cache for the run (APR_JAX_COMPILE_CACHE), e.g.
#   in the bucket, so a restarted slice does not compile again.
# Without a mode flag the run starts and this returns. --follow: start, show
#   worker 0's log as it grows, then wait like --wait. --wait: start, then poll
#   every worker every APR_POLL_SECONDS until all have ended; copy the logs to
#   --log-dir (default logs/NAME) and exit with the run's exit code (the first
#   failing worker's; 255 when the workers stay unreachable: slice gone). A
#   failing worker stops the others. --attach: wait like --wait for this same
#   command already running (exit 3 when it is not running). --status: print
#   each worker's state. --stop: stop the run on every worker.
#
# Environment: APR_TPU_NAME, APR_ZONE, APR_PROJECT, APR_WORKDIR, APR_CONFIG,
# APR_MODULE, APR_COMPILE_CACHE, APR_LOG_DIR, APR_POLL_SECONDS (default 60),
# APR_JAX_DISTRIBUTED_TIMEOUT (seconds the workers wait for each other at
# start-up, default 300), APR_MOUNT_ROOT, APR_DRY_RUN=1, GCLOUD.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="${APR_TPU_NAME:-}" ZONE="${APR_ZONE:-}" PROJECT="${APR_PROJECT:-}"
WORKDIR="${APR_WORKDIR:-}" CONFIG="${APR_CONFIG:-}" LOG_DIR="${APR_LOG_DIR:-}"
MODULE="${APR_MODULE:-train}" COMPILE_CACHE="${APR_COMPILE_CACHE:-}"
TIMEOUT="${APR_JAX_DISTRIBUTED_TIMEOUT:-300}" POLL="${APR_POLL_SECONDS:-60}"
MODE=start
PASS=()
set_mode() {
  [[ "$MODE" == start || "$MODE" == "$1" ]] || die "--$MODE and --$1 exclude each other"
  MODE="$1"
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift; continue ;;
    --follow|--wait|--attach|--status|--stop) set_mode "${1#--}"; shift; continue ;;
    --) shift; PASS+=("$@"); break ;;
    -h|--help) usage ;;
    --config.*=*) PASS+=("$1"); shift; continue ;;
    --config.*) [[ $# -ge 2 ]] || die "flag ${1} needs a value"; PASS+=("$1" "$2"); shift 2; continue ;;
  esac
  parse_flag "$@"
  take_slice_flag || case "$FLAG_NAME" in
    workdir) WORKDIR="$FLAG_VALUE" ;;
    config) CONFIG="$FLAG_VALUE" ;;
    module) MODULE="$FLAG_VALUE" ;;
    compile-cache) COMPILE_CACHE="$FLAG_VALUE" ;;
    log-dir) LOG_DIR="$FLAG_VALUE" ;;
    worker)
      [[ "$FLAG_VALUE" == all ]] || die "--worker=$FLAG_VALUE: a run starts on every worker at once (--worker=all); on a multi-host slice a run on one worker waits for the others and then fails"
      ;;
    *) die "unknown flag --$FLAG_NAME (see --help)" ;;
  esac
  shift "$FLAG_SHIFT"
done
require "$NAME" name APR_TPU_NAME
require "$ZONE" zone APR_ZONE
require "$WORKDIR" workdir APR_WORKDIR
[[ "$WORKDIR" == gs://?* ]] || die "--workdir=$WORKDIR must be a gs:// path every worker can reach (checkpoints are written by all workers together)"
BUCKET="$(bucket_of "$WORKDIR")"
[[ " $MODULES " == *" $MODULE "* ]] || die "--module=$MODULE: one of $MODULES"
[[ "$MODULE" != train || -n "$CONFIG" ]] || die "missing --config (or set APR_CONFIG)"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "APR_JAX_DISTRIBUTED_TIMEOUT must be whole seconds, got '$TIMEOUT'"
[[ "$POLL" =~ ^[0-9]+$ ]] || die "APR_POLL_SECONDS must be whole seconds, got '$POLL'"
LOG_DIR="${LOG_DIR:-logs/$NAME}"
location_flags

# The module's arguments, as the workers see them.
MOUNTED="$(mounted_path "$WORKDIR")"
LOGS="$MOUNTED/logs"
ARGS=()
case "$MODULE" in train|evaluate|compare) ARGS+=("--workdir=$MOUNTED") ;; esac
if [[ -n "$CONFIG" ]]; then
  if [[ "$CONFIG" == gs://* || "$CONFIG" == "$MOUNT_ROOT"/* ]]; then
    ARGS+=("--config=$(worker_path "$CONFIG" "$BUCKET" --config)")
  else  # in this checkout, or copied by setup.sh into configs/ on every worker
    ARGS+=("--config=configs/$(basename "$CONFIG")")
  fi
fi
expects_value=0
for arg in ${PASS[@]+"${PASS[@]}"}; do
  if [[ "$arg" == --?* ]]; then
    [[ "$arg" == *=* ]] && expects_value=0 || expects_value=1
    name="${arg%%=*}"
    if [[ "$arg" == *=*gs://* ]]; then  # comma lists (--workdir=A,B) map each part
      IFS=, read -r -a parts <<< "${arg#*=}"
      mapped=""
      for part in "${parts[@]}"; do mapped+=",$(worker_path "$part" "$BUCKET" "$name")"; done
      arg="$name=${mapped#,}"
    fi
  elif [[ "$expects_value" == 1 ]]; then
    expects_value=0
    [[ "$arg" == gs://* ]] && arg="$(worker_path "$arg" "$BUCKET" "$name")"
  else
    die "arguments after -- must be flags of apr_jax.$MODULE like --config.train.steps=100 or --split=test, got '$arg'"
  fi
  ARGS+=("$arg")
done
ENV=("APR_JAX_DISTRIBUTED=auto" "APR_JAX_DISTRIBUTED_TIMEOUT=$TIMEOUT" "PYTHONUNBUFFERED=1")
if [[ -n "$COMPILE_CACHE" ]]; then
  ENV+=("APR_JAX_COMPILE_CACHE=$(worker_path "$COMPILE_CACHE" "$BUCKET" --compile-cache)")
fi

COMMAND="env"
for arg in "${ENV[@]}"; do COMMAND+=" $(quote_arg "$arg")"; done
COMMAND+=" $REMOTE_VENV/bin/python -m apr_jax.$MODULE"
for arg in ${ARGS[@]+"${ARGS[@]}"}; do COMMAND+=" $(quote_arg "$arg")"; done
# The run's identity: --attach waits only for this same command.
RUN_ID="$(printf '%s' "$COMMAND" | cksum | cut -d' ' -f1)"
Q_LOGS="$(quote_arg "$LOGS")"
BUCKET_MOUNT="$(quote_arg "$MOUNT_ROOT/$BUCKET")"
D="$REMOTE_RUN_DIR"

# Stops the run a previous start left on this worker: the process group whose
# leader's pid is in the pid file, if that process is still one of ours.
STOP="if [ -f $D/pid ] && ps -o args= -p \"\$(cat $D/pid)\" 2>/dev/null | grep -q apr_jax_run; then \
pid=\$(cat $D/pid); echo \"\$(hostname): stopping the run started before (pid \$pid)\"; kill -TERM -- \"-\$pid\" 2>/dev/null; n=0; \
while ps -o stat= -s \"\$pid\" 2>/dev/null | grep -qv Z && [ \$n -lt 120 ]; do sleep 1; n=\$((n + 1)); done; \
if ps -o stat= -s \"\$pid\" 2>/dev/null | grep -qv Z; then kill -KILL -- \"-\$pid\" 2>/dev/null; fi; fi"

# The wrapper (bash -c, named apr_jax_run) runs the module, then writes its
# exit code; SIGTERM (preemption, --stop) reaches the module, which saves a
# checkpoint and exits, and the wrapper still writes the code.
WRAPPER='echo $$ > "$HOME/apr_jax_run/pid"; trap true TERM; "$@"; rc=$?; echo $rc > "$HOME/apr_jax_run/exit_code.tmp"; mv -f "$HOME/apr_jax_run/exit_code.tmp" "$HOME/apr_jax_run/exit_code"; echo "=== $(date -u +%FT%TZ) $(hostname): exit code $rc"; exit $rc'

START="mountpoint -q $BUCKET_MOUNT || { echo \"error: $BUCKET_MOUNT is not mounted on \$(hostname); run launch/setup.sh --bucket=$BUCKET\" >&2; exit 2; }; \
[ -x $REMOTE_VENV/bin/python ] || { echo \"error: no $REMOTE_VENV on \$(hostname); run launch/setup.sh\" >&2; exit 2; }; \
$STOP; \
mkdir -p $D $Q_LOGS && cd ~/apr_jax || exit 2; rm -f $D/exit_code; echo $RUN_ID > $D/id; \
log=$Q_LOGS/\$(hostname).log; touch \"\$log\"; wc -c < \"\$log\" > $D/log_offset; \
echo \"=== \$(date -u +%FT%TZ) \$(hostname): apr_jax.$MODULE\" >> \"\$log\"; \
setsid nohup bash -c '$WRAPPER' apr_jax_run $COMMAND >> \"\$log\" 2>&1 < /dev/null & \
echo \$! > $D/pid; echo \"\$(hostname): started apr_jax.$MODULE (pid \$!), log \$log\""

# One line per worker: apr_jax_run: HOST none|running|exited CODE|lost id=RUN_ID
STATUS="h=\$(hostname); id=\$(cat $D/id 2>/dev/null); \
if [ ! -f $D/pid ]; then s=none; \
elif ps -o args= -p \"\$(cat $D/pid)\" 2>/dev/null | grep -q apr_jax_run; then s=running; \
elif [ -f $D/exit_code ]; then s=\"exited \$(cat $D/exit_code)\"; else s=lost; fi; \
echo \"apr_jax_run: \$h \$s id=\$id\""

# Worker 0's log of this run, from where this start began, until the run ends.
FOLLOW="tail -c +\$((\$(cat $D/log_offset) + 1)) --pid=\"\$(cat $D/pid)\" -F $Q_LOGS/\$(hostname).log"

ssh_all() {  # ssh_all COMMAND: on every worker
  run "$GCLOUD" compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$1"
}

log() { echo "[run $(date -u +%H:%M:%S)] $*" >&2; }

copy_logs() {
  run mkdir -p "$LOG_DIR"
  run "$GCLOUD" storage cp "$WORKDIR/logs/*.log" "$LOG_DIR/" || true
}

# Polls every worker until the run with RUN_ID has ended; returns its exit
# code: 0 when every worker exited 0, else the first failing worker's (the
# others are stopped), 255 when the workers stay unreachable, 3 under
# --attach when this run is not running.
wait_for_run() {
  local attach="$1" misses=0 first=1 out tag host state rest code id running failed
  while true; do
    if out="$(ssh_all "$STATUS" 2>/dev/null)" && [[ "$out" == *"apr_jax_run: "* ]]; then
      misses=0
    else
      misses=$((misses + 1))
      if [[ $misses -ge 3 ]]; then
        log "the workers of $NAME do not answer (preempted or deleted?)"
        return 255
      fi
      sleep "$POLL"
      continue
    fi
    running=0 failed=""
    while read -r tag host state rest; do
      [[ "$tag" == "apr_jax_run:" ]] || continue
      id="${rest##*id=}" code=""
      [[ "$state" == exited ]] && code="${rest%% *}"
      if [[ "$id" != "$RUN_ID" || "$state" == none ]]; then
        if [[ "$attach" == 1 && "$first" == 1 ]]; then
          log "$host is not running this command; nothing to attach to"
          return 3
        fi
        failed="${failed:-1}"; log "$host: the run was replaced or removed"
      elif [[ "$state" == running ]]; then
        running=$((running + 1))
      elif [[ "$state" == lost ]]; then
        failed="${failed:-1}"; log "$host: the run ended without an exit code (killed or rebooted)"
      elif [[ "$code" != 0 ]]; then
        failed="${failed:-$code}"; log "$host: the run exited $code; see $WORKDIR/logs/$host.log"
      fi
    done <<< "$out"
    if [[ "$attach" == 1 && "$first" == 1 && $running == 0 ]]; then
      log "this command is not running on $NAME; nothing to attach to"
      return 3
    fi
    first=0
    if [[ -n "$failed" ]]; then
      [[ $running -gt 0 ]] && ssh_all "$STOP" >&2
      return "$failed"
    fi
    [[ $running == 0 ]] && return 0
    sleep "$POLL"
  done
}

case "$MODE" in
  status) ssh_all "$STATUS"; exit ;;
  stop) ssh_all "$STOP"; exit ;;
esac

if [[ "$DRY_RUN" == 1 ]]; then
  [[ "$MODE" == attach ]] || ssh_all "$START"
  if [[ "$MODE" == follow ]]; then
    echo "# worker 0's log until its run ends:"
    print_command "$GCLOUD" compute tpus tpu-vm ssh "$NAME" --worker=0 "${LOCATION[@]}" --command="$FOLLOW"
  fi
  if [[ "$MODE" != start ]]; then
    echo "# repeated every ${POLL}s until every worker's run has ended (exits with the run's exit code):"
    ssh_all "$STATUS"
    copy_logs
  fi
  exit 0
fi

if [[ "$MODE" != attach ]]; then
  ssh_all "$START" || exit $?
fi
[[ "$MODE" == start ]] && exit 0
if [[ "$MODE" == follow ]]; then
  "$GCLOUD" compute tpus tpu-vm ssh "$NAME" --worker=0 "${LOCATION[@]}" --command="$FOLLOW" || true
fi
set +e
wait_for_run "$([[ "$MODE" == attach ]] && echo 1 || echo 0)"
status=$?
set -e
[[ $status == 3 && "$MODE" == attach ]] && exit 3
copy_logs >&2
log "the run ended with exit code $status"
exit "$status"
