"""Small parts: no function longer than 150 lines and no class longer than 300 in clusiam_fast/.

A function or class is measured from its ``def`` / ``class`` line to its last line,
docstring and comments included (nested functions count in their parent too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import clusiam_fast

ROOT = Path(clusiam_fast.__file__).parent
MAX_FUNCTION_LINES = 150
MAX_CLASS_LINES = 300

# Known offenders, by name only (so that moving their file does not break the test).
ALLOWED_LONG_FUNCTIONS: set[str] = set()


def _too_long(tree: ast.AST) -> list[tuple[int, str, int, int]]:
    """(line, name, lines, limit) of every function or class in ``tree`` over its limit."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            limit = MAX_FUNCTION_LINES
        else:
            continue
        lines = node.end_lineno - node.lineno + 1
        if lines > limit:
            found.append((node.lineno, node.name, lines, limit))
    return found


def test_no_function_over_150_lines_and_no_class_over_300():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        for line, name, lines, limit in _too_long(ast.parse(path.read_text(), str(path))):
            if name in ALLOWED_LONG_FUNCTIONS and limit == MAX_FUNCTION_LINES:
                continue
            offenders.append(f"{path.relative_to(ROOT.parent)}:{line} {name}: {lines} lines (limit {limit})")
    assert not offenders, "split these by job:\n" + "\n".join(offenders)


def test_the_measure_finds_a_long_function_and_a_long_class():
    """The check can fail: a 151-line function and a 301-line class are caught, 150 / 300 pass."""
    body = "    x = 0\n"
    source = (
        "def fits():\n" + body * 149
        + "def too_long():\n" + body * 150
        + "class Fits:\n" + body * 299
        + "class TooLong:\n" + body * 300
    )  # fmt: skip
    found = {(name, lines) for _, name, lines, _ in _too_long(ast.parse(source))}
    assert found == {("too_long", 151), ("TooLong", 301)}
