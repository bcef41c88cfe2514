"""The asynchronous pair: ``PhosphoQueueHandler`` and ``PhosphoQueueListener``.

* ``PhosphoQueueHandler`` snapshots a task-carrying record on the caller's thread
  (``prepare``) and puts it on a queue without blocking.
* ``PhosphoQueueListener`` drains that queue on one thread: it batches and sends through
  the exporter of the ``PhosphoHandler`` it was given, and passes records on to any other
  handlers, as the stdlib listener does.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue as queue_module
import threading
from typing import Any, Dict, Optional

from . import _capture, _diag
from ._config import Options, resolve
from ._handlers import (
    PhosphoHandler,
    _current_context,
    _new_record,
    _report_emit_error,
    _Revival,
    _track,
    apply_filters,
    holds_logging_lock,
)
from ._lifecycle import WORKER_THREADS, stop_at_exit
from ._producer import ProducerCounters, count_queue_full, count_value
from ._snapshot import carries_task, snapshot_plain, snapshot_record
from ._worker import PENDING_ATTR, Worker


class PhosphoQueueListener(logging.handlers.QueueListener):
    """Drains a ``PhosphoQueueHandler``'s queue on one thread, batching and sending.

    The signature is the stdlib's. The first ``PhosphoHandler`` among ``handlers`` gives
    the options and the exporter (one built from the environment if there is none); other
    handlers receive every record, as with the stdlib listener.
    """

    def __init__(self, queue: Any, *handlers: logging.Handler, respect_handler_level: bool = False) -> None:
        super().__init__(queue, *handlers, respect_handler_level=respect_handler_level)
        senders = [h for h in handlers if isinstance(h, PhosphoHandler)]
        self.sender: PhosphoHandler = senders[0] if senders else PhosphoHandler()
        self.others = [h for h in handlers if h is not self.sender]
        self.counters = ProducerCounters()
        self.worker = Worker(
            queue,
            self.sender.exporter,
            self.sender.options,
            self.counters,
            forward=self._forward if self.others else None,
            name="phospho-logging-listener",
        )

    def revive(self, counters: ProducerCounters) -> None:
        """Drain records that still arrive after stop() in a short-lived worker."""
        with _Revival.lock:
            if self.worker.stopped and not self.worker.alive:
                on_stop = self.worker.on_stop
                self.rebuild_worker(counters, previous=self.worker)
                self.worker.on_stop.extend(on_stop)
                self.worker.start()
                self.worker.stop(wait=False)

    def rebuild_worker(self, counters: ProducerCounters, previous: Optional[Worker] = None) -> None:
        """A new worker on ``self.queue``: after a fork (fresh books), or to revive a stopped
        one (``previous``, whose books it keeps)."""
        self.sender.exporter.reset_after_fork()
        self.worker = Worker(
            self.queue,
            self.sender.exporter,
            self.sender.options,
            counters,
            forward=self._forward if self.others else None,
            name="phospho-logging-listener",
            previous=previous,
        )

    def _forward(self, record: logging.LogRecord) -> None:
        for handler in self.others:
            if not self.respect_handler_level or record.levelno >= handler.level:
                try:
                    handler.handle(record)
                except Exception as exc:  # noqa: BLE001
                    _diag.warn_once("forward_error", "handler %r failed: %r", handler, exc)

    def start(self) -> None:
        """Start the listener thread (once)."""
        self.worker.start()
        self._thread = self.worker._thread  # what the stdlib API exposes

    def stop(self, timeout: Optional[float] = None) -> None:
        """Deliver what is queued within ``timeout`` (default ``shutdown_timeout``), then end."""
        self.worker.stop(timeout)
        self._thread = None

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything enqueued before the call is delivered."""
        return self.worker.flush(timeout)

    def stats(self) -> Dict[str, Any]:
        """Delivery counters (see the README)."""
        return self.worker.stats()

    @property
    def direct(self) -> bool:
        """True when only our sender listens, so bare snapshots can go on the queue."""
        return not self.others


class PhosphoQueueHandler(logging.handlers.QueueHandler):
    """Snapshots task-carrying records on the caller's thread and enqueues them.

    The signature is the stdlib's plus optional keywords. Records without an ``input``
    are ignored at the cost of one dict lookup. A full queue drops the task and counts
    it; the caller never blocks.

    Args:
        queue: any queue with ``put_nowait``; ``None`` makes an unbounded
            ``queue.SimpleQueue`` bounded by ``max_queue_size``.
        max_queue_size: the bound for queues without a ``maxsize`` of their own.
        input_to_str, output_to_str: text functions run on the caller's thread (default:
            those of the listener's ``PhosphoHandler``).
    """

    def __init__(
        self,
        queue: Any = None,
        *,
        max_queue_size: Optional[int] = None,
        input_to_str: Any = None,
        output_to_str: Any = None,
    ) -> None:
        own_options = resolve(
            {"max_queue_size": max_queue_size, "input_to_str": input_to_str, "output_to_str": output_to_str},
            environ={},
        )
        super().__init__(queue if queue is not None else queue_module.SimpleQueue())
        self._own_options = own_options
        self._input_to_str = self._own_options.input_to_str
        self._output_to_str = self._own_options.output_to_str
        self._explicit_max = max_queue_size
        self._max_queue_size = self._queue_bound(Options.max_queue_size)
        self._listener: Optional[logging.handlers.QueueListener] = None
        self._listener_idle = False
        self._start_lock = threading.Lock()
        self._direct = False
        self._plain = False
        self.counters = ProducerCounters()
        self._offered = self.counters.offered
        _track(self)

    def _reinit_after_fork(self) -> None:
        """In a forked child: a queue of our own (the parent's items stay the parent's),
        fresh counters, and a listener that starts again with the first task."""
        old = self.queue
        if isinstance(old, queue_module.SimpleQueue):
            new: Any = queue_module.SimpleQueue()
        elif isinstance(old, queue_module.Queue):
            new = type(old)(old.maxsize)
        else:
            try:
                new = type(old)()
            except Exception:  # noqa: BLE001 - an exotic queue: keep it
                new = old
        self.queue = new
        self.counters = ProducerCounters()
        self._offered = self.counters.offered
        self._start_lock = threading.Lock()
        listener = self._listener
        if listener is None:
            return
        listener.queue = new
        listener._thread = None  # type: ignore[attr-defined]
        if isinstance(listener, PhosphoQueueListener):
            listener.rebuild_worker(self.counters)
            listener.worker.on_stop.append(self._leave_short_path)
        self._listener_idle = True
        self._update_plain()

    @property
    def listener(self) -> Optional[logging.handlers.QueueListener]:
        """The listener draining this handler's queue (dictConfig sets it on 3.12+)."""
        return self._listener

    @listener.setter
    def listener(self, listener: Optional[logging.handlers.QueueListener]) -> None:
        self._listener = listener
        self._listener_idle = listener is not None
        self._direct = isinstance(listener, PhosphoQueueListener) and listener.direct
        self._update_plain()
        if isinstance(listener, PhosphoQueueListener):
            listener.worker.producer = self.counters
            listener.worker.on_stop.append(self._leave_short_path)
            sender = listener.sender.options
            self._input_to_str = self._own_options.input_to_str or sender.input_to_str
            self._output_to_str = self._own_options.output_to_str or sender.output_to_str
            self._max_queue_size = self._queue_bound(sender.max_queue_size)
        else:
            for handler in getattr(listener, "handlers", ()):
                if isinstance(handler, PhosphoHandler):
                    self._max_queue_size = self._queue_bound(handler.options.max_queue_size)
                    break

    def _queue_bound(self, default: int) -> int:
        # A queue with a maxsize of its own enforces it; ours are bounded by the option.
        maxsize = getattr(self.queue, "maxsize", 0) or 0
        return maxsize if maxsize > 0 else (self._explicit_max or default)

    def handle(self, record: logging.LogRecord) -> bool:
        # The hot path: no handler lock (the queue is thread-safe), the cheapest possible
        # test for records that are not tasks, and for the commonest task a short path.
        if "input" not in record.__dict__:
            if type(record.msg) is dict and "input" in record.msg:
                return self._handle_slow(record)
            return False
        if self._plain and not _capture.active and _current_context() is None:
            pending = snapshot_plain(record)
            if pending is not None and record.thread not in WORKER_THREADS:
                self._put(pending)
                return True
        return self._handle_slow(record)

    def _put(self, item: Any) -> None:
        """Enqueue without blocking; a full queue drops the task and counts it."""
        try:
            next(self._offered)
            q: Any = self.queue
            if q.qsize() >= self._max_queue_size:
                raise queue_module.Full
            q.put_nowait(item)
        except queue_module.Full:
            count_queue_full(self.counters, self._max_queue_size)
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            _report_emit_error(exc)

    def _handle_slow(self, record: logging.LogRecord) -> bool:
        filtered = apply_filters(self, record)
        if filtered is None:
            return False
        self._enqueue(filtered)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Enqueue the snapshot of a task-carrying record; ignore other records."""
        if carries_task(record):
            self._enqueue(record)

    def _enqueue(self, record: logging.LogRecord) -> None:
        try:
            if record.thread in WORKER_THREADS:
                return
            item = self.prepare(record)
            if _capture.active:
                pending = getattr(item, PENDING_ATTR, item)
                _capture.deliver_record(record, lambda: pending, self._listener_options())
                return
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            _report_emit_error(exc)
            return
        self.submit(item)

    def submit(self, pending: Any) -> None:
        """Enqueue a snapshot (a record's, or one made elsewhere: the structlog processor):
        a stopped listener is revived and an idle one (after a fork, or never started by
        dictConfig) started first. Never blocks or raises."""
        try:
            listener = self._listener
            if isinstance(listener, PhosphoQueueListener) and listener.worker.stopped and not listener.worker.alive:
                listener.revive(self.counters)
            if self._listener_idle:
                self._start_listener()
            self._put(pending)
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            _report_emit_error(exc)

    def _leave_short_path(self) -> None:
        self._update_plain()  # the listener is stopping: the slow path revives it if needed

    def _update_plain(self) -> None:
        # The short path needs: bare snapshots on the queue, a running listener, no
        # filter and no text function to run on the caller's thread.
        listener = self._listener
        self._plain = (
            self._direct
            and not self._listener_idle
            and not (isinstance(listener, PhosphoQueueListener) and listener.worker.stopped)
            and not self.filters
            and self._input_to_str is None
            and self._output_to_str is None
        )

    def addFilter(self, filter: Any) -> None:  # noqa: A002 - the stdlib's name
        super().addFilter(filter)
        self._update_plain()

    def removeFilter(self, filter: Any) -> None:  # noqa: A002
        super().removeFilter(filter)
        self._update_plain()

    def _start_listener(self) -> None:
        """Start a listener nobody started (dictConfig never does: CPython gh-117827)."""
        with self._start_lock:
            listener = self._listener
            if self._listener_idle and listener is not None:
                if getattr(listener, "_thread", None) is None:
                    listener.start()
                    if not isinstance(listener, PhosphoQueueListener):
                        stop_at_exit(listener)
                        # Their workers start now, on this thread: started later from the
                        # listener at exit, 3.12 would refuse the new thread.
                        for handler in getattr(listener, "handlers", ()):
                            if isinstance(handler, PhosphoHandler):
                                handler.worker.start()
                self._listener_idle = False
                self._update_plain()

    def prepare(self, record: logging.LogRecord) -> Any:
        """Snapshot the record into a task, on the caller's thread.

        With a ``PhosphoQueueListener`` that has no other handlers, the snapshot itself is
        enqueued. Otherwise a copy of the record carries it, with ``msg`` rendered and
        ``args``/``exc_info`` cleared as the stdlib does (a structlog event dict in
        ``msg`` is kept as is, for a downstream ``ProcessorFormatter``).
        """
        pending = snapshot_record(record, self._input_to_str, self._output_to_str, _current_context())
        if self._direct:
            return pending
        copy = _new_record(logging.LogRecord)
        copy.__dict__.update(record.__dict__)
        log = pending.log
        if type(record.msg) is not dict:
            copy.msg = log[2]
            copy.args = None
        copy.exc_info = None
        if log[6] is not None:
            copy.exc_text = log[6]
        copy.__dict__[PENDING_ATTR] = pending
        return copy

    def _listener_options(self) -> Options:
        if isinstance(self._listener, PhosphoQueueListener):
            return self._listener.sender.options
        return self._own_options

    def stats(self) -> Dict[str, Any]:
        """Delivery counters of this handler's pipeline."""
        if isinstance(self._listener, PhosphoQueueListener):
            return self._listener.stats()
        for handler in getattr(self._listener, "handlers", ()):
            if isinstance(handler, PhosphoHandler):
                # Behind a stdlib listener: our queue's drops are ours to add.
                stats = handler.stats()
                full = count_value(self.counters.queue_full)
                if full:
                    stats["dropped_by_reason"]["queue_full"] = stats["dropped_by_reason"].get("queue_full", 0) + full
                    stats["dropped"] += full
                    stats["enqueued"] += full
                return stats
        return {}

    def flush(self, timeout: Optional[float] = None) -> bool:  # type: ignore[override]
        """Wait until the tasks this handler enqueued are delivered (via its listener)."""
        listener = self._listener
        if timeout is None and holds_logging_lock():
            timeout = 0.0
        if isinstance(listener, PhosphoQueueListener):
            return listener.flush(timeout)
        for handler in getattr(listener, "handlers", ()):
            if isinstance(handler, PhosphoHandler):
                return handler.flush(timeout)
        return True

    def close(self) -> None:
        """Let the listener this handler started finish in the background; never blocks."""
        listener = self._listener
        if isinstance(listener, PhosphoQueueListener):
            listener.worker.stop(wait=False)
        super().close()


def configured_handlers() -> list[Any]:
    """Our handlers that ``logging.config`` made and has not closed (it names them), for
    the module-level ``flush()`` and ``stats()`` of dictConfig users."""
    named = getattr(logging, "_handlers", {})
    return [h for h in list(named.values()) if isinstance(h, (PhosphoHandler, PhosphoQueueHandler))]
