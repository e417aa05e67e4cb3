"""Fixtures shared by every test directory."""

import contextlib
from pathlib import Path

import pytest

from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.synth import SynthOptions, synthesize
from tests.full_disk import FullDiskUnavailable
from tests.full_disk import small_disk as mount_small_disk
from tests.read_only import ReadOnlyUnavailable, read_only_directory

# Under `pytest -n N` (make test: pytest-xdist) a worker takes whole test modules, so a module's
# fixtures are made once. The tests that start Ray (the sharded service, the Ray data backend) go
# to one worker together, one after another: two local Ray clusters on one machine compete for
# its ports and /tmp/ray, and the serving tests share one trained run, bundle and service.
ONE_WORKER = ("tests/serving/", "tests/data/test_stream.py")


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndRayTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:  # the unit a worker takes (xdist's hook for it)
            return "ray" if nodeid.startswith(ONE_WORKER) else super()._split_scope(nodeid)

    return ModulesAndRayTogether(config, log)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small synthetic short-video log, prepared: 400 users, 300 items, ~8k events."""
    root = tmp_path_factory.mktemp("tiny")
    synthesize(root / "raw", SynthOptions(users=400, items=300, events=8000, categories=12, seed=1))
    prepare(PrepareOptions(format="events", input=root / "raw" / "events", out=root / "prepared"))
    return root / "prepared"


@pytest.fixture
def make_read_only():
    """Makes directories read-only for everyone (tests/read_only.py) until the test ends."""
    with contextlib.ExitStack() as stack:

        def make(path: Path) -> Path:
            path.mkdir(parents=True, exist_ok=True)
            (path / "existing.txt").write_text("kept\n")
            try:
                stack.enter_context(read_only_directory(path))
            except ReadOnlyUnavailable as exc:
                pytest.skip(str(exc))
            return path

        yield make


@pytest.fixture
def read_only_dir(tmp_path, make_read_only):
    return make_read_only(tmp_path / "read-only")


@pytest.fixture
def make_small_disk(tmp_path):
    """Mounts small disks (tmpfs of `size_kib`) for the test: writing more fails with ENOSPC."""
    with contextlib.ExitStack() as stack:

        def make(name: str, size_kib: int) -> Path:
            try:
                return stack.enter_context(mount_small_disk(tmp_path / name, size_kib))
            except FullDiskUnavailable as exc:
                pytest.skip(str(exc))

        yield make


@pytest.fixture
def small_disk(make_small_disk):
    """A 256 KiB disk for the test."""
    return make_small_disk("small-disk", 256)
