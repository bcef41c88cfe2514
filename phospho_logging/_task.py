"""Record -> task: pure functions, no I/O.

The work is split in two so the caller pays little:

* ``snapshot_*`` runs on the caller's thread. It copies what the task needs out of the
  record into JSON-safe values (so later mutation by the app cannot change the task) and
  runs the user's own text functions, which need the original objects.
* ``build_event`` runs on the worker. It extracts text, fills the protocol fields, enforces
  the backend's strict types and the size caps, and returns an event that passes the
  backend's validation whatever the input was.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
import uuid
from operator import itemgetter
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ._extract import detect, input_text, output_text
from ._serialize import JSON, to_jsonable

#: Attributes every LogRecord has, read off a real one so new ones (3.12's ``taskName``)
#: are never mistaken for user extras; plus those that formatters add later.
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

#: Keys with a meaning of their own; every other extra goes into the task's metadata.
TASK_KEYS = (
    "input",
    "output",
    "metadata",
    "session_id",
    "task_id",
    "user_id",
    "version_id",
    "flag",
    "raw_input",
    "raw_output",
    "input_to_str",
    "output_to_str",
)
_ID_KEYS = ("session_id", "task_id", "user_id", "version_id")
_IGNORED = STANDARD_ATTRS | {"input_to_str", "output_to_str"}
_FLAGS = ("success", "failure")
_TRUNCATION_MARK = "… [truncated by phospho-logging]"

TextFunction = Callable[[Any], str]

#: Where the task was logged: logger, level, message, file, line, function, traceback.
LogInfo = Tuple[str, str, JSON, str, int, str, Optional[str]]
_LOG_KEYS = ("log_logger", "log_level", "log_message", "log_file", "log_line", "log_function", "log_exception")


class Pending(tuple):  # type: ignore[type-arg]
    """A task as snapshotted on the caller's thread, waiting for ``build_event``.

    A tuple, because one is made inside every task-carrying logging call and a tuple is
    the cheapest object Python builds; the properties name its slots. Build one with
    ``make_pending``.
    """

    __slots__ = ()

    fields: Dict[str, JSON] = property(itemgetter(0))  # type: ignore[assignment]
    input_text: Optional[str] = property(itemgetter(1))  # type: ignore[assignment]
    output_text: Optional[str] = property(itemgetter(2))  # type: ignore[assignment]
    input_type: Optional[str] = property(itemgetter(3))  # type: ignore[assignment]
    output_type: Optional[str] = property(itemgetter(4))  # type: ignore[assignment]
    problems: List[str] = property(itemgetter(5))  # type: ignore[assignment]
    created: float = property(itemgetter(6))  # type: ignore[assignment]
    #: Where it was logged: logger, level, message, file, line, function, traceback.
    log: LogInfo = property(itemgetter(slice(7, 14)))  # type: ignore[assignment]


_tuple_new = tuple.__new__


def make_pending(
    fields: Dict[str, JSON],
    input_text: Optional[str],
    output_text: Optional[str],
    input_type: Optional[str],
    output_type: Optional[str],
    problems: List[str],
    created: float,
    log: LogInfo = (None, None, None, None, None, None, None),  # type: ignore[assignment]
) -> Pending:
    """A ``Pending`` from its parts (the hot path builds the tuple inline instead)."""
    return _tuple_new(Pending, (fields, input_text, output_text, input_type, output_type, problems, created, *log))


def carries_task(record: logging.LogRecord) -> bool:
    """True when the record is meant to become a task (it has an ``input``)."""
    return "input" in record.__dict__ or (
        type(record.msg) is dict and "input" in record.msg  # a structlog event dict
    )


_SCALARS = frozenset({str, int, bool, type(None)})
_isfinite = math.isfinite
_FAST_DEPTH = 8


class _Slow(Exception):
    """Raised inside the fast copy when a value needs the full ``to_jsonable``."""


def _fast_copy(value: Any, depth: int) -> JSON:
    kind = type(value)
    if kind in _SCALARS:
        return value  # type: ignore[no-any-return]
    if kind is float and _isfinite(value):
        return value  # type: ignore[no-any-return]
    if depth > _FAST_DEPTH:
        raise _Slow
    if kind is dict:
        out: Dict[str, JSON] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Slow
            out[key] = item if type(item) is str else _fast_copy(item, depth + 1)
        return out
    if kind is list:
        return [item if type(item) is str else _fast_copy(item, depth + 1) for item in value]
    raise _Slow


def snap(value: Any, problems: List[str]) -> JSON:
    """A JSON-safe deep copy: a fast path for plain JSON-like values (the common case),
    ``to_jsonable`` for everything else."""
    if type(value) is str:
        return value
    try:
        return _fast_copy(value, 0)
    except Exception:  # noqa: BLE001 - _Slow, or a container another thread is resizing
        return to_jsonable(value, problems=problems)


#: How many attributes ``Logger.makeRecord`` sets before the caller's extras: the extras
#: follow them in the record's ``__dict__``, so the scan can start there.
_FIRST_EXTRA = len(vars(logging.LogRecord("", 0, "", 0, "", (), None)))


#: The attributes ``LogRecord.__init__`` sets. Extras come after them in a record's
#: ``__dict__``, so the scan for extras walks it backwards and stops at the first of these.
_INIT_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))


def snapshot_record(
    record: logging.LogRecord,
    input_to_str: Optional[TextFunction] = None,
    output_to_str: Optional[TextFunction] = None,
    context: Optional[Mapping[str, Any]] = None,
) -> Pending:
    """Copy the task out of a record, on the caller's thread. Never raises.

    This runs inside every task-carrying logging call, so the common case (a record made
    by ``Logger.makeRecord`` with a few extras) touches the extras only.
    """
    attrs = record.__dict__
    msg = record.msg
    if type(msg) is dict:
        return _snapshot_event_dict_record(record, input_to_str, output_to_str, context)
    problems: List[str] = []
    fields: Dict[str, JSON] = {}
    # Walked backwards (cheap to stop early); build_event restores the caller's order.
    for key, value in reversed(attrs.items()):
        if key in _INIT_ATTRS:
            break
        if key in _IGNORED or key[0] == "_":
            continue
        kind = type(value)
        if kind is str:
            fields[key] = value
        elif kind is dict or kind is list:
            try:
                fields[key] = _fast_copy(value, 0)
            except Exception:  # noqa: BLE001 - _Slow, or a container being resized
                fields[key] = to_jsonable(value, problems=problems)
        else:
            fields[key] = snap(value, problems)
    if "input" not in fields or context:
        # An unusual record layout, or fields bound with context(): the general path.
        return snapshot_fields(
            {k: v for k, v in attrs.items() if k not in _IGNORED and k[0] != "_"},
            attrs.get("input_to_str") or input_to_str,
            attrs.get("output_to_str") or output_to_str,
            context,
            problems,
            record.created,
            _log_info(record, _message(record, problems), problems),
        )
    if "input_to_str" in attrs:
        input_to_str = attrs["input_to_str"] or input_to_str
    if "output_to_str" in attrs:
        output_to_str = attrs["output_to_str"] or output_to_str
    raw_in = attrs.get("raw_input", attrs["input"])
    raw_out = attrs.get("raw_output", attrs.get("output"))
    return _tuple_new(
        Pending,
        (
            fields,
            None if input_to_str is None else _custom_text(input_to_str, attrs["input"], "input_to_str", problems),
            None
            if output_to_str is None or attrs.get("output") is None
            else _custom_text(output_to_str, attrs["output"], "output_to_str", problems),
            None if raw_in is None else type(raw_in).__name__,
            None if raw_out is None else type(raw_out).__name__,
            problems,
            record.created,
            record.name,
            record.levelname,
            msg if type(msg) is str and not record.args else _message(record, problems),
            record.pathname,
            record.lineno,
            record.funcName,
            _format_exception(record, problems) if record.exc_info else None,
        ),
    )


def _message(record: logging.LogRecord, problems: List[str]) -> JSON:
    """``record.getMessage()``, but a bad %-format does not lose the task."""
    msg = record.msg
    try:
        message = msg if type(msg) is str else str(msg)
        if record.args:
            message = message % record.args
        return message
    except Exception:  # noqa: BLE001
        problems.append("message_format")
        return to_jsonable(msg, problems=problems)


def _log_info(record: logging.LogRecord, message: JSON, problems: List[str]) -> LogInfo:
    return (
        record.name,
        record.levelname,
        message,
        record.pathname,
        record.lineno,
        record.funcName,
        _format_exception(record, problems) if record.exc_info else None,
    )


def _snapshot_event_dict_record(
    record: logging.LogRecord,
    input_to_str: Optional[TextFunction],
    output_to_str: Optional[TextFunction],
    context: Optional[Mapping[str, Any]],
) -> Pending:
    """A record whose ``msg`` is a structlog event dict (``ProcessorFormatter.wrap_for_formatter``)."""
    msg: Dict[str, Any] = record.msg  # type: ignore[assignment]
    attrs = record.__dict__
    problems: List[str] = []
    source = {**msg, **{k: v for k, v in attrs.items() if k not in _IGNORED and k[0] != "_"}}
    event_text = msg.get("event")
    message: JSON = event_text if type(event_text) is str else snap(event_text, problems)
    return snapshot_fields(
        source,
        msg.get("input_to_str") or attrs.get("input_to_str") or input_to_str,
        msg.get("output_to_str") or attrs.get("output_to_str") or output_to_str,
        context,
        problems,
        record.created,
        _log_info(record, message, problems),
    )


def _bind_context(fields: Dict[str, JSON], context: Mapping[str, Any], problems: List[str]) -> None:
    for key, value in context.items():
        fields[key] = snap(value, problems)


def _merge_metadata(fields: Dict[str, JSON], value: Any, problems: List[str]) -> None:
    """The record's metadata on top of the context's, key by key."""
    bound = fields["metadata"]
    new = snap(value, problems)
    if isinstance(bound, dict) and isinstance(new, dict):
        fields["metadata"] = {**bound, **new}
    else:
        fields["metadata"] = new


def _format_exception(record: logging.LogRecord, problems: List[str]) -> Optional[str]:
    exc_info = record.exc_info
    if not exc_info or exc_info[0] is None:
        return None
    try:
        return "".join(traceback.format_exception(*exc_info))
    except Exception:  # noqa: BLE001
        problems.append("exception_format")
        return None


def snapshot_fields(
    source: Mapping[str, Any],
    input_to_str: Optional[TextFunction] = None,
    output_to_str: Optional[TextFunction] = None,
    context: Optional[Mapping[str, Any]] = None,
    problems: Optional[List[str]] = None,
    created: Optional[float] = None,
    log: Optional[LogInfo] = None,
) -> Pending:
    """Copy task fields out of any mapping (record extras, a structlog event dict).

    ``context`` holds values bound with ``phospho_logging.context``; fields in ``source``
    win over it. Never raises.
    """
    if problems is None:
        problems = []
    fields: Dict[str, JSON] = {}
    if context:
        _bind_context(fields, context, problems)
    for key, value in reversed(list(source.items())):  # last-first, as snapshot_record does
        if key == "input_to_str" or key == "output_to_str":
            continue
        if type(value) is str:
            fields[key] = value
        elif key == "metadata" and context and "metadata" in fields:
            _merge_metadata(fields, value, problems)
        else:
            fields[key] = snap(value, problems)
    in_text = None
    if input_to_str is not None:
        in_text = _custom_text(input_to_str, source.get("input"), "input_to_str", problems)
    out_text = None
    if output_to_str is not None and source.get("output") is not None:
        out_text = _custom_text(output_to_str, source["output"], "output_to_str", problems)
    raw_in = source.get("raw_input", source.get("input"))
    raw_out = source.get("raw_output", source.get("output"))
    return make_pending(
        fields,
        in_text,
        out_text,
        None if raw_in is None else type(raw_in).__name__,
        None if raw_out is None else type(raw_out).__name__,
        problems,
        time.time() if created is None else created,
        *(() if log is None else (log,)),
    )


def _custom_text(
    func: Optional[TextFunction], value: Any, name: str, problems: List[str]
) -> Optional[str]:
    if func is None:
        return None
    try:
        text = func(value)
    except Exception:  # noqa: BLE001 - the user's function must not lose the task
        problems.append(f"{name}_raised")
        return None
    if type(text) is not str:
        problems.append(f"{name}_not_str")
        return input_text(to_jsonable(text))
    return text


def build_event(
    pending: Pending,
    *,
    project_id: Optional[str] = None,
    version_id: Optional[str] = None,
    max_field_chars: int = 100_000,
) -> Dict[str, JSON]:
    """Turn a snapshot into a protocol event that passes the backend's strict validation.

    Problems found on the way (coercions, truncations) are appended to
    ``pending.problems`` and recorded in the event's metadata. Never raises.
    """
    fields = dict(pending.fields)
    problems = pending.problems
    raw_in = fields.pop("input", None)
    raw_out = fields.pop("output", None)
    explicit_raw_in = fields.pop("raw_input", None)
    explicit_raw_out = fields.pop("raw_output", None)
    metadata_value = fields.pop("metadata", None)
    if metadata_value is None:
        metadata: Dict[str, JSON] = {}
    elif isinstance(metadata_value, dict):
        metadata = dict(metadata_value)
    else:
        problems.append("metadata_not_dict")
        metadata = {"metadata": metadata_value}

    text_in = pending.input_text
    if text_in is None:
        if raw_in is None:
            problems.append("input_missing")
        elif type(raw_in) is not str and not isinstance(raw_in, (dict, list)):
            problems.append("input_not_text")
        text_in = input_text(raw_in)
    text_out = pending.output_text if pending.output_text is not None else output_text(raw_out)

    event: Dict[str, JSON] = {
        "task_id": None,
        "session_id": None,
        "input": text_in,
        "output": text_out,
        "client_created_at": int(pending.created),
        "project_id": project_id,
        "version_id": version_id,
    }
    for key in _ID_KEYS:
        value = fields.pop(key, None)
        if value is not None:
            if type(value) is not str:
                problems.append(f"{key}_not_str")
                value = str(value) if not isinstance(value, (dict, list)) else input_text(value)
            event[key] = value
    if event["task_id"] is None:
        event["task_id"] = "task_" + uuid.uuid4().hex
    flag = fields.pop("flag", None)
    if flag is not None:
        if flag in _FLAGS:
            event["flag"] = flag
        else:
            problems.append("flag_invalid")
            metadata.setdefault("flag_invalid", flag)

    event["raw_input"] = _raw(explicit_raw_in if explicit_raw_in is not None else raw_in, False)
    event["raw_output"] = _raw(explicit_raw_out if explicit_raw_out is not None else raw_out, True)
    event["raw_input_type_name"] = pending.input_type
    event["raw_output_type_name"] = pending.output_type
    for key, value in detect(event["raw_input"], event["raw_output"]).items():
        event[key] = value

    # Loose extras go into metadata (never top level, where they could collide with server
    # fields); an explicit metadata dict wins over them, and both win over our log_* keys.
    # Snapshots list fields last-first (see snapshot_record): restore the caller's order.
    for key, value in reversed(list(fields.items())):
        metadata.setdefault(key, value)
    for key, value in zip(_LOG_KEYS, pending.log):
        if value is not None:
            metadata.setdefault(key, value)
    _cap(event, metadata, max_field_chars, problems)
    if problems:
        tags: List[JSON] = [*sorted(set(problems))]
        metadata["phospho_logging_problems"] = tags
    event["metadata"] = metadata
    return event


def _raw(value: JSON, output: bool) -> JSON:
    """Fit a JSON-safe value into the types the backend accepts for raw_input/raw_output."""
    if value is None or type(value) is str or type(value) is dict:
        return value
    if type(value) is list:
        if all(type(v) is dict or (output and v is None) for v in value):
            return value
        if all(type(v) is str or (output and v is None) for v in value):
            return value
    return {"value": value}


def _cap(event: Dict[str, JSON], metadata: Dict[str, JSON], limit: int, problems: List[str]) -> None:
    """Truncate oversized text fields and metadata values, visibly."""
    truncated: List[JSON] = []
    for key in ("input", "output", "system_prompt"):
        value = event.get(key)
        if type(value) is str and len(value) > limit:
            event[key] = value[:limit] + _TRUNCATION_MARK
            truncated.append(key)
    for key in ("raw_input", "raw_output"):
        value = event.get(key)
        if value is not None and _too_big(value, limit):
            event[key] = _truncate_text(_compact(value), limit)
            truncated.append(key)
    for key, value in list(metadata.items()):
        if value is not None and _too_big(value, limit):
            metadata[key] = _truncate_text(_compact(value), limit)
            truncated.append(f"metadata.{key}")
    if truncated:
        problems.append("truncated")
        metadata["phospho_logging_truncated"] = truncated


def _too_big(value: JSON, limit: int) -> bool:
    if type(value) is str:
        return len(value) > limit
    if type(value) in (int, float, bool):
        return False
    return len(_compact(value)) > limit


def _compact(value: JSON) -> str:
    if type(value) is str:
        return value
    return input_text(value)  # compact JSON text for containers


def _truncate_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + _TRUNCATION_MARK


def task_from_record(record: logging.LogRecord, **options: Any) -> Dict[str, JSON]:
    """The event a record becomes, built in one step (for tests and formatters)."""
    pending = snapshot_record(record, options.pop("input_to_str", None), options.pop("output_to_str", None))
    return build_event(pending, **options)
