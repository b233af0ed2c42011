"""Ctrl-C / SIGTERM: finish the current step, save a checkpoint, then stop.

The first SIGINT or SIGTERM only sets a flag that the loop reads between steps
(so the saved state is always that of a whole step); a second SIGINT aborts at
once with KeyboardInterrupt. Handlers are installed only in the main thread.
"""

from __future__ import annotations

import signal
import sys
import threading


class StopSignal:
    """Context manager; ``requested`` turns True on the first SIGINT / SIGTERM."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        name = signal.Signals(signum).name
        print(
            f"\n{name} received: saving a checkpoint after this step (press Ctrl-C again to abort without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
