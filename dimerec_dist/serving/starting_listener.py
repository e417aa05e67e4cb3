"""The sharded service's port from its first second: liveness, and readiness that says why not yet.

Starting the service takes a while (the bundle's checksums, Ray, Ray Serve's proxy, the shards
mapping and verifying their rows): tens of seconds on a small machine, longer at catalog scale.
A probe that finds nothing listening meanwhile restarts the pod. So `dimerec-serve` binds the
port at once with this small listener: `/health` answers 200 (live, not ready, and the phase),
`/health/ready` and every other path 503 with the phase and a Retry-After (readiness 200 once
the service behind the proxy is ready, for the moment the two share the port). Ray Serve's proxy
binds the same port with SO_REUSEPORT, as this listener does, so the two listen side by side
while the proxy comes up; once the service itself answers through the proxy, this one stops.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("dimerec.serve")


class StartingListener(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, host: str, port: int):
        self.phase = "starting"
        self.service_ready = False  # the service behind the proxy is ready: readiness says so here too
        super().__init__((host, port), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name="starting-listener", daemon=True)
        self._thread.start()

    def server_bind(self) -> None:
        # Ray Serve's proxy sets SO_REUSEPORT on its socket (SERVE_SOCKET_REUSE_PORT_ENABLED, on by
        # default): with it set here too, both may listen on the port at once during the handover.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        """Stop accepting and close the port (the proxy holds it from now on); once is enough."""
        if self._thread.is_alive():
            self.shutdown()
            self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("starting listener: %s %s", self.address_string(), fmt % args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "1")
        self.send_header("Connection", "close")  # the next request may find the service itself
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_GET(self) -> None:
        phase = self.server.phase
        if self.path == "/health":
            self._send(HTTPStatus.OK, {"live": True, "ready": self.server.service_ready, "starting": phase})
        elif self.path == "/health/ready" and self.server.service_ready:  # never ready, then not again
            self._send(HTTPStatus.OK, {"ready": True, "starting": phase})
        else:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"ready": False, "error": f"starting: {phase}"})

    def do_POST(self) -> None:
        self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"starting: {self.server.phase}; retry"})
