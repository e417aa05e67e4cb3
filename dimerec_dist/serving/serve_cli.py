"""dimerec-serve: a bundle's recommendations over HTTP, on Ray Serve, sharded.

    dimerec-serve bundles/quick                                   # local Ray, one shard, port 8080
    dimerec-serve bundles/big --shards 4 --replicas 2 --host 0.0.0.0 --port 8080
    RAY_ADDRESS=ray://head:10001 dimerec-serve /shared/bundles/big --shards 16   # on a Ray cluster
    dimerec-serve bundles/quick --single-process                  # no Ray: the standard-library server

The endpoints and their JSON are docs/SERVING.md's. The service runs until SIGTERM or
Ctrl-C; then readiness turns false (a load balancer stops sending), requests are still
answered for --drain-grace-s, the proxy stops listening (new connections are refused) and
answers every request it has read, and only then does Ray Serve shut down. The last line
printed says how many recommendation requests were answered.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from dimerec_dist.runtime.cli_numbers import integer, real
from dimerec_dist.runtime.log_level import add_log_level, apply_log_level, our_level, setup_command_logging
from dimerec_dist.runtime.storage import StorageError, is_remote, local_copy, local_path
from dimerec_dist.serving.bundle import Bundle, BundleError
from dimerec_dist.serving.starting_listener import StartingListener

log = logging.getLogger("dimerec.serve")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dimerec-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "bundle", help="the bundle's directory: a path, or s3://, gs://, ... (copied to this node first)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=integer(0, 65535), default=8080, help="0: any free port (printed)")
    parser.add_argument("--shards", type=integer(1), default=1, help="shard deployments the table is spread over")
    parser.add_argument("--replicas", type=integer(1), default=1, help="replicas of each shard")
    parser.add_argument(
        "--request-timeout-s",
        type=real(0, above=True),
        default=60.0,
        help="a request not answered in this time, a stalled body included, gets a 408; one waiting on a "
        "shard with no replica answering (a replica restarting) gets a 503 after 0.8 of it",
    )
    parser.add_argument(
        "--header-timeout-s",
        type=real(0, above=True),
        default=10.0,
        help="a connection whose request head (line and headers) is not complete in this time gets a 408",
    )
    parser.add_argument(
        "--drain-grace-s",
        type=real(0),
        default=0.0,
        help="on SIGTERM: seconds of answering with readiness false before the proxy stops listening",
    )
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the checksums at start (logged)")
    parser.add_argument(
        "--single-process", action="store_true", help="the standard-library server in this process, without Ray"
    )
    parser.add_argument("--threads", type=integer(0), default=0, help="--single-process: torch threads (0: default)")
    parser.add_argument("--max-batch", type=integer(1), default=64, help="--single-process: requests scored together")
    parser.add_argument("--max-wait-ms", type=real(0), default=0.0, help="--single-process: wait for company")
    add_log_level(parser)  # DEBUG also logs every request
    args = parser.parse_args(argv)
    apply_log_level(args)
    try:
        level = our_level()
    except ValueError as exc:  # a DIMEREC_LOG_LEVEL that is not a level
        parser.error(str(exc))
    setup_command_logging()
    try:
        check_listen_address(args.host, args.port)
        args.bundle = local_bundle(args.bundle)
    except (StorageError, OSError) as exc:
        print(f"dimerec-serve: error: {exc}", file=sys.stderr)
        return 2
    if args.single_process:
        from dimerec_dist.serving.server import serve_single_process

        return serve_single_process(args)
    try:
        return serve_sharded(args, level)
    except (BundleError, ValueError) as exc:
        print(f"dimerec-serve: error: {exc}", file=sys.stderr)
        return 2


def check_listen_address(host: str, port: int) -> None:
    """Refuse, in one line and before the bundle is loaded, a --host that does not resolve or a --port
    another process listens on (the server binds the same way: the address reusable)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(f"--host {host!r} cannot be resolved ({exc.strerror})") from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def local_bundle(bundle: str) -> Path:
    """The bundle to serve from local disk (memory maps need local files): a bundle on an object
    store is copied to this node's cache first (bundle.json last; reused while it is unchanged)."""
    if not is_remote(bundle):
        return local_path(bundle)
    from dimerec_dist.runtime.storage import cache_root

    local = local_copy(bundle, cache_root(), "bundle.json")
    log.info("serving %s from its copy in %s", bundle, local)
    return local


def serve_sharded(args, level: int) -> int:
    # The port answers from the first second: liveness, and a readiness 503 naming what is starting.
    starting = StartingListener(args.host, args.port)
    port = starting.port
    log.info("starting on http://%s:%d (/health answers now, /health/ready once the shards are up)", args.host, port)
    try:
        return _serve_sharded(args, level, starting, port)
    finally:
        starting.stop()


def _serve_sharded(args, level: int, starting: StartingListener, port: int) -> int:
    import ray
    from ray import serve

    from dimerec_dist.serving.proxy_guard import guard_request_heads, stop_listening
    from dimerec_dist.serving.service import build_app, shard_rows

    # Checked here, before Ray starts, so a damaged bundle is one line: on this machine the shards then
    # map files already verified; on a cluster (RAY_ADDRESS) each shard verifies the parts it maps.
    starting.phase = "verifying the bundle's checksums"
    bundle = Bundle(args.bundle, verify=args.verify)
    shards_verify = args.verify and bool(os.environ.get("RAY_ADDRESS"))
    shard_rows(bundle.num_items + 1, args.shards)  # a --shards the table cannot take: one line, before Ray
    if not args.verify:
        log.warning("serving %s without verifying its checksums (--no-verify)", args.bundle)
    # A Ray of its own on this machine unless RAY_ADDRESS names a cluster ("local": never join another).
    starting.phase = "starting Ray"
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, logging_level=level)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        logs = serve_logging(level)
        starting.phase = "starting Ray Serve"
        if os.environ.get("SERVE_SOCKET_REUSE_PORT_ENABLED", "1") != "1":
            starting.stop()  # the proxy could not bind beside it
        serve.start(http_options=http_options(args.host, port, args.request_timeout_s), logging_config=logs)
        starting.phase = "loading the shards"
        try:
            ingress = serve.run(
                build_app(
                    args.bundle.resolve(), args.shards, args.replicas, shards_verify, 0.8 * args.request_timeout_s
                ),
                blocking=False,
                logging_config=logs,
            )
        except Exception as exc:  # a shard that cannot load its parts (a bad checksum, say) fails the start
            print(f"dimerec-serve: error: {_cause(exc)}", file=sys.stderr)
            return 2
        guard_request_heads(args.header_timeout_s)
        starting.phase, starting.service_ready = "handing the port to the service", True
        served_through_proxy(args.host, port)
        starting.stop()
        print(f"listening on http://{args.host}:{port}", flush=True)
        log.info("serving %s: %d shard(s) x %d replica(s)", args.bundle, args.shards, args.replicas)
        stop.wait()
        log.info("stopping: not ready from now, answering for %g s more, then no new connections", args.drain_grace_s)
        ingress.drain.remote().result(timeout_s=args.request_timeout_s)
        time.sleep(args.drain_grace_s)
        stop_listening(timeout_s=args.request_timeout_s + 5)
        answered = ingress.requests_answered.remote().result(timeout_s=args.request_timeout_s)
        print(f"stopped: {answered} recommendation requests answered", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def http_options(host: str, port: int, request_timeout_s: float) -> dict:
    """Ray Serve's proxy (uvicorn): a request whose body stalls, or that is not answered in time, gets a
    408 and its connection closed; an idle keep-alive connection is closed after 30 s."""
    return {"host": host, "port": port, "request_timeout_s": request_timeout_s, "keep_alive_timeout_s": 30}


def serve_logging(level: int) -> dict:
    """Ray Serve's components log at --log-level; a line per request (its access log) only at DEBUG."""
    return {"log_level": logging.getLevelName(level), "enable_access_log": level <= logging.DEBUG}


def _cause(exc: Exception) -> str:
    """The innermost error's own line, not Ray's wrapping of it."""
    text = str(exc)
    for line in reversed(text.splitlines()):
        if "BundleError" in line or "Error:" in line:
            return line.strip()[:400]
    return " ".join(text.split())[:400]


def served_through_proxy(host: str, port: int, timeout_s: float = 60.0) -> None:
    """Wait until a new connection to the port reaches the service itself (its /health names the
    shards; the starting listener's does not): then the listener can let go of the port."""
    import json
    import urllib.request

    address = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    url = f"http://{f'[{address}]' if ':' in address else address}:{port}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if "shards" in json.loads(response.read()):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    log.warning("the service did not answer through its proxy within %.0f s; the port is handed over anyway", timeout_s)


if __name__ == "__main__":
    sys.exit(main())
