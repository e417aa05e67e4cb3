"""Checkpoints: kill-and-restart resumes exactly, reshards across world sizes and sharding
types, refuses another model, and a half-written checkpoint is never picked up."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from dimerec_dist.training.checkpoint import META_FILE, CheckpointManager
from tests.distributed.conftest import (
    FAULTY_TRAIN,
    REPO,
    TINY_JOB,
    command_error,
    error_line,
    losses_by_step,
    torchrun,
    two_at_a_time,
)

STEPS = 40


def job(dataset, *extra):
    return ["data.source=prepared", f"data.path={dataset}", "train.eval_every_epochs=0", *TINY_JOB, *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt") / "uninterrupted"
    torchrun(
        2,
        "dimerec_dist.commands.train",
        "--run-dir",
        str(run_dir),
        *job(tiny_dataset, f"train.max_steps={STEPS}", "train.checkpoint_every=10"),
    )
    return run_dir


def test_sigkill_of_one_rank_restarts_resumes_and_ends_like_the_uninterrupted_run(
    uninterrupted, tiny_dataset, tmp_path
):
    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "--max-restarts=1",
            str(FAULTY_TRAIN),
            "--kill-at-step",
            "25",
            "--kill-rank",
            "1",
            "--run-dir",
            str(run_dir),
            *job(tiny_dataset, f"train.max_steps={STEPS}", "train.checkpoint_every=10"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resumed from" in done.stderr and "step-00000020" in done.stderr, "restarted from the step-20 checkpoint"
    # Bitwise on this CPU path: every draw derives from (seed, epoch, step), and the state is restored exactly.
    assert losses_by_step(run_dir) == losses_by_step(uninterrupted)
    final = json.loads((run_dir / "final.json").read_text())
    reference = json.loads((uninterrupted / "final.json").read_text())
    final.pop("latency"), reference.pop("latency")  # a timing, not a result
    assert final == reference


def preempt(run_dir, dataset, *extra) -> Path:
    """Start a 2-rank run, SIGTERM its agent once 5 steps are logged; the checkpoint it saved."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(FAULTY_TRAIN),
        "--step-delay",
        "0.2",
        "--run-dir",
        str(run_dir),
        *job(dataset, f"train.max_steps={STEPS}", "train.checkpoint_every=10", *extra),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(losses_by_step(run_dir) if (run_dir / "metrics.jsonl").exists() else {}) < 2:
        time.sleep(0.2)
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=120)
    assert agent.returncode != 0 and "stopped by a signal" in stderr, stderr[-3000:]
    saved = CheckpointManager(run_dir / "checkpoints").latest()
    assert saved is not None and 2 <= int(saved.name.split("-")[1]) < STEPS, saved
    return saved


def test_sigterm_saves_at_the_next_read_of_the_device_and_the_next_run_finishes_the_job(
    uninterrupted, tiny_dataset, tmp_path
):
    """Steps run without reading the device back; the stop flags travel with the losses every
    train.log_every steps, so a SIGTERM stops the run at the next multiple of log_every and saves
    there. The next run resumes from that checkpoint and ends as the uninterrupted run did."""
    run_dir = tmp_path / "preempted"
    saved = preempt(run_dir, tiny_dataset, "train.log_every=4")
    assert int(saved.name.split("-")[1]) % 4 == 0, saved
    logged = sorted(losses_by_step(run_dir))
    assert logged and all(step % 4 == 0 for step in logged), logged
    torchrun(
        2,
        "dimerec_dist.commands.train",
        "--run-dir",
        str(run_dir),
        *job(tiny_dataset, f"train.max_steps={STEPS}", "train.checkpoint_every=10", "train.log_every=4"),
    )
    # Each logged loss is the mean of the 4 steps before it: the uninterrupted run's, step by step.
    every_step = losses_by_step(uninterrupted)
    for step, loss in losses_by_step(run_dir).items():
        assert loss == pytest.approx(sum(every_step[s] for s in range(step - 3, step + 1)) / 4, rel=1e-9), step
    final = json.loads((run_dir / "final.json").read_text())
    reference = json.loads((uninterrupted / "final.json").read_text())
    final.pop("latency"), reference.pop("latency")
    assert final == reference


def table_and_momentum(checkpoint, tmp_path, name):
    dcp_to_torch_save(str(checkpoint), str(tmp_path / f"{name}.pt"))
    state = torch.load(tmp_path / f"{name}.pt", weights_only=False)
    table = next(v for k, v in state["model"].items() if k.endswith("embeddings.item.weight"))
    momentum = next(iter(next(iter(state["sparse_optimizer"]["state"].values())).values()))
    return table, momentum


RESHARDED = {  # name: (world, overrides) of a job resuming the 2-rank row-wise run's last checkpoint
    "one rank": (1, []),
    "three ranks": (3, ["data.streams=6", "train.batch_size=96"]),
    "table-wise": (2, ["sharding.type=table_wise"]),
}


@pytest.fixture(scope="module")
def resharded(uninterrupted, tiny_dataset, tmp_path_factory):
    saved = CheckpointManager(uninterrupted / "checkpoints").path_for(STEPS)
    root = tmp_path_factory.mktemp("resharded")

    def resume(name):
        world, extra = RESHARDED[name]
        run_dir = root / name.replace(" ", "-")
        torchrun(
            world,
            "dimerec_dist.commands.train",
            "--run-dir",
            str(run_dir),
            *job(tiny_dataset, f"train.max_steps={STEPS}", f"train.resume={saved}", *extra),
        )
        return run_dir

    return saved, dict(zip(RESHARDED, two_at_a_time(resume, RESHARDED)))


@pytest.mark.parametrize("name", RESHARDED)
def test_a_two_rank_row_wise_checkpoint_loads_exactly_on_other_layouts(resharded, tmp_path, name):
    saved, run_dirs = resharded
    reloaded = CheckpointManager(run_dirs[name] / "checkpoints").path_for(STEPS)
    assert json.loads((reloaded / META_FILE).read_text())["world_size"] == RESHARDED[name][0]
    table, momentum = table_and_momentum(saved, tmp_path, "saved")
    table2, momentum2 = table_and_momentum(reloaded, tmp_path, "reloaded")
    assert torch.equal(table, table2) and torch.equal(momentum, momentum2)


REFUSED = {  # an override of the resumed job: what its one error line must say
    "model.embedding_dim=32": "saved by a different model: embedding_dim (saved 16, now 32)",
    "model.num_interests=3": "num_interests (saved 2, now 3)",
    "model.guidance_dropout=0.2": "null guidance (saved without one, now with: model.guidance_dropout)",
    "sharding.type=data_parallel": "laid out for row- or table-wise, this job shards the table data_parallel",
    "sharding.type=column_wise": "this job shards the table column_wise (blocks of 16 columns)",
}


@pytest.fixture(scope="module")
def refused(uninterrupted, tiny_dataset, tmp_path_factory):
    saved = CheckpointManager(uninterrupted / "checkpoints").latest()
    root = tmp_path_factory.mktemp("refused")

    def resume(override):
        run_dir = root / override.replace("=", "-")
        command = [sys.executable, "-m", "dimerec_dist.commands.train", "--run-dir", str(run_dir)]
        command += job(tiny_dataset, f"train.resume={saved}", override)
        return run_dir, subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)

    return dict(zip(REFUSED, two_at_a_time(resume, REFUSED)))


@pytest.mark.parametrize("override", REFUSED)
def test_a_checkpoint_of_another_model_is_refused_before_the_first_step(refused, override):
    run_dir, done = refused[override]
    assert done.returncode == 2 and REFUSED[override] in done.stderr, done.stderr[-3000:]
    assert not (run_dir / "metrics.jsonl").exists() or "loss/total" not in (run_dir / "metrics.jsonl").read_text()


def test_resume_auto_refuses_other_settings_and_a_named_checkpoint_continues_with_a_warning(
    uninterrupted, tiny_dataset, tmp_path
):
    run_dir = tmp_path / "relaunched"
    shutil.copytree(uninterrupted, run_dir)
    saved_config = (run_dir / "config.yaml").read_text()
    relaunch = ["--run-dir", str(run_dir), *job(tiny_dataset, f"train.max_steps={STEPS}", "model.temperature=0.1")]
    done = subprocess.run(
        [sys.executable, "-m", "dimerec_dist.commands.train", *relaunch],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "saved with other settings than this job's: model.temperature 0.07 -> 0.1" in done.stderr
    assert (run_dir / "config.yaml").read_text() == saved_config, "a refused resume leaves the run as it was"
    named = CheckpointManager(run_dir / "checkpoints").latest()
    done = subprocess.run(
        [sys.executable, "-m", "dimerec_dist.commands.train", *relaunch, f"train.resume={named}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "with other settings: model.temperature 0.07 -> 0.1" in done.stderr and "resumed from" in done.stderr


def test_only_complete_checkpoints_are_picked_and_the_last_k_are_kept(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20):
        manager.path_for(step).mkdir()
        (manager.path_for(step) / META_FILE).write_text("{}")
    (tmp_path / "step-00000030.tmp").mkdir()  # killed during its save
    manager.path_for(40).mkdir()  # shards written, never committed (no meta.json)
    assert manager.latest() == manager.path_for(20)
    assert [p.name for p in manager.complete()] == ["step-00000010", "step-00000020"]


def test_asynchronous_saves_write_the_same_checkpoints_as_synchronous_ones(uninterrupted, tiny_dataset, tmp_path):
    run_dir = tmp_path / "async"
    torchrun(
        2,
        "dimerec_dist.commands.train",
        "--run-dir",
        str(run_dir),
        *job(tiny_dataset, f"train.max_steps={STEPS}", "train.checkpoint_every=10", "train.checkpoint_async=true"),
    )
    assert losses_by_step(run_dir) == losses_by_step(uninterrupted)
    for step in (30, STEPS):  # the table moved on while these were written in the background
        ours = table_and_momentum(CheckpointManager(run_dir / "checkpoints").path_for(step), tmp_path, f"a{step}")
        reference = table_and_momentum(
            CheckpointManager(uninterrupted / "checkpoints").path_for(step), tmp_path, f"s{step}"
        )
        assert all(torch.equal(a, b) for a, b in zip(ours, reference)), f"step {step}"


# --------------------------------------------------------------------------- nothing lost, nothing silently wrong


def corrupt(path, how):
    if how == "truncated shard":
        shard = sorted(path.glob("__1_*.distcp"))[0]
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif how == "truncated metadata":
        (path / ".metadata").write_bytes((path / ".metadata").read_bytes()[:100])
    elif how == "flipped byte in a shard":
        shard = sorted(path.glob("__0_*.distcp"))[0]
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    elif how == "edited meta.json":
        meta = json.loads((path / META_FILE).read_text())
        meta["training"]["step"] += 1
        (path / META_FILE).write_text(json.dumps(meta))


CORRUPTIONS = ("truncated shard", "truncated metadata", "flipped byte in a shard", "edited meta.json")


@pytest.fixture(scope="module")
def resumed_past_corruption(uninterrupted, tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")

    def resume(how):
        run_dir = root / how.replace(" ", "-")
        shutil.copytree(uninterrupted, run_dir)
        (run_dir / "final.json").unlink()
        newest = CheckpointManager(run_dir / "checkpoints").latest()
        assert newest.name == f"step-{STEPS:08d}"
        corrupt(newest, how)
        done = torchrun(
            2,
            "dimerec_dist.commands.train",
            "--run-dir",
            str(run_dir),
            *job(tiny_dataset, f"train.max_steps={STEPS}", "train.checkpoint_every=10"),
        )
        return run_dir, newest, done

    return dict(zip(CORRUPTIONS, two_at_a_time(resume, CORRUPTIONS)))


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupt_newest_checkpoint_is_skipped_and_the_run_ends_like_the_uninterrupted_one(
    uninterrupted, resumed_past_corruption, how
):
    run_dir, newest, done = resumed_past_corruption[how]
    assert (
        f"not resuming from {newest}" in done.stderr
        and "resumed from" in done.stderr
        and "step-00000030" in done.stderr
    ), done.stderr[-3000:]
    assert losses_by_step(run_dir) == losses_by_step(uninterrupted)
    final, reference = (json.loads((d / "final.json").read_text()) for d in (run_dir, uninterrupted))
    final.pop("latency"), reference.pop("latency")
    assert final == reference


def test_when_no_checkpoint_verifies_nothing_is_loaded_or_changed(uninterrupted, tiny_dataset, tmp_path):
    run_dir = tmp_path / "all-corrupt"
    shutil.copytree(uninterrupted, run_dir)
    for path in CheckpointManager(run_dir / "checkpoints").complete():
        corrupt(path, "truncated shard")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    line = command_error(
        "dimerec_dist.commands.train", "--run-dir", str(run_dir), *job(tiny_dataset, f"train.max_steps={STEPS}")
    )
    assert "none of the 2 checkpoint(s) verifies" in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_flipped_byte_in_the_saved_model_is_refused_not_evaluated(uninterrupted, tmp_path):
    run_dir = tmp_path / "flipped"
    shutil.copytree(uninterrupted, run_dir)
    shard = sorted((run_dir / "model").glob("__0_*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    assert f"{shard.name} does not match its checksum" in command_error(
        "dimerec_dist.commands.evaluate", "--run-dir", str(run_dir)
    )


def test_resuming_on_another_world_size_is_exact_or_refused_naming_data_streams(tiny_dataset, tmp_path):
    reference = tmp_path / "two-ranks"
    default_streams = [
        arg
        for arg in job(
            tiny_dataset,
            "train.max_steps=9",
            "train.checkpoint_every=3",
            "train.keep_checkpoints=3",
            "eval.at_end=false",
        )
        if not arg.startswith("data.streams")
    ]
    torchrun(2, "dimerec_dist.commands.train", "--run-dir", str(reference), *default_streams)
    run_dir = tmp_path / "one-rank"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(CheckpointManager(run_dir / "checkpoints").path_for(9))  # as if stopped after step 6
    relaunch = [sys.executable, "-m", "dimerec_dist.commands.train", "--run-dir", str(run_dir), *default_streams]
    assert "set data.streams=2" in error_line(
        subprocess.run(relaunch, cwd=REPO, capture_output=True, text=True, timeout=120)
    )
    done = subprocess.run([*relaunch, "data.streams=2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "resumed from" in done.stderr, done.stderr[-3000:]
    # The same samples in the same batches; only the float sums' order differs between 1 and 2 ranks.
    ours, theirs = losses_by_step(run_dir), losses_by_step(reference)
    assert sorted(ours) == sorted(theirs) == list(range(1, 10))
    assert [ours[step] for step in ours] == pytest.approx([theirs[step] for step in ours], rel=1e-5)


@pytest.mark.parametrize("target", ["agent", "worker"])
def test_sigterm_under_dimerec_torchrun_saves_once_ends_143_and_restarts_nothing(
    uninterrupted, tiny_dataset, tmp_path, target
):
    run_dir = tmp_path / f"stopped-{target}"
    command = [
        str(REPO / ".venv" / "bin" / "dimerec-torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=2",
        str(FAULTY_TRAIN),
        "--step-delay",
        "0.2",
        "--run-dir",
        str(run_dir),
        *job(tiny_dataset, f"train.max_steps={STEPS}", "train.checkpoint_every=10"),
    ]
    if not Path(command[0]).exists():
        command[:1] = [sys.executable, "-m", "dimerec_dist.commands.torchrun"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(losses_by_step(run_dir) if (run_dir / "metrics.jsonl").exists() else {}) < 5:
        time.sleep(0.2)
    if target == "agent":
        agent.send_signal(signal.SIGTERM)
    else:
        workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(workers[-1]), signal.SIGTERM)
    _, stderr = agent.communicate(timeout=120)
    assert agent.returncode == 143, stderr[-4000:]
    assert "Traceback" not in stderr and "resumed from" not in stderr, "no restart after a requested stop"
    saved = CheckpointManager(run_dir / "checkpoints").latest()
    step = int(saved.name.split("-")[1])
    assert 5 <= step < STEPS and stderr.count(f"checkpoint {saved} written") == 1, stderr[-4000:]
    torchrun(
        2,
        "dimerec_dist.commands.train",
        "--run-dir",
        str(run_dir),
        *job(tiny_dataset, f"train.max_steps={STEPS}", "train.checkpoint_every=10"),
    )
    assert losses_by_step(run_dir) == losses_by_step(uninterrupted)


def test_a_checkpoint_holds_no_pickle_only_tensors_and_json(uninterrupted):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    for path in [*CheckpointManager(uninterrupted / "checkpoints").complete(), uninterrupted / "model"]:
        assert not [p.name for p in path.iterdir() if p.suffix in (".pt", ".pkl", ".pickle")], path
        entries = FileSystemReader(str(path)).read_metadata().state_dict_metadata
        assert not [key for key, kind in entries.items() if isinstance(kind, BytesStorageMetadata)], path
        json.loads((path / META_FILE).read_text())


def test_a_checkpoint_of_the_pickle_era_gets_a_one_line_error_saying_what_to_do(uninterrupted, tiny_dataset, tmp_path):
    run_dir = tmp_path / "old-layout"
    shutil.copytree(uninterrupted, run_dir)
    for path in CheckpointManager(run_dir / "checkpoints").complete():  # as the version before 2026-12 wrote them
        meta = json.loads((path / META_FILE).read_text())
        for key in ("files", "meta_sha256", "replicated"):
            meta.pop(key)
        (path / META_FILE).write_text(json.dumps(meta))
        torch.save({"optimizer": {}}, path / "dense.pt")
    line = command_error(
        "dimerec_dist.commands.train", "--run-dir", str(run_dir), *job(tiny_dataset, f"train.max_steps={STEPS}")
    )
    assert "pickle (dense.pt) that this version never loads" in line and "new --run-dir" in line
