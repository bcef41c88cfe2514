"""The worker: one thread that batches tasks and hands them to ``Delivery``.

The queue is shared with the producer (``PhosphoQueueHandler`` or ``PhosphoHandler``),
which snapshots records on the caller's thread and never blocks. The worker builds the
events, batches them by count, bytes and time, and delivers them (``_delivery``); when
idle it replays the spool. Flush and stop are markers in the same FIFO queue, so a flush
waits exactly for what was logged before it. Stop has a deadline: what is not delivered
by then is spooled, by the worker or, if it is stuck in a request, by the stopping thread.
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _diag
from ._config import Options
from ._delivery import Counters, Delivery
from ._lifecycle import WORKER_THREADS, _all_workers, _live_workers, register_process_hooks
from ._pending import SHORT_LENGTHS, Pending, expand
from ._producer import ProducerCounters, count_value
from ._spool import Spool
from ._task import encode_event
from ._transport import Exporter

IDLE_WAIT = 1.0
STOP_GRACE = 0.05
PENDING_ATTR = "_phospho_pending"

Built = Tuple[Dict[str, Any], bytes]


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


def pending_of(item: Any) -> Optional[Pending]:
    """The task a queue item carries: a ``Pending``, a short tuple (expanded here, on the
    worker), or a record a queue handler copied with its snapshot; None for anything else."""
    if type(item) is Pending:
        return item
    if type(item) is tuple and len(item) in SHORT_LENGTHS:
        return expand(item)
    return getattr(item, PENDING_ATTR, None)  # type: ignore[no-any-return]


def make_spool(options: Options) -> Optional[Spool]:
    """The spool for an online pipeline (the local store needs none)."""
    if not options.online:
        return None
    assert options.project_id is not None
    return Spool(options.store_path(), options.project_id, options.max_spool_tasks)


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
        previous: Optional[Worker] = None,
    ) -> None:
        self.queue = q
        self.exporter = exporter
        self.options = options
        self.producer = producer
        self._forward = forward
        self._name = name
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()  # cuts back-off sleeps short
        self._deadline: Optional[float] = None
        self._stopped = False
        # A worker revived after stop() (tasks still arriving) keeps its predecessor's books:
        # the producer's counts carry on, so stats() and flush() must too.
        self.counters: Counters = previous.counters if previous is not None else Counters()
        self.spool = make_spool(options)
        self.delivery = Delivery(exporter, options, self.counters, self.spool, self._stopping, lambda: self._deadline)
        self._in_flight: List[Built] = []
        self._holding: List[Built] = []
        self._in_worker = 0
        self._losses_at_barrier: int = previous._losses_at_barrier if previous is not None else 0
        self._replay_pending = self.spool is not None
        self._reclaimed = False
        #: Called when stop() begins (the producer leaves its short path).
        self.on_stop: List[Callable[[], None]] = []
        _all_workers.add(self)

    # -- control, from any thread -------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """True once stop() was called."""
        return self._stopped

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread once; later calls do nothing.

        At interpreter shutdown Python refuses new threads (3.12+): the worker then stays
        unstarted and ``stop_all`` drains its queue on the exiting thread instead.
        """
        with self._start_lock:
            if self._thread is not None or self._stopped:
                return
            thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            register_process_hooks()
            try:
                thread.start()
            except RuntimeError:
                return
            self._thread = thread
            _live_workers.add(self)

    def drain_here(self, timeout: Optional[float] = None) -> None:
        """Deliver (or spool) what is queued on the calling thread, within ``timeout``:
        for a worker that never got its thread (exit began first)."""
        limit = self.options.shutdown_timeout if timeout is None else timeout
        with self._start_lock:
            self._stopped = True
        self._deadline = time.monotonic() + limit
        self._stopping.set()
        self._finish(_Stop(self._deadline))

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before this call is delivered or spooled.

        Returns True when it was, and no task was dropped or rejected since the previous
        flush; False on timeout or loss (``stats()`` says which). ``None`` waits for the
        whole retry budget.
        """
        if self._stopped:
            # Stopping: wait for the worker to end, but never past stop()'s deadline.
            thread, deadline = self._thread, self._deadline
            if thread is not None and deadline is not None:
                left = deadline - time.monotonic()
                thread.join(max(0.0, left if timeout is None else min(timeout, left)))
            return self.queued() == 0 and self._losses() == self._losses_at_barrier
        if not self.alive:  # never started: nothing was offered, or exit began first
            return self.queued() == 0 and self._losses() == self._losses_at_barrier
        marker = _Flush()
        self.queue.put(marker)  # markers bypass the bound: a flush is never refused
        limit = self.retry_budget() if timeout is None else max(0.0, timeout)
        return marker.done.wait(limit) and marker.ok

    def stop(self, timeout: Optional[float] = None, wait: bool = True) -> bool:
        """Deliver what is queued within ``timeout`` (default ``shutdown_timeout``), spool
        the rest, and end. With ``wait=False`` the deadline is set and the call returns."""
        limit = self.options.shutdown_timeout if timeout is None else max(0.0, timeout)
        with self._start_lock:
            already = self._stopped
            self._stopped = True
            thread = self._thread
        for callback in self.on_stop:
            callback()
        if thread is None:
            if self.queued():
                self.drain_here(limit)  # never started (closed first, or exit began first)
            return True
        if not already:
            self._deadline = time.monotonic() + limit
            self.queue.put(_Stop(self._deadline))
        self._stopping.set()
        if not wait:
            return False
        return self.join()

    def join(self) -> bool:
        """Wait for the worker until its deadline; if it is stuck (in a request that will
        not answer), spool what it holds from this thread. True if it ended in time."""
        thread = self._thread
        if thread is None or self._deadline is None:
            return True
        # Leave a moment before the deadline to spool what the worker could not send.
        reserve = min(0.25, 0.2 * self.options.shutdown_timeout)
        thread.join(max(0.0, self._deadline - reserve - time.monotonic()))
        if thread.is_alive():
            self._rescue()
            thread.join(max(0.0, self._deadline - time.monotonic()))
        self._report_spooled()
        return not thread.is_alive()

    def _report_spooled(self) -> None:
        spooled = self.counters.spooled
        if spooled and self.spool is not None:
            _diag.warn_once(
                "spooled_at_exit:" + str(id(self)),
                "%d task(s) of this run are in the spool %s: they are sent on the next start with "
                "a working backend, or now with `phospho-logging push`",
                spooled,
                self.spool.path,
            )

    def retry_budget(self) -> float:
        """The longest a batch can take to be delivered or spooled."""
        o = self.options
        return o.flush_interval + o.max_retry_time + o.timeout + 1.0

    def queued(self) -> int:
        offered = count_value(self.producer.offered) - count_value(self.producer.queue_full)
        return max(0, offered - self.counters.taken) + self._in_worker

    def stats(self) -> Dict[str, Any]:
        """The counters; ``enqueued == sent + rejected + dropped + queued + spooled``."""
        c = self.counters
        dropped = dict(c.dropped)
        queue_full = count_value(self.producer.queue_full)
        if queue_full:
            dropped["queue_full"] = queue_full
        return {
            "destination": self.exporter.destination,
            "enqueued": count_value(self.producer.offered),
            "sent": c.sent,
            "rejected": c.rejected,
            "dropped": sum(dropped.values()),
            "queued": self.queued(),
            "spooled": c.spooled,
            "replayed": c.replayed,
            "dropped_by_reason": dropped,
            "rejected_by_reason": dict(c.rejected_by_reason),
            "spooled_by_reason": dict(c.spooled_by_reason),
            "problems": dict(c.problems),
            "batches": c.batches,
            "requests": c.requests,
            "retries": c.retries,
            "circuit_open": self.delivery.circuit.is_open(),
            "last_error": c.last_error,
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
                if self.spool is not None:
                    self.spool.close()
            except Exception:  # noqa: BLE001
                pass

    def _loop(self) -> None:
        batch: List[Built] = self._hold([])
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
                    batch, size = self._hold([]), 0
                    continue
            elif self._replay_pending and not self.delivery.circuit.is_open():
                wait = 0.0
            else:
                wait = IDLE_WAIT
            try:
                item = get(True, wait) if wait > 0 else get_nowait()
            except queue_module.Empty:
                if not batch and self._replay_pending:
                    self._replay()
                continue
            while True:
                if isinstance(item, _Marker):
                    if batch:
                        self._send(batch)
                        batch, size = self._hold([]), 0
                    if isinstance(item, _Stop):
                        self._finish(item)
                        return
                    self._barrier(item)
                else:
                    built = self._build(item)
                    if built is not None:
                        if not batch:
                            due = time.monotonic() + self.options.flush_interval
                        elif size + len(built[1]) > max_bytes:
                            self._send(batch)
                            batch, size = self._hold([]), 0
                            due = time.monotonic() + self.options.flush_interval
                        batch.append(built)
                        size += len(built[1]) + 1
                        self._in_worker = len(batch)
                        if len(batch) >= max_count:
                            self._send(batch)
                            batch, size = self._hold([]), 0
                if len(batch) >= max_count:
                    break
                try:
                    item = get_nowait()
                except queue_module.Empty:
                    break

    def _hold(self, batch: List[Built]) -> List[Built]:
        """Make ``batch`` (the one being filled) visible to ``_rescue``."""
        self._holding = batch
        return batch

    def _replay(self) -> None:
        if not self._reclaimed and self.spool is not None:
            self._reclaimed = True
            try:
                self.spool.reclaim_dead()
            except Exception as exc:  # noqa: BLE001
                _diag.warn_once("spool_error", "cannot read the spool %s: %s", self.spool.path, exc)
        more = self.delivery.replay(self.options.max_batch_size)
        if more is False:
            self._replay_pending = False

    def _build(self, item: Any) -> Optional[Built]:
        pending = pending_of(item)
        if self._forward is not None and isinstance(item, logging.LogRecord):
            self._forward(item)
        if pending is None:
            return None
        self.counters.taken += 1
        return self._event(pending)

    def _event(self, pending: Pending) -> Optional[Built]:
        try:
            o = self.options
            built = encode_event(
                pending, project_id=o.project_id, version_id=o.version_id, max_field_chars=o.max_field_chars
            )
            problems = self.counters.problems
            for tag in pending.problems:
                seen = problems.get(tag, 0)
                problems[tag] = seen + 1
                if not seen:
                    _diag.warn_once(
                        "problem:" + tag,
                        "a task had to be adjusted (%s); it was sent best-effort, marked in "
                        "metadata['phospho_logging_problems'] and counted in stats()['problems']",
                        tag,
                    )
            return built
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop the worker
            self.delivery.drop(1, "internal_error", f"could not build a task: {exc!r}")
            return None

    def _barrier(self, marker: _Marker) -> None:
        losses = self._losses()
        marker.ok = losses == self._losses_at_barrier
        self._losses_at_barrier = losses
        marker.done.set()

    def _losses(self) -> int:
        return self.counters.losses() + count_value(self.producer.queue_full)

    def _finish(self, stop: _Stop) -> None:
        """Deliver what is left, including what races in after the stop marker.

        Loggers on other threads may still be in ``emit()`` when the handler is closed (a
        second ``dictConfig``, say), so the queue is watched for ``STOP_GRACE`` seconds of
        quiet before the worker ends; past the deadline, tasks are spooled.
        """
        batch: List[Built] = self._hold([])
        while True:
            left = stop.deadline - time.monotonic()
            try:
                item = self.queue.get(True, min(STOP_GRACE, left)) if left > 0 else self.queue.get_nowait()
            except queue_module.Empty:
                break
            if isinstance(item, _Marker):
                if batch:
                    self._send(batch)
                    batch = self._hold([])
                self._barrier(item)
                continue
            built = self._build(item)
            if built is not None:
                batch.append(built)
                self._in_worker = len(batch)
                if len(batch) >= self.options.max_batch_size:
                    self._send(batch)
                    batch = self._hold([])
        if batch:
            self._send(batch)
        self._in_worker = 0
        self._barrier(stop)

    def _send(self, batch: List[Built]) -> None:
        self.counters.batches += 1
        self._in_flight = batch
        self.delivery.deliver([b[0] for b in batch], [b[1] for b in batch])
        self._in_flight = []
        self._in_worker = 0
        if self.counters.spooled and self.spool is not None:
            self._replay_pending = True

    # -- rescue, from the stopping thread ------------------------------------------------

    def _rescue(self) -> None:
        """Spool (or store) what the worker holds and what is still queued.

        Runs on the thread that stops the pipeline when the worker cannot finish in time;
        a batch the worker is still sending may be spooled twice, which is harmless: the
        server skips task ids it knows.
        """
        held = {b[0]["task_id"]: b for b in list(self._in_flight) + list(self._holding)}
        built: List[Built] = list(held.values())
        while True:
            try:
                item = self.queue.get_nowait()
            except queue_module.Empty:
                break
            if isinstance(item, _Marker):
                item.done.set()
                continue
            pending = pending_of(item)
            if pending is not None:
                self.counters.taken += 1
                event = self._event(pending)
                if event is not None:
                    built.append(event)
        self._in_worker = 0
        if not built:
            return
        events, encoded = [b[0] for b in built], [b[1] for b in built]
        if self.spool is not None:
            spool = Spool(self.spool.path, self.spool.destination, self.spool.max_tasks)
            try:
                spool.put([e["task_id"] for e in events], encoded)
                self.counters.spooled += len(events)
                reasons = self.counters.spooled_by_reason
                reasons["shutdown_deadline"] = reasons.get("shutdown_deadline", 0) + len(events)
            except Exception as exc:  # noqa: BLE001
                self.delivery.drop(len(events), "spool_error", f"cannot write the spool: {exc}")
            finally:
                spool.close()
            return
        from ._store import LocalStoreExporter

        store = LocalStoreExporter(self.options.store_path())
        try:
            if store.export(events, encoded, 1.0).ok:
                self.counters.sent += len(events)
            else:
                self.delivery.drop(len(events), "shutdown_deadline", "shutdown_timeout reached")
        finally:
            store.close()

    def reinit_after_fork(self) -> None:
        """In a forked child: forget the parent's thread, locks, counters and connections."""
        self._thread = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()
        self._deadline = None
        self._stopped = False
        self.counters = Counters()
        self._in_flight = []
        self._holding = []
        self._in_worker = 0
        self._losses_at_barrier = 0
        self.exporter.reset_after_fork()
        self.spool = make_spool(self.options)
        self.delivery = Delivery(
            self.exporter, self.options, self.counters, self.spool, self._stopping, lambda: self._deadline
        )
        self._replay_pending = False  # the parent replays its spool; the child only adds


