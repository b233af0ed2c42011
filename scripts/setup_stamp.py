"""The stamp scripts/setup.sh keeps in the venv, to skip a reinstall when nothing changed.

    .venv/bin/python scripts/setup_stamp.py     # prints one hash

It hashes what the installed package depends on: pyproject.toml, setup.py, scripts/setup.sh,
every file under csrc/, the installed torch and clusiam_fast versions, whether the compiled
extension is there, the checkout's path and the build variables (CLUSIAM_FAST_CUDA, CUDA_HOME,
TORCH_CUDA_ARCH_LIST). Reads no torch (seconds matter: it runs before every test command).
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_VARIABLES = ("CLUSIAM_FAST_CUDA", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST")


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def stamp(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    sources = [root / "pyproject.toml", root / "setup.py", root / "scripts" / "setup.sh"]
    sources += sorted(p for p in (root / "csrc").rglob("*") if p.is_file())
    for path in sources:
        digest.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes() + b"\0")
    built = sorted(p.name for p in (root / "clusiam_fast").glob("_C*.so"))
    facts = [
        f"root={root}",
        f"torch={_installed('torch')}",
        f"clusiam_fast={_installed('clusiam_fast')}",
        f"built={built}",
    ]
    facts += [f"{name}={os.environ.get(name, '')}" for name in BUILD_VARIABLES]
    digest.update("\n".join(facts).encode())
    return digest.hexdigest()


if __name__ == "__main__":
    print(stamp())
