"""Keep a reader ahead of its consumer: batch ``i + 1 .. i + depth`` are read while batch ``i`` is used.

>>> ahead = ReadAhead(lambda i: read_batch(i), depth=4)    # doctest: +SKIP
>>> first, second = ahead(0), ahead(1)                      # in order; errors re-raised here
>>> ahead.close()

One thread calls ``read(0), read(1), ...`` and puts each result (or the error it raised) in a
queue of ``depth`` slots; the consumer takes them in order. At most ``depth + 1`` batches
exist at once (those queued and the one being read), so the memory held is
``(depth + 1) x batch bytes``: for GPU-decoded slide patches, 5 x 256 x 224 x 224 x 3 B =
193 MB of GPU memory at the default depth 4 and batch 256.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

DEFAULT_DEPTH = 4


class ReadAhead:
    """``read(i)`` for i = 0, 1, 2, ... on a background thread, ``depth`` results ahead (see module docstring)."""

    def __init__(self, read: Callable[[int], Any], depth: int = DEFAULT_DEPTH, *, stop: int | None = None) -> None:
        if depth < 1:
            raise ValueError(f"read-ahead depth must be >= 1, got {depth}")
        self.read, self.stop = read, stop
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.closed = threading.Event()
        self.next = 0
        self.thread = threading.Thread(target=self._fill, name="clusiam-read-ahead", daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        i = 0
        while not self.closed.is_set() and (self.stop is None or i < self.stop):
            try:
                item = (self.read(i), None)
            except BaseException as error:  # handed to the consumer, raised there
                item = (None, error)
            while not self.closed.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[1] is not None:
                return
            i += 1

    def __call__(self, index: int) -> Any:
        """Result ``index`` (results are taken in order: 0, 1, 2, ...)."""
        if index != self.next:
            raise RuntimeError(f"ReadAhead results are taken in order: asked for {index}, next is {self.next}")
        value, error = self.queue.get()
        self.next += 1
        if error is not None:
            raise error
        return value

    def close(self) -> None:
        """Stop the reader thread (results not taken are dropped)."""
        self.closed.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=10)
