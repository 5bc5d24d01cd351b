#!/usr/bin/env bash
# Run the same `python -m apr_jax.train` on every worker of a slice at once,
# with the workdir (checkpoints, metrics) on a gs:// bucket that setup.sh
# mounted at /mnt/gcs/BUCKET on every worker; each worker's log is copied to
# WORKDIR/logs/<hostname>.log and then into --log-dir here. Rerunning resumes
# from the newest checkpoint in the workdir.
#
# --config names the config file given to setup.sh (it runs as configs/<file name>).
#
#   launch/run.sh --name=apr-v4 --zone=us-central2-b --workdir=gs://BUCKET/runs/apr228m \
#       --config=configs/countdown4_apr_228m.py [--project=P] [--log-dir=DIR] [--dry-run] \
#       [-- --config.train.steps=100 ...]
#
# Environment: APR_TPU_NAME, APR_ZONE, APR_PROJECT, APR_WORKDIR, APR_CONFIG,
# APR_LOG_DIR, APR_JAX_DISTRIBUTED_TIMEOUT (seconds the workers wait for each
# other at start-up, default 300), APR_DRY_RUN=1, GCLOUD.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="${APR_TPU_NAME:-}" ZONE="${APR_ZONE:-}" PROJECT="${APR_PROJECT:-}"
WORKDIR="${APR_WORKDIR:-}" CONFIG="${APR_CONFIG:-}" LOG_DIR="${APR_LOG_DIR:-}"
TIMEOUT="${APR_JAX_DISTRIBUTED_TIMEOUT:-300}"
OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift; continue ;;
    --) shift; OVERRIDES=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  esac
  parse_flag "$@"
  take_slice_flag || case "$FLAG_NAME" in
    workdir) WORKDIR="$FLAG_VALUE" ;;
    config) CONFIG="$FLAG_VALUE" ;;
    log-dir) LOG_DIR="$FLAG_VALUE" ;;
    worker)
      [[ "$FLAG_VALUE" == all ]] || die "--worker=$FLAG_VALUE: training runs on every worker at once (--worker=all); on a multi-host slice a run on one worker waits for the others and then fails"
      ;;
    *) die "unknown flag --$FLAG_NAME (see --help)" ;;
  esac
  shift "$FLAG_SHIFT"
done
require "$NAME" name APR_TPU_NAME
require "$ZONE" zone APR_ZONE
require "$WORKDIR" workdir APR_WORKDIR
require "$CONFIG" config APR_CONFIG
[[ "$WORKDIR" == gs://* ]] || die "--workdir=$WORKDIR must be a gs:// path every worker can reach (checkpoints are written by all workers together)"
for arg in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
  [[ "$arg" == --config.* ]] || die "arguments after -- must be config overrides like --config.train.steps=100, got '$arg'"
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "APR_JAX_DISTRIBUTED_TIMEOUT must be whole seconds, got '$TIMEOUT'"
LOG_DIR="${LOG_DIR:-logs/$NAME}"
location_flags

MOUNTED="$(mounted_path "$WORKDIR")"
BUCKET_MOUNT="/mnt/gcs/$(echo "${WORKDIR#gs://}" | cut -d/ -f1)"
# setup.sh copies the config into ~/apr_jax/configs/ on every worker.
TRAIN="python3 -m apr_jax.train --workdir=$(quote_arg "$MOUNTED") --config=configs/$(quote_arg "$(basename "$CONFIG")")"
for arg in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do TRAIN+=" $(quote_arg "$arg")"; done
REMOTE="mountpoint -q $BUCKET_MOUNT || { echo \"error: $BUCKET_MOUNT is not mounted; run launch/setup.sh --bucket=...\" >&2; exit 2; }; \
cd ~/apr_jax && mkdir -p ~/apr_jax_logs $(quote_arg "$MOUNTED/logs") && \
APR_JAX_DISTRIBUTED=auto APR_JAX_DISTRIBUTED_TIMEOUT=$TIMEOUT $TRAIN 2>&1 | tee ~/apr_jax_logs/train.log; \
rc=\${PIPESTATUS[0]}; cp ~/apr_jax_logs/train.log $(quote_arg "$MOUNTED/logs")/\$(hostname).log; exit \$rc"

set +e
run "$GCLOUD" compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$REMOTE"
status=$?
set -e
run mkdir -p "$LOG_DIR"
run "$GCLOUD" storage cp "$WORKDIR/logs/*.log" "$LOG_DIR/" || true
exit "$status"
