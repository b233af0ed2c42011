"""The check behind conftest's no_child_process_left: it sees real leftover children and grandchildren."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

from child_processes import live_descendants, wait_for_no_descendants


def test_a_sleeping_child_is_seen_until_it_is_ended():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child.pid in live_descendants()
    finally:
        child.kill()
        child.wait()
    assert child.pid not in wait_for_no_descendants(5.0)


def test_forkserver_pool_workers_are_seen_and_the_forkserver_itself_is_not():
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
    worker_pid = pool.submit(os.getpid).result(timeout=60)
    from multiprocessing import forkserver

    try:
        left = live_descendants()
        assert worker_pid in left  # a grandchild: forked by the forkserver
        assert forkserver._forkserver._forkserver_pid not in left
    finally:
        pool.shutdown(wait=True)
    assert worker_pid not in wait_for_no_descendants(5.0)
