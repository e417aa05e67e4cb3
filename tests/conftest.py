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
