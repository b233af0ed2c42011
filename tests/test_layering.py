"""The package's layering (written at the top of clusiam_fast/__init__.py): no import runs against it,
and no import circle between files.

Every ``import`` / ``from ... import`` in every module, at any depth (lazy imports
inside functions included), is checked: a module may import from its own room or
from rooms of a lower level, and following imports from module to module never leads
back to where it started (a lazy import that hides a circle is still one).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import clusiam_fast

ROOT = Path(clusiam_fast.__file__).parent
LEVELS = {
    "utils": 0,
    "choices": 0,  # the torch-free table of names
    "cli": 1,  # what every verb shares: one-line errors, exit statuses, --config files (torch-free)
    "ops": 1,
    "reference": 2,  # thin re-export of ops
    "formats": 2,
    "slides": 3,
    "cohort": 3,  # done records, locks, engines: used by tiling and extraction, imports no torch
    "data": 4,
    "models": 5,
    "training": 6,
    "tiling": 6,
    "extraction": 6,  # never imports evaluation, nor evaluation it: one room of a level never imports another
    "evaluation": 6,
    "train": 7,
    "tile": 7,
    "extract": 7,
    "evaluate": 7,
    "shards": 7,
    "info": 7,  # reads the ops and the compiled module (`python -m clusiam_fast.info`)
    "study": 8,  # runs the CLI modules (train, extract, evaluate) and reads their parsers
    "__init__": 8,  # the package's own re-exports
    "__main__": 9,  # clusiam-fast VERB: runs every verb's module
    "_C": 0,  # the compiled kernels
}


def _room(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "clusiam_fast", module
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package at ``root``: dotted name -> file."""
    return {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _imports(path: Path, name: str, modules: Iterable[str] | None = None):
    """(line, absolute module) of every import of the package in ``path``, the module ``name``.

    ``from P import x`` names the module ``P.x`` when ``x`` is one of ``modules`` (a submodule:
    ``from . import byol``), else ``P`` (a name ``P`` defines)."""
    top = name.split(".")[0]
    modules = {*(_modules() if modules is None else modules), f"{top}._C"}  # _C: the compiled kernels, maybe unbuilt
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == top:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == top:
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    yield node.lineno, sub if sub in modules else target


def _import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of the package it imports (at any depth in its file)."""
    modules = _modules(root)
    return {
        name: {target for _, target in _imports(path, name, modules) if target in modules and target != name}
        for name, path in modules.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


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


def test_no_import_circle_between_files():
    circles = _circles(_import_graph())
    assert not circles, "import circles between modules:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_checker_catches_a_circle_hidden_by_a_lazy_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a, sub\nfrom .a import f\n")  # a package importing its parts
    (pkg / "a.py").write_text("from .sub.helper import helper\n\n\ndef f():\n    return helper()\n")
    (pkg / "sub" / "__init__.py").write_text("from .helper import helper\n")
    (pkg / "sub" / "helper.py").write_text("def helper():\n    from .. import b\n\n    return b.X\n")
    (pkg / "b.py").write_text("from pkg.sub.helper import helper as _h\nimport pkg.a\n\nX = 1\n")
    graph = _import_graph(pkg)
    assert graph["pkg"] == {"pkg.a", "pkg.sub"}  # `from . import a` is the submodule, not the package
    assert graph["pkg.sub.helper"] == {"pkg.b"}
    assert _circles(graph) == [["pkg.a", "pkg.b", "pkg.sub.helper"]]  # a -> sub.helper -> (lazily) b -> a
    (pkg / "b.py").write_text("X = 1\n")  # the lazy import's target no longer imports back: no circle
    assert _circles(_import_graph(pkg)) == []
    (pkg / "b.py").write_text("from . import f\n")  # a name of the package's __init__: a circle through it
    assert _circles(_import_graph(pkg)) == [["pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.helper"]]
