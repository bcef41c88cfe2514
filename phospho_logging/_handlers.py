"""The sending handler, ``PhosphoHandler``, and what every handler of ours shares.

``PhosphoHandler`` holds the options and the exporter. Attached to a logger directly (or
behind the stdlib ``QueueListener``), it runs a queue and worker of its own, so the
caller's thread never does network I/O. The asynchronous pair built on it is in
``_queue_pair``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue as queue_module
import sys
import threading
import weakref
from typing import Any, Dict, Optional

from . import _capture, _diag
from ._config import Options, resolve
from ._context import _current
from ._lifecycle import WORKER_THREADS, on_fork
from ._pending import Pending
from ._producer import ProducerCounters, offer
from ._snapshot import carries_task, snapshot_record
from ._store import LocalStoreExporter
from ._transport import Exporter, HTTPExporter
from ._worker import PENDING_ATTR, Worker

_new_record = logging.LogRecord.__new__
_current_context = _current.get


def make_exporter(options: Options) -> Exporter:
    """The HTTP exporter with credentials, the local store without."""
    if options.online:
        assert options.api_key is not None
        return HTTPExporter(options.endpoint, options.api_key)
    return LocalStoreExporter(options.store_path())


_instances: weakref.WeakSet[Any] = weakref.WeakSet()


class _Revival:
    """The lock a revival takes; a forked child gets a new one (the parent's may be held)."""

    lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: setattr(_Revival, "lock", threading.Lock()))


def _track(handler: Any) -> None:
    """Remember a handler so a forked child can give it a queue of its own."""
    if not _instances:
        on_fork(_reinit_all_after_fork)
    _instances.add(handler)


def _reinit_all_after_fork() -> None:
    for handler in list(_instances):
        try:
            handler._reinit_after_fork()
        except Exception as exc:  # noqa: BLE001 - a child must come up whatever happens
            _diag.warn_once("fork", "could not reset %r after fork: %r", handler, exc)


_noticed: set[str] = set()


def notice_offline(destination: str) -> None:
    """Say once per store, on stderr, that tasks are kept locally and how to see them."""
    if destination in _noticed:
        return
    _noticed.add(destination)
    try:
        sys.stderr.write(
            f"phospho-logging: no PHOSPHO_API_KEY/PHOSPHO_PROJECT_ID set, so tasks are kept in the "
            f"{destination}.\nphospho-logging: see them with `phospho-logging tail`; "
            "set both variables to send them to phospho.\n"
        )
    except Exception:  # noqa: BLE001 - a closed stderr must not break the app
        pass


def holds_logging_lock() -> bool:
    """True when this thread holds ``logging``'s module lock (inside dictConfig, say)."""
    lock = getattr(logging, "_lock", None)
    is_owned = getattr(lock, "_is_owned", None)
    try:
        return bool(is_owned()) if is_owned is not None else False
    except Exception:  # noqa: BLE001 - a private API: assume the safe answer
        return True


def apply_filters(handler: logging.Handler, record: logging.LogRecord) -> Optional[logging.LogRecord]:
    """The record to handle after the handler's filters (which may replace it), or None."""
    if not handler.filters:
        return record
    rv = handler.filter(record)
    if not rv:
        return None
    return rv if isinstance(rv, logging.LogRecord) else record


def _report_emit_error(exc: BaseException) -> None:
    _diag.warn_once("emit_error", "a record could not be turned into a task: %r", exc)


class PhosphoHandler(logging.Handler):
    """Turns task-carrying records into phospho events and ships them asynchronously.

    Args:
        level: the handler's level.
        **options: any option of ``phospho_logging.configure`` (``api_key``,
            ``project_id``, ``base_url``, ``local_dir``, ``max_batch_size``, ...);
            unset options come from ``PHOSPHO_*`` environment variables.
    """

    def __init__(self, level: int = logging.NOTSET, **options: Any) -> None:
        # Options first: a bad one must fail before logging.Handler registers this handler
        # (logging would flush and close a half-built handler at exit).
        resolved = resolve(options)
        super().__init__(level)
        self.options: Options = resolved
        self.exporter: Exporter = make_exporter(self.options)
        self._fresh_queue()
        _track(self)
        if not resolved.online:
            notice_offline(self.exporter.destination)

    def _fresh_queue(self) -> None:
        self.counters = ProducerCounters()
        self._queue: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        self.worker = Worker(self._queue, self.exporter, self.options, self.counters)

    def _reinit_after_fork(self) -> None:
        self.exporter.reset_after_fork()
        self._fresh_queue()

    def _revive(self) -> Worker:
        """Records still reaching a closed handler (a second dictConfig while other threads
        log, say) are delivered by a short-lived worker instead of being stranded."""
        with _Revival.lock:
            worker = self.worker
            if worker.stopped and not worker.alive:
                worker = Worker(self._queue, self.exporter, self.options, self.counters, previous=worker)
                worker.start()
                worker.stop(wait=False)
                self.worker = worker
        return worker

    def __repr__(self) -> str:
        return f"<PhosphoHandler {self.exporter.destination} ({logging.getLevelName(self.level)})>"

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: emit only enqueues, and the queue is thread-safe.
        filtered = apply_filters(self, record)
        if filtered is None:
            return False
        self.emit(filtered)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Snapshot the record (unless a queue handler already did) and enqueue it."""
        try:
            pending = record.__dict__.get(PENDING_ATTR)
            if pending is None:
                if record.thread in WORKER_THREADS or not carries_task(record):
                    return
                o = self.options
                pending = snapshot_record(record, o.input_to_str, o.output_to_str, _current_context())
            if _capture.active:
                _capture.deliver_record(record, lambda: pending, self.options)
                return
            self.submit(pending)
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            _report_emit_error(exc)

    def submit(self, pending: Pending) -> None:
        """Enqueue a task snapshotted elsewhere (the structlog processor). Never blocks."""
        if _capture.active:
            _capture.deliver(pending, self.options)
            return
        worker = self.worker
        if worker.stopped and not worker.alive:
            worker = self._revive()
        worker.start()
        offer(self._queue, pending, self.counters, self.options.max_queue_size)

    def flush(self, timeout: Optional[float] = None) -> bool:  # type: ignore[override]
        """Wait until the tasks this handler accepted are delivered (see ``Worker.flush``).

        Called by ``logging`` itself (``logging.shutdown``, a new ``dictConfig``) with its
        module lock held, it only asks the worker to send now: waiting there could stall
        every thread that logs.
        """
        if timeout is None and holds_logging_lock():
            timeout = 0.0
        return self.worker.flush(timeout)

    def close(self) -> None:
        """Stop accepting tasks; what is queued is delivered in the background within
        ``shutdown_timeout`` (interpreter exit waits for it). Never blocks."""
        self.worker.stop(wait=False)
        super().close()

    def stats(self) -> Dict[str, Any]:
        """Delivery counters (see the README)."""
        return self.worker.stats()
