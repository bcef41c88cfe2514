"""The engine's worker thread: the one batching loop, and the rescue at the deadline.

``WorkerLoop`` is the half of ``Engine`` that runs on the worker thread (and, at exit or
when the worker is stuck, on the thread that stops the engine): it takes items off the
queue, turns them into wire events, gathers them in batches, delivers each batch and has
its outcome settled. The other half (``_engine``: what producers and control calls do)
owns the state it reads.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue as queue_module
import signal
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Set, Tuple

from . import _diag, _lifecycle
from ._batch import ADDED, FILLED, NO_ROOM, Batch
from ._config import Options
from ._delivery import Books, Delivery, Resolution, count_value, interrupts_this_thread
from ._event import FILTERED, PlainEncoder, TestRun, encode, test_run
from ._export import WireEvent
from ._feedback import Feedback, Outbox
from ._item import snapshot_of
from ._redact import RedactError, Redaction, Sampler
from ._settle import Settler

#: Seconds the worker waits for an item when it has nothing else to do.
IDLE_WAIT = 1.0
#: At exit, past the deadline by this much, tasks are counted as lost instead of kept.
EXIT_GRACE = 0.25
#: A worker that took nothing for this long at the shutdown deadline is stuck (in a
#: request that does not answer): the stopping thread keeps what it holds.
STUCK_AFTER = 0.1
#: Tasks kept per write when the rest is rescued at the deadline.
RESCUE_CHUNK = 1000
#: Internal errors in a row after which the worker gives up (leaving tasks counted as queued).
MAX_CRASHES = 100
#: At exit, spooled tasks are replayed while at least this many seconds are left.
REPLAY_AT_EXIT = 0.5
#: Stopping, feedback whose task phospho does not have yet is retried this long, then spooled.
STOP_FEEDBACK_WAIT = 2.0
#: How often a wait for a sender (a free slot, the batches in flight) looks up.
SENDER_POLL = 0.05


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """On the main thread, where signal handlers run: the Python-level handlers (the
    default SIGINT one that raises KeyboardInterrupt, a SIGTERM handler that calls
    ``sys.exit()``) are held back while the block runs, and what arrived meanwhile is
    handled at its end. A Ctrl-C then lands between two rescued chunks, never between a
    chunk taken off the queue and its write and count. Elsewhere, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[int] = []

    def record(signum: int, frame: Any) -> None:
        caught.append(signum)

    saved: Dict[int, Any] = {}
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
            if callable(handler):
                signal.signal(signum, record)
                saved[signum] = handler
        except (OSError, ValueError, RuntimeError):  # not settable here
            continue
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
        for number in caught:
            original = saved.get(number)
            if callable(original):
                original(number, None)  # KeyboardInterrupt, SystemExit...: raised here, now


class Marker:
    """A flush or stop request in the queue; ``losses`` is the loss count when reached."""

    __slots__ = ("done", "losses")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.losses = -1


class Flush(Marker):
    """Send what you hold, and say when everything before this was settled."""

    __slots__ = ()


class Stop(Marker):
    """Settle everything before this within ``deadline``; ``at_exit``: the process ends."""

    __slots__ = ("deadline", "at_exit")

    def __init__(self, deadline: float, at_exit: bool) -> None:
        super().__init__()
        self.deadline = deadline
        self.at_exit = at_exit


class Passing:
    """A record for the other handlers behind a listener only (it carries no task)."""

    __slots__ = ("record",)

    def __init__(self, record: logging.LogRecord) -> None:
        self.record = record


#: ``Held.offer``: the batch was claimed (rescued) meanwhile; the event was not added.
CLAIMED = 3


class Held:
    """Events the worker holds (a batch being filled or sent), settled once: by the
    worker, or by the thread that rescues it at the shutdown deadline. The small lock is
    taken by those two only, never by a producer."""

    __slots__ = ("batch", "lock", "settled")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        #: Held while the batch is offered an event or claimed.
        self.lock = threading.Lock()
        #: Claimed: no event joins any more (read it with the lock held to add one).
        self.settled = False

    def offer(self, event: WireEvent) -> int:
        """``Batch.offer`` unless the batch was claimed meanwhile: ``CLAIMED`` then."""
        with self.lock:
            if self.settled:
                return CLAIMED
            return self.batch.offer(event)

    def claim(self) -> bool:
        """True for the first caller only; the batch is theirs to settle."""
        with self.lock:
            if self.settled:
                return False
            self.settled = True
            return True


class Senders:
    """Threads that send batches for the worker, so that ``max_in_flight`` requests are in
    flight at once (for exporters that say ``concurrent = True``: the HTTP exporter). The
    worker goes on taking and building the next batch meanwhile. Started by the worker
    (never by a producer) on its first batch, ended when the worker ends; where no thread
    can start (interpreter shutdown), the worker sends itself."""

    def __init__(self, loop: WorkerLoop, count: int, name: str) -> None:
        self._loop = loop
        self._count = count
        self._name = name
        self._slots = threading.Semaphore(count)
        self._jobs: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        self._threads: List[threading.Thread] = []
        self._settled = threading.Event()
        self.idents: Set[int] = set()

    def dispatch(self, held: Held, stored: bool) -> bool:
        """Hand ``held`` to a sender once one is free; False if none can take it (then
        the caller sends it). Until a request succeeds (at the start, after a failure),
        one request at a time: this returns False once the batches in flight are settled."""
        if not self._loop.delivery.circuit.proven:
            self.wait_settled(held)
            return False
        while not self._slots.acquire(timeout=SENDER_POLL):
            if self._loop._abandoned:
                return False
        return self._hand(held, stored)

    def offer(self, held: Held, stored: bool) -> bool:
        """Hand ``held`` to a sender only if one can take it now (a free slot; until a
        request succeeds, nothing else in flight); False otherwise. Never waits."""
        if not self._loop.delivery.circuit.proven and self.busy(held):
            return False
        return self._slots.acquire(blocking=False) and self._hand(held, stored)

    def _hand(self, held: Held, stored: bool) -> bool:
        """With a slot taken: queue ``held`` for a sender (False, the slot given back, if
        no sender thread can run)."""
        if not self._started():
            self._slots.release()
            return False
        self._jobs.put((held, stored))
        return True

    def busy(self, besides: Optional[Held] = None) -> bool:
        """A batch in flight (other than ``besides``) is unsettled."""
        return any(not h.settled and h is not besides for h in list(self._loop._flights))

    def _started(self) -> bool:
        try:
            while len(self._threads) < self._count:
                thread = threading.Thread(target=self._run, name=f"{self._name}-sender", daemon=True)
                thread.start()
                self._threads.append(thread)
        except RuntimeError:  # interpreter shutdown: no new thread
            return bool(self._threads)
        return True

    def _run(self) -> None:
        self.idents.add(threading.get_ident())
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                try:
                    self._loop._deliver(*job)
                finally:
                    self._slots.release()
                    self._settled.set()
        finally:
            self.idents.discard(threading.get_ident())

    def wait_settled(self, besides: Optional[Held] = None) -> None:
        """Until no batch in flight (``besides`` this one) is unsettled: sent and settled,
        or rescued."""
        while self.busy(besides) and not self._loop._abandoned:
            self._settled.wait(SENDER_POLL)
            self._settled.clear()

    def close(self) -> None:
        """The worker ends: the senders end once the batches in flight are settled."""
        self.wait_settled()
        for _ in self._threads:
            self._jobs.put(None)
        self._threads = []


class WorkerLoop:
    """The worker thread's half of ``Engine`` (see the module docstring)."""

    # Set by Engine.
    options: Options
    books: Books
    delivery: Delivery
    settler: Settler
    stopped: bool
    _queue: queue_module.SimpleQueue[Any]
    _forward: Optional[Callable[[logging.LogRecord], None]]
    _budget: int
    _plain_encoder: PlainEncoder
    _test_run: Optional[TestRun]
    _deadline: Optional[float]
    _start_lock: Any
    _running: bool
    _building: Optional[Held]
    _flights: Set[Held]
    _senders: Optional[Senders]
    _name: str
    exporter: Any
    _abandoned: bool
    _beats: int
    _stop: Optional[Stop]
    _stopping: threading.Event
    _refused: Any
    _late: Any
    _failed: Any
    _loop_ident: Optional[int]
    outbox: Outbox
    _deferred: Deque[Any]
    _deferred_stop: Optional[int]
    _stop_started: float
    _feedback_lost: Dict[str, int]
    _redaction: Optional[Redaction]
    _sampler: Optional[Sampler]

    def close_for_exit(self) -> None:  # pragma: no cover - Engine's
        raise NotImplementedError

    def release_resources(self) -> None:  # pragma: no cover - Engine's
        raise NotImplementedError

    def _run(self) -> None:
        crashes = 0
        while True:
            try:
                self._loop()
                crashes = 0
            except BaseException as exc:  # noqa: BLE001 - a bug of ours: say it, keep going
                self._abandon(exc)
                crashes += 1
                if crashes < MAX_CRASHES:
                    continue  # what it held is kept; the queue goes on being drained
            if self._abandoned or self._park():
                break
        senders, self._senders = self._senders, None
        if senders is not None:
            senders.close()
        self.release_resources()

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

    def _loop(self) -> None:
        """The one batching loop: take items until the engine is stopped and nothing is
        left. Batches go out when full, after ``flush_interval``, at a flush marker, at a
        stop marker and, once stopped, as soon as the queue is empty. At the exit marker
        the engine closes (later logging calls are only counted); what arrived before is
        drained, and past the deadline kept in bulk until the exit grace runs out."""
        q = self._queue
        settler = self.settler
        self._loop_ident = threading.get_ident()
        held = self._hold()
        due = 0.0
        exiting: Optional[Stop] = None
        carried: Any = None  # an item a run of plain records took off the queue: the next one
        while True:
            batch = held.batch
            pending = batch.events  # a list: its truth is the batch's, without a call
            if pending:
                timeout = due - time.monotonic()
            elif self.stopped and not self.outbox:
                timeout = 0.0
            elif self._may_replay():
                timeout = 0.0
            else:
                timeout = IDLE_WAIT
            if not pending and self.outbox:
                # Feedback goes once no batch is being built (the one with its task went first).
                self._beats += 1  # retrying feedback is progress, not a stuck worker
                wait = STUCK_AFTER  # sending rests (the circuit): look again soon, without spinning
                if self._can_send_feedback():
                    self.outbox.send_due(self._can_send_feedback)
                    feedback_due = self.outbox.next_due()
                    if feedback_due is not None:
                        wait = max(0.0, feedback_due - time.monotonic())
                timeout = min(timeout, wait, STUCK_AFTER)
            if self._deferred:
                self._release_deferred()
            try:
                if carried is not None:
                    item, carried = carried, None
                else:
                    item = q.get(True, timeout) if timeout > 0 else q.get_nowait()
            except queue_module.Empty:
                if batch:
                    held = self._send(held)
                elif self.stopped:
                    if self.outbox and self._time_for_feedback():
                        continue  # feedback waiting for its task: retried while the deadline allows
                    if (exiting is not None and exiting.deadline - time.monotonic() > REPLAY_AT_EXIT
                            and self._may_replay()):
                        # At exit, the queue drained: the time left sends what earlier runs
                        # spooled (a short-lived program would otherwise never catch up).
                        settler.replay(self.delivery)
                        continue
                    self._building = None
                    self._release_deferred(force=True)
                    if exiting is not None:
                        self._barrier(exiting, force=True)
                    return
                elif self._may_replay():
                    settler.replay(self.delivery)
                continue
            kind = type(item)
            if kind is Flush or kind is Stop:
                next(self.books.markers_got)
                if batch:
                    held = self._send(held)
                if kind is Stop and item.at_exit:
                    self.close_for_exit()
                    exiting = item
                else:
                    self._barrier(item)
                continue
            if kind is Passing:
                next(self.books.passing_got)
                self._beats += 1
                self._pass(item.record)
                continue
            if kind is Feedback:
                next(self.books.feedback_got)
                self._beats += 1
                sampler = self._sampler
                if sampler is not None and sampler.was_left_out(item.task_id):
                    with self.books.lock:  # its task's session was left out by sample_rate
                        self.books.feedback["sampled_out"] += 1
                    continue
                self.outbox.add(item)
                continue
            next(self.books.got)
            if exiting is not None and time.monotonic() >= exiting.deadline:
                # Out of time at exit: keep the rest in bulk (the spool, or offline the
                # store), oldest first, until the grace runs out; the report counts the rest.
                self._rescue(at_exit=True, first=item)
                self._barrier(exiting)
                return
            self._beats += 1
            if not pending:  # the event opens a batch: phospho's test runner sets this as it runs
                self._test_run = test_run()
            event = self._encode(item)
            if event is None:
                continue
            done = held.offer(event)
            if done == ADDED and len(pending) == 1:  # it opened the batch
                due = time.monotonic() + (0.0 if self.stopped else self.options.flush_interval)
            if (done == ADDED and (kind is list or kind is bytes) and exiting is None and self._test_run is None
                    and self._redaction is None and self._sampler is None):
                # A run of plain records (the commonest item), taken while the queue has
                # them and built without the steps above: none of them is a marker, the
                # exit deadline is not near, no test run, redaction or sampling applies.
                # It ends at the batch's end, an empty queue or another kind of item.
                done, event, carried = self._plain_run(held, event)
            if done == ADDED:
                continue
            if done == NO_ROOM:
                # The event starts the next batch before the full one is sent: held by a
                # holder all along, so a rescue meanwhile keeps it.
                full, held = held, self._hold()
                done = held.offer(event)
                due = time.monotonic() + (0.0 if self.stopped else self.options.flush_interval)
                self._dispatch(full)
                if held.settled:  # rescued while the full one was sent: a new batch
                    held = self._hold()
                    continue
            elif done == CLAIMED:  # the batch was rescued meanwhile: a new one
                held = self._hold()
                done = held.offer(event)
                due = time.monotonic() + (0.0 if self.stopped else self.options.flush_interval)
            if done == FILLED:
                held = self._send(held)

    def _plain_run(self, held: Held, event: WireEvent) -> Tuple[int, WireEvent, Any]:
        """Plain records off the queue into ``held`` (``event`` the last one added) while
        the queue has them: (the last ``offer`` result, its event, an item of another
        kind taken off the queue or None). Each record is counted as taken, and one the
        plain encoder cannot build takes ``_encode`` (which counts what it drops)."""
        get, got = self._queue.get_nowait, self.books.got
        encode, mfc, budget = self._plain_encoder.encode, self.options.max_field_chars, self._budget
        # Held.offer's steps, with the lock and the batch's offer looked up once for the run.
        lock, offer = held.lock, held.batch.offer
        while True:
            try:
                item = get()
            except queue_module.Empty:
                return ADDED, event, None
            if type(item) is not list and type(item) is not bytes:
                return ADDED, event, item
            next(got)
            built = encode(item, mfc, budget)
            if built is None:
                built = self._encode(item)
                if built is None:
                    continue
            event = built
            with lock:
                done = CLAIMED if held.settled else offer(event)
            if done != ADDED:
                return done, event, None

    def _may_replay(self) -> bool:
        """The worker is idle and may send from the spool; with ``durable=True``, not while
        a request is still in flight (a replay that hung would stop the writing)."""
        if not self.settler.replay_ready() or self.delivery.circuit.is_open():
            return False
        senders = self._senders
        return not (self.options.durable and senders is not None and senders.busy())

    def _hold(self) -> Held:
        held = self._building = Held(Batch(self.options.max_batch_size, self.options.max_batch_bytes))
        return held

    def _holding(self) -> int:
        """Events taken off the queue and not settled yet."""
        count = 0
        for held in (self._building, *self._flights):
            if held is not None and not held.settled:
                count += len(held.batch)
        return count

    def _pass(self, record: logging.LogRecord) -> None:
        """A record to the other handlers behind a listener (the library's own I/O: what
        they log is not shipped)."""
        forward = self._forward
        if forward is not None:
            with _lifecycle.own_io():
                forward(record)

    def _encode(self, item: Any) -> Optional[WireEvent]:
        """The wire event of a task taken off the queue (a record goes to the other
        handlers too); a task that cannot be built is counted as dropped here."""
        try:
            o = self.options
            test_run = self._test_run
            redaction = self._redaction
            if test_run is None and redaction is None:
                event = self._plain_encoder.encode(item, o.max_field_chars, self._budget)
                if event is not None:
                    return self._sampled(event)
            if isinstance(item, logging.LogRecord):
                self._pass(item)
            snapshot = snapshot_of(item)
            if snapshot is None:
                self.settler.drop(1, "internal_error", f"a queue item carries no task: {type(item).__name__}")
                return None
            if test_run is not None and not test_run.evaluated:
                self.settler.drop(1, "test_run", f"PHOSPHO_TEST_ID is set and PHOSPHO_TEST_METRIC is "
                                  f"{test_run.metric!r}, not 'evaluate' (a phospho test run): tasks are not sent, "
                                  "as the phospho SDK does")
                return None
            try:
                event = encode(snapshot, project_id=o.project_id, version_id=o.version_id,
                               max_field_chars=o.max_field_chars, max_bytes=self._budget,
                               test_id=None if test_run is None else test_run.test_id, transform=redaction)
            except RedactError as exc:
                self.settler.drop(1, "redact_error", f"{exc} (never sent unredacted)")
                return None
            if snapshot.problems:
                self.settler.count_problems(snapshot.problems)
            if event is None:
                self.settler.drop(1, "too_large", f"a task is larger than max_batch_bytes={o.max_batch_bytes} "
                                                  "even when truncated")
                return None
            if event is FILTERED:
                with self.books.lock:
                    self.books.redacted_out += 1
                return None
            return self._sampled(event)
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop the worker
            self.settler.drop(1, "internal_error", f"could not build a task: {exc!r}")
            return None

    def _sampled(self, event: WireEvent) -> Optional[WireEvent]:
        """The event, unless ``sample_rate`` leaves its session out (counted, not a loss)."""
        sampler = self._sampler
        if sampler is None or sampler.keeps(event.session_id, event.task_id):
            return event
        sampler.left_out(event.task_id)
        with self.books.lock:
            self.books.sampled_out += 1
        return None

    def _send(self, held: Held) -> Held:
        """Deliver (or keep) the events ``held``, here or on a sender thread; returns a
        new, empty holder."""
        nxt = self._hold()
        self._dispatch(held)
        return nxt

    def _dispatch(self, held: Held) -> None:
        """Deliver (or keep) the events ``held`` (no longer the batch being built), here
        or on a sender thread."""
        self._flights.add(held)
        with self.books.lock:
            self.books.batches += 1
        stored = self.settler.durable_copy(held.batch.events)
        senders = self._sending_threads()
        if stored and senders is not None:
            # durable=True: writing does not wait for sending. A batch no sender can take
            # now stays in the spool, sent from there later; the worker goes on writing.
            if not senders.offer(held, stored):
                self._flights.discard(held)
                if held.claim():
                    self.settler.settle([Resolution("failed", list(held.batch.events), "requests_busy",
                                                    "every request in flight is busy; durable=True keeps "
                                                    "the batch in the spool and sends it from there")], stored)
            return
        if senders is None or not senders.dispatch(held, stored):
            self._deliver(held, stored)

    def _sending_threads(self) -> Optional[Senders]:
        """The sender threads, for an exporter that takes concurrent requests."""
        senders = self._senders
        wanted = self.options.max_in_flight > 1 or self.options.durable  # durable: writing never waits for a send
        if senders is None and wanted and getattr(self.exporter, "concurrent", False) is True:
            senders = self._senders = Senders(self, self.options.max_in_flight, self._name)
        return senders

    def _deliver(self, held: Held, stored: bool) -> None:
        """Send one batch and settle it (on the worker or a sender thread)."""
        events = held.batch.events
        try:
            results = self.delivery.attempt(events)
        except BaseException as exc:  # noqa: BLE001 - never lose a batch to a bug of ours
            if interrupts_this_thread(exc):
                raise  # what this batch holds is rescued by the interrupted exit
            results = [Resolution("failed", list(events), "internal_error", f"delivery failed: {exc!r}")]
        self._beats += 1
        if held.claim():  # else rescued at the shutdown deadline meanwhile
            self.settler.settle(results, stored)
        self._flights.discard(held)

    def _can_send_feedback(self) -> bool:
        return not self.delivery.circuit.is_open() and self.delivery.request_timeout() is not None

    def _barrier(self, marker: Marker, force: bool = False) -> None:
        """A marker is reached once what came before it is settled: the batches in flight,
        and the feedback given before it (sent, or kept in the spool once its retries are
        over; for a shutdown, once its deadline is near)."""
        senders = self._senders
        if senders is not None:
            senders.wait_settled()
        mark = self.outbox.mark()
        if force:
            self.outbox.keep_upto(mark, "shutdown_deadline", "the shutdown came before phospho had the task")
        elif self.outbox.waiting_upto(mark):
            self._deferred.append((marker, mark))  # reached later, in the loop (_release_deferred)
            if isinstance(marker, Stop):
                self._deferred_stop = mark
            return
        self._reached(marker)

    def _reached(self, marker: Marker) -> None:
        marker.losses = self._losses()
        marker.done.set()
        if marker is self._stop and isinstance(marker, Stop) and not marker.at_exit:
            self._deadline = None  # a shutdown() done: later tasks get the whole policy
            self._stopping.clear()

    def _release_deferred(self, force: bool = False) -> None:
        """Markers waiting for feedback, in order: reached once the feedback before them is
        settled; a shutdown's, near its deadline, once what is left is kept in the spool.
        One look at the oldest feedback per marker reached, whatever the number waiting."""
        deferred = self._deferred
        stop_mark = self._deferred_stop
        if force and deferred:
            self.outbox.keep_upto(deferred[-1][1], "shutdown_deadline", "the shutdown came before phospho had the task")
        elif stop_mark is not None and not self._time_for_feedback():
            self.outbox.keep_upto(stop_mark, "shutdown_deadline", "the shutdown came before phospho had the task")
        oldest = self.outbox.oldest()
        while deferred:
            marker, mark = deferred[0]
            if oldest is not None and oldest <= mark:
                return
            deferred.popleft()
            if mark == self._deferred_stop and isinstance(marker, Stop):
                self._deferred_stop = None
            self._reached(marker)

    def _time_for_feedback(self) -> bool:
        """Feedback may still be retried: no deadline; or, stopping, for ``STOP_FEEDBACK_WAIT``
        seconds and while more than ``REPLAY_AT_EXIT`` is left (the rest waits in the spool:
        a mistyped task id must not hold every exit)."""
        deadline = self._deadline
        if deadline is None:
            return True
        now = time.monotonic()
        return deadline - now > REPLAY_AT_EXIT and now - self._stop_started < STOP_FEEDBACK_WAIT

    def _losses(self) -> int:
        return (self.books.losses() + count_value(self._refused) + count_value(self._late) + count_value(self._failed)
                + sum(self._feedback_lost.values()))

    def _abandon(self, exc: BaseException) -> None:
        """After an internal error in the loop: what the worker held is kept, not lost."""
        _diag.warn_once("worker_error", "internal error in the worker, which goes on: %r", exc)
        for held in (*self._flights, self._building):
            if held is not None and held.claim():
                self.settler.keep(held.batch.events, "internal_error", f"internal error: {exc!r}")
        self._flights.clear()
        self._building = None

    # -- out of time -----------------------------------------------------------------------

    def _rescue(self, at_exit: bool, first: Any = None, until: Optional[float] = None) -> None:
        """Out of time: keep what the worker holds, then ``first`` (an item just taken) and
        what is queued, oldest first, a chunk at a time, until ``until`` (default: the
        deadline and the exit grace). From the stopping thread when the worker is stuck,
        or from the worker itself at exit."""
        reason, message = "shutdown_deadline", "shutdown_timeout reached with tasks unsent"
        if until is None:
            until = (self._deadline or time.monotonic()) + EXIT_GRACE
        with uninterrupted():
            for held in (*list(self._flights), self._building):
                if held is not None and held.claim() and held.batch:
                    self.settler.keep(held.batch.events, reason, message)
            self.outbox.keep_all(reason, "shutdown_timeout reached with feedback unsent")
            if at_exit:
                self.close_for_exit()
            chunk: List[WireEvent] = []
            if first is not None:
                event = self._encode(first)
                if event is not None:
                    chunk.append(event)
        events = self._sweep(until, at_exit)
        while True:
            with uninterrupted():  # taken off the queue, written and counted, or none of it
                chunk.extend(itertools.islice(events, RESCUE_CHUNK - len(chunk)))
                if chunk:
                    self.settler.keep(chunk, reason, message)
            if len(chunk) < RESCUE_CHUNK:
                return
            chunk = []

    def _sweep(self, until: float, at_exit: bool) -> Iterator[WireEvent]:
        """The events of what is on the queue now, and no more however fast others log
        (markers are released; records for other handlers only are skipped). Past
        ``until``, what is left stays queued (at exit: for the exit report to count)."""
        q = self._queue
        for _ in range(q.qsize()):
            if time.monotonic() > until:
                if at_exit:
                    self._abandoned = True
                return
            try:
                item = q.get_nowait()
            except queue_module.Empty:
                break
            kind = type(item)
            if kind is Flush or kind is Stop:
                next(self.books.markers_got)
                item.losses = self._losses()
                item.done.set()
                continue
            if kind is Passing:
                next(self.books.passing_got)
                continue
            if kind is Feedback:
                next(self.books.feedback_got)
                self.settler.keep_feedback([item], "shutdown_deadline", "shutdown_timeout reached with feedback unsent")
                continue
            next(self.books.got)
            event = self._encode(item)
            if event is not None:
                yield event

    def _past_grace(self) -> bool:
        deadline = self._deadline
        return deadline is not None and _lifecycle.state != "running" and time.monotonic() > deadline + EXIT_GRACE

    def _time_left(self) -> Optional[float]:
        """For waits on disk: the time left before the deadline's grace runs out. None (no
        bound) unless a deadline applies: at exit, and for the thread that stops the engine
        (the worker itself may go on after a ``shutdown()`` deadline: the process does)."""
        deadline = self._deadline
        if deadline is None:
            return None
        if _lifecycle.state == "running":
            if threading.get_ident() == self._loop_ident:
                return None
            return max(0.0, deadline - time.monotonic())
        return max(0.0, deadline + EXIT_GRACE - time.monotonic())
