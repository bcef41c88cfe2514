"""The spool: a durable outbox for tasks that could not be delivered yet.

It lives in the same SQLite file as the local store (``tasks.sqlite3`` in ``local_dir`` or
the per-user data directory), in a table of its own keyed by destination, so tasks for
one project are never replayed to another. Rows hold the event exactly as it goes over
the wire, task id included: a replay the server has already seen is skipped there, which
makes replays idempotent.

Several processes may spool and replay at once: a replaying worker leases the rows it
claims, so two processes do not send the same rows at the same time. A file that is not
a database (or is damaged) is moved aside with one warning and a new one is started.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from . import _diag
from ._store import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    task_id TEXT NOT NULL,
    spooled_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    event BLOB NOT NULL,
    UNIQUE (destination, task_id)
)
"""

#: Seconds a claimed row stays invisible to other replayers.
LEASE = 60.0


class Spool:
    """The outbox of one destination. Each thread gets its own connection."""

    def __init__(self, path: Path, destination: str, max_tasks: int) -> None:
        self.path = path
        self.destination = destination
        self.max_tasks = max_tasks
        self._local = threading.local()
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, {self.destination!r})"

    # -- connections ------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # a forked child never uses its parent's connections
            self._local = threading.local()
            self._pid = os.getpid()
        conn: Optional[sqlite3.Connection] = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            conn = connect(self.path)
            conn.execute(_SCHEMA)
            conn.execute("CREATE INDEX IF NOT EXISTS outbox_order ON outbox (destination, id)")
            return conn
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            self._move_aside(exc)
            conn = connect(self.path)
            conn.execute(_SCHEMA)
            return conn

    def _move_aside(self, exc: Exception) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                try:
                    os.replace(src, Path(str(target) + suffix))
                except OSError:
                    pass
        _diag.warn_once(
            "spool_corrupt",
            "the local store %s could not be read (%s); it was moved aside to %s and a new one started",
            self.path,
            exc,
            target,
        )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
            self._local.conn = None

    # -- operations -------------------------------------------------------------------

    def put(self, task_ids: Sequence[str], encoded: Sequence[bytes], leased: bool = False) -> Tuple[int, int]:
        """Store events; returns (stored, evicted). Past ``max_tasks`` the oldest rows of
        this destination are dropped (the caller counts them). ``leased`` rows (a batch
        about to be sent, with ``durable=True``) are not replayed by others meanwhile."""
        now = time.time()
        lease = now + LEASE if leased else 0.0
        rows = [(self.destination, tid, now, lease, enc) for tid, enc in zip(task_ids, encoded)]
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (destination, task_id, spooled_at, lease_until, event) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            stored = conn.total_changes - before
            (count,) = conn.execute("SELECT COUNT(*) FROM outbox WHERE destination = ?", (self.destination,)).fetchone()
            evicted = 0
            if count > self.max_tasks:
                evicted = count - self.max_tasks
                conn.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE destination = ? ORDER BY id LIMIT ?)",
                    (self.destination, evicted),
                )
        return stored, evicted

    def claim(self, limit: int) -> List[Tuple[int, bytes]]:
        """Lease the oldest ``limit`` rows nobody else holds: [(row id, event bytes)]."""
        now = time.time()
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                "SELECT id, event FROM outbox WHERE destination = ? AND lease_until < ? ORDER BY id LIMIT ?",
                (self.destination, now, limit),
            ).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE outbox SET lease_until = ? WHERE id = ?", [(now + LEASE, row[0]) for row in rows]
                )
        return [(row[0], bytes(row[1])) for row in rows]

    def ack(self, row_ids: Sequence[int]) -> None:
        """Forget rows that were delivered (or finally rejected)."""
        if not row_ids:
            return
        conn = self._conn()
        with conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in row_ids])

    def remove(self, task_ids: Sequence[str]) -> None:
        """Forget the rows of these task ids (a durable batch that was delivered)."""
        conn = self._conn()
        with conn:
            conn.executemany(
                "DELETE FROM outbox WHERE destination = ? AND task_id = ?", [(self.destination, t) for t in task_ids]
            )

    def unlease(self, task_ids: Sequence[str]) -> None:
        """Make rows of these task ids replayable at once."""
        conn = self._conn()
        with conn:
            conn.executemany(
                "UPDATE outbox SET lease_until = 0 WHERE destination = ? AND task_id = ?",
                [(self.destination, t) for t in task_ids],
            )

    def release(self, row_ids: Sequence[int]) -> None:
        """Give leased rows back, for a later attempt."""
        if not row_ids:
            return
        conn = self._conn()
        with conn:
            conn.executemany("UPDATE outbox SET lease_until = 0 WHERE id = ?", [(i,) for i in row_ids])

    def count(self) -> int:
        """Rows waiting for this destination."""
        (count,) = self._conn().execute(
            "SELECT COUNT(*) FROM outbox WHERE destination = ?", (self.destination,)
        ).fetchone()
        return int(count)
