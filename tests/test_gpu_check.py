"""benchmarks/gpu_check.sh without a GPU: bash syntax, the --dry-run's summary layout, the budget.

The dry run executes the script's step logic (probe, budget, skips, summary) but builds
nothing and runs no CUDA step, so it takes a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = [
    "probe",
    "build",
    "fused-check",
    "cuda-parity",
    "bench-loss",
    "cuda-nosync",
    "bench-train",
    "cuda-compile",
    "demo",
    "science-data",
    "science",
    "dali",
]
CUDA_STEPS = [s for s in STEPS[2:] if s != "science-data"]
PCAM = ROOT.parent / "shared" / "data" / "pcam"
NO_CARRY = "skipped: no carry: python benchmarks/pack_science_data.py"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils timeout"
)


def _dry_run(out: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "SCIENCE_"))}
    env = dict(base, OUT=str(out), PYTHON=sys.executable, **{"SCIENCE_CARRY": str(out / "no-carry"), **env})
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def _summary(out: Path) -> dict[str, str]:
    """step name -> status, in file order, from summary.txt's 'name | status | secs | figures' rows."""
    rows = {}
    for line in (out / "summary.txt").read_text().splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 4 and fields[0] in STEPS:
            rows[fields[0]] = fields[1]
    return rows


def test_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the dry run would run the CUDA steps")
def test_dry_run_summary_and_files(tmp_path):
    result = _dry_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _summary(tmp_path)
    assert list(rows) == STEPS
    assert rows["probe"] == "passed"
    assert rows["build"] == "skipped: dry run"
    assert all(rows[name] == "skipped: no GPU" for name in CUDA_STEPS), rows
    assert rows["science-data"] == NO_CARRY
    text = (tmp_path / "summary.txt").read_text()
    assert "on a GPU: limit 270 s" in next(line for line in text.splitlines() if line.startswith("science "))
    assert "torch=" in text and "cuda_available=0" in text
    assert text.splitlines()[-1].startswith("result: OK")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert all(len(p.relative_to(tmp_path).parts) <= 2 for p in files), files
    assert {p.name for p in files} >= {"summary.txt", "build.log", "tests.log", "bench.txt", "demo.log"}


def test_tiny_budget_skips_later_steps(tmp_path):
    result = _dry_run(tmp_path, GPU_CHECK_BUDGET="1")
    assert result.returncode == 3, result.stdout + result.stderr  # 3: steps left out of budget
    rows = _summary(tmp_path)
    assert list(rows) == STEPS
    assert rows["probe"] == "passed"  # the probe always runs
    assert all(rows[name] == "skipped: out of budget" for name in STEPS[1:]), rows
    assert "INCOMPLETE" in (tmp_path / "summary.txt").read_text().splitlines()[-1]


@pytest.mark.skipif(not PCAM.is_dir(), reason="needs ../shared/data/pcam")
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the dry run would run the CUDA steps")
def test_science_data_packs_under_40_mib_and_the_dry_run_checks_the_study_against_it(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pack_science_data import pack

    sizes = pack(PCAM, tmp_path / "carry", n_train=6000, per_class=600)
    assert 20 * 2**20 < sum(sizes.values()) < 40 * 2**20, sizes
    result = _dry_run(tmp_path / "out", SCIENCE_CARRY=str(tmp_path / "carry"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _summary(tmp_path / "out")
    assert rows["science-data"] == "passed" and rows["science"] == "skipped: no GPU", rows
    science = (tmp_path / "out" / "science.txt").read_text()
    assert "6000 training patches; methods clusiam, simsiam, random_init" in science
