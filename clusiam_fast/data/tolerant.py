"""A bad item must not stop the run: one wrapper and one limit for every reader of patches.

Two policies, both reporting the failing item by name:

- :class:`TolerantDataset` returns ``(value, index, error)`` so that the consumer leaves the
  item out and says so (extraction, shard packing, normalisation statistics);
- :func:`first_readable` replaces the item by the next readable one, so that batch shapes
  and epoch lengths never change (training loaders).

Either way, :data:`MAX_CONSECUTIVE_BAD` unreadable items in a row mean the data is broken,
not one file: the run stops with an error that names one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

MAX_CONSECUTIVE_BAD = 16


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def first_readable(
    read: Callable[[int], Any], index: int, n: int, describe: Callable[[int], str], limit: int = MAX_CONSECUTIVE_BAD
) -> tuple[Any, list[str]]:
    """``read(j)`` for the first readable ``j`` of ``index, index + 1, ...`` (mod ``n``).

    Returns the value and ``"<item> (<error>)"`` for each item skipped on the way; raises
    RuntimeError after ``limit`` failures in a row.
    """
    skipped: list[str] = []
    for attempt in range(min(limit, n)):
        j = (index + attempt) % n
        try:
            return read(j), skipped
        except Exception as error:  # one bad item never stops the run: report it, use the next
            skipped.append(f"{describe(j)} ({describe_error(error)})")
    raise RuntimeError(f"{len(skipped)} consecutive items could not be read, e.g. {skipped[0]}; check the data")


def _item(dataset: Any, index: int) -> Any:
    return dataset[index]


class TolerantDataset:
    """``dataset`` whose items come as ``(load(dataset, i), i, None)`` or ``(None, i, error)``.

    ``indices`` maps item ``k`` to index ``indices[k]`` of ``dataset`` (a shuffled order, a
    sample); by default items are the dataset's own. Batched reads go through the inner
    dataset's ``__getitems__`` when it has one, item by item when that batch fails.
    """

    def __init__(
        self, dataset: Any, load: Callable[[Any, int], Any] = _item, indices: Sequence[int] | None = None
    ) -> None:
        self.dataset, self.load = dataset, load
        self.indices = None if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def _index(self, k: int) -> int:
        return k if self.indices is None else self.indices[k]

    def __getitem__(self, k: int) -> tuple[Any, int, str | None]:
        index = self._index(k)
        try:
            return self.load(self.dataset, index), index, None
        except Exception as error:  # one bad item must not stop the run
            return None, index, describe_error(error)

    def __getitems__(self, ks: list[int]) -> list[tuple[Any, int, str | None]]:
        batched = getattr(self.dataset, "__getitems__", None)
        if batched is not None:
            indices = [self._index(k) for k in ks]
            try:
                items = batched(indices)
                return [(self.load(items, j), i, None) for j, i in enumerate(indices)]
            except Exception:  # find the bad item(s) one by one
                pass
        return [self[k] for k in ks]
