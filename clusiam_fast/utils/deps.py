"""Optional heavy dependencies, imported where used, with an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, pip_name: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise ImportError saying which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        what = f" (needed for {purpose})" if purpose else ""
        raise ImportError(
            f"clusiam_fast: `{module}` is not installed{what}; install it with "
            f"`pip install {pip_name or module}` or `pip install -e '.[all]'`"
        ) from error
