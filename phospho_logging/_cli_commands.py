"""The commands that talk to phospho, ``check`` and ``push``, and what the CLI shares.

Every failure becomes a ``CLIError``: one line for the user and an exit code that says
which kind of failure it was, so scripts can tell a bad key from a network problem.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, TextIO, Tuple
from urllib.parse import urlsplit

from . import _store
from ._config import DEFAULT_BASE_URL, Options, default_data_dir, env_name, resolve
from ._spool import Spool
from ._transport import RETRYABLE_STATUSES, USER_AGENT, _detail, _rejections, encode_batch, parse_retry_after
from ._version import __version__

EXIT_OK = 0
EXIT_ERROR = 1  # anything else: no local store, unreadable file...
EXIT_CONFIG = 2  # no or incomplete credentials, a bad option value, plain http to a remote host
EXIT_KEY = 3  # 401/403: phospho rejected the API key
EXIT_PROJECT = 4  # 404: unknown project
EXIT_UNREACHABLE = 5  # connection refused, DNS, timeout
EXIT_TLS = 6  # certificate or TLS handshake problem
EXIT_HTTP = 7  # any other HTTP status
EXIT_INTERRUPTED = 130

#: check sends one request and waits this long at most (push uses the ``timeout`` option).
CHECK_TIMEOUT = 5.0
BACKOFF_FIRST = 0.25
BACKOFF_CAP = 8.0
RETRY_AFTER_CAP = 30.0


class CLIError(Exception):
    """A problem explained to the user in one line, with the exit code to end with."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- configuration ----------------------------------------------------------------------

_SETTINGS = ("api_key", "project_id", "base_url", "local_dir")


def setting(args: argparse.Namespace, name: str) -> Tuple[Optional[str], str]:
    """A setting's raw value and where it came from (``--flag``, ``$VAR`` or ``default``)."""
    value = getattr(args, name, None)
    if value:
        return value, "--" + name.replace("_", "-")
    value = os.environ.get(env_name(name))
    if value:
        return value, "$" + env_name(name)
    return None, "default"


def options_from(args: argparse.Namespace) -> Options:
    """Resolve the options as the library does: flags first, then ``PHOSPHO_*`` variables."""
    explicit = {name: getattr(args, name) for name in _SETTINGS if getattr(args, name, None)}
    try:
        return resolve(explicit)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc).removeprefix("phospho_logging: "), EXIT_CONFIG) from None


def store_path(args: argparse.Namespace) -> Path:
    """The SQLite file of the local store and the spool (no credentials needed)."""
    local_dir, _ = setting(args, "local_dir")
    return Options(local_dir=local_dir).store_path()


def mask_key(key: Optional[str]) -> str:
    """The last 4 characters of a key, or nothing of a short one: never the key itself."""
    if not key:
        return "(not set)"
    if len(key) < 12:
        return f"(hidden, {len(key)} characters)"
    return "…" + key[-4:]


def no_credentials(path: Path) -> str:
    return (
        "no API key and project id: set PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID (or pass --api-key and "
        f"--project-id); without them phospho_logging works offline and keeps tasks in the local store {path}"
    )


def require_store(path: Path) -> None:
    if not path.exists():
        raise CLIError(f"no local store at {path} yet: log a task first (see examples/quickstart.py)")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to an existing store file, closed afterwards; errors become one line."""
    require_store(path)
    try:
        conn = _store.connect(path, create=False)
    except (sqlite3.Error, OSError) as exc:
        raise CLIError(f"cannot open the local store {path}: {exc}") from exc
    try:
        yield conn
    except sqlite3.Error as exc:
        raise CLIError(f"cannot read the local store {path}: {exc}") from exc
    finally:
        _store.close_connection(conn)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


# -- one request ------------------------------------------------------------------------


@dataclass
class Reply:
    """What one POST came to: ``code`` is ``EXIT_OK`` when the batch was accepted."""

    code: int
    message: str = ""
    status: Optional[int] = None
    rejected: Dict[int, str] = field(default_factory=dict)
    retry: bool = False
    retry_after: Optional[float] = None


def _reason(exc: BaseException) -> str:
    """The useful end of a requests exception ("[Errno 111] Connection refused")."""
    import re

    text = str(exc)
    found = re.findall(r"\[(?:Errno -?\d+|SSL: [A-Z_]+|SSL)\][^'\"()]*", text)
    return found[-1].strip() if found else type(exc).__name__


def post(session: Any, options: Options, encoded: List[bytes], timeout: float) -> Reply:
    """POST one batch and classify the answer (never raises for network problems)."""
    import requests

    url = options.endpoint
    host = urlsplit(url).netloc
    headers = {
        "Authorization": f"Bearer {options.api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    try:
        response = session.post(url, data=encode_batch(encoded), headers=headers,
                                timeout=(min(timeout, 5.0), timeout), allow_redirects=False)
    except requests.exceptions.SSLError as exc:
        return Reply(EXIT_TLS, f"TLS error talking to {host}: {_reason(exc)}; check that base_url really serves "
                               "https and that the CA certificates are installed (or REQUESTS_CA_BUNDLE)")
    except requests.Timeout:
        return Reply(EXIT_UNREACHABLE, f"no answer from {host} within {timeout:g} s", retry=True)
    except requests.RequestException as exc:
        return Reply(EXIT_UNREACHABLE, f"cannot reach {host}: {_reason(exc)}; check base_url and the network",
                     retry=True)
    status = response.status_code
    detail = _detail(response.content)
    if status == 200:
        return Reply(EXIT_OK, status=status, rejected=_rejections(response.content, len(encoded)))
    if status in (401, 403):
        hint = "check PHOSPHO_API_KEY (or --api-key)"
        if status == 403:
            hint += f" and that project {options.project_id} belongs to the key's organisation"
        return Reply(EXIT_KEY, f"phospho rejected the API key (HTTP {status}{detail}): {hint}", status)
    if status == 404:
        return Reply(EXIT_PROJECT, f"unknown project {options.project_id!r}: {url} answered 404{detail}; "
                                   "check PHOSPHO_PROJECT_ID (or --project-id) and base_url", status)
    if 300 <= status < 400:
        where = response.headers.get("Location", "elsewhere")
        return Reply(EXIT_HTTP, f"{url} redirects (HTTP {status}) to {where}: set base_url to the API root", status)
    return Reply(EXIT_HTTP, f"{url} answered HTTP {status}{detail}", status, retry=status in RETRYABLE_STATUSES,
                 retry_after=parse_retry_after(response.headers.get("Retry-After"), RETRY_AFTER_CAP))


def spool_count(path: Path, project_id: Optional[str]) -> int:
    """Tasks waiting in the spool for this project (0 without a store or a project)."""
    if not project_id or not path.exists():
        return 0
    with reading(path) as conn:
        if not has_table(conn, "outbox"):
            return 0
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE destination = ?", (project_id,)).fetchone()[0])


# -- check ------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Show the configuration, then verify the key and project with an empty batch."""
    out = sys.stdout.write
    out(f"phospho-logging {__version__} (python {platform.python_version()})\n")
    key, key_from = setting(args, "api_key")
    shown = {
        "api key": (mask_key(key), key_from),
        "project id": setting(args, "project_id"),
        "base url": setting(args, "base_url"),
        "local dir": setting(args, "local_dir"),
    }
    defaults = {"project id": "(not set)", "base url": DEFAULT_BASE_URL, "local dir": str(default_data_dir())}
    for label, (value, source) in shown.items():
        out(f"  {label:<13}{value or defaults[label]}  ({source})\n")
    path = store_path(args)
    options = options_from(args)
    if not options.online:
        out(f"  tasks go to  the local store {path} (offline)\n")
        sys.stdout.flush()
        raise CLIError(no_credentials(path), EXIT_CONFIG)
    out(f"  tasks go to  {options.endpoint}\n")
    waiting = spool_count(path, options.project_id)
    out(f"  spool        {path} ({waiting} task(s) waiting for this project)\n")
    out("checking the key and project with an empty batch... ")
    sys.stdout.flush()
    import requests

    started = time.monotonic()
    with requests.Session() as session:
        reply = post(session, options, [], min(options.timeout, args.timeout))
    if reply.code != EXIT_OK:
        out("failed\n")
        sys.stdout.flush()
        raise CLIError(reply.message, reply.code)
    out(f"ok (HTTP 200 in {time.monotonic() - started:.2f} s)\n")
    if waiting:
        out(f"{waiting} task(s) wait in the spool: `phospho-logging push` sends them now "
            "(your app also sends them on its next start)\n")
    return EXIT_OK


# -- push -------------------------------------------------------------------------------

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
        import requests

        to_send, self.skipped, spooled = self.count()
        self.total = to_send + spooled
        progress = Progress(progress_stream, self.total)
        self._session = requests.Session()
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
