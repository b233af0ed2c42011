#!/usr/bin/env bash
# One call on a GPU machine: build the CUDA kernels (sm_90), then tests and benchmarks in
# order of value, all within one time budget, leaving <= 8 flat files in $OUT.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine (no network needed)
#   bash benchmarks/gpu_check.sh --dry-run    # same step logic on a CPU machine, no build
#
# Env: OUT (default benchmarks/results/gpu), GPU_CHECK_BUDGET (s, default 540), PYTHON,
# CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (nproc).
# Files in $OUT: summary.txt build.log tests.log bench.txt bench.json ratios.json demo.log science.txt.
# The science step needs benchmarks/carry/pcam (python benchmarks/pack_science_data.py; name
# benchmarks/carry in the device run's carry): CluSiam vs SimSiam vs random init on held-out PCam.
# Exit: 0 all ran, 1 a step failed, 2 stopped (no fused CUDA kernels), 3 steps out of budget.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 64 ;;
esac

OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # demo run, .benchmarks, per-step output
trap 'rm -rf "$TMP"' EXIT
BUDGET=${GPU_CHECK_BUDGET:-570}
MIN_STEP=${GPU_CHECK_MIN_STEP:-20}  # a step does not start with less than min(its limit, this) left
GRACE=10                            # SIGKILL this long after the SIGINT of a timeout

# The first python with torch; its bin dir on PATH (ninja, pip entry points).
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3 python; do
    if command -v "$c" >/dev/null && "$c" -c 'import torch' 2>/dev/null; then PY=$(command -v "$c"); break; fi
  done
fi
PY=${PY:-python3}
export PATH="$(dirname "$PY"):$PATH"
export PYTHONUNBUFFERED=1 PY
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} CLUSIAM_FAST_CUDA=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}

# ---- commands run by the steps (exported: each step runs them in `timeout ... bash -c`) ----

# pytest with a SIGINT handler forced on: Python ignores SIGINT if it was ignored at start
# (background jobs), and then the timeout's INT would not make pytest print its summary.
pyt() {
  "$PY" -c 'import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main())' -q -rfEs -p no:cacheprovider "$@"
}

probe() {
  local gpu nvcc ninja
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
  nvcc=$("$CUDA_HOME/bin/nvcc" --version 2>/dev/null | sed -n 's/.*release \([^,]*\).*/\1/p')
  ninja=$(ninja --version 2>/dev/null)
  GPU_SMI=$gpu NVCC=${nvcc:-none} NINJA=${ninja:-none} "$PY" - <<'EOF'
import importlib, os, platform, torch
def version(mod):
    try:
        return importlib.import_module(mod).__version__
    except Exception:
        return "none"
cuda = torch.cuda.is_available()
gpu = os.environ["GPU_SMI"] or (torch.cuda.get_device_name() if cuda else "none")
print(f"gpu={gpu} | cuda_available={int(cuda)} | torch={torch.__version__} cuda={torch.version.cuda} "
      f"| python={platform.python_version()} | setuptools={version('setuptools')} | ninja={os.environ['NINJA']} "
      f"| nvcc={os.environ['NVCC']} | dali={version('nvidia.dali')} | cores={os.cpu_count()}")
EOF
}

build() {
  if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then echo "no nvcc at CUDA_HOME=$CUDA_HOME (bin/nvcc)"; return 1; fi
  echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e . 2>&1 | tee "$TMP/pip.out"
  [ "${PIPESTATUS[0]}" = 0 ] && return 0
  # pip itself refused (no pip, externally managed...) before compiling: build in place instead
  grep -q 'nvcc\|\.cu\b' "$TMP/pip.out" && return 1
  echo "pip install failed before compiling; trying: setup.py build_ext --inplace"
  "$PY" setup.py build_ext --inplace
}

fused_check() {
  "$PY" -c 'import sys, clusiam_fast as cf
ok = cf.fused_available("cuda")
print(f"fused_available(cuda)={ok} ({cf.__file__})")
sys.exit(0 if ok else 1)'
}

demo() {
  local cap=()
  if "$PY" -m clusiam_fast.train --help 2>/dev/null | grep -q -- --max-steps; then cap=(--max-steps 60); fi
  "$PY" -m clusiam_fast.train --demo --out "$TMP/demo" --amp --workers 4 "${cap[@]}"
}

dali_check() { OUT=$TMP "$PY" benchmarks/gpu_loader_check.py; }  # writes $OUT/dali_gpu.json

CARRY=${SCIENCE_CARRY:-benchmarks/carry/pcam}  # train.tar + valid.tar from benchmarks/pack_science_data.py
SCIENCE=$TMP/science                             # unpacked beside a copy of the study config
science_data() {  # unpack the carried subset and check the study config against it (torch-free)
  mkdir -p "$SCIENCE/carry/pcam" && cp benchmarks/study_pcam_gpu.yaml "$SCIENCE/study.yaml" || return 1
  tar -xf "$CARRY/train.tar" -C "$SCIENCE/carry/pcam" && tar -xf "$CARRY/valid.tar" -C "$SCIENCE/carry/pcam" || return 1
  "$PY" - "$SCIENCE/study.yaml" <<'EOF2'
import sys
from clusiam_fast.study.config import load_config
cfg = load_config(sys.argv[1])
n = sum(1 for _ in cfg.data["train"].glob("*.jpg"))
print(f"{n} training patches; methods {', '.join(m.name for m in cfg.methods)}; budget {' '.join(cfg.budget_flags)}")
EOF2
}
science() {  # CluSiam vs SimSiam vs random init on held-out PCam, then the table of science_summary.py
  "$PY" -m clusiam_fast.study "$SCIENCE/study.yaml" --out "$SCIENCE/study" --quiet
  local rc=$?
  [ -f "$SCIENCE/study/report.json" ] && "$PY" benchmarks/science_summary.py "$SCIENCE/study"
  return $rc
}

export -f pyt probe build fused_check demo dali_check science_data science
export CARRY SCIENCE
export TMP

# ---- key figures for the summary line ----

pytest_line() {  # pytest's last line: "3 passed, 1 skipped in 4.20s"
  grep -E '[0-9]+ (passed|failed|skipped|error|errors|deselected)|no tests ran' "$1" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//'
}

ratios() {  # merge the ratio JSON files written since the step started into $OUT/ratios.json
  "$PY" - "$OUT/ratios.json" "$@" <<'EOF'
import json, os, sys
out, files = sys.argv[1], sys.argv[2:]
merged = json.load(open(out)) if os.path.exists(out) else {}
for f in files:
    merged[os.path.basename(f)[:-5]] = json.load(open(f))
json.dump(merged, open(out, "w"), indent=2)
EOF
}

key_ratios() {  # the headline ratios of one table in ratios.json, matched by label
  "$PY" - "$OUT/ratios.json" "$@" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1])).get(sys.argv[2], {}).get("ratios", {})
print("; ".join(f"{k} = {v:.2f}" for k, v in data.items() if v is not None and any(p in k for p in sys.argv[3:])))
EOF
}

fig_bench_loss() { key_ratios cluster_loss "cuda 1024x100x2048 reference/fused (fwd+bwd)"; }
fig_bench_train() { key_ratios train_step "CUDA"; }
fig_demo() { grep -v '^\s*$' "$1" | tail -1 | cut -c1-160; }
fig_science() { grep -E '^\| (clusiam|simsiam|random_init) ' "$1" | awk -F'|' '{gsub(/ +/, " "); printf "%s F1%s;", $2, $4}'; }
fig_dali() { grep -E 'images/s|PASS|FAIL' "$1" | tr '\n' ';' | cut -c1-300; }

# ---- the step runner ----

SUMMARY=$OUT/summary.txt
START=$SECONDS
FAILED=0 OUT_OF_BUDGET=0 STOPPED=""
HAVE_GPU=0 HAVE_DALI=0
line() { printf '%-13s | %-34s | %4s s | %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"; }

# step NAME LIMIT CMD...   (prefix LOG=file NEEDS="gpu dali" PYTEST=1 ALWAYS=1 as needed)
step() {
  local name=$1 limit=$2; shift 2
  local log=$OUT/${LOG:-tests.log} left=$((BUDGET - (SECONDS - START))) reason="" need
  for need in ${NEEDS:-}; do
    case $need in
      gpu) [ "$HAVE_GPU" = 1 ] || reason=${reason:-no GPU} ;;
      dali) [ "$HAVE_DALI" = 1 ] || reason=${reason:-no DALI} ;;
      build) [ "$DRY" = 0 ] || reason=${reason:-dry run} ;;
      carry) [ -f "$CARRY/train.tar" ] && [ -f "$CARRY/valid.tar" ] || reason=${reason:-no carry: python benchmarks/pack_science_data.py} ;;
    esac
  done
  if [ -n "$STOPPED" ]; then reason="stopped after $STOPPED"
  elif [ -z "${ALWAYS:-}" ] && [ "$left" -lt "$(( limit < MIN_STEP ? limit : MIN_STEP ))" ]; then
    reason="out of budget"; OUT_OF_BUDGET=$((OUT_OF_BUDGET + 1))
  fi
  if [ -n "$reason" ]; then
    local plan=""; [ "$reason" = "no GPU" ] && plan="on a GPU: limit $limit s"
    line "$name" "skipped: $reason" 0 "$plan"; return 0
  fi

  local t=$limit t0=$SECONDS rc status figs
  [ -z "${ALWAYS:-}" ] && [ "$left" -lt "$limit" ] && t=$left
  printf '\n===== %s (limit %s s) %s\n' "$name" "$t" "$*" | tee -a "$log"
  timeout -s INT -k "$GRACE" "$t" bash -c '"$@"' _ "$@" 2>&1 | tee -a "$log" "$TMP/$name.out"
  rc=${PIPESTATUS[0]}
  figs=$( [ -n "${PYTEST:-}" ] && pytest_line "$TMP/$name.out" )
  if declare -F "fig_${name//-/_}" >/dev/null; then
    local extra; extra=$("fig_${name//-/_}" "$TMP/$name.out" 2>/dev/null)
    [ -n "$extra" ] && figs="${figs:+$figs; }$extra"
  fi
  [ -n "${PYTEST:-}" ] || [ -n "$figs" ] || figs=$(grep -v '^\s*$' "$TMP/$name.out" | tail -1 | cut -c1-200)
  case $rc in
    0) status=passed ;;
    124|137) status="failed: timeout ${t}s" ;;
    *) status="failed: exit $rc" ;;
  esac
  # never green on skips: a pytest step in which nothing passed has failed
  if [ "$rc" = 0 ] && [ -n "${PYTEST:-}" ] && ! grep -q ' passed' <<<"$figs"; then status="failed: nothing passed"; fi
  [ "$status" = passed ] || FAILED=$((FAILED + 1))
  line "$name" "$status" $((SECONDS - t0)) "$figs"
  [ "$status" = passed ]
}

{ echo "gpu_check $(date -u +%FT%TZ) budget ${BUDGET}s$( ((DRY)) && echo ' (dry run)')"
  printf '%-13s | %-34s | %6s | %s\n' step status seconds figures; } > "$SUMMARY"
: > "$OUT/build.log"; : > "$OUT/tests.log"; : > "$OUT/bench.txt"; : > "$OUT/demo.log"; : > "$OUT/science.txt"; rm -f "$OUT/ratios.json"
BENCH_RESULTS=benchmarks/results  # where benchmarks/bench_utils.py writes its ratio JSON

# ---- the steps, in order of value ----

LOG=build.log ALWAYS=1 step probe 60 probe
HAVE_GPU=$(grep -q 'cuda_available=1' "$TMP/probe.out" 2>/dev/null && echo 1 || echo 0)
HAVE_DALI=$(grep -q 'dali=none' "$TMP/probe.out" 2>/dev/null && echo 0 || echo 1)
[ -s "$TMP/probe.out" ] || HAVE_DALI=0

LOG=build.log NEEDS="build" step build 360 build
if ! LOG=build.log NEEDS="gpu" step fused-check 60 fused_check && [ "$HAVE_GPU" = 1 ]; then
  STOPPED=fused-check
  echo "STOP: clusiam_fast.fused_available('cuda') is False after the build: see build.log" | tee -a "$SUMMARY"
fi

NOT_NEEDED_K="not no_host_sync and not graph and not opcheck and not compile"
PYTEST=1 NEEDS=gpu step cuda-parity 150 pyt tests/ops/test_cluster_loss_cuda.py -k "$NOT_NEEDED_K"

touch "$TMP/stamp"
LOG=bench.txt PYTEST=1 NEEDS=gpu step bench-loss 150 pyt benchmarks/bench_cluster_loss.py --benchmark-only \
  -k "cuda and not compiled" --benchmark-json "$OUT/bench.json" --benchmark-storage "file://$TMP/.benchmarks" \
  --benchmark-columns=median,iqr,rounds
ratios $(find "$BENCH_RESULTS" -maxdepth 1 -name '*.json' -newer "$TMP/stamp" 2>/dev/null) 2>/dev/null

PYTEST=1 NEEDS=gpu step cuda-nosync 90 pyt tests/ops/test_cluster_loss_cuda.py -k "no_host_sync or graph or opcheck"

touch "$TMP/stamp"
LOG=bench.txt PYTEST=1 NEEDS=gpu step bench-train 180 pyt benchmarks/bench_train_step.py --benchmark-only \
  -k cuda --benchmark-storage "file://$TMP/.benchmarks" --benchmark-columns=median,rounds
ratios $(find "$BENCH_RESULTS" -maxdepth 1 -name '*.json' -newer "$TMP/stamp" 2>/dev/null) 2>/dev/null

PYTEST=1 NEEDS=gpu step cuda-compile 150 pyt tests/ops/test_cluster_loss_cuda.py -k compile

LOG=demo.log NEEDS=gpu step demo 120 demo

LOG=science.txt NEEDS=carry step science-data 30 science_data
HAVE_SCIENCE_DATA=$(grep -q 'training patches' "$TMP/science-data.out" 2>/dev/null && echo 1 || echo 0)
[ "$HAVE_SCIENCE_DATA" = 1 ] || [ "$HAVE_GPU" = 0 ] || echo "science: no data (see science-data)" >> "$SUMMARY"
LOG=science.txt NEEDS="gpu carry" step science 270 science

touch "$TMP/stamp"
LOG=bench.txt NEEDS="gpu dali" step dali 120 dali_check
ratios $(find "$TMP" -maxdepth 1 -name 'dali_gpu.json' -newer "$TMP/stamp" 2>/dev/null) 2>/dev/null

# ---- verdict ----
[ -s "$OUT/bench.json" ] || rm -f "$OUT/bench.json"
elapsed=$((SECONDS - START))
if [ -n "$STOPPED" ]; then verdict="STOPPED: no fused CUDA kernels"; code=2
elif [ "$FAILED" -gt 0 ]; then verdict="FAILED: $FAILED step(s)"; code=1
elif [ "$OUT_OF_BUDGET" -gt 0 ]; then verdict="INCOMPLETE: $OUT_OF_BUDGET step(s) out of budget"; code=3
else verdict="OK"; code=0
fi
echo "result: $verdict | ${elapsed}s of ${BUDGET}s | files in $OUT" | tee -a "$SUMMARY"
exit $code
