"""The ``phospho-logging`` command (also ``python -m phospho_logging``).

``check`` shows the configuration and verifies the key and project; ``tail`` prints the
latest tasks of the local store and the spool; ``push`` sends them to phospho; ``stats``
counts them. Errors are one line on stderr with an exit code per kind of failure
(``_cli_commands``); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ._cli_commands import (
    CHECK_TIMEOUT,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    cmd_check,
    has_table,
    reading,
    require_store,
    store_path,
)
from ._cli_push import cmd_push
from ._config import default_data_dir, env_name
from ._version import __version__

__all__ = ["CLIError", "build_parser", "format_task", "main"]

#: How often ``tail -f`` looks for new rows.
POLL_SECONDS = 0.5
_FOLLOW_BATCH = 1000
SPOOL_TAG = "[spooled]"


def _one_line(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(text.split())


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _when(seconds: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds is not None else "?"


def format_task(event: Dict[str, Any], width: int, tag: Optional[str] = None) -> str:
    """One readable line: time, [tag column,] session, input -> output, cut to ``width``."""
    when = event.get("client_created_at")
    head = _when(when) if isinstance(when, int) else "?"
    if tag is not None:
        head += f"  {tag:<{len(SPOOL_TAG)}}"
    head += f"  {_cut(event.get('session_id') or '-', 20):<20}  "
    arrow = "  ->  "
    room = max(20, width - len(head) - len(arrow))
    question = _cut(_one_line(event.get("input", "")), max(10, room // 2))
    answer = event.get("output")
    answer_text = "(no output)" if answer is None else _one_line(answer)
    return head + question + arrow + _cut(answer_text, max(10, room - len(question)))


# -- tail -------------------------------------------------------------------------------


@dataclass
class _Row:
    source: str  # "store" or "spool"
    id: int
    arrived: float  # stored_at or spooled_at
    event: Dict[str, Any]
    project: Optional[str] = None

    def order(self) -> tuple[int, float, bool, int]:
        created = self.event.get("client_created_at")
        return (created if isinstance(created, int) else int(self.arrived), self.arrived, self.source == "spool",
                self.id)

    def as_json(self) -> Dict[str, Any]:
        extra: Dict[str, Any] = {"_source": self.source}
        if self.source == "spool":
            extra["_project"] = self.project
        return {**self.event, **extra}


def _parse(raw: Any) -> Dict[str, Any]:
    try:
        event = json.loads(raw)
    except (TypeError, ValueError):
        event = None
    return event if isinstance(event, dict) else {"input": "(unreadable row)", "output": None}


def _read(conn: sqlite3.Connection, session: Optional[str], limit: int, after: Dict[str, int],
          newest: bool) -> List[_Row]:
    """Store and spool rows after the ``after`` ids: the newest ``limit`` of each, or the
    oldest ``limit`` (following), in task-time order."""
    order = "DESC" if newest else "ASC"
    sql = "SELECT id, stored_at, event FROM tasks WHERE id > ?"
    params: List[Any] = [after["store"]]
    if session is not None:
        sql += " AND session_id = ?"
        params.append(session)
    rows = [_Row("store", i, at, _parse(ev))
            for i, at, ev in conn.execute(f"{sql} ORDER BY id {order} LIMIT ?", (*params, limit))]
    if has_table(conn, "outbox"):
        found = 0
        cursor = conn.execute(f"SELECT id, spooled_at, destination, event FROM outbox WHERE id > ? ORDER BY id {order}",
                              (after["spool"],))
        for i, at, project, raw in cursor:  # no session column there: filter the events
            if found >= limit:
                break
            event = _parse(raw)
            if session is None or event.get("session_id") == session:
                rows.append(_Row("spool", i, at, event, project))
                found += 1
        cursor.close()
    rows.sort(key=_Row.order)
    return rows[-limit:] if newest and limit else rows


def _last_ids(conn: sqlite3.Connection) -> Dict[str, int]:
    ids = {"store": int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM tasks").fetchone()[0]), "spool": 0}
    if has_table(conn, "outbox"):
        ids["spool"] = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0])
    return ids


def _print_rows(rows: List[_Row], args: argparse.Namespace, tagged: bool) -> None:
    width = shutil.get_terminal_size((100, 20)).columns
    for row in rows:
        if args.json:
            line = json.dumps(row.as_json(), ensure_ascii=False)
        else:
            line = format_task(row.event, width, (SPOOL_TAG if row.source == "spool" else "") if tagged else None)
        sys.stdout.write(line + "\n")
    sys.stdout.flush()  # a follower is often piped: each poll's rows go out at once


def cmd_tail(args: argparse.Namespace) -> int:
    """Print the latest tasks of the local store and the spool; ``-f`` keeps following."""
    path = store_path(args)
    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds

    def time_left() -> bool:
        return deadline is None or time.monotonic() < deadline

    def pause() -> None:
        time.sleep(POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))

    try:
        while args.follow and not path.exists() and time_left():
            pause()  # following a store that does not exist yet: wait for it
        if args.follow and not path.exists():
            return EXIT_OK
        with reading(path) as conn:
            after = _last_ids(conn)  # before reading, so no row slips between the two
            rows = _read(conn, args.session, args.n, {"store": 0, "spool": 0}, newest=True)
            shown = {(row.source, row.id) for row in rows}
            tagged = args.follow or any(row.source == "spool" for row in rows)
            if not rows and not args.follow and not args.json:
                for_session = f" for session {args.session!r}" if args.session is not None else ""
                sys.stdout.write(f"no tasks{for_session} in {path}\n")
            _print_rows(rows, args, tagged)
            while args.follow and time_left():
                pause()
                latest = _last_ids(conn)
                rows = _read(conn, args.session, _FOLLOW_BATCH, after, newest=False)
                for source in after:
                    ids = [row.id for row in rows if row.source == source]
                    # Fewer than a full batch: every row up to ``latest`` was looked at.
                    after[source] = max(ids) if len(ids) >= _FOLLOW_BATCH else max(after[source], latest[source], *ids)
                _print_rows([row for row in rows if (row.source, row.id) not in shown], args, tagged)
    except KeyboardInterrupt:
        if not args.follow:
            raise
    return EXIT_OK


# -- stats ------------------------------------------------------------------------------


def _collect(conn: sqlite3.Connection, path: Path) -> Dict[str, Any]:
    count, sessions, oldest, newest = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT session_id), MIN(created_at), MAX(created_at) FROM tasks").fetchone()
    info: Dict[str, Any] = {
        "path": str(path),
        "store": {"tasks": count, "sessions": sessions, "oldest": oldest, "newest": newest},
        "pushed": {},
        "spool": {},
    }
    if has_table(conn, "pushed"):
        info["pushed"] = dict(conn.execute(
            "SELECT destination, COUNT(*) FROM pushed WHERE task_id NOT LIKE 'feedback:%' GROUP BY destination"))
    info["feedback"] = {"store": 0, "store_pushed": {}, "spool": {}}
    if has_table(conn, "feedback"):
        for destination, n in conn.execute("SELECT destination, COUNT(*) FROM feedback GROUP BY destination"):
            if destination:
                info["feedback"]["spool"][destination] = n
            else:
                info["feedback"]["store"] = n
        if has_table(conn, "pushed"):
            info["feedback"]["store_pushed"] = dict(conn.execute(
                "SELECT destination, COUNT(*) FROM pushed WHERE task_id LIKE 'feedback:%' GROUP BY destination"))
    if has_table(conn, "outbox"):
        for project, tasks, leased, first, last in conn.execute(
            "SELECT destination, COUNT(*), SUM(lease_until >= ?), MIN(spooled_at), MAX(spooled_at) FROM outbox "
            "GROUP BY destination ORDER BY destination", (time.time(),)
        ):
            info["spool"][project] = {"tasks": tasks, "leased": leased, "oldest": int(first), "newest": int(last)}
    files = {p.name: p.stat().st_size for p in sorted(path.parent.glob(path.name + "*")) if p.is_file()}
    info["disk"] = {"files": files, "total": sum(files.values())}
    return info


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


def cmd_stats(args: argparse.Namespace) -> int:
    """Counts in the local store and the spool, task times and disk use."""
    path = store_path(args)
    require_store(path)
    with reading(path) as conn:
        info = _collect(conn, path)
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return EXIT_OK
    store = info["store"]
    out = [f"local store  {path}",
           f"  tasks      {store['tasks']} in {store['sessions']} session(s)"]
    if store["tasks"]:
        out.append(f"  times      {_when(store['oldest'])} to {_when(store['newest'])}")
    out += [f"  pushed     {n} to project {project}" for project, n in sorted(info["pushed"].items())]
    feedback = info["feedback"]
    if feedback["store"]:
        pushed = "".join(f", {n} pushed to project {project}"
                         for project, n in sorted(feedback["store_pushed"].items()))
        out.append(f"  feedback   {feedback['store']}{pushed}")
    if not info["spool"] and not feedback["spool"]:
        out.append("spool        empty")
    for project, spool in info["spool"].items():
        leased = f", {spool['leased']} being sent" if spool["leased"] else ""
        out.append(f"spool        {spool['tasks']} task(s) for project {project}{leased}, "
                   f"spooled {_when(spool['oldest'])} to {_when(spool['newest'])}")
    out += [f"spool        {n} feedback(s) for project {project}, sent once phospho has their tasks"
            for project, n in sorted(feedback["spool"].items())]
    files = ", ".join(f"{name} {_size(size)}" for name, size in info["disk"]["files"].items())
    out.append(f"disk         {_size(info['disk']['total'])} ({files})")
    sys.stdout.write("\n".join(out) + "\n")
    return EXIT_OK


# -- parser and entry point -------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, sub: bool) -> None:
    # On subcommands the defaults are SUPPRESS, so a value given before the command is kept.
    unset = argparse.SUPPRESS if sub else None
    group = parser.add_argument_group("common options (before or after the command)")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS if sub else False,
                       help="show tracebacks on errors")
    group.add_argument("--local-dir", metavar="DIR", default=unset,
                       help=f"the local store's directory (default ${env_name('local_dir')} or {default_data_dir()})")
    group.add_argument("--api-key", metavar="KEY", default=unset,
                       help="phospho API key (default $PHOSPHO_API_KEY, which is safer: arguments show in ps)")
    group.add_argument("--project-id", metavar="ID", default=unset, help="phospho project id ($PHOSPHO_PROJECT_ID)")
    group.add_argument("--base-url", metavar="URL", default=unset,
                       help="API root (default $PHOSPHO_BASE_URL or https://api.phospho.ai)")


def count(text: str) -> int:
    """A whole number, 0 or more (argparse names it in its error)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def seconds(text: str) -> float:
    """A number of seconds above 0 (argparse names it in its error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``phospho-logging``."""
    parser = argparse.ArgumentParser(
        prog="phospho-logging",
        description="Check the phospho configuration, look at the tasks kept locally, and push them to phospho.",
        epilog="exit codes: 0 ok, 1 error, 2 configuration (a key without a project, bad option), 3 API key "
               "rejected, 4 unknown project, 5 unreachable or timeout, 6 TLS error, 7 other HTTP status, 8 the local "
               "directory cannot be written, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"phospho-logging {__version__}")
    _common(parser, sub=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check", help="show the configuration and verify the key and project", description=(
        "Print the resolved configuration (key masked) and where tasks go, then POST an empty batch to verify "
        "the key and project; offline (no credentials), that the local store can be written. Exit 0 ok, 2 a key "
        "without a project (or the reverse), 3 key rejected, 4 unknown project, 5 unreachable, 6 TLS error, "
        "7 other HTTP status, 8 the local directory cannot be written."))
    check.add_argument("--timeout", type=seconds, default=CHECK_TIMEOUT, metavar="SECONDS",
                       help=f"how long to wait for phospho (default {CHECK_TIMEOUT:g})")
    check.set_defaults(func=cmd_check)

    tail = sub.add_parser("tail", help="print the latest tasks of the local store and the spool", description=(
        "Print the latest tasks of the local store and of the spool (marked [spooled]), in task-time order."))
    tail.add_argument("-n", type=count, default=10, metavar="N", help="how many tasks (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new tasks until Ctrl-C")
    tail.add_argument("--json", action="store_true",
                      help='one wire-format event per line, plus "_source": "store" or "spool" '
                           '(and "_project" for spooled ones)')
    tail.add_argument("--session", metavar="ID", help="only tasks of this session")
    tail.add_argument("--max-seconds", type=float, default=None, help=argparse.SUPPRESS)  # bounds -f in tests
    tail.set_defaults(func=cmd_tail)

    push = sub.add_parser("push", help="send the local store and the spool to phospho (resumable)", description=(
        "Send this project's spooled tasks and the local store's tasks to phospho in batches (max_batch_size), "
        "keeping task ids. Tasks pushed are remembered per project in the store's file, so running push again "
        "sends only the rest; spooled tasks are removed once accepted."))
    push.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")
    push.set_defaults(func=cmd_push)

    stats = sub.add_parser("stats", help="counts in the local store and the spool, and disk use", description=(
        "Count the tasks in the local store (sessions, oldest and newest) and in the spool (per project), "
        "the tasks pushed per project, and the size of the SQLite files (-wal and -shm included)."))
    stats.add_argument("--json", action="store_true", help="the numbers as one JSON object")
    stats.set_defaults(func=cmd_stats)

    for command in (check, tail, push, stats):
        _common(command, sub=True)
    return parser


def _say(message: str) -> None:
    sys.stderr.write(f"phospho-logging: {' '.join(message.split())}\n")
    sys.stderr.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (2) end here
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except CLIError as exc:
        if args.debug and exc.__cause__ is not None:
            traceback.print_exception(type(exc.__cause__), exc.__cause__, exc.__cause__.__traceback__)
        _say(str(exc))
        return exc.code
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): silence the flush at exit, and succeed.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - one readable line unless --debug
        if args.debug:
            raise
        _say(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
