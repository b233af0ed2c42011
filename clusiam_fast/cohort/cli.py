"""The command-line flags every cohort verb (``tile``, ``extract``) shares."""

from __future__ import annotations

import argparse

from ..cli.types import positive_float
from .engines import ENGINES
from .locks import DEFAULT_TIMEOUT_S


def add_cohort_arguments(parser: argparse.ArgumentParser, verb: str, engine_help: str) -> argparse._ArgumentGroup:
    """--engine, --ray-address, --redo, --lock-timeout, --shard in one group (returned, for the verb's own)."""
    group = parser.add_argument_group("cohort (resumable, shared folders, Ray)")
    shown = issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)  # it adds "(default: ...)"
    default = "" if shown else f"; default {DEFAULT_TIMEOUT_S:.0f}"
    group.add_argument("--engine", choices=ENGINES, default="local", help=engine_help)
    group.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join this Ray cluster (host:port of the head, or auto); default: start a local instance",
    )
    group.add_argument("--redo", action="store_true", help=f"{verb} slides again even if done (also with new settings)")
    group.add_argument(
        "--lock-timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"take over a slide lock not refreshed for S seconds (its job died on another host{default})",
    )
    group.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help=f"{verb} only part I (0-based) of N of the slides (e.g. Slurm arrays)",
    )
    return group
