"""The spool: a durable outbox for tasks that could not be delivered yet.

It lives in the same SQLite file as the local store (``tasks.sqlite3`` in ``local_dir`` or
the per-user data directory), in a table of its own keyed by project id (the
``destination`` column), so tasks for one project are never replayed to another, and a
changed ``base_url`` still gets them. Rows hold the event exactly as it goes over
the wire, task id included: a replay the server has already seen is skipped there, which
makes replays idempotent.

Several processes may spool and replay at once: a replaying worker leases the rows it
claims, so two processes do not send the same rows at the same time. A file that is not
a database (or is damaged) is moved aside with one warning and a new one is started
(``_store.Database``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ._feedback import Feedback
from ._store import Database, FeedbackTable, insert_rows, where_in

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    task_id TEXT NOT NULL,
    spooled_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    owner INTEGER NOT NULL DEFAULT 0,
    event BLOB NOT NULL,
    UNIQUE (destination, task_id)
)
"""

#: Seconds a claimed row stays invisible to other replayers.
LEASE = 60.0


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    if "owner" not in columns:  # a spool written by an earlier version
        conn.execute("ALTER TABLE outbox ADD COLUMN owner INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_order ON outbox (destination, id)")


class Spool:
    """The outbox of one project (``destination``), in the store's SQLite file."""

    def __init__(self, path: Path, destination: str, max_tasks: int) -> None:
        self.path = path
        self.destination = destination
        self.max_tasks = max_tasks
        self._db = Database(path, _setup)

        #: Feedback waiting for its task (or for phospho), this project's.
        self.feedback = FeedbackTable(self._db, destination)

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, {self.destination!r})"

    def put_feedback(self, items: Sequence[Feedback], wait: Optional[float] = None) -> int:
        """Keep feedback for a later try."""
        return self.feedback.put(items, wait)

    def _transaction(self, wait: Optional[float]) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.transaction(wait)

    def close(self) -> None:
        self._db.close()

    # -- operations -------------------------------------------------------------------

    def put(self, task_ids: Sequence[str], encoded: Sequence[bytes], leased: bool = False,
            wait: Optional[float] = None) -> Tuple[int, int]:
        """Store events; returns (stored, evicted). Past ``max_tasks`` the oldest rows of
        this destination are dropped (the caller counts them). ``leased`` rows (a batch
        about to be sent, with ``durable=True``) are not replayed by others meanwhile."""
        now = time.time()
        lease = now + LEASE if leased else 0.0
        pid = os.getpid()
        rows = [(self.destination, tid, now, lease, pid, enc) for tid, enc in zip(task_ids, encoded)]

        def put_rows(conn: sqlite3.Connection) -> Tuple[int, int]:
            stored = insert_rows(
                conn,
                "INSERT OR IGNORE INTO outbox (destination, task_id, spooled_at, lease_until, owner, event) VALUES",
                rows,
            )
            (count,) = conn.execute("SELECT COUNT(*) FROM outbox WHERE destination = ?", (self.destination,)).fetchone()
            evicted = 0
            if count > self.max_tasks:
                evicted = count - self.max_tasks
                conn.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE destination = ? ORDER BY id LIMIT ?)",
                    (self.destination, evicted),
                )
            return stored, evicted

        return self._db.write(put_rows, wait)  # type: ignore[no-any-return]

    def claim(self, limit: int, wait: Optional[float] = None) -> List[Tuple[int, bytes]]:
        """Lease the oldest ``limit`` rows nobody else holds: [(row id, event bytes)]."""
        now = time.time()
        with self._transaction(wait) as conn:
            rows = conn.execute(
                "SELECT id, event FROM outbox WHERE destination = ? AND lease_until < ? ORDER BY id LIMIT ?",
                (self.destination, now, limit),
            ).fetchall()
            if rows:
                where_in(conn, "UPDATE outbox SET lease_until = ?, owner = ? WHERE id IN ({})",
                         [row[0] for row in rows], (now + LEASE, os.getpid()))
        return [(row[0], bytes(row[1])) for row in rows]

    def ack(self, row_ids: Sequence[int], wait: Optional[float] = None) -> None:
        """Forget rows that were delivered (or finally rejected)."""
        if row_ids:
            with self._transaction(wait) as conn:
                where_in(conn, "DELETE FROM outbox WHERE id IN ({})", row_ids)

    def remove(self, task_ids: Sequence[str], wait: Optional[float] = None) -> None:
        """Forget the rows of these task ids (a durable batch that was delivered)."""
        with self._transaction(wait) as conn:
            where_in(conn, "DELETE FROM outbox WHERE destination = ? AND task_id IN ({})", task_ids,
                     (self.destination,))

    def unlease(self, task_ids: Sequence[str], wait: Optional[float] = None) -> None:
        """Make rows of these task ids replayable at once."""
        with self._transaction(wait) as conn:
            where_in(conn, "UPDATE outbox SET lease_until = 0 WHERE destination = ? AND task_id IN ({})", task_ids,
                     (self.destination,))

    def release(self, row_ids: Sequence[int], wait: Optional[float] = None) -> None:
        """Give leased rows back, for a later attempt."""
        if row_ids:
            with self._transaction(wait) as conn:
                where_in(conn, "UPDATE outbox SET lease_until = 0 WHERE id IN ({})", row_ids)

    def reclaim_dead(self, wait: Optional[float] = None) -> int:
        """Release leases held by processes that no longer exist (killed mid-send, say),
        so their rows are replayed now rather than when the lease runs out."""
        owners = [row[0] for row in self._db.query(
            "SELECT DISTINCT owner FROM outbox WHERE destination = ? AND lease_until >= ? AND owner != ?",
            (self.destination, time.time(), os.getpid()), wait,
        )]
        dead = [pid for pid in owners if not _alive(pid)]
        if dead:
            with self._transaction(wait) as conn:
                where_in(conn, "UPDATE outbox SET lease_until = 0 WHERE destination = ? AND owner IN ({})", dead,
                         (self.destination,))
        return len(dead)

    def count(self, wait: Optional[float] = None) -> int:
        """Rows waiting for this destination."""
        rows = self._db.query("SELECT COUNT(*) FROM outbox WHERE destination = ?", (self.destination,), wait)
        return int(rows[0][0])


def _alive(pid: int) -> bool:
    """True if a process with this id exists (on this machine, where the spool is)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell: keep its lease)
    return True
