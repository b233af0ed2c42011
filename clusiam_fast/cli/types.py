"""argparse value types shared by the verbs (argparse names the flag in the error)."""

from __future__ import annotations

import argparse
import json
import math


def finite_float(text: str) -> float:
    """A float that is not inf or nan."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive(kind: type, name: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r}") from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = f"positive_{name}"
    return parse


positive_int = _positive(int, "int")
positive_float = _positive(float, "float")


def json_object(text: str) -> dict:
    """A JSON object given on the command line, e.g. '{"init_values": 1e-5}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"init_values\": 1e-5}}', got {text!r}")
    return value
