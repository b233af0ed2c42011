"""The documentation site builds strictly, its command examples name real flags, and its figures live in one place.

- ``mkdocs build --strict`` (mkdocs.yml at the root, pages in docs/): a broken link, a missing
  page or an API entry that no longer exists fails the build.
- Every ``python -m clusiam_fast.<verb> ...`` / ``clusiam-fast <verb> ...`` example in
  README.md and docs/ (fenced shell blocks and inline code) names only flags that the verb's
  own argparse parser has, read from the parser itself (``main(['--help'])``, torch-free).
- Durations (minutes, hours) are quoted only on docs/figures.md, beside the command that
  measures them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").rglob("*.md"))
VERBS = {
    "tile": "clusiam_fast.tile",
    "train": "clusiam_fast.train",
    "extract": "clusiam_fast.extract",
    "evaluate": "clusiam_fast.evaluate",
    "shards": "clusiam_fast.shards",
    "study": "clusiam_fast.study.__main__",
    "info": "clusiam_fast.info",
}
COMMAND = re.compile(r"(?:-m\s+clusiam_fast\.|clusiam-fast\s+)(\w+)((?:\.__main__)?)([^\n]*)")
FLAG = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")


def verb_flags(module: str) -> set[str]:
    """Every option string of the parsers a verb's ``main(['--help'])`` builds (all of them: a pre-parser too)."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def spy(self, *args, **kwargs):
        seen.append(self)
        return original(self, *args, **kwargs)

    argparse.ArgumentParser.parse_known_args = spy
    try:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
            importlib.import_module(module).main(["--help"])
    finally:
        argparse.ArgumentParser.parse_known_args = original
    assert seen, f"{module}.main(['--help']) parsed nothing"
    return {option for parser in seen for option in parser._option_string_actions}


def command_examples(text: str) -> list[tuple[str, str]]:
    """(verb, the rest of its command line) of every example in a page's shell blocks and inline code."""
    pieces = re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, flags=re.S)
    pieces += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    found = []
    for piece in pieces:
        piece = re.sub(r"\s#[^\n]*", "", piece.replace("\\\n", " "))  # continued lines are one; comments go
        for command in re.split(r"&&|\|\||;|\n", piece):
            if match := COMMAND.search(command):
                verb, main, rest = match.groups()
                found.append((f"{verb}{main}".removesuffix(".__main__"), " ".join(rest.split())))
    return found


def wrong_flags(text: str, flags_of) -> list[str]:
    wrong = []
    for verb, rest in command_examples(text):
        if verb.isupper() or verb == "bench":  # a placeholder (`clusiam-fast VERB`); bench passes pytest's flags on
            continue
        if verb not in VERBS:
            wrong.append(f"unknown verb {verb!r} in `{rest}`")
            continue
        known = flags_of(VERBS[verb])
        wrong += [f"{verb} has no {flag} (in `{verb} {rest}`)" for flag in FLAG.findall(rest) if flag not in known]
    return wrong


@pytest.fixture(scope="module")
def flags_of():
    cache: dict[str, set[str]] = {}

    def get(module: str) -> set[str]:
        if module not in cache:
            cache[module] = verb_flags(module)
        return cache[module]

    return get


@pytest.mark.parametrize("page", [REPO / "README.md", *PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_command_examples_name_existing_flags(page, flags_of):
    wrong = wrong_flags(page.read_text(), flags_of)
    assert not wrong, f"{page.relative_to(REPO)}:\n" + "\n".join(wrong)


def test_the_flag_check_catches_a_wrong_flag(flags_of):
    page = (
        "```bash\npython -m clusiam_fast.tile slides --out tiles \\\n    --no-such-flag 1  # --not-checked\n"
        "torchrun --nproc_per_node 2 -m clusiam_fast.train m.csv --amp && python -m clusiam_fast.nope --x\n```\n"
        "Inline: `clusiam-fast info --jsn` and `python -m clusiam_fast.study.__main__ c.yaml --report-only`.\n"
    )
    assert wrong_flags(page, flags_of) == [
        "tile has no --no-such-flag (in `tile slides --out tiles --no-such-flag 1`)",
        "unknown verb 'nope' in `--x`",
        "info has no --jsn (in `info --jsn`)",
    ]


def test_every_page_is_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text()
    missing = [str(p.relative_to(REPO / "docs")) for p in PAGES if str(p.relative_to(REPO / "docs")) not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


DURATION = re.compile(r"(?<![\w.-])~?\d+(?:[.,:]\d+)?\s*(?:min|mins|minutes|h|hours)\b")


def test_durations_are_quoted_only_on_the_figures_page():
    quoted = [
        f"{page.relative_to(REPO)}: {match.group(0)!r}"
        for page in [REPO / "README.md", *sorted((REPO / "benchmarks").glob("*.[my]*")), *PAGES]
        if page.name != "figures.md" and page.exists()
        for match in DURATION.finditer(page.read_text())
    ]
    assert not quoted, "durations belong on docs/figures.md, beside their measurement:\n" + "\n".join(quoted)


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed: pip install -e '.[docs]'")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(REPO / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for page in ("index.html", "verbs/tile/index.html", "api/index.html", "figures/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "cluster_loss" in api and "Gumbel" in api  # the docstrings were rendered, not just the headings
