"""Data on an S3-protocol object store: a real one (moto's server mode) started by the test.
dimerec-prepare reads its input from a bucket and writes the dataset there (manifest last);
a 2-rank training job reads the dataset from the bucket through a per-node local copy, and
dimerec-eval does too; a bundle is exported to the bucket and served from it."""

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from tests.distributed.conftest import REPO, TINY_JOB, torchrun

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


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def prepare_pairs(source: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    return run("dimerec_dist.data.prepare", "--format", "pairs", "--input", source, "--out", out, *extra)


def test_prepare_reads_and_writes_the_bucket_and_training_and_eval_read_it(bucket, tmp_path):
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

    run_dir = tmp_path / "run"
    job = ["--run-dir", str(run_dir), "data.source=prepared", "data.path=s3://recs/prepared", "train.max_steps=6"]
    torchrun(2, "dimerec_dist.train", *job, "train.eval_every_epochs=0", *TINY_JOB)
    final = json.loads((run_dir / "final.json").read_text())
    assert final["test"]["hr@10"] >= 0
    manifest = json.loads(bucket.get_object(Bucket="recs", Key="prepared/manifest.json")["Body"].read())
    assert (run_dir / "config.yaml").read_text().count("s3://recs/prepared") == 1
    done = run("dimerec_dist.eval_cli", "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]

    # The bundle exported to the bucket (bundle.json last), then served from it.
    exported = run("dimerec_dist.serving.export", "--run-dir", str(run_dir), "--out", "s3://recs/bundles/b1")
    assert exported.returncode == 0, exported.stderr[-3000:]
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="recs", Prefix="bundles/b1/")["Contents"]]
    assert "bundles/b1/bundle.json" in keys and any("/items/part-" in k for k in keys)
    assert not (run_dir / ".export").exists() or not any((run_dir / ".export").iterdir()), "no local bundle left"
    again = run("dimerec_dist.serving.export", "--run-dir", str(run_dir), "--out", "s3://recs/bundles/b1")
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
