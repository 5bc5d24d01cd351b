#!/usr/bin/env bash
# Create a TPU VM (single host) or a pod slice, directly or as a queued resource.
#
#   launch/create.sh --name=apr-v4 --zone=us-central2-b --accelerator-type=v4-32 \
#       [--runtime-version=V] [--project=P] [--pricing=on-demand|spot|preemptible|reserved] \
#       [--queued] [--dry-run]
#
# Environment: APR_TPU_NAME, APR_ZONE, APR_ACCELERATOR_TYPE, APR_RUNTIME_VERSION,
# APR_PROJECT, APR_PRICING, APR_QUEUED=1, APR_DRY_RUN=1, GCLOUD.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="${APR_TPU_NAME:-}" ZONE="${APR_ZONE:-}" PROJECT="${APR_PROJECT:-}"
ACCELERATOR="${APR_ACCELERATOR_TYPE:-}" RUNTIME="${APR_RUNTIME_VERSION:-}"
PRICING="${APR_PRICING:-on-demand}" QUEUED="${APR_QUEUED:-0}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift; continue ;;
    --queued) QUEUED=1; shift; continue ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
  esac
  parse_flag "$@"
  take_slice_flag || case "$FLAG_NAME" in
    accelerator-type) ACCELERATOR="$FLAG_VALUE" ;;
    runtime-version) RUNTIME="$FLAG_VALUE" ;;
    pricing) PRICING="$FLAG_VALUE" ;;
    *) die "unknown flag --$FLAG_NAME (see --help)" ;;
  esac
  shift "$FLAG_SHIFT"
done
require "$NAME" name APR_TPU_NAME
require "$ZONE" zone APR_ZONE
require "$ACCELERATOR" accelerator-type APR_ACCELERATOR_TYPE
check_accelerator "$ACCELERATOR"
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
    echo "# repeated every ${APR_POLL_SECONDS:-60}s until it prints ACTIVE:"
    print_command "${STATE_COMMAND[@]}"
  else
    until [[ "$("${STATE_COMMAND[@]}" 2>/dev/null)" == ACTIVE ]]; do sleep "${APR_POLL_SECONDS:-60}"; done
  fi
else
  run "$GCLOUD" compute tpus tpu-vm create "$NAME" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" "${LOCATION[@]}" ${PRICE_FLAGS[@]+"${PRICE_FLAGS[@]}"}
fi
