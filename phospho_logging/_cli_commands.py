"""``check``, the command that tests the credentials, and what the CLI's commands share
(settings, store access, one request to phospho); ``push`` is in ``_cli_push``.

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
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from . import _store
from ._config import DEFAULT_BASE_URL, Options, default_data_dir, env_name, resolve
from ._transport import (
    RETRYABLE_STATUSES,
    USER_AGENT,
    _detail,
    _rejections,
    encode_batch,
    make_session,
    parse_retry_after,
)
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
    started = time.monotonic()
    with make_session(options.endpoint) as session:
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
