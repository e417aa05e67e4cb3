"""What the serving tests share: a trained tiny run, its bundle exported by 2 ranks, the sharded
service started on it, HTTP calls, and the parity check against dimerec-eval."""

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.schema import Manifest, read_split
from dimerec_dist.serving.bundle import Bundle
from dimerec_dist.serving.server import make_server
from tests.distributed.conftest import REPO, TINY_JOB, torchrun
from tests.serving.service_process import Service


def run(module, *args, check=True):
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    run_dir = root / "run"
    run(
        "dimerec_dist.commands.train",
        "--run-dir",
        str(run_dir),
        "data.source=prepared",
        f"data.path={tiny_dataset}",
        "train.max_steps=30",
        "train.eval_every_epochs=0",
        *TINY_JOB,
    )
    run("dimerec_dist.commands.evaluate", "--run-dir", str(run_dir), "--topk-out", str(root / "eval_topk.npz"))
    return root, run_dir


@pytest.fixture(scope="session")
def sharded_service_process(bundle_dir, tmp_path_factory):
    """`dimerec-serve BUNDLE --shards 2` on Ray Serve with a 3 s request timeout and a 2 s head
    timeout, shared by the session; it must stop cleanly on SIGTERM."""
    pytest.importorskip("ray.serve")
    service = Service(
        bundle_dir,
        tmp_path_factory.mktemp("service"),
        "--shards",
        "2",
        "--request-timeout-s",
        "3",
        "--header-timeout-s",
        "2",
    )
    try:
        yield service
        service.stop()
    finally:
        service.kill()


@pytest.fixture(scope="session")
def sharded_service(sharded_service_process) -> str:
    """The session's sharded service's URL."""
    return sharded_service_process.url


@pytest.fixture(scope="session")
def bundle_dir(trained):
    root, run_dir = trained
    torchrun(2, "dimerec_dist.serving.export", "--run-dir", str(run_dir), "--out", str(root / "bundle"))
    return root / "bundle"


@pytest.fixture(scope="session")
def single_server(bundle_dir):
    """The standard-library server (dimerec-serve --single-process) in a thread."""
    httpd = make_server(bundle_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(params=["single-process", "sharded"])
def server(request):
    """Each API test runs against both servers: the sharded service answers as the single one does."""
    return request.getfixturevalue("single_server" if request.param == "single-process" else "sharded_service")


def call(url, path, body=None, raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        url + path, data=data, method="GET" if data is None else "POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def exact_top50_of_every_test_user(url, bundle_dir, dataset) -> list[list[str]]:
    """The service's exact top-50 for every test user of `dataset`, with the user's own x_T."""
    users = EvaluationUsers(read_split(Manifest.load(dataset), "test"), max_history=20)
    bundle = Bundle(bundle_dir)
    requests = [
        {
            "history": bundle.raw_ids(users.items[users.offsets[r] : users.offsets[r + 1]]),
            "k": 50,
            "user": int(users.users[r]),
            "exact": True,
        }
        for r in range(len(users))
    ]
    answers = []
    for start in range(0, len(requests), 100):
        status, body = call(url, "/recommend/batch", {"requests": requests[start : start + 100]})
        assert status == 200, body
        answers += [result["items"] for result in body["results"]]
    return answers


def dimerec_eval_top50(trained, bundle_dir) -> list[list[str]]:
    """dimerec-eval's top-50 of every test user (written by the `trained` fixture), as raw ids."""
    root, _ = trained
    bundle = Bundle(bundle_dir)
    return [bundle.raw_ids(row) for row in np.load(root / "eval_topk.npz")["topk"]]
