"""``check``, the command that tests the credentials, and what the CLI's commands share
(settings, store access, what an answer from phospho means); ``push`` is in ``_cli_push``.
Both send through the library's own ``HTTPExporter``.

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
from pathlib import Path
from typing import Iterator, Optional, Tuple

from . import _store
from ._config import DEFAULT_BASE_URL, Options, default_data_dir, env_name, resolve
from ._export import ExportResult
from ._http import HTTPExporter
from ._version import __version__

EXIT_OK = 0
EXIT_ERROR = 1  # anything else: no local store, unreadable file...
EXIT_CONFIG = 2  # no or incomplete credentials, a bad option value, plain http to a remote host
EXIT_KEY = 3  # 401/403: phospho rejected the API key
EXIT_PROJECT = 4  # 404: unknown project
EXIT_UNREACHABLE = 5  # connection refused, DNS, timeout
EXIT_TLS = 6  # certificate or TLS handshake problem
EXIT_HTTP = 7  # any other HTTP status
EXIT_STORE = 8  # the local directory (the store, the spool) cannot be written
EXIT_INTERRUPTED = 130

#: check sends one request and waits this long at most (push uses the ``timeout`` option).
CHECK_TIMEOUT = 5.0


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


def unwritable_store(path: Path) -> CLIError:
    """The error for a local store that cannot be written (its directory, or the file
    itself: a link, not a regular file, held by another process), or an empty CLIError
    (code ``EXIT_OK``) when it can. Makes the directory and the store, as the app would."""
    why = _store.unwritable(path.parent)
    if why is None:
        try:
            conn = _store.connect(path, wait=1.0)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                _store.close_connection(conn)
        except (sqlite3.Error, OSError) as exc:
            why = str(exc)
    if why is None:
        return CLIError("", EXIT_OK)
    return CLIError(f"the local store {path} cannot be written ({why}): tasks the app keeps there (offline, or "
                    "the spool when phospho cannot be reached) are lost; set PHOSPHO_LOCAL_DIR (or --local-dir) "
                    "to a writable directory", EXIT_STORE)


def require_store(path: Path) -> None:
    if not path.exists():
        why = _store.cannot_create_in(path.parent)
        if why is not None:
            raise CLIError(f"no local store at {path}, and the app cannot make one ({why}); set PHOSPHO_LOCAL_DIR "
                           "to a writable directory", EXIT_STORE)
        raise CLIError(f"no local store at {path} yet: log a task first (`phospho-logging check` shows where "
                       "tasks go)")


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


# -- what an answer means ---------------------------------------------------------------


def explain(result: ExportResult, options: Options) -> CLIError:
    """The one-line error and exit code for a failed request to phospho."""
    if result.kind == "auth":
        hint = "check PHOSPHO_API_KEY (or --api-key)"
        if result.status == 403:
            hint += f" and that project {options.project_id} belongs to the key's organisation"
        return CLIError(f"{result.error}: {hint}", EXIT_KEY)
    if result.kind == "not_found":
        detail = result.error.replace("unknown project: ", "", 1)
        return CLIError(f"unknown project {options.project_id!r} ({detail}); check PHOSPHO_PROJECT_ID "
                        "(or --project-id) and base_url", EXIT_PROJECT)
    if result.cause == "tls":
        return CLIError(f"{result.error}; check that base_url really serves https and that the CA certificates "
                        "are installed (or REQUESTS_CA_BUNDLE)", EXIT_TLS)
    if result.cause in ("timeout", "dns", "refused"):
        return CLIError(result.error, EXIT_UNREACHABLE)  # the message says what to check
    if result.cause is not None:
        return CLIError(f"{result.error}; check base_url and the network", EXIT_UNREACHABLE)
    return CLIError(result.error or f"HTTP {result.status}", EXIT_HTTP)


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
    store_error = unwritable_store(path)
    if not options.online:
        out(f"  tasks go to  the local store {path} (offline)\n")
        sys.stdout.flush()
        if store_error.code:
            raise store_error
        out("offline: the local store can be written, so tasks are kept there (`phospho-logging tail` shows "
            "them); set PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID to send them to phospho\n")
        return EXIT_OK
    out(f"  tasks go to  {options.endpoint}\n")
    if store_error.code:  # said first: the spool is what keeps tasks when phospho cannot be reached
        out(f"  spool        {path} (cannot be written)\n")
        sys.stdout.flush()
        raise store_error
    waiting = spool_count(path, options.project_id)
    out(f"  spool        {path} ({waiting} task(s) waiting for this project)\n")
    out("checking the key and project with an empty batch... ")
    sys.stdout.flush()
    started = time.monotonic()
    assert options.api_key is not None
    exporter = HTTPExporter(options.endpoint, options.api_key)
    try:
        result = exporter.export([], min(options.timeout, args.timeout))
    finally:
        exporter.close()
    if not result.ok:
        out("failed\n")
        sys.stdout.flush()
        raise explain(result, options)
    out(f"ok (HTTP 200 in {time.monotonic() - started:.2f} s)\n")
    if waiting:
        out(f"{waiting} task(s) wait in the spool: `phospho-logging push` sends them now "
            "(your app also sends them on its next start)\n")
    return EXIT_OK
