"""``push``: send the spool's and the local store's tasks to phospho, resumably.

Batches of ``max_batch_size``, progress on stderr, a ``pushed`` table in the store so an
interrupted push resumes where it stopped and a repeated one sends nothing twice.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, TextIO, Tuple

from . import _store
from ._cli_commands import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    Reply,
    has_table,
    no_credentials,
    options_from,
    post,
    reading,
    require_store,
)
from ._config import Options
from ._spool import Spool
from ._transport import make_session

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


class _Item(NamedTuple):
    key: int  # the row id in its table
    encoded: bytes


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
        self.skipped = 0
        self.retries = 0
        self.total = 0
        self.rejected: Dict[str, int] = {}
        self.error: Optional[Reply] = None
        self._session: Any = None

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

    def run(self, progress_stream: TextIO) -> None:
        to_send, self.skipped, spooled = self.count()
        self.total = to_send + spooled
        progress = Progress(progress_stream, self.total)
        self._session = make_session(self.options.endpoint)
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
        finally:
            progress.close()
            self._session.close()
            self.spool.close()
            self.db.close()

    @property
    def done(self) -> int:
        return sum(self.sent.values()) + sum(self.rejected.values())

    def _spool_batch(self) -> bool:
        rows = self.spool.claim(self.options.max_batch_size)
        if not rows:
            return False
        finished: List[int] = []
        try:
            for chunk in self._chunks([_Item(row_id, encoded) for row_id, encoded in rows]):
                delivered, rejected = self._deliver(chunk)
                self.sent["spool"] += len(delivered)
                # Rejected rows are forgotten too, as the library's replay does: sending them
                # again would be rejected again.
                finished += [item.key for item in delivered + rejected]
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
        task_ids = {row[0]: row[1] for row in rows}
        chunks = self._chunks([_Item(row[0], row[2].encode("utf-8")) for row in rows])
        for chunk in chunks:
            delivered, _ = self._deliver(chunk)
            self.sent["store"] += len(delivered)
            # Rejected tasks are not recorded: the next push tries them again (a quota resets).
            with self.db.transaction() as conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO pushed (destination, task_id, pushed_at) VALUES (?, ?, ?)",
                    [(self.options.project_id, task_ids[item.key], time.time()) for item in delivered],
                )
            if self.error is not None:
                break
        return int(rows[-1][0])

    def _chunks(self, items: List[_Item]) -> List[List[_Item]]:
        """Cut a batch so that each request stays within ``max_batch_bytes``."""
        chunks: List[List[_Item]] = [[]]
        size = 0
        for item in items:
            if chunks[-1] and size + len(item.encoded) + 1 > self.options.max_batch_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += len(item.encoded) + 1
        return [chunk for chunk in chunks if chunk]

    def _deliver(self, items: List[_Item]) -> Tuple[List[_Item], List[_Item]]:
        """Send one batch, retrying transient failures and halving on 413/422:
        (delivered, rejected) items. A failure that retrying cannot fix sets ``error``."""
        attempt = 0
        while True:
            reply = post(self._session, self.options, [item.encoded for item in items], self.options.timeout)
            if reply.code == EXIT_OK:
                for reason in reply.rejected.values():
                    self.rejected[reason] = self.rejected.get(reason, 0) + 1
                delivered = [item for i, item in enumerate(items) if i not in reply.rejected]
                return delivered, [items[i] for i in reply.rejected]
            if reply.status in (413, 422):
                if len(items) > 1:
                    half = len(items) // 2
                    first = self._deliver(items[:half])
                    if self.error is not None:
                        return first
                    second = self._deliver(items[half:])
                    return first[0] + second[0], first[1] + second[1]
                reason = "too large for the server (HTTP 413)" if reply.status == 413 else reply.message
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
                return [], items
            attempt += 1
            if not reply.retry or attempt >= self.options.max_attempts:
                self.error = reply
                return [], []
            self.retries += 1
            delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (attempt - 1))
            time.sleep(max(delay, reply.retry_after or 0.0))

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
        if self.retries:
            lines.append(f"  retries   {self.retries}")
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
        raise CLIError(f"{pusher.error.message} (stopped; run push again to resume)", pusher.error.code)
    return EXIT_OK
