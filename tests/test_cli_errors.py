"""Bad input to the commands: one line on stderr naming what and where, exit code 2."""

import subprocess
import sys

import pytest
import torch

from dimerec_dist.commands import evaluate as eval_cli
from dimerec_dist.commands import train
from tests.distributed.conftest import command_error, error_line


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
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dimerec_dist.commands.train",
                "--run-dir",
                str(tmp_path / "run"),
                "data.source=raw",
                f"data.raw_path={raw_path}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert fragment in error_line(done)


def test_a_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("notes")
    assert (
        "--run-dir" in command_error("dimerec_dist.commands.train", "--run-dir", str(tmp_path / "run"))
        and (tmp_path / "run").read_text() == "notes"
    )


def test_a_read_only_run_dir(tmp_path, read_only_dir):
    assert "is not writable" in command_error("dimerec_dist.commands.train", "--run-dir", str(read_only_dir))


def test_a_read_only_checkpoint_dir(tmp_path, make_read_only):
    make_read_only(tmp_path / "run" / "checkpoints")
    line = command_error("dimerec_dist.commands.train", "--run-dir", str(tmp_path / "run"))
    assert "the checkpoint directory" in line and "is not writable" in line


def test_eval_cut_offs_beyond_the_catalog_stop_before_training(tiny_dataset, tmp_path):
    line = command_error(
        "dimerec_dist.commands.train",
        "--run-dir",
        str(tmp_path / "run"),
        "data.source=prepared",
        f"data.path={tiny_dataset}",
        "eval.ks=10,5000",
    )
    assert "eval.ks=[10, 5000] asks for more items than" in line and "catalog of 300" in line


def test_a_data_set_without_held_out_users_stops_before_training(tmp_path):
    (tmp_path / "short.txt").write_text("".join(f"u{u} a{u % 61} b{u % 59}\n" for u in range(300)))
    line = command_error(
        "dimerec_dist.commands.train",
        "--run-dir",
        str(tmp_path / "run"),
        "data.source=raw",
        "data.raw_format=sequences",
        f"data.raw_path={tmp_path / 'short.txt'}",
        "train.batch_size=8",
    )
    assert "no valid users" in line and "train.eval_every_epochs=0" in line
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*")), "no epoch was trained first"


def test_export_takes_the_configs_dtype_words_and_refuses_numpys(capsys):
    """One vocabulary for a table's precision: fp32 / fp16 (and int8), as model.table_dtype and dimerec-plan say."""
    from dimerec_dist.serving.export import main as export_main

    with pytest.raises(SystemExit) as stop:
        export_main(["--run-dir", "r", "--out", "b", "--dtype", "float16"])
    assert stop.value.code == 2
    assert "invalid choice: 'float16' (choose from 'fp32', 'fp16', 'int8')" in capsys.readouterr().err
