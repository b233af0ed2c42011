"""Resumable cohorts without Ray: done records, re-runs, changed settings, per-slide locks, shards,
cohort.json, and two jobs sharing one --out (real slides, real processes)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest
from cohort_slides import BAD, make_cohort

from clusiam_fast.cohort import acquire_lock, parse_shard, select_shard
from clusiam_fast.cohort.locks import lock_path
from clusiam_fast.cohort.records import outputs_problem, read_done, read_done_log
from clusiam_fast.tiling import TileConfig, tile_slides

REPO = Path(__file__).resolve().parents[2]


def _tile_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "clusiam_fast.tile", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _assert_each_done_once(out: Path, ids: list[str]) -> None:
    """One done record per slide, one done.log line per slide, and every coordinate file readable."""
    assert sorted(p.stem for p in (out / "done").glob("*.json")) == sorted(ids)
    log = [e["slide_id"] for e in read_done_log(out)]
    assert sorted(log) == sorted(ids), f"slides done more than once or not at all: {sorted(log)}"
    for sid in ids:
        with h5py.File(out / "patches" / f"{sid}.h5", "r") as f:  # not truncated
            assert f["coords"].shape[0] > 0


def test_shards_split_deterministically_and_cover_the_cohort():
    ids = [f"s{k:02d}" for k in range(11)]
    parts = [select_shard(ids, ids, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == ids and sorted(len(p) for p in parts) == [3, 4, 4]
    shuffled = ids[::-1]
    assert select_shard(shuffled, shuffled, (1, 3)) == sorted(parts[1], reverse=True)  # same slides, any order
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_locks_exclude_and_stale_ones_are_taken_over_once(tmp_path):
    held = acquire_lock(tmp_path, "a", timeout_s=60)
    assert held is not None and acquire_lock(tmp_path, "a", timeout_s=60) is None
    owner = json.loads(held.path.read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    held.release()
    assert not held.path.exists()
    # a dead pid on this host: taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = lock_path(tmp_path, "b")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "time": time.time()}))
    lock = acquire_lock(tmp_path, "b", timeout_s=60)
    assert lock is not None and json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    # another host's live-looking lock: kept until it is older than the timeout
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": time.time()}))
    assert acquire_lock(tmp_path, "b", timeout_s=60) is None
    old = time.time() - 120
    os.utime(path, (old, old))
    winners = []
    barrier = threading.Barrier(6)

    def contend():
        barrier.wait()
        winners.append(acquire_lock(tmp_path, "b", timeout_s=60))

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(w is not None for w in winners) == 1  # one job takes a stale lock over, never two


def test_a_held_lock_is_kept_fresh_by_its_heartbeat(tmp_path):
    lock = acquire_lock(tmp_path, "c", timeout_s=2.0)  # beats every 0.5 s
    old = time.time() - 100
    os.utime(lock.path, (old, old))
    time.sleep(1.2)
    assert time.time() - lock.path.stat().st_mtime < 1.0 and acquire_lock(tmp_path, "c", timeout_s=2.0) is None
    lock.release()


def test_rerun_skips_done_slides_refuses_other_settings_and_redo_forces(wsi_dir, tmp_path):
    slides = make_cohort(wsi_dir, tmp_path / "slides", 2)
    out = tmp_path / "out"
    first = tile_slides(slides, out, TileConfig(), progress=False)
    assert first.ok and len(first.rows) == 2
    record = json.loads((out / "done" / "slide_00.json").read_text())
    assert record["inputs"][0]["size"] == slides[0].stat().st_size and record["settings"]["min_tissue"] == 0.5
    assert record["result"]["num_patches"] == first.rows[0]["num_patches"] and record["pid"] == os.getpid()
    again = _tile_cli(tmp_path / "slides", "--out", out, "--workers", "1")
    assert again.returncode == 0, again.stderr
    assert "skipped 2 slide(s) already tiled" in again.stdout and "tiled 0 of 0" in again.stdout
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["skipped"] == 2 and cohort["num_done"] == 2 and cohort["patches"] == 2 * first.rows[0]["num_patches"]
    refused = _tile_cli(tmp_path / "slides", "--out", out, "--min-tissue", "0.8")
    assert refused.returncode == 2 and "done with other settings" in refused.stderr
    assert "min_tissue: 0.5 -> 0.8" in refused.stderr and "--redo" in refused.stderr
    os.utime(slides[1], (time.time(), time.time() + 5))  # an input changed: that slide is done again
    changed = tile_slides(slides, out, TileConfig(), progress=False)
    assert [r["slide_id"] for r in changed.rows] == ["slide_01"] and changed.skipped == 1
    redo = _tile_cli(tmp_path / "slides", "--out", out, "--min-tissue", "0.8", "--redo", "--workers", "2")
    assert redo.returncode == 0 and "tiled 2 of 2" in redo.stdout, redo.stdout + redo.stderr
    assert json.loads((out / "done" / "slide_00.json").read_text())["settings"]["min_tissue"] == 0.8
    assert [e["slide_id"] for e in read_done_log(out)].count("slide_01") == 3  # done three times, as asked
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 3 and not list((out / "locks").iterdir())


def test_bad_slides_in_a_12_slide_cohort_are_named_and_the_others_finish(wsi_dir, tmp_path):
    make_cohort(wsi_dir, tmp_path / "slides", 9, bad=True)
    out = tmp_path / "out"
    done = _tile_cli(tmp_path / "slides", "--out", out, "--workers", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["num_done"] == 9 and cohort["pending"] == [] and cohort["num_failed"] == 3
    failed = cohort["failed"]
    assert "corrupt tile data" in failed["zz_corrupt"]["reason"]
    assert "no microns-per-pixel" in failed["zz_no_mpp"]["reason"]
    assert "no tissue found" in failed["zz_no_tissue"]["reason"]
    assert failed["zz_corrupt"]["path"].endswith(BAD["corrupt"])
    _assert_each_done_once(out, [f"slide_{k:02d}" for k in range(9)])


def test_two_jobs_on_one_out_never_tile_the_same_slide(wsi_dir, tmp_path):
    make_cohort(wsi_dir, tmp_path / "slides", 8)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "clusiam_fast.tile", str(tmp_path / "slides"), "--out", str(out), "--workers", "1"]
    jobs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    tiled = [int(re.search(r"tiled (\d+) of", stdout).group(1)) for stdout, _ in outputs]
    assert sum(tiled) == 8, outputs  # each slide tiled by exactly one of the jobs
    records = [json.loads(p.read_text()) for p in (out / "done").glob("*.json")]
    by_pid = {r["pid"] for r in records}
    assert by_pid <= {jobs[0].pid, jobs[1].pid} and len(records) == 8
    assert sorted(sum(1 for r in records if r["pid"] == job.pid) for job in jobs) == sorted(tiled)
    _assert_each_done_once(out, [f"slide_{k:02d}" for k in range(8)])
    assert len((out / "manifest.csv").read_text().splitlines()) == 9  # both jobs' slides listed


def test_shards_of_a_cohort_tile_it_exactly_once(wsi_dir, tmp_path):
    make_cohort(wsi_dir, tmp_path / "slides", 3)
    out = tmp_path / "out"
    counts = []
    for shard in ("0/2", "1/2"):
        done = _tile_cli(tmp_path / "slides", "--out", out, "--shard", shard, "--workers", "1")
        assert done.returncode == 0, done.stderr
        counts.append(int(re.search(r"tiled (\d+) of", done.stdout).group(1)))
    assert counts == [2, 1]
    _assert_each_done_once(out, ["slide_00", "slide_01", "slide_02"])
    assert _tile_cli(tmp_path / "slides", "--out", out, "--shard", "2/2").returncode == 2


def _write_lock(out: Path, slide_id: str, content) -> Path:
    path = lock_path(out, slide_id)
    path.parent.mkdir(exist_ok=True)
    if content is None:
        path.mkdir()  # a folder where the lock file goes
    else:
        path.write_text(json.dumps(content))
    return path


def test_malformed_locks_and_records_are_named_and_their_slides_redone(wsi_dir, tmp_path):
    """A lock holding {"pid": "abc"} or a JSON list, a lock path that is a folder, done and failure records
    holding a list or broken JSON: each named on the console with what was done; the cohort finishes."""
    make_cohort(wsi_dir, tmp_path / "slides", 4)
    out = tmp_path / "out"
    assert tile_slides([tmp_path / "slides"], out, TileConfig(), progress=False).ok
    host = socket.gethostname()
    locks = [
        _write_lock(out, "slide_00", {"host": host, "pid": "abc", "time": time.time()}),
        _write_lock(out, "slide_01", [1, 2]),
        _write_lock(out, "slide_02", None),
    ]
    stuck = _write_lock(out, "slide_03", None)
    (stuck / "something").write_text("a user's file")  # not ours to delete: the slide fails, naming it
    records = [out / "done" / f"slide_0{k}.json" for k in range(4)]
    records[0].write_text("[]")
    records[1].write_text('{"slide_id": "slide_01", "status": "do')
    records[2].write_text(json.dumps({"slide_id": "slide_02", "status": "done", "inputs": "x", "settings": {}}))
    records[3].write_text(json.dumps(["a list"]))
    (out / "failed").mkdir(exist_ok=True)
    (out / "failed" / "zz_other.json").write_text("[1]")  # a failure record of no slide of this run
    done = _tile_cli(tmp_path / "slides", "--out", out, "--workers", "2")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1 and "tiled 3 of 4" in done.stdout, done.stdout + done.stderr
    for record in records:
        assert f"done record {record}: " in done.stderr and "is done again" in done.stderr
    for lock in locks:
        assert f"removed malformed lock {lock}" in done.stderr and not lock.exists()
    assert "holds pid 'abc'" in done.stderr and "holds a JSON list" in done.stderr and "is a folder" in done.stderr
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["num_done"] == 3 and str(stuck) in cohort["failed"]["slide_03"]["reason"]
    assert (stuck / "something").exists()
    assert cohort["done"] == ["slide_00", "slide_01", "slide_02"]  # slide_03's malformed record is not counted
    assert [e["slide_id"] for e in read_done_log(out)].count("slide_02") == 2  # once per run
    for sid in cohort["done"]:
        assert json.loads((out / "done" / f"{sid}.json").read_text())["pid"] != os.getpid()  # rewritten


def test_done_slides_are_checked_against_their_outputs_before_they_are_skipped(wsi_dir, tmp_path):
    """A hand-edited patch count, a deleted and a truncated h5 file: named, and the slide tiled again (when it
    is in the run) or left out of the manifest (when it is not); the manifest counts what the h5 files hold."""
    make_cohort(wsi_dir, tmp_path / "slides", 3)
    (tmp_path / "other").mkdir()
    (tmp_path / "slides" / "slide_02.svs").rename(tmp_path / "other" / "slide_02.svs")
    out = tmp_path / "out"
    assert tile_slides([tmp_path / "slides", tmp_path / "other"], out, TileConfig(), progress=False).ok
    count = json.loads((out / "done" / "slide_00.json").read_text())["result"]["num_patches"]
    edited = out / "done" / "slide_00.json"
    record = json.loads(edited.read_text())
    record["result"]["num_patches"] = 9999
    edited.write_text(json.dumps(record))
    (out / "patches" / "slide_01.h5").unlink()
    h5 = out / "patches" / "slide_02.h5"  # slide_02 is not in the re-run: its row must not stay listed
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    done = _tile_cli(tmp_path / "slides", "--out", out, "--workers", "1")
    assert done.returncode == 0 and "tiled 2 of 2" in done.stdout, done.stdout + done.stderr
    assert f"{edited}: its output patches/slide_00.h5 holds {count} patches, the record says 9999" in done.stderr
    assert "its output patches/slide_01.h5 is missing; slide_01 is done again" in done.stderr
    left = f"left {out / 'done' / 'slide_02.json'} out of the done slides (its output patches/slide_02.h5 does not open"
    assert left in done.stderr
    with open(out / "manifest.csv") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["slide_00", "slide_01"] and rows["slide_00"]["num_patches"] == str(count)
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["patches"] == 2 * count and "9999" not in json.dumps(cohort)


def test_a_rerun_of_a_done_cohort_opens_each_h5_file_once(wsi_dir, tmp_path, monkeypatch):
    """The plan opens the h5 file of each done slide before skipping it; the manifest rebuild reuses those
    verdicts, and a file that changed since is checked again."""
    slides = make_cohort(wsi_dir, tmp_path / "slides", 3)
    out = tmp_path / "out"
    assert tile_slides(slides, out, TileConfig(), progress=False).ok
    opened: list[str] = []
    real = h5py.File

    def counted(name, *args, **kwargs):
        opened.append(Path(name).name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", counted)
    again = tile_slides(slides, out, TileConfig(), progress=False)
    assert again.skipped == 3 and not again.rows and again.kept == 3
    assert sorted(opened) == ["slide_00.h5", "slide_01.h5", "slide_02.h5"]
    checks: dict = {}
    record = read_done(out, "slide_01")
    assert outputs_problem(out, record, checks) is None and outputs_problem(out, record, checks) is None
    assert opened.count("slide_01.h5") == 2  # the second verdict was the first one's
    h5 = out / "patches" / "slide_01.h5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    assert "does not open" in outputs_problem(out, record, checks)


def test_a_slide_swapped_for_a_file_of_the_same_size_and_mtime_is_tiled_again(wsi_dir, tmp_path):
    """The fingerprint (first and last MiB) tells; a record written before fingerprints is still trusted."""
    slides = make_cohort(wsi_dir, tmp_path / "slides", 2)
    out = tmp_path / "out"
    assert tile_slides(slides, out, TileConfig(), progress=False).ok
    data = slides[0].read_bytes()
    st = slides[0].stat()
    swapped = data.replace(b"Filename = CMU-1|", b"Filename = CMU-2|", 1)
    assert swapped != data and len(swapped) == len(data)
    slides[0].write_bytes(swapped)
    os.utime(slides[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert slides[0].stat().st_size == st.st_size and slides[0].stat().st_mtime_ns == st.st_mtime_ns
    old = out / "done" / "slide_01.json"  # as written before fingerprints: accepted on path, size and mtime
    record = json.loads(old.read_text())
    for stamp in record["inputs"]:
        del stamp["fingerprint"]
    old.write_text(json.dumps(record))
    again = tile_slides(slides, out, TileConfig(), progress=False)
    assert [r["slide_id"] for r in again.rows] == ["slide_00"] and again.skipped == 1


def _children_table() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                table[int(entry.name)] = int(fields[1])
    return table


def _descendants(pid: int) -> set[int]:
    table, found, frontier = _children_table(), set(), {pid}
    while frontier:
        frontier = {p for p, parent in table.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_kill_9_of_the_local_driver_leaves_no_process_behind(wsi_dir, tmp_path):
    """The fork server, both workers and the resource tracker are gone within seconds of the driver's death."""
    make_cohort(wsi_dir, tmp_path / "slides", 8)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "clusiam_fast.tile", str(tmp_path / "slides"), "--out", str(tmp_path / "out")]
    driver = subprocess.Popen(
        cmd + ["--workers", "2", "--save-tiles", "jpg"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    left: set[int] = set()
    try:
        end = time.time() + 120
        while len(kids := _descendants(driver.pid)) < 4 and driver.poll() is None and time.time() < end:
            time.sleep(0.05)  # tracker, fork server and 2 workers
        assert len(kids) >= 4 and driver.poll() is None, "the cohort ended before its workers were seen"
        driver.kill()
        driver.wait()
        end = time.time() + 10
        while (left := kids & set(_children_table())) and time.time() < end:
            time.sleep(0.1)
        assert not left, f"processes left after kill -9 of the driver: {sorted(left)}"
    finally:
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()
            driver.wait()
