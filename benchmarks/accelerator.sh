#!/usr/bin/env bash
# One command that measures a machine with a GPU or TPU (or, with --tiny, runs
# every step end to end on a CPU at toy sizes). Run from anywhere:
#
#     bash benchmarks/accelerator.sh [--out DIR] [--wheels DIR] [--tiny] [--no-install]
#                                    [--budget SECONDS] [--python PY]
#
# 1. install: the project against the JAX already on the machine (jax/jaxlib
#    are pinned to their installed versions, never replaced). With a package
#    registry: pip install -e . ; without one: the wheels in --wheels DIR
#    (default .device_wheels/, git-ignored) whose packages are missing, then
#    the project itself (PYTHONPATH covers a failed editable install).
# 2. attention check: the kernel model.attention=auto runs, its agreement
#    with XLA attention (outputs, gradients) and fwd+bwd time.
# 3. train throughput at the 228M shape, T=4096 and T=1024: step time,
#    tokens/s, MFU against the chip's bf16 peak, planned memory.
# 4. decode throughput at 228M with 256 threads.
# 5. a short countdown4_apr_h200 training (its schedule sized to the minutes
#    left) and the held-out evaluation; its dataset is built on the CPUs in
#    the background from the start.
# Each step runs under its own timeout, cut to what is left of --budget
# (default 530 s, so the whole run fits in 9 minutes); a step that no longer
# fits is skipped. Everything goes to --out DIR (default accelerator_out/):
# one log per step, JSON figures and summary.txt.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$REPO/accelerator_out WHEELS=$REPO/.device_wheels TINY=0 INSTALL=1 BUDGET=530 PY=python3
while (( $# )); do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 2
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
START=$(date +%s)
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
WORK=$OUT/work
rm -rf "$WORK" && mkdir -p "$WORK"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
note() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$SUMMARY"; }
# run NAME CAP LOG CMD...: CMD under timeout min(CAP x CAP_SCALE, time left - 5);
# skipped under 10 s. A CPU (--tiny) compiles and imports slowly: CAP_SCALE 3.
run() {
  local name=$1 cap=$(( $2 * CAP_SCALE )) log=$3; shift 3
  local limit=$(( $(left) - 5 ))
  (( limit > cap )) && limit=$cap
  if (( limit < 10 )); then note "SKIP $name: $(left) s left"; return 99; fi
  note "START $name (timeout ${limit}s)"
  echo "\$ $*" >> "$log"
  local began=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  note "END $name rc=$rc in $(( $(date +%s) - began ))s$( ((rc == 124 || rc == 137)) && echo ' (TIMEOUT)')"
  return $rc
}

install() {
  local pins=$WORK/pins.txt
  "$PY" - > "$pins" <<'PYEOF' || { echo "no JAX importable by this Python: install the machine's JAX first"; return 2; }
import importlib.metadata as md
import jax  # noqa: F401  (the machine's own JAX must import)
for name in ("jax", "jaxlib"):
    print(f"{name}=={md.version(name)}")
PYEOF
  echo "keeping $(tr '\n' ' ' < "$pins")"
  if "$PY" -m pip install --retries 1 --timeout 10 -c "$pins" -e . ; then return 0; fi
  echo "no registry: offline install from $WHEELS"
  local wheel dist
  for wheel in "$WHEELS"/*.whl; do
    [[ -e $wheel ]] || { echo "no wheels in $WHEELS"; break; }
    dist=$(basename "$wheel" | cut -d- -f1)
    if "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
      echo "have $dist"
    else
      "$PY" -m pip install --no-index --no-deps "$wheel" || return 1
    fi
  done
  "$PY" -m pip install --no-index --no-deps --no-build-isolation -e . \
    || echo "editable install failed; running from PYTHONPATH=$REPO"
}

# ---- sizes --------------------------------------------------------------------
C228=configs/countdown4_apr_228m.py
H200=configs/countdown4_apr_h200.py
if (( TINY )); then
  TOY=(--config.model.num_layers=2 --config.model.d_model=32 --config.model.num_heads=2
       --config.model.num_kv_heads=2 --config.model.d_ff=64 --config.mesh.fsdp=1)
  ATTENTION_ARGS=(--shapes=2x64x2x16 --dtype=float32 --kernel=triton --repeats=2)
  TRAIN_LONG=("${TOY[@]}" --config.model.max_len=128 --config.data.seq_len=128
              --config.train.batch_size=8 --config.train.grad_accum=1 --steps=2)
  TRAIN_SHORT=("${TOY[@]}" --config.model.max_len=128 --config.data.seq_len=64
               --config.train.batch_size=8 --config.train.grad_accum=1 --steps=2)
  # One row and one KV bucket: a single compiled branch per engine call (compiles dominate here).
  DECODE_ARGS=(--d_model 32 --layers 2 --heads 2 --threads 4 --prompt_len 4 --new_tokens 4
               --row_buckets 1 --kv_buckets 1)
  H200_ARGS=("${TOY[@]}" --config.model.max_len=256 --config.data.seq_len=256
             --config.model.compute_dtype=float32 --config.task.num_train=120
             --config.task.num_validation=8 --config.task.num_test=8 --config.train.batch_size=8
             --config.train.log_every=1 --config.train.eval_batches=1 --config.eval.num_problems=2
             --config.eval.batch_problems=2 --config.eval.tokens_per_thread=64 --config.eval.max_children=2
             --config.eval.row_buckets=1 --config.eval.kv_buckets=1 --config.data.pipeline_workers=0)
  H200_MINUTES=0.3 STEP_SECONDS=0.5 STARTUP_SECONDS=10 CAP_SCALE=3
else
  ATTENTION_ARGS=(--shapes=4x1024x16x64,2x4096x16x64,16x4096x16x64)
  TRAIN_LONG=(--steps=3)
  TRAIN_SHORT=(--config.data.seq_len=1024 --config.train.grad_accum=1 --steps=5)
  DECODE_ARGS=(--config "$C228" --threads 256 --prompt_len 16 --new_tokens 1000)
  H200_ARGS=(--config.eval.num_problems=256)
  H200_MINUTES=2 STEP_SECONDS=0.10 STARTUP_SECONDS=60 CAP_SCALE=1
fi
DATA=$WORK/data

# ---- 1. install ------------------------------------------------------------------
if (( INSTALL )); then
  run install 120 "$OUT/install.txt" bash -c "$(declare -f install); PY='$PY' WHEELS='$WHEELS' WORK='$WORK' install" \
    || { note "install failed: see install.txt"; exit 1; }
fi
"$PY" - > "$OUT/env.txt" 2>&1 <<'PYEOF'
import importlib.metadata as md
for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "flax", "optax",
             "orbax-checkpoint", "grain", "tensorflow-datasets", "ml-collections", "apr_jax"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "-")
import jax
print("devices", jax.devices())
import apr_jax.train, apr_jax.evaluate  # noqa: F401  (every import the steps need)
print("imports ok")
PYEOF
note "env: $(grep -E '^(jax |devices|imports)' "$OUT/env.txt" | tr '\n' ';')"
grep -q "imports ok" "$OUT/env.txt" || { note "the project does not import: see env.txt"; exit 1; }

# ---- dataset of the short run, built on the CPUs meanwhile ------------------------
JAX_PLATFORMS=cpu "$PY" -m apr_jax.data build --config="$H200" "${H200_ARGS[@]}" \
  --config.data.dir="$DATA" > "$OUT/data_build.txt" 2>&1 &
BUILD_PID=$!
trap '[[ -n ${BUILD_PID:-} ]] && kill "$BUILD_PID" 2>/dev/null' EXIT

# ---- 2-4. kernels and throughput ----------------------------------------------------
run attention 90 "$OUT/attention.txt" "$PY" benchmarks/attention_check.py "${ATTENTION_ARGS[@]}" \
  --json="$OUT/attention.json"
run train_T4096 170 "$OUT/train_T4096.txt" "$PY" benchmarks/train_throughput.py --config="$C228" \
  "${TRAIN_LONG[@]}" --json="$OUT/train_T4096.json"
run train_T1024 90 "$OUT/train_T1024.txt" "$PY" benchmarks/train_throughput.py --config="$C228" \
  "${TRAIN_SHORT[@]}" --json="$OUT/train_T1024.json"
run decode 90 "$OUT/decode.txt" "$PY" benchmarks/decode_throughput.py "${DECODE_ARGS[@]}"

# ---- 5. short countdown4_apr_h200 run + held-out evaluation --------------------------
wait "$BUILD_PID"; note "dataset build rc=$? ($(tail -n 1 "$OUT/data_build.txt"))"; BUILD_PID=
# Minutes of training: what is left after ~2 min for compile and evaluation, at most H200_MINUTES.
MINUTES=$(awk -v l="$(left)" -v m="$H200_MINUTES" 'BEGIN { x = (l - 120) / 60; if (x > m) x = m;
  if (x < 0.2) x = 0.2; printf "%.2f", x }')
STEPS=$(awk -v m="$MINUTES" -v s="$STEP_SECONDS" -v u="$STARTUP_SECONDS" 'BEGIN {
  n = int((60 * m - u) / s); if (n < 2) n = 2; print n }')
note "countdown4_apr_h200: $STEPS steps in $MINUTES min (stated ${STEP_SECONDS}s/step)"
run h200 420 "$OUT/h200.txt" "$PY" -m apr_jax.train --workdir="$WORK/h200" --config="$H200" \
  "${H200_ARGS[@]}" --config.data.dir="$DATA" --config.train.time_limit_minutes="$MINUTES" \
  --config.train.steps="$STEPS" --config.train.warmup_steps=$(( STEPS / 20 + 1 )) \
  --config.train.eval_every="$STEPS" --config.train.checkpoint_every="$STEPS"
cp "$WORK/h200/metrics.jsonl" "$OUT/h200_metrics.jsonl" 2>/dev/null

# ---- summary ---------------------------------------------------------------------------
"$PY" - "$OUT" >> "$SUMMARY" 2>&1 <<'PYEOF'
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
print("----- figures -----")
for row in load("attention.json") or []:
    print(f"attention {row['shape']} {row['dtype']}: {row['kernel']} ({row['kernel_calls']} calls, "
          f"T x T arrays {row['t_by_t_arrays']}) {row['kernel_ms']:.2f} ms fwd+bwd; xla "
          + (f"{row['xla_ms']:.2f} ms, max |out diff| {row['max_out_diff']:.3g}, "
             f"max rel grad diff {row['max_rel_grad_diff']:.3g}" if "xla_ms" in row else "over the dense limit"))
for name in ("train_T4096.json", "train_T1024.json"):
    for row in (load(name) or {}).get("rows", []):
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        print(f"train {row['params_m']:.0f}M batch {row['batch']} x {row['seq_len']} remat {row['remat']} "
              f"attention {row['attention']}: step {row['step_ms']:.1f} ms, {row['tokens_per_s']:,.0f} "
              f"tokens/s, MFU {mfu}, planned {row['memory']['total'] / 2**30:.2f} GiB/device")
for line in open(os.path.join(out, "decode.txt")) if os.path.exists(os.path.join(out, "decode.txt")) else []:
    if ("tokens/s" in line or "roofline" in line) and not line.startswith("{"):
        print("decode", line.strip())
metrics = os.path.join(out, "h200_metrics.jsonl")
rows = [json.loads(l) for l in open(metrics)] if os.path.exists(metrics) else []
train_rows = [r for r in rows if "loss" in r]
if train_rows:
    last = train_rows[-1]
    print("h200 last train row: " + ", ".join(f"{k} {last[k]:.4g}" if isinstance(last[k], float)
                                              else f"{k} {last[k]}" for k in sorted(last)))
test = [r for r in rows if "test_accuracy" in r]
print(f"h200 held-out accuracy: {test[-1]['test_accuracy']:.1%}" if test else "h200 held-out accuracy: none")
PYEOF
note "done: $(ls "$OUT" | tr '\n' ' ')"
