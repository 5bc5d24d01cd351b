# Shared helpers for the launch scripts (sourced, not run).
# Every setting is a flag or an APR_* environment variable; --dry-run prints
# the exact commands instead of running them. GCLOUD names the gcloud binary.

GCLOUD="${GCLOUD:-gcloud}"
DRY_RUN="${APR_DRY_RUN:-0}"
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$LAUNCH_DIR")"

# --help: the comment block at the top of the script, without the "# ".
usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  exit 0
}

die() {
  echo "error: $*" >&2
  exit 2
}

# Quote one argument for a copy-pasteable command line.
quote_arg() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

print_command() {
  local out="" arg
  for arg in "$@"; do out+="$(quote_arg "$arg") "; done
  echo "${out% }"
}

# Runs a command, or prints it under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    print_command "$@"
  else
    "$@"
  fi
}

# Splits --flag=value / --flag value into FLAG_NAME and FLAG_VALUE; sets
# FLAG_SHIFT to the number of arguments consumed.
parse_flag() {
  FLAG_NAME="${1%%=*}"
  FLAG_NAME="${FLAG_NAME#--}"
  if [[ "$1" == *=* ]]; then
    FLAG_VALUE="${1#*=}"
    FLAG_SHIFT=1
  elif [[ $# -ge 2 && "$2" != --* ]]; then
    FLAG_VALUE="$2"
    FLAG_SHIFT=2
  else
    die "flag --$FLAG_NAME needs a value"
  fi
}

# Takes the flags every script shares (--name, --zone, --project) from the
# last parse_flag; returns 1 for any other flag.
take_slice_flag() {
  case "$FLAG_NAME" in
    name) NAME="$FLAG_VALUE" ;;
    zone) ZONE="$FLAG_VALUE" ;;
    project) PROJECT="$FLAG_VALUE" ;;
    *) return 1 ;;
  esac
}

require() {  # require VALUE FLAG ENV
  [[ -n "$1" ]] || die "missing --$2 (or set $3)"
}

# Accelerator type -> number of TPU VM workers (hosts). Names count
# TensorCores on v4/v5p (2 per chip) and chips on v5e/v6e; 4 chips per host,
# except single-host v5e/v6e slices of up to 8 chips.
KNOWN_ACCELERATORS="v4-8 v4-16 v4-32 v4-64 v4-128 v4-256 v4-512 v4-1024 \
v5p-8 v5p-16 v5p-32 v5p-64 v5p-128 v5p-256 v5p-512 v5p-1024 \
v5litepod-1 v5litepod-4 v5litepod-8 v5litepod-16 v5litepod-32 v5litepod-64 v5litepod-128 v5litepod-256 \
v6e-1 v6e-4 v6e-8 v6e-16 v6e-32 v6e-64 v6e-128 v6e-256"

check_accelerator() {
  local t
  for t in $KNOWN_ACCELERATORS; do [[ "$t" == "$1" ]] && return 0; done
  die "unknown accelerator type '$1'; known: $KNOWN_ACCELERATORS"
}

accelerator_hosts() {
  check_accelerator "$1"
  local family="${1%-*}" count="${1##*-}"
  case "$family" in
    v4|v5p) echo $(( count / 2 <= 4 ? 1 : count / 8 )) ;;
    *) echo $(( count <= 8 ? 1 : count / 4 )) ;;
  esac
}

default_runtime() {
  case "${1%-*}" in
    v4) echo "tpu-ubuntu2204-base" ;;
    v5p) echo "v2-alpha-tpuv5" ;;
    v5litepod) echo "v2-alpha-tpuv5-lite" ;;
    v6e) echo "v2-alpha-tpuv6e" ;;
  esac
}

# gcloud flags naming the node: zone, and project when given.
location_flags() {
  LOCATION=("--zone=$ZONE")
  [[ -n "$PROJECT" ]] && LOCATION+=("--project=$PROJECT")
  return 0
}

# Where setup.sh mounts buckets on every worker (gs://BUCKET -> MOUNT_ROOT/BUCKET).
MOUNT_ROOT="${APR_MOUNT_ROOT:-/mnt/gcs}"
# On every worker: the checkout, its virtual environment (a supported Python,
# made by setup.sh with uv), and the detached run's pid / exit-code files.
# Left unquoted in the remote commands, so ~ expands there.
REMOTE_VENV='~/apr_jax_venv'
REMOTE_RUN_DIR='~/apr_jax_run'
PYTHON_VERSIONS="3.11 3.12 3.13"  # pyproject.toml: requires-python >=3.11,<3.14
MODULES="train evaluate compare convert aot"

# Shell commands that install gcsfuse (once) and mount BUCKET at MOUNT_ROOT/BUCKET.
bucket_mount_command() {
  local mount
  mount="$(quote_arg "$MOUNT_ROOT/$1")"
  echo "set -e; if ! command -v gcsfuse >/dev/null; then \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi; \
sudo mkdir -p $mount && sudo chown \$USER $mount; \
mountpoint -q $mount || gcsfuse --implicit-dirs --rename-dir-limit=200000 $1 $mount"
}

# gs://BUCKET/PATH -> BUCKET.
bucket_of() {
  local rest="${1#gs://}"
  echo "${rest%%/*}"
}

# gs://BUCKET/PATH -> the path where setup.sh mounted it on every worker.
mounted_path() {
  local rest="${1#gs://}"
  echo "$MOUNT_ROOT/$rest"
}

# A path as the workers see it: gs://BUCKET/... becomes the mounted path
# (BUCKET must be the mounted one, $2); anything else is kept. $3 names the
# flag for the error message.
worker_path() {
  if [[ "$1" == gs://* ]]; then
    [[ "$(bucket_of "$1")" == "$2" ]] || die "$3: $1 is not in gs://$2, the bucket mounted on the workers (launch/setup.sh --bucket=$2)"
    mounted_path "$1"
  else
    echo "$1"
  fi
}
