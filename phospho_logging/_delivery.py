"""Delivery policy: retries, back-off and the circuit breaker, for every sending path.

``Delivery.attempt`` sends one batch through an exporter and says what became of each
event: sent, rejected by the server, or failed (to be spooled, or reported by ``push``).
It retries what may succeed later (``ExportResult`` kind ``retry``) with exponential
back-off, full jitter and the server's ``Retry-After``, within ``max_attempts`` and
``max_retry_time``; splits a batch the server finds too large or invalid until the
culprit is isolated; truncates a single event that is too large; and after repeated
failures opens a circuit that stops calling a dead endpoint until a cool-down has passed.
The engine's worker, the spool's replay and ``phospho-logging push`` all use it; none of
them retries on its own.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from . import _diag
from ._config import Options
from ._event import event_budget, shrink
from ._export import ExportResult, WireEvent
from ._feedback import FEEDBACK_TIMEOUT

BACKOFF_BASE = 0.1
BACKOFF_CAP = 30.0
#: Failed batches in a row that open the circuit.
CIRCUIT_THRESHOLD = 3
CIRCUIT_COOLDOWN = 5.0
CIRCUIT_COOLDOWN_CAP = 60.0
#: How long a configuration error (bad key, unknown project) keeps the circuit open.
CONFIG_ERROR_COOLDOWN = 60.0
#: A longer Retry-After opens the circuit for that long instead of holding the worker.
MAX_RETRY_AFTER_WAIT = 5.0
#: The longest pause a Retry-After may impose (a larger one is taken as this).
MAX_RETRY_AFTER = 60.0


class Resolution(NamedTuple):
    """What became of some events of a batch.

    ``kind`` is ``"sent"``, ``"rejected"`` (the server refused them; ``reason`` says why)
    or ``"failed"`` (not delivered; ``reason`` is a short code such as ``http_503``,
    ``unreachable`` or ``circuit_open``, ``message`` the explanation, ``result`` the last
    answer if there was one).
    """

    kind: str
    events: List[WireEvent]
    reason: str = ""
    message: str = ""
    result: Optional[ExportResult] = None


def count_value(counter: itertools.count[int]) -> int:
    """The next value of an ``itertools.count`` without advancing it.

    ``next()`` on a count is atomic under the GIL, which makes it the cheapest counter
    several threads can bump without a lock (a logging call, the worker and the thread
    that rescues it at exit); its repr is the only way to read it.
    """
    return int(repr(counter)[6:-1])


class Books:
    """Counts of what happened to tasks after they left the queue.

    Written by the worker (and, at exit, by the thread that rescues a stuck worker): the
    per-item counts are ``itertools.count`` (bumped with ``next``), the others are written
    under ``lock``; producers never touch them, and ``stats()`` reads them without it.
    """

    def __init__(self) -> None:
        # Reentrant: a signal handler may run on a thread that holds it (the exit drain).
        self.lock = threading.RLock()
        #: Tasks taken off the queue, counted the moment they are taken.
        self.got = itertools.count()
        #: Records for other handlers only (no task) taken off the queue.
        self.passing_got = itertools.count()
        #: Flush and stop markers taken off the queue.
        self.markers_got = itertools.count()
        self.sent = 0
        self.rejected = 0
        #: Left out on purpose, not lost: by ``sample_rate``, or by a ``redact`` function.
        self.sampled_out = 0
        self.redacted_out = 0
        self.spooled = 0
        self.replayed = 0
        self.replay_rejected = 0
        self.spool_evicted = 0
        self.batches = 0
        self.requests = 0
        self.retries = 0
        self.dropped: Dict[str, int] = {}
        self.rejected_by_reason: Dict[str, int] = {}
        self.spooled_by_reason: Dict[str, int] = {}
        self.problems: Dict[str, int] = {}
        self.last_error: Optional[str] = None
        #: Feedback taken off the queue, and what became of it (``stats()["feedback"]``).
        self.feedback_got = itertools.count()
        self.feedback: Dict[str, int] = {"sent": 0, "rejected": 0, "spooled": 0, "dropped": 0, "replayed": 0,
                                         "sampled_out": 0}

    def resolved(self) -> int:
        """Tasks of this run settled by the worker: sent, rejected, spooled or dropped
        (call with ``lock`` held)."""
        return (self.sent + self.rejected + self.spooled + sum(self.dropped.values()) + self.sampled_out
                + self.redacted_out)

    def losses(self) -> int:
        """Tasks and feedback dropped or rejected so far (a flush is False when this grew)."""
        return sum(self.dropped.values()) + self.rejected + self.feedback["dropped"] + self.feedback["rejected"]

    def add(self, counter: Dict[str, int], key: str, n: int) -> None:
        """``counter[key] += n`` (call with ``lock`` held)."""
        counter[key] = counter.get(key, 0) + n


class Circuit:
    """Closed: send. Open: do not call the endpoint until ``open_until``. Then one probe."""

    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.cooldown = CIRCUIT_COOLDOWN
        #: The last request succeeded: several may be in flight. Until then (at the start,
        #: after any failure), one at a time, so a refused key or a failing endpoint sees
        #: one request, not one per sender.
        self.proven = False

    def is_open(self) -> bool:
        return time.monotonic() < self.open_until

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.cooldown = CIRCUIT_COOLDOWN
        self.proven = True

    def failure(self) -> None:
        self.proven = False
        self.failures += 1
        if self.failures >= CIRCUIT_THRESHOLD:
            self.trip(self.cooldown)
            self.cooldown = min(self.cooldown * 2, CIRCUIT_COOLDOWN_CAP)

    def trip(self, seconds: float, quiet: bool = False) -> None:
        self.proven = False
        self.open_until = time.monotonic() + seconds
        if not quiet:
            _diag.warn_once(
                "circuit_open",
                "sending to phospho failed several times in a row: for the next %.0f s new tasks go straight "
                "to the spool (sent from there once sending works again), then sending is tried again",
                seconds,
            )


class Busy(Exception):
    """The exporter is busy with another engine's batch for longer than a request may take."""


def _never() -> Optional[float]:
    return None


class Delivery:
    """Sends batches through one exporter; see the module docstring.

    Args:
        exporter: where batches go.
        options: ``timeout``, ``max_attempts``, ``max_retry_time``, ``max_field_chars``.
        books: counts requests and retries.
        stopping: set when the owner is shutting down: back-off waits end at once.
        deadline: the shutdown deadline (``time.monotonic()``), or None.
        around_export: called with the request's timeout, a context manager entered around
            each export (the exporter's lock, the own-I/O flag); it raises ``Busy`` when the
            exporter stays busy that long.
    """

    def __init__(
        self,
        exporter: Any,
        options: Options,
        books: Books,
        *,
        stopping: Optional[threading.Event] = None,
        deadline: Callable[[], Optional[float]] = _never,
        around_export: Optional[Callable[[float], Any]] = None,
    ) -> None:
        self.exporter = exporter
        self.options = options
        self.books = books
        self.circuit = Circuit()
        self._stopping = stopping if stopping is not None else threading.Event()
        self._deadline = deadline
        self._around = around_export

    def attempt(self, events: Sequence[WireEvent]) -> List[Resolution]:
        """Deliver ``events`` (one batch) as far as the policy allows; never raises."""
        out: List[Resolution] = []
        if self.circuit.is_open():
            return [Resolution("failed", list(events), "circuit_open",
                               "not tried: sending failed several times in a row and is paused for a few seconds")]
        self._attempt(list(events), time.monotonic() + self.options.max_retry_time, out)
        return out

    def _attempt(self, events: List[WireEvent], give_up_at: float, out: List[Resolution]) -> None:
        attempt = 0
        while True:
            timeout = self.request_timeout()
            if timeout is None:
                out.append(Resolution("failed", events, "shutdown_deadline",
                                      "shutdown_timeout reached with tasks unsent"))
                return
            result = self.export(events, timeout)
            kind = result.kind
            if kind == "ok":
                self.circuit.success()
                rejected = result.rejected
                if rejected:
                    for index, reason in sorted(rejected.items()):
                        if 0 <= index < len(events):
                            out.append(Resolution("rejected", [events[index]], reason))
                    events = [e for i, e in enumerate(events) if i not in rejected]
                if events:
                    out.append(Resolution("sent", events))
                return
            if kind in ("too_large", "invalid") and len(events) > 1:
                half = len(events) // 2  # halve until the offending size or event is isolated
                self._attempt(events[:half], give_up_at, out)
                self._attempt(events[half:], give_up_at, out)
                return
            if kind == "too_large":
                self._shrink(events[0], give_up_at, out)
                return
            if kind == "invalid":
                out.append(Resolution("rejected", events, result.error or "invalid", result=result))
                return
            if kind in ("auth", "not_found"):
                self.circuit.trip(CONFIG_ERROR_COOLDOWN, quiet=True)
                out.append(Resolution("failed", events, _reason(result), _message(result), result))
                return
            retry_after = _pause(result.retry_after)
            if retry_after is not None and retry_after > MAX_RETRY_AFTER_WAIT:
                # The server asked for a long pause: keep the worker free for new tasks.
                self.circuit.trip(retry_after)
                out.append(Resolution("failed", events, _reason(result), _message(result), result))
                return
            attempt += 1
            self.circuit.proven = False  # one request at a time until one succeeds again
            if kind == "retry" and attempt < self.options.max_attempts and time.monotonic() < give_up_at:
                with self.books.lock:
                    self.books.retries += 1
                self._backoff(attempt, retry_after, give_up_at)
                continue
            self.circuit.failure()
            out.append(Resolution("failed", events, _reason(result), _message(result), result))
            return

    def _shrink(self, event: WireEvent, give_up_at: float, out: List[Resolution]) -> None:
        """A single event the server finds too large: truncated to half and tried again."""
        smaller = shrink(event, self.options.max_field_chars, min(len(event.json) // 2,
                                                                  event_budget(self.options.max_batch_bytes)))
        if smaller is None:
            out.append(Resolution("rejected", [event], "too large to send even when truncated"))
            return
        self._attempt([smaller], give_up_at, out)  # the truncated copy stands for the event

    def request_timeout(self) -> Optional[float]:
        """The timeout of the next request: ``timeout``, less near the shutdown deadline;
        None when there is no time left."""
        deadline = self._deadline()
        if deadline is None:
            return self.options.timeout
        left = deadline - time.monotonic()
        return min(self.options.timeout, left) if left > 0.05 else None

    def export(self, events: Sequence[WireEvent], timeout: float) -> ExportResult:
        """One request; an exporter that raises (or returns nonsense) is a failed attempt."""
        return self._call(self.exporter.export, tuple(events), timeout)

    def send_feedback(self, feedback: Any) -> ExportResult:
        """One feedback request (``export_feedback``), no retry here (the feedback outbox
        schedules them); a failure is a ``retry`` result, never an exception. A success
        closes the circuit as any answer does; failures do not open it (a 404 here means
        the task is not ingested yet, not that phospho is down)."""
        timeout = self.request_timeout()
        if timeout is None:
            return ExportResult.retry("shutdown_timeout reached", cause="timeout")
        result = self._call(self.exporter.export_feedback, feedback, min(timeout, FEEDBACK_TIMEOUT))
        if result.ok:
            self.circuit.success()
        else:
            with self.books.lock:
                self.books.last_error = _message(result)
        return result

    def _call(self, method: Callable[[Any, float], Any], payload: Any, timeout: float) -> ExportResult:
        with self.books.lock:
            self.books.requests += 1
        try:
            if self._around is None:
                result = method(payload, timeout)
            else:
                with self._around(timeout):
                    result = method(payload, timeout)
        except Busy as exc:
            return ExportResult.retry(str(exc))
        except BaseException as exc:  # noqa: BLE001 - an exporter bug (even SystemExit) is a failed attempt
            if interrupts_this_thread(exc):
                raise
            return ExportResult.retry(f"the exporter raised {type(exc).__name__}: {_text(exc)}", cause="exporter")
        if not isinstance(result, ExportResult):
            return ExportResult.retry(f"the exporter returned {type(result).__name__}, not an ExportResult",
                                      cause="exporter")
        return result

    def _backoff(self, attempt: int, retry_after: Optional[float], give_up_at: float) -> None:
        """Wait before the next attempt: full jitter, at least the server's wish, never past
        the batch's or the shutdown's deadline; a shutdown cuts it short."""
        delay = _jitter.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
        if retry_after is not None:
            delay = max(delay, retry_after)
        limit = give_up_at - time.monotonic()
        deadline = self._deadline()
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic() - 0.1)
        self._stopping.wait(max(0.0, min(delay, limit)))


#: Back-off jitter from the OS: the application's ``random`` state is left alone, and forked
#: children do not retry in step.
_jitter = random.SystemRandom()


def interrupts_this_thread(exc: BaseException) -> bool:
    """A Ctrl-C or a signal handler's ``sys.exit()`` raised on the main thread (where the
    exit drain and ``push`` send): it must stop them, not count as a failed attempt."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit)) and threading.current_thread() is threading.main_thread()


def _pause(retry_after: Any) -> Optional[float]:
    """A server's (or an exporter's) Retry-After as seconds to honour: within
    ``MAX_RETRY_AFTER``, and None for nonsense (negative, not a number)."""
    try:
        seconds = float(retry_after)
    except OverflowError:  # an integer too large for a float: a very long pause
        return MAX_RETRY_AFTER
    except (TypeError, ValueError):
        return None
    if not seconds >= 0:  # negative, or NaN
        return None
    return min(seconds, MAX_RETRY_AFTER)


def _message(result: ExportResult) -> str:
    """The result's error for people, or what it says without one."""
    if result.error:
        return result.error
    status = f" (HTTP {result.status})" if result.status else ""
    return f"the exporter answered {result.kind!r}{status} without an error message"


def _reason(result: ExportResult) -> str:
    """A short code for why a batch failed: ``http_503``, ``unreachable``, ``auth``..."""
    if result.status:
        return f"http_{result.status}"
    if result.cause == "exporter":
        return "exporter_error"
    if result.cause == "not_api":
        return "not_the_api"
    if result.cause == "storage":
        return "local_store_error"
    return "unreachable" if result.kind == "retry" else result.kind


def _text(exc: BaseException) -> str:
    try:
        return str(exc)[:300]
    except Exception:  # noqa: BLE001 - a user __str__
        return "?"
