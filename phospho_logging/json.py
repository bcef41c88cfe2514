"""JSON lines that carry the task: a python-json-logger formatter.

For apps that ship their logs as JSON lines from stdout (Kubernetes -> Vector, Fluent Bit,
Loki...). A record that carries a task renders as one JSON object holding the task's
protocol fields, exactly as they would be sent to phospho, next to the log fields the
formatter is configured for. Every other record renders as python-json-logger renders it.

Supports python-json-logger 2.0.7 and later (3.x and 4.x through ``pythonjsonlogger.json``).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from typing import Any, Dict, FrozenSet, List, Optional, Set

try:  # python-json-logger 3.x/4.x: the old path still exists there, but warns
    from pythonjsonlogger.json import JsonFormatter as _JsonFormatter
except ImportError:
    try:  # python-json-logger 2.0.7
        from pythonjsonlogger.jsonlogger import JsonFormatter as _JsonFormatter  # type: ignore[no-redef,attr-defined,unused-ignore]
    except ImportError as exc:
        raise ImportError(
            "phospho_logging.json needs python-json-logger: pip install python-json-logger"
        ) from exc

from . import _configure, _context, _diag
from ._config import TextFunction, resolve
from ._event import build_event
from ._feedback import is_feedback
from ._item import STANDARD_ATTRS, Snapshot
from ._redact import RedactError, make_redaction, mask_text
from ._serialize import JSON, dumps, to_jsonable
from ._snapshot import carries_task, snapshot_record

__all__ = ["PhosphoJsonFormatter"]

# Private (underscore) attributes of the stand-in record handed to python-json-logger:
# it never renders underscore keys, so they carry our state through its format() safely.
_EVENT = "_phospho_logging_event"
_ERROR = "_phospho_logging_error"

#: Log-field values left as they are for python-json-logger's encoder; anything else in a
#: task line goes through ``to_jsonable`` first, so the line stays valid JSON (no NaN, no
#: cycles, no raising repr) whatever the format string pulls in.
_PLAIN = frozenset({str, bool, type(None), datetime.datetime, datetime.date, datetime.time})
_MESSAGE_DICT_KEYS = ("exc_info", "stack_info")


class PhosphoJsonFormatter(_JsonFormatter):
    """python-json-logger's ``JsonFormatter`` that renders task-carrying records as tasks.

    A record with an ``input`` (``extra={"input": ..., "output": ...}``) becomes one JSON
    object: the log fields this formatter is configured for (``fmt``, ``timestamp``,
    ``static_fields``, ``rename_fields``...), then the task's protocol fields (``task_id``,
    ``session_id``, ``input``, ``output``, ``metadata``, ``raw_input``...) exactly as
    ``PhosphoHandler`` would send them. Task fields win over log fields of the same name and
    are never renamed. Loose extras appear inside ``metadata`` only, not at the top level.
    Fields bound with ``phospho_logging.context()`` apply. Other records render unchanged.

    ``format()`` never raises for a task-carrying record: the task is made strict-valid
    whatever it holds, and if rendering it fails the record is rendered as a plain
    python-json-logger line with a ``phospho_logging_error`` field instead.

    Args:
        *args: python-json-logger's positional arguments (``fmt``, ``datefmt``, ``style``).
        project_id: the ``project_id`` field of every task.
        version_id: the default ``version_id`` of every task.
        max_field_chars: longer text fields and metadata values are truncated, visibly.
        input_to_str: a function (or ``"module:function"``) turning the input into text.
        output_to_str: the same for the output.
        **kwargs: python-json-logger's keyword arguments (``rename_fields``,
            ``static_fields``, ``timestamp``, ``json_ensure_ascii``...). ``format`` is
            accepted as a spelling of ``fmt``, as ``logging.config.dictConfig`` passes it.

    Raises:
        ValueError: an option of the wrong kind (``max_field_chars="many"``, an
            ``input_to_str`` that cannot be imported...).
        TypeError: both ``fmt`` and ``format`` given.

    Example::

        handler = logging.StreamHandler()
        handler.setFormatter(PhosphoJsonFormatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("app").addHandler(handler)
    """

    def __init__(
        self,
        *args: Any,
        project_id: Optional[str] = None,
        version_id: Optional[str] = None,
        max_field_chars: Optional[int] = None,
        input_to_str: Optional[TextFunction] = None,
        output_to_str: Optional[TextFunction] = None,
        redact: Any = None,
        **kwargs: Any,
    ) -> None:
        if "format" in kwargs:
            if "fmt" in kwargs or args:
                raise TypeError("PhosphoJsonFormatter takes fmt or format, not both")
            kwargs["fmt"] = kwargs.pop("format")
        if project_id is not None and not isinstance(project_id, str):
            raise ValueError(f"phospho_logging option project_id must be a string, got {project_id!r}")
        # Explicit values only: a formatter has no credentials to check, and what it prints
        # should not change with the environment of the process.
        self._options = resolve(
            {
                "version_id": version_id,
                "max_field_chars": max_field_chars,
                "input_to_str": input_to_str,
                "output_to_str": output_to_str,
                "redact": redact,
            },
            environ={},
        )
        self._redact_given = redact is not None
        self._project_id = project_id
        super().__init__(*args, **kwargs)
        # What the stand-in record keeps: LogRecord's own attributes and the fields the
        # format string asks for. Everything else is a loose extra, already in metadata.
        required: List[str] = list(getattr(self, "_required_fields", None) or ())
        self._keep: FrozenSet[str] = STANDARD_ATTRS | frozenset(required)
        self._reported: Set[str] = set()

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one JSON line; a task-carrying record with its task fields."""
        if not carries_task(record):
            if is_feedback(record.__dict__) and self._redact_setting() is not None:
                # A feedback's notes and source are free text: masked as the task's texts are.
                proxy = _blank(record)
                proxy.__dict__.update(record.__dict__)
                for key in ("notes", "source"):
                    if isinstance(proxy.__dict__.get(key), str):
                        proxy.__dict__[key] = mask_text(proxy.__dict__[key])
                return super().format(proxy)
            return super().format(record)
        try:
            return self._format_task(record)
        except Exception as exc:  # noqa: BLE001 - a log line must never raise into the app
            return self._format_fallback(record, exc)

    def add_fields(self, log_data: Dict[str, Any], record: logging.LogRecord, message_dict: Dict[str, Any]) -> None:
        """python-json-logger's fields, then the task's fields for a task-carrying record."""
        state = record.__dict__
        event: Optional[Dict[str, JSON]] = state.get(_EVENT)
        if event is None:
            super().add_fields(log_data, record, message_dict)
            error = state.get(_ERROR)
            if error is not None:
                log_data["phospho_logging_error"] = error
            return
        # A dict message's own keys are task fields and extras (in the task already); only
        # the traceback fields python-json-logger adds to it are log fields.
        kept = {key: message_dict[key] for key in _MESSAGE_DICT_KEYS if key in message_dict}
        super().add_fields(log_data, record, kept)
        for key, value in log_data.items():
            if type(value) not in _PLAIN and key not in event:
                log_data[key] = _json_safe(value)
        log_data.update(event)

    def _format_task(self, record: logging.LogRecord) -> str:
        options = self._options
        snapshot = snapshot_record(record, options.input_to_str, options.output_to_str, _context.current())
        event = build_event(
            snapshot,
            project_id=self._project_id,
            version_id=options.version_id,
            max_field_chars=options.max_field_chars,
        )
        setting = self._redact_setting()
        redaction = make_redaction(setting)
        if redaction is not None:
            try:
                redacted = redaction(event)
            except RedactError as exc:
                _diag.warn_once("json_redact_error", "%s; the task's fields are left out of the JSON line", exc)
                redacted = None
            if redacted is None:  # dropped by your redact function: a plain line, no task fields
                proxy = _blank(record)
                proxy.__dict__ = {key: value for key, value in record.__dict__.items() if key in self._keep}
                proxy.__dict__["msg"], proxy.__dict__["args"] = _message(record, snapshot), None
                return super().format(proxy)
            event = redacted
        if snapshot.problems:
            self._report(snapshot.problems)
        # python-json-logger renders a stand-in: the caller's record is left untouched, and
        # the loose extras (in the task's metadata already) are not repeated at the top level.
        keep = self._keep
        state = {key: value for key, value in record.__dict__.items() if key in keep}
        proxy = _blank(record)
        proxy.__dict__ = state
        if type(record.msg) is dict:
            state["msg"] = dict(record.msg)
        else:
            # Formatted once, safely: a bad %-format must not lose the task.
            state["msg"] = _message(record, snapshot)
            state["args"] = None
            if redaction is not None:
                state["msg"] = mask_text(state["msg"])  # the line's message: the same masks
        if redaction is not None:
            # The line's other texts: the fields the format names, and the traceback.
            for key, value in list(state.items()):
                if key not in STANDARD_ATTRS and type(value) is str:
                    state[key] = mask_text(value)
            if record.exc_info:
                state["exc_text"] = mask_text(str(self.formatException(record.exc_info)))
                state["exc_info"] = None
            elif isinstance(state.get("exc_text"), str):
                state["exc_text"] = mask_text(state["exc_text"])
            if isinstance(state.get("stack_info"), str):
                state["stack_info"] = mask_text(state["stack_info"])
        state[_EVENT] = event
        return super().format(proxy)

    def _redact_setting(self) -> Any:
        """This formatter's ``redact=``; else the configured pipeline's; else PHOSPHO_REDACT."""
        if self._redact_given:
            return self._options.redact
        return _configured_redact()

    def _format_fallback(self, record: logging.LogRecord, exc: Exception) -> str:
        reason = _describe(exc)
        _diag.warn_once(
            "json_format_error",
            "a task could not be rendered by PhosphoJsonFormatter; logged as a plain line: %s",
            reason,
        )
        try:
            proxy = _blank(record)
            proxy.__dict__.update(record.__dict__)
            if type(record.msg) is dict:
                proxy.msg = dict(record.msg)
            proxy.__dict__[_ERROR] = reason
            return super().format(proxy)
        except Exception:  # noqa: BLE001 - the plain line fails too: a minimal valid line
            fields = {
                "name": getattr(record, "name", None),
                "levelname": getattr(record, "levelname", None),
                "message": _plain_message(record),
                "phospho_logging_error": reason,
            }
            prefix = getattr(self, "prefix", "")
            return (prefix if type(prefix) is str else "") + dumps(to_jsonable(fields)).decode("utf-8")

    def _report(self, problems: List[str]) -> None:
        for tag in problems:
            if tag not in self._reported:
                self._reported.add(tag)
                _diag.warn_once(
                    "problem:" + tag,
                    "a task had to be adjusted (%s); it was logged best-effort and marked in "
                    "metadata['phospho_logging_problems']",
                    tag,
                )


def _configured_redact() -> Any:
    """The ``redact`` option of the pipeline ``configure()`` installed; without one, that of
    ``PHOSPHO_REDACT`` (a bad value there is said once and taken as on: privacy first)."""
    pipeline = _configure.installed
    if pipeline is not None:
        return pipeline.options.redact
    value = os.environ.get("PHOSPHO_REDACT")
    if not value:
        return None
    try:
        return resolve({}, environ={"PHOSPHO_REDACT": value}).redact
    except (TypeError, ValueError) as exc:
        _diag.warn_once("json_redact_env", "PHOSPHO_REDACT: %s; the JSON lines are masked with the built-in masks",
                        exc)
        return True


def _blank(record: logging.LogRecord) -> logging.LogRecord:
    """An empty instance of the record's class, to fill with chosen attributes."""
    return object.__new__(type(record))


def _message(record: logging.LogRecord, snapshot: Snapshot) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - snapshot_record already recorded message_format
        message = snapshot.log.message
        return message if type(message) is str else dumps(message).decode("utf-8")


def _plain_message(record: logging.LogRecord) -> Any:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - a bad %-format: the template, made JSON-safe below
        return getattr(record, "msg", None)


def _json_safe(value: Any) -> Any:
    if type(value) is float and math.isfinite(value):
        return value
    return to_jsonable(value)


def _describe(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - an exception whose str() raises
        text = type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
