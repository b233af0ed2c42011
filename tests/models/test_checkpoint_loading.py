"""Reading checkpoints never runs code: weights_only loads everywhere, pickle only with --trust-pickle.

Real tiny trainer runs on PCam patches (crop 32, batch 8, K = 10) resumed and extracted
through the CLIs; the pickle-bearing file carries an object whose unpickling would create
a marker file.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import clusiam_fast
from clusiam_fast.extract import main as extract_main
from clusiam_fast.extraction.encoders import load_encoder
from clusiam_fast.extraction.encoders.baselines import read_state_dict
from clusiam_fast.extraction.encoders.checkpoint import resnet_from_state_dict
from clusiam_fast.models import backbone_state_dict, load_checkpoint
from clusiam_fast.train import main as train_main
from clusiam_fast.utils.torch_files import WRAPPER_PREFIXES, PickleRefusedError

pytestmark = pytest.mark.usefixtures("one_thread")

PACKAGE = Path(clusiam_fast.__file__).parent
HELPER = PACKAGE / "utils" / "torch_files.py"


def _train_args(data, out, *extra) -> list[str]:
    return [
        *([str(data)] if data is not None else []),
        "--out",
        str(out),
        *("--crop-size 32 --batch-size 8 --num-clusters 10 --epochs 1 --workers 0 --log-every 1".split()),
        *("--no-progress --no-tensorboard --max-stat-images 64".split()),
        *extra,
    ]


def _extract_args(checkpoint, data, out, *extra) -> list[str]:
    return [str(checkpoint), str(data), "--out", str(out), "--resize", "32", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def one_step_run(patches, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert train_main(_train_args(patches, out, "--max-steps", "1")) == 0
    return out


class WritesAMarker:
    """Unpickling it calls open(marker, "w"): the file appears only if the checkpoint's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _with_pickle(run: Path, dest: Path, marker: Path) -> Path:
    """A copy of ``run`` whose checkpoint also carries a WritesAMarker."""
    shutil.copytree(run, dest)
    ckpt = torch.load(dest / "checkpoint.pt", weights_only=True)
    ckpt["extra"] = WritesAMarker(marker)
    torch.save(ckpt, dest / "checkpoint.pt")
    assert not marker.exists()
    return dest / "checkpoint.pt"


def test_torch_load_is_called_only_in_the_helper_and_with_weights_only_by_default():
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                weights_only = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                value = ast.unparse(weights_only) if weights_only is not None else None
                calls.append((path, value, node.lineno))
    assert {path for path, _, _ in calls} == {HELPER}, calls
    assert sorted(value for _, value, _ in calls) == ["False", "True"]
    # The full pickle load is the helper's last line, reached only past `if not trust_pickle: raise ...`.
    lines = HELPER.read_text().splitlines()
    (full,) = [line for _, value, line in calls if value == "False"]
    assert lines.index("        if not trust_pickle:") + 1 < full == len(lines)


def test_trainer_checkpoints_load_with_plain_weights_only(one_step_run):
    ckpt = torch.load(one_step_run / "checkpoint.pt", weights_only=True)  # no allow-list needed
    assert ckpt["format"] == 2 and isinstance(ckpt["config"], dict)
    name, key, *_ = ckpt["ranks"][0]["numpy"]
    assert name == "MT19937" and isinstance(key, torch.Tensor) and key.shape == (624,)


def test_old_format_checkpoint_still_resumes_exactly_and_extracts(one_step_run, patches, tmp_path, capsys):
    """Format 1 (today's main) stored numpy's RNG state as np.random.get_state() gives it: an ndarray."""
    new, old = tmp_path / "new", tmp_path / "old"
    shutil.copytree(one_step_run, new)
    shutil.copytree(one_step_run, old)
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    for rank in ckpt["ranks"]:
        name, key, *rest = rank["numpy"]
        rank["numpy"] = (name, key.numpy().astype(np.uint32), *rest)
    ckpt["format"] = 1
    torch.save(ckpt, old / "checkpoint.pt")
    with pytest.raises(Exception, match="numpy"):  # needs the allow-listed numpy globals
        torch.load(old / "checkpoint.pt", weights_only=True)

    for run in (new, old):
        assert train_main(["--out", str(run), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    a, b = (torch.load(run / "checkpoint.pt", weights_only=True) for run in (new, old))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

    torch.save(ckpt, old / "checkpoint.pt")  # the old-format file again, for extract
    assert extract_main(_extract_args(old / "checkpoint.pt", patches, tmp_path / "bags")) == 0


def test_pickle_bearing_checkpoint_is_refused_without_trust_pickle(one_step_run, patches, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    checkpoint = _with_pickle(one_step_run, tmp_path / "evil", marker)
    capsys.readouterr()

    assert train_main(["--out", str(checkpoint.parent), "--resume", "--max-steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err and str(checkpoint) in err and "--trust-pickle" in err, err
    assert "io.open" in err and not marker.exists()  # names what it holds

    assert extract_main(_extract_args(checkpoint, patches, tmp_path / "bags")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(checkpoint) in err and "--trust-pickle" in err, err
    assert not (tmp_path / "bags" / "bags").exists() and not marker.exists()

    with pytest.raises(PickleRefusedError, match="--weights .*--trust-pickle"):  # baselines' --weights too
        read_state_dict(checkpoint)
    assert not marker.exists()

    # --trust-pickle is the way past it: the file is loaded (its code runs) and the jobs go on.
    assert extract_main([*_extract_args(checkpoint, patches, tmp_path / "bags"), "--trust-pickle"]) == 0
    assert marker.exists()
    marker.unlink()
    resume = ["--out", str(checkpoint.parent), "--resume", "--max-steps", "2", "--no-progress", "--trust-pickle"]
    assert train_main(resume) == 0 and marker.exists()
    assert torch.load(checkpoint, weights_only=True)["config"]["trust_pickle"] is False  # not kept as a setting


def test_an_encoder_checkpoint_is_read_from_disk_once(one_step_run, monkeypatch):
    checkpoint = one_step_run / "checkpoint.pt"
    reads = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(Path(path)) or load(path, *a, **k))
    encoder = load_encoder(checkpoint)
    assert reads == [checkpoint]
    monkeypatch.undo()
    model, _ = load_checkpoint(checkpoint)  # the same weights as the library's own loader
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(images)[0], model.features(images))


def test_every_loader_strips_the_one_list_of_wrapper_prefixes(one_step_run, tmp_path):
    ckpt = torch.load(one_step_run / "checkpoint.pt", weights_only=True)
    backbone = backbone_state_dict(load_checkpoint(one_step_run / "checkpoint.pt")[0])
    for prefix in WRAPPER_PREFIXES:
        wrapped = {prefix + k: v for k, v in backbone.items()}
        model, _ = resnet_from_state_dict(wrapped)  # exported backbones (--encoder checkpoint)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())
        torch.save(wrapped, tmp_path / "w.pt")
        assert read_state_dict(tmp_path / "w.pt").keys() == backbone.keys()  # --weights of timm / torchvision
    ckpt["model"] = {"module." + k: v for k, v in ckpt["model"].items()}  # a DDP-wrapped trainer model
    torch.save(ckpt, tmp_path / "ddp.pt")
    a, b = load_checkpoint(tmp_path / "ddp.pt")[0], load_checkpoint(one_step_run / "checkpoint.pt")[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
