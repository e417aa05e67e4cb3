"""Two things Ray Serve's HTTP proxy (uvicorn) lacks, installed into its process by Ray's
`__ray_call__`:

- **A graceful stop.** Ray Serve 2.60's proxy shutdown is a no-op and `serve.shutdown` kills the
  proxy actor with its connections open, so a request it has read can be cut off. `stop_listening`
  asks the proxy's uvicorn server to exit: it closes the listening socket (a new connection is
  refused), closes idle keep-alive connections, and finishes every request it has read before its
  server task ends. dimerec-serve then shuts Ray Serve down.
- **A deadline on the request head.** uvicorn has no header timeout (encode/uvicorn#157, open since
  2018): Ray Serve's `request_timeout_s` starts once the head is parsed and `keep_alive_timeout_s`
  only covers idle time between requests, so a client that stops in the middle of its headers holds
  its connection for ever. `guard_request_heads` checks the proxy's connections every half second
  and answers 408 and closes one whose request head is not complete `seconds` after it began.

Both find uvicorn's server through the proxy's server task (the frame of `uvicorn.Server.serve`)
and read its connections' `cycle` and `timeout_keep_alive_task`: if a Ray or uvicorn upgrade moved
them, installing fails with ProxyGuardError, or the proxy's log says the deadline is off
(tests/serving/test_service.py exercises both on the pinned versions). Neither has a supported
setting in Ray Serve 2.60 (its `http_options` set the request and keep-alive timeouts only), so
this module is private API, checked against CHECKED_AGAINST as distributed/private_api.py is:
dimerec-serve logs a warning on other versions, and tests/serving/test_proxy_guard.py fails,
naming this module, when the installed Ray or uvicorn moves.
"""

from __future__ import annotations

import logging
import time

import ray

CHECKED_AGAINST = {"ray": "2.60.0", "uvicorn": "0.55.0"}  # the proxy internals below were read on these
_PROXY_NAME, _SERVE_NAMESPACE = "SERVE_PROXY_ACTOR", "serve"  # ray.serve._private.constants' names
_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class ProxyGuardError(RuntimeError):
    """The Ray Serve proxy is not shaped as this module expects (a Ray or uvicorn upgrade)."""


def versions_moved() -> dict[str, tuple[str, str]]:
    """{library: (checked, installed)} for each library whose installed version is not the one checked."""
    from importlib.metadata import version

    installed = {name: version(name) for name in CHECKED_AGAINST}
    return {
        name: (CHECKED_AGAINST[name], installed[name])
        for name in CHECKED_AGAINST
        if installed[name] != CHECKED_AGAINST[name]
    }


def warn_if_versions_moved() -> None:
    moved = versions_moved()
    if moved:
        logging.getLogger("dimerec.serve").warning(
            "serving/proxy_guard.py reaches into Ray Serve's proxy as read on %s; installed: %s. Check the "
            "graceful stop and the request-head deadline (tests/serving/test_proxy_guard.py, test_service.py)",
            ", ".join(f"{name} {checked}" for name, (checked, _) in moved.items()),
            ", ".join(f"{name} {now}" for name, (_, now) in moved.items()),
        )


def proxies() -> list:
    """Handles of the Ray Serve HTTP proxies now running (one per node)."""
    return [
        ray.get_actor(actor["name"], namespace=_SERVE_NAMESPACE)
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == _SERVE_NAMESPACE and actor["name"].startswith(_PROXY_NAME)
    ]


def guard_request_heads(seconds: float) -> int:
    """Install the request-head deadline in every proxy; returns how many were guarded."""
    warn_if_versions_moved()
    handles = proxies()
    ray.get([proxy.__ray_call__.remote(_install_head_deadline, seconds) for proxy in handles])
    return len(handles)


def stop_listening(timeout_s: float) -> None:
    """Every proxy refuses new connections and finishes the requests it has read; returns once they
    are answered, or raises TimeoutError after `timeout_s`."""
    handles = proxies()
    ray.get([proxy.__ray_call__.remote(_ask_to_exit, timeout_s) for proxy in handles])
    deadline = time.monotonic() + timeout_s
    while not all(ray.get([proxy.__ray_call__.remote(_exited) for proxy in handles])):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray Serve's proxy still had requests to answer after {timeout_s:g} s")
        time.sleep(0.05)


# What follows runs inside the proxy actor's process (`__ray_call__` passes the actor first).


def _server_task(actor):
    task = getattr(actor, "_running_http_server_task", None)
    if task is None:
        raise ProxyGuardError("the Ray Serve proxy has no `_running_http_server_task` (HTTP server not running?)")
    return task


def _uvicorn_server(actor):
    import uvicorn

    frame = _server_task(actor).get_coro().cr_frame
    server = None if frame is None else frame.f_locals.get("self")
    if not isinstance(server, uvicorn.Server) or not hasattr(server, "server_state"):
        raise ProxyGuardError(f"the Ray Serve proxy's server task does not run uvicorn.Server.serve ({server!r})")
    return server


def _ask_to_exit(actor, timeout_s: float) -> None:
    server, loop = _uvicorn_server(actor), _server_task(actor).get_loop()

    def exit_gracefully():
        server.config.timeout_graceful_shutdown = max(1, int(timeout_s))  # then in-flight work is cancelled
        server.should_exit = True  # uvicorn's own stop: close the listener, finish what was read

    loop.call_soon_threadsafe(exit_gracefully)


def _exited(actor) -> bool:
    return _server_task(actor).done()


def _install_head_deadline(actor, seconds: float) -> None:
    server, loop = _uvicorn_server(actor), _server_task(actor).get_loop()
    began: dict[int, tuple] = {}  # id(connection) -> (connection, when its current request head began)

    def reading_a_head(connection) -> bool:
        # A connection between requests waits on its keep-alive timer; one whose head is parsed has a
        # cycle still answering. Neither: it is receiving a request head (its first, or the next).
        cycle = connection.cycle
        return connection.timeout_keep_alive_task is None and (cycle is None or cycle.response_complete)

    def check():
        now, alive = time.monotonic(), set()
        for connection in list(server.server_state.connections):
            key = id(connection)
            alive.add(key)
            if not reading_a_head(connection):
                began.pop(key, None)
                continue
            if began.get(key, (None,))[0] is not connection:  # new, or an id a closed connection left behind
                began[key] = (connection, now)
            if now - began[key][1] > seconds and not connection.transport.is_closing():
                connection.transport.write(_TIMEOUT_ANSWER)
                connection.transport.close()
        for key in set(began) - alive:
            del began[key]
        if not _server_task(actor).done():
            loop.call_later(0.5, guarded_check)

    def guarded_check():
        try:
            check()
        except AttributeError as exc:  # uvicorn's connections changed shape: say so where it is seen, stop
            logging.getLogger("ray.serve").error("dimerec-serve's request-head deadline is off: %s", exc)

    loop.call_soon_threadsafe(guarded_check)
