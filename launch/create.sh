#!/usr/bin/env bash
# Create a TPU VM (single host) or a pod slice, directly or as a queued resource.
# --queued waits until the request is ACTIVE, polling every APR_POLL_SECONDS
# (default 60); it stops with exit 3 and one line saying why when the request
# ends FAILED or SUSPENDED, or is not ACTIVE after --queued-timeout seconds
# (default 86400; 0: no limit).
#
#   launch/create.sh --name=apr-v4 --zone=us-central2-b --accelerator-type=v4-32 \
#       [--runtime-version=V] [--project=P] [--pricing=on-demand|spot|preemptible|reserved] \
#       [--queued] [--queued-timeout=SECONDS] [--dry-run]
#
# Environment: APR_TPU_NAME, APR_ZONE, APR_ACCELERATOR_TYPE, APR_RUNTIME_VERSION,
# APR_PROJECT, APR_PRICING, APR_QUEUED=1, APR_QUEUED_TIMEOUT, APR_POLL_SECONDS,
# APR_DRY_RUN=1, GCLOUD.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="${APR_TPU_NAME:-}" ZONE="${APR_ZONE:-}" PROJECT="${APR_PROJECT:-}"
ACCELERATOR="${APR_ACCELERATOR_TYPE:-}" RUNTIME="${APR_RUNTIME_VERSION:-}"
PRICING="${APR_PRICING:-on-demand}" QUEUED="${APR_QUEUED:-0}"
QUEUED_TIMEOUT="${APR_QUEUED_TIMEOUT:-86400}" POLL="${APR_POLL_SECONDS:-60}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift; continue ;;
    --queued) QUEUED=1; shift; continue ;;
    -h|--help) usage ;;
  esac
  parse_flag "$@"
  take_slice_flag || case "$FLAG_NAME" in
    accelerator-type) ACCELERATOR="$FLAG_VALUE" ;;
    runtime-version) RUNTIME="$FLAG_VALUE" ;;
    pricing) PRICING="$FLAG_VALUE" ;;
    queued-timeout) QUEUED_TIMEOUT="$FLAG_VALUE" ;;
    *) die "unknown flag --$FLAG_NAME (see --help)" ;;
  esac
  shift "$FLAG_SHIFT"
done
require "$NAME" name APR_TPU_NAME
require "$ZONE" zone APR_ZONE
require "$ACCELERATOR" accelerator-type APR_ACCELERATOR_TYPE
check_accelerator "$ACCELERATOR"
[[ "$QUEUED_TIMEOUT" =~ ^[0-9]+$ ]] || die "--queued-timeout must be whole seconds (0: no limit), got '$QUEUED_TIMEOUT'"
[[ "$POLL" =~ ^[0-9]+$ ]] || die "APR_POLL_SECONDS must be whole seconds, got '$POLL'"
RUNTIME="${RUNTIME:-$(default_runtime "$ACCELERATOR")}"
case "$PRICING" in
  on-demand) PRICE_FLAGS=() ;;
  spot|preemptible|reserved) PRICE_FLAGS=("--$PRICING") ;;
  *) die "--pricing must be on-demand, spot, preemptible or reserved, got '$PRICING'" ;;
esac
location_flags

if [[ "$QUEUED" == 1 ]]; then
  [[ "$PRICING" == preemptible ]] && die "--pricing=preemptible is not offered for queued resources; use --pricing=spot"
  run "$GCLOUD" compute tpus queued-resources create "$NAME" --node-id="$NAME" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${LOCATION[@]}" \
    ${PRICE_FLAGS[@]+"${PRICE_FLAGS[@]}"}
  # The node exists once the request is ACTIVE; wait for it.
  STATE_COMMAND=("$GCLOUD" compute tpus queued-resources describe "$NAME" "${LOCATION[@]}"
                 --format=value\(state.state\))
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# repeated every ${POLL}s until it prints ACTIVE (FAILED or SUSPENDED, or $(
      [[ $QUEUED_TIMEOUT == 0 ]] && echo "no limit" || echo "${QUEUED_TIMEOUT}s"), stops with exit 3):"
    print_command "${STATE_COMMAND[@]}"
  else
    queued_reason() {  # one line from the request's state data
      "$GCLOUD" compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" \
        --format="value($1)" 2>/dev/null | tr -s '\n\t' '  ' | sed 's/ *$//'
    }
    started=$SECONDS
    while true; do
      state="$("${STATE_COMMAND[@]}" 2>/dev/null)" || state=""
      case "$state" in
        ACTIVE) break ;;
        FAILED)
          reason="$(queued_reason state.failedData.error.message)"
          echo "error: queued resource $NAME is FAILED: ${reason:-no reason given}; delete it with launch/delete.sh --queued" >&2
          exit 3 ;;
        SUSPENDING|SUSPENDED)
          reason="$(queued_reason state.stateInitiator)"
          echo "error: queued resource $NAME is $state (its TPUs were deleted${reason:+, initiated by $reason}); delete it with launch/delete.sh --queued" >&2
          exit 3 ;;
      esac
      if [[ $QUEUED_TIMEOUT != 0 && $((SECONDS - started)) -ge $QUEUED_TIMEOUT ]]; then
        echo "error: queued resource $NAME is not ACTIVE after ${QUEUED_TIMEOUT}s (state ${state:-unknown}); delete it with launch/delete.sh --queued or raise --queued-timeout" >&2
        exit 3
      fi
      sleep "$POLL"
    done
  fi
else
  run "$GCLOUD" compute tpus tpu-vm create "$NAME" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" "${LOCATION[@]}" ${PRICE_FLAGS[@]+"${PRICE_FLAGS[@]}"}
fi
