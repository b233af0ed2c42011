"""The trainer when things go wrong: diverging weights, changed flags on --resume, bad --out, damaged files.

Real tiny runs on PCam patches (resnet18, crop 32, batch 8, 48 patches = 6 steps per
epoch) through the CLI's ``main`` (exit status and the one line on stderr are part of
what is tested).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_cases import read_rows, small_config

from clusiam_fast.models import read_checkpoint
from clusiam_fast.train import build_parser
from clusiam_fast.train import main as cli_main
from clusiam_fast.training import TrainConfig, train
from clusiam_fast.utils.atomic import atomic_write_text, remove_stale_temps


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(old)


def _args(data, out, *extra) -> list[str]:
    return [
        *([str(data)] if data is not None else []),
        "--out",
        str(out),
        "--crop-size",
        "32",
        "--batch-size",
        "8",
        "--num-clusters",
        "10",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--log-every",
        "1",
        "--no-progress",
        "--no-tensorboard",
        "--max-stat-images",
        "64",
        *extra,
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(run: Path) -> dict[str, str]:
    return {name: _sha256(run / name) for name in ("checkpoint.pt", "train_config.json")}


# ---------------------------------------------------------------------------- non-finite weights


@pytest.mark.usefixtures("one_thread")
def test_weights_that_go_non_finite_never_overwrite_the_checkpoint(patches, tmp_path, capsys):
    """One step at a huge lr makes the weights inf/NaN while that step's loss (computed before the
    update) is finite: the save at --max-steps must be refused, leaving checkpoint.pt and
    train_config.json byte-identical, with exit status 3."""
    run = tmp_path / "run"
    assert cli_main(_args(patches, run, "--max-steps", "6")) == 0
    before = _digests(run)
    capsys.readouterr()
    # lr 1e38 and weight decay 1e3: the first step's update overflows float32 (inf weights).
    resume = ["--out", str(run), "--resume", "--lr", "1e38", "--weight-decay", "1000"]
    code = cli_main([*resume, "--epochs", "2", "--max-steps", "7"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "non-finite weights at epoch 2, step 7" in err and "refused to save" in err
    assert f"{run / 'checkpoint.pt'} (epoch 1), step 6, is untouched" in err
    assert _digests(run) == before
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_non_finite_float_flags_are_refused_when_parsing(tmp_path, capsys):
    for flag, value in (("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "nan"), ("--momentum", "-inf")):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["--out", str(tmp_path), f"{flag}={value}"])
        assert exit_info.value.code == 2
        assert f"argument {flag}: must be a finite number, got '{value}'" in capsys.readouterr().err
    for field, flag in (("lr", "--lr"), ("weight_decay", "--weight-decay"), ("momentum", "--momentum")):
        with pytest.raises(ValueError, match=f"{flag} must be a finite number"):
            TrainConfig(**{field: float("inf")}).resolved()
    assert not (tmp_path / "checkpoint.pt").exists()


# ---------------------------------------------------------------------------- --resume with changed flags


@pytest.mark.usefixtures("one_thread")
def test_resume_with_another_batch_size_is_refused_and_touches_nothing(patches, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(_args(patches, run, "--epochs", "2", "--max-steps", "2")) == 0
    before = _digests(run)
    capsys.readouterr()
    for other in ("16", "4"):
        code = cli_main(["--out", str(run), "--resume", "--batch-size", other, "--max-steps", "4"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"trained with --batch-size 8, this run asks for --batch-size {other}" in err
        assert "keep --batch-size 8" in err and "another --out" in err
        assert err.count("\n") == 1  # one line
        assert _digests(run) == before
    # An lr that does not fit the weights' float32 is one line too (it crashed inside SGD).
    assert cli_main(["--out", str(run), "--resume", "--lr", "1e42"]) == 2
    assert "does not fit in float32" in capsys.readouterr().err and _digests(run) == before
    # The same batch size continues; optimiser flags given now override the saved ones.
    assert (
        cli_main(["--out", str(run), "--resume", "--max-steps", "3", "--weight-decay", "0.001", "--momentum", "0.8"])
        == 0
    )
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3
    assert {(g["weight_decay"], g["momentum"]) for g in ckpt["optimizer"]["param_groups"]} == {(0.001, 0.8)}


@pytest.mark.usefixtures("one_thread")
def test_resume_with_another_method_names_both(patches, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(_args(patches, run, "--max-steps", "1")) == 0
    before = _digests(run)
    capsys.readouterr()
    assert cli_main(["--out", str(run), "--resume", "--method", "simsiam"]) == 2
    err = capsys.readouterr().err
    assert "was trained with --method clusiam, this run asks for --method simsiam" in err
    assert "leave --method out" in err
    assert _digests(run) == before
    with pytest.raises(ValueError, match="--method clusiam, this run asks for --method byol"):
        train(small_config(patches, run, method="byol", resume=True))


@pytest.mark.usefixtures("one_thread")
def test_resume_of_another_methods_run_without_method_warns_naming_both(patches, tmp_path, capsys):
    """--resume without --method continues the checkpoint's method (as documented), in one warning line
    that names it and the default; --method given (the same) is the explicit choice and continues quietly."""
    run = tmp_path / "run"
    assert cli_main(_args(patches, run, "--method", "byol", "--max-steps", "1")) == 0
    capsys.readouterr()
    assert cli_main(["--out", str(run), "--resume", "--max-steps", "2", "--no-progress"]) == 0
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert f"{run / 'checkpoint.pt'} is a byol run, not clusiam (the default --method)" in line
    assert "pass --method byol" in line
    assert read_checkpoint(run / "checkpoint.pt")["config"]["method"] == "byol"
    assert cli_main(["--out", str(run), "--resume", "--method", "byol", "--max-steps", "3", "--no-progress"]) == 0
    assert "warning:" not in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
def test_corrupt_checkpoint_on_resume_is_one_line_with_what_to_do(patches, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(_args(patches, run, "--max-steps", "1")) == 0
    good = (run / "checkpoint.pt").read_bytes()
    config = _sha256(run / "train_config.json")
    for damaged in (good[: len(good) // 2], b"not a checkpoint at all"):
        (run / "checkpoint.pt").write_bytes(damaged)
        capsys.readouterr()
        assert cli_main(["--out", str(run), "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "could not be read" in err and "--overwrite" in err and str(run / "checkpoint.pt") in err
        assert (run / "checkpoint.pt").read_bytes() == damaged and _sha256(run / "train_config.json") == config


# ---------------------------------------------------------------------------- --out


def test_out_that_is_a_file_exits_4_with_one_line(patches, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert cli_main(_args(patches, target)) == 4
    err = capsys.readouterr().err
    assert (
        err == f"clusiam-fast train: error: --out {target} is a file, not a folder: choose a folder for the outputs\n"
    )
    assert cli_main(_args(patches, target / "run")) == 4
    assert "which is a file" in capsys.readouterr().err
    assert target.read_text() == "mine"
    assert "4 unusable --out" in build_parser().format_help()  # documented


def test_out_inside_data_is_refused_before_writing(patches, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for src in sorted(patches.iterdir())[:16]:
        (data / src.name).symlink_to(src.resolve())
    for out in (data / "run", data):
        assert cli_main(_args(data, out)) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is inside DATA {data}" in err and "read as training data" in err
    assert not (data / "run").exists() and sorted(p.name for p in data.iterdir()) == sorted(
        p.name for p in sorted(patches.iterdir())[:16]
    )


# ---------------------------------------------------------------------------- outputs


@pytest.mark.usefixtures("one_thread")
def test_epochs_zero_lists_only_what_it_wrote(patches, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(_args(patches, run, "--epochs", "0")) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "nothing to train (--epochs 0, 0 done): no checkpoint or log written" in text
    for name in ("checkpoint.pt", "log.csv", "training.png", "train_config.json"):
        assert name not in text, name
        assert not (run / name).exists(), name


def test_atomic_writes_honour_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    os.umask(0o027)
    atomic_write_text(tmp_path / "b.txt", "x")
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o640
    atomic_write_text(tmp_path / "a.txt", "y")  # replacing takes the new file's mode
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


@pytest.mark.usefixtures("one_thread")
def test_run_outputs_honour_the_umask(patches, tmp_path, umask_022):
    run = tmp_path / "run"
    train(small_config(patches, run, keep_every=1))
    for name in ("checkpoint.pt", "checkpoints/epoch_0001.pt", "log.csv", "steps.csv", "training.png"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name
    for name in ("norm_stats.json", "train_config.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.usefixtures("one_thread")
def test_temp_files_of_killed_writes_are_removed_at_the_next_start(patches, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    dead, old = _dead_pid(), time.time() - 120
    names = {
        "stale": run / f".checkpoint.pt.{dead}-0123abcd.pt.tmp",
        "stale_kept_copy": run / "checkpoints" / f".epoch_0001.pt.{dead}-89abcdef.pt.tmp",
        "stale_legacy": run / ".log.csv.k2j_x9a1.csv.tmp",  # tempfile.mkstemp name of older versions
        "fresh_dead": run / f".log.csv.{dead}-0123abcd.csv.tmp",  # younger than a minute: may be in flight
        "live_pid": run / f".steps.csv.{os.getpid()}-0123abcd.csv.tmp",
        "not_ours": run / ".notes.tmp",
    }
    for path in names.values():
        path.write_bytes(b"partial")
    for key in ("stale", "stale_kept_copy", "live_pid", "not_ours"):
        os.utime(names[key], (old, old))
    legacy_old = time.time() - 2 * 3600
    os.utime(names["stale_legacy"], (legacy_old, legacy_old))
    train(small_config(patches, run, max_steps=1))
    gone = {key for key, path in names.items() if not path.exists()}
    assert gone == {"stale", "stale_kept_copy", "stale_legacy"}
    leftover = set(run.rglob(".*.tmp"))  # this run's own writes left none behind
    assert leftover == {names[key] for key in ("fresh_dead", "live_pid", "not_ours")}
    assert remove_stale_temps(tmp_path / "absent") == []


# ---------------------------------------------------------------------------- threads and --help


def test_cpu_threads_follow_threads_flag_not_workers(patches, tmp_path):
    """Intra-op threads come from --threads (default: torch's), whatever --workers is; the weights match."""
    outside = torch.get_num_threads()
    seen: dict[str, set[int]] = {}
    for name, extra in (("w0", dict(workers=0)), ("w2", dict(workers=2)), ("t1", dict(workers=2, threads=1))):
        got: set[int] = seen.setdefault(name, set())
        train(
            small_config(patches, tmp_path / name, max_steps=2, **extra),
            on_step=lambda _s, got=got: got.add(torch.get_num_threads()),
        )
        assert torch.get_num_threads() == outside  # restored after the run
    assert seen == {"w0": {outside}, "w2": {outside}, "t1": {1}}
    a = torch.load(tmp_path / "w0" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "w2" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert build_parser().parse_args(["--out", "x", "--threads", "3"]).threads == 3


def test_help_does_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "import clusiam_fast.train as t\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    t.main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------- --resume asking for more / fewer steps


def _model_state(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


@pytest.mark.usefixtures("one_thread")
def test_resume_with_more_epochs_extends_the_cosine_and_a_second_resume_keeps_it(patches, tmp_path, capsys):
    """--epochs 1 then --resume --epochs 3: the cosine spans the 18 steps of the longer run from step 6 on
    (lr > 0, the weights move), said in one line; stopping and resuming that extended run is exact."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for run in (straight, stopped):
        assert cli_main(_args(patches, run)) == 0
    epoch1 = _model_state(straight / "checkpoint.pt")
    capsys.readouterr()
    assert cli_main(["--out", str(straight), "--resume", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if "more than the 6 the checkpoint's cosine spans" in line]
    assert "this run asks for 18 steps (--epochs 3 x 6 steps)" in line and "the cosine now spans 18 steps" in line
    rows = read_rows(straight / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and all(float(r["lr"]) > 0 for r in rows[1:])
    lrs = [float(r["lr"]) for r in read_rows(straight / "steps.csv")]
    assert len(lrs) == 18 and all(lr > 0 for lr in lrs[6:]) and lrs[6] > lrs[5]  # a new cosine from step 6 on
    after = _model_state(straight / "checkpoint.pt")
    assert not torch.equal(after["backbone.conv1.weight"], epoch1["backbone.conv1.weight"])
    assert not torch.equal(after["cluster_assigner.weight"], epoch1["cluster_assigner.weight"])
    ckpt = read_checkpoint(straight / "checkpoint.pt")
    assert ckpt["schedule"]["steps"] == 18 and "extended from 6 at step 6" in ckpt["schedule"]["source"]

    # The same extension, interrupted at step 9 (Ctrl-C) and resumed with the same --epochs 3: bitwise the
    # straight run, the saved 18-step cosine kept.
    def press_ctrl_c(step: int) -> None:
        if step == 9:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(small_config(patches, stopped, epochs=3, resume=True), on_step=press_ctrl_c)
    assert first.status == "interrupted" and first.step == 9
    assert read_checkpoint(stopped / "checkpoint.pt")["schedule"]["steps"] == 18
    capsys.readouterr()
    assert cli_main(["--out", str(stopped), "--resume", "--epochs", "3"]) == 0
    assert "kept from the checkpoint" in capsys.readouterr().out
    resumed = _model_state(stopped / "checkpoint.pt")
    assert all(torch.equal(resumed[k], after[k]) for k in after)
    assert [float(r["lr"]) for r in read_rows(stopped / "steps.csv")] == lrs


@pytest.mark.usefixtures("one_thread")
def test_resume_asking_for_fewer_steps_than_done_is_refused_in_one_line(patches, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(_args(patches, run, "--epochs", "2", "--max-steps", "8")) == 0  # epoch 1 and 2 steps of epoch 2
    before = _digests(run)
    capsys.readouterr()
    for flags, asked in ((["--max-steps", "5"], "--max-steps 5"), (["--epochs", "1"], "--epochs 1")):
        assert cli_main(["--out", str(run), "--resume", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"has done 8 steps (1 epoch(s) and 2 steps of epoch 2), more than this run asks for ({asked})" in err
        assert "--epochs / --max-steps" in err
        assert _digests(run) == before


_NO_TORCH_RUNNER = (
    "import importlib, sys\n"
    "status = importlib.import_module(sys.argv[1]).main(sys.argv[2:])\n"
    "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', status)\n"
)


def _run_without_torch(module: str, *argv: str) -> tuple[str, str]:
    """Run ``module``'s main(argv) in a fresh interpreter: (stdout: torch imported? + status, stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_RUNNER, module, *argv], capture_output=True, text=True, timeout=120
    )
    return done.stdout.strip(), done.stderr


@pytest.mark.parametrize(
    "argv,status,message",
    [
        (["{data}", "--out", "{data}/run"], 2, "is inside DATA"),
        (["{missing}", "--out", "{out}"], 2, "DATA {missing} does not exist"),
        (["{data}", "--out", "{out}", "--batch-size", "1"], 2, "--batch-size must be >= 2"),
        (["{data}", "--out", "{out}", "--method", "simsiam", "--alpha", "0.5"], 2, "--alpha weighs the cluster loss"),
        (["{data}", "--out", "{file}/run"], 4, "lies under {file}, which is a file"),
    ],
    ids=["out-inside-data", "missing-data", "batch-1", "alpha-without-clusters", "out-under-a-file"],
)
def test_train_argument_errors_are_found_before_torch_is_imported(patches, tmp_path, argv, status, message):
    (tmp_path / "file.txt").write_text("not a folder")
    names = dict(data=patches, missing=tmp_path / "nosuch", out=tmp_path / "o", file=tmp_path / "file.txt")
    out, err = _run_without_torch("clusiam_fast.train", *(a.format(**names) for a in argv))
    assert out == f"NO-TORCH {status}", err[-2000:]
    assert message.format(**names) in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "module,argv,status,message",
    [
        ("clusiam_fast.extract", ["{ckpt}", "{data}", "--out", "{out}"], 2, "checkpoint {ckpt} does not exist"),
        ("clusiam_fast.extract", ["{here}", "{data}", "--out", "{file}"], 4, "--out {file} is a file"),
        ("clusiam_fast.evaluate", ["{ckpt}", "--out", "{out}"], 2, "FEATURES {ckpt} does not exist"),
        ("clusiam_fast.evaluate", ["{here}", "--out", "{out}", "--folds", "1"], 2, "--folds must be at least 2"),
    ],
    ids=["extract-missing-checkpoint", "extract-out-is-a-file", "evaluate-missing-features", "evaluate-folds-1"],
)
def test_extract_and_evaluate_path_errors_are_found_before_torch_is_imported(
    patches, tmp_path, module, argv, status, message
):
    (tmp_path / "file.txt").write_text("not a folder")
    names = dict(ckpt=tmp_path / "nosuch.pt", data=patches, out=tmp_path / "o", file=tmp_path / "file.txt")
    names["here"] = tmp_path
    out, err = _run_without_torch(module, *(a.format(**names) for a in argv))
    assert out == f"NO-TORCH {status}", err[-2000:]
    assert message.format(**names) in err and "Traceback" not in err, err


def test_the_torch_free_copies_of_the_registries_equal_the_registries():
    from clusiam_fast import evaluate
    from clusiam_fast.evaluation.mil.registry import DEFAULT_MODELS, MIL_MODELS
    from clusiam_fast.models import ARCHS, CLUSTER_METHODS, METHODS
    from clusiam_fast.ops.cluster_loss import IMPLS
    from clusiam_fast.training import config

    assert config.METHOD_NAMES == METHODS
    assert config.CLUSTER_METHOD_NAMES == CLUSTER_METHODS
    assert config.ARCH_NAMES == ARCHS
    assert config.CLUSTER_LOSS_IMPLS == IMPLS
    assert evaluate.MIL_MODELS == tuple(MIL_MODELS) == DEFAULT_MODELS
    # every registry holds exactly the keys of the one torch-free table
    from clusiam_fast import choices
    from clusiam_fast.models.factory import METHOD_SPECS

    assert tuple(METHOD_SPECS) == choices.METHOD_NAMES
    assert tuple(MIL_MODELS) == choices.MIL_MODEL_NAMES
    assert (ARCHS, IMPLS) == (choices.ARCH_NAMES, choices.CLUSTER_LOSS_IMPLS)
    parser = build_parser()
    choices = {a.dest: a.choices for a in parser._actions if a.choices}
    assert (choices["method"], choices["arch"], choices["cluster_loss_impl"]) == (METHODS, ARCHS, IMPLS)


def test_the_per_method_defaults_are_the_table_s_rows_in_the_registry_the_config_and_help():
    from clusiam_fast.choices import EMA_METHOD_NAMES, HEAD_KEYS, METHOD_TABLE
    from clusiam_fast.models import build_model
    from clusiam_fast.models.factory import METHOD_SPECS

    helps = {a.dest: " ".join(a.help.split()) for a in build_parser()._actions}
    for name, row in METHOD_TABLE.items():
        spec, cfg = METHOD_SPECS[name], TrainConfig(method=name).resolved()
        assert dict(spec.heads) == {k: row[k] for k in HEAD_KEYS}, name
        assert (spec.alpha, spec.fix_pred_lr, spec.clusters, spec.ema_momentum) == (
            row["alpha"],
            row["fix_pred_lr"],
            row["clusters"],
            row["ema_momentum"],
        ), name
        assert {k: getattr(cfg, k) for k in row if k != "clusters"} == {k: v for k, v in row.items() if k != "clusters"}
        model = build_model(name, num_clusters=3, arch="resnet18")
        assert model.has_clusters == row["clusters"] and model.projector[-1].num_features == row["out_dim"], name
        assert getattr(model, "momentum", None) == row["ema_momentum"], name
        assert (name in EMA_METHOD_NAMES) == (row["ema_momentum"] is not None), name
        # --help quotes the table's values, not a copy of them
        assert f"{row['out_dim']} for" in helps["out_dim"] and f"{row['pred_hidden']} for" in helps["pred_hidden"]
        assert ("on" if row["fix_pred_lr"] else "off") + " for" in helps["fix_pred_lr"]
        if row["clusters"]:
            assert f"{row['alpha']} for {name}" in helps["alpha"], helps["alpha"]
