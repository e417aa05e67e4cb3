"""The config reference: every key documented where it is defined, listed by --help, and
docs/CONFIG.md generated from the code, never stale."""

import subprocess
import sys
from pathlib import Path

import yaml

from dimerec_dist.commands import config_reference
from dimerec_dist.config import JobConfig, config_to_dict

REPO = Path(__file__).resolve().parents[1]


def leaf_keys(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_key_has_a_meaning_written_where_it_is_defined():
    documented = [key.name for key in config_reference.keys()]
    assert documented == list(leaf_keys(config_to_dict(JobConfig())))
    assert all(len(key.meaning) > 10 for key in config_reference.keys())


def test_docs_config_md_is_current():
    written = (REPO / "docs" / "CONFIG.md").read_text()
    assert written == config_reference.markdown(), (
        "docs/CONFIG.md is stale: python -m dimerec_dist.commands.config_reference > docs/CONFIG.md"
    )


def test_help_lists_every_key_with_its_default_and_print_config_shows_the_resolved_job(tmp_path):
    run = [sys.executable, "-m", "dimerec_dist.commands.train"]
    shown = subprocess.run([*run, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60).stdout
    for key in config_reference.keys():
        assert f"  {key.name}=" in shown, key.name
    (tmp_path / "job.yaml").write_text("model:\n  num_interests: 8\n")
    done = subprocess.run(
        [*run, "--print-config", "--config", str(tmp_path / "job.yaml"), "train.epochs=2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    resolved = yaml.safe_load(done.stdout)
    assert done.returncode == 0 and resolved["model"]["num_interests"] == 8 and resolved["train"]["epochs"] == 2
    assert resolved["train"]["batch_size"] == JobConfig().train.batch_size
