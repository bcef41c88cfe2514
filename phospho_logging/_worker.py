"""The worker: one thread that batches tasks and sends them through an exporter.

The queue is shared with the producer (``PhosphoQueueHandler`` or ``PhosphoHandler``),
which snapshots records on the caller's thread and never blocks. The worker builds the
events, batches them by count, bytes and time, sends with bounded retries, and keeps the
counters that ``stats()`` reports. Flush and stop are markers in the same FIFO queue, so a
flush waits exactly for what was logged before it.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import queue as queue_module
import random
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from . import _diag
from ._config import Options
from ._serialize import dumps
from ._snapshot import Pending
from ._task import build_event
from ._transport import Exporter, Outcome

#: Identities of the worker threads: a record created on one of them (urllib3's debug
#: lines about our own requests, say) is never turned into a task.
WORKER_THREADS: Set[int] = set()

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
IDLE_WAIT = 1.0
STOP_GRACE = 0.05
PENDING_ATTR = "_phospho_pending"


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


class _Marker:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class _Flush(_Marker):
    __slots__ = ()


class _Stop(_Marker):
    __slots__ = ("deadline",)

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline


_live_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
_atexit_registered = False
_atexit_lock = threading.Lock()


class Worker:
    """Drains one queue on a daemon thread; see the module docstring."""

    def __init__(
        self,
        q: Any,
        exporter: Exporter,
        options: Options,
        producer: ProducerCounters,
        forward: Optional[Callable[[logging.LogRecord], None]] = None,
        name: str = "phospho-logging-worker",
    ) -> None:
        self.queue = q
        self.exporter = exporter
        self.options = options
        self.producer = producer
        self._forward = forward
        self._name = name
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()  # interrupts back-off sleeps
        self._deadline: Optional[float] = None
        self._stopped = False
        # Counters below are written by the worker thread only.
        self.taken = 0
        self.sent = 0
        self.rejected = 0
        self.dropped: Dict[str, int] = {}
        self.rejected_by_reason: Dict[str, int] = {}
        self.problems: Dict[str, int] = {}
        self.batches = 0
        self.requests = 0
        self.retries = 0
        self.last_error: Optional[str] = None
        self._losses_at_barrier = 0

    # -- control, from any thread -------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread once; later calls do nothing."""
        with self._start_lock:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
            _live_workers.add(self)
            _register_atexit()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before this call is delivered.

        Returns True when it was, and no task was dropped or rejected since the previous
        flush; False on timeout or loss (``stats()`` says which). ``None`` waits for the
        whole retry budget.
        """
        if not self.alive:
            return self._idle_flush()
        marker = _Flush()
        self.queue.put(marker)  # markers bypass the bound: a flush is never refused
        limit = self.retry_budget() if timeout is None else max(0.0, timeout)
        return marker.done.wait(limit) and marker.ok

    def _idle_flush(self) -> bool:
        if self._stopped or self._thread is None:
            return self._losses() == self._losses_at_barrier and self.queued() == 0
        return False

    def stop(self, timeout: Optional[float] = None, wait: bool = True) -> bool:
        """Deliver what is queued within ``timeout`` (default ``shutdown_timeout``), then end.

        Tasks still undelivered at the deadline are dropped and counted. With
        ``wait=False`` the deadline is set and the call returns at once.
        """
        limit = self.options.shutdown_timeout if timeout is None else max(0.0, timeout)
        with self._start_lock:
            already = self._stopped
            self._stopped = True
            thread = self._thread
        if thread is None:
            self._drop_unstarted()
            return True
        marker = _Stop(time.monotonic() + limit)
        if not already:
            self._deadline = marker.deadline
            self.queue.put(marker)
        self._stopping.set()
        if not wait:
            return False
        thread.join(max(0.0, marker.deadline - time.monotonic()))
        return not thread.is_alive()

    def retry_budget(self) -> float:
        """The longest a batch can take to succeed or be given up."""
        o = self.options
        return o.flush_interval + o.max_attempts * (o.timeout + BACKOFF_CAP)

    def queued(self) -> int:
        offered = count_value(self.producer.offered) - count_value(self.producer.queue_full)
        return max(0, offered - self.taken) + self._in_worker

    _in_worker = 0

    def stats(self) -> Dict[str, Any]:
        """The counters; ``enqueued == sent + rejected + dropped + queued`` always holds
        once the worker is idle."""
        dropped = dict(self.dropped)
        queue_full = count_value(self.producer.queue_full)
        if queue_full:
            dropped["queue_full"] = queue_full
        return {
            "destination": self.exporter.destination,
            "enqueued": count_value(self.producer.offered),
            "sent": self.sent,
            "rejected": self.rejected,
            "dropped": sum(dropped.values()),
            "queued": self.queued(),
            "spooled": 0,
            "dropped_by_reason": dropped,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "problems": dict(self.problems),
            "batches": self.batches,
            "requests": self.requests,
            "retries": self.retries,
            "last_error": self.last_error,
            "worker_alive": self.alive,
        }

    # -- the worker thread ----------------------------------------------------------------

    def _run(self) -> None:
        WORKER_THREADS.add(threading.get_ident())
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - report, never die silently
            _diag.warn_once("worker_crashed", "the worker stopped on an internal error: %r", exc)
        finally:
            WORKER_THREADS.discard(threading.get_ident())
            try:
                self.exporter.close()
            except Exception:  # noqa: BLE001
                pass

    def _loop(self) -> None:
        batch: List[Tuple[Dict[str, Any], bytes]] = []
        size = 0
        due = 0.0
        get = self.queue.get
        get_nowait = self.queue.get_nowait
        max_count = self.options.max_batch_size
        max_bytes = self.options.max_batch_bytes
        while True:
            if batch:
                wait = due - time.monotonic()
                if wait <= 0:
                    self._send(batch)
                    batch, size = [], 0
                    continue
            else:
                wait = IDLE_WAIT
            try:
                item = get(True, wait)
            except queue_module.Empty:
                continue
            while True:
                if isinstance(item, _Marker):
                    if batch:
                        self._send(batch)
                        batch, size = [], 0
                    if isinstance(item, _Stop):
                        self._finish(item)
                        return
                    self._barrier(item)
                else:
                    built = self._build(item)
                    if built is not None:
                        if not batch:
                            due = time.monotonic() + self.options.flush_interval
                        if batch and size + len(built[1]) > max_bytes:
                            self._send(batch)
                            batch, size = [], 0
                            due = time.monotonic() + self.options.flush_interval
                        batch.append(built)
                        size += len(built[1]) + 1
                        self._in_worker = len(batch)
                        if len(batch) >= max_count:
                            self._send(batch)
                            batch, size = [], 0
                if len(batch) >= max_count:
                    break
                try:
                    item = get_nowait()
                except queue_module.Empty:
                    break

    def _build(self, item: Any) -> Optional[Tuple[Dict[str, Any], bytes]]:
        pending: Optional[Pending]
        if type(item) is Pending:
            pending = item
        else:
            pending = getattr(item, PENDING_ATTR, None)
            if self._forward is not None and isinstance(item, logging.LogRecord):
                self._forward(item)
            if pending is None:
                return None
        self.taken += 1
        try:
            o = self.options
            event = build_event(
                pending,
                project_id=o.project_id,
                version_id=o.version_id,
                max_field_chars=o.max_field_chars,
            )
            for tag in pending.problems:
                seen = self.problems.get(tag, 0)
                self.problems[tag] = seen + 1
                if not seen:
                    _diag.warn_once(
                        "problem:" + tag,
                        "a task had to be adjusted (%s); it was sent best-effort, marked in "
                        "metadata['phospho_logging_problems'] and counted in stats()['problems']",
                        tag,
                    )
            return event, dumps(event)
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop the worker
            self._drop(1, "internal_error", f"could not build a task: {exc!r}")
            return None

    def _barrier(self, marker: _Marker) -> None:
        losses = self._losses()
        marker.ok = losses == self._losses_at_barrier
        self._losses_at_barrier = losses
        marker.done.set()

    def _losses(self) -> int:
        return sum(self.dropped.values()) + self.rejected + count_value(self.producer.queue_full)

    def _finish(self, stop: _Stop) -> None:
        """Deliver what is left, including what races in after the stop marker.

        Loggers on other threads may still be in ``emit()`` when the handler is closed (a
        second ``dictConfig``, say), so the queue is watched for ``STOP_GRACE`` seconds of
        quiet before the worker ends; past the deadline, tasks are dropped and counted.
        """
        batch: List[Tuple[Dict[str, Any], bytes]] = []
        while True:
            left = stop.deadline - time.monotonic()
            try:
                item = self.queue.get(True, min(STOP_GRACE, left)) if left > 0 else self.queue.get_nowait()
            except queue_module.Empty:
                break
            if isinstance(item, _Marker):
                if batch:
                    self._send(batch)
                    batch = []
                self._barrier(item)
                continue
            built = self._build(item)
            if built is not None:
                batch.append(built)
                self._in_worker = len(batch)
                if len(batch) >= self.options.max_batch_size:
                    self._send(batch)
                    batch = []
        if batch:
            self._send(batch)
        self._in_worker = 0
        self._barrier(stop)

    def _drop_unstarted(self) -> None:
        leftover = self.queued()
        if leftover:
            self.taken += leftover
            self._drop(leftover, "closed_before_start", "the pipeline was closed before it started")

    # -- sending ------------------------------------------------------------------------

    def _request_timeout(self) -> Optional[float]:
        if self._deadline is None:
            return self.options.timeout
        left = self._deadline - time.monotonic()
        return min(self.options.timeout, left) if left > 0.05 else None

    def _send(self, batch: List[Tuple[Dict[str, Any], bytes]]) -> None:
        self.batches += 1
        events = [b[0] for b in batch]
        encoded = [b[1] for b in batch]
        self._deliver(events, encoded)
        self._in_worker = 0

    def _deliver(self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes]) -> None:
        attempt = 0
        while True:
            timeout = self._request_timeout()
            if timeout is None:
                self._drop(len(events), "shutdown_deadline", "shutdown_timeout reached with tasks unsent")
                return
            outcome = self._export(events, encoded, timeout)
            if outcome.ok:
                self._account(outcome, events)
                return
            if (outcome.too_large or outcome.status == 422) and len(events) > 1:
                # Halve until the offending size or event is isolated.
                half = len(events) // 2
                self._deliver(events[:half], encoded[:half])
                self._deliver(events[half:], encoded[half:])
                return
            if outcome.status == 422:
                self._reject(events, outcome.error)
                return
            attempt += 1
            if outcome.retry and attempt < self.options.max_attempts:
                self.retries += 1
                if self._backoff(attempt, outcome.retry_after):
                    continue
                # Shutdown interrupted the back-off: one last try if time is left.
                continue
            reason = f"http_{outcome.status}" if outcome.status else "unreachable"
            self._drop(len(events), reason, outcome.error)
            return

    def _export(self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes], timeout: float) -> Outcome:
        self.requests += 1
        try:
            return self.exporter.export(events, encoded, timeout)
        except Exception as exc:  # noqa: BLE001 - an exporter bug is a failed attempt
            return Outcome(False, retry=True, error=f"exporter error: {type(exc).__name__}: {exc}")

    def _backoff(self, attempt: int, retry_after: Optional[float]) -> bool:
        """Sleep before the next attempt (full jitter, or the server's wish); False if
        interrupted by shutdown."""
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))
        if retry_after is not None:
            delay = max(delay, retry_after)
        if self._deadline is not None:
            delay = min(delay, max(0.0, self._deadline - time.monotonic() - 0.1))
        return not self._stopping.wait(delay)

    def _account(self, outcome: Outcome, events: Sequence[Dict[str, Any]]) -> None:
        if outcome.rejected:
            self._reject([events[i] for i in outcome.rejected], None, outcome.rejected.values())
        self.sent += len(events) - len(outcome.rejected)

    def _reject(self, events: Sequence[Dict[str, Any]], reason: Optional[str], reasons: Any = None) -> None:
        reasons = list(reasons) if reasons is not None else [reason or "rejected"] * len(events)
        for why in reasons:
            self.rejected_by_reason[why] = self.rejected_by_reason.get(why, 0) + 1
        self.rejected += len(events)
        _diag.warn_once(
            "rejected:" + reasons[0][:60],
            "phospho rejected %d task(s): %s (counted in stats()['rejected_by_reason'])",
            len(events),
            reasons[0],
        )

    def _drop(self, count: int, reason: str, message: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        self.last_error = message
        _diag.warn_once("dropped:" + reason, "%d task(s) not delivered: %s", count, message)


def _register_atexit() -> None:
    global _atexit_registered
    with _atexit_lock:
        if not _atexit_registered:
            # Registered after logging's own hook, so it runs first: the queues drain
            # before logging.shutdown() flushes and closes the handlers.
            atexit.register(stop_all)
            _atexit_registered = True


_foreign_listeners: weakref.WeakSet[Any] = weakref.WeakSet()


def stop_at_exit(listener: Any) -> None:
    """Have a stdlib ``QueueListener`` we started stopped (so drained) at exit."""
    _foreign_listeners.add(listener)
    _register_atexit()


def stop_all(timeout: Optional[float] = None) -> None:
    """Stop every live worker at once, each within its own ``shutdown_timeout``.

    Stdlib listeners we started go first: stopping one drains its queue into the
    ``PhosphoHandler`` behind it, whose worker is then stopped with the others.
    """
    for listener in list(_foreign_listeners):
        if getattr(listener, "_thread", None) is not None:
            try:
                listener.stop()
            except Exception:  # noqa: BLE001 - exit must go on
                pass
    workers = [w for w in list(_live_workers) if w.alive]
    for worker in workers:
        worker.stop(timeout, wait=False)
    for worker in workers:
        thread = worker._thread
        if thread is not None and worker._deadline is not None:
            thread.join(max(0.0, worker._deadline - time.monotonic()))
