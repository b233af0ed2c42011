"""``--config FILE.yaml`` and ``--print-config`` for a verb's argparse parser.

A config file is a YAML mapping whose keys are the verb's long flag names, with dashes or
underscores (``max_steps: 100``, ``no-gumbel: true``), or the names of its positional
arguments (``data``, ``slides``); a list gives a flag of several values (``seeds: [0, 1]``),
``null`` leaves a flag at its default (a positional argument: empty); a relative path is read as on the
command line, from the working folder. Flags on the command line override the file. An
unknown key, a wrong type or a value the flag refuses is a :class:`ConfigFileError` naming
the file and the key. ``--print-config`` prints the resolved settings in the same form, so
the output fed back as ``--config`` gives the same settings; each verb writes them to
``OUT/config.yaml``.

A small layer over argparse rather than jsonargparse or Hydra: the verbs keep their parsers
(and their torch-free ``--help``), values are checked by the flags' own types and choices, and
the only new dependency is PyYAML.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"  # the resolved settings in every output folder
_OWN = ("help", "config", "print_config")


class ConfigFileError(ValueError):
    """A --config file that cannot be used; the message names the file and the key."""


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--config FILE and --print-config."""
    g = parser.add_argument_group("config file")
    g.add_argument(
        "--config",
        default=None,
        metavar="FILE.yaml",
        help="read flags from a YAML file: keys are the long flag names (dashes or underscores); "
        "flags given here override it",
    )
    g.add_argument(
        "--print-config",
        action="store_true",
        default=False,
        help="print the resolved settings as YAML (a --config file) and exit",
    )


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the values of ``--config FILE`` (if given) under those of ``argv``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_path(argv)
    if path is not None:
        _use_as_defaults(parser, read_config(path, parser))
    return parser.parse_args(argv)


def _config_path(argv: list[str]) -> str | None:
    """The FILE of ``--config FILE`` / ``--config=FILE`` (argparse itself reports one without a value)."""
    for i, word in enumerate(argv):
        if word == "--":
            return None
        if word == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return None


def _key(action: argparse.Action) -> str:
    """The config key of a flag: its long name without ``--``, or the name of a positional argument."""
    long = [s for s in action.option_strings if s.startswith("--")]
    return long[0][2:] if long else action.dest.replace("_", "-")


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {_key(a): a for a in parser._actions if a.dest not in _OWN and a.dest != argparse.SUPPRESS}


def read_config(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's values, checked and converted by each flag's type: ``{dest: value}``."""
    from ..utils.deps import require

    yaml = require("yaml", "pyyaml", "reading --config files")
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"--config {path} does not exist (or is not a file)")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"--config {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigFileError(f"--config {path} must hold a mapping of flag names to values, got {type(raw).__name__}")
    actions, values = _actions(parser), {}
    for name, value in raw.items():
        key = str(name).replace("_", "-")
        if key not in actions:
            near = difflib.get_close_matches(key, actions, n=1)
            hint = f" (did you mean {near[0]}?)" if near else f"; see {parser.prog} --help for the flags"
            raise ConfigFileError(f"--config {path}: unknown key {name!r}: not a flag of {parser.prog}{hint}")
        action = actions[key]
        if value is not None:
            values[action.dest] = _convert(action, value, f"--config {path}: key {name!r}")
        elif not action.option_strings:  # a positional left empty (extract's CHECKPOINT with --encoder timm:)
            values[action.dest] = None
    return values


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` as parsing its flag would give it; ConfigFileError when the flag would refuse it."""
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # a switch
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where} must be true or false, got {value!r}")
        return value if action.const is not False else not value  # no-X: true -> X = False
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if not many:
        if isinstance(value, list):
            raise ConfigFileError(f"{where} takes one value, got a list {value!r}")
        return _one(action, value, where)
    items = value if isinstance(value, list) else [value]
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise ConfigFileError(f"{where} takes {action.nargs} values, got {len(items)}: {value!r}")
    if action.nargs == "+" and not items:
        raise ConfigFileError(f"{where} takes at least one value, got an empty list")
    return [_one(action, item, where) for item in items]


def _one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, bool) or (isinstance(value, (list, dict)) and action.type is None):
        raise ConfigFileError(f"{where} must be a {_type_name(action)}, got {value!r}")
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as error:  # its message names the value
        raise ConfigFileError(f"{where}: {error}") from None
    except (TypeError, ValueError):
        raise ConfigFileError(f"{where}: must be a {_type_name(action)}, got {value!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigFileError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted


def _type_name(action: argparse.Action) -> str:
    kind = action.type
    names = {int: "whole number", float: "number", str: "string", None: "string", Path: "path (string)"}
    return names.get(kind, getattr(kind, "__name__", "value").replace("_", " "))


def _use_as_defaults(parser: argparse.ArgumentParser, values: Mapping[str, Any]) -> None:
    """The file's values become the defaults; a required flag or positional it gives is no longer required."""
    for action in parser._actions:
        if action.dest not in values:
            continue
        action.default = values[action.dest]
        action.required = False
        if not action.option_strings:  # a positional: may now be left out of the command line
            action.nargs = "*" if action.nargs in ("+", "*") else "?"


def settings(parser: argparse.ArgumentParser, values: Mapping[str, Any], skip: Iterable[str] = ()) -> dict[str, Any]:
    """``{key: value}`` of every flag of ``parser`` (in --help's order) from ``values`` (``{dest: value}``),
    as a config file gives them; ``skip``: dests left out (actions such as --resume, not settings)."""
    out = {}
    for key, action in _actions(parser).items():
        if action.dest in skip or action.dest not in values:
            continue
        value = values[action.dest]
        if action.nargs == 0 and action.const is False:  # --no-X stores X = False
            value = not value
        out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def dump(values: Mapping[str, Any]) -> str:
    """The YAML text of ``settings(...)``."""
    import yaml

    return yaml.safe_dump(dict(values), sort_keys=False, default_flow_style=False, width=1000)


def write_config(folder: str | os.PathLike, values: Mapping[str, Any]) -> Path:
    """Write FOLDER/config.yaml (atomically): the settings a ``--config`` re-run reads."""
    from ..utils.atomic import atomic_write_text

    path = Path(folder) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dump(values))
    return path
