"""Snapshot -> event: what the worker does to turn a task into a protocol event.

Pure functions, no I/O. ``build_event`` extracts text, fills the protocol fields, enforces
the backend's strict types and the size caps, and returns an event that passes the
backend's validation whatever the input was. The caller's side is ``_snapshot``.
"""

from __future__ import annotations

import logging
import marshal
import math
from typing import Any, Dict, List, Optional

from ._extract import detect, input_text, output_text
from ._pending import LogInfo, Pending, new_task_id
from ._serialize import JSON, dumps, to_jsonable
from ._snapshot import _IGNORED, EVENT_DICT_LOG_KEYS, _type_name, snapshot_record

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
_FLAGS = ("success", "failure")
_TRUNCATION_MARK = "… [truncated by phospho-logging]"
_LOG_KEYS = ("log_logger", "log_level", "log_message", "log_file", "log_line", "log_function", "log_exception")
_EVENT_DICT_SKIP = EVENT_DICT_LOG_KEYS | _IGNORED
_marshal_loads = marshal.loads


def thaw(pending: Pending) -> tuple[Dict[str, JSON], Optional[str], Optional[str]]:
    """The JSON-safe fields of a snapshot, and the type names of its input and output."""
    frozen = pending.fields
    if type(frozen) is not bytes:
        return dict(frozen), pending.input_type, pending.output_type  # type: ignore[arg-type]
    raw = _marshal_loads(frozen)
    in_type = _type_name(raw.get("raw_input", raw.get("input")))
    out_type = _type_name(raw.get("raw_output", raw.get("output")))
    if type(raw) is dict and _plain(raw, 0):
        return raw, in_type, out_type  # ours alone (just unmarshalled), and already JSON-safe
    fields = to_jsonable(raw, problems=pending.problems)
    return (fields if type(fields) is dict else {}), in_type, out_type  # type: ignore[return-value]


_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})
_isfinite = math.isfinite


def _plain(value: Any, depth: int) -> bool:
    """True when ``value`` is made only of JSON types (str keys, finite floats, no big
    ints), so ``to_jsonable`` would return an equal copy; checked without copying."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return kind is not int or -(2**63) <= value < 2**63
    if kind is float:
        return _isfinite(value)
    if depth > 16:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (type(item) is not str and not _plain(item, depth + 1)):
                return False
        return True
    if kind is list:
        for item in value:
            if type(item) is not str and not _plain(item, depth + 1):
                return False
        return True
    return False


def _take_event_dict_log(fields: Dict[str, JSON], log: LogInfo, problems: List[str]) -> LogInfo:
    """Move structlog's own keys out of a snapshotted event dict into the log info."""
    logger_name, method_name, _, file, line, function, exception = log
    message = fields.pop("event", None)
    logger = fields.pop("logger", logger_name)
    level = fields.pop("level", method_name)
    for key in [k for k in fields if k in _EVENT_DICT_SKIP or k[0] == "_"]:
        del fields[key]
    return (
        logger if type(logger) is str or logger is None else str(logger),  # type: ignore[return-value]
        level.upper() if type(level) is str else str(level),
        message,
        file,  # type: ignore[arg-type]
        line,  # type: ignore[arg-type]
        function,  # type: ignore[arg-type]
        exception,
    )


def build_event(
    pending: Pending,
    *,
    project_id: Optional[str] = None,
    version_id: Optional[str] = None,
    max_field_chars: Optional[int] = 100_000,
) -> Dict[str, JSON]:
    """Turn a snapshot into a protocol event that passes the backend's strict validation.

    Problems found on the way (coercions, truncations) are appended to
    ``pending.problems`` and recorded in the event's metadata. ``max_field_chars=None``
    leaves the size caps to the caller (``encode_event``). Never raises.
    """
    problems = pending.problems
    fields, input_type, output_type = thaw(pending)
    log = pending.log
    if pending.task_id is not None:
        fields["task_id"] = pending.task_id
    if pending.from_event_dict:
        log = _take_event_dict_log(fields, log, problems)
        loose = list(fields.items())
    else:
        # Records list fields last-first (see snapshot_record): restore the caller's order.
        loose = list(reversed(list(fields.items())))
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
        event["task_id"] = new_task_id()
    flag = fields.pop("flag", None)
    if flag is not None:
        if flag in _FLAGS:
            event["flag"] = flag
        else:
            problems.append("flag_invalid")
            metadata.setdefault("flag_invalid", flag)

    event["raw_input"] = _raw(explicit_raw_in if explicit_raw_in is not None else raw_in, False)
    event["raw_output"] = _raw(explicit_raw_out if explicit_raw_out is not None else raw_out, True)
    event["raw_input_type_name"] = input_type
    event["raw_output_type_name"] = output_type
    for key, value in detect(event["raw_input"], event["raw_output"]).items():
        event[key] = value

    # Loose extras go into metadata (never top level, where they could collide with server
    # fields); an explicit metadata dict wins over them, and both win over our log_* keys.
    for key, value in loose:
        if key in fields:  # not taken by a protocol field above
            metadata.setdefault(key, value)
    for key, value in zip(_LOG_KEYS, log):
        if value is not None:
            metadata.setdefault(key, value)
    if max_field_chars is not None:
        _cap(event, metadata, max_field_chars, problems)
        if problems:
            metadata["phospho_logging_problems"] = [*sorted(set(problems))]
    event["metadata"] = metadata
    return event


def encode_event(
    pending: Pending,
    *,
    project_id: Optional[str] = None,
    version_id: Optional[str] = None,
    max_field_chars: int = 100_000,
) -> tuple[Dict[str, JSON], bytes]:
    """``build_event`` and its wire encoding. Never raises.

    The size caps need the encoded size of each field; they are skipped when the whole
    event is smaller than one field may be, which is almost always.
    """
    event = build_event(pending, project_id=project_id, version_id=version_id, max_field_chars=None)
    metadata: Dict[str, JSON] = event["metadata"]  # type: ignore[assignment]
    problems = pending.problems
    if problems:
        metadata["phospho_logging_problems"] = [*sorted(set(problems))]
    encoded = dumps(event)
    if len(encoded) > max_field_chars:
        before = len(problems)
        _cap(event, metadata, max_field_chars, problems)
        if len(problems) != before:
            metadata["phospho_logging_problems"] = [*sorted(set(problems))]
            encoded = dumps(event)
    return event, encoded


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
