"""Everything on an S3-protocol object store: a real one (moto's server mode) started by the test.
dimerec-prepare reads its input from a bucket and writes the dataset there (manifest last); a
2-rank training job reads the dataset from the bucket (through a per-node local copy) with its
run directory on the bucket: checkpoints there, a rank SIGKILLed, the job resumed from the
bucket with the uninterrupted losses; dimerec-eval reads that run from the bucket, a bundle is
exported from it to the bucket and served from there."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.distributed.conftest import REPO, TINY_JOB, command_error, faulty_train, losses_by_step, torchrun

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A running S3 endpoint with an empty bucket; the environment points every process at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        DIMEREC_S3_ENDPOINT_URL=f"http://{host}:{port}",
        DIMEREC_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
    )
    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    s3.create_bucket(Bucket="recs")
    try:
        yield s3
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


RUN = "s3://recs/runs/r1"
CHAIN_JOB = [*TINY_JOB, "train.max_steps=8", "train.checkpoint_every=2", "train.eval_every_epochs=0"]


def listing(bucket, prefix: str) -> set[str]:
    """The bucket's keys under `prefix`, relative to it."""
    found = bucket.list_objects_v2(Bucket="recs", Prefix=prefix).get("Contents", [])
    return {entry["Key"][len(prefix) :] for entry in found}


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def prepare_pairs(source: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    return run("dimerec_dist.data.prepare", "--format", "pairs", "--input", source, "--out", out, *extra)


def test_prepare_train_kill_resume_evaluate_and_export_all_on_the_bucket(bucket, tmp_path):
    lines = "".join(f"u{u} i{(u * 7 + k) % 100}\n" for u in range(120) for k in range(8))
    bucket.put_object(Bucket="recs", Key="raw/pairs.txt", Body=lines.encode())
    done = prepare_pairs("s3://recs/raw/pairs.txt", "s3://recs/prepared")
    assert done.returncode == 0, done.stderr[-3000:]
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="recs", Prefix="prepared/")["Contents"]]
    assert "prepared/manifest.json" in keys and any(k.startswith("prepared/train/") for k in keys)
    again = prepare_pairs("s3://recs/raw/pairs.txt", "s3://recs/prepared")
    assert again.returncode == 2 and "never overwritten" in again.stderr
    missing = prepare_pairs("s3://recs/raw/none.txt", "s3://recs/p2")
    assert missing.returncode == 2 and "s3://recs/raw/none.txt does not exist" in missing.stderr

    # The reference: a 2-rank job with a local run directory, reading the dataset from the bucket.
    overrides = ["data.source=prepared", "data.path=s3://recs/prepared", *CHAIN_JOB]
    local_run = tmp_path / "run"
    torchrun(2, "dimerec_dist.commands.train", "--run-dir", str(local_run), *overrides)
    assert (local_run / "config.yaml").read_text().count("s3://recs/prepared") == 1
    manifest = json.loads(bucket.get_object(Bucket="recs", Key="prepared/manifest.json")["Body"].read())

    # The same job with its run directory on the bucket: checkpoints there, rank 1 SIGKILLed at step 5,
    # torchrun restarts the job, which resumes from the bucket's step-4 checkpoint and ends with the
    # reference's losses, its metrics, TensorBoard events, model and final.json on the bucket.
    done = faulty_train(2, RUN, "--kill-at-step", "5", "--kill-rank", "1", *overrides, restarts=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {RUN}/checkpoints/step-00000004" in done.stderr
    keys = listing(bucket, "runs/r1/")
    assert {"config.yaml", "metrics.jsonl", "final.json", "model/meta.json", "sharding_plan.txt"} <= keys
    assert any(key.startswith("tb/events.out.tfevents") for key in keys)
    assert {key.split("/")[1] for key in keys if key.endswith("/meta.json") and key.startswith("checkpoints/")} == {
        "step-00000006",
        "step-00000008",
    }, "train.keep_checkpoints=2 prunes on the bucket"
    remote_run = tmp_path / "from-bucket"
    for name in ("metrics.jsonl", "final.json"):
        (remote_run / name).parent.mkdir(parents=True, exist_ok=True)
        bucket.download_file("recs", f"runs/r1/{name}", str(remote_run / name))
    assert losses_by_step(remote_run) == losses_by_step(local_run) and len(losses_by_step(local_run)) == 8
    final = json.loads((remote_run / "final.json").read_text())
    assert final["test"] == json.loads((local_run / "final.json").read_text())["test"]

    done = run("dimerec_dist.commands.evaluate", "--run-dir", RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval.json" in listing(bucket, "runs/r1/")
    # --out and --topk-out take a URI, as every other --out does
    elsewhere = ("--out", "s3://recs/evals/e1.json", "--topk-out", "s3://recs/evals/e1_topk.npz")
    done = run("dimerec_dist.commands.evaluate", "--run-dir", RUN, *elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    assert listing(bucket, "evals/") >= {"e1.json", "e1_topk.npz"}
    read = lambda key: json.loads(bucket.get_object(Bucket="recs", Key=key)["Body"].read())  # noqa: E731
    assert read("evals/e1.json")["test"] == read("runs/r1/eval.json")["test"]

    # The bundle exported from the bucket's run to the bucket (bundle.json last), then served from it.
    exported = run("dimerec_dist.serving.export", "--run-dir", RUN, "--out", "s3://recs/bundles/b1")
    assert exported.returncode == 0, exported.stderr[-3000:]
    keys = listing(bucket, "bundles/b1/")
    assert "bundle.json" in keys and any(k.startswith("items/part-") for k in keys)
    again = run("dimerec_dist.serving.export", "--run-dir", RUN, "--out", "s3://recs/bundles/b1")
    assert again.returncode == 2 and "never overwritten" in again.stderr
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dimerec_dist.serving.serve_cli",
            "s3://recs/bundles/b1",
            "--single-process",
            "--port",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("listening on"), line + server.stderr.read()[-2000:]
        request = urllib.request.Request(
            line.split()[-1] + "/recommend", data=json.dumps({"history": ["i3", "i10"], "k": 5}).encode()
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert len(json.loads(response.read())["items"]) == 5
    finally:
        server.terminate()
        server.wait(timeout=30)

    # A shard of the bucket's model changed after it was written: refused by name, never loaded.
    bucket.put_object(Bucket="recs", Key="runs/r1/model/__1_0.distcp", Body=b"not the shard")
    done = run("dimerec_dist.commands.evaluate", "--run-dir", RUN)
    assert done.returncode == 2 and f"{RUN}/model/__1_0.distcp does not match its checksum" in done.stderr, done.stderr

    # The dataset replaced on the bucket (--overwrite): the node's copy is taken again, not reused.
    fewer = "".join(f"u{u} i{(u * 7 + k) % 100}\n" for u in range(60) for k in range(8))
    bucket.put_object(Bucket="recs", Key="raw/pairs.txt", Body=fewer.encode())
    done = prepare_pairs("s3://recs/raw/pairs.txt", "s3://recs/prepared", "--overwrite")
    assert done.returncode == 0, done.stderr[-3000:]
    from dimerec_dist.config import load_config
    from dimerec_dist.data.schema import Manifest
    from dimerec_dist.data.source import cached_dataset

    config = load_config(None, ["data.source=prepared", "data.path=s3://recs/prepared"])
    assert Manifest.load(cached_dataset(config.data)).data["counts"]["events"] == 480
    assert manifest["counts"]["events"] == 960


def test_a_run_directory_on_a_store_that_cannot_be_written_or_without_its_data_is_one_line(bucket):
    data = ["data.source=prepared", "data.path=s3://recs/prepared", "train.max_steps=1"]
    line = command_error("dimerec_dist.commands.train", "--run-dir", "s3://no-such-bucket/runs/r", *data)
    assert "--run-dir s3://no-such-bucket/runs/r: cannot be written" in line, line
    line = command_error("dimerec_dist.commands.train", "--run-dir", "s3://recs/runs/synthetic")
    assert "name the data the job reads in data.path" in line, line


def test_file_uris_are_local_paths(tmp_path):
    from dimerec_dist.config import load_config
    from dimerec_dist.data.source import dataset_path
    from dimerec_dist.runtime.run_dir import RunDir

    config = load_config(None, ["data.source=prepared", f"data.path=file://{tmp_path}/data"])
    assert dataset_path(config.data, tmp_path / "run") == tmp_path / "data"
    run = RunDir.at(f"file://{tmp_path}/run")
    assert run.local == tmp_path / "run" and run.remote is None and run.place("model") == tmp_path / "run" / "model"


def _open_the_run(rank: int, store: str, where: str, seen: str, two_nodes: bool) -> None:
    """One of two processes opening a store's run directory (two local ranks of a node, or the first
    of two nodes sharing the cache): rank 0's pull is slow; a second local rank notes what the
    working copy holds when it first writes there (its writability probe); each writes a file."""
    import json
    import time

    import torch.distributed as dist

    import dimerec_dist.runtime.run_dir as run_dir

    os.environ["GROUP_RANK"] = str(rank if two_nodes else 0)  # what torchrun tells a node's processes
    local_rank = 0 if two_nodes else rank
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    pull, probe = run_dir.RunDir.pull, run_dir.writable_dir

    def slow_pull(self) -> None:
        if rank == 0:
            time.sleep(1.0)  # long enough for the other process to write, were it not waiting
        pull(self)

    def noted_probe(path, what):
        if local_rank == 1:
            with open(seen, "w") as out:
                json.dump(sorted(entry.name for entry in path.iterdir()), out)
        return probe(path, what)

    run_dir.RunDir.pull, run_dir.writable_dir = slow_pull, noted_probe
    run = run_dir.RunDir.open(where, local_rank=local_rank)
    (run.local / f"written-by-rank-{rank}").write_text("kept")
    dist.barrier()
    dist.destroy_process_group()


def open_the_run_twice(bucket, tmp_path, name: str, two_nodes: bool):
    """Two processes open the store's run `name` that an earlier attempt left a working copy of."""
    import torch.multiprocessing as mp

    from dimerec_dist.runtime.run_dir import RunDir

    where = f"s3://recs/runs/{name}"
    bucket.put_object(Bucket="recs", Key=f"runs/{name}/metrics.jsonl", Body=b'{"step": 1}\n')
    node_0 = RunDir.at(where).local
    for node in (node_0, node_0.with_name("node-1")):
        node.mkdir(parents=True)
        (node / "from-the-last-attempt").write_text("stale")
    seen = tmp_path / "seen.json"
    mp.spawn(_open_the_run, args=(str(tmp_path / "store"), where, str(seen), two_nodes), nprocs=2)
    listed = {node.name: sorted(path.name for path in node.iterdir()) for node in node_0.parent.iterdir()}
    return listed, seen


def test_a_restarted_jobs_ranks_write_in_the_working_copy_only_once_it_is_pulled_again(bucket, tmp_path):
    """A restarted job's first local rank replaces the working copy its last attempt left; the other
    ranks wait for that before they write there (CI once lost a rank whose writability probe was
    removed with the old copy under it)."""
    listed, seen = open_the_run_twice(bucket, tmp_path, "restarted", two_nodes=False)
    seen = json.loads(seen.read_text())
    assert "metrics.jsonl" in seen and "from-the-last-attempt" not in seen, "rank 1 wrote there before the pull"
    assert listed["node-0"] == ["metrics.jsonl", "written-by-rank-0", "written-by-rank-1"]


def test_the_nodes_of_a_job_sharing_the_cache_have_working_copies_of_their_own(bucket, tmp_path):
    """Each node's first process replaces and uploads its own working copy, never another node's."""
    listed, _ = open_the_run_twice(bucket, tmp_path, "two-nodes", two_nodes=True)
    assert listed == {
        "node-0": ["metrics.jsonl", "written-by-rank-0"],
        "node-1": ["metrics.jsonl", "written-by-rank-1"],
    }


def _copy_held_after_its_download(uri: str, cache: str, downloaded, go, result: str) -> None:
    """A copier of `uri` that stops between its download and its publishing until `go`."""
    import dimerec_dist.runtime.storage as storage

    get_tree = storage.get_tree

    def held(*args, **kwargs):
        count = get_tree(*args, **kwargs)
        downloaded.set()
        go.wait(120)
        return count

    storage.get_tree = held
    with open(result, "w") as out:
        out.write(str(storage.local_copy(uri, Path(cache), "manifest.json")))


def test_processes_copying_one_dataset_at_once_each_end_with_the_whole_copy(bucket, tmp_path):
    """Two jobs on a machine (or the nodes of a job sharing the cache) copying the same dataset: one
    copier publishes while the other is between its download and its publishing; both end with the
    complete copy, and what a killed copier left is removed by the next one on the host."""
    import socket

    import torch.multiprocessing as mp

    from dimerec_dist.runtime.storage import cache_key, local_copy

    uri = "s3://recs/sets/shared"
    for key, body in (("part-0.txt", b"rows"), ("manifest.json", b'{"complete": true}')):
        bucket.put_object(Bucket="recs", Key=f"sets/shared/{key}", Body=body)
    cache = tmp_path / "cache"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = cache / f"{cache_key(uri)}.partial-{socket.gethostname()}-{ended.stdout.strip()}"
    abandoned.mkdir(parents=True)

    spawn = mp.get_context("spawn")
    downloaded, go = spawn.Event(), spawn.Event()
    result = tmp_path / "first.txt"
    first = spawn.Process(target=_copy_held_after_its_download, args=(uri, str(cache), downloaded, go, str(result)))
    first.start()
    try:
        assert downloaded.wait(120), "the first copier never downloaded"
        second = local_copy(uri, cache, "manifest.json")  # published while the first one is held
    finally:
        go.set()
        first.join(120)
    assert first.exitcode == 0 and result.read_text() == str(second)
    assert sorted(path.name for path in second.iterdir()) == ["manifest.json", "part-0.txt"]
    assert [path.name for path in cache.iterdir()] == [second.name], "no partial copy left behind"
