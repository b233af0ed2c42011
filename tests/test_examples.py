"""The examples run as users run them."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_simsiam_swap_in_trains_with_the_fused_loss():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "simsiam_swap_in.py"), "--steps", "3", "--batch-size", "16"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    steps = re.findall(r"step (\d+): loss (\S+) \(invariance (\S+), cluster (\S+)\)", proc.stdout)
    assert [int(s[0]) for s in steps] == [0, 1, 2]
    for _, loss, inv, clu in steps:
        assert math.isfinite(float(loss)) and -2 <= float(inv) <= 2 and -1 <= float(clu) <= 1
    assert "reference" not in proc.stderr  # the fused op ran, no fallback warning
