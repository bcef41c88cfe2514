"""The asynchronous pair: ``PhosphoQueueHandler`` and ``PhosphoQueueListener``.

They keep the stdlib's constructor signatures and attributes, so that dictConfig's queue
shape (3.12+) and hand-written ``QueueHandler``/``QueueListener`` code work unchanged, but
the work is the engine's:

* ``PhosphoQueueListener(queue, *handlers)`` adopts the engine of its ``PhosphoHandler``
  (one is made from the environment if none is given); other handlers receive every
  record, passed on by the engine's worker. ``start()`` relays what other producers put
  on ``queue`` (a stdlib ``QueueHandler``, say) into the engine; dictConfig never calls it,
  and our own handler does not need it.
* ``PhosphoQueueHandler`` snapshots a task-carrying record on the caller's thread and
  submits it to the listener's engine (bare, or on a copy of the record when other
  handlers want records). With a listener that is not ours it behaves as the stdlib
  handler does: it puts prepared record copies on its queue.
"""

from __future__ import annotations

import itertools
import logging
import logging.handlers
import queue as queue_module
import threading
import weakref
from typing import Any, Dict, Optional

from . import _capture, _context, _diag, _lifecycle
from ._config import Options, resolve
from ._delivery import count_value
from ._engine import Engine
from ._handlers import PhosphoHandler, Route, TaskIntake, apply_filters, report_error
from ._item import Snapshot, carried, carry
from ._snapshot import carries_task, snapshot_record

_new_record = logging.LogRecord.__new__


class PhosphoQueueListener(logging.handlers.QueueListener):
    """Ships what its queue handler submits, through the engine of its ``PhosphoHandler``.

    The signature is the stdlib's. The first ``PhosphoHandler`` among ``handlers`` gives
    the options and the engine (one is built from the environment if there is none);
    other handlers receive every record, as with the stdlib listener. A
    ``PhosphoQueueHandler`` on the same queue finds this listener by itself.
    """

    def __init__(self, queue: Any, *handlers: logging.Handler, respect_handler_level: bool = False) -> None:
        super().__init__(queue, *handlers, respect_handler_level=respect_handler_level)
        senders = [h for h in handlers if isinstance(h, PhosphoHandler)]
        self.sender: PhosphoHandler = senders[0] if senders else PhosphoHandler()
        self.others = [h for h in handlers if h is not self.sender]
        self.engine: Engine = self.sender.engine
        if self.others:
            self.engine.forward_to(self._forward)
        self._relay_lock = threading.Lock()
        try:
            _listeners[queue] = weakref.ref(self)
        except TypeError:  # a queue that cannot be weakly referenced: link the handler by hand
            pass

    def _forward(self, record: logging.LogRecord) -> None:
        for handler in self.others:
            if not self.respect_handler_level or record.levelno >= handler.level:
                try:
                    handler.handle(record)
                except Exception as exc:  # noqa: BLE001
                    _diag.warn_once("forward_error", "handler %r failed: %r", handler, exc)

    def start(self) -> None:
        """Relay records other producers put on ``queue`` into the engine (once). Our own
        queue handler does not need it."""
        with self._relay_lock:
            if self._thread is None:  # type: ignore[has-type]
                super().start()
                self.engine.relay_by(self)
                _lifecycle.before_exit(self._end_relay_at_exit)

    def handle(self, record: Any) -> None:
        """One record from the relay: its task (and the record, for other handlers) to the engine."""
        if isinstance(record, _RelayMark):
            record.done.set()
            return
        try:
            snapshot = carried(record)
            if snapshot is None and carries_task(record):
                o = self.engine.options
                snapshot = snapshot_record(record, o.input_to_str, o.output_to_str, _context.current())
                if self.others:
                    carry(record, snapshot)
            if snapshot is not None:
                self.engine.submit(record if self.others else snapshot)
            elif self.others:
                self.engine.pass_on(record)
        except Exception as exc:  # noqa: BLE001 - the relay must go on
            report_error(exc, self.engine if _carries(record) else None)

    def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) until the relay has handed to the engine what was put
        on the queue before the call (``flush()`` does this first). True if it has, or if
        there is no relay to wait for."""
        thread = self._thread  # type: ignore[has-type]
        if thread is None or thread is threading.current_thread():
            return True
        if not isinstance(self.queue, (queue_module.Queue, queue_module.SimpleQueue)):
            return True  # another process's queue: a marker would have to be pickled
        mark = _RelayMark()
        try:
            self.queue.put(mark, True, timeout)
        except queue_module.Full:
            return False
        return mark.done.wait(timeout)

    def _end_relay(self, wait: float) -> None:
        with self._relay_lock:
            thread, self._thread = self._thread, None  # type: ignore[has-type]
        if thread is not None:
            self.enqueue_sentinel()
            thread.join(wait)

    def _end_relay_at_exit(self) -> None:
        """At exit, before the engines drain: what the relay took is in the engine's queue."""
        self._end_relay(min(1.0, self.engine.options.shutdown_timeout / 4))

    def stop(self, timeout: Optional[float] = None) -> None:
        """End the relay, then deliver what is queued within ``timeout`` (default
        ``shutdown_timeout``). Called at interpreter exit (an ``atexit`` hook), it does not
        wait: every engine drains at once, within one deadline."""
        limit = self.engine.options.shutdown_timeout if timeout is None else timeout
        self._end_relay(min(1.0, limit))
        self.engine.shutdown(timeout, wait=threading.main_thread().is_alive())

    def reset_after_fork(self) -> None:
        """In a forked child: a relay of its own, if the parent's was running."""
        running = self._thread is not None  # type: ignore[has-type]
        self._thread = None
        self._relay_lock = threading.Lock()
        if running:
            self.start()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything submitted before the call is delivered (``None``: the
        whole retry budget)."""
        return self.engine.flush(timeout)

    def stats(self) -> Dict[str, Any]:
        """Delivery counters (see the README)."""
        return self.engine.stats()


class _RelayMark:
    """Put on a listener's queue by ``drain``: the relay reached it."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


def _carries(record: Any) -> bool:
    try:
        return carries_task(record)
    except Exception:  # noqa: BLE001 - a hostile record
        return False


#: Our listeners by their queue: a queue handler that was not told its listener (the
#: stdlib pattern before 3.12) finds it through the queue they share.
_listeners: weakref.WeakKeyDictionary[Any, weakref.ref[PhosphoQueueListener]] = weakref.WeakKeyDictionary()


class PhosphoQueueHandler(TaskIntake, logging.handlers.QueueHandler):
    """Snapshots task-carrying records on the caller's thread and hands them to the engine.

    The signature is the stdlib's plus optional keywords. When only our ``PhosphoHandler``
    listens, records without an ``input`` are ignored at the cost of one dict lookup; when
    other handlers listen too, every record goes to them, as with the stdlib pair. A full
    queue drops the task and counts it; the caller never blocks.

    Args:
        queue: the queue for a listener that is not ours (ignored otherwise: the engine
            has its own); ``None`` makes a ``queue.SimpleQueue``.
        max_queue_size: the bound of that queue when it has no ``maxsize`` of its own.
        input_to_str, output_to_str: text functions run on the caller's thread (default:
            those of the engine).
    """

    def __init__(
        self,
        queue: Any = None,
        *,
        max_queue_size: Optional[int] = None,
        input_to_str: Any = None,
        output_to_str: Any = None,
    ) -> None:
        own = resolve(
            {"max_queue_size": max_queue_size, "input_to_str": input_to_str, "output_to_str": output_to_str},
            environ={},
        )
        self._own = own
        self._explicit_max = max_queue_size
        self._refused = itertools.count()
        self._listener: Optional[logging.handlers.QueueListener] = None
        self._route = Route(None, own.input_to_str, own.output_to_str, False, True)
        self._short_engine = None
        super().__init__(queue if queue is not None else queue_module.SimpleQueue())

    # -- where tasks go -------------------------------------------------------------------

    def bind(self, engine: Engine) -> None:
        """Submit tasks straight to ``engine`` (what ``configure()`` does); calling it again
        hands over to another engine without a gap."""
        o = engine.options
        self._bind_route(engine, self._own.input_to_str or o.input_to_str, self._own.output_to_str or o.output_to_str)

    @property
    def engine(self) -> Optional[Engine]:
        """The engine tasks go to; None with a listener that is not ours."""
        return self._route.engine

    @property
    def listener(self) -> Optional[logging.handlers.QueueListener]:
        """The listener draining this handler's queue (dictConfig sets it on 3.12+)."""
        return self._listener

    @listener.setter
    def listener(self, listener: Optional[logging.handlers.QueueListener]) -> None:
        if type(listener) is logging.handlers.QueueListener and any(
            isinstance(h, PhosphoHandler) for h in listener.handlers
        ):
            # dictConfig's default listener (3.12+): ours does the same, and ships.
            listener = PhosphoQueueListener(
                listener.queue, *listener.handlers, respect_handler_level=listener.respect_handler_level
            )
        self._listener = listener
        if isinstance(listener, PhosphoQueueListener):
            maxsize = getattr(self.queue, "maxsize", 0) or 0
            if maxsize > 0:  # a bound given with the queue (dictConfig's "queue" key) applies
                listener.engine.limit_queue(maxsize)
            o = listener.engine.options
            self._bind_route(listener.engine, self._own.input_to_str or o.input_to_str,
                             self._own.output_to_str or o.output_to_str, records=bool(listener.others))
        else:
            self._bind_route(None, self._own.input_to_str, self._own.output_to_str, records=True)

    def _bind_route(self, engine: Optional[Engine], input_to_str: Any = None, output_to_str: Any = None,
                    records: bool = False) -> None:
        super()._bind_route(engine, input_to_str, output_to_str, records)
        if records:  # other handlers listen: they get every record, as from the stdlib pair
            self.handle = self._handle_every_record  # type: ignore[method-assign]
        else:
            self.__dict__.pop("handle", None)

    def _handle_every_record(self, record: logging.LogRecord) -> bool:
        if carries_task(record):
            return TaskIntake.handle(self, record)
        try:
            filtered = apply_filters(self, record)
            if filtered is None:
                return False
            self._pass_on(logging.handlers.QueueHandler.prepare(self, filtered))
            return True
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            report_error(exc)
            return False

    def _deliver(self, record: logging.LogRecord, snapshot: Snapshot, route: Route) -> None:
        if route.engine is None and self._find_listener():
            route = self._route
        engine = route.engine
        if engine is not None:
            engine.submit(self._copy(record, snapshot) if route.records else snapshot)
        elif _capture.active():
            _capture.deliver(snapshot, self._queue_options())
        else:
            self._pass_on(self._copy(record, snapshot))

    def _pass_on(self, copy: logging.LogRecord) -> None:
        """A prepared record to the engine, or (a listener that is not ours) to our queue,
        as the stdlib handler does."""
        if self._route.engine is None:
            self._find_listener()
        engine = self._route.engine
        if engine is not None:
            if carried(copy) is None:
                engine.pass_on(copy)
            else:
                engine.submit(copy)
            return
        try:
            if self.queue.qsize() >= self._queue_bound():  # type: ignore[attr-defined]
                raise queue_module.Full
            self.enqueue(copy)
        except queue_module.Full:
            next(self._refused)
            _lifecycle.report("queue_full", "the task queue is full (max_queue_size=%d); tasks are being dropped "
                              "and counted in stats()['dropped_by_reason']['queue_full']", self._queue_bound())

    def _find_listener(self) -> bool:
        """Link to our listener on the same queue, if there is one (the stdlib pattern,
        where the handler is never told its listener); True if now linked."""
        if self._listener is not None:
            return False
        try:
            ref = _listeners.get(self.queue)
        except TypeError:  # a queue that cannot be weakly referenced
            return False
        found = ref() if ref is not None else None
        if found is None:
            return False
        self.listener = found
        return True

    def _queue_options(self) -> Options:
        sender = self._sender()
        return sender.options if sender is not None else self._own

    def _queue_bound(self) -> int:
        # A queue with a maxsize of its own enforces it; ours are bounded by the option.
        maxsize = getattr(self.queue, "maxsize", 0) or 0
        if maxsize > 0:
            return int(maxsize)
        if self._explicit_max:
            return self._explicit_max
        return self._queue_options().max_queue_size

    def _sender(self) -> Optional[PhosphoHandler]:
        for handler in getattr(self._listener, "handlers", ()):
            if isinstance(handler, PhosphoHandler):
                return handler
        return None

    def prepare(self, record: logging.LogRecord) -> Any:
        """The stdlib override point: a copy of ``record`` carrying its task's snapshot."""
        route = self._route
        snapshot = carried(record) or snapshot_record(record, route.input_to_str, route.output_to_str,
                                                      _context.current())
        return self._copy(record, snapshot)

    def _copy(self, record: logging.LogRecord, snapshot: Snapshot) -> logging.LogRecord:
        """A copy of the record for other handlers, with ``msg`` rendered and ``args`` and
        ``exc_info`` cleared as the stdlib does (a structlog event dict in ``msg`` is kept
        as is, for a downstream ``ProcessorFormatter``), carrying the snapshot."""
        copy = _new_record(logging.LogRecord)
        copy.__dict__.update(record.__dict__)
        log = snapshot.log
        if type(record.msg) is not dict:
            copy.msg = log.message
            copy.args = None
        copy.exc_info = None
        if log.exception is not None:
            copy.exc_text = log.exception
        carry(copy, snapshot)
        return copy

    # -- flush, stats, close -----------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Delivery counters of this handler's engine (behind a listener that is not
        ours: of its ``PhosphoHandler``, plus this queue's own drops)."""
        engine = self._route.engine
        if engine is not None:
            return engine.stats()
        sender = self._sender()
        stats = sender.stats() if sender is not None else {}
        full = count_value(self._refused)
        if full and stats:
            stats["dropped_by_reason"]["queue_full"] = stats["dropped_by_reason"].get("queue_full", 0) + full
            stats["dropped"] += full
            stats["enqueued"] += full
        return stats

    def flush(self, timeout: Optional[float] = None) -> bool:  # type: ignore[override]
        """Without ``timeout`` (as ``logging`` calls it), ask the worker to send what it
        holds and return; with one, wait up to that long for delivery."""
        engine = self._route.engine
        if engine is None:
            sender = self._sender()
            engine = sender.engine if sender is not None else None
        return True if engine is None else engine.flush(0.0 if timeout is None else timeout)

    def close(self) -> None:
        """Let the listener's engine finish in the background; never blocks."""
        if isinstance(self._listener, PhosphoQueueListener):
            self._listener.engine.shutdown(wait=False)
        super().close()

