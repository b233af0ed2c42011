"""``clusiam-fast VERB ...`` (also ``python -m clusiam_fast VERB ...``): one entry point for every tool.

Each verb is its own module, imported only when it runs (``--help`` stays torch-free), and
``python -m clusiam_fast.VERB`` keeps working. ``bench`` runs the pytest-benchmark suite of a
source checkout (``pytest benchmarks/ --benchmark-only`` plus the arguments given).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

from . import __version__
from .cli.errors import BAD_INPUT, EXIT_HELP, say_error

VERBS = {  # verb: (module with main(argv), what it does)
    "tile": ("clusiam_fast.tile", "cut whole-slide images into tissue patches (coordinates, thumbnails, manifest)"),
    "train": ("clusiam_fast.train", "self-supervised pre-training: CluSiam, CluBYOL, SimSiam, BYOL"),
    "extract": ("clusiam_fast.extract", "feature bags (one HDF5 per slide) from a checkpoint or a baseline encoder"),
    "evaluate": ("clusiam_fast.evaluate", "MIL slide classification, clustering, KNN and maps from feature bags"),
    "study": ("clusiam_fast.study.__main__", "compare methods end to end from one YAML file"),
    "shards": ("clusiam_fast.shards", "pack patches into webdataset tar shards for the DALI loader"),
    "info": ("clusiam_fast.info", "what this install can do: kernels, devices, optional packages"),
    "bench": (None, "run the benchmarks: pytest benchmarks/ --benchmark-only [pytest arguments]"),
}

HELP = f"""usage: clusiam-fast [--version] [-h] VERB [ARGS...]

CluSiam for histopathology, fast: tile slides, train, extract features, evaluate.

verbs:
{chr(10).join(f"  {verb:<9} {what}" for verb, (_, what) in VERBS.items())}

'clusiam-fast VERB --help' describes a verb; 'python -m clusiam_fast.VERB' runs it too.
Flags of train, tile, extract and evaluate can come from a YAML file: --config FILE.yaml.

examples:
  clusiam-fast tile slides/ --out tiles
  clusiam-fast train tiles/manifest.csv --out runs/clusiam --amp
  clusiam-fast extract runs/clusiam/checkpoint.pt tiles/manifest.csv --out features
  clusiam-fast evaluate features --labels slides.csv --out report
  clusiam-fast train --config runs/clusiam/config.yaml --out runs/again

{EXIT_HELP}
"""

BENCH_HELP = """usage: clusiam-fast bench [PYTEST ARGS...]

Run the benchmarks of a source checkout: pytest benchmarks/ --benchmark-only, plus the
arguments given (e.g. -k cluster_loss, --benchmark-json out.json).
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(HELP, end="")
        return 0
    if argv[:1] == ["--version"]:
        print(f"clusiam-fast {__version__}")
        return 0
    if not argv or argv[0].startswith("-"):
        print(HELP, end="", file=sys.stderr)
        what = f"unknown option {argv[0]}" if argv else "no verb given"
        print(f"clusiam-fast: error: {what}; choose a verb: {', '.join(VERBS)}", file=sys.stderr)
        return BAD_INPUT
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        near = difflib.get_close_matches(verb, VERBS, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        print(f"clusiam-fast: error: unknown verb {verb!r}; {hint}choose one of {', '.join(VERBS)}", file=sys.stderr)
        return BAD_INPUT
    if verb == "bench":
        return bench(rest)
    try:
        module = import_module(VERBS[verb][0])
    except ModuleNotFoundError as error:
        if error.name != VERBS[verb][0]:
            raise
        say_error(verb, f"this install of clusiam_fast {__version__} has no {verb!r} verb; update the package")
        return BAD_INPUT
    return module.main(rest)


def bench(argv: list[str]) -> int:
    """pytest benchmarks/ --benchmark-only ARGS; pytest's status as ours (1: a benchmark failed, 2: bad input)."""
    if argv[:1] in (["-h"], ["--help"]):
        print(BENCH_HELP, end="")
        return 0
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if not folder.is_dir():
        say_error("bench", f"no benchmarks/ beside the package ({folder}): run bench from a source checkout")
        return BAD_INPUT
    try:
        import pytest
    except ImportError:
        say_error("bench", 'needs pytest and pytest-benchmark: pip install ".[test]"')
        return BAD_INPUT
    status = int(pytest.main([str(folder), "--benchmark-only", *argv]))
    return {0: 0, 1: 1, 2: 130, 3: 1, 4: BAD_INPUT, 5: BAD_INPUT}.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
