"""The ``phospho-logging`` command (also ``python -m phospho_logging``)."""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from . import _store
from ._config import Options, default_data_dir, env_name
from ._version import __version__


class CLIError(Exception):
    """A problem explained in one line to the user (exit code 1)."""


def _store_path(args: argparse.Namespace) -> Path:
    import os

    local_dir = args.local_dir or os.environ.get(env_name("local_dir")) or str(default_data_dir())
    return Options(local_dir=local_dir).store_path()


def _one_line(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(text.split())


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def format_task(event: Dict[str, Any], width: int) -> str:
    """One readable line: time, session, input -> output, cut to ``width``."""
    when = event.get("client_created_at")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, int) else "?"
    session = event.get("session_id") or "-"
    head = f"{stamp}  {_cut(session, 20):<20}  "
    arrow = "  ->  "
    room = max(20, width - len(head) - len(arrow))
    question = _cut(_one_line(event.get("input", "")), max(10, room // 2))
    answer = event.get("output")
    answer_text = "(no output)" if answer is None else _one_line(answer)
    return head + question + arrow + _cut(answer_text, max(10, room - len(question)))


def cmd_tail(args: argparse.Namespace) -> int:
    path = _store_path(args)
    if not path.exists():
        raise CLIError(f"no local store at {path} yet: log a task first (see examples/quickstart.py)")
    try:
        events = _store.latest(path, args.n, args.session)
    except sqlite3.Error as exc:
        raise CLIError(f"cannot read the local store {path}: {exc}") from None
    if args.json:
        for event in events:
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        return 0
    if not events:
        sys.stdout.write(f"no tasks in {path}\n")
        return 0
    width = shutil.get_terminal_size((100, 20)).columns
    for event in events:
        sys.stdout.write(format_task(event, width) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phospho-logging", description="Look at the tasks phospho-logging stored locally."
    )
    parser.add_argument("--version", action="version", version=f"phospho-logging {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    tail = sub.add_parser("tail", help="print the latest tasks of the local store")
    tail.add_argument("-n", type=int, default=10, metavar="N", help="how many tasks (default 10)")
    tail.add_argument("--json", action="store_true", help="one JSON event per line, as sent on the wire")
    tail.add_argument("--session", metavar="ID", help="only tasks of this session")
    tail.add_argument(
        "--local-dir", help=f"the store's directory (default ${env_name('local_dir')} or {default_data_dir()})"
    )
    tail.set_defaults(func=cmd_tail)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except CLIError as exc:
        sys.stderr.write(f"phospho-logging: {exc}\n")
        return 1
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - one readable line unless --debug
        if args.debug:
            raise
        sys.stderr.write(f"phospho-logging: {type(exc).__name__}: {exc} (run with --debug for details)\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
