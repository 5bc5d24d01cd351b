#!/usr/bin/env bash
# Keep a training run alive on a preemptible slice: when the slice is preempted,
# failed or gone, delete it, create it again, set it up and rerun the same
# command, which resumes from the newest checkpoint in the gs:// workdir.
# Each round starts the run detached (run.sh --wait) and polls the workers
# until it has ended and with what exit code. On a healthy slice, a run of
# this same command already going (started by run.sh) is waited for instead
# of restarted. Stops when a run exits 0 on a healthy slice (finished; with
# --delete-when-done the slice is then deleted), after --max-failures runs
# that failed on a healthy slice (a real error, not a preemption), or when a
# queued resource ends FAILED or SUSPENDED or is not ACTIVE within
# --queued-timeout seconds (exit 3, one line saying why).
#
#   launch/babysit.sh --name=apr-v4 --zone=us-central2-b --accelerator-type=v4-32 \
#       --bucket=BUCKET --workdir=gs://BUCKET/runs/apr228m --config=configs/countdown4_apr_228m.py \
#       [--pricing=spot] [--queued] [--queued-timeout=86400] [--runtime-version=V] [--project=P] \
#       [--python=3.12] [--extra=tpu] [--module=train] [--compile-cache=gs://BUCKET/xla_cache] \
#       [--max-failures=3] [--poll-seconds=60] [--delete-when-done] [--dry-run] \
#       [--config.a.b=v ...] [-- MODULE FLAGS ...]
#
# Environment: the APR_* variables of create.sh, setup.sh and run.sh, plus
# APR_MAX_FAILURES, APR_POLL_SECONDS, APR_DELETE_WHEN_DONE=1, APR_DRY_RUN=1, GCLOUD.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="${APR_TPU_NAME:-}" ZONE="${APR_ZONE:-}" PROJECT="${APR_PROJECT:-}" QUEUED="${APR_QUEUED:-0}"
MAX_FAILURES="${APR_MAX_FAILURES:-3}" POLL="${APR_POLL_SECONDS:-60}"
DELETE_WHEN_DONE="${APR_DELETE_WHEN_DONE:-0}"
CREATE=() SETUP=() RUN=() COMMON=() PASS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift; continue ;;
    --queued) QUEUED=1; CREATE+=(--queued); shift; continue ;;
    --delete-when-done) DELETE_WHEN_DONE=1; shift; continue ;;
    --) shift; PASS+=("$@"); break ;;
    -h|--help) usage ;;
    --config.*=*) RUN+=("$1"); shift; continue ;;
    --config.*) [[ $# -ge 2 ]] || die "flag ${1} needs a value"; RUN+=("$1=$2"); shift 2; continue ;;
  esac
  parse_flag "$@"
  take_slice_flag || case "$FLAG_NAME" in
    accelerator-type|runtime-version|pricing|queued-timeout) CREATE+=("--$FLAG_NAME=$FLAG_VALUE") ;;
    bucket|source|python|extra) SETUP+=("--$FLAG_NAME=$FLAG_VALUE") ;;
    config) SETUP+=("--config=$FLAG_VALUE"); RUN+=("--config=$FLAG_VALUE") ;;
    workdir|log-dir|worker|module|compile-cache) RUN+=("--$FLAG_NAME=$FLAG_VALUE") ;;
    max-failures) MAX_FAILURES="$FLAG_VALUE" ;;
    poll-seconds) POLL="$FLAG_VALUE" ;;
    *) die "unknown flag --$FLAG_NAME (see --help)" ;;
  esac
  shift "$FLAG_SHIFT"
done
require "$NAME" name APR_TPU_NAME
require "$ZONE" zone APR_ZONE
[[ "$MAX_FAILURES" =~ ^[1-9][0-9]*$ ]] || die "--max-failures must be a positive integer, got '$MAX_FAILURES'"
[[ "$POLL" =~ ^[0-9]+$ ]] || die "--poll-seconds must be whole seconds, got '$POLL'"
COMMON=("--name=$NAME" "--zone=$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=("--project=$PROJECT")
[[ "$DRY_RUN" == 1 ]] && COMMON+=(--dry-run)
location_flags
export GCLOUD APR_POLL_SECONDS="$POLL"
RUN+=(${PASS[@]+-- "${PASS[@]}"})

# Check every setting before touching the slice: each script validates its
# own flags under --dry-run without calling gcloud.
APR_DRY_RUN=1 "$LAUNCH_DIR/create.sh" "${COMMON[@]}" ${CREATE[@]+"${CREATE[@]}"} --dry-run >/dev/null
APR_DRY_RUN=1 "$LAUNCH_DIR/setup.sh" "${COMMON[@]}" ${SETUP[@]+"${SETUP[@]}"} --dry-run >/dev/null
APR_DRY_RUN=1 "$LAUNCH_DIR/run.sh" "${COMMON[@]}" --dry-run ${RUN[@]+"${RUN[@]}"} >/dev/null
DELETE=("${COMMON[@]}")
[[ "$QUEUED" == 1 ]] && DELETE+=(--queued)

# READY (TPU VM) / ACTIVE (queued resource) when healthy; MISSING when absent.
slice_state() {
  local out
  if [[ "$QUEUED" == 1 ]]; then
    out="$("$GCLOUD" compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" \
      --format='value(state.state)' 2>/dev/null)" || out=MISSING
  else
    out="$("$GCLOUD" compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" \
      --format='value(state)' 2>/dev/null)" || out=MISSING
  fi
  echo "${out:-MISSING}"
}

healthy() { [[ "$1" == READY || "$1" == ACTIVE ]]; }

log() { echo "[babysit $(date -u +%H:%M:%S)] $*" >&2; }

# Returns create.sh's code when it failed: 3 means the queued resource was
# refused (FAILED, SUSPENDED) or timed out, which ends the babysitter.
recreate() {
  [[ "$1" == MISSING ]] || "$LAUNCH_DIR/delete.sh" "${DELETE[@]}" || return $?
  "$LAUNCH_DIR/create.sh" "${COMMON[@]}" ${CREATE[@]+"${CREATE[@]}"} || return $?
  "$LAUNCH_DIR/setup.sh" "${COMMON[@]}" ${SETUP[@]+"${SETUP[@]}"}
}

run_once() {
  "$LAUNCH_DIR/run.sh" "${COMMON[@]}" --wait ${RUN[@]+"${RUN[@]}"}
}

if [[ "$DRY_RUN" == 1 ]]; then
  echo "# each round: check the slice; if it is not READY, recreate it:"
  print_command "$GCLOUD" compute tpus "$([[ "$QUEUED" == 1 ]] && echo queued-resources || echo tpu-vm)" \
    describe "$NAME" "${LOCATION[@]}" "--format=value($([[ "$QUEUED" == 1 ]] && echo state.state || echo state))"
  recreate PREEMPTED
  echo "# then start the run (resuming from the newest checkpoint) and wait for it; repeat until it finishes:"
  run_once
  if [[ "$DELETE_WHEN_DONE" == 1 ]]; then
    echo "# once it has finished (exit 0):"
    "$LAUNCH_DIR/delete.sh" "${DELETE[@]}"
  fi
  exit 0
fi

failures=0 round=0
while true; do
  round=$((round + 1))
  state="$(slice_state)"
  rc=""
  if ! healthy "$state"; then
    log "round $round: slice $NAME is $state; recreating it"
    set +e
    recreate "$state"
    code=$?
    set -e
    if [[ $code == 3 ]]; then
      log "giving up: the queued resource did not become ACTIVE (see the error above)"
      exit 3
    elif [[ $code != 0 ]]; then
      log "recreating failed; retrying in ${POLL}s"
      sleep "$POLL"
      continue
    fi
  elif [[ $round == 1 ]]; then
    # A run of this same command may already be going (started by run.sh): wait for it.
    set +e
    "$LAUNCH_DIR/run.sh" "${COMMON[@]}" --attach ${RUN[@]+"${RUN[@]}"}
    rc=$?
    set -e
    if [[ $rc == 3 ]]; then
      rc=""
      "$LAUNCH_DIR/setup.sh" "${COMMON[@]}" ${SETUP[@]+"${SETUP[@]}"}
    else
      log "round $round: waited for the run already going on $NAME"
    fi
  fi
  if [[ -z "$rc" ]]; then
    log "round $round: starting the run"
    set +e
    run_once
    rc=$?
    set -e
  fi
  state="$(slice_state)"
  if [[ $rc == 0 ]] && healthy "$state"; then
    log "run finished (exit 0, slice $state)"
    if [[ "$DELETE_WHEN_DONE" == 1 ]]; then
      log "deleting $NAME (--delete-when-done)"
      "$LAUNCH_DIR/delete.sh" "${DELETE[@]}"
    fi
    exit 0
  fi
  if healthy "$state"; then
    failures=$((failures + 1))
    log "run failed with exit $rc on a healthy slice ($failures of $MAX_FAILURES)"
    if [[ $failures -ge $MAX_FAILURES ]]; then
      log "giving up: the run fails on a healthy slice; see the worker logs"
      exit 1
    fi
  else
    log "run ended (exit $rc) with the slice $state: preempted; will recreate"
  fi
  sleep "$POLL"
done
