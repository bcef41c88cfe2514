"""Internal diagnostics: one non-propagating logger, rate-limited per kind of problem.

The library must never log through a handler of its own (that is how log shippers end up
shipping their own HTTP traffic), so this logger does not propagate. With no handler
attached, Python's last-resort handler prints its warnings to stderr; attach a handler to
``logging.getLogger("phospho_logging")`` to route them elsewhere.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Optional

logger = logging.getLogger("phospho_logging")
logger.propagate = False

_lock = threading.RLock()  # reentrant: a signal handler may report while we hold it
_last: dict[str, float] = {}
_suppressed: dict[str, int] = {}

#: Seconds during which a repeated problem of the same kind is counted, not printed.
REPEAT_INTERVAL = 60.0

#: With redaction on (any pipeline's ``redact``), a function that masks the text of every
#: message: an exception's text (a redact function's ``KeyError('jane@...')``) or a
#: server's echo may hold what the tasks had masked.
masker: Optional[Callable[[str], str]] = None


def quiet(key: str) -> None:
    """``key``'s problem was already explained (by a notice of its own): its ``warn_once``
    reports are counted silently for the rest of the run."""
    with _lock:
        _last[key] = math.inf


def warn_once(key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    """Report a problem, at most once per ``REPEAT_INTERVAL`` for the same ``key``.

    Repeats in between are counted and the count is added to the next message.
    """
    now = time.monotonic()
    with _lock:
        last = _last.get(key)
        if last is not None and now - last < REPEAT_INTERVAL:
            _suppressed[key] = _suppressed.get(key, 0) + 1
            return
        _last[key] = now
        repeats = _suppressed.pop(key, 0)
    if repeats:
        message += " (%d similar messages suppressed)"
        args = (*args, repeats)
    try:
        mask = masker
        if mask is not None:
            text = message % args if args else message
            message, args = mask(text).replace("%", "%%"), ()
        logger.log(level, "phospho-logging: " + message, *args)
    except Exception:  # noqa: BLE001 - a diagnostics failure must never reach the app
        pass


def reset() -> None:
    """Forget what was reported (tests use this to see a message again), and the masker."""
    global masker
    with _lock:
        _last.clear()
        _suppressed.clear()
    masker = None


def reset_after_fork() -> None:
    """A forked child gets a fresh lock (the parent's may have been held at fork time)."""
    global _lock
    _lock = threading.RLock()  # reentrant: a signal handler may report while we hold it
