"""Where each task ends up once the worker has tried to deliver it.

``Settler`` writes the outcome of every batch into the books, exactly once per task
(sent, rejected, spooled, or dropped with a reason), keeps what could not be delivered in
the spool (offline at the shutdown deadline, in the local store), makes the ``durable``
copy before a batch is sent, and replays the spool through the same delivery policy.
Every storage error is caught here, counted and said once: the worker never dies of one.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

from . import _diag, _lifecycle
from ._batch import batches
from ._config import Options
from ._delivery import Books, Delivery, Resolution
from ._event import event_budget, fitted, stored_event
from ._export import WireEvent, destination_of
from ._feedback import Feedback
from ._http import HTTPExporter
from ._spool import Spool

#: After a storage error or a failed replay, seconds before the spool is read again.
SPOOL_PAUSE = 5.0
#: Spooled feedback whose task is still unknown this long after it was given is dropped.
FEEDBACK_MAX_AGE = 7 * 24 * 3600.0
#: With nothing to replay, seconds before the spool is looked at again (another engine, or
#: another process, may have spooled meanwhile).
REPLAY_RECHECK = 30.0
_CONFIG_REASONS = ("http_401", "http_403", "http_404", "auth", "not_found")


class Settler:
    """The books and the spool of one engine; see the module docstring.

    Args:
        options: the engine's options.
        exporter: the engine's exporter (offline, the local store keeps what the
            deadline leaves).
        books: the engine's books.
        spool: the spool (with credentials), or None.
        past_grace: True once the exit deadline and its grace are over: then nothing is
            written any more, only counted.
    """

    def __init__(self, options: Options, exporter: Any, books: Books, spool: Optional[Spool],
                 past_grace: Callable[[], bool], time_left: Callable[[], Optional[float]]) -> None:
        self.options = options
        self.exporter = exporter
        self.destination = destination_of(exporter)
        self.books = books
        self.spool = spool
        self._past_grace = past_grace
        self._time_left = time_left
        #: The spool may hold tasks to replay (of an earlier run, or spooled since).
        self.replay_due = spool is not None
        #: No replay before this time (``time.monotonic()``): after an error, a pause.
        self.replay_after = 0.0
        self._recheck_at = 0.0
        self._reclaimed = False

    # -- one batch ------------------------------------------------------------------------

    def durable_copy(self, events: List[WireEvent]) -> bool:
        """With ``durable=True``, put the batch in the spool before its first attempt."""
        if not self.options.durable or self.spool is None:
            return False
        try:
            with _lifecycle.own_io():
                self.spool.put([e.task_id for e in events], [e.json for e in events], leased=True,
                               wait=self._time_left())
        except Exception as exc:  # noqa: BLE001 - the batch is still sent, without its copy
            _diag.warn_once("durable_spool", "cannot write the spool %s (%s): tasks are sent without their "
                            "durable copy", self.spool.path, exc)
            return False
        return True

    def settle(self, results: List[Resolution], stored: bool) -> None:
        """Count each event of a batch once, and update the spool to match (``stored``: the
        batch has a durable copy there)."""
        books = self.books
        for r in results:
            n = len(r.events)
            if r.kind == "sent":
                with books.lock:
                    books.sent += n
            elif r.kind == "rejected":
                with books.lock:
                    books.rejected += n
                    books.add(books.rejected_by_reason, r.reason, n)
                _diag.warn_once("rejected:" + r.reason[:60],
                                "%d task(s) rejected by %s: %s (counted in stats()['rejected_by_reason'])",
                                n, self.destination, r.reason)
            else:
                self.keep(r.events, r.reason, r.message, stored)
                continue
            if stored:
                self._spool_call("remove", [e.task_id for e in r.events])

    def keep(self, events: List[WireEvent], reason: str, message: str, stored: bool = False) -> None:
        """Events that could not be delivered: into the spool, or dropped with a reason."""
        n = len(events)
        with self.books.lock:
            self.books.last_error = message
        if reason in _CONFIG_REASONS:
            _diag.warn_once(f"config:{reason}", "%s. Check PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID "
                            "(`phospho-logging check` tests them); tasks are kept in the spool meanwhile and "
                            "sent once the key works", message)
        spool = self.spool
        if self._past_grace():
            if stored:  # the durable copy is in the spool already: replayed on the next start
                self._count_spooled(n, reason)
            else:
                self.drop(n, "shutdown_deadline", message)
            return
        if spool is None:
            if reason == "shutdown_deadline" and getattr(self.exporter, "local", False) is True:
                self._store_now(events, message)  # a local exporter (the store) is its own spool
            elif getattr(self.exporter, "local", False) is True:
                self.drop(n, reason, message)
            else:
                self.drop(n, reason, f"{message} (no spool to keep them: it needs PHOSPHO_API_KEY and "
                                     "PHOSPHO_PROJECT_ID, even with your own exporter)")
            return
        if stored:
            self._spool_call("unlease", [e.task_id for e in events])
        else:
            try:
                with _lifecycle.own_io():
                    _, evicted = spool.put([e.task_id for e in events], [e.json for e in events],
                                           wait=self._time_left())
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop the worker
                self.drop(n, "spool_error", f"cannot write the spool {spool.path}: {exc}")
                return
            if evicted:
                with self.books.lock:
                    self.books.spool_evicted += evicted
                _diag.warn_once("spool_full", "the spool holds max_spool_tasks=%d; its oldest tasks were "
                                "dropped (counted in stats()['spool_evicted'])", spool.max_tasks)
        self._count_spooled(n, reason)
        if reason not in _CONFIG_REASONS and reason != "requests_busy":  # that one is durable's normal path
            _diag.warn_once("spooled:" + reason, "%d task(s) kept in the spool %s for a later try: %s",
                            n, spool.path, message)

    def _count_spooled(self, n: int, reason: str) -> None:
        with self.books.lock:
            self.books.spooled += n
            self.books.add(self.books.spooled_by_reason, reason, n)
        self.replay_due = True
        if self.spool is not None:  # another engine on this spool (after a handover) may be healthy
            _lifecycle.spooled(self.spool.path, self.spool.destination)

    def _store_now(self, events: List[WireEvent], message: str) -> None:
        """At the shutdown deadline, with a local exporter (``local = True``: the local
        store): write to it anyway, within the exit grace; it has no network to wait for."""
        left = self._time_left()
        try:
            with _lifecycle.own_io():
                result = self.exporter.export(events, self.options.timeout if left is None else left)
        except Exception as exc:  # noqa: BLE001 - counted below like any failure
            result = None
            message = f"cannot write the local store: {exc!r}"
        if result is not None and result.ok:
            with self.books.lock:
                self.books.sent += len(events)
        else:
            self.drop(len(events), "shutdown_deadline", result.error if result is not None else message)

    def drop(self, n: int, reason: str, message: str) -> None:
        """Count ``n`` tasks as lost, with a reason; say so (rate-limited)."""
        with self.books.lock:
            self.books.add(self.books.dropped, reason, n)
            self.books.last_error = message
        if reason == "shutdown_deadline" and _lifecycle.state != "running":
            return  # the exit report says how many, once
        _diag.warn_once("dropped:" + reason, "%d task(s) not delivered: %s", n, message)

    # -- feedback -------------------------------------------------------------------------

    def feedback_settled(self, kind: str, feedback: Feedback, reason: str) -> None:
        """A feedback sent, or rejected by the server (said once per reason)."""
        with self.books.lock:
            self.books.feedback["sent" if kind == "sent" else "rejected"] += 1
        if kind != "sent":
            _diag.warn_once("feedback_rejected:" + reason[:60], "a feedback on task %s was rejected by %s: %s "
                            "(counted in stats()['feedback']['rejected'])", feedback.task_id, self.destination,
                            reason)

    def keep_feedback(self, items: List[Feedback], reason: str, message: str) -> None:
        """Feedback not delivered now: into the spool (sent from there later), or dropped
        with a reason when there is no spool or it cannot be written."""
        n = len(items)
        spool = self.spool
        if spool is None or self._past_grace():
            why = "there is no spool to keep it (it needs PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID)" \
                if spool is None else "shutdown_timeout ran out"
            self.drop_feedback(n, f"{message}; {why}")
            return
        try:
            with _lifecycle.own_io():
                spool.put_feedback(items, wait=self._time_left())
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the worker
            self.drop_feedback(n, f"{message}; cannot write the spool {spool.path}: {exc}")
            return
        with self.books.lock:
            self.books.feedback["spooled"] += n
        self.replay_due = True
        if reason == "task_not_found":
            what = "phospho does not have its task yet (HTTP 404): it is sent from the spool once the task is there"
        else:
            what = f"{message}: it is sent from the spool later"
        _diag.warn_once("feedback_spooled:" + reason, "%d feedback(s) kept in the spool %s: %s", n, spool.path, what)

    def drop_feedback(self, n: int, message: str) -> None:
        """Count ``n`` feedback(s) as lost; say so once."""
        with self.books.lock:
            self.books.feedback["dropped"] += n
            self.books.last_error = message
        _diag.warn_once("feedback_dropped", "%d feedback(s) not delivered: %s (counted in "
                        "stats()['feedback']['dropped'])", n, message)

    def _replay_feedback(self, delivery: Delivery) -> bool:
        """Send up to one batch of spooled feedback, oldest first; False when none waits."""
        spool = self.spool
        assert spool is not None
        with _lifecycle.own_io():
            rows = spool.feedback.claim(self.options.max_batch_size, wait=self._time_left())
        if not rows:
            return False
        done: List[int] = []
        again: List[int] = []
        now = time.time()
        for row_id, item, _tries in rows:
            if delivery.request_timeout() is None:
                again.append(row_id)
                continue
            result = delivery.send_feedback(item)
            if result.ok:
                done.append(row_id)
                with self.books.lock:
                    self.books.feedback["replayed"] += 1
            elif result.kind in ("invalid", "too_large"):
                done.append(row_id)
                self.feedback_settled("rejected", item, result.error or result.kind)
            elif result.kind == "not_found" and now - item.created > FEEDBACK_MAX_AGE:
                done.append(row_id)
                self.drop_feedback(1, f"task {item.task_id} was still unknown to phospho "
                                      f"{FEEDBACK_MAX_AGE / 86400:g} days after its feedback")
            else:
                again.append(row_id)
        with _lifecycle.own_io():
            spool.feedback.ack(done, wait=self._time_left())
            spool.feedback.release(again, wait=self._time_left())
        if again:  # their tasks are not there yet, or phospho is not reachable: later
            self.replay_after = time.monotonic() + SPOOL_PAUSE
        return True

    def count_problems(self, problems: List[str]) -> None:
        """Count what had to be adjusted in a task; say each kind once (the new kinds of
        one task in one line)."""
        counts = self.books.problems
        new = []
        for tag in sorted(set(problems)):
            seen = counts.get(tag, 0)
            counts[tag] = seen + problems.count(tag)
            if not seen:
                new.append(tag)
        if new:
            _diag.warn_once(
                "problem:" + ",".join(new),
                "a task had to be adjusted (%s); it was sent best-effort, marked in "
                "metadata['phospho_logging_problems'] and counted in stats()['problems']",
                ", ".join(new),
            )

    def _spool_call(self, method: str, keys: List[Any]) -> None:
        assert self.spool is not None
        try:
            with _lifecycle.own_io():
                getattr(self.spool, method)(keys, wait=self._time_left())
        except Exception as exc:  # noqa: BLE001 - the rows stay; their lease runs out
            _diag.warn_once("spool_error", "cannot update the spool %s: %s", self.spool.path, exc)

    # -- replay ---------------------------------------------------------------------------

    def replay_ready(self) -> bool:
        """True when the spool should be looked at now (the worker is otherwise idle)."""
        if self.spool is None:
            return False
        now = time.monotonic()
        if now < self.replay_after:
            return False
        if not self.replay_due and now >= self._recheck_at:
            self.replay_due = True
        return self.replay_due

    def replay(self, delivery: Delivery) -> None:
        """Send up to one batch of spooled tasks, oldest first, with the delivery policy.
        Any error is counted and said; the spool is tried again after a pause."""
        try:
            self._replay(delivery)
        except Exception as exc:  # noqa: BLE001 - replay is best-effort; the worker goes on
            self.replay_after = time.monotonic() + SPOOL_PAUSE
            _diag.warn_once("replay_error", "replaying the spool failed: %r", exc)

    def _replay(self, delivery: Delivery) -> None:
        spool = self.spool
        assert spool is not None
        try:
            with _lifecycle.own_io():
                if not self._reclaimed:
                    self._reclaimed = True
                    spool.reclaim_dead()
                rows = spool.claim(self.options.max_batch_size)
        except Exception as exc:  # noqa: BLE001 - a locked or broken spool: try again later
            self.replay_after = time.monotonic() + SPOOL_PAUSE
            _diag.warn_once("spool_error", "cannot read the spool %s: %s", spool.path, exc)
            return
        if not rows:
            # The tasks first: feedback on a task spooled with it is sent once the task is.
            try:
                if self._replay_feedback(delivery):
                    return
            except Exception as exc:  # noqa: BLE001 - a locked or broken spool: try again later
                self.replay_after = time.monotonic() + SPOOL_PAUSE
                _diag.warn_once("spool_error", "cannot read the spool %s: %s", spool.path, exc)
                return
            self.replay_due = False
            self._recheck_at = time.monotonic() + REPLAY_RECHECK
            return
        row_of: Dict[str, int] = {}
        events = []
        budget = event_budget(self.options.max_batch_bytes)
        rejected: List[int] = []
        for row_id, encoded in rows:
            event = fitted(stored_event(encoded), self.options.max_field_chars, budget)
            if event is None:
                rejected.append(row_id)
                continue
            row_of[event.task_id] = row_id
            events.append(event)
        if rejected:  # stored when the limits were larger, and cannot be cut to these
            self._replayed([], rejected, "too large to send even when truncated")
        failed = False
        for chunk in batches(events, self.options.max_batch_size, self.options.max_batch_bytes):
            for r in delivery.attempt(chunk):
                ids = [row_of[e.task_id] for e in r.events if e.task_id in row_of]
                if r.kind == "failed":
                    failed = True
                    self._spool_call("release", ids)
                elif r.kind == "sent":
                    self._replayed(ids, [], "")
                else:
                    self._replayed([], ids, r.reason)
        if failed:
            self.replay_after = time.monotonic() + SPOOL_PAUSE

    def _replayed(self, sent: List[int], rejected: List[int], reason: str) -> None:
        """Spooled tasks settled by a replay: counted apart from this run's tasks (they were
        counted as spooled when they were spooled, or belong to an earlier run)."""
        with self.books.lock:
            self.books.replayed += len(sent)
            self.books.replay_rejected += len(rejected)
        if rejected:
            _diag.warn_once("replay_rejected:" + reason[:60], "%d spooled task(s) rejected by %s: %s "
                            "(counted in stats()['replay_rejected'])", len(rejected), self.destination, reason)
        self._spool_call("ack", sent + rejected)

    # -- exit -----------------------------------------------------------------------------

    def report_exit(self, finished: bool, stats: Dict[str, Any], owner: object, interrupted: bool = False) -> None:
        """Say, once, what this run lost, by reason (messages during the run are
        rate-limited; this is the tally), and what waits in the spool. ``finished``: the
        drain ended; else the tasks still queued are lost too. ``interrupted``: a Ctrl-C
        (or a signal handler's ``sys.exit()``) cut the drain short."""
        books = self.books
        lost = {reason: n for reason, n in stats["dropped_by_reason"].items() if n}
        parts = [f"{n} {reason}" for reason, n in sorted(lost.items(), key=lambda kv: -kv[1])]
        # What is still queued now is lost (the process ends), drained or not: a rescue
        # cut short by a second Ctrl-C leaves some, after releasing the exit marker.
        unsettled = max(0, stats["queued"])
        if unsettled:
            parts.append(f"{unsettled} still queued")
        if parts:
            if interrupted:
                why = "; the exit drain was interrupted"
            elif unsettled or "shutdown_deadline" in lost:
                why = "; shutdown_timeout ran out"
            else:
                why = ""
            what = ("could not be kept in the local store" if getattr(self.exporter, "local", False) is True
                    else "could not be delivered or kept")
            _diag.warn_once("exit_lost:" + str(id(owner)), "%d task(s) of this run %s (%s)%s",
                            sum(lost.values()) + unsettled, what, ", ".join(parts), why)
        feedback = stats.get("feedback") or {}
        lost_feedback = feedback.get("dropped", 0) + max(0, feedback.get("waiting", 0))
        if lost_feedback:
            _diag.warn_once("feedback_lost_at_exit:" + str(id(owner)), "%d feedback(s) of this run could not be "
                            "delivered or kept (%d dropped, %d still waiting at the end; "
                            "stats()['feedback'] has the counts)", lost_feedback, feedback.get("dropped", 0),
                            max(0, feedback.get("waiting", 0)))
        if books.spool_evicted:
            _diag.warn_once("evicted_at_exit:" + str(id(owner)), "%d spooled task(s) were dropped, oldest first, to "
                            "keep the spool within max_spool_tasks=%d (stats()['spool_evicted'])",
                            books.spool_evicted, self.options.max_spool_tasks)
        if self.spool is None or not (books.spooled or books.replayed or self.spool.path.exists()):
            return
        if finished and (books.feedback["spooled"] or books.feedback["replayed"]):
            try:
                feedback_waiting = self.spool.feedback.count(wait=0.2)
            except Exception:  # noqa: BLE001 - only a message depends on it
                feedback_waiting = 0
            if feedback_waiting:
                _diag.warn_once("feedback_at_exit:" + str(id(owner)), "%d feedback(s) wait in the spool %s: they "
                                "are sent once their tasks are in phospho, on the next start or with "
                                "`phospho-logging push`", feedback_waiting, self.spool.path)
        if finished:  # the worker is done with the spool: how many wait there is exact
            try:
                waiting = self.spool.count(wait=0.2)  # this run's and earlier runs'
            except Exception:  # noqa: BLE001 - only a message depends on it
                waiting = books.spooled
            where = "wait in"
        else:
            waiting, where = books.spooled, "of this run were put in"
        if waiting:
            if isinstance(self.exporter, HTTPExporter):
                later = "they are sent on the next start with a working backend, or now with `phospho-logging push`"
            else:  # a custom exporter: push would send to phospho's API instead
                later = "they are replayed through your exporter on the next start"
            _diag.warn_once("spooled_at_exit:" + str(id(owner)), "%d task(s) %s the spool %s: %s",
                            waiting, where, self.spool.path, later)
