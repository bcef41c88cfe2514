"""Feedback on a task: ``feedback(task_id, flag)``, its record form, and its outbox.

phospho files a human evaluation with ``POST /v2/tasks/{task_id}/human-eval``. The phospho
SDK's ``user_feedback`` posts it on the caller's thread and blocks up to 31 s while the task
is not ingested yet. Here feedback is an ordinary record (``extra={"task_id": ...,
"flag": ...}`` without an ``input``), so any pipeline ships it: the handler puts a
``Feedback`` on its engine's queue, and the worker sends it with the tasks' exporter,
never on the caller's thread.

Feedback often follows its task within milliseconds: the server answers 404 until the task
is ingested. The worker's ``Outbox`` tries each feedback once the batch holding its task
has gone, retries a 404 (and any failure that may pass) with back-off within
``max_retry_time``, then keeps it in the spool, which sends it later; a flush or shutdown
tries what is waiting once more and spools the rest. Offline, feedback goes to the local
store, and ``phospho-logging push`` sends it after the tasks.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Union

from ._export import ExportResult

__all__ = ["FLAGS", "Feedback", "Outbox", "feedback", "feedback_of", "is_feedback"]

#: The flags phospho accepts.
FLAGS = ("success", "failure")
#: The longest a note may be (a longer one is cut, visibly).
MAX_NOTES_CHARS = 10_000
#: The longest a source may be.
MAX_SOURCE_CHARS = 200
#: Feedback waiting in the worker's memory at most; past it, new ones go to the spool at once.
MAX_WAITING = 10_000
#: First back-off after a 404, doubled each time, up to the cap (with full jitter).
BACKOFF_BASE = 0.1
BACKOFF_CAP = 5.0
#: Feedback sent per pass of the worker loop (the rest waits its turn).
PER_PASS = 100
#: The longest one feedback request may take (a small request; the worker waits for it).
FEEDBACK_TIMEOUT = 3.0
#: After a feedback request phospho did not answer, no feedback is tried for this long,
#: doubling up to the cap while it goes on: a hung endpoint holds the worker rarely.
PAUSE_BASE = 1.0
PAUSE_CAP = 60.0
_jitter = random.SystemRandom()


class Feedback(NamedTuple):
    """One feedback on a task, as it crosses the queue and as exporters receive it.

    Attributes:
        task_id: the task the feedback is about.
        flag: ``"success"`` or ``"failure"``.
        notes: free text, or None.
        source: who gave it (``"user"``, ``"system"``, an e-mail...).
        created: when it was given (Unix seconds).
    """

    task_id: str
    flag: str
    notes: Optional[str]
    source: str
    created: float

    def body(self, project_id: Optional[str]) -> bytes:
        """The body of ``POST /v2/tasks/{task_id}/human-eval``."""
        return json.dumps({"human_eval": self.flag, "project_id": project_id, "source": self.source,
                           "notes": self.notes}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def data(self) -> Dict[str, Any]:
        """The feedback as a dict (what ``feedback()`` returns)."""
        return {"task_id": self.task_id, "flag": self.flag, "notes": self.notes, "source": self.source,
                "created": self.created}


def is_feedback(fields: Mapping[str, Any]) -> bool:
    """A record's attributes (or an event dict) that are feedback, not a task: a ``flag``
    and a ``task_id``, no ``input``."""
    return "flag" in fields and "task_id" in fields and "input" not in fields


def feedback_of(fields: Mapping[str, Any], created: Optional[float] = None) -> Union[Feedback, str]:
    """The ``Feedback`` that record fields hold, or why they are not valid feedback."""
    task_id, flag = fields.get("task_id"), fields.get("flag")
    # Plain strings from here on: a str subclass (an Enum's member...) is read as its text,
    # and an object that only compares equal to "success" is not a flag.
    task_id = str.__str__(task_id) if isinstance(task_id, str) else task_id
    if type(task_id) is not str or not task_id.strip():
        return f"task_id must be a non-empty string, got {_shown(task_id)}"
    flag = str.__str__(flag) if isinstance(flag, str) else flag
    if type(flag) is not str or flag not in FLAGS:
        return f"flag must be 'success' or 'failure', got {_shown(flag)}"
    notes = _text(fields.get("notes"), MAX_NOTES_CHARS)
    source = _text(fields.get("source"), MAX_SOURCE_CHARS) or "user"
    return Feedback(task_id, flag, notes, source, time.time() if created is None else created)


def _text(value: Any, limit: int) -> Optional[str]:
    """A plain string of at most ``limit`` characters (cut visibly), or None; never raises."""
    if value is None:
        return None
    if isinstance(value, str):
        text = str.__str__(value)
    else:
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - a user __str__
            text = f"<unprintable {type(value).__name__}>"
        if type(text) is not str:
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "...[truncated]"


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a user __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def feedback(
    task_id: str,
    flag: str,
    notes: Optional[str] = None,
    source: str = "user",
    *,
    logger: Union[None, str, logging.Logger] = None,
) -> Dict[str, Any]:
    """Flag a task as a ``"success"`` or a ``"failure"`` (phospho's human evaluation).

    Logs an ordinary record on the ``phospho`` logger (or ``logger``), so whatever pipeline
    ships the tasks ships the feedback too, after them, without blocking the caller: a
    task not ingested yet (the server's 404) is retried with back-off within
    ``max_retry_time``, then kept in the spool and sent from there. Offline it goes to the
    local store, and ``phospho-logging push`` sends it.

    Args:
        task_id: the task's id (``phospho_logging.log(...)["task_id"]``, or one you set
            with ``extra={"task_id": ...}``).
        flag: ``"success"`` or ``"failure"``.
        notes: free text, such as the reason for the flag.
        source: who gave it: ``"user"`` (the default), ``"system"``, an e-mail...
        logger: the logger (or its name) to log on; default ``phospho``.

    Returns:
        The feedback as it will be sent (``task_id``, ``flag``, ``notes``, ``source``,
        ``created``).

    Raises:
        ValueError: ``flag`` is not ``"success"`` or ``"failure"``, or ``task_id`` is not
            a non-empty string: a mistake in the calling code, said at once.
    """
    found = feedback_of({"task_id": task_id, "flag": flag, "notes": notes, "source": source})
    if isinstance(found, str):
        raise ValueError(f"phospho_logging.feedback: {found}")
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger or "phospho")
    if target.isEnabledFor(logging.INFO):
        target.info("feedback: %s", found.flag, extra={"task_id": found.task_id, "flag": found.flag,
                                                        "notes": found.notes, "source": found.source})
    return found.data()


class _Waiting:
    """One feedback in the outbox: when to try it next, and until when."""

    __slots__ = ("feedback", "seq", "next_at", "give_up_at", "tries", "settled")

    def __init__(self, feedback: Feedback, seq: int, now: float, give_up_at: float) -> None:
        self.feedback = feedback
        self.seq = seq
        self.next_at = now
        self.give_up_at = give_up_at
        self.tries = 0
        self.settled = False


#: What the outbox calls to send one feedback (the engine's ``Delivery.send_feedback``).
Send = Callable[[Feedback], ExportResult]
#: What it calls with feedback it cannot deliver now: kept in the spool (or counted).
Keep = Callable[[List[Feedback], str, str], None]


class Outbox:
    """The feedback the worker holds, each tried when due. Each one is settled once: by
    the worker, or by the thread that rescues a stuck worker at the shutdown deadline
    (``keep_all``); the small lock is taken by those two only, never by a producer.

    Args:
        max_retry_time: how long a feedback is retried (a 404: its task not ingested
            yet) before it is kept in the spool.
        send: sends one feedback, returns an ``ExportResult`` (never raises).
        keep: keeps feedback that could not be delivered now (the spool), with a reason.
        settled: called with (kind, feedback, reason) for each one sent or rejected.
    """

    def __init__(self, max_retry_time: float, send: Send, keep: Keep,
                 settled: Callable[[str, Feedback, str], None]) -> None:
        self._max_retry_time = max_retry_time
        self._send = send
        self._keep = keep
        self._settled = settled
        self._waiting: List[_Waiting] = []
        self._lock = threading.Lock()
        self._added = 0  # feedback taken so far: a flush marker waits for those before it
        self._pause = 0.0  # the current pause after requests phospho did not answer
        self._paused_until = 0.0

    def __len__(self) -> int:
        return len(self._waiting)

    def mark(self) -> int:
        """A mark for what was taken so far (``waiting_upto``)."""
        return self._added

    def waiting_upto(self, mark: int) -> bool:
        """Feedback taken before ``mark`` still waits."""
        oldest = self.oldest()
        return oldest is not None and oldest <= mark

    def oldest(self) -> Optional[int]:
        """The mark of the oldest feedback still waiting, or None."""
        waiting = self._waiting
        return waiting[0].seq if waiting else None  # kept in the order they were taken

    def add(self, item: Feedback) -> None:
        """A feedback taken off the queue: tried at the next pass (once no batch is being
        built: the one holding its task goes first)."""
        if len(self._waiting) >= MAX_WAITING:
            self._keep([item], "feedback_backlog", f"more than {MAX_WAITING} feedback(s) wait for their tasks")
            return
        now = time.monotonic()
        self._added += 1
        with self._lock:
            self._waiting.append(_Waiting(item, self._added, now, now + self._max_retry_time))

    def next_due(self) -> Optional[float]:
        """When the next feedback is due (``time.monotonic()``), or None when none waits."""
        waiting = self._waiting
        if not waiting:
            return None
        return max(self._paused_until, min(w.next_at for w in list(waiting)))

    def send_due(self, can_send: Callable[[], bool]) -> None:
        """Send the feedback that is due (up to ``PER_PASS``), while ``can_send()``. While
        paused (phospho did not answer), what is past its retry time goes to the spool."""
        now = time.monotonic()
        if now < self._paused_until:
            for waiting in [w for w in list(self._waiting) if now >= w.give_up_at]:
                if self._claim(waiting):
                    self._keep([waiting.feedback], "unreachable", "phospho did not answer feedback requests")
            return
        due = [w for w in list(self._waiting) if w.next_at <= now][:PER_PASS]
        for waiting in due:
            if not can_send():
                return
            if not self._try(waiting, final=False):
                # phospho did not answer (or not as phospho): pause feedback, the rest waits.
                self._pause = min(PAUSE_CAP, max(PAUSE_BASE, 2 * self._pause))
                self._paused_until = time.monotonic() + self._pause
                return
            self._pause = 0.0

    def keep_upto(self, mark: int, reason: str, message: str) -> None:
        """Out of time for a shutdown: keep the feedback taken before ``mark`` in the spool
        without trying it again (it was tried while there was time)."""
        with self._lock:
            taken = [w for w in self._waiting if w.seq <= mark and not w.settled]
            for waiting in taken:
                waiting.settled = True
            self._waiting = [w for w in self._waiting if not w.settled]
        if taken:
            self._keep([w.feedback for w in taken], reason, message)

    def keep_all(self, reason: str, message: str) -> None:
        """Out of time: keep every waiting feedback without trying it (from the thread
        that rescues a stuck worker, too)."""
        with self._lock:
            taken = [w for w in self._waiting if not w.settled]
            for waiting in taken:
                waiting.settled = True
            self._waiting = []
        if taken:
            self._keep([w.feedback for w in taken], reason, message)

    def _claim(self, waiting: _Waiting) -> bool:
        """True for the first caller only: the feedback is theirs to settle."""
        with self._lock:
            if waiting.settled:
                return False
            waiting.settled = True
            try:
                self._waiting.remove(waiting)
            except ValueError:
                pass
            return True

    def _try(self, waiting: _Waiting, final: bool) -> bool:
        """Send one feedback; False when phospho did not answer as phospho (a timeout, no
        connection, a page that is not its JSON): trying more now would only wait more."""
        result = self._send(waiting.feedback)
        kind = result.kind
        if kind == "ok":
            if self._claim(waiting):
                self._settled("sent", waiting.feedback, "")
            return True
        if kind in ("invalid", "too_large"):
            if self._claim(waiting):
                self._settled("rejected", waiting.feedback, result.error or kind)
            return True
        waiting.tries += 1
        now = time.monotonic()
        if final or kind in ("auth", "failed") or now >= waiting.give_up_at:
            if self._claim(waiting):
                reason = "task_not_found" if kind == "not_found" else _reason(result)
                self._keep([waiting.feedback], reason, result.error or kind)
            return kind == "not_found"
        delay = _jitter.uniform(BACKOFF_BASE, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** waiting.tries))
        if result.retry_after is not None:
            try:
                delay = max(delay, min(60.0, float(result.retry_after)))
            except (TypeError, ValueError):
                pass
        waiting.next_at = min(now + delay, waiting.give_up_at)
        return kind == "not_found"


def _reason(result: ExportResult) -> str:
    if result.status:
        return f"http_{result.status}"
    return "unreachable" if result.kind == "retry" else result.kind
