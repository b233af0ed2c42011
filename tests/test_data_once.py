"""DATA is resolved once per command: real runs of the train, extract and shards CLIs count the look-ups.

The counting wrapper around ``resolve_data`` (and around the two functions that look at a path,
so that nothing bypasses it) is instrumentation; the runs are real: two training steps, real
extraction of bags, real shards, on real patches and a real slide.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from clusiam_fast.data import resolve
from clusiam_fast.data.resolve import PATCH_KINDS, DataArg, as_data_arg, resolve_data

# every module that takes DATA, imported first so that its reference to resolve_data is counted too
_TAKERS = (
    "clusiam_fast.train",
    "clusiam_fast.extract",
    "clusiam_fast.shards",
    "clusiam_fast.training.loader",
    "clusiam_fast.training.run_setup",
    "clusiam_fast.extraction.pipeline",
    "clusiam_fast.extraction.sources",
    "clusiam_fast.data.slide_dataset",
    "clusiam_fast.data.shards",
)
_TRAIN_FLAGS = ["--max-steps", "2", "--batch-size", "8", "--crop-size", "32", "--num-clusters", "8"]
_TRAIN_FLAGS += ["--workers", "0", "--no-progress", "--no-tensorboard", "--max-stat-images", "32"]


class Lookups:
    """What was resolved: ``calls`` (resolve_data's DATA arguments) and ``looks`` (paths looked at)."""

    def __init__(self) -> None:
        self.calls: list = []
        self.looks: list = []

    def clear(self) -> None:
        self.calls.clear()
        self.looks.clear()


@pytest.fixture
def lookups(monkeypatch) -> Lookups:
    for name in _TAKERS:
        importlib.import_module(name)
    seen = Lookups()
    original, from_path, from_paths = resolve.resolve_data, resolve._from_path, resolve._from_paths

    def counting_resolve(data, **kwargs):
        seen.calls.append(data)
        return original(data, **kwargs)

    def counting_look(look):
        def wrapper(data, *args, **kwargs):
            seen.looks.append(data)
            return look(data, *args, **kwargs)

        return wrapper

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("clusiam_fast") and vars(module).get("resolve_data") is original:
            monkeypatch.setattr(module, "resolve_data", counting_resolve)
    monkeypatch.setattr(resolve, "_from_path", counting_look(from_path))
    monkeypatch.setattr(resolve, "_from_paths", counting_look(from_paths))
    return seen


@pytest.fixture(scope="module")
def tiled(wsi_dir, tmp_path_factory) -> Path:
    """A tiler output folder of the CMU slide: manifest.csv, coordinate files and QA pictures."""
    tiling = pytest.importorskip("clusiam_fast.tiling.pipeline")
    out = tmp_path_factory.mktemp("tiled")
    report = tiling.tile_slides([wsi_dir / "CMU-1-Small-Region.svs"], out, tiling.TileConfig(), progress=False)
    if not (out / "manifest.csv").exists():
        pytest.skip(f"the tiler could not tile the CMU slide: {report}")
    return out


def _train_then_extract(data: Path, tmp_path: Path, lookups: Lookups, *extract_flags: str) -> list[str]:
    """Train two steps on DATA, then extract it with that checkpoint; the DATA each command resolved."""
    from clusiam_fast.extract import main as extract_main
    from clusiam_fast.train import main as train_main

    run = tmp_path / "run"
    assert train_main([str(data), "--out", str(run), *_TRAIN_FLAGS]) == 0
    assert (len(lookups.calls), len(lookups.looks)) == (1, 1), (lookups.calls, lookups.looks)
    resolved = [str(lookups.calls[0])]
    lookups.clear()
    argv = [str(run / "checkpoint.pt"), str(data), "--out", str(tmp_path / "bags"), "--workers", "0", "--quiet"]
    assert extract_main([*argv, "--batch-size", "16", "--resize", "32", *extract_flags]) == 0
    assert (len(lookups.calls), len(lookups.looks)) == (1, 1), (lookups.calls, lookups.looks)
    assert list((tmp_path / "bags" / "bags").glob("*.h5"))
    return [*resolved, str(lookups.calls[0])]


def test_train_and_extract_resolve_a_patch_folder_once(patches, tmp_path, lookups, one_thread):
    assert _train_then_extract(patches, tmp_path, lookups) == [str(patches)] * 2


def test_train_and_extract_resolve_a_tiler_folder_once(tiled, tmp_path, lookups, one_thread):
    """The slide dataset behind both takes the resolved DATA as it is (it resolved it again before)."""
    assert _train_then_extract(tiled, tmp_path, lookups, "--slide-dir", str(tmp_path)) == [str(tiled)] * 2
    summary = json.loads((tmp_path / "bags" / "extract.json").read_text())
    assert summary["source"] == "manifest" and summary["data"] == str((tiled / "manifest.csv").resolve())


def test_shards_cli_resolves_a_tiler_folder_once(tiled, tmp_path, lookups):
    from clusiam_fast.shards import main

    assert main([str(tiled), "--out", str(tmp_path / "shards"), "--workers", "0"]) == 0
    assert lookups.calls == [str(tiled)] and len(lookups.looks) == 1
    assert json.loads((tmp_path / "shards" / "shards.json").read_text())["source"] == str(tiled / "manifest.csv")


def test_the_dali_loader_takes_resolved_slide_data_as_it_is(tiled, lookups):
    pytest.importorskip("nvidia.dali")
    from clusiam_fast.data.dali import build_dali_loader

    data = resolve_data(tiled)
    lookups.clear()
    stats = dict(mean=(0.7, 0.6, 0.7), std=(0.2, 0.2, 0.2))
    loader = build_dali_loader(data, batch_size=4, crop_size=16, py_workers=1, **stats)
    view1, _ = next(iter(loader))
    assert view1.shape == (4, 3, 16, 16) and not lookups.looks


def test_a_resolved_data_of_another_kind_is_refused_in_one_line_naming_data(tmp_path):
    shards = DataArg("shards", tmp_path, (tmp_path / "a.tar",))
    with pytest.raises(ValueError, match=r"^DATA .* is webdataset \.tar shards; this command reads") as caught:
        as_data_arg(shards, accept=PATCH_KINDS)
    assert "\n" not in str(caught.value)
    folder = DataArg("folder", tmp_path, (tmp_path / "a.png",))
    assert as_data_arg(folder, accept=PATCH_KINDS) is folder
    assert as_data_arg(folder, slide_dir=tmp_path).slide_dir == tmp_path
    assert hash(folder) == hash(DataArg("folder", tmp_path))  # workers key caches by it: its files are not hashed


def test_train_refuses_shards_data_in_one_line_before_torch(tmp_path):
    import subprocess

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-000000.tar").write_bytes(b"")
    code = (
        "import sys\n"
        "from clusiam_fast.train import main\n"
        "status = main(sys.argv[1:])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', status)\n"
    )
    argv = [str(tmp_path / "shards"), "--out", str(tmp_path / "run")]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "NO-TORCH 2", done.stderr[-2000:]
    assert done.stderr.strip().count("\n") == 0 and "DATA" in done.stderr and "webdataset .tar shards" in done.stderr


def test_extract_help_is_torch_free():
    import subprocess

    code = (
        "import sys, contextlib, io\n"
        "from clusiam_fast.extract import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'numpy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]
