"""The local store: tasks kept in SQLite when there are no credentials.

One file per directory, WAL mode so several processes can write at once, created readable
by its owner only. Rows hold the event exactly as it would go over the wire, so a later
``phospho-logging push`` can send them unchanged (the server skips known task ids).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set

from . import _diag
from ._export import ExportResult, WireEvent
from ._feedback import Feedback

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

#: Feedback on tasks (``phospho_logging.feedback``): in the local store (``destination``
#: ``""``, until ``push`` sends it) and in the spool (``destination``: the project id).
_FEEDBACK_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    task_id TEXT NOT NULL,
    flag TEXT NOT NULL,
    notes TEXT,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    stored_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    owner INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0
)
"""


#: Every use of SQLite by this package, in any thread, holds this lock: a fork waits for
#: it, so no connection is in use when ``before_fork`` closes them all.
_lock = threading.RLock()
#: Bumped at each fork: connections of an older generation were closed and must reopen.
_generation = 0
_open_connections: Set[sqlite3.Connection] = set()
#: How long a fork waits for a connection in use to be free.
FORK_WAIT = 1.0
_held_for_fork = False


def close_connection(conn: sqlite3.Connection) -> None:
    """Close a connection this process opened."""
    _open_connections.discard(conn)
    try:
        conn.close()
    except sqlite3.Error:
        pass


def before_fork() -> None:
    """Close every connection before ``os.fork`` (called by ``_lifecycle``).

    SQLite forbids carrying a connection across fork(): its locks and shared-memory
    bookkeeping are per process, and even a new connection in the child would share the
    parent's. So every connection is closed first (waiting for one in use); both sides
    reopen on next use.
    """
    global _generation, _held_for_fork
    # Waiting for a connection in use is bounded: a fork must not wait behind another
    # process's lock. Without the lock, the child still opens connections of its own.
    _held_for_fork = _lock.acquire(timeout=FORK_WAIT)
    if _held_for_fork:
        for conn in list(_open_connections):
            close_connection(conn)
    _generation += 1


def after_fork_in_parent() -> None:
    """Let the parent use SQLite again."""
    if _held_for_fork:
        _lock.release()


def after_fork_in_child() -> None:
    """A lock of the child's own (the parent's is held)."""
    global _lock
    _lock = threading.RLock()


class StoreReplaced(sqlite3.OperationalError):
    """The store was found damaged during an operation and moved aside: the operation may
    be run again at once, on a new store."""


def is_damaged(exc: BaseException) -> bool:
    """True for SQLite's "not a database" and "malformed" errors, which it raises as a bare
    ``DatabaseError``. A locked, read-only or full store is an ``OperationalError``; a value
    SQLite cannot bind, a ``ProgrammingError``; a broken constraint, an ``IntegrityError``:
    none of them means the file is damaged (moving it aside would hide its tasks)."""
    return type(exc) is sqlite3.DatabaseError


def move_aside(path: Path, exc: Exception) -> None:
    """Rename a damaged store (and its -wal/-shm files) out of the way, saying so once."""
    global _generation
    for conn in list(_open_connections):
        close_connection(conn)  # any connection may be to the damaged file
    _generation += 1  # every thread reopens
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(path) + suffix)
        if source.exists():
            try:
                os.replace(source, Path(str(target) + suffix))
            except OSError:
                pass
    _diag.warn_once(
        "store_corrupt",
        "the local store %s could not be read (%s); it was moved aside to %s and a new one started",
        path,
        exc,
        target,
    )


#: How long SQLite waits for a lock another connection holds, unless told less.
BUSY_TIMEOUT = 10.0


class StoreRefused(OSError):
    """The store's path is a symbolic link (or its -wal/-shm file is): never followed."""


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each 0700 whatever the umask (those
    that exist are left as they are)."""
    missing: List[Path] = []
    current = directory
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue  # made meanwhile by another process: theirs
        os.chmod(folder, 0o700)  # the umask may have taken bits away


def unwritable(directory: Path) -> Optional[str]:
    """Why the store cannot be created in ``directory`` (made if missing, 0700), or None
    when a file can be created there."""
    try:
        make_private_dir(directory)
        probe = directory / f".phospho-logging-probe-{os.getpid()}-{threading.get_ident()}"
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def cannot_create_in(directory: Path) -> Optional[str]:
    """Why a file could not be created in ``directory`` (missing parts would be made), or
    None; tried with a file made and removed in the nearest existing part, creating no
    directory (for commands that only read)."""
    existing = directory
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    try:
        probe = existing / f".phospho-logging-probe-{os.getpid()}-{threading.get_ident()}"
        os.close(os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
        os.unlink(probe)
    except OSError as exc:
        return f"{existing}: {exc.strerror or exc}"
    return None


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def refusal(path: Path) -> Optional[str]:
    """Why ``connect`` would refuse the store at ``path`` as it stands (a link, another
    kind of file, hard links), or None; looks without opening it."""
    try:
        _refuse_links(path)
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return str(exc)
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    if info.st_nlink != 1:
        return f"{path} has other names (hard links)"
    return None


def _refuse_links(path: Path) -> None:
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if os.path.islink(candidate):
            raise StoreRefused(f"{candidate} is a symbolic link; phospho-logging does not follow links for its "
                               "local files (another program's database could be written). Remove the link, or "
                               "set PHOSPHO_LOCAL_DIR to another directory")


def connect(path: Path, *, create: bool = True, wait: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """Open (and if needed create, owner-only) the store at ``path``, waiting at most
    ``wait`` seconds for another connection's lock. A symbolic link at the store's path
    (or its -wal/-shm), a file with other names (hard links) or something else than a
    regular file is refused (``StoreRefused``), never written."""
    _refuse_links(path)
    if create:
        make_private_dir(path.parent)
        # Create the file ourselves so its mode is 0600 from the first byte, whatever the
        # umask; SQLite gives its -wal and -shm files the same mode.
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | _NOFOLLOW)
        else:
            os.fchmod(fd, 0o600)
    elif not path.exists():
        raise FileNotFoundError(str(path))
    else:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        mine = os.fstat(fd)
        if not stat.S_ISREG(mine.st_mode):
            raise StoreRefused(f"{path} is not a regular file; set PHOSPHO_LOCAL_DIR to another directory")
        if mine.st_nlink != 1:
            raise StoreRefused(f"{path} has other names (hard links): another program's file could be written; "
                               "remove them, or set PHOSPHO_LOCAL_DIR to another directory")
        conn = sqlite3.connect(str(path), timeout=wait, isolation_level=None, check_same_thread=False)
        _open_connections.add(conn)
        try:
            now = os.lstat(path)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            # Replaced between our check and SQLite's open (SQLite follows links): this
            # narrows the window; a process that can already write into the user's own
            # directory is not a boundary (it could write the file itself).
            close_connection(conn)
            raise StoreRefused(f"{path} was replaced while it was being opened; it is not written")
    finally:
        os.close(fd)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_ms(wait)}")
        if create:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
            conn.execute(_FEEDBACK_SCHEMA)
    except BaseException:
        close_connection(conn)
        raise
    return conn


#: Bound parameters per statement: SQLite before 3.32 allows 999.
MAX_PARAMS = 990


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> int:
    """Run ``head`` (``INSERT ... (a, b) VALUES``) for all ``rows`` in as few statements as
    the parameter limit allows, and return how many rows were inserted.

    One statement per row (``executemany``) would release the interpreter lock once per
    row; with a busy thread in the application, each release can cost a whole switch
    interval, and a batch then takes a second instead of a millisecond.
    """
    if not rows:
        return 0
    width = len(rows[0])
    per = max(1, MAX_PARAMS // width)
    group = "(" + ", ".join("?" * width) + ")"
    before = conn.total_changes
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        conn.execute(f"{head} {', '.join([group] * len(chunk))}", [value for row in chunk for value in row])
    return conn.total_changes - before


def where_in(conn: sqlite3.Connection, statement: str, values: Sequence[Any], params: Sequence[Any] = ()) -> None:
    """Run ``statement`` (with ``{}`` where the ``IN`` list goes, and ``params`` before it)
    for ``values`` in as few statements as the parameter limit allows."""
    per = MAX_PARAMS - len(params)
    for start in range(0, len(values), per):
        chunk = list(values[start:start + per])
        conn.execute(statement.format(", ".join("?" * len(chunk))), [*params, *chunk])


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


class Database:
    """Connections to one SQLite file: one per thread, opened on first use and again after
    a fork, every use under the package's SQLite lock.

    Each operation takes ``wait``: the most it may wait for the lock, this process's or
    another's (None: ``BUSY_TIMEOUT``); a lock still held then raises
    ``sqlite3.OperationalError``, which callers count like any storage error.
    """

    def __init__(self, path: Path, setup: Optional[Callable[[sqlite3.Connection], None]] = None) -> None:
        self.path = path
        self._setup = setup
        self._local = threading.local()

    def _conn(self, wait: float) -> sqlite3.Connection:
        slot = getattr(self._local, "slot", None)
        if slot is None or slot[1] != _generation:
            try:
                conn = self._open(wait)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):
                    raise  # locked, read-only, disk full...: the caller counts it
                move_aside(self.path, exc)  # not a database, or damaged: start a new one
                conn = self._open(wait)
            slot = self._local.slot = (conn, _generation)
        conn = slot[0]
        conn.execute(f"PRAGMA busy_timeout = {_ms(wait)}")
        return conn  # type: ignore[no-any-return]

    def _open(self, wait: float) -> sqlite3.Connection:
        conn = connect(self.path, wait=wait)
        try:
            if self._setup is not None:
                self._setup(conn)
        except BaseException:
            close_connection(conn)
            raise
        return conn

    @contextlib.contextmanager
    def transaction(self, wait: Optional[float] = None) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE), committed on success. A store SQLite
        finds damaged meanwhile is moved aside (``StoreReplaced``: run it again)."""
        with _locked(wait) as left:
            conn = self._conn(left)
            try:
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    yield conn
            except sqlite3.DatabaseError as exc:
                self._damaged(exc)
                raise

    def query(self, sql: str, params: Sequence[Any] = (), wait: Optional[float] = None) -> List[Any]:
        """Rows of a read (``StoreReplaced`` as for ``transaction``)."""
        with _locked(wait) as left:
            try:
                return self._conn(left).execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                self._damaged(exc)
                raise

    def _damaged(self, exc: sqlite3.DatabaseError) -> None:
        """Move the store aside if ``exc`` says it is damaged (raising ``StoreReplaced``)."""
        if is_damaged(exc):
            move_aside(self.path, exc)
            raise StoreReplaced(f"the local store {self.path} was damaged ({exc}); it was moved aside") from exc

    def write(self, body: Callable[[sqlite3.Connection], Any], wait: Optional[float] = None) -> Any:
        """``body`` in a transaction; run once more on a new store if the store was found
        damaged (and moved aside) meanwhile."""
        for attempt in (0, 1):
            try:
                with self.transaction(wait) as conn:
                    return body(conn)
            except StoreReplaced:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close this thread's connection (soon, or not at all if another thread holds the
        store long: closing must not wait behind it)."""
        if not _lock.acquire(timeout=0.1):
            return
        try:
            slot = getattr(self._local, "slot", None)
            if slot is not None:
                if slot[1] == _generation:
                    close_connection(slot[0])
                self._local.slot = None
        finally:
            _lock.release()


@contextlib.contextmanager
def _locked(wait: Optional[float]) -> Iterator[float]:
    """The package's SQLite lock, waited for at most ``wait`` seconds; yields the time left
    for SQLite's own waits."""
    if wait is None:
        with _lock:
            yield BUSY_TIMEOUT
        return
    started = time.monotonic()
    if not _lock.acquire(timeout=max(0.0, wait)):
        raise sqlite3.OperationalError("the local store is busy (another thread of this process is using it, or "
                                       "waiting for another process to release it)")
    try:
        yield max(0.0, wait - (time.monotonic() - started))
    finally:
        _lock.release()


class FeedbackTable:
    """The feedback rows of one destination (``""``: the local store's, not pushed yet; a
    project id: that project's spool). Rows are leased while being sent, as the spool's."""

    LEASE = 60.0

    def __init__(self, db: Database, destination: str) -> None:
        self._db = db
        self.destination = destination

    def put(self, items: Sequence[Feedback], wait: Optional[float] = None) -> int:
        now = time.time()
        rows = [(self.destination, f.task_id, f.flag, f.notes, f.source, f.created, now) for f in items]
        return self._db.write(lambda conn: insert_rows(  # type: ignore[no-any-return]
            conn, "INSERT INTO feedback (destination, task_id, flag, notes, source, created_at, stored_at) VALUES",
            rows), wait)

    def claim(self, limit: int, wait: Optional[float] = None) -> List[Any]:
        """Lease the oldest ``limit`` rows nobody holds: [(row id, Feedback, tries)]."""
        now = time.time()
        with self._db.transaction(wait) as conn:
            rows = conn.execute(
                "SELECT id, task_id, flag, notes, source, created_at, tries FROM feedback "
                "WHERE destination = ? AND lease_until < ? ORDER BY id LIMIT ?", (self.destination, now, limit),
            ).fetchall()
            if rows:
                where_in(conn, "UPDATE feedback SET lease_until = ?, owner = ? WHERE id IN ({})",
                         [row[0] for row in rows], (now + self.LEASE, os.getpid()))
        return [(row[0], Feedback(row[1], row[2], row[3], row[4], row[5]), row[6]) for row in rows]

    def ack(self, row_ids: Sequence[int], wait: Optional[float] = None) -> None:
        """Forget rows delivered (or finally rejected, or given up on)."""
        if row_ids:
            with self._db.transaction(wait) as conn:
                where_in(conn, "DELETE FROM feedback WHERE id IN ({})", row_ids)

    def release(self, row_ids: Sequence[int], wait: Optional[float] = None) -> None:
        """Give leased rows back after a try that failed (their ``tries`` grows)."""
        if row_ids:
            with self._db.transaction(wait) as conn:
                where_in(conn, "UPDATE feedback SET lease_until = 0, tries = tries + 1 WHERE id IN ({})", row_ids)

    def count(self, wait: Optional[float] = None) -> int:
        rows = self._db.query("SELECT COUNT(*) FROM feedback WHERE destination = ?", (self.destination,), wait)
        return int(rows[0][0])


class LocalStoreExporter:
    """An exporter that appends batches to the local store; a task id already stored is skipped."""

    #: Writes to local storage: at the shutdown deadline the engine writes to it anyway.
    local = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.destination = f"local store {path}"
        self._db = Database(path)

    def __repr__(self) -> str:
        return f"LocalStoreExporter({str(self.path)!r})"

    def export(self, events: Sequence[WireEvent], timeout: float) -> ExportResult:
        """Store the batch in one transaction."""
        now = time.time()
        rows = [(e.task_id, e.session_id, e.created, now, e.json.decode("utf-8")) for e in events]
        try:
            self._db.write(lambda conn: insert_rows(
                conn, "INSERT OR IGNORE INTO tasks (task_id, session_id, created_at, stored_at, event) VALUES", rows,
            ), wait=min(timeout, BUSY_TIMEOUT))
        except (sqlite3.Error, OSError) as exc:
            self.close()
            return ExportResult.retry(f"cannot write the local store {self.path}: {exc}", cause="storage")
        return ExportResult.delivered()

    def export_feedback(self, feedback: Feedback, timeout: float) -> ExportResult:
        """Keep one feedback in the store (``push`` sends it after the tasks). A feedback on
        a task the store does not hold is kept too (the task may be in phospho already),
        and said once: ``push`` sends it only once phospho has that task."""
        try:
            known = self._db.query("SELECT 1 FROM tasks WHERE task_id = ?", (feedback.task_id,),
                                   wait=min(timeout, BUSY_TIMEOUT))
            FeedbackTable(self._db, "").put([feedback], wait=min(timeout, BUSY_TIMEOUT))
        except (sqlite3.Error, OSError) as exc:
            self.close()
            return ExportResult.retry(f"cannot write the local store {self.path}: {exc}", cause="storage")
        if not known:
            _diag.warn_once("feedback_unknown_task", "a feedback names task %s, which is not in the local store %s "
                            "(a typo?); it is kept, and `phospho-logging push` sends it only once phospho has that "
                            "task", feedback.task_id, self.path)
        return ExportResult.delivered()

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.close()


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
        close_connection(conn)
    return [json.loads(row[0]) for row in reversed(rows)]
