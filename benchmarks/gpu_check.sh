#!/usr/bin/env bash
# One command for a GPU machine: build the CUDA kernels for sm_90 (H100/H200),
# run the CUDA tests and the GPU benchmarks, print a short table, and leave the
# results in ${OUT:-benchmarks/results}. Usage: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} CLUSIAM_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$RESULTS/gpu.txt"

echo "== build (sm_${TORCH_CUDA_ARCH_LIST/./})"
start=$(date +%s)
$PY -m pip install -q --no-build-isolation -e . > "$RESULTS/build.log" 2>&1 || { tail -40 "$RESULTS/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
$PY -c "import clusiam_fast as cf; assert cf.fused_available('cuda'), 'CUDA kernels missing'; print('CUDA kernels: ok')"

echo "== CUDA tests"
$PY -m pytest tests/test_cluster_loss_cuda.py -q -rs -p no:cacheprovider 2>&1 | tee "$RESULTS/cuda_tests.txt" | tail -15

echo "== GPU benchmarks (cluster loss)"
$PY -m pytest benchmarks/bench_cluster_loss.py --benchmark-only -q -k cuda -p no:cacheprovider \
  --benchmark-columns=median,iqr,rounds --benchmark-json "$RESULTS/bench_cluster_loss_gpu.json" \
  2>&1 | tee "$RESULTS/bench_cluster_loss_gpu.txt" | grep -A40 "ratios measured"

echo "== training step on the GPU (SimSiam vs CluSiam, fused vs reference)"
$PY -m pytest benchmarks/bench_train_step.py --benchmark-only -q -k cuda -p no:cacheprovider \
  --benchmark-columns=median,rounds 2>&1 | tee "$RESULTS/bench_train_step_gpu.txt" | tail -15

echo "== demo training run on the GPU (--amp)"
$PY -m clusiam_fast.train --demo --out "$RESULTS/demo_gpu" --amp 2>&1 | tail -8

if [ -f benchmarks/gpu_loader_check.py ]; then
  echo "== DALI GPU pipeline (two-view 224 px images/s)"
  $PY benchmarks/gpu_loader_check.py 2>&1 | tee "$RESULTS/dali_gpu.txt" | tail -5
fi
cp -f benchmarks/results/*.json "$RESULTS/" 2>/dev/null || true
echo "results in $RESULTS"
