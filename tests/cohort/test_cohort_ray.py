"""The Ray engine on a real local Ray instance started here (no mocks): tiling and extraction match the
local engine, kill -9 of a Ray worker and of the driver mid-cohort, bad slides, unanswered addresses."""

from __future__ import annotations

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

import numpy as np
import pytest
from cohort_slides import make_cohort
from test_cohort import REPO, _assert_each_done_once

from clusiam_fast.tiling import TileConfig, read_coords_h5, tile_slides

ray = pytest.importorskip("ray")
SLOW = TileConfig(save_tiles="jpg")  # writing the patches too: slides take long enough to be killed mid-way


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs) for the module; the engine finds it initialised and uses it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slide_locks(out: Path) -> list[Path]:
    folder = out / "locks"
    return [p for p in folder.glob("slide_*.lock")] if folder.is_dir() else []


def _pid_of(lock: Path, wait_s: float = 5.0) -> int | None:
    end = time.time() + wait_s
    while time.time() < end:
        try:
            return int(json.loads(lock.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.01)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ray_tiles_what_the_local_engine_tiles(ray_cluster, wsi_dir, tmp_path):
    slides = make_cohort(wsi_dir, tmp_path / "slides", 3) + [wsi_dir / "OS-1-detail.ome.tif"]
    local = tile_slides(slides, tmp_path / "local", TileConfig(), progress=False)
    remote = tile_slides(slides, tmp_path / "ray", TileConfig(), workers=2, engine="ray", progress=False)
    assert local.ok and remote.ok and len(remote.rows) == 4
    for row in remote.rows:
        a, _ = read_coords_h5(tmp_path / "local" / row["h5_path"])
        b, _ = read_coords_h5(tmp_path / "ray" / row["h5_path"])
        assert np.array_equal(a, b)
    record = json.loads((tmp_path / "ray" / "done" / "slide_00.json").read_text())
    assert record["pid"] != os.getpid()  # done (and recorded) by a Ray worker
    cohort = json.loads((tmp_path / "ray" / "cohort.json").read_text())
    assert cohort["engine"] == "ray" and cohort["num_done"] == 4
    again = tile_slides(slides, tmp_path / "ray", TileConfig(), engine="ray", progress=False)
    assert again.skipped == 4 and again.rows == []


def test_kill_9_of_a_ray_worker_mid_cohort_loses_and_repeats_nothing(ray_cluster, wsi_dir, tmp_path):
    slides = make_cohort(wsi_dir, tmp_path / "slides", 6)
    out = tmp_path / "out"
    killed: list[str] = []

    def kill_first_worker():
        end = time.time() + 120
        while time.time() < end and not killed:
            for lock in _slide_locks(out):
                pid = _pid_of(lock)
                if pid and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(lock.stem)
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_first_worker)
    watcher.start()
    first = tile_slides(slides, out, SLOW, workers=2, engine="ray", progress=False)
    watcher.join()
    assert killed, "no Ray worker was seen tiling a slide"
    failed = {f.path.stem: f.error for f in first.failures}
    # Ray retries the task once (max_retries=1): the slide is done, or failed naming the death
    assert set(failed) <= set(killed) and all("died" in e for e in failed.values()), failed
    again = tile_slides(slides, out, SLOW, workers=2, engine="ray", progress=False)
    assert again.ok and again.skipped == 6 - len(failed)
    _assert_each_done_once(out, [f"slide_{k:02d}" for k in range(6)])
    assert len((out / "manifest.csv").read_text().splitlines()) == 7


def test_kill_9_of_the_driver_mid_cohort_then_a_rerun_finishes_every_slide_once(ray_cluster, wsi_dir, tmp_path):
    make_cohort(wsi_dir, tmp_path / "slides", 6)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "clusiam_fast.tile", str(tmp_path / "slides"), "--out", str(out)]
    driver = subprocess.Popen(
        [*cmd, "--engine", "ray", "--workers", "2", "--save-tiles", "jpg"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.time() + 180
    while time.time() < end and not list(out.glob("done/*.json")):
        assert driver.poll() is None, "the driver ended before a slide was done"
        time.sleep(0.02)
    driver.kill()  # SIGKILL
    driver.wait()
    # the Ray instance of the dead driver takes its workers with it (one may finish its slide first);
    # their locks are then left with dead pids
    for lock in _slide_locks(out):
        pid = _pid_of(lock, wait_s=1)
        end = time.time() + 60
        while pid and _alive(pid) and time.time() < end:
            time.sleep(0.1)
    done_before = len(list(out.glob("done/*.json")))
    assert 1 <= done_before < 6
    again = tile_slides([tmp_path / "slides"], out, SLOW, workers=2, engine="ray", progress=False)
    assert again.ok and again.skipped == done_before and len(again.rows) == 6 - done_before
    _assert_each_done_once(out, [f"slide_{k:02d}" for k in range(6)])


def test_bad_slides_in_a_12_slide_cohort_on_ray(ray_cluster, wsi_dir, tmp_path):
    make_cohort(wsi_dir, tmp_path / "slides", 9, bad=True)
    out = tmp_path / "out"
    report = tile_slides([tmp_path / "slides"], out, TileConfig(), workers=2, engine="ray", progress=False)
    assert not report.ok and len(report.rows) == 9
    failed = json.loads((out / "cohort.json").read_text())["failed"]
    assert sorted(failed) == ["zz_corrupt", "zz_no_mpp", "zz_no_tissue"]
    assert "corrupt tile data" in failed["zz_corrupt"]["reason"] and "no tissue" in failed["zz_no_tissue"]["reason"]
    _assert_each_done_once(out, [f"slide_{k:02d}" for k in range(9)])


@pytest.mark.parametrize("listener", [False, True], ids=["closed-port", "not-ray-server"])
def test_a_ray_address_that_does_not_answer_or_is_not_ray_fails_in_one_line(wsi_dir, tmp_path, listener):
    """Nothing listening, or a server that is not a Ray head: one line naming --ray-address, none of Ray's
    warnings (it retries an address for minutes, warning every 5 s)."""
    port = _free_port()
    server = None
    if listener:  # accepts connections but never speaks Ray's gRPC
        server = socket.socket()
        server.bind(("127.0.0.1", port))
        server.listen(16)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "clusiam_fast.tile", str(wsi_dir / "CMU-1-Small-Region.svs"), "--out"]
            + [str(tmp_path / "out"), "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        if server is not None:
            server.close()
    elapsed = time.perf_counter() - start
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clusiam-fast tile: error: "), done.stderr[-2000:]
    assert f"--ray-address 127.0.0.1:{port}" in lines[0] and "ray start --head" in lines[0]
    assert elapsed < 30, elapsed


def test_ray_actors_extract_the_bags_the_local_engine_extracts(ray_cluster, wsi_dir, tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from clusiam_fast.extraction.pipeline import extract
    from clusiam_fast.formats.feature_bags import load_bags

    slides = make_cohort(wsi_dir, tmp_path / "slides", 2) + [wsi_dir / "OS-1-detail.ome.tif"]
    assert tile_slides(slides, tmp_path / "tiles", TileConfig(), progress=False).ok
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, tmp_path / "bb.pt")
    kwargs = dict(resize=32, batch_size=16, workers=0, progress=False, mean=[0.7, 0.55, 0.7], std=[0.15, 0.2, 0.15])
    local = extract(tmp_path / "bb.pt", tmp_path / "tiles", tmp_path / "local", **kwargs)
    remote = extract(tmp_path / "bb.pt", tmp_path / "tiles", tmp_path / "ray", engine="ray", actors=1, **kwargs)
    assert remote["num_slides"] == local["num_slides"] == 3 and remote["num_patches"] == local["num_patches"]
    a = {b.slide_id: b for b in load_bags(tmp_path / "local")}
    b = {b.slide_id: b for b in load_bags(tmp_path / "ray")}
    assert sorted(a) == sorted(b)
    for sid in a:
        np.testing.assert_allclose(b[sid].features, a[sid].features, rtol=1e-4, atol=1e-4)
        assert np.array_equal(b[sid].coords, a[sid].coords)
    records = [json.loads(p.read_text()) for p in (tmp_path / "ray" / "done").glob("*.json")]
    assert len(records) == 3 and all(r["pid"] != os.getpid() for r in records)  # written by the actor
    again = extract(tmp_path / "bb.pt", tmp_path / "tiles", tmp_path / "ray", engine="ray", **kwargs)
    assert again["skipped_slides"] == 3 and again["num_slides"] == 0
    assert len((tmp_path / "ray" / "index.csv").read_text().splitlines()) == 4  # every bag of the folder
    with pytest.raises(ValueError, match="other settings"):
        extract(tmp_path / "bb.pt", tmp_path / "tiles", tmp_path / "ray", **{**kwargs, "resize": 48})


def test_ray_address_joins_a_cluster_started_with_ray_start(wsi_dir, tmp_path):
    """`ray start --head` in its own temp dir (so no other Ray user on this machine finds it), then --ray-address."""
    port = _free_port()
    temp = Path(f"/tmp/rt{os.getpid()}")  # short: Ray's socket paths must fit in 107 characters
    ray_cli = Path(sys.executable).with_name("ray")
    # no token auth on either side: a token in ~/.ray (made by an earlier local instance) would make the head
    # require it, and a driver naming an address sends it only with RAY_AUTH_MODE=token (see the README)
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false"]
        + ["--block", "--disable-usage-stats", "--temp-dir", str(temp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    try:
        for line in head.stdout:  # wait until it is up
            if "Ray runtime started" in line or head.poll() is not None:
                break
        assert head.poll() is None, "ray start --head failed"
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
        done = subprocess.run(
            [sys.executable, "-m", "clusiam_fast.tile", str(wsi_dir / "CMU-1-Small-Region.svs"), "--out"]
            + [str(tmp_path / "out"), "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert re.search(rf"joined the Ray cluster at 127\.0\.0\.1:{port} in \d+\.\d s", done.stderr), done.stderr
        record = json.loads((tmp_path / "out" / "done" / "CMU-1-Small-Region.json").read_text())
        assert record["result"]["num_patches"] > 0
    finally:
        head.send_signal(signal.SIGTERM)  # --block: stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        subprocess.run(["rm", "-rf", str(temp)], check=False)
