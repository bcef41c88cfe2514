"""The producer's side of a queue: offering tasks without ever blocking, and counting.

``next()`` on an ``itertools.count`` is atomic under the GIL, which makes it the cheapest
thread-safe counter for the callers' threads; the worker's own counters are plain ints
(``_delivery.Counters``), written by the worker thread only.
"""

from __future__ import annotations

import itertools
import queue as queue_module
from typing import Any

from . import _diag


def count_value(counter: itertools.count[int]) -> int:
    """The next value of an ``itertools.count`` without advancing it.

    ``next()`` on a count is atomic under the GIL, which makes it the cheapest
    thread-safe counter for the callers' side; its repr is the only way to read it.
    """
    return int(repr(counter)[6:-1])


class ProducerCounters:
    """What the producer side counts: tasks offered and tasks refused by a full queue."""

    __slots__ = ("offered", "queue_full")

    def __init__(self) -> None:
        self.offered = itertools.count()
        self.queue_full = itertools.count()


def offer(q: Any, item: Any, counters: ProducerCounters, max_queue_size: int) -> bool:
    """Put ``item`` on ``q`` without blocking; count it, and count it dropped if full."""
    next(counters.offered)
    try:
        if q.qsize() >= max_queue_size:
            raise queue_module.Full
        q.put_nowait(item)
        return True
    except queue_module.Full:
        count_queue_full(counters, max_queue_size)
        return False


def count_queue_full(counters: ProducerCounters, max_queue_size: int) -> None:
    """Count a task refused by a full queue, and say so (rate-limited)."""
    next(counters.queue_full)
    _diag.warn_once(
        "queue_full",
        "the task queue is full (max_queue_size=%d); tasks are being dropped and counted "
        "in stats()['dropped_by_reason']['queue_full']",
        max_queue_size,
    )
