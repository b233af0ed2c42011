"""CMakeLists.txt builds csrc/ against libtorch and its C++ test passes under ctest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ctest") is None, reason="cmake is not installed")
def test_cmake_build_and_ctest(tmp_path):
    build = tmp_path / "build"
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    configure = run("cmake", "-S", str(REPO), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}")
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    compile_ = run("cmake", "--build", str(build), "-j", "2")
    assert compile_.returncode == 0, compile_.stdout[-3000:] + compile_.stderr[-3000:]
    ctest = run("ctest", "--test-dir", str(build), "--output-on-failure", "-V")
    assert ctest.returncode == 0, ctest.stdout[-3000:] + ctest.stderr[-3000:]
    assert "all passed" in ctest.stdout
