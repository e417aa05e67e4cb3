"""Requests and starts a careless client or operator makes: `"exclude_seen": null`, a chunked
body, a port already taken, a host that does not resolve. Each was answered wrongly or with a
traceback before (issue #50)."""

import http.client
import json
import socket
import time
from urllib.parse import urlparse

import pytest

from dimerec_dist.serving import serve_cli
from dimerec_dist.serving.bundle import Bundle
from tests.serving.conftest import call
from tests.serving.load_clients import Load, assert_every_request_read_was_answered
from tests.serving.service_process import Service


def test_exclude_seen_null_is_the_default_on_both_servers(server, bundle_dir):
    history = Bundle(bundle_dir).raw_ids(list(range(1, 41)))
    _, default = call(server, "/recommend", {"history": history, "k": 50})
    code, null = call(server, "/recommend", {"history": history, "k": 50, "exclude_seen": None})
    _, included = call(server, "/recommend", {"history": history, "k": 50, "exclude_seen": False})
    assert code == 200 and null["items"] == default["items"]
    assert not set(null["items"]) & set(history), "null never turns exclude_seen off"
    assert set(included["items"]) & set(history), "the history is popular enough that excluding it shows"


def _connection(url: str) -> http.client.HTTPConnection:
    address = urlparse(url)
    return http.client.HTTPConnection(address.hostname, address.port, timeout=10)


def test_a_chunked_body_is_read_whole_and_the_connection_goes_on(single_server, bundle_dir):
    history = Bundle(bundle_dir).raw_ids([1, 2, 3])
    body = json.dumps({"history": history, "k": 5}).encode()
    _, expected = call(single_server, "/recommend", {"history": history, "k": 5})
    # The body in three chunks; the old server read no body, answered 400 and took the chunk
    # bytes for a request of their own. A request written inside a chunk must not be answered.
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    connection = _connection(single_server)
    connection.putrequest("POST", "/recommend")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Content-Type", "application/json")
    connection.endheaders()
    pieces = [body[:7], body[7:20], body[20:]]
    connection.send(b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n")
    reply = connection.getresponse()
    assert reply.status == 200 and json.loads(reply.read())["items"] == expected["items"]
    connection.request("GET", "/health")  # the same connection: nothing of the body was left behind
    reply = connection.getresponse()
    assert reply.status == 200 and "items" in json.loads(reply.read())
    connection.close()
    # A chunk holding a request line is only body: one answer (a 400 for bad JSON), never two.
    with socket.create_connection(urlparse(single_server).netloc.split(":")) as raw:
        raw.settimeout(5)
        head = b"POST /recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        raw.sendall(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled))
        answers = b""
        while chunk := raw.recv(65536):
            answers += chunk
    assert answers.count(b"HTTP/1.1 ") == 1 and answers.startswith(b"HTTP/1.1 400"), answers[:200]


@pytest.mark.parametrize(
    "headers, status, message",
    [
        ({"Transfer-Encoding": "gzip"}, 501, "only chunked is supported"),
        ({"Transfer-Encoding": "chunked", "Content-Length": "5"}, 400, "both Content-Length and Transfer-Encoding"),
    ],
)
def test_a_body_the_server_cannot_frame_is_refused_and_the_connection_closed(single_server, headers, status, message):
    connection = _connection(single_server)
    connection.putrequest("POST", "/recommend")
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(b"5\r\nhello\r\n0\r\n\r\n")
    reply = connection.getresponse()
    assert reply.status == status and message in json.loads(reply.read())["error"]
    assert reply.getheader("Connection") == "close"
    connection.close()


@pytest.mark.parametrize("single_process", [True, False], ids=["single-process", "sharded"])
def test_a_port_in_use_is_one_line_before_anything_starts(bundle_dir, capsys, single_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [str(bundle_dir), "--port", str(port)] + (["--single-process"] if single_process else [])
        code = serve_cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"dimerec-serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_host_that_does_not_resolve_is_one_line(bundle_dir, capsys):
    code = serve_cli.main([str(bundle_dir), "--host", "no-such-host.invalid", "--single-process"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("dimerec-serve: error: --host 'no-such-host.invalid' cannot be resolved")
    assert err.count("\n") == 0


def test_the_single_process_server_answers_every_request_it_read_on_sigterm(bundle_dir, tmp_path):
    """As the sharded service: on SIGTERM it stops listening and answers what it has read; the clients
    receive exactly as many answers as it says it gave, all 200 (before, requests in flight were cut)."""
    service = Service(bundle_dir, tmp_path, "--single-process")
    load = None
    try:
        load = Load(service.url)
        time.sleep(2)
        out = service.stop()
        outcomes = load.stop()
    finally:
        if load is not None:
            load.stop()
        service.kill()
    assert_every_request_read_was_answered(out, outcomes)
