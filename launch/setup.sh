#!/usr/bin/env bash
# Install apr_jax (with the tpu extra) on every worker of a TPU VM / pod slice
# from a local checkout, copy a config that lives outside configs/, and mount
# the run's bucket at /mnt/gcs/BUCKET on every worker (gcsfuse), so the
# trainer's workdir is one shared path for checkpoints and metrics.
#
#   launch/setup.sh --name=apr-v4 --zone=us-central2-b --bucket=BUCKET [--project=P] \
#       [--source=DIR] [--config=path/to/config.py] [--dry-run]
#
# Environment: APR_TPU_NAME, APR_ZONE, APR_BUCKET, APR_PROJECT, APR_SOURCE,
# APR_CONFIG, APR_DRY_RUN=1, GCLOUD. The package lands in ~/apr_jax.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="${APR_TPU_NAME:-}" ZONE="${APR_ZONE:-}" PROJECT="${APR_PROJECT:-}"
SOURCE="${APR_SOURCE:-$REPO_DIR}" CONFIG="${APR_CONFIG:-}" BUCKET="${APR_BUCKET:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift; continue ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  esac
  parse_flag "$@"
  take_slice_flag || case "$FLAG_NAME" in
    source) SOURCE="$FLAG_VALUE" ;;
    config) CONFIG="$FLAG_VALUE" ;;
    bucket) BUCKET="${FLAG_VALUE#gs://}"; BUCKET="${BUCKET%%/*}" ;;
    *) die "unknown flag --$FLAG_NAME (see --help)" ;;
  esac
  shift "$FLAG_SHIFT"
done
require "$NAME" name APR_TPU_NAME
require "$ZONE" zone APR_ZONE
require "$BUCKET" bucket APR_BUCKET
[[ -f "$SOURCE/pyproject.toml" && -d "$SOURCE/apr_jax" ]] || die "--source=$SOURCE is not an apr_jax checkout (no pyproject.toml and apr_jax/)"
[[ -z "$CONFIG" || -f "$CONFIG" ]] || die "--config=$CONFIG: no such file"
location_flags

ARCHIVE="${TMPDIR:-/tmp}/apr_jax_src_$NAME.tar.gz"
run tar -czf "$ARCHIVE" -C "$SOURCE" --exclude=.git --exclude=runs --exclude=data_cache \
  --exclude=.venv --exclude=.pytest_cache --exclude=__pycache__ --exclude='*.egg-info' .
run "$GCLOUD" compute tpus tpu-vm scp "$ARCHIVE" "$NAME:/tmp/apr_jax_src.tar.gz" \
  --worker=all "${LOCATION[@]}"
run "$GCLOUD" compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" \
  --command='rm -rf ~/apr_jax && mkdir -p ~/apr_jax && tar -xzf /tmp/apr_jax_src.tar.gz -C ~/apr_jax && cd ~/apr_jax && python3 -m pip install -q -e ".[tpu]" && python3 -c "import jax; print(jax.local_device_count(), jax.devices()[0].device_kind)"'
if [[ -n "$CONFIG" ]]; then
  run "$GCLOUD" compute tpus tpu-vm scp "$CONFIG" "$NAME:apr_jax/configs/$(basename "$CONFIG")" \
    --worker=all "${LOCATION[@]}"
fi
run "$GCLOUD" compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" \
  --command="$(bucket_mount_command "$BUCKET")"
