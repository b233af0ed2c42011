#!/usr/bin/env bash
# Create a virtual environment ($VENV, default .venv) with torch from this
# machine's local wheel cache and clusiam_fast built in place (C++ kernels always,
# CUDA kernels when a CUDA toolkit is found). Safe to run again: when $VENV is current (its
# stamp, scripts/setup_stamp.py: sources, torch version, build variables) it returns at once;
# FORCE_SETUP=1 reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.clusiam_fast_setup"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
if [ -z "${FORCE_SETUP:-}" ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] &&
  [ "$("$VENV/bin/python" scripts/setup_stamp.py 2>/dev/null)" = "$(cat "$STAMP")" ]; then
  echo "setup.sh: $VENV is current (nothing changed since it was set up; FORCE_SETUP=1 reinstalls)"
  exit 0
fi
rm -f "$STAMP"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$VENV/bin/python" -m pip install -q setuptools wheel ninja
"$VENV/bin/python" -m pip install --no-build-isolation -e ".[all]"
"$VENV/bin/python" -c "import clusiam_fast as cf; print('clusiam_fast', cf.__version__, '| fused CPU:', cf.fused_available('cpu'), '| CUDA kernels built:', cf.fused_available('cuda'))"
"$VENV/bin/python" scripts/setup_stamp.py > "$STAMP"
