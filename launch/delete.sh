#!/usr/bin/env bash
# Delete a TPU VM / pod slice (or its queued resource).
#
#   launch/delete.sh --name=apr-v4 --zone=us-central2-b [--project=P] [--queued] [--dry-run]
#
# Environment: APR_TPU_NAME, APR_ZONE, APR_PROJECT, APR_QUEUED=1, APR_DRY_RUN=1, GCLOUD.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="${APR_TPU_NAME:-}" ZONE="${APR_ZONE:-}" PROJECT="${APR_PROJECT:-}" QUEUED="${APR_QUEUED:-0}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift; continue ;;
    --queued) QUEUED=1; shift; continue ;;
    -h|--help) usage ;;
  esac
  parse_flag "$@"
  take_slice_flag || die "unknown flag --$FLAG_NAME (see --help)"
  shift "$FLAG_SHIFT"
done
require "$NAME" name APR_TPU_NAME
require "$ZONE" zone APR_ZONE
location_flags

if [[ "$QUEUED" == 1 ]]; then
  run "$GCLOUD" compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force --quiet
else
  run "$GCLOUD" compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
fi
