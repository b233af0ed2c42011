"""The package's layering (written at the top of clusiam_fast/__init__.py): no import runs against it.

Every ``import`` / ``from ... import`` in every module, at any depth (lazy imports
inside functions included), is checked: a module may import from its own room or
from rooms of a lower level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import clusiam_fast

ROOT = Path(clusiam_fast.__file__).parent
LEVELS = {
    "utils": 0,
    "choices": 0,  # the torch-free table of names
    "ops": 1,
    "reference": 2,  # thin re-export of ops
    "formats": 2,
    "slides": 3,
    "cohort": 3,  # done records, locks, engines: used by tiling and evaluation, imports no torch
    "data": 4,
    "models": 5,
    "training": 6,
    "tiling": 6,
    "evaluation": 6,
    "train": 7,
    "tile": 7,
    "extract": 7,
    "evaluate": 7,
    "shards": 7,
    "study": 8,  # runs the CLI modules (train, extract, evaluate) and reads their parsers
    "__init__": 8,  # the package's own re-exports
    "_C": 0,  # the compiled kernels
}


def _room(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "clusiam_fast", module
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str):
    """(line, absolute module) of every clusiam_fast import in ``path``, the module ``name``."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("clusiam_fast"):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("clusiam_fast"):
                if target == "clusiam_fast" or target.count(".") == 0:  # from clusiam_fast import x -> rooms
                    for alias in node.names:
                        yield node.lineno, f"clusiam_fast.{alias.name}"
                else:
                    yield node.lineno, target


def _violations(path: Path, name: str) -> list[str]:
    here = _room(name) if name != "clusiam_fast" else "__init__"
    wrong = []
    for line, target in _imports(path, name):
        there = _room(target)
        if there != here and LEVELS[there] >= LEVELS[here]:
            wrong.append(f"{path}:{line} ({here}) imports {target} ({there})")
    return wrong


def test_every_module_is_in_a_room():
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        room = _room(name) if name != "clusiam_fast" else "__init__"
        assert room in LEVELS, f"{path.relative_to(ROOT)}: room {room!r} has no level; add it to the layering rule"


def test_no_import_runs_against_the_layering():
    wrong = [v for path in sorted(ROOT.rglob("*.py")) for v in _violations(path, _module_name(path))]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checker_catches_a_lazy_relative_import(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("import torch\n\n\ndef f():\n    from ..training import loop\n    from .. import models\n")
    wrong = _violations(src, "clusiam_fast.data.x")
    assert len(wrong) == 2 and "imports clusiam_fast.training" in wrong[0] and "clusiam_fast.models" in wrong[1]
    assert len(_violations(src, "clusiam_fast.evaluation.x")) == 1  # one room of a level never imports another
    cli = tmp_path / "cli.py"
    cli.write_text("from .training import train\nfrom .evaluation.mil import protocol\n")
    assert _violations(cli, "clusiam_fast.train") == []
