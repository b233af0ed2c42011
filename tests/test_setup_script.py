"""scripts/setup.sh returns at once when the venv is current, and reinstalls when a source changed.

Run on a copy of the build inputs with a stand-in venv whose python refuses ``-m pip`` (exit
97, leaving a mark): the fast path must never reach pip, a stale stamp must.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAMP_SCRIPT = REPO / "scripts" / "setup_stamp.py"


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("pyproject.toml", "setup.py", "scripts", "csrc"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, root / name)
    (root / "clusiam_fast").mkdir()
    return root


@pytest.fixture
def venv(tmp_path):
    """A stand-in venv: bin/python runs this interpreter, but `-m pip` exits 97 and leaves pip.called."""
    bin_ = tmp_path / "venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python").write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "${{1:-}}" = -m ] && [ "${{2:-}}" = pip ]; then touch "{tmp_path}/pip.called"; exit 97; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    (bin_ / "python").chmod(0o755)
    return bin_.parent


def _stamp(root: Path, **env) -> str:
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "setup_stamp.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _setup(root: Path, venv: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VENV": str(venv), "CUDA_HOME": os.environ.get("CUDA_HOME", "/nonexistent")}
    env.pop("FORCE_SETUP", None)
    return subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=120, env=env
    )


def test_the_stamp_follows_the_build_inputs(checkout):
    first = _stamp(checkout)
    assert _stamp(checkout) == first and len(first) == 64
    kernel = next((checkout / "csrc").rglob("*.cpp"))
    kernel.write_text(kernel.read_text() + "\n// changed\n")
    changed = _stamp(checkout)
    assert changed != first
    assert _stamp(checkout, TORCH_CUDA_ARCH_LIST="7.5") != changed
    (checkout / "clusiam_fast" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert _stamp(checkout) != changed  # the extension built or not


def test_setup_returns_at_once_when_current_and_reinstalls_when_a_source_changed(checkout, venv, tmp_path):
    cuda_home = os.environ.get("CUDA_HOME", "/nonexistent")
    (venv / ".clusiam_fast_setup").write_text(_stamp(checkout, CUDA_HOME=cuda_home) + "\n")
    current = _setup(checkout, venv)
    assert current.returncode == 0, current.stdout + current.stderr
    assert "is current" in current.stdout and not (tmp_path / "pip.called").exists()

    (checkout / "csrc" / "python_module.cpp").write_text("// another module\n")
    stale = _setup(checkout, venv)
    assert stale.returncode == 97 and (tmp_path / "pip.called").exists(), stale.stdout + stale.stderr
    assert not (venv / ".clusiam_fast_setup").exists()  # a failed setup leaves no stamp behind
