"""The local store: tasks kept in SQLite when there are no credentials.

One file per directory, WAL mode so several processes can write at once, created readable
by its owner only. Rows hold the event exactly as it would go over the wire, so a later
``phospho-logging push`` can send them unchanged (the server skips known task ids).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ._transport import Exporter, Outcome

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    session_id TEXT,
    created_at INTEGER,
    stored_at REAL NOT NULL,
    event TEXT NOT NULL
)
"""


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open (and if needed create, owner-only) the store at ``path``."""
    if create:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Create the file ourselves so its mode is 0600 from the first byte; SQLite gives
        # its -wal and -shm files the same mode.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    elif not path.exists():
        raise FileNotFoundError(str(path))
    conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    if create:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(_SCHEMA)
    return conn


class LocalStoreExporter(Exporter):
    """Appends batches to the local store; a task id already stored is skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.destination = f"local store {path}"
        self._conn: Optional[sqlite3.Connection] = None

    def __repr__(self) -> str:
        return f"LocalStoreExporter({str(self.path)!r})"

    def export(
        self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes], timeout: float
    ) -> Outcome:
        now = time.time()
        rows = [
            (e["task_id"], e.get("session_id"), e.get("client_created_at"), now, b.decode("utf-8"))
            for e, b in zip(events, encoded)
        ]
        try:
            if self._conn is None:
                self._conn = connect(self.path)
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT OR IGNORE INTO tasks (task_id, session_id, created_at, stored_at, event) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
        except (sqlite3.Error, OSError) as exc:
            self.close()
            return Outcome(False, retry=True, error=f"cannot write the local store {self.path}: {exc}")
        return Outcome(True)

    def reset_after_fork(self) -> None:
        self._conn = None  # SQLite connections must not cross a fork

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None


def latest(path: Path, limit: int = 10, session_id: Optional[str] = None) -> List[Dict[str, Any]]:
    """The ``limit`` most recent tasks of the store, oldest first."""
    conn = connect(path, create=False)
    try:
        query = "SELECT event FROM tasks"
        params: List[Any] = []
        if session_id is not None:
            query += " WHERE session_id = ?"
            params.append(session_id)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        rows = conn.execute(query, params).fetchall()
    finally:
        conn.close()
    return [json.loads(row[0]) for row in reversed(rows)]
