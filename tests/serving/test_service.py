"""The sharded service on Ray Serve (serving/service.py), started as users start it
(`dimerec-serve BUNDLE --shards 2`): the table spread over 2 shard deployments answers what
dimerec-eval answers, is ready only once every shard has loaded and verified its rows, shows
its metrics, times out stalled requests, and stops cleanly on SIGTERM."""

import json
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.distributed.conftest import command_error
from tests.serving.conftest import call, dimerec_eval_top50, exact_top50_of_every_test_user
from tests.serving.load_clients import Load, assert_every_request_read_was_answered
from tests.serving.service_process import Service

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


def test_the_port_answers_liveness_from_the_start_and_readiness_503_until_ready(sharded_service_process):
    """While the bundle is verified and Ray, Ray Serve and the shards start, /health is 200 and
    /health/ready a 503 from the first probe on, until the service itself is ready (before: one
    404, then ~26 s without an answer). Once Ray Serve's proxy shares the port, a probe that
    reaches it before the service is up may get its 404 or wait, never a false "ready"; one the
    listener answers says 503 until Ray Serve reports the application running, a moment after
    the service's own readiness; one in the listener's accept queue as it closes is reset."""
    probes = sharded_service_process.start_probes
    assert probes, "the service printed where it starts before it was ready"
    first_second = [status for at, path, status in probes if path == "/health" and at < probes[0][0] + 1.0]
    assert 200 in first_second, probes[:6]
    live = [status for _, path, status in probes if path == "/health"]
    ready = [status for _, path, status in probes if path == "/health/ready"]
    assert live.count(200) >= len(live) // 2, probes
    assert ready[0] == 503, probes  # a 200 comes only from the service itself, once its shards answer
    assert not set(ready) - {200, 503, 404, "TimeoutError", "ConnectionResetError", "RemoteDisconnected", "URLError"}, (
        probes
    )


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


def test_under_load_a_killed_replica_costs_no_request_and_sigterm_drops_none(bundle_dir, tmp_path):
    """One shard of 2 replicas under 8 clients. A replica is killed: Ray Serve sends its requests to
    the other one and no client sees an error. Then SIGTERM: every request the service read is
    answered (the clients receive exactly as many answers as the service says it gave, its last
    line); the others are refused at connect once the proxy stops listening. A connection the
    kernel completed but the proxy never read when it closed its listening socket is reset, which
    can happen at most once per client."""
    service = Service(bundle_dir, tmp_path, "--shards", "1", "--replicas", "2", "--drain-grace-s", "0.5")
    load = None
    try:
        (victim, survivor) = service.replica_pids("shard-0")
        load = Load(service.url)
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)
        time.sleep(2)
        assert set(load.outcomes) == {200}, sorted(map(str, set(load.outcomes)))
        out = service.stop()
        outcomes = load.stop()
    finally:
        if load is not None:
            load.stop()
        service.kill()
    assert_every_request_read_was_answered(out, outcomes)
    assert outcomes.count("reset") <= len(load.threads), sorted(map(str, outcomes))


def test_a_shard_with_no_replica_answering_gets_a_503_with_retry_after(sharded_service_process):
    """Shard 1's only replica stopped (SIGSTOP: alive, answering nothing): a request is answered 503
    with Retry-After at 0.8 of the 3 s request timeout, naming the shard, never a 500 or a dropped
    connection; resumed, the shard answers again."""
    service = sharded_service_process
    (replica,) = service.replica_pids("shard-1")
    body = json.dumps({"history": ["1", "2"], "k": 5}).encode()
    request = urllib.request.Request(service.url + "/recommend", data=body, method="POST")
    os.kill(replica, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        waited = time.monotonic() - started
    finally:
        os.kill(replica, signal.SIGCONT)
    assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "1"
    assert "shard 1" in json.loads(refused.value.read())["error"]
    assert waited >= 2.0, waited  # it waited shard_wait_s (0.8 x 3 s) for the shard, then answered, before the proxy
    deadline = time.time() + 60
    while call(service.url, "/health/ready")[0] != 200:
        assert time.time() < deadline, "the resumed replica did not answer again"
        time.sleep(0.5)
    assert call(service.url, "/recommend", {"history": ["1", "2"], "k": 5})[0] == 200


def test_a_shard_whose_only_replica_died_gets_503s_until_it_is_back(sharded_service_process):
    """With one replica per shard, a killed replica's requests wait for Ray Serve to restart it; those
    still waiting at 0.8 of the request timeout (3 s here) get a 503 with Retry-After, never a 500
    or a dropped connection, and the service is whole again once the replica is back."""
    service = sharded_service_process
    (victim,) = service.replica_pids("shard-1")
    load = Load(service.url, clients=4)
    try:
        time.sleep(1)
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 90
        while call(service.url, "/health/ready")[0] != 200:
            assert time.time() < deadline, "the shard's replica did not come back"
            time.sleep(0.5)
        time.sleep(1)
    finally:
        outcomes = load.stop()
    assert set(outcomes) <= {200, 503} and outcomes.count(200) > 10, sorted(map(str, set(outcomes)))
    assert outcomes[-4:] == [200] * 4, "answering again once the replica is back"
    (new,) = service.replica_pids("shard-1")
    assert new != victim
    status, body = call(service.url, "/recommend", {"history": ["1", "2"], "k": 5})
    assert status == 200 and len(body["items"]) == 5
