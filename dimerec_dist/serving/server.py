"""dimerec-serve --single-process: the bundle served by this process over HTTP (the
standard library's threaded server), requests gathered into micro-batches (batcher.py).
The wire protocol, which the Ray Serve service speaks too, is protocol.py's.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from dimerec_dist.serving.batcher import MicroBatcher
from dimerec_dist.serving.bundle import Bundle, BundleError
from dimerec_dist.serving.protocol import MAX_BODY_BYTES, answer, health_of, parse_batch, parse_body, parse_request
from dimerec_dist.serving.recommender import Recommender, RequestError

log = logging.getLogger("dimerec.serve")


class BodyError(RequestError):
    """A request body that cannot be read: answered with `status`, and the connection closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_chunked(stream) -> bytes:
    """A chunked body (RFC 9112 7.1): hex-sized chunks, a zero-size one, then trailer lines."""
    body = bytearray()
    while True:
        line = stream.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BodyError(HTTPStatus.BAD_REQUEST, f"a malformed chunk size line {line[:40]!r}") from None
        if size < 0 or len(body) + size > MAX_BODY_BYTES:
            raise BodyError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
        if size == 0:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers: read and dropped
                pass
            return bytes(body)
        chunk = stream.read(size)
        if len(chunk) < size or stream.readline(1024) not in (b"\r\n", b"\n"):
            raise BodyError(HTTPStatus.BAD_REQUEST, "a chunk shorter than its size or not ended by CRLF")
        body += chunk


DRAIN_TIMEOUT_S = 60.0  # on SIGTERM, the longest the requests already read are waited for


def make_handler(batcher: MicroBatcher, health: dict) -> type[BaseHTTPRequestHandler]:
    recommender = batcher.recommender

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: load tests and clients reuse connections

        def setup(self):
            super().setup()
            # Headers and body go out as two writes; without NODELAY, Nagle holds the body back
            # until the client's delayed ACK (~40 ms per request on Linux).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, fmt: str, *args: object) -> None:  # one line per request at DEBUG, not stderr noise
            log.debug("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            """The request's body, by Content-Length or in chunks (Transfer-Encoding: chunked)."""
            coding = self.headers.get("Transfer-Encoding")
            if coding is not None:
                if coding.strip().lower() != "chunked":
                    raise BodyError(
                        HTTPStatus.NOT_IMPLEMENTED, f"Transfer-Encoding {coding!r}: only chunked is supported"
                    )
                if "Content-Length" in self.headers:  # which one frames the body is ambiguous: a smuggling trick
                    raise BodyError(HTTPStatus.BAD_REQUEST, "both Content-Length and Transfer-Encoding: send one")
                return read_chunked(self.rfile)
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0:
                raise BodyError(HTTPStatus.BAD_REQUEST, "Content-Length must be a non-negative integer")
            if length > MAX_BODY_BYTES:
                raise BodyError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            return self.rfile.read(length)

        def do_GET(self):
            if self.path == "/health":
                self._send(HTTPStatus.OK, health)
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: GET {self.path}"})

        def do_POST(self):
            if not self.server.admit(self):
                self.close_connection = True  # arrived after the drain ended: never read, never answered
                return
            try:
                self._recommend()
            finally:
                self.server.done()

        def _recommend(self):
            if self.path not in ("/recommend", "/recommend/batch"):
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {self.path}"})
                return
            try:
                raw = self._body()
            except BodyError as exc:  # the body's end is unknown: the connection cannot carry another request
                self.close_connection = True
                self._send(exc.status, {"error": str(exc)})
                return
            try:
                body = parse_body(raw)
                if self.path == "/recommend":
                    requests = [parse_request(body, "request", recommender.bundle.num_items)]
                else:
                    requests = parse_batch(body, recommender.bundle.num_items)
                results = batcher.recommend(requests)
            except RequestError as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            except Exception as exc:  # a bug of ours: the client gets an answer, the log the traceback
                log.exception("request failed")
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(exc).__name__})"})
                return
            if self.path == "/recommend":
                self._send(HTTPStatus.OK, answer(results[0]))
            else:
                self._send(HTTPStatus.OK, {"results": [answer(r) for r in results]})

    return Handler


class _Server(ThreadingHTTPServer):
    """Counts the recommendation requests in flight, so a stop can drain them (`drain`)."""

    daemon_threads = True
    request_queue_size = 256  # the listen backlog: the default 5 resets bursts of new connections

    def server_activate(self) -> None:
        super().server_activate()
        self.lock = threading.Condition()
        self.in_flight = self.answered = 0
        self.draining = self.closed = False

    def admit(self, handler: BaseHTTPRequestHandler) -> bool:
        """Whether a request read now is answered; while draining, its connection closes after it."""
        with self.lock:
            if self.closed:
                return False
            self.in_flight += 1
            handler.close_connection = handler.close_connection or self.draining
            return True

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self.answered += 1
            self.lock.notify_all()

    def drain(self, timeout_s: float) -> int:
        """Stop listening, answer every request already read (up to `timeout_s`), and return how many
        recommendation requests were answered in all. Call after serve_forever has returned."""
        with self.lock:
            self.draining = True
        self.socket.close()  # new connections are refused from now on
        with self.lock:
            self.lock.wait_for(lambda: self.in_flight == 0, timeout=timeout_s)
            self.closed = True
            return self.answered


def make_server(
    bundle_dir: Path, host: str, port: int, verify: bool = True, max_batch: int = 64, max_wait_ms: float = 0.0
) -> ThreadingHTTPServer:
    started = time.time()
    if not verify:
        log.warning("serving %s without verifying its checksums (--no-verify)", bundle_dir)
    bundle = Bundle(bundle_dir, verify=verify)
    recommender = Recommender(bundle)
    m = bundle.manifest
    health = {**health_of(bundle), "start_s": round(time.time() - started, 3)}
    server = _Server((host, port), make_handler(MicroBatcher(recommender, max_batch, max_wait_ms), health))
    log.info(
        "serving %s (%d items, %s, %d step(s), index %s) on http://%s:%d, ready in %.2fs",
        bundle_dir,
        bundle.num_items,
        m["dtype"],
        m["steps"],
        health["index"],
        host,
        server.server_address[1],
        health["start_s"],
    )
    return server


def serve_single_process(args) -> int:
    """This process serves the bundle (dimerec-serve --single-process), until Ctrl-C."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        server = make_server(args.bundle, args.host, args.port, args.verify, args.max_batch, args.max_wait_ms)
    except BundleError as exc:
        print(f"dimerec-serve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port taken between the check at start and the bind
        print(f"dimerec-serve: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    stopping = threading.Event()

    def stop(*_) -> None:  # SIGTERM or Ctrl-C: as the sharded service, every request already read is answered
        if not stopping.is_set():
            stopping.set()
            with server.lock:
                server.draining = True  # responses from now on close their connections
            threading.Thread(target=server.shutdown, daemon=True).start()  # serve_forever's loop ends

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    server.serve_forever()
    answered = server.drain(DRAIN_TIMEOUT_S)
    print(f"stopped: {answered} recommendation requests answered", flush=True)
    return 0
