"""``--config FILE.yaml`` and ``--print-config`` (clusiam_fast/cli/config_file.py) for train, tile, extract and
evaluate: round trips, command-line flags over the file, one-line errors, and re-runs from OUT/config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clusiam_fast.__main__ import main

CONFIG_VERBS = ["train", "tile", "extract", "evaluate"]


def _args(verb: str, tmp: Path) -> list[str]:
    """A command line of each verb with flags of every kind: switches, choices, lists, paths, numbers."""
    (tmp / "data").mkdir(exist_ok=True)
    return {
        "train": [str(tmp / "data"), "--out", str(tmp / "run"), "--epochs", "3", "--no-gumbel", "--lr", "0.1"]
        + ["--no-fix-pred-lr", "--method", "clubyol", "--loader", "torch", "--max-steps", "7"],
        "tile": [str(tmp / "a.svs"), str(tmp / "b.svs"), "--out", str(tmp / "tiles"), "--mpp", "1.0"]
        + ["--save-tiles", "jpg", "--shard", "0/2", "--redo", "--lock-timeout", "60"],
        "extract": [str(tmp / "ck.pt"), str(tmp / "data"), "--out", str(tmp / "bags"), "--fp16"]
        + ["--mean", "0.5", "0.6", "0.7", "--encoder-kwargs", '{"init_values": 1e-05}', "--resize", "64"],
        "evaluate": [str(tmp / "bags"), "--out", str(tmp / "report"), "--models", "maxpool", "dsmil"]
        + ["--lrs", "0.001", "--seeds", "0", "1", "--no-maps", "--folds", "3"],
    }[verb]


def _print_config(capsys, *argv: str) -> str:
    assert main([*argv, "--print-config"]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("verb", CONFIG_VERBS)
def test_print_config_fed_back_gives_the_same_settings(verb, tmp_path, capsys):
    printed = _print_config(capsys, verb, *_args(verb, tmp_path))
    values = yaml.safe_load(printed)
    expected = {
        "train": {"epochs": 3, "no-gumbel": True, "lr": 0.1, "fix-pred-lr": False, "out-dim": 256, "max-steps": 7},
        "tile": {"mpp": 1.0, "save-tiles": "jpg", "shard": "0/2", "redo": True, "stride": None},
        "extract": {"fp16": True, "mean": [0.5, 0.6, 0.7], "encoder-kwargs": {"init_values": 1e-05}, "crop": None},
        "evaluate": {"models": ["maxpool", "dsmil"], "lrs": [0.001], "seeds": [0, 1], "no-maps": True, "folds": 3},
    }[verb]
    assert {key: values[key] for key in expected} == expected
    assert not any(key in values for key in ("config", "print-config", "help"))
    config = tmp_path / "printed.yaml"
    config.write_text(printed)
    assert _print_config(capsys, verb, "--config", str(config)) == printed  # nothing else on the command line
    assert not (tmp_path / "run").exists() and not (tmp_path / "tiles").exists()  # --print-config writes nothing


def test_a_baseline_extract_config_leaves_checkpoint_empty(tmp_path, capsys):
    """--encoder timm:NAME takes DATA only: the config says checkpoint: null, and reads back the same."""
    argv = ["--encoder", "timm:vit_tiny_patch16_224", "--random-init", str(tmp_path), "--out", str(tmp_path / "o")]
    printed = _print_config(capsys, "extract", *argv)
    assert yaml.safe_load(printed)["checkpoint"] is None and yaml.safe_load(printed)["data"] == str(tmp_path)
    (tmp_path / "baseline.yaml").write_text(printed)
    assert _print_config(capsys, "extract", "--config", str(tmp_path / "baseline.yaml")) == printed


def test_flags_on_the_command_line_override_the_file_and_underscores_work(tmp_path, capsys):
    config = tmp_path / "tile.yaml"
    config.write_text(f"slides: [{tmp_path / 'a.svs'}]\nout: {tmp_path / 'tiles'}\npatch_size: 256\nmin-tissue: 0.2\n")
    values = yaml.safe_load(_print_config(capsys, "tile", "--config", str(config), "--patch-size", "512"))
    assert (values["patch-size"], values["min-tissue"], values["slides"]) == (512, 0.2, [str(tmp_path / "a.svs")])
    values = yaml.safe_load(_print_config(capsys, "tile", str(tmp_path / "b.svs"), "--config", str(config)))
    assert values["slides"] == [str(tmp_path / "b.svs")]  # positionals given on the command line win too


@pytest.mark.parametrize(
    "verb,text,named",
    [
        ("tile", "epochs: 3\n", "unknown key 'epochs': not a flag of clusiam-fast tile"),
        ("train", "epoch: 3\n", "unknown key 'epoch': not a flag of clusiam-fast train (did you mean epochs?)"),
        ("train", "epochs: three\n", "key 'epochs': must be a whole number, got 'three'"),
        ("train", "amp: 'yes'\n", "key 'amp' must be true or false, got 'yes'"),
        ("train", "lr: .nan\n", "key 'lr': must be a finite number, got 'nan'"),
        ("train", "method: dino\n", "key 'method' must be one of clusiam, simsiam, clubyol, byol, got 'dino'"),
        ("evaluate", "seeds: [0, x]\n", "key 'seeds': must be a whole number, got 'x'"),
        ("extract", "mean: [0.5, 0.5]\n", "key 'mean' takes 3 values, got 2: [0.5, 0.5]"),
        ("tile", "mpp: [1, 2]\n", "key 'mpp' takes one value, got a list [1, 2]"),
        ("tile", "mpp: -1\n", "key 'mpp': must be positive, got -1"),
        ("tile", "mpp: x\n", "key 'mpp': invalid float value: 'x'"),
        ("tile", "[mpp, 1]\n", "must hold a mapping of flag names to values, got list"),
        ("tile", "mpp: [1\n", "is not valid YAML"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_file_and_the_key(verb, text, named, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main([verb, *_args(verb, tmp_path), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clusiam-fast {verb}: error: --config {config}") and err.count("\n") == 1, err
    assert named in err, err


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["evaluate", *_args("evaluate", tmp_path), "--config", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == f"clusiam-fast evaluate: error: --config {tmp_path / 'none.yaml'} does not exist (or is not a file)\n"


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_rerun_from_the_run_folder_config_gives_bit_identical_weights(patches, tmp_path, capsys):
    import torch

    tiny = ["--crop-size", "32", "--batch-size", "8", "--num-clusters", "10", "--max-steps", "2", "--workers", "0"]
    tiny += ["--max-stat-images", "16", "--no-progress", "--no-tensorboard", "--threads", "1"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", str(patches), "--out", str(first), *tiny]) == 0
    settings = yaml.safe_load((first / "config.yaml").read_text())
    assert settings["data"] == str(patches) and settings["max-steps"] == 2 and settings["alpha"] == 0.5
    assert (first / "train_config.json").is_file()  # still written, for the code that reads it
    assert main(["train", "--config", str(first / "config.yaml"), "--out", str(second)]) == 0
    assert yaml.safe_load((second / "config.yaml").read_text()) == {**settings, "out": str(second)}
    a, b = (torch.load(run / "checkpoint.pt", weights_only=False)["model"] for run in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["train", "--config", str(first / "config.yaml")]) == 2  # OUT holds that run: it is not overwritten
    assert "--resume" in capsys.readouterr().err and yaml.safe_load((first / "config.yaml").read_text()) == settings


def test_tile_writes_its_config_and_a_rerun_from_it_skips_the_done_slide(wsi_dir, tmp_path, capsys):
    out = tmp_path / "tiles"
    slide = wsi_dir / "CMU-1-Small-Region.svs"
    assert main(["tile", str(slide), "--out", str(out), "--workers", "1", "--mpp", "2.0"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["mpp"] == 2.0
    capsys.readouterr()
    assert main(["tile", "--config", str(out / "config.yaml")]) == 0
    assert "skipped 1" in capsys.readouterr().out.lower()
