"""Test capture as configuration (``phospho_logging.testing.capture_tasks``).

While a capture is active, every engine's ``submit`` is swapped for one that builds the
event at once, on the caller's thread, and appends it to every active capture: nothing
is queued, sent or stored. Engines made meanwhile are swapped when they are made. The
logging call itself does not change: no flag is checked on its path.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from . import _diag, _lifecycle
from ._config import Options
from ._event import FILTERED, encode, event_budget
from ._feedback import Feedback
from ._item import Snapshot, snapshot_of
from ._redact import RedactError, make_redaction, make_sampler

_sinks: List[List[Dict[str, Any]]] = []
_lock = _lifecycle.ProcessLock()  # reentrant: a stream finished by the collector may deliver meanwhile


def active() -> bool:
    """True while a capture is active."""
    return bool(_sinks)


def push(sink: List[Dict[str, Any]]) -> None:
    """Start capturing into ``sink``."""
    with _lock:
        _sinks.append(sink)
        first = len(_sinks) == 1
    if first:
        for engine in _lifecycle.engines():
            engine.capture(True)


def pop(sink: List[Dict[str, Any]]) -> None:
    """Stop capturing into ``sink``."""
    with _lock:
        _sinks.remove(sink)
        last = not _sinks
    if last:
        for engine in _lifecycle.engines():
            engine.capture(False)


def deliver(snapshot: Snapshot, options: Options) -> None:
    """Build the event exactly as the worker would (cut to fit a request of
    ``max_batch_bytes``) and add it to every active capture."""
    try:
        wire = encode(snapshot, project_id=options.project_id, version_id=options.version_id,
                      max_field_chars=options.max_field_chars, max_bytes=event_budget(options.max_batch_bytes),
                      transform=make_redaction(options.redact))
    except RedactError as exc:
        _diag.warn_once("capture_redact", "%s; the task is not captured (the worker would not send it)", exc)
        return
    if wire is None or wire is FILTERED:
        return  # too large even when truncated, or dropped by redact: the worker would not send it either
    sampler = make_sampler(options.sample_rate)
    if sampler is not None and not sampler.keeps(wire.session_id, wire.task_id):
        return  # its session is sampled out
    event = wire.data()
    with _lock:
        for sink in _sinks:
            sink.append(event)


def deliver_feedback(item: Feedback) -> None:
    """Add a feedback to every active capture (``tasks.feedback``)."""
    with _lock:
        for sink in _sinks:
            found = getattr(sink, "feedback", None)
            if found is not None:
                found.append(item.data())


def submitter(options: Options) -> Callable[[Any], None]:
    """The ``submit`` an engine with these options uses while a capture is active."""

    def submit(item: Any) -> None:
        if type(item) is Feedback:
            deliver_feedback(item)
            return
        snapshot: Optional[Snapshot] = snapshot_of(item)
        if snapshot is not None:
            deliver(snapshot, options)

    return submit
