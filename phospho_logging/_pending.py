"""A task in transit: what the caller's thread puts on the queue and the worker reads.

``Pending`` is the full snapshot (``_snapshot``); ``Short`` the hot paths' smaller form,
which the worker expands; task ids are made here too, since both sides make them.
"""

from __future__ import annotations

import os
import random
import time
from operator import itemgetter
from typing import Any, Dict, List, Optional, Tuple, Union

from ._serialize import JSON

#: Where the task was logged: logger, level, message, file, line, function, traceback.
LogInfo = Tuple[Optional[str], Optional[str], JSON, Optional[str], Optional[int], Optional[str], Optional[str]]


class Pending(tuple):  # type: ignore[type-arg]
    """A task as snapshotted on the caller's thread, waiting for ``build_event``.

    A tuple, because one is made inside every task-carrying logging call and a tuple is
    the cheapest object Python builds; the properties name its slots.
    """

    __slots__ = ()

    #: marshal bytes of the raw fields, or a JSON-safe dict (see ``freeze``)
    fields: Union[bytes, Dict[str, JSON]] = property(itemgetter(0))  # type: ignore[assignment]
    input_text: Optional[str] = property(itemgetter(1))  # type: ignore[assignment]
    output_text: Optional[str] = property(itemgetter(2))  # type: ignore[assignment]
    #: type names of the original input/output; None: read them off the thawed fields
    input_type: Optional[str] = property(itemgetter(3))  # type: ignore[assignment]
    output_type: Optional[str] = property(itemgetter(4))  # type: ignore[assignment]
    problems: List[str] = property(itemgetter(5))  # type: ignore[assignment]
    created: float = property(itemgetter(6))  # type: ignore[assignment]
    log: LogInfo = property(itemgetter(slice(7, 14)))  # type: ignore[assignment]
    #: True for a structlog event dict: its fields are in the caller's order and still hold
    #: ``event``/``logger``/``level``; a record's are listed last-first.
    from_event_dict: bool = property(itemgetter(14))  # type: ignore[assignment]
    #: a task id chosen on the caller's thread (the structlog processor returns it)
    task_id: Optional[str] = property(itemgetter(15))  # type: ignore[assignment]


_tuple_new = tuple.__new__
_time = time.time
_NO_LOG = (None, None, None, None, None, None, None)


def make_pending(
    fields: Union[bytes, Dict[str, JSON]],
    input_text: Optional[str],
    output_text: Optional[str],
    input_type: Optional[str],
    output_type: Optional[str],
    problems: List[str],
    created: float,
    log: LogInfo = _NO_LOG,
    from_event_dict: bool = False,
    task_id: Optional[str] = None,
) -> Pending:
    """A ``Pending`` from its parts (the hot paths build the tuple inline instead)."""
    return _tuple_new(  # type: ignore[no-any-return]
        Pending,
        (fields, input_text, output_text, input_type, output_type, problems, created, *log, from_event_dict, task_id),
    )


#: What the hot paths put on the queue: a plain tuple, a third of a ``Pending``'s size and
#: cost; the worker expands it (``expand``). A record's: (fields, created, logger, level,
#: message, file, line, function); an event dict's: (fields, created, method, task id).
Short = Tuple[Any, ...]
SHORT_LENGTHS = (4, 8)


def expand(item: Short) -> Pending:
    """The ``Pending`` a ``Short`` tuple stands for (on the worker's thread)."""
    if len(item) == 4:
        frozen, created, method_name, task_id = item
        return _tuple_new(  # type: ignore[no-any-return]
            Pending,
            (frozen, None, None, None, None, [], created, None, method_name, None, None, None, None, None, True,
             task_id),
        )
    frozen, created, name, level, msg, path, line, function = item
    return _tuple_new(  # type: ignore[no-any-return]
        Pending,
        (frozen, None, None, None, None, [], created, name, level, msg, path, line, function, None, False, None),
    )


# Task ids are random, drawn from a private generator: uuid4() costs a system call per id,
# and the module-level `random` may be seeded by the app (two runs would then reuse ids,
# and the server skips ids it knows). Reseeded in a forked child, for the same reason.
_id_random = random.Random()
_getrandbits = _id_random.getrandbits
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_id_random.seed)


def new_task_id() -> str:
    """A task id in the phospho SDK's format: ``task_`` and 32 random hex digits."""
    return "task_" + _getrandbits(128).to_bytes(16, "big").hex()
