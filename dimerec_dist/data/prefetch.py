"""Batches made on a background thread, a few steps ahead of the step that trains on them.

Making a batch is host work (decoding the plan's rows, numpy, the id KeyedJaggedTensor,
the noise draw, page-locking for the GPU); on the training thread it would sit between
two steps with the device idle. A thread suffices: numpy and torch release the GIL in
their heavy parts, and the order of the batches is the iterator's, so training sees
exactly the batches it would have made itself.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()


class Prefetcher(Generic[T]):
    """Iterates `items` on a thread, at most `depth` items ahead; errors surface where the
    consumer reads. `close()` (or leaving the `with` block) stops the thread early."""

    def __init__(self, items: Iterator[T], depth: int = 2, name: str = "batches"):
        self._items, self._queue = items, queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self._waited = 0.0  # seconds the consumer spent waiting for an item (see take_waited)
        self._thread = threading.Thread(target=self._produce, name=f"prefetch-{name}", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as error:  # handed to the consumer, raised where it reads
            self._put(error)
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # a generator's cleanup runs on its own thread

    def _put(self, item) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        started = time.perf_counter()
        item = self._queue.get()
        self._waited += time.perf_counter() - started
        if item is _DONE:
            self._queue.put(_DONE)  # every later read ends too
            raise StopIteration
        if isinstance(item, BaseException):
            self._queue.put(_DONE)
            raise item
        return item

    def take_waited(self) -> float:
        """Seconds the consumer waited for items since the last call: time the producer was behind."""
        waited, self._waited = self._waited, 0.0
        return waited

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
