"""The engine: one queue, one worker thread, one exporter, and the books of every task.

Modelled on OpenTelemetry's ``BatchProcessor``: one class owns its queue, its worker, its
exporter (through ``Delivery``), its counters, its flush and shutdown, and its fork
reset. The handlers, the queue pair, the structlog processor, ``configure()`` and the
``push`` command are thin adapters over it.

A task flows one way. A producer's ``submit`` puts the item on a ``SimpleQueue`` (no lock,
no thread started, reentrant). The worker expands it into a wire event (``_event``),
gathers events in a ``Batch``, and hands each batch to ``Delivery`` (retry, back-off,
circuit) and its exporter; what cannot be delivered goes to the spool; when idle the
worker replays the spool. Flush and stop are markers in the same FIFO queue, so a flush
waits exactly for what was logged before it.

Each task taken off the queue is resolved exactly once (sent, rejected, spooled or
dropped with a reason), so ``enqueued == sent + rejected + dropped + queued + spooled``.
"""

from __future__ import annotations

import itertools
import logging
import queue as queue_module
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

from . import _capture, _diag, _lifecycle
from ._batch import Batch
from ._config import Options
from ._delivery import Books, Delivery, Resolution, count_value
from ._event import encode, event_budget
from ._export import WireEvent, destination_of
from ._http import HTTPExporter
from ._item import snapshot_of
from ._settle import SPOOL_PAUSE, Settler
from ._spool import Spool
from ._store import LocalStoreExporter

#: Seconds the worker waits for an item when it has nothing else to do.
IDLE_WAIT = 1.0
#: At exit, past the deadline by this much, tasks are counted as lost instead of spooled.
EXIT_GRACE = 0.25
#: A worker that took nothing for this long at the shutdown deadline is stuck (in a
#: request that does not answer): the stopping thread keeps what it holds.
STUCK_AFTER = 0.1
#: Tasks kept per write when the exiting thread rescues a stuck worker.
RESCUE_CHUNK = 1000
#: Internal errors in a row after which the worker gives up (leaving tasks counted as queued).
MAX_CRASHES = 100


_serials = itertools.count()


def default_exporter(options: Options) -> Any:
    """The HTTP exporter with credentials, the local store without."""
    if options.online:
        assert options.api_key is not None
        return HTTPExporter(options.endpoint, options.api_key)
    return LocalStoreExporter(options.store_path())


class _Marker:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class _Flush(_Marker):
    __slots__ = ()


class _Stop(_Marker):
    __slots__ = ("deadline", "at_exit")

    def __init__(self, deadline: float, at_exit: bool) -> None:
        super().__init__()
        self.deadline = deadline
        self.at_exit = at_exit


class _Held:
    """Events the worker holds (a batch being filled or sent); settled once, by the
    worker or, when it is stuck at the shutdown deadline, by the thread that rescues it."""

    __slots__ = ("batch", "_token")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self._token = [True]

    def claim(self) -> bool:
        """True for the first caller only (``list.pop`` is atomic)."""
        try:
            self._token.pop()
        except IndexError:
            return False
        return True

    @property
    def settled(self) -> bool:
        return not self._token


class Engine:
    """Ships tasks for one configuration; see the module docstring.

    Args:
        options: the resolved options.
        exporter: where batches go (default: phospho's API with credentials, the local
            store without).
        name: the worker thread's name.
    """

    def __init__(self, options: Options, exporter: Any = None, *, name: str = "phospho-logging-worker") -> None:
        self.options = options
        self.exporter = exporter if exporter is not None else default_exporter(options)
        self.destination = destination_of(self.exporter)
        #: No text function to run on the caller's thread: the short paths apply.
        self.plain = options.input_to_str is None and options.output_to_str is None
        self.spool: Optional[Spool] = (
            Spool(options.store_path(), options.project_id, options.max_spool_tasks)
            if options.online and options.project_id else None
        )
        self._name = name
        #: Creation order (the newest open engine is the default for the structlog processor).
        self.serial = next(_serials)
        self._forward: Optional[Callable[[logging.LogRecord], None]] = None
        self._max_queue = options.max_queue_size
        self._budget = event_budget(options.max_batch_bytes)
        self._capturing = False
        self._closed = False
        self._fresh()
        _lifecycle.register(self)
        if _capture.active():
            self.capture(True)
        if self.spool is not None:
            _lifecycle.wake(self)  # the spool of an earlier run is replayed in the background now

    def _fresh(self) -> None:
        """Queue, counters, thread state: at creation, and again in a forked child."""
        self._queue: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        # What producers did is counted where it is cheapest: tasks put on the queue are
        # counted by the worker when it takes them (what is still there is in the queue's
        # size, less the flush and stop markers), so a logging call bumps no counter.
        self._markers_put = itertools.count()  # flush and stop markers put on the queue
        self._refused = itertools.count()  # the queue was full
        self._late = itertools.count()  # logged after the exit drain
        self._ignored = itertools.count()  # task-looking records made by our own I/O
        self._said: Dict[str, bool] = {}
        self.books = Books()
        self._stopping = threading.Event()
        self._deadline: Optional[float] = None
        self.delivery = Delivery(self.exporter, self.options, self.books, stopping=self._stopping,
                                 deadline=self._get_deadline, around_export=_lifecycle.own_io)
        self._running = False
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self.stopped = False
        self._stop: Optional[_Stop] = None
        self._building: Optional[_Held] = None
        self._flight: Optional[_Held] = None
        self._barrier_losses = 0
        self.settler = Settler(self.options, self.exporter, self.books, self.spool, self._past_grace)
        self._abandoned = False  # the exit grace ran out: what is left stays unbuilt
        self._beats = 0  # bumped by the worker as it goes (a stuck worker's stays still)

    def __repr__(self) -> str:
        return f"<phospho_logging engine -> {self.destination}>"

    def _get_deadline(self) -> Optional[float]:
        return self._deadline

    # -- the producer side: any thread, signal handler or finalizer ----------------------

    def submit(self, item: Any) -> None:
        """Put one item on the queue. Never blocks, raises, takes a lock or starts a thread."""
        q = self._queue
        if q.qsize() >= self._max_queue:
            next(self._refused)
            self._say_once("queue_full", "the task queue is full (max_queue_size=%d); tasks are being dropped and "
                           "counted in stats()['dropped_by_reason']['queue_full']", self._max_queue)
            return
        q.put(item)
        if not self._running:
            _lifecycle.wake(self)

    def ignore_own_io(self) -> None:
        """Count a task-carrying record made by the library's own I/O: it is not the
        application's task, and shipping it could loop (``stats()["ignored_own_io"]``)."""
        next(self._ignored)
        self._say_once("own_io", "a task was logged from inside phospho_logging's own I/O (an exporter, or a "
                       "handler the listener passes records to); it is not shipped, to avoid a loop")

    def _submit_after_exit(self, item: Any) -> None:
        next(self._late)
        if not self._said.get("late"):
            self._said["late"] = True
            try:  # at interpreter teardown: no logging machinery, one plain line
                sys.stderr.write("phospho-logging: a task was logged after the exit drain; it and any later "
                                 "ones are not kept\n")
            except Exception:  # noqa: BLE001, S110 - stderr may be gone
                pass

    def _say_once(self, key: str, message: str, *args: object) -> None:
        if not self._said.get(key):
            self._said[key] = True
            _lifecycle.report(key, message, *args)

    def capture(self, on: bool) -> None:
        """While a capture is active, ``submit`` builds the event at once (``_capture``)."""
        self._capturing = on
        self._select_submit()

    def close_for_exit(self) -> None:
        """After the exit drain: later tasks are counted as lost at exit, and said once."""
        self._closed = True
        self._select_submit()

    def _select_submit(self) -> None:
        if self._closed:
            self.submit = self._submit_after_exit  # type: ignore[method-assign]
        elif self._capturing:
            self.submit = _capture.submitter(self.options)  # type: ignore[method-assign,assignment]
        else:
            self.__dict__.pop("submit", None)

    # -- control: configure, flush, shutdown, exit ----------------------------------------

    def limit_queue(self, size: int) -> None:
        """Hold at most ``size`` tasks waiting (a queue handler's own bound, if smaller)."""
        self._max_queue = min(self._max_queue, size)

    def forward_to(self, forward: Optional[Callable[[logging.LogRecord], None]]) -> None:
        """Pass every record taken off the queue to ``forward`` too (a listener's other handlers)."""
        self._forward = forward

    def start(self) -> None:
        """Start the worker unless it runs (the control thread calls this)."""
        with self._start_lock:
            if self._running or self._closed:
                return
            thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._running = True
            try:
                thread.start()
            except RuntimeError:  # interpreter shutdown: the exit path drains on its own thread
                self._running = False
                return
            self._thread = thread

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything submitted before the call is delivered or spooled.

        True when it was and nothing was dropped or rejected since the previous flush;
        False on timeout or loss (``stats()`` says which). ``None`` waits for the whole
        retry budget; ``0`` only asks the worker to send what it holds.
        """
        if not self._running and self._queue.qsize() == 0 and not self._holding():
            return self._barrier_ok()  # idle: nothing to wait for
        marker = _Flush()
        self._put_marker(marker)  # markers bypass the bound: a flush is never refused
        if not self._running:
            _lifecycle.wake(self)
        limit = self.retry_budget() if timeout is None else max(0.0, timeout)
        return marker.done.wait(limit) and marker.ok

    def retry_budget(self) -> float:
        """The longest a batch can take to be delivered or spooled."""
        o = self.options
        return o.flush_interval + o.max_retry_time + o.timeout + 1.0

    def shutdown(self, timeout: Optional[float] = None, wait: bool = True) -> bool:
        """Deliver what is queued within ``timeout`` (default ``shutdown_timeout``), spool
        the rest; tasks that still arrive later are delivered too. With ``wait=False`` the
        deadline is set and the call returns at once. True if everything was settled in time."""
        limit = self.options.shutdown_timeout if timeout is None else max(0.0, timeout)
        with self._start_lock:
            first = not self.stopped
            self.stopped = True
        if not first:
            return self._join(self._stop) if wait else False
        self._deadline = time.monotonic() + limit
        self._stopping.set()
        if not self._running and self._queue.qsize() == 0 and not self._holding():
            return True  # never used, or idle: a late task wakes a worker that ends when done
        stop = self._stop = _Stop(self._deadline, at_exit=False)
        self._put_marker(stop)
        if not self._running:
            _lifecycle.wake(self)
        return self._join(stop) if wait else False

    def _put_marker(self, marker: _Marker) -> None:
        next(self._markers_put)
        self._queue.put(marker)

    def needs_exit(self) -> bool:
        """True unless the exit drain already ran for this engine."""
        return not self._closed

    def begin_exit(self) -> None:
        """Interpreter exit: set the deadline and put the exit marker (all engines at once)."""
        self._deadline = min(self._deadline or float("inf"), time.monotonic() + self.options.shutdown_timeout)
        self.stopped = True
        self._stopping.set()
        self._stop = _Stop(self._deadline, at_exit=True)
        self._put_marker(self._stop)

    def end_exit(self) -> None:
        """Wait for the exit drain until the deadline (draining here if no worker runs),
        rescue what a stuck worker holds, and say what became of the tasks."""
        stop = self._stop
        with self._start_lock:
            drain_here = not self._running
            if drain_here:
                self._running = True  # no worker may start now: this thread is the worker
        if drain_here:
            try:
                self._loop()
            finally:
                self._running = False
        else:
            self._join(stop)
        self.close_for_exit()
        finished = stop is not None and stop.done.is_set()
        self.settler.report_exit(finished, 0 if finished else max(0, self.stats()["queued"]), self)

    def _join(self, stop: Optional[_Stop]) -> bool:
        """Wait for ``stop`` until the deadline; if the worker is stuck (in a request that
        does not answer), keep what it holds from this thread. True if it ended in time."""
        deadline = self._deadline
        if stop is None or deadline is None:
            return True
        reserve = min(0.25, 0.2 * self.options.shutdown_timeout)
        if stop.done.wait(max(0.0, deadline - reserve - time.monotonic())):
            return True
        beats = self._beats
        if stop.done.wait(min(STUCK_AFTER, max(0.0, deadline - time.monotonic()))):
            return True
        if self._beats != beats:
            # Slow, not stuck (a busy application thread holds the interpreter): the worker
            # keeps what it holds itself, and stops at the exit grace.
            return stop.done.wait(max(0.0, deadline + (EXIT_GRACE if stop.at_exit else 0.0) - time.monotonic()))
        self._rescue(at_exit=stop.at_exit)
        return stop.done.wait(max(0.0, deadline - time.monotonic()))

    # -- the worker ---------------------------------------------------------------------

    def _run(self) -> None:
        crashes = 0
        while True:
            try:
                self._loop()
            except BaseException as exc:  # noqa: BLE001 - a bug of ours: say it, keep going
                self._abandon(exc)
                crashes += 1
                if crashes < MAX_CRASHES:
                    continue  # what it held is kept; the queue goes on being drained
            if self._abandoned or self._park():
                break
        self._release()

    def _park(self) -> bool:
        """The worker ends: True, unless items arrived meanwhile (it then goes on).

        ``_running`` is cleared before the queue is looked at: a producer that put an item
        after the look sees ``_running`` False and wakes a new worker.
        """
        with self._start_lock:
            self._running = False
            if self._queue.qsize() == 0:
                return True
            self._running = True
            return False

    def _release(self) -> None:
        try:
            self.exporter.close()
            if self.spool is not None:
                self.spool.close()
        except Exception:  # noqa: BLE001, S110 - nothing left to do with them
            pass

    def _loop(self) -> None:
        """The one batching loop: take items until the engine is stopped and nothing is
        left. Batches go out when full, after ``flush_interval``, at a flush marker, at a
        stop marker and, once stopped, as soon as the queue is empty. At the exit marker
        the engine closes (later logging calls are only counted); what arrived before is
        drained, and past the exit deadline counted as lost without being built."""
        q = self._queue
        held = self._hold()
        due = 0.0
        exiting: Optional[_Stop] = None
        while True:
            batch = held.batch
            if batch:
                timeout = due - time.monotonic()
            elif self.stopped:
                timeout = 0.0
            elif self.settler.replay_due and time.monotonic() >= self.settler.replay_after \
                    and not self.delivery.circuit.is_open():
                timeout = 0.0
            else:
                timeout = IDLE_WAIT
            try:
                item = q.get(True, timeout) if timeout > 0 else q.get_nowait()
            except queue_module.Empty:
                if batch:
                    held = self._send(held)
                elif self.stopped:
                    self._building = None
                    if exiting is not None:
                        self._barrier(exiting)
                    return
                elif self.settler.replay_due:
                    try:
                        self.settler.replay(self.delivery)
                    except Exception as exc:  # noqa: BLE001 - replay is best-effort; the worker goes on
                        self.settler.replay_after = time.monotonic() + SPOOL_PAUSE
                        _diag.warn_once("replay_error", "replaying the spool failed: %r", exc)
                continue
            kind = type(item)
            if kind is _Flush or kind is _Stop:
                next(self.books.markers_got)
                if batch:
                    held = self._send(held)
                if kind is _Stop and item.at_exit:
                    self.close_for_exit()
                    exiting = item
                else:
                    self._barrier(item)
                continue
            next(self.books.got)
            if exiting is not None and time.monotonic() >= exiting.deadline:
                # Out of time at exit: keep the rest in bulk (the spool, or offline the
                # store), oldest first, until the grace runs out; the report counts the rest.
                self._rescue(at_exit=True, first=item)
                self._barrier(exiting)
                return
            self._beats += 1
            event = self._encode(item)
            if event is None:
                continue
            if not batch:
                due = time.monotonic() + (0.0 if self.stopped else self.options.flush_interval)
            elif not batch.fits(event):
                held = self._send(held)
                batch = held.batch
                due = time.monotonic() + (0.0 if self.stopped else self.options.flush_interval)
            batch.add(event)
            if batch.full:
                held = self._send(held)

    def _hold(self) -> _Held:
        held = self._building = _Held(Batch(self.options.max_batch_size, self.options.max_batch_bytes))
        return held

    def _holding(self) -> int:
        """Events taken off the queue and not settled yet."""
        count = 0
        for held in (self._building, self._flight):
            if held is not None and not held.settled:
                count += len(held.batch)
        return count

    def _encode(self, item: Any) -> Optional[WireEvent]:
        """The wire event of a queue item (None if it carries no task); a task that cannot
        be built is counted as dropped here."""
        try:
            if self._forward is not None and isinstance(item, logging.LogRecord):
                with _lifecycle.own_io():
                    self._forward(item)
            snapshot = snapshot_of(item)
            if snapshot is None:
                next(self.books.passed)  # a record passed on to other handlers only
                return None
            o = self.options
            event = encode(snapshot, project_id=o.project_id, version_id=o.version_id,
                           max_field_chars=o.max_field_chars, max_bytes=self._budget)
            if snapshot.problems:
                self.settler.count_problems(snapshot.problems)
            if event is None:
                self.settler.drop(1, "too_large", f"a task is larger than max_batch_bytes={o.max_batch_bytes} even "
                                              "when truncated")
            return event
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop the worker
            self.settler.drop(1, "internal_error", f"could not build a task: {exc!r}")
            return None


    def _send(self, held: _Held) -> _Held:
        """Deliver (or keep) the events ``held``; returns a new, empty holder."""
        self._flight = held
        self._building = None
        nxt = self._hold()
        events = held.batch.events
        with self.books.lock:
            self.books.batches += 1
        stored = self.settler.durable_copy(events)
        try:
            results = self.delivery.attempt(events)
        except Exception as exc:  # noqa: BLE001 - never lose a batch to a bug of ours
            results = [Resolution("failed", list(events), "internal_error", f"delivery failed: {exc!r}")]
        self._beats += 1
        if held.claim():  # else rescued at the shutdown deadline meanwhile
            self.settler.settle(results, stored)
        self._flight = None
        return nxt

    def _barrier(self, marker: _Marker) -> None:
        marker.ok = self._barrier_ok()
        marker.done.set()

    def _barrier_ok(self) -> bool:
        losses = self._losses()
        ok = losses == self._barrier_losses
        self._barrier_losses = losses
        return ok

    def _losses(self) -> int:
        return self.books.losses() + count_value(self._refused) + count_value(self._late)

    def _abandon(self, exc: BaseException) -> None:
        """After an internal error in the loop: what the worker held is kept, not lost."""
        _diag.warn_once("worker_error", "internal error in the worker, which goes on: %r", exc)
        for held in (self._flight, self._building):
            if held is not None and held.claim():
                self.settler.keep(held.batch.events, "internal_error", f"internal error: {exc!r}")
        self._flight = self._building = None

    # -- exit and rescue ------------------------------------------------------------------

    def _rescue(self, at_exit: bool, first: Any = None) -> None:
        """Out of time: keep what the worker holds, then ``first`` (an item just taken) and
        what is queued, oldest first, a chunk at a time. From the stopping thread when the
        worker is stuck, or from the worker itself at exit."""
        reason, message = "shutdown_deadline", "shutdown_timeout reached with tasks unsent"
        for held in (self._flight, self._building):
            if held is not None and held.claim() and held.batch:
                self.settler.keep(held.batch.events, reason, message)
        if at_exit:
            self.close_for_exit()
        chunk: List[WireEvent] = []
        if first is not None:
            event = self._encode(first)
            if event is not None:
                chunk.append(event)
        for event in self._sweep():
            chunk.append(event)
            if len(chunk) >= RESCUE_CHUNK:
                self.settler.keep(chunk, reason, message)
                chunk = []
        if chunk:
            self.settler.keep(chunk, reason, message)

    def _sweep(self) -> Iterator[WireEvent]:
        """The events of what is on the queue now, and no more however fast others log
        (markers are released; past the exit deadline tasks are counted, not built)."""
        q = self._queue
        for _ in range(q.qsize()):
            if self._past_grace():
                self._abandoned = True  # what is left is counted by the exit report
                return
            try:
                item = q.get_nowait()
            except queue_module.Empty:
                break
            if isinstance(item, _Marker):
                next(self.books.markers_got)
                item.done.set()
                continue
            next(self.books.got)
            event = self._encode(item)
            if event is not None:
                yield event

    def _past_grace(self) -> bool:
        deadline = self._deadline
        return deadline is not None and _lifecycle.state != "running" and time.monotonic() > deadline + EXIT_GRACE

    # -- statistics -------------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """The counters; ``enqueued == sent + rejected + dropped + queued + spooled``."""
        b = self.books
        with b.lock:
            dropped = dict(b.dropped)
            got, passed, markers_got = count_value(b.got), count_value(b.passed), count_value(b.markers_got)
            settled = b.resolved()
            snapshot = {
                "destination": self.destination,
                "sent": b.sent,
                "rejected": b.rejected,
                "spooled": b.spooled,
                "replayed": b.replayed,
                "replay_rejected": b.replay_rejected,
                "spool_evicted": b.spool_evicted,
                "rejected_by_reason": dict(b.rejected_by_reason),
                "spooled_by_reason": dict(b.spooled_by_reason),
                "problems": dict(b.problems),
                "batches": b.batches,
                "requests": b.requests,
                "retries": b.retries,
                "last_error": b.last_error,
            }
        producer_drops = {
            "queue_full": count_value(self._refused),
            "logged_after_exit": count_value(self._late),
        }
        for reason, n in producer_drops.items():
            if n:
                dropped[reason] = dropped.get(reason, 0) + n
        # Each count is read once, without stopping anyone: a task taken off the queue
        # between two reads can show in two places for an instant, never in none.
        in_queue = self._queue.qsize() - (count_value(self._markers_put) - markers_got)
        enqueued = sum(producer_drops.values()) + got - passed + in_queue
        queued = got - passed - settled + in_queue
        snapshot.update(
            enqueued=enqueued,
            dropped=sum(dropped.values()),
            queued=queued,
            dropped_by_reason=dropped,
            ignored_own_io=count_value(self._ignored),
            circuit_open=self.delivery.circuit.is_open(),
            worker_alive=self._running,
        )
        return snapshot

    # -- fork -------------------------------------------------------------------------------

    def reset_after_fork(self) -> None:
        """In a forked child: a new queue, counters and locks, no worker (one starts with
        the first task); the parent's queued tasks stay the parent's to send."""
        reset = getattr(self.exporter, "reset_after_fork", None)
        if callable(reset):
            reset()
        self._fresh()
        self.settler.replay_due = False  # the parent replays its spool; the child only adds to it
