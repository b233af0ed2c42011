#!/usr/bin/env bash
# Create a virtual environment ($VENV, default .venv) with torch from this
# machine's local wheel cache and clusiam_fast built in place (C++ kernels always,
# CUDA kernels when a CUDA toolkit is found). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$VENV/bin/python" -m pip install -q setuptools wheel ninja
"$VENV/bin/python" -m pip install --no-build-isolation -e ".[all]"
"$VENV/bin/python" -c "import clusiam_fast as cf; print('clusiam_fast', cf.__version__, '| fused CPU:', cf.fused_available('cpu'), '| CUDA kernels built:', cf.fused_available('cuda'))"
