"""The launch scripts: two torchrun "nodes" on one machine (c10d rendezvous on 127.0.0.1)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.distributed.conftest import REPO, TINY_JOB

# The scripts run the caller's environment: here, the one running the tests.
CALLERS_ENVIRONMENT = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_rendezvous_and_train_with_the_table_sharded_over_both(tiny_dataset, tmp_path):
    run_dir = tmp_path / "two-nodes"
    env = {
        **CALLERS_ENVIRONMENT,
        "NNODES": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "NPROC_PER_NODE": "1",
        "RDZV_ID": f"test-{os.getpid()}",
        "OMP_NUM_THREADS": "1",
    }
    args = [
        "--run-dir",
        str(run_dir),
        "data.source=prepared",
        f"data.path={tiny_dataset}",
        "train.max_steps=6",
        "train.eval_every_epochs=0",
        *TINY_JOB,
    ]
    nodes = [
        subprocess.Popen(
            ["bash", str(REPO / "launch/multi_node.sh"), *args],
            cwd=REPO,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for rank, (node, output) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{output[-4000:]}"
    plan = (run_dir / "sharding_plan.txt").read_text()
    assert "rank:0" in plan and "rank:1" in plan, plan
    final = json.loads((run_dir / "final.json").read_text())
    assert set(final["test"]) >= {"hr@10", "ndcg@50"}
    steps = [
        json.loads(line)["step"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "loss/total" in line
    ]
    assert steps == list(range(1, 7))


def test_the_scripts_take_the_environment_from_the_caller_and_say_so_when_it_is_missing(tmp_path):
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for script in ("launch/single_node.sh", "launch/multi_node.sh"):
        done = subprocess.run(
            ["bash", str(REPO / script), "--run-dir", str(tmp_path / "r")],
            cwd=tmp_path,
            env={**bare, "NNODES": "1", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and "dimerec-torchrun is not on PATH: activate the environment" in done.stderr
    done = subprocess.run(
        ["bash", str(REPO / "launch/slurm.sbatch")], cwd=tmp_path, env=bare, capture_output=True, text=True
    )
    assert done.returncode != 0 and "set RUN_DIR" in done.stderr


def test_single_node_script_runs_the_trainer(tiny_dataset, tmp_path):
    run_dir = tmp_path / "one-node"
    done = subprocess.run(
        [
            "bash",
            "launch/single_node.sh",
            "--run-dir",
            str(run_dir),
            "data.source=prepared",
            f"data.path={tiny_dataset}",
            "train.max_steps=3",
            "train.eval_every_epochs=0",
            *TINY_JOB,
        ],
        cwd=REPO,
        env={**CALLERS_ENVIRONMENT, "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (run_dir / "final.json").is_file()


def test_a_user_error_under_the_launcher_ends_with_2_one_line_and_no_traceback(tiny_dataset, tmp_path):
    run_dir = tmp_path / "bad"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dimerec_dist.commands.torchrun",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "dimerec_dist.commands.train",
            "--run-dir",
            str(run_dir),
            "data.source=prepared",
            f"data.path={tiny_dataset}",
            *TINY_JOB,
            "eval.ks=10,5000",
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-4000:]
    # Each rank that got there first says it (torchrun stops the others): one line, or the same line twice.
    assert 1 <= len(errors) <= 2 and all(line.startswith("dimerec-train: error: eval.ks=[10, 5000]") for line in errors)
