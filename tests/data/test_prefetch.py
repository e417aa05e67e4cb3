"""data/prefetch.py: batches made on a background thread arrive in order, errors surface where the
consumer reads, and closing early stops the thread and runs the iterator's cleanup."""

import threading

import pytest

from dimerec_dist.data.prefetch import Prefetcher


def test_items_arrive_in_order_and_the_end_is_final():
    with Prefetcher(iter(range(100)), depth=3) as items:
        assert list(items) == list(range(100))
        with pytest.raises(StopIteration):
            next(items)


def test_an_error_in_the_producer_is_raised_to_the_consumer_after_the_items_before_it():
    def failing():
        yield 1
        yield 2
        raise ValueError("row group 7 is damaged")

    with Prefetcher(failing()) as items:
        assert next(items) == 1 and next(items) == 2
        with pytest.raises(ValueError, match="row group 7"):
            next(items)
        with pytest.raises(StopIteration):
            next(items)


def test_closing_early_stops_the_thread_and_closes_the_generator_on_it():
    closed_on = []

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed_on.append(threading.current_thread().name)

    items = Prefetcher(endless(), depth=2, name="test")
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    items.close()
    assert not items._thread.is_alive()
    assert closed_on == ["prefetch-test"], "the generator's cleanup ran on its own thread"


def test_the_producer_stays_at_most_depth_items_ahead():
    made = []

    def counted():
        for n in range(50):
            made.append(n)
            yield n

    with Prefetcher(counted(), depth=2) as items:
        next(items)
        threading.Event().wait(0.3)  # time for the producer to run ahead as far as it may
        assert len(made) <= 1 + 2 + 1  # the one read, `depth` queued, one blocked on a full queue
