"""Micro-batching: concurrent requests share one pass through the tower and the table.

Scoring one query against the whole catalog reads every row; scoring 32 queries reads
them once too. Handler threads hand their requests to one worker, which takes whatever
has queued up while it was busy (up to `max_batch`; with `max_wait_ms` > 0 it also waits
that long for company), runs them as one batch and hands each caller its answers. Under
load, batches form by themselves; a lone request waits for nothing.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from dimerec_dist.serving.recommender import Recommendation, Recommender, Request


class MicroBatcher:
    def __init__(self, recommender: Recommender, max_batch: int = 64, max_wait_ms: float = 0.0):
        self.recommender, self.max_batch, self.max_wait = recommender, max_batch, max_wait_ms / 1000
        self._queue: queue.Queue[tuple[list[Request], Future]] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._worker.start()

    def recommend(self, requests: list[Request]) -> list[Recommendation]:
        """Blocks until these requests are answered (checked first, so a bad one fails alone)."""
        for request in requests:
            self.recommender.check(request)
        future: Future = Future()
        self._queue.put((requests, future))
        return future.result()

    def _run(self) -> None:
        while True:
            pending = [self._queue.get()]
            size = len(pending[0][0])
            while size < self.max_batch:
                try:
                    item = self._queue.get(timeout=self.max_wait) if self.max_wait else self._queue.get_nowait()
                except queue.Empty:
                    break
                pending.append(item)
                size += len(item[0])
            try:
                answers = self.recommender.recommend([r for requests, _ in pending for r in requests])
            except Exception:  # one caller's request broke the batch: answer each caller on its own
                for requests, future in pending:
                    self._answer_alone(requests, future)
                continue
            start = 0
            for requests, future in pending:
                future.set_result(answers[start : start + len(requests)])
                start += len(requests)

    def _answer_alone(self, requests: list[Request], future: Future) -> None:
        """So that a request the checks let through, but scoring cannot take, fails only its caller."""
        try:
            future.set_result(self.recommender.recommend(requests))
        except Exception as exc:  # never leave a caller hanging
            future.set_exception(exc)
