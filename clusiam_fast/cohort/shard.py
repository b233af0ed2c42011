"""``--shard I/N``: a deterministic split of a cohort for schedulers without Ray (Slurm arrays, nodes).

Slides are sorted by slide id and shard I (0-based) takes every N-th from position I, so
shards are balanced to within one slide and every task given the same inputs gets the same
part, whatever order the inputs were listed in. (Shared locks and done records keep the
result right even if two tasks were given overlapping parts.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None for None; ValueError naming the flag otherwise."""
    if text in (None, ""):
        return None
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must be I/N (e.g. 0/4 for the first of 4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= I < N (I counts from 0; Slurm: $SLURM_ARRAY_TASK_ID/N)")
    return index, count


def select_shard(items: Sequence[T], ids: Sequence[str], shard: tuple[int, int] | None) -> list[T]:
    """The items (keyed by ``ids``) of shard ``(I, N)``, in their given order; all of them for None."""
    if shard is None:
        return list(items)
    index, count = shard
    order = sorted(range(len(items)), key=lambda k: ids[k])
    mine = {k for position, k in enumerate(order) if position % count == index}
    return [item for k, item in enumerate(items) if k in mine]
