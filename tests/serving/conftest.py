"""What the serving tests share: a trained tiny run, its bundle exported by 2 ranks, the sharded
service started on it, HTTP calls, and the parity check against dimerec-eval."""

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.schema import Manifest, read_split
from dimerec_dist.serving.bundle import Bundle
from tests.distributed.conftest import REPO, TINY_JOB, torchrun


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
        "dimerec_dist.train",
        "--run-dir",
        str(run_dir),
        "data.source=prepared",
        f"data.path={tiny_dataset}",
        "train.max_steps=30",
        "train.eval_every_epochs=0",
        *TINY_JOB,
    )
    run("dimerec_dist.eval_cli", "--run-dir", str(run_dir), "--topk-out", str(root / "eval_topk.npz"))
    return root, run_dir


class Service:
    """`dimerec-serve BUNDLE ARGS` started as users start it; its output goes to files (Ray writes a
    lot, and a full pipe would stall the service)."""

    def __init__(self, bundle_dir, log_dir, *args: str):
        pytest.importorskip("ray.serve")
        self.out, self.err = Path(log_dir) / "serve.out", Path(log_dir) / "serve.err"
        command = [sys.executable, "-m", "dimerec_dist.serving.serve_cli", str(bundle_dir), "--port", "0", *args]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True)
        deadline = time.time() + 240
        while not self.stdout().startswith("listening on http://127.0.0.1:"):
            assert self.process.poll() is None and time.time() < deadline, self.stdout() + self.stderr()[-3000:]
            time.sleep(0.2)
        self.url = self.stdout().splitlines()[0].split()[-1]

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self, timeout: float = 120) -> str:
        """SIGTERM, then its output; it must exit 0 having said how many requests it answered."""
        self.process.send_signal(signal.SIGTERM)
        try:
            assert self.process.wait(timeout=timeout) == 0, self.stderr()[-3000:]
        finally:
            self.kill()
        assert "recommendation requests answered" in self.stdout(), self.stdout() + self.stderr()[-3000:]
        return self.stdout()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def replica_pids(self, deployment: str) -> list[int]:
        """Processes of `deployment`'s replicas in this service's own Ray (another may be running)."""
        return [pid for pid in _descendants(self.process.pid) if f"ServeReplica:default:{deployment}" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture(scope="session")
def sharded_service_process(bundle_dir, tmp_path_factory):
    """`dimerec-serve BUNDLE --shards 2` on Ray Serve with a 3 s request timeout and a 2 s head
    timeout, shared by the session; it must stop cleanly on SIGTERM."""
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
