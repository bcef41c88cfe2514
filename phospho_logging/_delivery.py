"""Delivery policy: retries, back-off, the circuit breaker and the spool.

``Delivery.deliver`` is called by the worker with one batch. It tries the exporter with
a bounded timeout; retries what may succeed later (408, 425, 429, 5xx, timeouts,
connection errors) with exponential back-off, full jitter and the server's
``Retry-After``, within ``max_attempts`` and ``max_retry_time``; splits a batch the server
finds too large; and hands whatever it cannot deliver to the spool instead of dropping
it. After repeated failures a circuit breaker stops calling a dead endpoint (batches go
straight to the spool) and probes it again after a cool-down; ``replay`` sends spooled
tasks back once the endpoint answers.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import _diag
from ._config import Options
from ._spool import Spool
from ._transport import Exporter, Outcome

BACKOFF_BASE = 0.1
BACKOFF_CAP = 30.0
#: Failed batches in a row that open the circuit.
CIRCUIT_THRESHOLD = 3
CIRCUIT_COOLDOWN = 5.0
CIRCUIT_COOLDOWN_CAP = 60.0
#: How long a configuration error (bad key, unknown project) keeps the circuit open.
CONFIG_ERROR_COOLDOWN = 60.0
CONFIG_STATUSES = (401, 403, 404)
_CONFIG_REASONS = frozenset(f"http_{status}" for status in CONFIG_STATUSES)
#: A longer Retry-After opens the circuit for that long instead of holding the worker.
MAX_RETRY_AFTER_WAIT = 5.0


class Counters:
    """The worker side's counters (written by the worker thread only)."""

    def __init__(self) -> None:
        self.taken = 0
        self.sent = 0
        self.rejected = 0
        self.spooled = 0
        self.replayed = 0
        self.batches = 0
        self.requests = 0
        self.retries = 0
        self.dropped: Dict[str, int] = {}
        self.rejected_by_reason: Dict[str, int] = {}
        self.spooled_by_reason: Dict[str, int] = {}
        self.problems: Dict[str, int] = {}
        self.last_error: Optional[str] = None

    def losses(self) -> int:
        return sum(self.dropped.values()) + self.rejected


class Circuit:
    """Closed: send. Open: do not call the endpoint until ``open_until``. Then one probe."""

    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.cooldown = CIRCUIT_COOLDOWN

    def is_open(self) -> bool:
        return time.monotonic() < self.open_until

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.cooldown = CIRCUIT_COOLDOWN

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= CIRCUIT_THRESHOLD:
            self.trip(self.cooldown)
            self.cooldown = min(self.cooldown * 2, CIRCUIT_COOLDOWN_CAP)

    def trip(self, seconds: float, quiet: bool = False) -> None:
        self.open_until = time.monotonic() + seconds
        if not quiet:
            _diag.warn_once(
                "circuit_open",
                "the endpoint keeps failing: tasks go to the spool for %.0f s before it is tried again",
                seconds,
            )


class Delivery:
    """Sends batches for one worker; see the module docstring."""

    def __init__(
        self,
        exporter: Exporter,
        options: Options,
        counters: Counters,
        spool: Optional[Spool],
        stopping: threading.Event,
        deadline: Callable[[], Optional[float]],
    ) -> None:
        self.exporter = exporter
        self.options = options
        self.counters = counters
        self.spool = spool
        self.circuit = Circuit()
        self._stopping = stopping
        self._deadline = deadline

    # -- one batch ----------------------------------------------------------------------

    def deliver(self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes]) -> None:
        """Deliver a batch, or spool it (or, without a spool, drop and count it)."""
        if self.options.durable and self.spool is not None:
            # Stored before the first attempt: a kill -9 cannot lose it any more.
            self._spool_put(events, encoded, leased=True)
        if self.circuit.is_open():
            self._give_up(events, encoded, "circuit_open", "the circuit is open")
            return
        self._attempt(events, encoded, time.monotonic() + self.options.max_retry_time)

    def _attempt(self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes], give_up_at: float) -> None:
        attempt = 0
        while True:
            timeout = self._request_timeout()
            if timeout is None:
                self._give_up(events, encoded, "shutdown_deadline", "shutdown_timeout reached with tasks unsent")
                return
            outcome = self._export(events, encoded, timeout)
            if outcome.ok:
                self.circuit.success()
                self._delivered(outcome, events)
                return
            if (outcome.too_large or outcome.status == 422) and len(events) > 1:
                half = len(events) // 2  # halve until the offending size or event is isolated
                self._attempt(events[:half], encoded[:half], give_up_at)
                self._attempt(events[half:], encoded[half:], give_up_at)
                return
            if outcome.too_large:
                shrunk = shrink(events[0], len(encoded[0]) // 2)
                if shrunk is not None:
                    self._attempt([shrunk[0]], [shrunk[1]], give_up_at)
                else:
                    self._reject(events, "too large to send even when truncated")
                return
            if outcome.status == 422:
                self._reject(events, outcome.error)
                return
            if outcome.status in CONFIG_STATUSES:
                _diag.warn_once(
                    f"config:{outcome.status}",
                    "%s. Check PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID (`phospho-logging check` tests "
                    "them); tasks are kept in the spool meanwhile and sent once the key works",
                    outcome.error,
                )
                self.circuit.trip(CONFIG_ERROR_COOLDOWN, quiet=True)
                self._give_up(events, encoded, f"http_{outcome.status}", outcome.error)
                return
            if outcome.retry_after is not None and outcome.retry_after > MAX_RETRY_AFTER_WAIT:
                # The server asked for a long pause: keep the worker free for new tasks.
                self.circuit.trip(outcome.retry_after)
                self._give_up(events, encoded, f"http_{outcome.status}", outcome.error)
                return
            attempt += 1
            if outcome.retry and attempt < self.options.max_attempts and time.monotonic() < give_up_at:
                self.counters.retries += 1
                self._backoff(attempt, outcome.retry_after, give_up_at)
                continue
            self.circuit.failure()
            reason = f"http_{outcome.status}" if outcome.status else "unreachable"
            self._give_up(events, encoded, reason, outcome.error)
            return

    def _request_timeout(self) -> Optional[float]:
        deadline = self._deadline()
        if deadline is None:
            return self.options.timeout
        left = deadline - time.monotonic()
        return min(self.options.timeout, left) if left > 0.05 else None

    def _export(self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes], timeout: float) -> Outcome:
        self.counters.requests += 1
        try:
            return self.exporter.export(events, encoded, timeout)
        except Exception as exc:  # noqa: BLE001 - an exporter bug is a failed attempt
            return Outcome(False, retry=True, error=f"exporter error: {type(exc).__name__}: {exc}")

    def _backoff(self, attempt: int, retry_after: Optional[float], give_up_at: float) -> None:
        """Sleep before the next attempt: full jitter, at least the server's wish, never past
        the batch's or the shutdown's deadline; shutdown cuts it short."""
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
        if retry_after is not None:
            delay = max(delay, retry_after)
        limit = give_up_at - time.monotonic()
        deadline = self._deadline()
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic() - 0.1)
        self._stopping.wait(max(0.0, min(delay, limit)))

    # -- outcomes -----------------------------------------------------------------------

    def _delivered(self, outcome: Outcome, events: Sequence[Dict[str, Any]]) -> None:
        if outcome.rejected:
            self._reject([events[i] for i in outcome.rejected], None, list(outcome.rejected.values()))
        self.counters.sent += len(events) - len(outcome.rejected)
        if self.options.durable and self.spool is not None:
            self._spool_remove(events)

    def _reject(
        self, events: Sequence[Dict[str, Any]], reason: Optional[str], reasons: Optional[List[str]] = None
    ) -> None:
        reasons = reasons if reasons is not None else [reason or "rejected"] * len(events)
        c = self.counters
        for why in reasons:
            c.rejected_by_reason[why] = c.rejected_by_reason.get(why, 0) + 1
        c.rejected += len(events)
        if self.options.durable and self.spool is not None:
            self._spool_remove(events)
        _diag.warn_once(
            "rejected:" + reasons[0][:60],
            "phospho rejected %d task(s): %s (counted in stats()['rejected_by_reason'])",
            len(events),
            reasons[0],
        )

    def _give_up(self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes], reason: str, message: str) -> None:
        """Keep the batch in the spool for a later replay; drop it only without one."""
        self.counters.last_error = message
        if self.spool is None:
            self.drop(len(events), reason, message)
            return
        if self.options.durable:
            # Already in the spool since before the first attempt; make it replayable now.
            try:
                self.spool.put([e["task_id"] for e in events], encoded)
                self.spool.unlease([e["task_id"] for e in events])
            except Exception as exc:  # noqa: BLE001
                self.drop(len(events), "spool_error", f"cannot write the spool {self.spool.path}: {exc}")
                return
            stored = True
        else:
            stored = self._spool_put(events, encoded)
        if stored:
            c = self.counters
            c.spooled += len(events)
            c.spooled_by_reason[reason] = c.spooled_by_reason.get(reason, 0) + len(events)
            if reason in _CONFIG_REASONS:
                return  # the configuration message already said the tasks are kept
            _diag.warn_once(
                "spooled:" + reason,
                "%d task(s) kept in the spool %s for a later try: %s",
                len(events),
                self.spool.path,
                message,
            )

    def drop(self, count: int, reason: str, message: str) -> None:
        c = self.counters
        c.dropped[reason] = c.dropped.get(reason, 0) + count
        c.last_error = message
        _diag.warn_once("dropped:" + reason, "%d task(s) not delivered: %s", count, message)

    def _spool_put(self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes], leased: bool = False) -> bool:
        assert self.spool is not None
        try:
            _, evicted = self.spool.put([e["task_id"] for e in events], encoded, leased)
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the worker
            self.drop(len(events), "spool_error", f"cannot write the spool {self.spool.path}: {exc}")
            return False
        if evicted:
            self.drop(evicted, "spool_full", f"the spool holds max_spool_tasks={self.spool.max_tasks}; oldest dropped")
        return True

    def _spool_remove(self, events: Sequence[Dict[str, Any]]) -> None:
        assert self.spool is not None
        try:
            self.spool.remove([e["task_id"] for e in events])
        except Exception as exc:  # noqa: BLE001
            _diag.warn_once("spool_error", "cannot update the spool %s: %s", self.spool.path, exc)

    # -- replay -------------------------------------------------------------------------

    def replay(self, limit: int) -> bool:
        """Send up to ``limit`` spooled tasks, oldest first; True if there may be more."""
        if self.spool is None or self.circuit.is_open():
            return False
        try:
            rows = self.spool.claim(limit)
        except Exception as exc:  # noqa: BLE001
            _diag.warn_once("spool_error", "cannot read the spool %s: %s", self.spool.path, exc)
            return False
        if not rows:
            return False
        timeout = self._request_timeout()
        if timeout is None:
            self.spool.release([r[0] for r in rows])
            return False
        encoded = [r[1] for r in rows]
        events = [json.loads(b) for b in encoded]
        outcome = self._export(events, encoded, timeout)
        if outcome.ok:
            self.circuit.success()
            rejected = len(outcome.rejected)
            if rejected:
                self._reject([events[i] for i in outcome.rejected], None, list(outcome.rejected.values()))
            self.counters.replayed += len(rows) - rejected
            self.spool.ack([r[0] for r in rows])
            return True
        self.spool.release([r[0] for r in rows])
        if outcome.too_large and limit > 1:
            return self.replay(max(1, limit // 2))
        if outcome.status in CONFIG_STATUSES:
            self.circuit.trip(CONFIG_ERROR_COOLDOWN, quiet=True)
            _diag.warn_once("replay:" + str(outcome.status), "cannot replay the spool: %s", outcome.error)
        else:
            self.circuit.failure()
        return False


def shrink(event: Dict[str, Any], budget: int) -> Optional[tuple[Dict[str, Any], bytes]]:
    """Truncate an event's largest text fields until it encodes within ``budget`` bytes,
    marking what was cut in its metadata; None if even that does not fit."""
    from ._serialize import dumps

    event = dict(event)
    metadata = dict(event.get("metadata") or {})
    cut: List[str] = list(metadata.get("phospho_logging_truncated") or [])  # type: ignore[arg-type]
    for _ in range(32):
        encoded = dumps(event)
        if len(encoded) <= budget:
            return event, encoded
        sizes = [(len(json.dumps(v)), k) for k, v in event.items() if k not in ("task_id", "metadata") and v]
        sizes += [(len(json.dumps(v)), "metadata." + k) for k, v in metadata.items() if v]
        if not sizes:
            return None
        size, key = max(sizes)
        if size < 64:
            return None
        keep = max(16, size // 2)
        if key.startswith("metadata."):
            name = key[len("metadata."):]
            metadata[name] = json.dumps(metadata[name])[:keep] + "… [truncated]"
        elif key in ("input",) or isinstance(event[key], str):
            event[key] = str(event[key])[:keep] + "… [truncated]"
        else:
            event[key] = None if key != "raw_input" else json.dumps(event[key])[:keep] + "… [truncated]"
        if key not in cut:
            cut.append(key)
        metadata["phospho_logging_truncated"] = cut
        event["metadata"] = metadata
    return None
