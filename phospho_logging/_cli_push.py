"""``push``: send the spool's and the local store's tasks to phospho, resumably.

Batches within ``max_batch_size`` and ``max_batch_bytes`` (``_batch``), sent with the
library's delivery policy (``_delivery``: retries, back-off, splitting) through its
``HTTPExporter``; progress on stderr; a ``pushed`` table in the store, so an interrupted
push resumes where it stopped and a repeated one sends nothing twice.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, TextIO, Tuple

from . import _store
from ._batch import batches
from ._cli_commands import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    CLIError,
    explain,
    has_table,
    no_credentials,
    options_from,
    reading,
    require_store,
)
from ._config import Options
from ._delivery import Books, Delivery, Resolution
from ._event import event_budget, fitted, stored_event, wire
from ._export import WireEvent
from ._feedback import Feedback
from ._http import HTTPExporter
from ._redact import RedactError, make_redaction, mask_text
from ._serialize import dumps
from ._settle import FEEDBACK_MAX_AGE
from ._spool import Spool

_PUSHED = """
CREATE TABLE IF NOT EXISTS pushed (
    destination TEXT NOT NULL,
    task_id TEXT NOT NULL,
    pushed_at REAL NOT NULL,
    PRIMARY KEY (destination, task_id)
) WITHOUT ROWID
"""


def _setup_pushed(conn: sqlite3.Connection) -> None:
    conn.execute(_PUSHED)


_UNPUSHED = "NOT EXISTS (SELECT 1 FROM pushed p WHERE p.destination = ? AND p.task_id = t.task_id)"


class Progress:
    """A text bar on a terminal; elsewhere (a log file, CI) a line every ``every`` seconds."""

    def __init__(self, stream: TextIO, total: int, every: float = 5.0) -> None:
        self.stream = stream
        self.total = total
        self.every = every
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._last = time.monotonic()
        self._drawn = False

    def bar(self, done: int, width: int = 30) -> str:
        share = min(1.0, done / self.total) if self.total else 1.0
        filled = int(share * width)
        return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} tasks {share:4.0%}"

    def update(self, done: int) -> None:
        if self.tty:
            self.stream.write("\r" + self.bar(done))
            self._drawn = True
        elif time.monotonic() - self._last >= self.every:
            self.stream.write(f"push: {done}/{self.total} tasks\n")
            self._last = time.monotonic()
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


class Pusher:
    """Sends the spool rows of one project, then the store rows not pushed to it yet."""

    def __init__(self, options: Options, path: Path) -> None:
        self.options = options
        self.path = path
        self.db = _store.Database(path, _setup_pushed)
        self.spool = Spool(path, options.project_id or "", options.max_spool_tasks)
        self.sent = {"store": 0, "spool": 0}
        #: Feedback sent, and feedback whose task phospho does not know yet (kept for a later push).
        self.feedback = {"sent": 0, "waiting": 0, "rejected": 0, "given_up": 0}
        self._redaction = make_redaction(options.redact)
        self.left_out = 0  # stored tasks your redact function leaves out
        self._redact_errors = ""
        self.skipped = 0
        self.total = 0
        self.rejected: Dict[str, int] = {}
        self.error: Optional[Resolution] = None
        self.exporter = HTTPExporter(options.endpoint, options.api_key or "")
        self.books = Books()
        self.delivery = Delivery(self.exporter, options, self.books)
        self._budget = event_budget(options.max_batch_bytes)

    @property
    def retries(self) -> int:
        """Requests sent again after a transient failure."""
        return self.books.retries

    def count(self) -> Tuple[int, int, int]:
        """(store tasks to send, store tasks already pushed, spool tasks to send)."""
        dest = self.options.project_id
        with reading(self.path) as conn:
            total = int(conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
            pushed = 0
            if has_table(conn, "pushed"):
                pushed = int(conn.execute(f"SELECT COUNT(*) FROM tasks t WHERE NOT {_UNPUSHED}", (dest,)).fetchone()[0])
            spooled = 0
            if has_table(conn, "outbox"):
                spooled = int(conn.execute("SELECT COUNT(*) FROM outbox WHERE destination = ?", (dest,)).fetchone()[0])
        return total - pushed, pushed, spooled

    def count_feedback(self) -> int:
        """Feedback to send: the store's not pushed to this project yet, and the spool's."""
        dest = self.options.project_id
        with reading(self.path) as conn:
            if not has_table(conn, "feedback"):
                return 0
            return int(conn.execute(
                "SELECT COUNT(*) FROM feedback f WHERE (f.destination = '' AND NOT EXISTS (SELECT 1 FROM pushed p "
                "WHERE p.destination = ? AND p.task_id = 'feedback:' || f.id)) OR f.destination = ?"
                if has_table(conn, "pushed") else
                "SELECT COUNT(*) FROM feedback f WHERE f.destination = '' OR f.destination = ?",
                (dest, dest) if has_table(conn, "pushed") else (dest,),
            ).fetchone()[0])

    def run(self, progress_stream: TextIO) -> None:
        to_send, self.skipped, spooled = self.count()
        self.total = to_send + spooled
        progress = Progress(progress_stream, self.total)
        try:
            self.spool.reclaim_dead()
            while self.error is None and self._spool_batch():
                progress.update(self.done)
            last = 0
            while self.error is None:
                last = self._store_batch(last)
                if not last:
                    break
                progress.update(self.done)
            # Feedback after the tasks: phospho answers 404 for a task it does not have yet.
            while self.error is None and self._spool_feedback():
                pass
            last = 0
            while self.error is None:
                last = self._store_feedback(last)
                if not last:
                    break
        finally:
            progress.close()
            self.exporter.close()
            self.spool.close()
            self.db.close()

    @property
    def done(self) -> int:
        return sum(self.sent.values()) + sum(self.rejected.values()) + self.left_out

    def _spool_batch(self) -> bool:
        rows = self.spool.claim(self.options.max_batch_size)
        if not rows:
            return False
        row_of: Dict[str, int] = {}
        events: List[WireEvent] = []
        finished: List[int] = []
        for row_id, encoded in rows:
            stored = self._redacted(stored_event(encoded))
            if stored is None:  # left out by your redact function: forgotten
                finished.append(row_id)
                continue
            event = fitted(stored, self.options.max_field_chars, self._budget)
            if event is None:  # cannot be cut to max_batch_bytes: rejected, as the server would
                self._reject_too_large()
                finished.append(row_id)
                continue
            row_of[event.task_id] = row_id
            events.append(event)
        try:
            for batch in batches(events, self.options.max_batch_size, self.options.max_batch_bytes):
                delivered, rejected = self._deliver(batch)
                self.sent["spool"] += len(delivered)
                # Rejected rows are forgotten too, as the library's replay does: sending them
                # again would be rejected again.
                finished += [row_of[e.task_id] for e in delivered + rejected if e.task_id in row_of]
                if self.error is not None:
                    break
        finally:
            self.spool.ack(finished)
            done = set(finished)
            self.spool.release([row_id for row_id, _ in rows if row_id not in done])
        return True

    def _store_batch(self, after: int) -> int:
        """Send the next batch of unpushed store rows after row ``after``; the last row id
        looked at, or 0 when there are none left."""
        rows = self.db.query(
            f"SELECT t.id, t.task_id, t.event FROM tasks t WHERE t.id > ? AND {_UNPUSHED} ORDER BY t.id LIMIT ?",
            (after, self.options.project_id, self.options.max_batch_size),
        )
        if not rows:
            return 0
        events = []
        left_out = []
        for row in rows:
            stored = self._redacted(stored_event(row[2].encode("utf-8")))
            if stored is None:  # left out by your redact function: never sent, recorded as done
                left_out.append((self.options.project_id, row[1], time.time()))
                continue
            event = fitted(stored, self.options.max_field_chars, self._budget)
            if event is None:
                self._reject_too_large()
            else:
                events.append(event)
        if left_out:
            with self.db.transaction() as conn:
                _store.insert_rows(conn, "INSERT OR IGNORE INTO pushed (destination, task_id, pushed_at) VALUES",
                                   left_out)
        for batch in batches(events, self.options.max_batch_size, self.options.max_batch_bytes):
            delivered, _ = self._deliver(batch)
            self.sent["store"] += len(delivered)
            # Rejected tasks are not recorded: the next push tries them again (a quota resets).
            with self.db.transaction() as conn:
                _store.insert_rows(conn, "INSERT OR IGNORE INTO pushed (destination, task_id, pushed_at) VALUES",
                                   [(self.options.project_id, event.task_id, time.time()) for event in delivered])
            if self.error is not None:
                break
        return int(rows[-1][0])

    def _redacted(self, event: WireEvent) -> Optional[WireEvent]:
        """With ``redact`` set (``PHOSPHO_REDACT``), a stored event as it would be logged now:
        masked, or None when your function leaves it out (counted in the summary). Events
        stored before redaction was turned on are sent masked too."""
        redaction = self._redaction
        if redaction is None:
            return event
        try:
            data = redaction(event.data())
        except RedactError as exc:
            self.left_out += 1
            self._redact_errors = str(exc)
            return None
        if data is None:
            self.left_out += 1
            return None
        return wire(data, dumps(data))

    def _send_feedback(self, item: Feedback) -> str:
        """Send one feedback: ``"sent"``, ``"waiting"`` (its task is unknown yet: kept for a
        later push), ``"rejected"``, or ``"failed"`` (sets ``error``). Transient failures
        are retried with the library's back-off, within ``max_attempts``."""
        if self._redaction is not None:
            item = item._replace(notes=mask_text(item.notes) if item.notes else item.notes,
                                 source=mask_text(item.source))
        for attempt in range(1, max(1, self.options.max_attempts) + 1):
            result = self.delivery.send_feedback(item)
            if result.ok:
                self.feedback["sent"] += 1
                return "sent"
            if result.kind == "not_found":
                if time.time() - item.created > FEEDBACK_MAX_AGE:
                    self.feedback["given_up"] += 1
                    return "given_up"
                self.feedback["waiting"] += 1
                return "waiting"
            if result.kind in ("invalid", "too_large"):
                self.feedback["rejected"] += 1
                return "rejected"
            if result.kind != "retry" or attempt >= self.options.max_attempts:
                self.error = Resolution("failed", [], "feedback", result.error, result)
                return "failed"
            with self.books.lock:
                self.books.retries += 1
            time.sleep(min(5.0, 0.1 * 2 ** attempt))  # a CLI's own thread: nothing else to do meanwhile
        return "failed"

    def _spool_feedback(self) -> bool:
        """This project's spooled feedback, one batch; False when none is left to try."""
        rows = self.spool.feedback.claim(self.options.max_batch_size)
        if not rows:
            return False
        done: List[int] = []
        again: List[int] = []
        try:
            for row_id, item, _tries in rows:
                outcome = self._send_feedback(item) if self.error is None else "failed"
                (done if outcome in ("sent", "rejected", "given_up") else again).append(row_id)
        finally:
            self.spool.feedback.ack(done)
            self.spool.feedback.release(again)
        return not again  # rows kept for later are not claimed again by this push

    def _store_feedback(self, after: int) -> int:
        """The local store's feedback not pushed to this project yet, one batch after row
        ``after``; the last row id looked at, or 0 when there is none left."""
        rows = self.db.query(
            "SELECT f.id, f.task_id, f.flag, f.notes, f.source, f.created_at FROM feedback f WHERE f.destination = '' "
            "AND f.id > ? AND NOT EXISTS (SELECT 1 FROM pushed p WHERE p.destination = ? "
            "AND p.task_id = 'feedback:' || f.id) ORDER BY f.id LIMIT ?",
            (after, self.options.project_id, self.options.max_batch_size),
        )
        if not rows:
            return 0
        pushed = []
        for row in rows:
            outcome = self._send_feedback(Feedback(row[1], row[2], row[3], row[4], row[5]))
            if outcome in ("sent", "rejected", "given_up"):  # not tried again by a later push
                pushed.append((self.options.project_id, f"feedback:{row[0]}", time.time()))
            if self.error is not None:
                break
        with self.db.transaction() as conn:
            _store.insert_rows(conn, "INSERT OR IGNORE INTO pushed (destination, task_id, pushed_at) VALUES", pushed)
        return int(rows[-1][0])

    def _reject_too_large(self) -> None:
        reason = "too large to send even when truncated"
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _deliver(self, events: List[WireEvent]) -> Tuple[List[WireEvent], List[WireEvent]]:
        """Send one batch with the library's delivery policy: (delivered, rejected) events.
        A failure that retrying could not fix sets ``error``."""
        delivered: List[WireEvent] = []
        rejected: List[WireEvent] = []
        for result in self.delivery.attempt(events):
            if result.kind == "sent":
                delivered += result.events
            elif result.kind == "rejected":
                rejected += result.events
                self.rejected[result.reason] = self.rejected.get(result.reason, 0) + len(result.events)
            elif self.error is None:
                self.error = result
        return delivered, rejected

    def summary(self) -> str:
        failed = max(0, self.total - self.done)
        lines = [
            f"pushed to {self.options.endpoint}",
            f"  sent      {sum(self.sent.values())}  ({self.sent['store']} from the local store, "
            f"{self.sent['spool']} from the spool)",
            f"  skipped   {self.skipped}  (already pushed to project {self.options.project_id})",
            f"  rejected  {sum(self.rejected.values())}" + ("  (store tasks are tried again on the next push)"
                                                          if self.rejected else ""),
        ]
        lines += [f"    {count} x {reason}" for reason, count in sorted(self.rejected.items())]
        lines.append(f"  failed    {failed}" + ("  (not delivered: run push again to resume)" if failed else ""))
        if self._redaction is not None:
            lines.append("  redacted  every task and feedback note was masked before sending (PHOSPHO_REDACT)"
                         + (f"; {self.left_out} left out by your redact function" if self.left_out else ""))
            if self._redact_errors:
                lines.append(f"    {self._redact_errors}")
        if self.retries:
            lines.append(f"  retries   {self.retries}")
        fb = self.feedback
        if any(fb.values()):
            line = f"  feedback  {fb['sent']} sent"
            if fb["waiting"]:
                line += f", {fb['waiting']} waiting for their task in phospho (a later push sends them)"
            if fb["rejected"]:
                line += f", {fb['rejected']} rejected"
            if fb["given_up"]:
                line += (f", {fb['given_up']} given up (their task was still unknown to phospho "
                         f"{FEEDBACK_MAX_AGE / 86400:g} days later)")
            lines.append(line)
        elif self.error is not None:
            try:
                left = self.count_feedback()
            except sqlite3.Error:
                left = 0
            if left:
                lines.append(f"  feedback  {left} not sent (sent after the tasks: run push again)")
        return "\n".join(lines) + "\n"


def _dry_run(options: Options, path: Path) -> int:
    pusher = Pusher(options, path)
    to_send, pushed, spooled = pusher.count()
    size = options.max_batch_size
    batches = -(-to_send // size) + -(-spooled // size)
    target = options.endpoint if options.online else "phospho (once PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID are set)"
    sys.stdout.write(
        f"dry run, nothing sent: would send {to_send + spooled} task(s) to {target} "
        f"in {batches} batch(es) of up to {size}\n"
        f"  {to_send} from the local store {path} ({pushed} already pushed, skipped)\n"
        f"  {spooled} from the spool" + (f" for project {options.project_id}\n" if options.project_id else "\n")
    )
    feedback = pusher.count_feedback()
    if feedback:
        sys.stdout.write(f"  and {feedback} feedback(s), after the tasks\n")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    """Send the local store's tasks and this project's spool to phospho, resumably."""
    options = options_from(args)
    path = options.store_path()
    require_store(path)
    if args.dry_run:
        return _dry_run(options, path)
    if not options.online:
        raise CLIError(no_credentials(path), EXIT_CONFIG)
    pusher = Pusher(options, path)
    stopped: Optional[CLIError] = None
    try:
        pusher.run(sys.stderr)
    except KeyboardInterrupt:  # what was acknowledged is recorded: the next push resumes
        stopped = CLIError("interrupted: run push again to send the rest", EXIT_INTERRUPTED)
    except sqlite3.Error as exc:
        stopped = CLIError(f"cannot update the local store {path}: {exc}")
    sys.stdout.write(pusher.summary())
    sys.stdout.flush()
    if stopped is not None:
        raise stopped
    if pusher.error is not None:
        failure = explain_failure(pusher.error, options)
        raise CLIError(f"{failure} (stopped; run push again to resume)", failure.code)
    return EXIT_OK


def explain_failure(failure: Resolution, options: Options) -> CLIError:
    """The one-line error and exit code for a batch push could not deliver."""
    if failure.result is not None:
        return explain(failure.result, options)
    return CLIError(failure.message or failure.reason, EXIT_UNREACHABLE)
