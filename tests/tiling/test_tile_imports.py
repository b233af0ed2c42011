"""The tiler never imports torch: not in the CLI process, not in the fork server, not in its workers.

A ``sitecustomize`` on ``PYTHONPATH`` (loaded by every Python process the run starts)
puts a finder in front of ``sys.meta_path`` that writes down and refuses any import of
torch or torchvision; the record is checked, so that an ``except ImportError`` somewhere
cannot hide one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HOOK = """
import os, sys, traceback

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            with open(os.environ["NO_TORCH_LOG"], "a") as log:
                log.write(f"pid {os.getpid()} imported {name}:\\n{''.join(traceback.format_stack(limit=12))}\\n")
            raise ImportError(f"{name} imported by the tiler")
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def test_tile_cli_and_its_workers_never_import_torch(wsi_dir, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "torch_imports.log"
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook), str(repo), os.environ.get("PYTHONPATH", "")]),
        "NO_TORCH_LOG": str(log),
    }
    slides = [str(wsi_dir / "CMU-1-Small-Region.svs"), str(wsi_dir / "OS-1-detail.ome.tif")]
    done = subprocess.run(
        [sys.executable, "-m", "clusiam_fast.tile", *slides, "--out", str(tmp_path / "out"), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not log.exists(), log.read_text()[-3000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiled 2 of 2 slides" in done.stdout
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and log.exists()  # the hook works: it catches a real import
