"""Bad input to the commands: one line on stderr naming what and where, exit code 2."""

import subprocess
import sys

import pytest
import torch

from dimerec_dist import eval_cli, train


def one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0, f"expected one line, got:\n{err}"
    for fragment in fragments:
        assert fragment in err, err


def test_unknown_config_key(capsys, tmp_path):
    code = train.main(["--run-dir", str(tmp_path), "model.num_interest=4"])
    one_line_error(capsys, code, "dimerec-train: error:", "unknown key 'model.num_interest'")


def test_out_of_range_value(capsys, tmp_path):
    code = train.main(["--run-dir", str(tmp_path), "train.batch_size=0"])
    one_line_error(capsys, code, "train.batch_size=0 must be >= 1")


def test_unknown_key_in_a_config_file(capsys, tmp_path):
    (tmp_path / "job.yaml").write_text("train:\n  epoch: 3\n")
    code = train.main(["--config", str(tmp_path / "job.yaml"), "--run-dir", str(tmp_path / "run")])
    one_line_error(capsys, code, "job.yaml: unknown key 'train.epoch'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_asking_for_a_gpu_on_a_machine_without_one(capsys, tmp_path):
    code = train.main(["--run-dir", str(tmp_path), "train.device=cuda"])
    one_line_error(capsys, code, "train.device=cuda but torch", "sees no CUDA device", "train.device=auto or cpu")


def test_eval_of_a_directory_that_is_not_a_run(capsys, tmp_path):
    code = eval_cli.main(["--run-dir", str(tmp_path)])
    one_line_error(capsys, code, "is not a dimerec-train run directory")


def test_missing_and_malformed_data_files_stop_the_trainer_with_their_names(tmp_path):
    bad = tmp_path / "seqs.txt"
    bad.write_text("u1 a b c\nu2\n")
    for raw_path, fragment in ((tmp_path / "absent.txt", "absent.txt does not exist"), (bad, "seqs.txt:2:")):
        done = subprocess.run([sys.executable, "-m", "dimerec_dist.train", "--run-dir", str(tmp_path / "run"),
                               "data.source=raw", f"data.raw_path={raw_path}"], capture_output=True, text=True,
                              timeout=120)
        lines = [line for line in done.stderr.splitlines() if line.startswith("dimerec-train: error:")]
        assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr[-2000:]
