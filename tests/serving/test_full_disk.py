"""A full disk under dimerec-export and dimerec-eval --topk-out: one line naming the place, what
was there before intact, nothing half-written left behind (issue #50). Real ENOSPC from a small
tmpfs, filled before the command runs."""

import subprocess

import pytest

from tests.distributed.conftest import REPO, command_error, torchrun_command


def fill(disk, leave: int = 0):
    """Fill `disk` to the last byte, then free `leave` bytes of it (room for the first files only)."""
    with open(disk / "filler", "ab", buffering=0) as filler:
        try:
            while True:
                filler.write(bytes(4096))
        except OSError:
            pass
    size = (disk / "filler").stat().st_size
    with open(disk / "filler", "r+b") as filler:
        filler.truncate(max(0, size - leave))


def files_of(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_eval_topk_out_to_a_full_disk_keeps_the_old_file_and_leaves_no_partial_one(trained, make_small_disk):
    _, run_dir = trained
    disk = make_small_disk("disk", 512)
    (disk / "topk.npz").write_bytes(b"the last evaluation's lists")
    fill(disk)
    before = files_of(disk)
    line = command_error(
        "dimerec_dist.commands.evaluate", "--run-dir", str(run_dir), "--topk-out", str(disk / "topk.npz"), timeout=300
    )
    assert line == f"dimerec-eval: error: {disk / 'topk.npz'}: No space left on device"
    assert files_of(disk) == before


@pytest.mark.parametrize("room", [0, 40_000], ids=["full", "room-for-the-first-parts"])
def test_export_to_a_full_disk_is_one_line_from_every_rank_and_leaves_nothing(trained, make_small_disk, room):
    _, run_dir = trained
    disk = make_small_disk("disk", 512)
    fill(disk, leave=room)
    command = torchrun_command(
        2, "-m", "dimerec_dist.serving.export", "--run-dir", str(run_dir), "--out", str(disk / "bundle")
    )
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = {line for line in done.stderr.splitlines() if line.startswith("dimerec-export: error:")}
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-3000:]
    assert "No space left on device" in lines.pop()
    assert sorted(p.name for p in disk.iterdir()) == ["filler"], "no staging, no lock, no partial bundle"
    assert "Fatal Python error" not in done.stderr and "core dumped" not in done.stderr
