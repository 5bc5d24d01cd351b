"""A fake TPU slice for the launch scripts' tests: a `gcloud` that runs each
`tpu-vm ssh --command` in a sandbox directory per worker (its HOME), in
parallel for --worker=all, and `scp` copies into those sandboxes. Nothing
leaves this machine.

Each worker's PATH starts with shims that make it look like a stock TPU VM
image: `python3` is Python 3.10 (it can only `-m pip install --user uv`, which
puts the fake `uv` into ~/.local/bin; any other use fails and is logged),
`sudo` runs its command, `gcsfuse` / `mountpoint` record and check mounts,
`hostname` names the worker. Buckets live under FAKE_DIR/mnt, which the tests
give the scripts as APR_MOUNT_ROOT, so gs://B/x, the workers' mount of it and
`gcloud storage cp` all see one directory.

The fake `uv venv` makes the environment in one of two ways:

- ``real``: a real virtual environment of the test's interpreter (no pip, no
  download) that sees the test's installed packages through a .pth file;
  `uv pip install -e .[extra]` checks the extra exists in pyproject.toml and
  installs the checkout editable (its directory on the venv's path).
- ``scripted``: bin/python is a script. `-m apr_jax.*` sleeps FAKE_RUN_SECONDS
  and exits with the next code of FAKE_DIR/run_codes (one line per start, one
  code per worker, the first code for missing ones); the code ``preempt``
  marks the slice PREEMPTED (its workers stop answering ssh) and exits 143.

Slice state: FAKE_DIR/state (READY / ACTIVE / MISSING / PREEMPTED ...);
create makes fresh worker sandboxes, delete removes them (ending the
processes the runs' pid files name, as a deleted VM would). Queued-resource
`describe` prints the lines of FAKE_DIR/queued_states one call at a time,
then the state. Every gcloud call is appended to FAKE_DIR/calls.
"""

from __future__ import annotations

import stat
import sys
import sysconfig
from pathlib import Path

from helpers.paths import REPO_ROOT

REPO = REPO_ROOT

GCLOUD = r"""#!/usr/bin/env bash
set -u
F="$FAKE_DIR"
echo "$*" >> "$F/calls"
healthy() { [[ "$(cat "$F/state")" == READY || "$(cat "$F/state")" == ACTIVE ]]; }
worker_list() {  # --worker=all|N
  if [[ "$1" == all ]]; then seq 0 $((FAKE_WORKERS - 1)); else echo "$1"; fi
}
new_workers() {
  stop_workers
  rm -rf "$F/workers"
  for w in $(seq 0 $((FAKE_WORKERS - 1))); do mkdir -p "$F/workers/w$w/tmp"; done
}
stop_workers() {  # a deleted VM's processes end with it
  local pidfile pid
  for pidfile in "$F"/workers/w*/apr_jax_run/pid; do
    [[ -f "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    if ps -o args= -p "$pid" 2>/dev/null | grep -q apr_jax_run; then kill -KILL -- "-$pid" 2>/dev/null; fi
  done
  return 0
}
worker_env() {  # the environment of worker $1's commands
  local w="$1" home="$F/workers/w$1" var
  ENV=(HOME="$home" PATH="$F/bin:/usr/bin:/bin" USER="$(id -un)" LANG=C.UTF-8 TMPDIR="$home/tmp"
       FAKE_DIR="$F" FAKE_WORKER="$w" FAKE_HOSTNAME="${NAME}-w-$w"
       FAKE_RUN_SECONDS="${FAKE_RUN_SECONDS:-0}" FAKE_UV_MODE="$FAKE_UV_MODE"
       FAKE_REAL_PYTHON="$FAKE_REAL_PYTHON" FAKE_SITE_PACKAGES="$FAKE_SITE_PACKAGES")
  if [[ -n "${FAKE_JAX_PORT:-}" ]]; then  # what jax.distributed finds on a real slice
    ENV+=(JAX_COORDINATOR_ADDRESS="127.0.0.1:$FAKE_JAX_PORT" JAX_NUM_PROCESSES="$FAKE_WORKERS"
          JAX_PROCESS_ID="$w")
  fi
  for var in $(compgen -e); do
    [[ "$var" == WORKER_* ]] && ENV+=("${var#WORKER_}=${!var}")
  done
  return 0
}

words=("$@")
command="" worker=all format="" positional=()
for word in "${words[@]}"; do
  case "$word" in
    --command=*) command="${word#--command=}" ;;
    --worker=*) worker="${word#--worker=}" ;;
    --format=*) format="${word#--format=}" ;;
    --*) ;;
    *) positional+=("$word") ;;
  esac
done
set -- "${positional[@]}"
case "$1 $2" in
  "compute tpus") kind="$3" verb="$4" NAME="${5:-}" ;;
  "storage cp") kind=storage verb=cp ;;
  *) echo "fake gcloud: unexpected call: ${words[*]}" >&2; exit 2 ;;
esac

case "$kind $verb" in
  "tpu-vm describe"|"queued-resources describe")
    [[ "$(cat "$F/state")" == MISSING ]] && { echo "ERROR: NOT_FOUND: $NAME" >&2; exit 1; }
    case "$format" in
      *failedData*) cat "$F/failed_reason" 2>/dev/null; exit 0 ;;
      *stateInitiator*) echo SERVICE; exit 0 ;;
    esac
    if [[ "$kind" == queued-resources && -s "$F/queued_states" ]]; then
      head -n1 "$F/queued_states"; sed -i 1d "$F/queued_states"
    else
      cat "$F/state"
    fi ;;
  "tpu-vm create") new_workers; echo READY > "$F/state" ;;
  "queued-resources create") new_workers; echo ACTIVE > "$F/state" ;;
  "tpu-vm delete"|"queued-resources delete") stop_workers; rm -rf "$F/workers"; echo MISSING > "$F/state" ;;
  "tpu-vm scp")
    src="$5" dest="${6#*:}"
    healthy || { echo "ERROR: $NAME is not reachable" >&2; exit 255; }
    for w in $(worker_list "$worker"); do
      mkdir -p "$(dirname "$F/workers/w$w/$dest")" && cp "$src" "$F/workers/w$w/$dest" || exit 1
    done ;;
  "tpu-vm ssh")
    healthy || { echo "ERROR: $NAME is not reachable" >&2; exit 255; }
    ws=($(worker_list "$worker"))
    if [[ ${#ws[@]} == 1 ]]; then  # streams, as --follow needs
      worker_env "${ws[0]}"
      cd "$F/workers/w${ws[0]}" && exec env -i "${ENV[@]}" bash -c "$command"
    fi
    pids=()
    for w in "${ws[@]}"; do
      worker_env "$w"
      (cd "$F/workers/w$w" && exec env -i "${ENV[@]}" bash -c "$command") \
        > "$F/ssh_out.$$.$w" 2> "$F/ssh_err.$$.$w" &
      pids+=($!)
    done
    rc=0
    for i in "${!ws[@]}"; do
      wait "${pids[$i]}" || rc=$?
      cat "$F/ssh_out.$$.${ws[$i]}"; cat "$F/ssh_err.$$.${ws[$i]}" >&2
      rm -f "$F/ssh_out.$$.${ws[$i]}" "$F/ssh_err.$$.${ws[$i]}"
    done
    exit "$rc" ;;
  "storage cp")
    src="$3" dest="$4"
    path="${src#gs://}"
    shopt -s nullglob
    files=("$F/mnt/"$path)
    [[ ${#files[@]} -gt 0 ]] || { echo "ERROR: no URLs matched: $src" >&2; exit 1; }
    cp "${files[@]}" "$dest" ;;
  *) echo "fake gcloud: unexpected call: ${words[*]}" >&2; exit 2 ;;
esac
"""

PYTHON3 = r"""#!/usr/bin/env bash
# The image's Python 3.10.
echo "$*" >> "$FAKE_DIR/python3_calls"
case "$*" in
  --version) echo "Python 3.10.12" ;;
  "-m pip install --user"*" uv")
    mkdir -p "$HOME/.local/bin" && cp "$FAKE_DIR/uv" "$HOME/.local/bin/uv" ;;
  *) echo "python3 (3.10.12) cannot run this: apr_jax needs Python >= 3.11" >&2; exit 1 ;;
esac
"""

SHIMS = {
    "python3": PYTHON3,
    "sudo": '#!/usr/bin/env bash\nexec "$@"\n',
    "hostname": '#!/usr/bin/env bash\necho "$FAKE_HOSTNAME"\n',
    "gcsfuse": (
        "#!/usr/bin/env bash\n# gcsfuse [flags] BUCKET MOUNT\n"
        'mount="${@: -1}"; bucket="${@: -2:1}"\n'
        '[[ -d "$FAKE_DIR/mnt/$bucket" ]] || { echo "gcsfuse: no bucket $bucket" >&2; exit 1; }\n'
        'echo "$mount" >> "$HOME/.fake_mounts"\n'
    ),
    "mountpoint": (
        '#!/usr/bin/env bash\n# mountpoint -q PATH\ngrep -qxF "${@: -1}" "$HOME/.fake_mounts" 2>/dev/null\n'
    ),
}

UV = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_DIR/uv_calls"
cmd="$1"; shift
[[ "$cmd" == pip ]] && { sub="$1"; shift; }
version="" python="" target="" spec=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -q) ;;
    --python) python="$2"; shift ;;
    -e) spec="$2"; shift ;;
    *) target="$1" ;;
  esac
  shift
done
case "$cmd" in
  venv)
    [[ -n "$python" && -n "$target" ]] || { echo "fake uv: venv needs --python and a path" >&2; exit 2; }
    echo "$FAKE_WORKER $target $python" >> "$FAKE_DIR/venvs"
    if [[ "$FAKE_UV_MODE" == real ]]; then
      "$FAKE_REAL_PYTHON" -m venv --without-pip "$target" || exit 1
      site="$("$target/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
      echo "$FAKE_SITE_PACKAGES" > "$site/fake_uv_parent.pth"
    else
      mkdir -p "$target/bin" && cp "$FAKE_DIR/scripted_python" "$target/bin/python"
    fi ;;
  pip)
    [[ "$sub" == install && -n "$python" && -n "$spec" ]] ||
      { echo "fake uv: pip install --python PY -e SPEC" >&2; exit 2; }
    [[ -f pyproject.toml ]] || { echo "fake uv: no pyproject.toml in $PWD" >&2; exit 2; }
    extras="${spec#.}"; extras="${extras#[}"; extras="${extras%]}"
    for extra in ${extras//,/ }; do
      grep -q "^$extra = " pyproject.toml || { echo "fake uv: no extra '$extra' in pyproject.toml" >&2; exit 2; }
    done
    echo "$FAKE_WORKER $python $spec" >> "$FAKE_DIR/installs"
    if [[ "$FAKE_UV_MODE" == real ]]; then
      site="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
      echo "$PWD" > "$site/apr_jax_editable.pth"
    fi ;;
  *) echo "fake uv: unexpected $cmd" >&2; exit 2 ;;
esac
"""

SCRIPTED_PYTHON = r"""#!/usr/bin/env bash
case "$1" in
  -c) echo "Python 3.12.0 - jax (scripted) - 4 devices fake TPU" ;;
  -m)
    echo "$FAKE_WORKER $*" >> "$FAKE_DIR/runs"
    counter="$FAKE_DIR/starts.w$FAKE_WORKER"
    n=$(( $(cat "$counter" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$counter"
    line=($(sed -n "${n}p" "$FAKE_DIR/run_codes"))
    code="${line[$FAKE_WORKER]:-${line[0]:-0}}"
    echo "scripted apr_jax run $n on $FAKE_HOSTNAME: exit $code"
    sleep "$FAKE_RUN_SECONDS"
    if [[ "$code" == preempt ]]; then echo PREEMPTED > "$FAKE_DIR/state"; exit 143; fi
    exit "$code" ;;
  *) exit 2 ;;
esac
"""


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


class FakeSlice:
    """FAKE_DIR, the environment that points the launch scripts at it, and
    readers of what happened there."""

    def __init__(
        self,
        root: Path,
        workers: int = 2,
        uv_mode: str = "scripted",
        state: str = "READY",
        buckets: tuple[str, ...] = ("bkt",),
    ):
        self.root = root
        self.workers = workers
        (root / "bin").mkdir(parents=True)
        _write(root / "gcloud", GCLOUD)
        for name, text in SHIMS.items():
            _write(root / "bin" / name, text)
        _write(root / "uv", UV)
        _write(root / "scripted_python", SCRIPTED_PYTHON)
        (root / "run_codes").write_text("")
        for bucket in buckets:
            (root / "mnt" / bucket).mkdir(parents=True)
        self.env = {
            "GCLOUD": str(root / "gcloud"),
            "FAKE_DIR": str(root),
            "FAKE_WORKERS": str(workers),
            "FAKE_UV_MODE": uv_mode,
            "FAKE_REAL_PYTHON": sys.executable,
            "FAKE_SITE_PACKAGES": sysconfig.get_paths()["purelib"],
            "APR_MOUNT_ROOT": str(root / "mnt"),
            "APR_POLL_SECONDS": "0",
            "TMPDIR": str(root),  # setup.sh's source archive: one per fake, as tests run in parallel
        }
        self.set_state(state)
        if state != "MISSING":
            for w in range(workers):
                (root / "workers" / f"w{w}" / "tmp").mkdir(parents=True)

    def set_state(self, state: str) -> None:
        (self.root / "state").write_text(state + "\n")

    def state(self) -> str:
        return (self.root / "state").read_text().strip()

    def home(self, worker: int) -> Path:
        return self.root / "workers" / f"w{worker}"

    def bucket(self, name: str = "bkt") -> Path:
        return self.root / "mnt" / name

    def lines(self, name: str) -> list[str]:
        path = self.root / name
        return path.read_text().splitlines() if path.exists() else []

    def calls(self) -> list[str]:
        return self.lines("calls")

    def kinds(self, collapse_status: bool = False) -> list[str]:
        """Each gcloud call as 'tpu-vm ssh', 'storage cp', ...; ssh calls by
        what they do (setup, mount, start, status, stop, follow). With
        ``collapse_status``, consecutive status polls count as one."""
        kinds = []
        for call in self.calls():
            words = call.split()
            kind = " ".join(words[2:4]) if words[:2] == ["compute", "tpus"] else " ".join(words[:2])
            if kind == "tpu-vm ssh":
                kind = (
                    "setup"
                    if "venv -q --python" in call
                    else "mount"
                    if "gcsfuse" in call
                    else "start"
                    if "setsid nohup" in call
                    else "status"
                    if "apr_jax_run: " in call
                    else "follow"
                    if "tail -c" in call
                    else "stop"
                    if "kill -TERM" in call
                    else "ssh"
                )
            if not (collapse_status and kind == "status" and kinds[-1:] == ["status"]):
                kinds.append(kind)
        return kinds
