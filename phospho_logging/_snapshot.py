"""Record -> snapshot: what runs on the caller's thread, inside every logging call.

A snapshot copies what a task needs out of a record (or a structlog event dict) so that
later mutation by the application cannot change the task, and runs the user's own text
functions, which need the original objects. Everything else (text extraction, protocol
fields, strict types, size caps) waits for the worker: see ``_task.build_event``.

The common case is made cheap on purpose: the extras are found by walking the record's
``__dict__`` backwards, and values made of builtin types are copied by one ``marshal``
call (C code) instead of a Python walk.
"""

from __future__ import annotations

import logging
import marshal
import math
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from ._extract import input_text
from ._pending import _NO_LOG, LogInfo, Pending, Short, _time, _tuple_new, make_pending
from ._serialize import JSON, to_jsonable

#: Attributes every LogRecord has, read off a real one so new ones (3.12's ``taskName``)
#: are never mistaken for user extras; plus those that formatters add later.
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
#: The attributes ``LogRecord.__init__`` sets. Extras come after them in a record's
#: ``__dict__``, so the scan for extras walks it backwards and stops at the first of these.
_INIT_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_IGNORED = STANDARD_ATTRS | {"input_to_str", "output_to_str"}

TextFunction = Callable[[Any], str]

def carries_task(record: logging.LogRecord) -> bool:
    """True when the record is meant to become a task (it has an ``input``)."""
    return "input" in record.__dict__ or (
        type(record.msg) is dict and "input" in record.msg  # a structlog event dict
    )


_marshal_dumps = marshal.dumps


def freeze(fields: Dict[str, Any], problems: List[str]) -> Union[bytes, Dict[str, JSON]]:
    """Snapshot raw fields as cheaply as possible.

    When every value is made of builtin types (str, numbers, dicts, lists...: the usual
    case, OpenAI-style message lists included), one C call (``marshal``) copies the whole
    tree; ``_task.thaw`` makes it JSON-safe later, on the worker. Anything else (pydantic
    objects, datetimes, a container another thread is resizing) is made JSON-safe here,
    since only here does it still have the value it had at the logging call.
    """
    try:
        return _marshal_dumps(fields)
    except Exception:  # noqa: BLE001 - ValueError for foreign types; anything else alike
        return {key: snap(value, problems) for key, value in fields.items()}


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


def _type_name(value: Any) -> Optional[str]:
    return None if value is None else type(value).__name__


def snapshot_record(
    record: logging.LogRecord,
    input_to_str: Optional[TextFunction] = None,
    output_to_str: Optional[TextFunction] = None,
    context: Optional[Mapping[str, Any]] = None,
) -> Pending:
    """Copy the task out of a record. Never raises.

    The common case (a record made by ``Logger.makeRecord`` with a few extras, no custom
    text function, no bound context) touches the extras only and copies them in one call.
    """
    attrs = record.__dict__
    msg = record.msg
    if type(msg) is dict:
        return _snapshot_event_dict_record(record, input_to_str, output_to_str, context)
    problems: List[str] = []
    fields: Dict[str, Any] = {}
    # Walked backwards (cheap to stop early); build_event restores the caller's order.
    for key, value in reversed(attrs.items()):
        if key in _IGNORED:
            if key in _INIT_ATTRS:
                break
            continue
        if key[0] != "_":
            fields[key] = value
    if context or "input" not in fields or "input_to_str" in attrs or "output_to_str" in attrs or input_to_str \
            or output_to_str:
        # Bound context, custom text functions or an unusual record layout: the general path.
        return snapshot_fields(
            {k: v for k, v in attrs.items() if k not in _IGNORED and k[0] != "_"},
            attrs.get("input_to_str") or input_to_str,
            attrs.get("output_to_str") or output_to_str,
            context,
            problems,
            record.created,
            _log_info(record, _message(record, problems), problems),
        )
    frozen = freeze(fields, problems)
    typed = type(frozen) is dict  # foreign types: their names must be read now
    return _tuple_new(  # type: ignore[no-any-return]
        Pending,
        (
            frozen,
            None,
            None,
            _type_name(attrs.get("raw_input", attrs["input"])) if typed else None,
            _type_name(attrs.get("raw_output", attrs.get("output"))) if typed else None,
            problems,
            record.created,
            record.name,
            record.levelname,
            msg if type(msg) is str and not record.args else _message(record, problems),
            record.pathname,
            record.lineno,
            record.funcName,
            _format_exception(record, problems) if record.exc_info else None,
            False,
            None,
        ),
    )


def snapshot_plain(record: logging.LogRecord) -> Optional[Short]:
    """``snapshot_record`` for the commonest record, or None if it needs the full path.

    The commonest record: a ``str`` message without %-arguments or traceback, plain
    extras (no per-record text function), builtin types only; and no text function or
    bound context on the caller's side, which the caller checks. This is the hot path of
    ``PhosphoQueueHandler``, kept short on purpose: it returns a ``Short`` tuple.
    """
    fields: Dict[str, Any] = {}
    for key, value in reversed(record.__dict__.items()):
        if key in _IGNORED:
            if key in _INIT_ATTRS:
                break
            if key == "input_to_str" or key == "output_to_str":
                return None
            continue
        if key[0] != "_":
            fields[key] = value
    msg = record.msg
    if "input" not in fields or record.args or record.exc_info or type(msg) is not str:
        return None
    try:
        frozen = _marshal_dumps(fields)
    except Exception:  # noqa: BLE001 - foreign types: the full path makes them JSON-safe
        return None
    return (frozen, record.created, record.name, record.levelname, msg, record.pathname, record.lineno,
            record.funcName)


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
        if key == "input_to_str" or key == "output_to_str" or key[:1] == "_":
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
        _type_name(raw_in),
        _type_name(raw_out),
        problems,
        time.time() if created is None else created,
        _NO_LOG if log is None else log,
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


#: structlog keys that describe the log line, not the task: they fill the log_* metadata.
EVENT_DICT_LOG_KEYS = frozenset({"event", "logger", "level", "exc_info", "exception", "stack", "stack_info"})


def snapshot_event_dict(
    event_dict: Mapping[str, Any],
    method_name: str,
    task_id: str,
    input_to_str: Optional[TextFunction] = None,
    output_to_str: Optional[TextFunction] = None,
    context: Optional[Mapping[str, Any]] = None,
) -> Pending:
    """Copy the task out of a structlog event dict; ``task_id`` is the one the processor
    hands back to the caller.

    Only the copy happens here; ``build_event`` later turns ``event`` into the message and
    ``logger``/``level`` into the log_* metadata. Never raises.
    """
    problems: List[str] = []
    if not (context or input_to_str or output_to_str or "exc_info" in event_dict
            or "input_to_str" in event_dict or "output_to_str" in event_dict):
        frozen = freeze(event_dict, problems)  # type: ignore[arg-type]
        if type(frozen) is bytes:
            return _tuple_new(  # type: ignore[no-any-return]
                Pending,
                (frozen, None, None, None, None, problems, _time(), None, method_name,
                 None, None, None, None, None, True, task_id),
            )
    # Context, text functions, a traceback to render or foreign types: the general path.
    fields: Dict[str, JSON] = {}
    if context:
        _bind_context(fields, context, problems)
    for key, value in event_dict.items():
        if key == "input_to_str" or key == "output_to_str":
            continue
        if key == "metadata" and "metadata" in fields:
            _merge_metadata(fields, value, problems)
        else:
            fields[key] = snap(value, problems)
    input_to_str = event_dict.get("input_to_str") or input_to_str
    output_to_str = event_dict.get("output_to_str") or output_to_str
    original_in = event_dict.get("input")
    original_out = event_dict.get("output")
    exception = _event_dict_exception(event_dict, problems)
    return make_pending(
        fields,
        None if input_to_str is None else _custom_text(input_to_str, original_in, "input_to_str", problems),
        None if output_to_str is None or original_out is None
        else _custom_text(output_to_str, original_out, "output_to_str", problems),
        _type_name(event_dict.get("raw_input", original_in)),
        _type_name(event_dict.get("raw_output", original_out)),
        problems,
        _time(),
        (None, method_name, None, None, None, None, exception),
        True,
        task_id,
    )


def _event_dict_exception(event_dict: Mapping[str, Any], problems: List[str]) -> Optional[str]:
    text = event_dict.get("exception")
    if type(text) is str:
        return text  # already rendered by structlog's format_exc_info
    exc_info = event_dict.get("exc_info")
    if not exc_info:
        return None
    try:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if not isinstance(exc_info, tuple) or exc_info[0] is None:
            return None
        return "".join(traceback.format_exception(*exc_info))
    except Exception:  # noqa: BLE001
        problems.append("exception_format")
        return None
