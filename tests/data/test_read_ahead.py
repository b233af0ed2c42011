"""ReadAhead: results in order, a bounded lead over the consumer, errors raised where they are taken."""

from __future__ import annotations

import threading
import time

import pytest

from clusiam_fast.data.read_ahead import ReadAhead


def test_results_come_in_order_and_the_reader_stays_at_most_depth_ahead():
    started = []
    lock = threading.Lock()

    def read(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    ahead = ReadAhead(read, depth=2)
    time.sleep(0.3)  # let it fill its queue
    assert max(started) <= 2  # two queued, one waiting to be put
    assert [ahead(i) for i in range(10)] == [i * i for i in range(10)]
    with pytest.raises(RuntimeError, match="in order"):
        ahead(3)
    ahead.close()
    assert not ahead.thread.is_alive()


def test_an_error_is_raised_to_the_consumer_at_its_batch_and_stop_ends_the_reader():
    def read(i: int) -> int:
        if i == 2:
            raise OSError("tile 2 is corrupt")
        return i

    ahead = ReadAhead(read, depth=4)
    assert ahead(0) == 0 and ahead(1) == 1
    with pytest.raises(OSError, match="tile 2"):
        ahead(2)
    ahead.close()
    finite = ReadAhead(lambda i: i, depth=1, stop=3)
    assert [finite(i) for i in range(3)] == [0, 1, 2]
    finite.thread.join(timeout=5)
    assert not finite.thread.is_alive()
    with pytest.raises(ValueError, match="depth"):
        ReadAhead(lambda i: i, depth=0)
