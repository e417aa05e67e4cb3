"""The sharded retrieval service on Ray Serve: a catalog spread over shard deployments.

    app = build_app(Path("bundles/big"), shards=4, replicas=2)
    serve.run(app)                     # dimerec-serve BUNDLE --shards 4 --replicas 2 does this

A shard deployment (`TableShard`) maps a contiguous range of the table's rows (slices of the
bundle's memory-mapped parts, whatever the number of parts the export wrote), verifies the
checksums of the parts it maps, and answers the exact top-k of its rows with their scores
(ExactSearch).
The ingress (`Ingress`) holds what every request needs once (the vocabulary, the user tower,
the popularity fallback, the approximate index if any), runs the tower once per batch of
requests (Ray Serve's own batching), sends the batch's queries to every shard at once and
merges their answers with the evaluation's tie-break, so the top-k equals the single-process
server's and dimerec-eval's. `--replicas` runs each shard several times; Ray Serve spreads
requests over a shard's replicas. A replica that dies costs no request: Ray Serve's router
sends its requests to another replica of the shard, or holds them until the controller has
restarted it (a few seconds; tests/serving/test_service.py), and a call that still fails is
asked again; a shard with no replica answering by `shard_wait_s` gets the client a 503.
"""

# No `from __future__ import annotations`: FastAPI reads the route methods' annotations as objects to
# know which parameter is the HTTP request, and Ray Serve's ingress wrapper hides the module's names.
import asyncio
import concurrent.futures
import logging
import os
import time
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

from dimerec_dist.evaluation.ranking import merge_topk
from dimerec_dist.serving.bundle import Bundle, TablePart
from dimerec_dist.serving.exact_search import ExactSearch
from dimerec_dist.serving.protocol import answer, health_of, parse_batch, parse_body, parse_request
from dimerec_dist.serving.recommender import Recommendation, Recommender, Request, RequestError

log = logging.getLogger("dimerec.serve")
BATCH_WAIT_S = 0.02  # how long a batch waits for company while other requests are in flight
api = FastAPI(title="dimerec-serve", description="Recommendations from a DimeRec bundle, sharded over Ray Serve.")


def shard_rows(num_rows: int, shards: int) -> list[tuple[int, int]]:
    """Rows [first, last) of each of `shards` shards: contiguous, of equal size within one row."""
    if not 1 <= shards <= num_rows:
        raise ValueError(f"--shards {shards} must lie in 1..{num_rows} (the table's rows)")
    bounds = [num_rows * s // shards for s in range(shards + 1)]
    return list(zip(bounds, bounds[1:]))


def parts_within(bundle: Bundle, first: int, last: int) -> tuple[list[TablePart], list[int]]:
    """Rows [first, last) of the table as slices of the bundle's mapped parts, and which parts they cut."""
    pieces, indices = [], []
    for index, part in enumerate(bundle.parts):
        start, stop = max(first, part.first), min(last, part.last)
        if start < stop:
            local = slice(start - part.first, stop - part.first)
            scale = None if part.scale is None else part.scale[local]
            pieces.append(TablePart(start, stop, part.rows[local], scale))
            indices.append(index)
    return pieces, indices


# Ray's CPU accounting is logical; a shard is bounded by its memory and its torch threads (set below),
# so deployments reserve none, and a 2-core machine can still run an ingress and several shards.
@serve.deployment(ray_actor_options={"num_cpus": 0})
class TableShard:
    """Rows [first, last) of the bundle's table: their exact top-k, with scores."""

    def __init__(self, bundle_dir: str, first: int, last: int, verify: bool = True, threads: int = 0):
        bundle = Bundle(bundle_dir, verify=False)
        self.parts, indices = parts_within(bundle, first, last)
        if verify:
            bundle.verify(only=bundle.part_files(indices))  # a shard reads the parts it maps, no others
        self.search = ExactSearch(self.parts, bundle.cosine)
        # Every search on one thread of its own, with `threads` torch threads: OpenMP's thread count
        # belongs to the calling thread and Ray starts workers with OMP_NUM_THREADS=1, and a search
        # called from Ray Serve's threads ran at 1.4x the time it takes in a plain process.
        self.searcher = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, initializer=torch.set_num_threads, initargs=(threads or torch.get_num_threads(),)
        )

    async def topk(self, queries: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(values, ids) of its rows' top-k, and the seconds the search took here."""
        return await asyncio.get_running_loop().run_in_executor(self.searcher, self._topk, queries, seen, k)

    def _topk(self, queries: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        started = time.perf_counter()
        values, ids = self.search.topk(torch.from_numpy(queries), torch.from_numpy(seen), k)
        return values.numpy(), ids.numpy(), time.perf_counter() - started

    def rows(self) -> tuple[int, int]:
        """[first, last) of the rows it holds: answered once the parts are loaded and verified."""
        return self.parts[0].first, self.parts[-1].last


class ServiceMetrics:
    """What /metrics shows, in Prometheus' text format: requests and errors by endpoint and code,
    latency overall and per shard, the sizes of the batches scored together."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dimerec_requests", "HTTP requests answered", ["endpoint", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "dimerec_request_seconds", "Time to answer a request", ["endpoint"], registry=self.registry
        )
        self.shard_latency = Histogram(
            "dimerec_shard_seconds", "A shard's search time for a batch's top-k", ["shard"], registry=self.registry
        )
        self.in_flight = Gauge(
            "dimerec_requests_in_flight", "Recommendation requests taken and not yet answered", registry=self.registry
        )
        self.batch_size = Histogram(
            "dimerec_batch_size",
            "Requests scored together in one pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)


class ShardUnavailable(RuntimeError):
    """No replica of a shard answered in time: the request gets a 503."""


# What a replica that died, or is being replaced, looks like from a handle call.
REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)


class ShardedSearch:
    """ExactSearch's topk over the shard deployments: every shard at once, answers merged.

    A shard whose replica died under a request is asked again (Ray Serve routes to another
    replica, or to the one it restarts) until the batch is due (`answer_by`: when its oldest
    request has waited the ingress's shard_wait_s; without one, `wait_s` from now); a shard with
    no answer by then fails the batch with ShardUnavailable, a 503 the client may retry, rather
    than the proxy's 408 at the request timeout."""

    # When the batch being scored must be answered by (time.monotonic()): set by the ingress for each
    # batch, read here in the thread that scores it. (A class attribute: Ray pickles the ingress's
    # routes by value, and a module-level ContextVar cannot be pickled.)
    answer_by: ContextVar = ContextVar("answer_by", default=None)

    def __init__(self, shards: list, metrics: ServiceMetrics | None = None, wait_s: float = 30.0):
        self.shards, self.metrics, self.wait_s = shards, metrics, wait_s

    def _answer(self, index: int, response, deadline: float, query: tuple):
        pause = 0.05
        while True:
            try:
                return response.result(timeout_s=max(deadline - time.monotonic(), 0.001))
            except TimeoutError as exc:
                response.cancel()
                raise ShardUnavailable(f"shard {index} did not answer in time") from exc
            except REPLICA_GONE as exc:
                if time.monotonic() + pause > deadline:
                    raise ShardUnavailable(f"shard {index} has no replica answering ({type(exc).__name__})") from exc
                log.warning("shard %d: a replica is gone (%s); asking again", index, type(exc).__name__)
                time.sleep(pause)
                pause = min(2 * pause, 1.0)
                response = self.shards[index].topk.remote(*query)

    def topk(self, queries: torch.Tensor, seen: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        query = (queries.numpy(), seen.numpy(), k)
        deadline = self.answer_by.get() or time.monotonic() + self.wait_s
        pending = [shard.topk.remote(*query) for shard in self.shards]
        answers = [self._answer(index, response, deadline, query) for index, response in enumerate(pending)]
        if self.metrics is not None:
            for index, (_, _, seconds) in enumerate(answers):
                self.metrics.shard_latency.labels(str(index)).observe(seconds)
        values = torch.from_numpy(np.concatenate([values for values, _, _ in answers], axis=1))
        ids = torch.from_numpy(np.concatenate([ids for _, ids, _ in answers], axis=1))
        return merge_topk(values, ids, k)


# Requests wait at the ingress to be batched, so it takes many at once (Ray Serve's default is 5).
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(api)
class Ingress:
    def __init__(self, bundle_dir: str, shards: list, verify: bool = True, shard_wait_s: float = 30.0):
        bundle = Bundle(bundle_dir, verify=False)
        if verify:
            part_files = bundle.part_files(list(range(len(bundle.parts))))
            bundle.verify(only=set(bundle.manifest.get("checksums") or {}) - part_files)
        self.shards, self.metrics, self.shard_wait_s = shards, ServiceMetrics(), shard_wait_s
        self.draining, self.answered, self.taken = False, 0, 0
        self.recommender = Recommender(bundle, exact=ShardedSearch(shards, self.metrics, shard_wait_s))
        self.num_items = bundle.num_items
        self.health = {**health_of(bundle), "shards": len(shards)}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, max_concurrent_batches=1)
    async def _recommend(self, batches: list[tuple[float, list[Request]]]) -> list[list[Recommendation]]:
        """Concurrent HTTP requests' queries scored together: one tower pass and one fan-out, due
        when the oldest of them has waited `shard_wait_s`."""
        flat = [request for _, batch in batches for request in batch]
        self.metrics.batch_size.observe(len(flat))
        ShardedSearch.answer_by.set(min(arrived for arrived, _ in batches) + self.shard_wait_s)  # to_thread carries it
        results = await asyncio.to_thread(self.recommender.recommend, flat)
        out, start = [], 0
        for _, batch in batches:
            out.append(results[start : start + len(batch)])
            start += len(batch)
        return out

    async def _answer(self, requests: list[Request]) -> list[Recommendation]:
        for request in requests:
            self.recommender.check(request)  # a request the bundle cannot answer fails alone
        # Ray Serve forms the next batch as soon as the running one starts, from what has arrived by
        # then plus what arrives within the wait. Alone, a request should not wait; with others in
        # flight (clients answered together come back together) a short wait lets them share a pass.
        self._recommend.set_batch_wait_timeout_s(0.0 if self.taken <= 1 else BATCH_WAIT_S)
        return await self._recommend((time.monotonic(), requests))

    @api.post("/recommend")
    async def recommend(self, http: HTTPRequest):
        return await self._measured("/recommend", self._one, http)

    @api.post("/recommend/batch")
    async def recommend_batch(self, http: HTTPRequest):
        return await self._measured("/recommend/batch", self._batch, http)

    async def _measured(self, endpoint: str, handler, http: HTTPRequest):
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        self.taken += 1
        try:
            response = await handler(await http.body())
        except RequestError as exc:
            response = JSONResponse({"error": str(exc)}, status_code=400)
        except ShardUnavailable as exc:  # a shard's replicas are all gone for now: the client may retry
            response = JSONResponse({"error": f"{exc}; retry"}, status_code=503, headers={"Retry-After": "1"})
        except Exception as exc:  # a bug of ours: the client gets an answer, the log the traceback
            log.exception("request failed")
            response = JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)
        self.metrics.in_flight.dec()
        self.taken -= 1
        self.answered += 1
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def _one(self, raw: bytes) -> JSONResponse:
        request = parse_request(parse_body(raw), "request", self.num_items)
        (result,) = await self._answer([request])
        return JSONResponse(answer(result))

    async def _batch(self, raw: bytes) -> JSONResponse:
        requests = parse_batch(parse_body(raw), self.num_items)
        results = await self._answer(requests)
        return JSONResponse({"results": [answer(r) for r in results]})

    async def drain(self) -> None:
        """Readiness false from now on, so a load balancer stops sending here; requests are still
        answered (dimerec-serve's SIGTERM, before the proxy stops listening)."""
        self.draining = True

    async def requests_answered(self) -> int:
        """Recommendation requests answered since the start, whatever their code."""
        return self.answered

    @api.get("/health")
    async def live(self):
        """Liveness: the ingress answers (the shards may still be loading; see /health/ready)."""
        return self.health

    @api.get("/metrics")
    async def metrics_text(self):
        return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/health/ready")
    async def ready(self):
        """Ready once every shard has loaded and verified its parts (each answers where its rows lie)."""
        if self.draining:
            return JSONResponse({"ready": False, "error": "shutting down"}, status_code=503)
        try:
            rows = await asyncio.wait_for(
                asyncio.gather(*[shard.rows.remote() for shard in self.shards]), min(10.0, self.shard_wait_s)
            )
        except Exception as exc:  # a shard still starting, or gone: not ready, and why
            return JSONResponse({"ready": False, "error": f"{type(exc).__name__}: {exc}"[:300]}, status_code=503)
        return {"ready": True, "shards": [list(r) for r in rows]}


def build_app(bundle_dir: Path, shards: int = 1, replicas: int = 1, verify: bool = True, shard_wait_s: float = 30.0):
    """The Ray Serve application: `shards` shard deployments of `replicas` each, behind the ingress,
    which answers 503 for a batch a shard has not answered within `shard_wait_s`."""
    bundle = Bundle(bundle_dir, verify=False)
    threads = max(1, (os.cpu_count() or 1) // (shards * replicas))  # this machine's cores over the replicas
    handles = [
        TableShard.options(name=f"shard-{i}", num_replicas=replicas).bind(str(bundle_dir), first, last, verify, threads)
        for i, (first, last) in enumerate(shard_rows(bundle.num_items + 1, shards))
    ]
    return Ingress.bind(str(bundle_dir), handles, verify, shard_wait_s)
