"""The sharded service on Ray Serve (serving/service.py), started as users start it
(`dimerec-serve BUNDLE --shards 2`): the table spread over 2 shard deployments answers what
dimerec-eval answers, is ready only once every shard has loaded and verified its rows, shows
its metrics, times out stalled requests, and stops cleanly on SIGTERM."""

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.distributed.conftest import REPO, command_error
from tests.serving.conftest import call, dimerec_eval_top50, exact_top50_of_every_test_user

pytest.importorskip("ray.serve")


def test_two_shards_give_every_test_user_dimerec_evals_exact_top50(sharded_service, trained, bundle_dir, tiny_dataset):
    assert exact_top50_of_every_test_user(sharded_service, bundle_dir, tiny_dataset) == dimerec_eval_top50(
        trained, bundle_dir
    )


def test_ready_names_the_rows_of_every_shard_and_requests_are_answered(sharded_service):
    status, body = call(sharded_service, "/health/ready")
    assert status == 200 and body["ready"] is True
    status, answer = call(sharded_service, "/recommend", {"history": ["1"], "k": 3})
    assert status == 200 and len(answer["items"]) == 3
    assert body["shards"] == [[0, 150], [150, 301]], "301 rows (300 items and the padding row) in two halves"


def test_metrics_parse_as_prometheus_text_and_count_what_was_asked(sharded_service):
    from prometheus_client.parser import text_string_to_metric_families

    before = _samples(sharded_service)
    call(sharded_service, "/recommend", {"history": ["1", "2"], "k": 5})
    call(sharded_service, "/recommend", {"history": "not a list"})
    after = _samples(sharded_service)
    ok = ("dimerec_requests_total", (("code", "200"), ("endpoint", "/recommend")))
    bad = ("dimerec_requests_total", (("code", "400"), ("endpoint", "/recommend")))
    assert after[ok] == before.get(ok, 0) + 1 and after[bad] == before.get(bad, 0) + 1
    for shard in ("0", "1"):
        assert after[("dimerec_shard_seconds_count", (("shard", shard),))] > 0
    assert after[("dimerec_batch_size_count", ())] > 0
    assert after[("dimerec_request_seconds_count", (("endpoint", "/recommend"),))] >= 2
    names = {family.name for family in text_string_to_metric_families(_text(sharded_service))}
    assert {"dimerec_requests", "dimerec_request_seconds", "dimerec_shard_seconds", "dimerec_batch_size"} <= names


def test_liveness_and_the_openapi_schema(sharded_service):
    status, body = call(sharded_service, "/health")
    assert status == 200 and body["status"] == "ok" and body["shards"] == 2 and body["items"] == 300
    status, schema = call(sharded_service, "/openapi.json")
    assert status == 200 and {"/recommend", "/recommend/batch", "/health", "/health/ready", "/metrics"} <= set(
        schema["paths"]
    )


def _text(url) -> str:

    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def _samples(url) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(_text(url))
        for sample in family.samples
    }


def test_dimerec_serve_refuses_a_damaged_bundle_in_one_line_before_starting_ray(bundle_dir, tmp_path):

    copy = tmp_path / "damaged"
    shutil.copytree(bundle_dir, copy)
    part = next((copy / "items").glob("part-*.npy"))
    data = bytearray(part.read_bytes())
    data[-1] ^= 1
    part.write_bytes(data)
    assert part.name in command_error("dimerec_dist.serving.serve_cli", str(copy), "--shards", "2", "--port", "0")


def test_a_stalled_body_gets_a_408_and_a_negative_content_length_a_400(sharded_service):

    host, port = sharded_service.removeprefix("http://").split(":")

    def first_line(data: bytes) -> tuple[str, float]:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            started = time.time()
            sock.sendall(data)
            return sock.recv(4096).split(b"\r\n")[0].decode(), time.time() - started

    line, waited = first_line(b'POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"hist')
    assert line == "HTTP/1.1 408 Request Timeout" and waited < 10, (line, waited)
    line, _ = first_line(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}")
    assert line == "HTTP/1.1 400 Bad Request"


def test_a_request_head_that_stalls_gets_a_408_after_the_header_timeout(sharded_service):
    """uvicorn has no header timeout of its own: dimerec-serve's guard in the proxy gives one (2 s here)."""
    host, port = sharded_service.removeprefix("http://").split(":")
    for partial in (b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Le", b""):  # half a head; nothing at all
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            started = time.time()
            sock.sendall(partial)
            answer = sock.recv(4096)
            waited = time.time() - started
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout") and 1.5 < waited < 8, (partial, answer, waited)
    status, _ = call(sharded_service, "/health")
    assert status == 200, "and the service goes on answering"


def test_sigterm_under_load_answers_every_request_it_read(bundle_dir):
    """8 clients send requests on fresh connections while the command is signalled. Every request the
    service read is answered: the clients receive exactly as many answers as the service says it gave
    (its last line). The others are refused at connect once the proxy stops listening; a connection
    the kernel completed but the proxy never read when it closed its listening socket is reset, which
    can happen at most once per client."""

    command = [
        sys.executable,
        "-m",
        "dimerec_dist.serving.serve_cli",
        str(bundle_dir),
        *("--shards", "2", "--port", "0", "--drain-grace-s", "1"),
    ]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcomes, stop = [], threading.Event()
    try:
        line = server.stdout.readline()
        assert line.startswith("listening on"), line + server.stderr.read()[-3000:]
        host, port = line.split()[-1].removeprefix("http://").split(":")
        body = json.dumps({"history": ["1", "2", "3"], "k": 10})

        def client():
            while not stop.is_set():
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    connection.connect()
                except OSError:
                    outcomes.append("refused")
                    time.sleep(0.05)
                    continue
                try:
                    connection.request("POST", "/recommend", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    response.read()
                    outcomes.append(response.status)
                except OSError:
                    outcomes.append("reset")
                finally:
                    connection.close()

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=120)
        assert server.returncode == 0, err[-3000:]
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        stop.set()
        if server.poll() is None:
            server.kill()
            server.wait()
    (last,) = [line for line in out.splitlines() if line.endswith(" recommendation requests answered")]
    said_answered = int(last.split()[1])
    received = [o for o in outcomes if isinstance(o, int)]
    assert said_answered > 20 and len(received) == said_answered, (said_answered, len(received))
    assert set(received) == {200}, sorted(set(received))
    assert outcomes.count("refused") > 0 and outcomes.count("reset") <= len(threads), sorted(map(str, outcomes))
