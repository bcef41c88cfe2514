"""The switch behind ``phospho_logging.testing.capture_tasks``.

While a capture is active, handlers hand their tasks here instead of to their queue, so
tests see exactly the events that would have been sent, synchronously and with no network.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict, List

from ._config import Options
from ._pending import Pending
from ._task import build_event

#: Read on every emit; a plain module global is the cheapest check.
active = False
_sinks: List[List[Dict[str, Any]]] = []
_seen: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.RLock()  # a stream finished by GC may deliver while we hold it


def push(sink: List[Dict[str, Any]]) -> None:
    global active
    with _lock:
        _sinks.append(sink)
        active = True


def pop(sink: List[Dict[str, Any]]) -> None:
    global active
    with _lock:
        _sinks.remove(sink)
        active = bool(_sinks)


def deliver(pending: Pending, options: Options) -> None:
    """Build the event as the worker would and add it to every active capture."""
    event = build_event(
        pending,
        project_id=options.project_id,
        version_id=options.version_id,
        max_field_chars=options.max_field_chars,
    )
    with _lock:
        for sink in _sinks:
            sink.append(event)


def deliver_record(record: Any, make_pending: Callable[[], Pending], options: Options) -> None:
    """Capture a record's task once, however many handlers see the record."""
    with _lock:
        if record in _seen:
            return
        _seen.add(record)
    deliver(make_pending(), options)
