"""Record (or structlog event dict) -> ``Snapshot``: what runs on the caller's thread.

A snapshot copies what a task needs out of a record so that later mutation by the
application cannot change the task, and runs the user's own text functions, which need
the original objects. Everything else (text extraction, protocol fields, strict types,
size caps) waits for the worker: see ``_event.build_event``. The commonest records take
the shorter ``_item.plain_record`` instead; this module is the general path.

Values made of builtin types are copied by one ``marshal`` call (C code) instead of a
Python walk. Never raises: whatever a record holds, a best-effort task comes out, with
what was adjusted listed in its problems.
"""

from __future__ import annotations

import logging
import marshal
import math
import sys
import traceback
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple, Union

from ._extract import input_text
from ._item import IGNORED, NO_LOG, LogInfo, Snapshot, make_snapshot, plain_record, snapshot_of
from ._serialize import JSON, to_jsonable

TextFunction = Callable[[Any], str]

#: structlog keys that describe the log line, not the task: they fill the log_* metadata.
EVENT_DICT_LOG_KEYS = frozenset({"event", "logger", "level", "exc_info", "exception", "stack", "stack_info"})


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
    tree; ``_event.thaw`` makes it JSON-safe later, on the worker. Anything else (pydantic
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


def type_name(value: Any) -> Optional[str]:
    """The type name of a task's original input or output (None for None)."""
    return None if value is None else type(value).__name__


def extras(
    items: Iterable[Tuple[Any, Any]], problems: List[str], skip: FrozenSet[str] = IGNORED
) -> Dict[str, Any]:
    """The task fields among a record's attributes (or an event dict's keys), keyed by
    text: private (``_``) keys and those in ``skip`` (a LogRecord's own attributes) are
    left out; a key that is not a string, or is empty, is named by its text and listed as
    a problem."""
    fields: Dict[str, Any] = {}
    for key, value in items:
        if type(key) is not str:
            problems.append("key_coerced")
            try:
                key = str(key)
            except Exception:  # noqa: BLE001 - a user __str__
                key = f"<unprintable {type(key).__name__} key>"
            if type(key) is not str:  # a str subclass (its __str__ may return one)
                key = str.__str__(key) if isinstance(key, str) else f"<{type(key).__name__} key>"
        if not key:
            problems.append("extra_key_empty")
            key = "(empty key)"
        if key[0] != "_" and key not in skip:
            fields[key] = value
    return fields


def snapshot_record(
    record: logging.LogRecord,
    input_to_str: Optional[TextFunction] = None,
    output_to_str: Optional[TextFunction] = None,
    context: Optional[Mapping[str, Any]] = None,
) -> Snapshot:
    """Copy the task out of a record. Never raises.

    The commonest record takes the handlers' short path (``_item.plain_record``); a
    %-formatted message, a traceback or foreign types are still copied in one call; bound
    context, text functions and odd keys take the general path.
    """
    attrs = record.__dict__
    if type(record.msg) is dict:
        return _snapshot_event_dict_record(record, input_to_str, output_to_str, context)
    plain = not (context or input_to_str or output_to_str)
    if plain:
        item = plain_record(record)
        if item is not None:
            snapshot = snapshot_of(item)
            assert snapshot is not None
            return snapshot
    problems: List[str] = []
    fields = extras(attrs.items(), problems)
    log = _log_info(record, problems)
    if not plain or problems or "input" not in fields or "input_to_str" in attrs or "output_to_str" in attrs:
        return snapshot_fields(
            fields,
            attrs.get("input_to_str") or input_to_str,
            attrs.get("output_to_str") or output_to_str,
            context,
            problems,
            record.created,
            log,
            from_event_dict=False,
        )
    # Listed last-first, as the compact form lists them (build_event restores the order).
    frozen = freeze(dict(reversed(list(fields.items()))), problems)
    typed = type(frozen) is dict  # foreign types: their names must be read now
    return make_snapshot(
        frozen,
        input_type=type_name(attrs.get("raw_input", attrs["input"])) if typed else None,
        output_type=type_name(attrs.get("raw_output", attrs.get("output"))) if typed else None,
        problems=problems,
        created=record.created,
        log=log,
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


def _log_info(record: logging.LogRecord, problems: List[str], message: Any = None) -> LogInfo:
    msg = record.msg
    if message is None:
        message = msg if type(msg) is str and not record.args else _message(record, problems)
    return LogInfo(
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
) -> Snapshot:
    """A record whose ``msg`` is a structlog event dict (``ProcessorFormatter.wrap_for_formatter``)."""
    msg: Dict[Any, Any] = record.msg  # type: ignore[assignment]
    attrs = record.__dict__
    problems: List[str] = []
    source = {**extras(msg.items(), problems, frozenset()), **extras(attrs.items(), problems)}
    event_text = msg.get("event")
    message: JSON = event_text if type(event_text) is str else snap(event_text, problems)
    return snapshot_fields(
        source,
        msg.get("input_to_str") or attrs.get("input_to_str") or input_to_str,
        msg.get("output_to_str") or attrs.get("output_to_str") or output_to_str,
        context,
        problems,
        record.created,
        _log_info(record, problems, "" if message is None else message),
        from_event_dict=False,
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
    *,
    from_event_dict: bool = False,
    task_id: Optional[str] = None,
) -> Snapshot:
    """Copy task fields out of a mapping with text keys (record extras, an event dict).

    ``context`` holds values bound with ``phospho_logging.context``; fields in ``source``
    win over it. Never raises.
    """
    if problems is None:
        problems = []
    fields: Dict[str, JSON] = {}
    if context:
        _bind_context(fields, context, problems)
    # A record's fields are kept last-first, as the walk in snapshot_record lists them.
    items = list(source.items()) if from_event_dict else list(reversed(list(source.items())))
    for key, value in items:
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
    return make_snapshot(
        fields,
        input_text=in_text,
        output_text=out_text,
        input_type=type_name(source.get("raw_input", source.get("input"))),
        output_type=type_name(source.get("raw_output", source.get("output"))),
        problems=problems,
        created=created,
        log=NO_LOG if log is None else log,
        from_event_dict=from_event_dict,
        task_id=task_id,
    )


def _custom_text(func: TextFunction, value: Any, name: str, problems: List[str]) -> Optional[str]:
    try:
        text = func(value)
    except Exception:  # noqa: BLE001 - the user's function must not lose the task
        problems.append(f"{name}_raised")
        return None
    if type(text) is not str:
        problems.append(f"{name}_not_str")
        return input_text(to_jsonable(text))
    return text


def snapshot_event_dict(
    event_dict: Mapping[Any, Any],
    method_name: str,
    task_id: str,
    input_to_str: Optional[TextFunction] = None,
    output_to_str: Optional[TextFunction] = None,
    context: Optional[Mapping[str, Any]] = None,
) -> Snapshot:
    """Copy the task out of a structlog event dict; ``task_id`` is the one the processor
    hands back to the caller.

    ``build_event`` later turns ``event`` into the message and ``logger``/``level`` into
    the log_* metadata. Never raises.
    """
    problems: List[str] = []
    source = extras(event_dict.items(), problems, frozenset()) if _odd_keys(event_dict) else event_dict
    input_to_str = source.get("input_to_str") or input_to_str
    output_to_str = source.get("output_to_str") or output_to_str
    return snapshot_fields(
        source,
        input_to_str,
        output_to_str,
        context,
        problems,
        None,
        LogInfo(None, method_name, None, None, None, None, _event_dict_exception(source, problems)),
        from_event_dict=True,
        task_id=task_id,
    )


def _odd_keys(mapping: Mapping[Any, Any]) -> bool:
    return any(type(key) is not str or not key for key in mapping)


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
