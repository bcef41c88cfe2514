"""Batches: events gathered for one request within ``max_batch_size`` and ``max_batch_bytes``.

Every path that sends (the worker's timer, flush, the exit drain, the rescue at the
deadline, the spool's replay, ``phospho-logging push``) gathers events through ``Batch``,
so no request ever exceeds either limit. ``encode`` already cut each event to fit one
request on its own (``_event.event_budget``).
"""

from __future__ import annotations

from typing import Iterable, Iterator, List

from ._export import ENVELOPE_BYTES, WireEvent

#: What ``Batch.offer`` did.
ADDED, FILLED, NO_ROOM = 0, 1, 2


class Batch:
    """Events for one request, in order."""

    __slots__ = ("events", "size", "max_count", "max_bytes")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.events: List[WireEvent] = []
        self.size = ENVELOPE_BYTES
        self.max_count = max_count
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.events)

    def __bool__(self) -> bool:
        return bool(self.events)

    def offer(self, event: WireEvent) -> int:
        """Append ``event`` if it fits (an empty batch takes any): ``NO_ROOM`` (not added),
        ``ADDED``, or ``FILLED`` (added, and no further event can join)."""
        events = self.events
        size = len(event.json)
        if events:
            if len(events) >= self.max_count or self.size + size + 1 > self.max_bytes:
                return NO_ROOM
            size += 1
        self.size += size
        events.append(event)
        return FILLED if len(events) >= self.max_count or self.size >= self.max_bytes else ADDED


def batches(events: Iterable[WireEvent], max_count: int, max_bytes: int) -> Iterator[List[WireEvent]]:
    """Cut ``events`` into consecutive batches within both limits."""
    batch = Batch(max_count, max_bytes)
    for event in events:
        if batch.offer(event) == NO_ROOM:
            yield batch.events
            batch = Batch(max_count, max_bytes)
            batch.offer(event)
    if batch:
        yield batch.events
