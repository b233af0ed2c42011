"""Two real gloo processes under torchrun: DDP training, global cluster loss, exact resume."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _torchrun(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "clusiam_fast.train",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--crop-size",
        "32",
        "--num-clusters",
        "10",
        "--epochs",
        "2",
        "--workers",
        "0",
        "--log-every",
        "1",
        "--max-stat-images",
        "64",
        "--no-progress",
        "--no-tensorboard",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_process_ddp_trains_and_resumes_exactly(patches, tmp_path):
    straight = _torchrun(patches, tmp_path / "a", "--sync-bn")  # on the CPU: gloo collectives (training/sync_bn.py)
    assert "--sync-bn" not in straight.stderr
    assert "batch 16 over 2 process(es)" in straight.stdout
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert a["world_size"] == 2 and a["step"] == 6  # 48 images / global batch 16 = 3 steps per epoch
    assert len(a["ranks"]) == 2  # every rank's RNG state is kept
    assert not torch.equal(a["ranks"][0]["gumbel"], a["ranks"][1]["gumbel"])  # independent noise per rank
    with open(tmp_path / "a" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["3", "6"]
    assert all(int(r["active_clusters_gumbel"]) > 1 for r in rows)
    assert not (tmp_path / "a" / "checkpoint.pt.rank1").exists() and sorted(
        p.name for p in (tmp_path / "a").iterdir()
    ) == [
        "checkpoint.pt",
        "config.yaml",
        "log.csv",
        "norm_stats.json",
        "pretrain_data.json",
        "steps.csv",
        "train_config.json",
        "training.png",
    ]

    # Stop mid-epoch 2 (step 4 of 6), resume: the same weights as the uninterrupted run. --schedule-steps 6
    # gives the short first run the full run's cosine (else it spans its 4 steps); the resume keeps it.
    _torchrun(patches, tmp_path / "b", "--sync-bn", "--max-steps", "4", "--schedule-steps", "6")
    _torchrun(patches, tmp_path / "b", "--sync-bn", "--resume", "--max-steps", "6")
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
