"""``clusiam-fast``: one entry point, every verb's --help torch-free, one error convention and exit statuses."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusiam_fast import __version__
from clusiam_fast.__main__ import VERBS, main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
HAS_INFO = importlib.util.find_spec("clusiam_fast.info") is not None  # engineer E's verb; absent before it lands
VERBS_HERE = [verb for verb in VERBS if verb != "info" or HAS_INFO]


def _python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env or ENV)


def test_the_console_script_is_the_dispatcher():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, name = scripts["clusiam-fast"].split(":")
    assert (module, name) == ("clusiam_fast.__main__", "main")


def test_version_top_help_and_a_wrong_verb(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"clusiam-fast {__version__}\n"
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(f"  {verb} " in text for verb in VERBS) and "exit status" in text
    assert main([]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("clusiam-fast: error: no verb given")
    assert main(["trian"]) == 2
    assert capsys.readouterr().err == (
        f"clusiam-fast: error: unknown verb 'trian'; did you mean train? choose one of {', '.join(VERBS)}\n"
    )


def test_every_verb_help_is_short_and_torch_free():
    """``python -m clusiam_fast VERB --help`` for every verb in one process: examples and exit statuses in each,
    and neither torch nor numpy imported (the time --help takes is measured by benchmarks, not here)."""
    code = (
        "import sys\nfrom clusiam_fast.__main__ import main\n"
        f"for verb in {VERBS_HERE!r}:\n"
        "    print('@@' + verb)\n"
        "    try:\n        main([verb, '--help'])\n    except SystemExit:\n        pass\n"
        "    print('## imported:', sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
    )
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    chunks = done.stdout.split("@@")[1:]
    assert [chunk.split("\n", 1)[0] for chunk in chunks] == VERBS_HERE
    for verb, chunk in zip(VERBS_HERE, chunks):
        text, imported = chunk.split("\n", 1)[1].rsplit("## imported:", 1)
        assert imported.strip() == "[]", f"{verb} --help imports {imported.strip()}"
        if verb not in ("bench", "info"):
            assert text.startswith(f"usage: clusiam-fast {verb}"), text[:200]
            assert "examples:\n  clusiam-fast " in text and "4 unusable --out" in text, text[-600:]
            assert len(text.splitlines()) < 200, f"{verb} --help has {len(text.splitlines())} lines"


def test_python_dash_m_runs_the_tool_and_the_verb_modules_still_run():
    top = _python("-m", "clusiam_fast", "shards", "--help")
    own = _python("-m", "clusiam_fast.shards", "--help")
    assert top.returncode == own.returncode == 0 and top.stdout == own.stdout, top.stderr + own.stderr


def _missing_input(verb: str, tmp: Path) -> list[str]:
    return {
        "tile": [str(tmp / "no_slides"), "--out", str(tmp / "o")],
        "train": [str(tmp / "no_patches"), "--out", str(tmp / "o")],
        "extract": [str(tmp / "no_checkpoint.pt"), str(tmp / "no_data"), "--out", str(tmp / "o")],
        "evaluate": [str(tmp / "no_features"), "--out", str(tmp / "o")],
        "study": [str(tmp / "no_study.yaml")],
        "shards": [str(tmp / "no_patches"), "--out", str(tmp / "o")],
    }[verb]


CONVENTION_VERBS = ["tile", "train", "extract", "evaluate", "study", "shards"]


@pytest.mark.parametrize("verb", CONVENTION_VERBS)
def test_every_verb_answers_bad_input_in_one_line(verb, tmp_path, capsys, monkeypatch):
    """A bad flag and a missing input: exit 2 and one line ``clusiam-fast VERB: error: ...`` naming it;
    an --out that is a file: exit 4; CLUSIAM_DEBUG=1: the traceback (the error itself) instead."""
    monkeypatch.delenv("CLUSIAM_DEBUG", raising=False)
    args = _missing_input(verb, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([verb, *args, "--no-such-flag"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"clusiam-fast {verb}: error: unrecognized arguments: --no-such-flag; see clusiam-fast {verb} --help\n"
    )
    assert main([verb, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clusiam-fast {verb}: error: ") and err.count("\n") == 1, err
    assert "no_" in err and ("does not exist" in err or "none of" in err), err
    assert not (tmp_path / "o").exists()  # nothing written
    if "--out" in args:
        (tmp_path / "file").write_text("mine")
        inputs = [str(tmp_path / "file"), str(tmp_path)] if verb == "extract" else [str(tmp_path)]  # they exist
        assert main([verb, *inputs, "--out", str(tmp_path / "file")]) == 4
        assert capsys.readouterr().err.startswith(f"clusiam-fast {verb}: error: --out {tmp_path / 'file'} is a file")
        assert (tmp_path / "file").read_text() == "mine"
    monkeypatch.setenv("CLUSIAM_DEBUG", "1")
    with pytest.raises((FileNotFoundError, ValueError)):  # the study's config error is a ValueError
        main([verb, *args])


def test_bench_runs_pytest_benchmark_and_passes_bad_arguments_back_as_2():
    done = _python("-m", "clusiam_fast", "bench", "--no-such-pytest-flag")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--no-such-pytest-flag" in done.stderr


def test_info_verb_is_imported_lazily(capsys):
    if HAS_INFO:
        with pytest.raises(SystemExit) as exit_info:
            main(["info", "--help"])
        assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
    else:
        assert main(["info"]) == 2
        assert capsys.readouterr().err.startswith("clusiam-fast info: error: this install of clusiam_fast")
