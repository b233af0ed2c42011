"""OUT's checks are made once, in the library (training/run_folder.py): the CLI prints train()'s own error.

--out naming a file and --resume of another method's run are refused by the same
function whether the run starts from the command line or from ``train(config)``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_cases import small_config

from clusiam_fast.train import main as cli_main
from clusiam_fast.training import OutPathError, train

FLAGS = ["--crop-size", "32", "--batch-size", "8", "--num-clusters", "10", "--workers", "0", "--no-progress"]
FLAGS += ["--no-tensorboard", "--max-stat-images", "64"]


def test_an_out_that_is_a_file_is_one_error_from_the_cli_and_from_train(patches, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    for out in (target, target / "run"):
        with pytest.raises(OutPathError) as caught:
            train(small_config(patches, out))
        capsys.readouterr()
        assert cli_main([str(patches), "--out", str(out), *FLAGS]) == 4
        assert capsys.readouterr().err == f"clusiam-fast train: error: {caught.value}\n"
    assert target.read_text() == "mine"


@pytest.mark.usefixtures("one_thread")
def test_a_resume_with_another_method_is_one_error_from_the_cli_and_from_train(patches, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(small_config(patches, run, max_steps=1)).step == 1
    with pytest.raises(ValueError, match="was trained with --method clusiam") as caught:
        train(small_config(patches, run, method="simsiam", resume=True))
    capsys.readouterr()
    assert cli_main(["--out", str(run), "--resume", "--method", "simsiam"]) == 2
    assert capsys.readouterr().err == f"clusiam-fast train: error: {caught.value}\n"


def test_the_run_folder_checks_need_no_torch_until_there_is_a_checkpoint_to_read(tmp_path):
    """The CLI makes them before torch loads: a new run (or a --resume with nothing saved yet) reads nothing."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from clusiam_fast.training.run_folder import open_run_folder\n"
        "out = Path(sys.argv[1])\n"
        "assert open_run_folder(out / 'new', resume=False) is None\n"
        "assert open_run_folder(out, resume=True, method='clusiam') is None\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "NO-TORCH", done.stderr[-2000:]
