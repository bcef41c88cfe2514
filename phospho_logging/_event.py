"""Snapshot -> wire event: what the worker does to turn a task into a protocol event.

Pure functions, no I/O. ``build_event`` extracts text, fills the protocol fields and
enforces the backend's strict types; ``fit`` is the one truncation routine (per-field
``max_field_chars``, and a byte budget per event so that every event fits in a request of
``max_batch_bytes``); ``encode`` does both and returns the ``WireEvent`` an exporter
receives. Whatever the input was, the event passes the backend's validation.
``PlainEncoder`` writes the same bytes for the commonest record (text input and output, a
plain metadata dict) straight from its fields, with no event tree: the worker tries it
first.
"""

from __future__ import annotations

import json
import logging
import marshal
import math
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ._export import ENVELOPE_BYTES, WireEvent
from ._extract import detect, input_text, output_text
from ._item import IGNORED, LogInfo, Snapshot, new_task_id, record_form, site_parts
from ._serialize import JSON, dumps, dumps_text, json_str, orjson_dumps, to_jsonable
from ._snapshot import EVENT_DICT_LOG_KEYS, snapshot_record, type_name

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
_STREAM_FOUND = ("model", "prompt_tokens", "completion_tokens", "total_tokens")
_FLAGS = ("success", "failure")
#: What replaces the end of a truncated value.
TRUNCATION_MARK = "… [truncated by phospho-logging]"
TRUNCATED_KEY = "phospho_logging_truncated"
PROBLEMS_KEY = "phospho_logging_problems"
_OWN_KEYS = frozenset({TRUNCATED_KEY, PROBLEMS_KEY})
#: Top-level fields that may be cut; ids, flags, times and token counts never are.
_CUTTABLE = ("input", "output", "system_prompt", "raw_input", "raw_output")
_LOG_KEYS = ("log_logger", "log_level", "log_message", "log_file", "log_line", "log_function", "log_exception")
_EVENT_DICT_SKIP = EVENT_DICT_LOG_KEYS | IGNORED
_marshal_loads = marshal.loads


def thaw(snapshot: Snapshot) -> Tuple[Dict[str, JSON], Optional[str], Optional[str]]:
    """The JSON-safe fields of a snapshot, and the type names of its input and output."""
    frozen = snapshot.fields
    if type(frozen) is not bytes:
        return dict(frozen), snapshot.input_type, snapshot.output_type  # type: ignore[arg-type]
    raw = _marshal_loads(frozen)
    in_type = type_name(raw.get("raw_input", raw.get("input")))
    out_type = type_name(raw.get("raw_output", raw.get("output")))
    if type(raw) is dict and _plain(raw, 0):
        return raw, in_type, out_type  # ours alone (just unmarshalled), and already JSON-safe
    fields = to_jsonable(raw, problems=snapshot.problems)
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


def _take_event_dict_log(fields: Dict[str, JSON], log: LogInfo) -> LogInfo:
    """Move structlog's own keys out of a snapshotted event dict into the log info."""
    message = fields.pop("event", None)
    logger = fields.pop("logger", log.logger)
    level = fields.pop("level", log.level)
    for key in [k for k in fields if k in _EVENT_DICT_SKIP or k[:1] == "_"]:
        del fields[key]
    return LogInfo(
        logger if type(logger) is str or logger is None else str(logger),
        level.upper() if type(level) is str else str(level),
        message,
        log.file,
        log.line,
        log.function,
        log.exception,
    )


class TestRun(NamedTuple):
    """phospho's test runner is running this process (``PHOSPHO_TEST_ID`` is set): with
    the metric ``evaluate``, events carry ``test_id``; with any other, they are not sent
    (as the phospho SDK does)."""

    test_id: str
    metric: Optional[str]

    @property
    def evaluated(self) -> bool:
        return self.metric == "evaluate"


def test_run() -> Optional[TestRun]:
    """The test run this process is part of, read from the environment now."""
    test_id = os.environ.get("PHOSPHO_TEST_ID")
    return TestRun(test_id, os.environ.get("PHOSPHO_TEST_METRIC")) if test_id else None


def build_event(
    snapshot: Snapshot,
    *,
    project_id: Optional[str] = None,
    version_id: Optional[str] = None,
    max_field_chars: Optional[int] = 100_000,
    test_id: Optional[str] = None,
) -> Dict[str, JSON]:
    """Turn a snapshot into a protocol event that passes the backend's strict validation.

    Problems found on the way are appended to ``snapshot.problems`` and listed in the
    event's metadata. ``max_field_chars=None`` leaves the size caps to ``encode``.
    Never raises.
    """
    problems = snapshot.problems
    fields, input_type, output_type = thaw(snapshot)
    log = snapshot.log
    if snapshot.task_id is not None:
        fields["task_id"] = snapshot.task_id
    if snapshot.from_event_dict:
        log = _take_event_dict_log(fields, log)
        loose = list(fields.items())
    else:
        # Records list fields last-first (see _snapshot): restore the caller's order.
        loose = list(reversed(list(fields.items())))
    raw_in = fields.pop("input", None)
    raw_out = fields.pop("output", None)
    explicit_raw_in = fields.pop("raw_input", None)
    explicit_raw_out = fields.pop("raw_output", None)
    # Bytes that hold a JSON object or array (a raw HTTP body, say) are that value, as
    # the phospho SDK reads them: the raw field keeps it, and the text is taken from it.
    if input_type == "bytes":
        if explicit_raw_in is not None:
            explicit_raw_in = _json_of(explicit_raw_in)
        else:
            raw_in = _json_of(raw_in)
    if output_type == "bytes":
        if explicit_raw_out is not None:
            explicit_raw_out = _json_of(explicit_raw_out)
        else:
            raw_out = _json_of(raw_out)
    metadata_value = fields.pop("metadata", None)
    if metadata_value is None:
        metadata: Dict[str, JSON] = {}
    elif isinstance(metadata_value, dict):
        metadata = dict(metadata_value)
    else:
        problems.append("metadata_not_dict")
        metadata = {"metadata": metadata_value}

    text_in = snapshot.input_text
    if text_in is None:
        if raw_in is None:
            problems.append("input_missing")
        elif type(raw_in) is not str and not isinstance(raw_in, (dict, list)):
            problems.append("input_not_text")
        text_in = input_text(raw_in)
    text_out = snapshot.output_text if snapshot.output_text is not None else output_text(raw_out)

    event: Dict[str, JSON] = {
        "task_id": None,
        "session_id": None,
        "input": text_in,
        "output": text_out,
        "client_created_at": int(snapshot.created),
        "project_id": project_id,
        "version_id": version_id,
    }
    if test_id is not None:
        event["test_id"] = test_id
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
    found = detect(event["raw_input"], event["raw_output"])
    if type(event["raw_output"]) is list:
        # A stream: its recorder read the model and usage off chunks raw_output may not hold
        # (past the chunk cap, or the last one a stop function held back) into its metadata.
        for key in _STREAM_FOUND:
            value = metadata.get(key)
            if key not in found and (type(value) is int or (key == "model" and type(value) is str)):
                found[key] = value
    for key, value in found.items():
        event[key] = value

    # Loose extras go into metadata (never top level, where they could collide with server
    # fields); an explicit metadata dict wins over them, and both win over our log_* keys.
    for key, value in loose:
        if key in fields:  # not taken by a protocol field above
            metadata.setdefault(key, value)
    for key, value in zip(_LOG_KEYS, log):
        if value is not None:
            metadata.setdefault(key, value)
    event["metadata"] = metadata
    if max_field_chars is not None:
        fit(event, problems, max_field_chars, None)
    _mark(metadata, problems)
    return event


def _json_of(value: JSON) -> JSON:
    """The JSON object or array a text (decoded bytes) holds, else the text itself."""
    if type(value) is not str or value.lstrip()[:1] not in ("{", "["):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return to_jsonable(parsed) if isinstance(parsed, (dict, list)) else value


def _mark(metadata: Dict[str, JSON], problems: List[str]) -> None:
    if problems:
        metadata[PROBLEMS_KEY] = [*sorted(set(problems))]


def encode(
    snapshot: Snapshot,
    *,
    project_id: Optional[str] = None,
    version_id: Optional[str] = None,
    max_field_chars: int = 100_000,
    max_bytes: Optional[int] = None,
    test_id: Optional[str] = None,
    transform: Optional[Callable[[Dict[str, JSON]], Optional[Dict[str, JSON]]]] = None,
) -> Optional[WireEvent]:
    """``build_event``, cut to size, as the ``WireEvent`` exporters receive. ``max_bytes``
    bounds the encoded event (``max_batch_bytes`` less a request's envelope); None when
    even truncation cannot bring it under that. ``transform`` (redaction) changes the
    event before it is cut and encoded; when it returns None, so does this, with
    ``FILTERED``. Never raises otherwise.
    """
    event = build_event(snapshot, project_id=project_id, version_id=version_id, max_field_chars=None,
                        test_id=test_id)
    if transform is not None:
        changed = transform(event)
        if changed is None:
            return FILTERED
        event = changed
    encoded = fit(event, snapshot.problems, max_field_chars, max_bytes)
    if encoded is None:
        return None
    return wire(event, encoded)


_tuple_new = tuple.__new__

#: What ``encode`` returns for an event its ``transform`` dropped (compare with ``is``).
FILTERED = WireEvent("", None, 0, b"")


def wire(event: Dict[str, JSON], encoded: bytes) -> WireEvent:
    """The ``WireEvent`` of an event dict and its encoding."""
    created = event.get("client_created_at")
    session = event.get("session_id")
    task_id = event["task_id"]
    return _tuple_new(WireEvent, (  # type: ignore[no-any-return]
        task_id if type(task_id) is str else str(task_id), session if type(session) is str else None,
        created if type(created) is int else 0, encoded,
    ))


_PLAIN_KEYS = frozenset({"input", "output", "metadata", "session_id", "task_id", "user_id", "version_id"})
_LOG_KEY_SET = frozenset(_LOG_KEYS)
_json_str = json_str


class PlainEncoder:
    """The wire event of the commonest item, a plain record (``_item.record_form``),
    written straight from its fields: the bytes ``encode`` makes, without a ``Snapshot``,
    an event tree or a second encoding of the input and output.

    It takes records whose task fields are a ``str`` input, and optionally a ``str``
    output, ``str`` ids and a JSON-plain ``metadata`` dict; ``encode`` returns None for
    any other item (and for one that would need truncating), which then takes
    ``_event.encode``. The log_* metadata of each call site (logger, level, message,
    file, line, function) is encoded once and kept. The tests check it against
    ``_event.encode``, byte for byte.
    """

    __slots__ = ("_project_id", "_version_id", "_project_version", "_version", "_log_parts", "_log_dicts")

    def __init__(self, project_id: Optional[str], version_id: Optional[str]) -> None:
        self._project_id, self._version_id = project_id, version_id
        self._project_version = ',"project_id":' + dumps(project_id).decode() + ',"version_id":'
        self._version = dumps(version_id).decode()
        self._log_parts: Dict[Tuple[Any, ...], str] = {}
        self._log_dicts: Dict[Tuple[Any, ...], Dict[str, Any]] = {}

    def encode(self, item: Any, max_field_chars: int, max_bytes: int) -> Optional[WireEvent]:
        """The ``WireEvent`` of ``item``, or None (see the class docstring). Never raises."""
        try:
            loaded = type(item) is bytes
            if loaded:
                item = _marshal_loads(item)  # a flat list (a backlog's), or (fields, created, line, site)
            if type(item) is list:
                # The flat form (``_item.plain_record``): its types were checked on the caller's thread.
                site, line, created, text_in, text_out, metadata = item
                log_key: Tuple[Any, ...] = (site, line)
                task_id = session_id = user_id = version_id = None
            else:
                parts = _unpacked(item, loaded)
                if parts is None:
                    return None
                log_key, created, text_in, text_out, metadata, task_id, session_id, user_id, version_id = parts
            if metadata is not None and not (type(metadata) is dict and _plain(metadata, 0)
                                             and _LOG_KEY_SET.isdisjoint(metadata)):
                return None
            stamp = int(created)
            fast_dumps = orjson_dumps()
            if fast_dumps is not None:
                # With orjson: the event as a dict, in one call (the general path's encoder).
                log = self._log_dicts.get(log_key)
                if log is None:
                    log = self._log_dict(log_key)
                if task_id is None:
                    task_id = new_task_id()
                tree = {"task_id": task_id, "session_id": session_id, "input": text_in, "output": text_out,
                        "client_created_at": stamp, "project_id": self._project_id,
                        "version_id": self._version_id if version_id is None else version_id}
                if user_id is not None:
                    tree["user_id"] = user_id
                tree["raw_input"] = text_in
                tree["raw_output"] = text_out
                tree["raw_input_type_name"] = "str"
                tree["raw_output_type_name"] = None if text_out is None else "str"
                tree["metadata"] = log if metadata is None else {**metadata, **log}
                encoded = fast_dumps(tree)
            else:
                log_part = self._log_parts.get(log_key)
                if log_part is None:
                    log_part = self._log_part(log_key)
                metadata_json = (dumps_text(metadata)[:-1] + "," if metadata else "{") + log_part + "}}"
                in_json = _json_str(text_in)
                out_json = "null" if text_out is None else _json_str(text_out)
                if task_id is None:
                    task_id = new_task_id()
                    id_json = '{"task_id":"' + task_id + '"'
                else:
                    id_json = '{"task_id":' + _json_str(task_id)
                encoded = "".join((
                    id_json, ',"session_id":', "null" if session_id is None else _json_str(session_id),
                    ',"input":', in_json, ',"output":', out_json, ',"client_created_at":', str(stamp),
                    self._project_version, self._version if version_id is None else _json_str(version_id),
                    "" if user_id is None else ',"user_id":' + _json_str(user_id),
                    ',"raw_input":', in_json, ',"raw_output":', out_json,
                    ',"raw_input_type_name":"str","raw_output_type_name":', "null" if text_out is None else '"str"',
                    ',"metadata":', metadata_json,
                )).encode("utf-8")
        except Exception:  # noqa: BLE001 - anything unusual (lone surrogates...): _event.encode decides
            return None
        if len(encoded) > max_field_chars or len(encoded) > max_bytes:
            return None  # something may need cutting: _event.encode does it
        return _tuple_new(WireEvent, (task_id, session_id, stamp, encoded))  # type: ignore[no-any-return]

    def _log_part(self, key: Tuple[Any, ...]) -> str:
        if len(self._log_parts) >= 512:
            self._log_parts.clear()  # messages that vary per call: keep the cache small
        part = self._log_parts[key] = dumps(_log_fields(key))[1:-1].decode("utf-8")
        return part

    def _log_dict(self, key: Tuple[Any, ...]) -> Dict[str, Any]:
        if len(self._log_dicts) >= 512:
            self._log_dicts.clear()  # as above
        log = self._log_dicts[key] = _log_fields(key)
        return log


def _unpacked(item: Any, loaded: bool) -> Optional[Tuple[Any, ...]]:
    """(log key, created, input, output, metadata, task id, session id, user id, version
    id) of a plain record whose fields are marshalled (``_item.plain_record``'s bytes
    form, ``loaded`` already, or its tuple form), or None where they are not the plain
    encoder's types."""
    if loaded:
        # A numbered call site: its parts were checked when it was numbered.
        fields, created, line, site = item
        if type(line) is not int:
            return None  # a hand-made record: 1.0 or True would find line 1's cached log fields
        log_key: Tuple[Any, ...] = (site, line)
    else:
        record = record_form(item)
        if record is None:
            return None
        frozen, created, name, level, msg, path, line, function = record
        if (type(line) is not int or type(name) is not str or type(level) is not str
                or type(path) is not str or (function is not None and type(function) is not str)):
            return None
        fields = _marshal_loads(frozen)
        log_key = record[2:]
    get = fields.get
    text_in, text_out = get("input"), get("output")
    if type(text_in) is not str or (text_out is not None and type(text_out) is not str):
        return None
    if len(fields) == 1 + ("output" in fields) + ("metadata" in fields):
        return log_key, created, text_in, text_out, get("metadata"), None, None, None, None
    if not _PLAIN_KEYS.issuperset(fields):
        return None
    ids = get("task_id"), get("session_id"), get("user_id"), get("version_id")
    for value in ids:
        if value is not None and type(value) is not str:
            return None
    return (log_key, created, text_in, text_out, get("metadata"), *ids)


def _log_fields(key: Tuple[Any, ...]) -> Dict[str, Any]:
    """The log_* metadata of a call site: ``key`` is (call site number, line) or the parts
    of a record's tuple form from the logger name on."""
    parts = key
    if len(key) == 2:  # (call site number, line)
        name, level, msg, path, function = site_parts(key[0])
        parts = (name, level, msg, path, key[1], function)
    return {k: v for k, v in zip(_LOG_KEYS, parts) if v is not None}


def event_budget(max_batch_bytes: int) -> int:
    """The most bytes one event may take so that a request holding it fits ``max_batch_bytes``."""
    return max(1, max_batch_bytes - ENVELOPE_BYTES)


def stored_event(encoded: bytes) -> WireEvent:
    """A stored event (a spool or local store row) back as a ``WireEvent``."""
    try:
        data = json.loads(encoded)
    except ValueError:
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("task_id"), str):
        data = {"task_id": "", **(data if isinstance(data, dict) else {})}
    return wire(data, encoded)


def fitted(event: WireEvent, max_field_chars: int, max_bytes: int) -> Optional[WireEvent]:
    """``event`` if it fits ``max_bytes`` (a stored event, from when limits were larger),
    else cut to fit; None if it cannot be."""
    if len(event.json) <= max_bytes:
        return event
    return shrink(event, max_field_chars, max_bytes)


def shrink(event: WireEvent, max_field_chars: int, max_bytes: int) -> Optional[WireEvent]:
    """``event`` cut to ``max_bytes`` (after a 413 for one event), or None if it cannot be
    (or is not an event at all: a damaged stored row)."""
    try:
        data = event.data()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        data["metadata"] = metadata = {}
    problems = [p for p in metadata.get(PROBLEMS_KEY) or [] if isinstance(p, str)]
    encoded = fit(data, problems, max_field_chars, max_bytes)
    return None if encoded is None else wire(data, encoded)


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


# -- truncation ---------------------------------------------------------------------


def fit(event: Dict[str, JSON], problems: List[str], max_field_chars: int, max_bytes: Optional[int]) -> Optional[bytes]:
    """Cut what is too long, visibly, and return the encoded event.

    First every text field, raw field and metadata value longer than ``max_field_chars``
    is cut to it. Then, while the event encodes to more than ``max_bytes``, the largest
    field left is cut to what removes the excess (at least halved), and when no single
    field is large, metadata keys are dropped from the end. Each cut ends with
    ``TRUNCATION_MARK`` and is named in ``metadata["phospho_logging_truncated"]``; the
    event's problems then include ``truncated``. Returns None when the event cannot be
    brought under ``max_bytes`` (ids and required fields are never cut).
    """
    metadata = event.get("metadata")
    if not isinstance(metadata, dict):
        event["metadata"] = metadata = {}
    _mark(metadata, problems)
    encoded = dumps(event)
    over_bytes = max_bytes is not None and len(encoded) > max_bytes
    if len(encoded) <= max_field_chars and not over_bytes:
        return encoded  # the usual case: no field can be over the limit
    cut: List[JSON] = list(metadata.get(TRUNCATED_KEY) or [])  # type: ignore[arg-type]
    for key in _CUTTABLE:
        value = event.get(key)
        if value is not None and _size(value) > max_field_chars:
            event[key] = _cut(value, max_field_chars)
            _note(cut, key)
    for key, value in list(metadata.items()):
        if key not in _OWN_KEYS and value is not None and _size(value) > max_field_chars:
            metadata[key] = _cut(value, max_field_chars)
            _note(cut, f"metadata.{key}")
    if cut:
        encoded = _remark(event, metadata, cut, problems)
    for _ in range(64):
        if max_bytes is None or len(encoded) <= max_bytes:
            return encoded
        excess = len(encoded) - max_bytes
        sizes = [(_size(event[k]), k) for k in _CUTTABLE if event.get(k)]
        sizes += [(_size(v), f"metadata.{k}") for k, v in metadata.items() if k not in _OWN_KEYS and v]
        size, name = max(sizes) if sizes else (0, "")
        if size >= 64:
            keep = max(16, min(size // 2, size - excess - len(TRUNCATION_MARK)))
            if name.startswith("metadata."):
                metadata[name[len("metadata."):]] = _cut(metadata[name[len("metadata."):]], keep)
            else:
                event[name] = _cut(event[name], keep)
            _note(cut, name)
        else:
            loose = [k for k in metadata if k not in _OWN_KEYS]
            if len(loose) < 2:
                return None
            dropped = loose[len(loose) // 2:]
            for key in dropped:
                del metadata[key]
            _note(cut, f"metadata ({len(dropped)} keys dropped)")
        encoded = _remark(event, metadata, cut, problems)
    return None


def _note(cut: List[JSON], name: str) -> None:
    if name not in cut:
        cut.append(name)


def _remark(event: Dict[str, JSON], metadata: Dict[str, JSON], cut: List[JSON], problems: List[str]) -> bytes:
    if "truncated" not in problems:
        problems.append("truncated")
    metadata[TRUNCATED_KEY] = cut
    _mark(metadata, problems)
    return dumps(event)


def _size(value: JSON) -> int:
    if type(value) is str:
        return len(value)
    if type(value) in (int, float, bool):
        return 0
    return len(input_text(value))  # compact JSON text for containers


def _cut(value: JSON, keep: int) -> str:
    text = value if type(value) is str else input_text(value)
    return text if len(text) <= keep else text[:keep] + TRUNCATION_MARK


def task_from_record(record: logging.LogRecord, **options: Any) -> Dict[str, JSON]:
    """The event a record becomes, built in one step (for tests and formatters)."""
    snapshot = snapshot_record(record, options.pop("input_to_str", None), options.pop("output_to_str", None),
                               options.pop("context", None))
    return build_event(snapshot, **options)
