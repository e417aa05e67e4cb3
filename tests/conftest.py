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
def make_read_only():
    """Makes a directory read-only for everyone, root included (tests run as root in CI): a
    read-only bind mount where mounting is allowed, else the immutable attribute, else plain
    permissions. Undone when the test ends."""
    import os
    import subprocess

    undo = []

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        (path / "existing.txt").write_text("kept\n")
        if os.geteuid() != 0:
            attempts = [(["chmod", "555", str(path)], ["chmod", "755", str(path)])]
        else:
            attempts = [
                (["mount", "--bind", "-o", "ro", str(path), str(path)], ["umount", str(path)]),
                (["chattr", "+i", str(path)], ["chattr", "-i", str(path)]),
            ]
        for command, reverse in attempts:
            if subprocess.run(command, capture_output=True).returncode == 0:
                undo.append(reverse)
                return path
        pytest.skip("cannot make a read-only directory here (no mount, chattr or unprivileged user)")

    yield make
    for reverse in reversed(undo):
        subprocess.run(reverse, capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path, make_read_only):
    return make_read_only(tmp_path / "read-only")
