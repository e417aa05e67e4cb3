"""The main job, shrunk: synthetic data made on first use, trained, evaluated, observable."""

import json
import subprocess
import sys

from tests.distributed.conftest import REPO


def test_quickstart_learns_far_beyond_popularity_and_recovers_planted_interests(tmp_path):
    run_dir = tmp_path / "quick"
    command = [
        sys.executable,
        "-m",
        "dimerec_dist.commands.train",
        "--config",
        "configs/quickstart.yaml",
        "--run-dir",
        str(run_dir),
        "data.synth_users=1500",
        "data.synth_events=60000",
        "train.epochs=2",
        "eval.batch_size=512",
        "train.profile_steps=3,4",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (run_dir / "data" / "manifest.json").is_file(), "the synthetic log is made on first use"
    assert list((run_dir / "tb").glob("events.out.tfevents.*")), "TensorBoard events are written"
    assert "samples/s | ETA" in done.stderr, "rank 0 prints a progress line with rate and ETA"
    # A normal run's output is ours: our log lines and the sharding plan's table, no library's warning.
    foreign = [
        line
        for line in done.stderr.splitlines()
        if line.strip()
        and " dimerec." not in line
        and not line.startswith(("module:", "param ", "----- ", "item ", "planned for ", "memory per rank", "rank "))
        and "SyncActivityProfilerHandler" not in line  # kineto's start/stop lines: train.profile_steps asks for them
    ]
    assert foreign == [], "\n".join(foreign[:10])
    # What the job did is on TensorBoard: the step's wait for batches and the rank's memory beside the losses.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    wanted = {"time/data_wait_ms_per_step", "time/data_wait_share", "memory/host_rss_gb", "memory/host_peak_rss_gb"}
    assert wanted <= scalars, sorted(scalars)
    rss = [event.value for event in events.Scalars("memory/host_rss_gb")]
    assert all(0.1 < value < 64 for value in rss), rss
    assert all(0 <= event.value <= 1.5 for event in events.Scalars("time/data_wait_share"))
    # and train.profile_steps=3,4 left a trace Perfetto opens (Chrome's trace JSON)
    (trace,) = (run_dir / "profile").glob("rank-0.steps-3-4.pt.trace.json")
    assert len(json.loads(trace.read_text())["traceEvents"]) > 100

    final = json.loads((run_dir / "final.json").read_text())
    model, popularity = final["test"]["hr@50"], final["popularity"]["test"]["hr@50"]
    assert model >= 2 * popularity, f"test HR@50 {model:.4f} vs popularity {popularity:.4f}"

    # The planted interests are recovered: the model's top-50 sits in the user's planted categories.
    done = subprocess.run(
        [sys.executable, "tools/planted_recovery.py", "--run-dir", str(run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    planted = json.loads((run_dir / "planted.json").read_text())
    assert planted["hr@50_ratio"] >= 3, planted
    assert planted["model"]["planted_category_share"] > 5 * planted["popularity"]["planted_category_share"], planted
