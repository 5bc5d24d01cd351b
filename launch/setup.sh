#!/usr/bin/env bash
# Install apr_jax on every worker of a TPU VM / pod slice from a local
# checkout, in a virtual environment with a supported Python (the stock TPU
# images have Python 3.10; apr_jax needs 3.11 to 3.13): uv (installed with
# the image's python3 -m pip --user) makes ~/apr_jax_venv with --python and
# installs the checkout there with --extra; each worker then prints its
# Python, JAX and device count. Also copies a config that lives outside
# configs/ (one in the bucket needs no copy), and mounts the run's bucket at
# /mnt/gcs/BUCKET on every worker (gcsfuse), so the workdir is one shared
# path for checkpoints and metrics.
#
#   launch/setup.sh --name=apr-v4 --zone=us-central2-b --bucket=BUCKET [--project=P] \
#       [--source=DIR] [--config=path/to/config.py] [--python=3.12] [--extra=tpu] [--dry-run]
#
# Environment: APR_TPU_NAME, APR_ZONE, APR_BUCKET, APR_PROJECT, APR_SOURCE,
# APR_CONFIG, APR_PYTHON (default 3.12), APR_EXTRA (default tpu; empty: no
# extra), APR_MOUNT_ROOT (default /mnt/gcs), APR_DRY_RUN=1, GCLOUD. The
# checkout lands in ~/apr_jax, the environment in ~/apr_jax_venv.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="${APR_TPU_NAME:-}" ZONE="${APR_ZONE:-}" PROJECT="${APR_PROJECT:-}"
SOURCE="${APR_SOURCE:-$REPO_DIR}" CONFIG="${APR_CONFIG:-}" BUCKET="${APR_BUCKET:-}"
PYTHON="${APR_PYTHON:-3.12}" EXTRA="${APR_EXTRA-tpu}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift; continue ;;
    -h|--help) usage ;;
  esac
  parse_flag "$@"
  take_slice_flag || case "$FLAG_NAME" in
    source) SOURCE="$FLAG_VALUE" ;;
    config) CONFIG="$FLAG_VALUE" ;;
    bucket) BUCKET="${FLAG_VALUE#gs://}"; BUCKET="${BUCKET%%/*}" ;;
    python) PYTHON="$FLAG_VALUE" ;;
    extra) EXTRA="$FLAG_VALUE" ;;
    *) die "unknown flag --$FLAG_NAME (see --help)" ;;
  esac
  shift "$FLAG_SHIFT"
done
require "$NAME" name APR_TPU_NAME
require "$ZONE" zone APR_ZONE
require "$BUCKET" bucket APR_BUCKET
[[ " $PYTHON_VERSIONS " == *" $PYTHON "* ]] || die "--python=$PYTHON: apr_jax runs on Python $PYTHON_VERSIONS"
[[ "$EXTRA" =~ ^[a-z0-9_,-]*$ ]] || die "--extra=$EXTRA: give extras of pyproject.toml like tpu or cuda (empty: none)"
[[ -f "$SOURCE/pyproject.toml" && -d "$SOURCE/apr_jax" ]] || die "--source=$SOURCE is not an apr_jax checkout (no pyproject.toml and apr_jax/)"
# A config in the bucket (gs://BUCKET/... or its mounted path) is read there;
# any other is copied into configs/ on every worker.
COPY_CONFIG=1
if [[ -n "$CONFIG" ]]; then
  if [[ "$CONFIG" == gs://* ]]; then
    worker_path "$CONFIG" "$BUCKET" "--config" >/dev/null
    COPY_CONFIG=0
  elif [[ "$CONFIG" == "$MOUNT_ROOT"/* ]]; then
    COPY_CONFIG=0
  else
    [[ -f "$CONFIG" ]] || die "--config=$CONFIG: no such file"
  fi
fi
location_flags

SPEC="."
[[ -n "$EXTRA" ]] && SPEC=".[$EXTRA]"
# uv: the one on PATH, or the image's python3 installs it for this user
# (python3 is used for nothing else).
INSTALL="rm -rf ~/apr_jax && mkdir -p ~/apr_jax && tar -xzf ~/apr_jax_src.tar.gz -C ~/apr_jax && cd ~/apr_jax && \
UV=\"\$(command -v uv || echo ~/.local/bin/uv)\" && \
{ [ -x \"\$UV\" ] || python3 -m pip install --user -q uv; } && \
rm -rf $REMOTE_VENV && \"\$UV\" venv -q --python $PYTHON $REMOTE_VENV && \
\"\$UV\" pip install -q --python $REMOTE_VENV/bin/python -e \"$SPEC\" && \
info=\"\$($REMOTE_VENV/bin/python -c 'import sys, jax; print(\"Python\", sys.version.split()[0], \"- jax\", jax.__version__, \"-\", jax.local_device_count(), \"devices\", jax.devices()[0].device_kind)')\" && \
echo \"\$(hostname): \$info\""

ARCHIVE="${TMPDIR:-/tmp}/apr_jax_src_$NAME.tar.gz"
run tar -czf "$ARCHIVE" -C "$SOURCE" --exclude=.git --exclude=runs --exclude=data_cache \
  --exclude=.venv --exclude=.pytest_cache --exclude=__pycache__ --exclude='*.egg-info' .
run "$GCLOUD" compute tpus tpu-vm scp "$ARCHIVE" "$NAME:apr_jax_src.tar.gz" \
  --worker=all "${LOCATION[@]}"
run "$GCLOUD" compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$INSTALL"
if [[ -n "$CONFIG" && "$COPY_CONFIG" == 1 ]]; then
  run "$GCLOUD" compute tpus tpu-vm scp "$CONFIG" "$NAME:apr_jax/configs/$(basename "$CONFIG")" \
    --worker=all "${LOCATION[@]}"
fi
run "$GCLOUD" compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" \
  --command="$(bucket_mount_command "$BUCKET")"
