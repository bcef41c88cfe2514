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

import collections
import itertools
import logging
import queue as queue_module
import sys
import threading
import time
import weakref
from typing import Any, Callable, Deque, Dict, Optional, Set, Tuple

from . import _capture, _diag, _lifecycle
from ._config import Options
from ._delivery import Books, Delivery, count_value
from ._event import PlainEncoder, event_budget
from ._export import destination_of
from ._feedback import Feedback, Outbox
from ._http import HTTPExporter
from ._redact import make_redaction, make_sampler, mask_text
from ._settle import Settler
from ._spool import Spool
from ._store import LocalStoreExporter
from ._worker import EXIT_GRACE, STUCK_AFTER, Flush, Held, Marker, Passing, Senders, Stop, WorkerLoop

_serials = itertools.count()
#: How often a stopping thread looks at the worker's progress.
WATCH_EVERY = 0.05
#: The longest a worker may take nothing, while it is being stopped, before the stopping
#: thread keeps what it holds and what is queued itself (a quarter of the time left,
#: within ``STUCK_AFTER`` and this). What it holds may then be delivered as well as spooled:
#: phospho skips a task id it already has.
MAX_PATIENCE = 1.0
#: From this many queued items on, while sending is not known to work (no request has
#: succeeded since the start or the last failure), the queue is a backlog that may last:
#: the handlers queue the commonest record marshalled (one bytes object) rather than flat
#: (``_item.plain_record``), which is cheaper for the worker but, for short text, takes
#: up to twice the memory. While sending works, the worker drains a burst at its pace, and
#: the flat form is what lets it drain sooner; past ``COMPACT_ALWAYS_FROM`` (a backend
#: that hangs keeps sending "known to work" until its first timeout), marshalled too.
#: At about 400 bytes more a flat task, the flat part of a queue stays under 8 MB.
COMPACT_FROM = 5_000
COMPACT_ALWAYS_FROM = 20_000
#: Reads of the counters ``stats()`` tries for a consistent set while the worker runs.
STATS_TRIES = 10


#: The longest any single wait may be asked to last (a larger one is taken as this).
LONGEST_WAIT = 1e9


def wait_limit(timeout: Optional[float], default: float) -> float:
    """Seconds to wait for a ``timeout`` argument: ``default`` for None or infinity (the
    longest the policy needs), 0 for a negative one or NaN."""
    if timeout is None:
        return default
    try:
        seconds = float(timeout)
    except OverflowError:  # an integer too large for a float
        seconds = float("inf") if timeout > 0 else 0.0
    if not seconds > 0:  # negative, zero or NaN
        return 0.0
    if seconds == float("inf"):
        return default
    return min(seconds, LONGEST_WAIT)


def default_exporter(options: Options) -> Any:
    """The HTTP exporter with credentials, the local store without."""
    if options.online:
        assert options.api_key is not None
        return HTTPExporter(options.endpoint, options.api_key)
    return LocalStoreExporter(options.store_path())


class Engine(WorkerLoop):
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
        self._relay: Optional[Callable[[], Any]] = None  # a weak reference to a listener's relay
        self._max_queue = options.max_queue_size
        #: At the last ``submit``, the queue held ``COMPACT_FROM`` items or more and sending
        #: was not known to work (read by the handlers' short path: a backlog's records
        #: are queued compact).
        self.backlogged = False
        self._budget = event_budget(options.max_batch_bytes)
        self._plain_encoder = PlainEncoder(options.project_id, options.version_id)
        self._redaction = make_redaction(options.redact)
        if self._redaction is not None:
            _diag.masker = mask_text  # the library's own messages are masked from now on
        self._sampler = make_sampler(options.sample_rate)
        self._capturing = False
        self._closed = False
        self.stopped = False
        self._fresh()
        _lifecycle.register(self)
        if _capture.active():
            self.capture(True)

    def begin(self) -> None:
        """Replay what an earlier run left in the spool, in the background, now. Called by
        the code that made the engine once it has said where tasks go (``notice_start``):
        the worker's own lines about the spool come after that one."""
        if self.spool is not None:
            _lifecycle.wake(self)

    def _fresh(self) -> None:
        """Queue, counters, thread state: at creation, and again in a forked child."""
        self._queue: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        # What producers did is counted where it is cheapest: tasks put on the queue are
        # counted by the worker when it takes them (what is still there is in the queue's
        # size, less the flush and stop markers), so a logging call bumps no counter.
        self._markers_put = itertools.count()  # flush and stop markers put on the queue
        self._passing_put = itertools.count()  # records for other handlers only
        self._refused = itertools.count()  # the queue was full
        self._late = itertools.count()  # logged after the exit drain
        self._failed = itertools.count()  # a record that could not be turned into a task
        self._ignored = itertools.count()  # task-looking records made by our own I/O
        self._feedback_put = itertools.count()  # feedback put on the queue
        self._feedback_lost: Dict[str, int] = {}  # feedback refused by the caller's side, by reason
        self._said: Dict[str, bool] = {}
        self._enqueued = 0  # the highest count stats() saw (a read mid-put can only fall short)
        self._stats_lock = threading.RLock()  # stats() callers only (reentrant: signal handlers)
        self.books = Books()
        self._stopping = threading.Event()
        self._deadline: Optional[float] = None
        self._stop_started = 0.0  # when the shutdown or the exit began (time.monotonic())
        self.delivery = Delivery(self.exporter, self.options, self.books, stopping=self._stopping,
                                 deadline=self._get_deadline, around_export=_lifecycle.exporting(self.exporter))
        self._running = False
        self._thread: Optional[threading.Thread] = None
        self._loop_ident: Optional[int] = None  # the thread running the loop (the worker's)
        # Reentrant, as every lock a control call takes: a signal handler that flushes or
        # shuts down may interrupt the main thread while it holds one.
        self._start_lock = threading.RLock()
        self._flush_lock = threading.RLock()  # control calls only: flush() commits its result
        self._stop: Optional[Stop] = None
        self._building: Optional[Held] = None
        self._test_run = None  # phospho's test runner, looked up as each batch starts
        self._flights: Set[Held] = set()  # batches being sent (several with sender threads)
        self._senders: Optional[Senders] = None
        self._barrier_losses = 0
        self.settler = Settler(self.options, self.exporter, self.books, self.spool, self._past_grace,
                               self._time_left)
        self._abandoned = False  # the exit grace ran out: what is left stays unbuilt
        self._deferred: Deque[Any] = collections.deque()  # markers reached once the feedback before them is settled
        self._deferred_stop: Optional[int] = None  # the mark of the last Stop among them
        self.outbox = Outbox(self.options.max_retry_time, self.delivery.send_feedback, self.settler.keep_feedback,
                             self.settler.feedback_settled)
        self._beats = 0  # bumped by the worker as it goes (a stuck worker's stays still)

    def __repr__(self) -> str:
        return f"<phospho_logging engine -> {self.destination}>"

    @property
    def running(self) -> bool:
        """True while a worker thread runs (or the exiting thread drains in its place)."""
        return self._running

    def _get_deadline(self) -> Optional[float]:
        return self._deadline

    # -- the producer side: any thread, signal handler or finalizer ----------------------

    def submit(self, item: Any) -> None:
        """Put one item on the queue. Never blocks, raises, takes a lock or starts a thread."""
        q = self._queue
        size = q.qsize()
        if size >= self._max_queue:
            next(self._refused)
            self._say_once("queue_full", "the task queue is full (max_queue_size=%d); tasks are being dropped and "
                           "counted in stats()['dropped_by_reason']['queue_full']", self._max_queue)
            return
        if size >= COMPACT_FROM:
            self.backlogged = size >= COMPACT_ALWAYS_FROM or not self.delivery.circuit.proven
        elif self.backlogged:
            self.backlogged = False
        q.put(item)
        if not self._running:
            _lifecycle.wake(self)

    def submit_feedback(self, item: Feedback) -> None:
        """Put one feedback on the queue (behind the tasks logged before it). Never blocks,
        raises, takes a lock or starts a thread; a full queue, or a call after the exit
        drain, drops it, counted in ``stats()["feedback"]["dropped"]`` and said once."""
        if self._closed:
            self._lose_feedback("logged_after_exit", "a feedback was given after the exit drain: it is not kept")
            return
        if self._redaction is not None:
            # Notes and source are free text too: with any redact setting, the built-in masks apply.
            item = item._replace(notes=mask_text(item.notes) if item.notes else item.notes,
                                 source=mask_text(item.source))
        if self._capturing:
            _capture.deliver_feedback(item)
            return
        if not hasattr(self.exporter, "export_feedback"):
            self._lose_feedback("unsupported", "the exporter %s has no export_feedback(): feedback is not sent",
                                self.destination)
            return
        if self._queue.qsize() >= self._max_queue:
            self._lose_feedback("queue_full", "the task queue is full (max_queue_size=%d); feedback is being "
                                "dropped", self._max_queue)
            return
        next(self._feedback_put)
        self._queue.put(item)
        if not self._running:
            _lifecycle.wake(self)

    def feedback_invalid(self, why: str) -> None:
        """A record that looked like feedback but is not valid: counted, said once."""
        self._lose_feedback("invalid", "a feedback record was not valid and is not sent: %s", why)

    def _lose_feedback(self, reason: str, message: str, *args: object) -> None:
        lost = self._feedback_lost
        lost[reason] = lost.get(reason, 0) + 1  # the caller's side: a rare path, read by stats()
        self._say_once("feedback_" + reason, message + " (counted in stats()['feedback']['dropped'])", *args)

    def pass_on(self, record: logging.LogRecord) -> None:
        """Put a record that carries no task on the queue, for the other handlers behind a
        listener (in order with the tasks). Never blocks; a full queue drops it, said once."""
        if self._queue.qsize() >= self._max_queue:
            self._say_once("queue_full_records", "the task queue is full (max_queue_size=%d); records for the "
                           "other handlers of the listener are being dropped", self._max_queue)
            return
        next(self._passing_put)
        self._queue.put(Passing(record))
        if not self._running:
            _lifecycle.wake(self)

    def intake_failed(self, exc: BaseException) -> None:
        """A record that carried a task could not be turned into one (a bug, or a filter or
        text function that raised): counted as dropped (``internal_error``), said once."""
        next(self._failed)
        self._say_once("intake_error", "a record could not be turned into a task (counted in "
                       "stats()['dropped_by_reason']['internal_error']): %r", exc)

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
            try:  # at interpreter teardown: no thread of ours to say it, one plain line
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

    def relay_by(self, relay: Any) -> None:
        """A listener relays other producers' records into this engine: reset it after a fork."""
        self._relay = weakref.ref(relay)

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

    def release_resources(self) -> None:
        """The worker ended: close the exporter's connections (unless another engine that
        runs shares it) and the spool's."""
        try:
            if not _lifecycle.shared(self.exporter, self):
                self.exporter.close()
            if self.spool is not None:
                self.spool.close()
        except Exception:  # noqa: BLE001, S110 - nothing left to do with them
            pass

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything submitted before the call is delivered or spooled.

        True when it was and nothing was dropped or rejected since the previous flush that
        returned; False on timeout or loss (``stats()`` says which). ``None`` waits for the
        whole retry budget; ``0`` only asks the worker to send what it holds.
        """
        base = self._barrier_losses
        limit = wait_limit(timeout, self.retry_budget())
        started = time.monotonic()
        if self._closed:  # after the exit drain nothing more is sent: no wait
            return self._commit(base, self._losses())
        if self._on_worker():
            # A finalizer, or an exporter, on the worker's own thread: it cannot wait for
            # itself. What it asked is done soon anyway: the worker is running.
            self._say_once("flush_on_worker", "flush() was called on the worker's own thread (from a finalizer "
                           "or an exporter); it returns False at once instead of waiting for itself")
            return False
        relay = self._relay() if self._relay is not None else None
        if relay is not None and not relay.drain(limit):
            return False  # a listener's relay has not taken what was put on its queue yet
        limit = max(0.0, limit - (time.monotonic() - started))
        if not self._running and self._queue.qsize() == 0 and not self._holding():
            losses = self._losses()  # idle: nothing to wait for
        else:
            marker = Flush()
            self._put_marker(marker)  # markers bypass the bound: a flush is never refused
            if not self._running:
                _lifecycle.wake(self)
            if not marker.done.wait(limit):
                return False  # its losses, if any, stay to be reported by the next flush
            losses = marker.losses
        # What logging calls reported (a full queue, say) is said by now, too.
        _lifecycle.quiesce(min(1.0, max(0.0, limit - (time.monotonic() - started))))
        return self._commit(base, losses)

    def _on_worker(self) -> bool:
        ident = threading.get_ident()
        senders = self._senders
        return self._running and (self._loop_ident == ident or (senders is not None and ident in senders.idents))

    def _commit(self, base: int, losses: int) -> bool:
        """A flush's answer: no loss since ``base`` (the count the previous flush saw)."""
        with self._flush_lock:
            self._barrier_losses = max(self._barrier_losses, losses)
        return losses == base

    def retry_budget(self) -> float:
        """The longest a batch can take to be delivered or spooled."""
        o = self.options
        return o.flush_interval + o.max_retry_time + o.timeout + 1.0

    def shutdown(self, timeout: Optional[float] = None, wait: bool = True) -> bool:
        """Deliver what is queued within ``timeout`` (default ``shutdown_timeout``), spool
        the rest, and stop; tasks that still arrive later are delivered too (by a worker
        that ends when they are). With ``wait=False`` the deadline is set and the call
        returns at once. True if everything was settled in time. (``math.inf`` waits as long
        as the retry policy may take.)"""
        limit = self.options.shutdown_timeout if timeout is None else wait_limit(timeout, self.retry_budget())
        with self._start_lock:
            first = not self.stopped
            self.stopped = True
        if not first:
            return self._join(self._stop) if wait and not self._on_worker() else False
        if not self._running and self._queue.qsize() == 0 and not self._holding():
            return True  # never used, or idle: a late task wakes a worker that ends when done
        self._stop_started = time.monotonic()
        self._deadline = self._stop_started + limit
        self._stopping.set()
        stop = self._stop = Stop(self._deadline, at_exit=False)
        self._put_marker(stop)
        if not self._running:
            _lifecycle.wake(self)
        if not wait or self._on_worker():
            return False  # on the worker's own thread (a finalizer): it cannot wait for itself
        done = self._join(stop)
        if not done:
            left = self.stats()["queued"]
            if left > 0:
                self._say_once("shutdown_left", "shutdown(timeout=%g) ran out of time with %d task(s) not settled; "
                               "they are delivered in the background while the process lives", limit, left)
        return done

    def _put_marker(self, marker: Marker) -> None:
        next(self._markers_put)
        self._queue.put(marker)

    def needs_exit(self) -> bool:
        """True unless the exit drain already ran for this engine."""
        return not self._closed

    def begin_exit(self, started: float) -> None:
        """Interpreter exit, which began at ``started``: a deadline of its own (an earlier
        ``shutdown()``'s may have passed with tasks left), and the exit marker."""
        self._stop_started = started
        self._deadline = started + self.options.shutdown_timeout
        self.stopped = True
        self._stopping.set()
        self._stop = Stop(self._deadline, at_exit=True)
        self._put_marker(self._stop)

    def end_exit(self) -> None:
        """Wait for the exit drain until the deadline (draining here if no worker can run:
        then an exporter that does not honour its timeout can hold exit), rescue what a
        stuck worker holds, and say what became of the tasks."""
        stop = self._stop
        if not self._running:
            # A worker of its own, so that this thread can rescue it if an export hangs
            # (Python 3.12 refuses new threads at exit: this thread drains then).
            self.start()
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
        self.settler.report_exit(finished, self.stats(), self)

    def interrupt_exit(self) -> None:
        """The exit drain was interrupted (a Ctrl-C, a signal handler's ``sys.exit()``):
        stop sending and keep what is left in bulk, within the exit deadline. Interrupted
        again, it stops keeping; either way it says what became of the tasks."""
        try:
            self._rescue(at_exit=True)  # until the deadline and its grace
        except BaseException:  # noqa: BLE001, S110 - a second Ctrl-C: the rest is counted below
            pass
        finally:
            self.close_for_exit()
            stop = self._stop
            self.settler.report_exit(stop is not None and stop.done.is_set(), self.stats(), self,
                                     interrupted=True)

    def _join(self, stop: Optional[Stop]) -> bool:
        """Wait for ``stop`` until the deadline, watching the worker: if it takes nothing
        for a while (an export that does not answer), keep what it holds and what is
        queued from this thread, while there is time. True if everything was settled."""
        deadline = self._deadline
        if stop is None or deadline is None:
            return True
        end = deadline + (EXIT_GRACE if stop.at_exit else 0.0)
        patience = min(MAX_PATIENCE, max(STUCK_AFTER, 0.25 * (deadline - time.monotonic())))
        beats, since = self._progress(), time.monotonic()
        rescued = False
        while not stop.done.wait(max(0.0, min(WATCH_EVERY, end - time.monotonic()))):
            now = time.monotonic()
            if now >= end:
                break
            if self._progress() != beats:  # slow, not stuck: the worker keeps the rest itself at the deadline
                beats, since = self._progress(), now
            elif now - since >= patience:
                self._rescue(at_exit=stop.at_exit, until=end)
                rescued = True
                beats, since = self._progress(), time.monotonic()
        if rescued and not stop.at_exit:  # what was queued is settled: later tasks get the whole policy
            self._deadline = None
            self._stopping.clear()
        return stop.done.is_set()

    def _progress(self) -> Tuple[int, int]:
        """What changes while the worker makes progress: its beats, and the tasks it has
        taken (a run of plain records counts those alone)."""
        return self._beats, count_value(self.books.got)

    # -- statistics -------------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """The counters; ``enqueued == sent + rejected + dropped + queued + spooled``."""
        b = self.books
        # No lock the worker takes: it must never wait for a stats() call (a signal handler
        # may flush while this thread reads). What the worker settled is read first, so
        # that anything it settles meanwhile is still counted as taken or queued below.
        dropped = dict(b.dropped)
        sent, rejected, spooled = b.sent, b.rejected, b.spooled
        sampled_out, redacted_out = b.sampled_out, b.redacted_out
        snapshot: Dict[str, Any] = {
            "destination": self.destination,
            "sent": sent,
            "rejected": rejected,
            "spooled": spooled,
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
        # The queue's share is read between two reads of what the worker took, until both
        # agree. An item between a queue and its counter (taken, or about to be put) can
        # only make the sum short, never long, so the highest sum seen is the count.
        for _ in range(STATS_TRIES):
            got, passing_got, markers_got = count_value(b.got), count_value(b.passing_got), count_value(b.markers_got)
            passing_put, markers_put = count_value(self._passing_put), count_value(self._markers_put)
            feedback_got, feedback_put = count_value(b.feedback_got), count_value(self._feedback_put)
            size = self._queue.qsize()
            if (count_value(b.got), count_value(b.passing_got), count_value(b.markers_got),
                    count_value(self._passing_put), count_value(self._markers_put), count_value(b.feedback_got),
                    count_value(self._feedback_put)) == (
                    got, passing_got, markers_got, passing_put, markers_put, feedback_got, feedback_put):
                break
        in_queue = (size - (markers_put - markers_got) - (passing_put - passing_got)
                    - (feedback_put - feedback_got))
        producer_drops = {
            "queue_full": count_value(self._refused),
            "logged_after_exit": count_value(self._late),
            "internal_error": count_value(self._failed),
        }
        for reason, n in producer_drops.items():
            if n:
                dropped[reason] = dropped.get(reason, 0) + n
        with self._stats_lock:
            enqueued = self._enqueued = max(self._enqueued, sum(producer_drops.values()) + got + in_queue)
        lost = sum(dropped.values())
        snapshot.update(
            enqueued=enqueued,
            dropped=lost,
            queued=enqueued - sent - rejected - spooled - lost - sampled_out - redacted_out,
            sampled_out=sampled_out,
            redacted_out=redacted_out,
            dropped_by_reason=dropped,
            ignored_own_io=count_value(self._ignored),
            feedback=self._feedback_stats(feedback_put, feedback_got),
            circuit_open=self.delivery.circuit.is_open(),
            worker_alive=self._running,
        )
        return snapshot

    def _feedback_stats(self, put: int, got: int) -> Dict[str, int]:
        """Feedback given to this engine, and what became of it: ``given == sent +
        rejected + spooled + dropped + waiting + sampled_out``."""
        counts = dict(self.books.feedback)
        lost = sum(self._feedback_lost.values())
        counts["dropped"] += lost
        counts["waiting"] = (put - got) + len(self.outbox)
        counts["given"] = put + lost
        return counts

    # -- fork -------------------------------------------------------------------------------

    def reset_after_fork(self) -> None:
        """In a forked child: a new queue, counters and locks, no worker (one starts with
        the first task); the parent's queued tasks stay the parent's to send."""
        reset = getattr(self.exporter, "reset_after_fork", None)
        if callable(reset):
            reset()
        self._fresh()  # ``stopped`` stays as the parent had it
        self.settler.replay_due = False  # the parent replays its spool; the child only adds to it
        relay = self._relay() if self._relay is not None else None
        if relay is not None:
            relay.reset_after_fork()
