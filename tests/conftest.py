"""Fixtures shared by every test directory."""

from pathlib import Path

import pytest

from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.synth import SynthOptions, synthesize


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small synthetic short-video log, prepared: 400 users, 300 items, ~8k events."""
    root = tmp_path_factory.mktemp("tiny")
    synthesize(root / "raw", SynthOptions(users=400, items=300, events=8000, categories=12, seed=1))
    prepare(PrepareOptions(format="events", input=root / "raw" / "events", out=root / "prepared"))
    return root / "prepared"


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write to, root included (tests run as root in CI): a read-only bind
    mount where mounting is allowed, else the immutable attribute, else plain permissions."""
    import os
    import subprocess

    path = tmp_path / "read-only"
    path.mkdir()
    (path / "existing.txt").write_text("kept\n")
    undo = None
    if os.geteuid() != 0:
        path.chmod(0o555)
        undo = ["chmod", "755", str(path)]
    elif subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True).returncode == 0:
        undo = ["umount", str(path)]
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(path)]
    else:
        pytest.skip("cannot make a read-only directory here (no mount, chattr or unprivileged user)")
    try:
        yield path
    finally:
        subprocess.run(undo, capture_output=True)
