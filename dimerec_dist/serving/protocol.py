"""The wire protocol of dimerec-serve, spoken alike by the single-process server (server.py)
and the sharded Ray Serve service (service.py): what a request may hold, and what an answer says.

    dimerec-serve bundles/quick --port 8080

    GET  /health            {"status": "ok", "items": ..., "dim": ..., "steps": ..., "index": ...}
    POST /recommend         {"history": ["v12", 7, ...], "k": 50}            -> {"items": [...], "scores": [...]}
         optional: "user" (the dataset's user id: the evaluation's x_T), "exclude_seen" (true),
                   "exact" (default: the index if the bundle has one)
    POST /recommend/batch   {"requests": [{...}, ...]}                       -> {"results": [{...}, ...]}

Ids are raw item ids, as strings or numbers. Unknown ids are ignored and listed in
"warnings"; a history with no known id gets the most popular items, with a warning.
A malformed request gets a 4xx with {"error": "..."} naming what is wrong.
"""

from __future__ import annotations

import json

from dimerec_dist.serving.bundle import Bundle
from dimerec_dist.serving.recommender import Recommendation, Request, RequestError

MAX_BODY_BYTES = 8 << 20
MAX_BATCH = 1024
MAX_ID_CHARS = 256  # a raw item id longer than this is not an id
INT64_MAX = 2**63 - 1  # integer ids and users are int64 everywhere downstream


def parse_request(body: object, where: str, num_items: int) -> Request:
    if not isinstance(body, dict):
        raise RequestError(f"{where}: expected a JSON object, got {type(body).__name__}")
    unknown = set(body) - {"history", "k", "user", "exclude_seen", "exact"}
    if unknown:
        raise RequestError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    history = body.get("history")
    if not isinstance(history, list):
        raise RequestError(f"{where}: 'history' must be a list of item ids, got {type(history).__name__}")
    for position, item in enumerate(history):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise RequestError(f"{where}: history[{position}] must be a string or an integer, got {_short(item)}")
        if isinstance(item, str) and len(item) > MAX_ID_CHARS:
            raise RequestError(
                f"{where}: history[{position}] is {len(item)} characters long, over the "
                f"{MAX_ID_CHARS} an item id may have"
            )
        if isinstance(item, int) and not -INT64_MAX - 1 <= item <= INT64_MAX:
            raise RequestError(f"{where}: history[{position}] is outside the 64-bit integer range")
    k = body.get("k", 50)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(num_items, 10_000):
        raise RequestError(f"{where}: 'k' must be an integer in 1..{min(num_items, 10_000)}, got {_short(k)}")
    user = body.get("user")
    if user is not None and (isinstance(user, bool) or not isinstance(user, int) or not 0 <= user <= INT64_MAX):
        raise RequestError(f"{where}: 'user' must be an integer in 0..2^63-1, got {_short(user)}")
    for flag in ("exclude_seen", "exact"):
        if flag in body and body[flag] is not None and not isinstance(body[flag], bool):
            raise RequestError(f"{where}: '{flag}' must be true or false, got {_short(body[flag])}")
    exclude_seen = body.get("exclude_seen")  # null is the default, as for "exact": never false by accident
    return Request(
        history=history,
        k=k,
        user=user,
        exclude_seen=True if exclude_seen is None else exclude_seen,
        exact=body.get("exact"),
    )


def _short(value: object) -> str:
    """A value as the error quotes it: never more than 60 characters of what the client sent."""
    huge = isinstance(value, int) and abs(value) >= 10**30
    text = f"an integer of {len(str(abs(value)))} digits" if huge else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_body(raw: bytes) -> object:
    """The JSON body, or a RequestError saying why not (a number too long for Python's int
    conversion, or nesting deeper than the parser's recursion, are errors of the request too)."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("body is nested too deeply (a request is at most 4 levels deep)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise RequestError(f"body holds a value that cannot be read: {' '.join(str(exc).split())[:120]}") from None


def parse_batch(body: object, num_items: int) -> list[Request]:
    """The requests of a /recommend/batch body (already parsed JSON)."""
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise RequestError('batch: expected {"requests": [...]}')
    if not 1 <= len(body["requests"]) <= MAX_BATCH:
        raise RequestError(f"batch: 1..{MAX_BATCH} requests, got {len(body['requests'])}")
    return [parse_request(r, f"requests[{i}]", num_items) for i, r in enumerate(body["requests"])]


def health_of(bundle: Bundle) -> dict:
    """What GET /health says of the bundle served."""
    m = bundle.manifest
    return {
        "status": "ok",
        "items": bundle.num_items,
        "dim": bundle.dim,
        "dtype": m["dtype"],
        "steps": m["steps"],
        "query_mode": m["query_mode"],
        "index": (m["index"] or {}).get("kind"),
    }


def answer(result: Recommendation) -> dict:
    out = {"items": result.items, "scores": result.scores}
    if result.warnings:
        out["warnings"] = result.warnings
    return out
