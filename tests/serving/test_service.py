"""The sharded service on Ray Serve (serving/service.py): the table spread over 2 shard
deployments answers what the single-process server answers, and is ready only once every
shard has loaded and verified its rows."""

import socket

import pytest

from tests.serving.conftest import call, dimerec_eval_top50, exact_top50_of_every_test_user

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def service(bundle_dir):
    from dimerec_dist.serving.service import build_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(bundle_dir, shards=2), blocking=False)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def test_two_shards_give_every_test_user_dimerec_evals_exact_top50(service, trained, bundle_dir, tiny_dataset):
    assert exact_top50_of_every_test_user(service, bundle_dir, tiny_dataset) == dimerec_eval_top50(trained, bundle_dir)


def test_ready_names_the_rows_of_every_shard(service):
    status, body = call(service, "/health/ready")
    assert status == 200 and body["ready"] is True
    assert body["shards"] == [[0, 150], [150, 301]], "301 rows (300 items and the padding row) in two halves"


def test_bad_requests_get_the_single_servers_400s(service):
    status, body = call(service, "/recommend", raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = call(service, "/recommend", {"history": ["1"], "k": 0})
    assert status == 400 and "'k' must be an integer" in body["error"]
    status, body = call(service, "/recommend/batch", {"requests": []})
    assert status == 400 and "1..1024 requests" in body["error"]
