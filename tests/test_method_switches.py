"""A method is read in one file: outside ``models/`` (and the choices table, ``choices.py``) no module
compares a method's name, and no module copies a list of the table's choices.

Every module of the package is parsed; flagged are (1) a comparison (``==``, ``!=``, ``in``, ``not in``,
``match`` / ``case``) with a method name's string, or a conditional picking one, and (2) a tuple, list,
set or dict literal that copies a list of the table: two or more method names (a per-method list or
table), or every name of the backbones, the cluster loss implementations or the MIL models; such code
reads ``clusiam_fast.choices`` instead. Mentions in docstrings, help texts and a field's default value
(``method: str = "clusiam"``) pass, and so does a preference among a few names (``("abmil", "dsmil")``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import clusiam_fast
from clusiam_fast import choices

ROOT = Path(clusiam_fast.__file__).parent
# Where the methods and the table live, and the MIL registry (name -> class, checked against the table).
ALLOWED = ("models/", "choices.py", "evaluation/mil/registry.py")
# The table's lists, and how many of a list's names make a literal a copy of it.
TABLE_LISTS = {
    "methods": (choices.METHOD_NAMES, 2),
    "backbones": (choices.ARCH_NAMES, len(choices.ARCH_NAMES)),
    "cluster loss implementations": (choices.CLUSTER_LOSS_IMPLS, len(choices.CLUSTER_LOSS_IMPLS)),
    "MIL models": (choices.MIL_MODEL_NAMES, len(choices.MIL_MODEL_NAMES)),
}


def _strings(node: ast.AST) -> list[str]:
    """The string constants of ``node`` itself or, for a tuple / list / set, of its elements."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [n.value for n in items if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _listed(node: ast.AST) -> set[str]:
    """The names a literal lists: a tuple's, list's or set's strings, a dict's keys, ``dict(name=...)``'s names."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return set(_strings(node))
    if isinstance(node, ast.Dict):
        return set(_strings(ast.Tuple(elts=[k for k in node.keys if k is not None])))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return {kw.arg for kw in node.keywords if kw.arg}
    return set()


def method_switches(source: str) -> list[str]:
    """'line N: what' for every method-name comparison and copied choice list in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            names = [s for operand in (node.left, *node.comparators) for s in _strings(operand)]
        elif isinstance(node, ast.MatchValue):
            names = _strings(node.value)
        elif isinstance(node, ast.IfExp):  # picks a method by name: "simsiam" if ... else ...
            names = [*_strings(node.body), *_strings(node.orelse)]
        else:
            names = []
        for name in sorted(set(names) & set(choices.METHOD_NAMES)):
            found.append(f"line {node.lineno}: compares the method name {name!r}")
        listed = _listed(node)
        for what, (names, copied) in TABLE_LISTS.items():
            if len(listed & set(names)) >= copied:
                found.append(f"line {node.lineno}: copies the {what} of clusiam_fast/choices.py")
    return found


def _modules() -> list[Path]:
    return [p for p in sorted(ROOT.rglob("*.py")) if not p.relative_to(ROOT).as_posix().startswith(ALLOWED)]


def test_no_module_outside_models_switches_on_a_method_name_or_copies_a_choice_list():
    found = [
        f"{path.relative_to(ROOT.parent)} {hit}" for path in _modules() for hit in method_switches(path.read_text())
    ]
    assert not found, "read the method's interface or clusiam_fast/choices.py instead:\n" + "\n".join(found)
    assert len(_modules()) > 50  # the scan saw the package (models/ and choices.py left out)


SWITCHES = {
    "ternary": 'loss = -(a + b) if form == "simsiam" else 2 - a - b',
    "in-tuple": 'if cfg.method in ("clubyol", "byol"):\n    model.update_target()',
    "not-equal": 'if "byol" != method:\n    pass',
    "match-case": 'match method:\n    case "clusiam":\n        pass',
    "pick": 'return "simsiam" if run.method == RANDOM_INIT else run.method',
    "cli-choices": 'parser.add_argument("--method", choices=["clusiam", "simsiam", "clubyol", "byol"])',
    "dict-keys": 'DEFAULTS = {"clusiam": 0.5, "clubyol": 0.9}',
    "dict-call": "DEFAULTS = dict(clusiam=0.5, byol=0.0)",
    "archs": 'ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")',
    "mil": 'g.add_argument("--mil", choices=("maxpool", "dsmil", "abmil"))',
    "impls": 'impls = {"auto", "fused", "reference"}',
}
NOT_SWITCHES = {
    "default": 'method: str = "clusiam"',
    "docstring": '"""Train with --method clusiam or byol."""',
    "help": 'help = "default 0.5 for clusiam"',
    "constant": "if run.method == RANDOM_INIT:\n    pass",
    "table-list": "if cfg.method in CLUSTER_METHOD_NAMES:\n    pass",
    "other-choices": 'choices = ("auto", "cpu", "cuda")',
    "preference": 'for model in [m for m in ("abmil", "dsmil") if m in scores][:1]:\n    pass',
}


@pytest.mark.parametrize("snippet", SWITCHES.values(), ids=SWITCHES)
def test_the_scan_finds_a_switch_or_a_copied_list(snippet):
    assert method_switches(snippet), snippet


@pytest.mark.parametrize("snippet", NOT_SWITCHES.values(), ids=NOT_SWITCHES)
def test_the_scan_passes_names_that_are_not_switches(snippet):
    assert method_switches(snippet) == [], snippet
