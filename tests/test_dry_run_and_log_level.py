"""dimerec-train --dry-run plans the job and exits; --log-level means the same on every command."""

import importlib
import os
import subprocess
import sys

import pytest

from tests.distributed.conftest import REPO, TINY_JOB


def command(*args, timeout=300, env=None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=environment
    )


def test_a_dry_run_prints_the_plan_and_memory_per_rank_and_makes_nothing(tmp_path):
    done = command(
        "dimerec_dist.commands.train",
        "--dry-run",
        "--config",
        "configs/quickstart.yaml",
        "--run-dir",
        str(tmp_path / "r"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dry run: the job fits; item table 2,001 x 64 (row_wise over 1 rank(s))" in done.stdout
    assert "memory per rank (row_wise, 1 ranks)" in done.stderr and "nothing was trained" in done.stdout
    assert not (tmp_path / "r").exists(), "a dry run writes nothing"


def test_a_dry_run_sizes_the_table_from_a_prepared_dataset(tiny_dataset):
    done = command(
        "dimerec_dist.commands.train", "--dry-run", "data.source=prepared", f"data.path={tiny_dataset}", *TINY_JOB
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "item table 301 x 16" in done.stdout and f"the prepared dataset {tiny_dataset}" in done.stderr


def test_a_dry_run_without_data_to_size_from_is_one_line(tmp_path):
    done = command("dimerec_dist.commands.train", "--dry-run", "data.source=prepared", f"data.path={tmp_path / 'none'}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "a dry run makes no data" in done.stderr


@pytest.mark.parametrize("level, says_info", [("WARNING", False), ("INFO", True)])
def test_log_level_sets_what_a_command_says(tmp_path, level, says_info):
    (tmp_path / "pairs.txt").write_text("u1 a\nu1 b\nu1 c\nu2 a\nu2 c\n")
    done = command(
        "dimerec_dist.data.prepare",
        *("--format", "pairs", "--input", str(tmp_path / "pairs.txt"), "--out", str(tmp_path / level)),
        *("--log-level", level.lower()),
    )
    assert done.returncode == 0, done.stderr
    assert ("dimerec.prepare prepared" in done.stderr) is says_info, done.stderr


def test_every_command_takes_log_level_and_refuses_a_level_that_is_not_one(capsys):
    for module in (
        "dimerec_dist.commands.train",
        "dimerec_dist.commands.evaluate",
        "dimerec_dist.serving.export",
        "dimerec_dist.data.prepare",
        "dimerec_dist.data.synth",
        "dimerec_dist.commands.plan",
        "dimerec_dist.commands.env_report",
        "dimerec_dist.serving.serve_cli",
    ):
        with pytest.raises(SystemExit) as stop:  # in this process: --help exits before a command does anything
            importlib.import_module(module).main(["--help"])
        assert stop.value.code == 0 and "--log-level" in capsys.readouterr().out, module
    done = command(
        "dimerec_dist.data.prepare", "--format", "pairs", "--input", "x", "--out", "y", "--log-level", "loud"
    )
    assert done.returncode == 2 and "--log-level: invalid choice: 'LOUD'" in done.stderr


def test_dimerec_serve_takes_the_log_level_every_command_takes():
    """One vocabulary, from the flag or from DIMEREC_LOG_LEVEL: free text is refused either way."""
    serve = ("dimerec_dist.serving.serve_cli", "no-such-bundle", "--single-process")
    done = command(*serve, "--log-level", "loud")
    assert done.returncode == 2 and "--log-level: invalid choice: 'LOUD'" in done.stderr
    done = command(*serve, env={"DIMEREC_LOG_LEVEL": "chatty"})
    assert done.returncode == 2 and "DIMEREC_LOG_LEVEL='chatty': not one of DEBUG" in done.stderr
    done = command(*serve, env={"DIMEREC_LOG_LEVEL": "warning"})
    assert done.returncode == 2 and "not a serving bundle" in done.stderr  # the level taken, the bundle refused
