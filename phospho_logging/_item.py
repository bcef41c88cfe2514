"""What crosses the queue: a task as the caller's thread snapshotted it.

``Snapshot`` is the one item type, read by name everywhere. The two commonest calls put
a compact form on the queue instead: a plain record is a flat list (its
call-site number, line, time, input, output and metadata copy) when its fields allow, or
one bytes object (that list marshalled, for a backlog; or its fields, time, line and
call-site number marshalled; a tuple of the same parts when its call site has no
number), a plain structlog event a short tuple. Those forms are built here
(``plain_record``, ``plain_event_dict``) and read here (``snapshot_of``, ``record_form``)
and by the worker's plain encoder (``_event.PlainEncoder``), which writes the flat and
bytes forms' events directly. A record a queue handler copies for other handlers carries
its snapshot as an attribute (``carry``).

Task ids are made here too: the caller's side makes them (the structlog processor hands
one back) as well as the worker's.
"""

from __future__ import annotations

import itertools
import logging
import marshal
import os
import random
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from ._serialize import JSON

#: Attributes every LogRecord has, read off a real one so new ones (3.12's ``taskName``)
#: are never mistaken for user extras (and on older Pythons, an extra of that name is
#: the user's); plus those that formatters add later.
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
#: The attributes ``LogRecord.__init__`` sets. Extras come after them in a record's
#: ``__dict__``, so a scan for extras can walk it backwards and stop at the first of these.
INIT_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
#: Record attributes that are never task fields.
IGNORED = STANDARD_ATTRS | {"input_to_str", "output_to_str"}
#: The attribute of a record copy that carries its snapshot.
SNAPSHOT_ATTR = "_phospho_logging_snapshot"


class LogInfo(NamedTuple):
    """Where a task was logged; None where unknown."""

    logger: Optional[str] = None
    level: Optional[str] = None
    message: JSON = None
    file: Optional[str] = None
    line: Optional[int] = None
    function: Optional[str] = None
    exception: Optional[str] = None


NO_LOG = LogInfo()


class Snapshot(NamedTuple):
    """A task copied out of a record or event dict at the logging call.

    Attributes:
        fields: the raw task fields: ``marshal`` bytes (builtin types only, copied in one
            C call), or a JSON-safe dict.
        input_text, output_text: text from a custom ``input_to_str``/``output_to_str``.
        input_type, output_type: type names of the original input/output (None: read
            them off the fields).
        problems: what had to be adjusted, as tags.
        created: when it was logged (Unix seconds).
        log: logger, level, message, source location, traceback.
        from_event_dict: a structlog event dict: its fields are in the caller's order and
            still hold ``event``/``logger``/``level``; a record's are listed last-first.
        task_id: an id chosen on the caller's thread, if any.
    """

    fields: Union[bytes, Dict[str, JSON]]
    input_text: Optional[str]
    output_text: Optional[str]
    input_type: Optional[str]
    output_type: Optional[str]
    problems: List[str]
    created: float
    log: LogInfo
    from_event_dict: bool
    task_id: Optional[str]


def make_snapshot(
    fields: Union[bytes, Dict[str, JSON]],
    *,
    input_text: Optional[str] = None,
    output_text: Optional[str] = None,
    input_type: Optional[str] = None,
    output_type: Optional[str] = None,
    problems: Optional[List[str]] = None,
    created: Optional[float] = None,
    log: LogInfo = NO_LOG,
    from_event_dict: bool = False,
    task_id: Optional[str] = None,
) -> Snapshot:
    """A ``Snapshot`` by name, with a problems list of its own and ``created`` now by default."""
    return Snapshot(
        fields, input_text, output_text, input_type, output_type, [] if problems is None else problems,
        time.time() if created is None else created, log, from_event_dict, task_id,
    )


_tuple_new = tuple.__new__
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
_marshal_dumps = marshal.dumps
_marshal_loads = marshal.loads
_time = time.time


def plain_record(record: logging.LogRecord, compact: bool = False) -> Union[bytes, List[Any], Tuple[Any, ...], None]:
    """The compact item for the commonest record, or None if it needs ``_snapshot``.

    The commonest record: a ``str`` message without %-arguments or traceback, string
    extras without per-record text functions, builtin types only (the caller checks there
    is no bound context and no text function of its own). The hot path of the handlers,
    kept short on purpose.

    From a numbered call site, when the fields are only a ``str`` input, a ``str`` output
    (or none) and a metadata dict of ``str`` keys and immutable scalars, the item is flat:
    a list (call-site number, line, created, input, output, metadata copy), read by the
    worker without unmarshalling. Strings cannot change, and a shallow copy of such a dict
    is as good as ``marshal``'s. With ``compact`` (the queue is a backlog), that list
    marshalled, any metadata (``marshal`` copies it deeply): one object. Any other fields,
    or a hand-made record's line or time of another type: marshalled with the site number.
    """
    fields: Dict[str, Any] = {}
    try:
        for key, value in reversed(record.__dict__.items()):
            if key in IGNORED:
                if key in INIT_ATTRS:
                    break
                if key == "input_to_str" or key == "output_to_str":
                    return None
                continue
            if key[0] != "_":
                fields[key] = value
            elif key == SNAPSHOT_ATTR:
                return None  # a queue handler's copy: the snapshot it carries is the task
    except (TypeError, IndexError):
        return None  # extra={1: ...} or {"": ...}: the general path names the key
    msg = record.msg
    if "input" not in fields or record.args or record.exc_info or type(msg) is not str:
        return None
    try:
        name, level, path, function = record.name, record.levelname, record.pathname, record.funcName
        # A logging call passes the same objects each time: its site is found by identity.
        last = _last_site.get(msg)
        if last is not None and last[0] is name and last[1] is level and last[2] is path and last[3] is function:
            site = last[4]
        # Exact types before the lookup by value: an object equal to a site's text is not that text.
        elif type(name) is str and type(level) is str and type(path) is str and (
                function is None or type(function) is str):
            site = _site_number(name, level, msg, path, function)
        else:
            site = None
        if site is not None:
            # The flat item when the fields allow (inline: the hot path), else marshalled.
            text_in, line, created = fields["input"], record.lineno, record.created
            if type(text_in) is str and type(line) is int and type(created) is float and len(fields) <= 3:
                text_out, metadata = fields.get("output"), fields.get("metadata")
                if (text_out is None or type(text_out) is str) and (
                        len(fields) == 1 + ("output" in fields) + ("metadata" in fields)):
                    if compact:
                        return _marshal_dumps([site, line, created, text_in, text_out, metadata])
                    if metadata is None:
                        return [site, line, created, text_in, text_out, None]
                    if type(metadata) is dict:
                        metadata = metadata.copy()  # first: another thread may change the caller's dict
                        for key, value in metadata.items():
                            if type(value) not in _IMMUTABLE or type(key) is not str:
                                break
                        else:
                            return [site, line, created, text_in, text_out, metadata]
            return _marshal_dumps((fields, record.created, record.lineno, site))
        frozen = _marshal_dumps(fields)
    except Exception:  # noqa: BLE001 - foreign types: the general path makes them JSON-safe
        return None
    return (frozen, record.created, name, level, msg, path, record.lineno, function)


def _flat_parts(item: List[Any]) -> Tuple[Dict[str, Any], float, int, int]:
    """A flat item's (fields, created, line, call site number), the bytes form's parts."""
    site, line, created, text_in, text_out, metadata = item
    fields = {"input": text_in}
    if text_out is not None:
        fields["output"] = text_out
    if metadata is not None:
        fields["metadata"] = metadata
    return fields, created, line, site


# Call sites. A queued task is a flat list or one bytes object when its call site (logger
# name, level name, message, path, function) has a number here: its names are kept once,
# not per task. Ids are drawn from a counter and the two dicts
# are written in single steps, so any thread or signal handler may add one without a
# lock (a race gives one site two ids, harmless). Capped, as the table keeps its
# messages: past MAX_SITES sites (messages that vary per call), or for a message longer
# than MAX_SITE_MESSAGE, a site's tasks take the tuple form.
MAX_SITES = 4096
MAX_SITE_MESSAGE = 256
_site_ids: Dict[Tuple[Any, ...], int] = {}
_sites: Dict[int, Tuple[Any, ...]] = {}
_site_numbers = itertools.count()
#: message -> (name, level, path, function, number) of the last site seen with it.
_last_site: Dict[str, Tuple[Any, ...]] = {}


def _site_number(name: str, level: str, msg: str, path: str, function: Optional[str]) -> Optional[int]:
    """The number of a call site whose parts are ``str`` (the function may be None),
    numbered now if new; None past the caps. Remembered by message for the lookup by
    identity (the last site seen with that message)."""
    key = (name, level, msg, path, function)
    site = _site_ids.get(key)
    if site is None:
        if len(_sites) >= MAX_SITES or len(msg) > MAX_SITE_MESSAGE:
            return None
        site = next(_site_numbers)
        _sites[site] = key
        _site_ids[key] = site
    _last_site[msg] = (name, level, path, function, site)
    return site


def site_parts(site: int) -> Tuple[Any, ...]:
    """The (logger name, level name, message, path, function) of a call site number."""
    return _sites[site]


def plain_event_dict(event_dict: Any, method_name: str, task_id: str) -> Optional[Tuple[Any, ...]]:
    """The compact item for a structlog event dict of builtin types, or None."""
    try:
        frozen = _marshal_dumps(event_dict)
    except Exception:  # noqa: BLE001 - foreign types, or text functions given on the event
        return None
    return (frozen, _time(), method_name, task_id)


def record_form(item: Any) -> Optional[Tuple[Any, float, Any, Any, str, Any, Any, Any]]:
    """The parts of a compact plain record item (its fields, as a dict or marshalled,
    created, logger name, level name, message, path, line, function), or None for any
    other item."""
    kind = type(item)
    if kind is bytes or kind is list:
        parts = _marshal_loads(item) if kind is bytes else item
        fields, created, line, site = _flat_parts(parts) if type(parts) is list else parts
        name, level, msg, path, function = _sites[site]
        return (fields, created, name, level, msg, path, line, function)
    return item if kind is tuple and len(item) == 8 else None  # type: ignore[no-any-return]


def carry(record: logging.LogRecord, snapshot: Snapshot) -> None:
    """Make a record (a queue handler's copy for other handlers) carry its snapshot."""
    record.__dict__[SNAPSHOT_ATTR] = snapshot


def carried(record: logging.LogRecord) -> Optional[Snapshot]:
    """The snapshot a record copy carries, if any."""
    return record.__dict__.get(SNAPSHOT_ATTR)


def snapshot_of(item: Any) -> Optional[Snapshot]:
    """The ``Snapshot`` of any queue item (a compact form is expanded here, on the
    worker); None for an item that carries no task (a record passed on only)."""
    kind = type(item)
    if kind is Snapshot:
        return item  # type: ignore[no-any-return]
    if kind is bytes or kind is list:
        fields, created, name, level, msg, path, line, function = record_form(item)  # type: ignore[misc]
        item = (_marshal_dumps(fields), created, name, level, msg, path, line, function)
        kind = tuple
    if kind is tuple:
        if len(item) == 8:
            frozen, created, name, level, msg, path, line, function = item
            return _tuple_new(Snapshot, (  # type: ignore[no-any-return]
                frozen, None, None, None, None, [], created,
                _tuple_new(LogInfo, (name, level, msg, path, line, function, None)), False, None,
            ))
        frozen, created, method_name, task_id = item
        return _tuple_new(Snapshot, (  # type: ignore[no-any-return]
            frozen, None, None, None, None, [], created, _tuple_new(LogInfo, (None, method_name) + (None,) * 5),
            True, task_id,
        ))
    if isinstance(item, logging.LogRecord):
        return carried(item)
    return None


# Task ids are random, drawn from a private generator: uuid4() costs a system call per id,
# and the module-level `random` may be seeded by the app (two runs would then reuse ids,
# and the server skips ids it knows). Reseeded in a forked child (``reseed``), for the
# same reason.
_id_random = random.Random()
_getrandbits = _id_random.getrandbits


def new_task_id() -> str:
    """A task id in the phospho SDK's format: ``task_`` and 32 random hex digits."""
    return "task_" + _getrandbits(128).to_bytes(16, "big").hex()


def reseed() -> None:
    """New task ids in a forked child (the parent's generator state was copied)."""
    _id_random.seed(os.urandom(32))
