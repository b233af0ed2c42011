"""One error convention for every verb: one line ``clusiam-fast VERB: error: ...`` and a fixed exit status.

Exit statuses: 0 done, 1 partial failure (some slides failed), 2 bad input (a flag, a file, the data, a
config; also an output the file system refused), 3 training became non-finite, 4 an unusable --out,
5 the backbone collapsed (--stop-on-collapse), 130 interrupted. ``CLUSIAM_DEBUG=1`` re-raises instead,
so the traceback shows. Errors of other kinds are bugs: they keep their traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

PARTIAL, BAD_INPUT, NON_FINITE, BAD_OUT, COLLAPSED, INTERRUPTED = 1, 2, 3, 4, 5, 130
EXIT_HELP = (
    "exit status: 0 done, 1 some slides failed, 2 bad input, 3 non-finite training, 4 unusable --out, "
    "5 collapse, 130 interrupted; CLUSIAM_DEBUG=1 shows the traceback of an error"
)
# Bad input: missing or unreadable files, wrong values, a dependency or a cluster that is not there.
BAD_INPUT_ERRORS = (OSError, ValueError, ImportError, ConnectionError)


class OutPathError(NotADirectoryError):
    """--out names a file (or lies under one): the output folder cannot be made (exit status 4)."""


def check_out_path(out: str | os.PathLike) -> None:
    """--out must be (or become) a folder: neither it nor a parent may be a file."""
    out = Path(out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == out else f"lies under {existing}, which is a file"
        raise OutPathError(f"--out {out} {where}, not a folder: choose a folder for the outputs")


def debugging() -> bool:
    return os.environ.get("CLUSIAM_DEBUG", "") not in ("", "0")


def prog(verb: str) -> str:
    return f"clusiam-fast {verb}"


def say_error(verb: str, message: object) -> None:
    """Print the one line ``clusiam-fast VERB: error: MESSAGE``."""
    text = " ".join(str(message).split("\n"))
    print(f"{prog(verb)}: error: {text}", file=sys.stderr)


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with "(default: ...)" after each flag, and the examples as written."""


class VerbParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(BAD_INPUT)


def verb_parser(verb: str, description: str, examples: str, **kwargs) -> VerbParser:
    """The parser of ``clusiam-fast VERB``: a short description, examples and the exit statuses in --help."""
    return VerbParser(
        prog=prog(verb),
        description=textwrap.fill(description, 100),  # the formatter keeps text as written (the examples)
        epilog=f"examples:\n{examples.rstrip()}\n\n{EXIT_HELP}",
        formatter_class=kwargs.pop("formatter_class", argparse.RawDescriptionHelpFormatter),
        **kwargs,
    )


def run_verb(verb: str, body: Callable[[], int], statuses: Mapping[type[BaseException], int] | None = None) -> int:
    """Run ``body`` and turn a known error into one line and its exit status (``statuses`` first, then
    --out errors: 4, bad input: 2); ``CLUSIAM_DEBUG=1`` re-raises instead."""
    table = {**(statuses or {}), OutPathError: BAD_OUT}
    try:
        return body()
    except KeyboardInterrupt:
        if debugging():
            raise
        print(f"{prog(verb)}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        status = next((s for kind, s in table.items() if isinstance(error, kind)), None)
        if status is None and isinstance(error, BAD_INPUT_ERRORS):
            status = BAD_INPUT
        if status is None or debugging():
            raise
        say_error(verb, error)
        return status
