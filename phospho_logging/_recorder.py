"""One call or stream -> one task, logged as an ordinary record.

``Recorder`` accounts for the chunks of one stream (text, a copy of the first chunks,
usage, timing) and logs its task exactly once; ``emit`` logs a task as a record on a
logger, so it reaches whatever handlers are configured. Shared by ``wrap`` and the stream
wrappers in ``_stream``; nothing here ever raises into the application.
"""

from __future__ import annotations

import contextvars
import logging
import marshal
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _diag
from ._extract import chunk_text, detect, input_text
from ._item import STANDARD_ATTRS
from ._lines import TEXT_CHUNKS, RawReader, parse_line
from ._serialize import to_jsonable
from ._snapshot import snap

#: (file, line, function) the task's record points at.
Where = Tuple[str, int, str]
StopFunction = Callable[[Any], bool]
TextFunction = Callable[[Any], str]

#: Chunks kept in ``raw_output``; the text of later chunks still counts.
MAX_RAW_CHUNKS = 1000

_perf = time.perf_counter
_dumps = marshal.dumps
_loads = marshal.loads


def resolve_logger(logger: Union[None, str, logging.Logger]) -> logging.Logger:
    """The logger tasks are logged on: ``phospho`` unless one is given."""
    if isinstance(logger, logging.Logger):
        return logger
    return logging.getLogger("phospho" if logger is None else logger)


def emit(
    logger: logging.Logger,
    level: int,
    message: str,
    where: Where,
    extra: Dict[str, Any],
    context: Optional[contextvars.Context] = None,
) -> None:
    """Log one task as an ordinary record at ``where``. Never raises."""
    try:
        if context is None:
            _emit(logger, level, message, where, extra)
        else:
            # The context of the call, not of whoever ends the stream (a GC pass, another
            # task): fields bound with phospho_logging.context apply as they did at the call.
            context.run(_emit, logger, level, message, where, extra)
    except Exception as exc:  # noqa: BLE001 - the app's call must not fail because of us
        _diag.warn_once("wrap_emit", "a wrapped call's task could not be logged: %r", exc)


def _emit(logger: logging.Logger, level: int, message: str, where: Where, extra: Dict[str, Any]) -> None:
    if logger.isEnabledFor(level):
        record = logger.makeRecord(logger.name, level, where[0], where[1], message, (), None, where[2], extra)
        logger.handle(record)


def split_fields(fields: Dict[str, Any], metadata: Dict[str, Any]) -> Dict[str, Any]:
    """Record extras from keyword fields; names a LogRecord owns go into ``metadata``."""
    extra: Dict[str, Any] = {}
    for key, value in fields.items():
        if key == "metadata":
            if isinstance(value, dict):
                for k, v in value.items():
                    metadata.setdefault(k, v)
            elif value is not None:
                metadata.setdefault("metadata", value)
        elif key in STANDARD_ATTRS or key in ("input", "output", "raw_output", "input_to_str", "output_to_str"):
            metadata[key] = value
        else:
            extra[key] = value
    return extra


def copy_value(value: Any) -> Any:
    """A deep copy made now, at C speed for builtin types (``marshal``); anything else is made
    JSON-safe at once. Either way the worker makes the task JSON-safe later."""
    try:
        return _loads(_dumps(value))
    except Exception:  # noqa: BLE001 - ValueError for foreign types; anything else alike
        return snap(value, [])


def snapshot_input(value: Any, input_to_str: Optional[TextFunction]) -> Tuple[Any, Any]:
    """(input, raw_input) for a task, copied now: the app may mutate ``value`` later.

    A custom ``input_to_str`` is applied here, to the original object, as the foundation
    does for records; if it fails, the default extraction is used and that is reported.
    """
    raw = copy_value(value)
    if input_to_str is None:
        return raw, raw
    try:
        text = input_to_str(value)
        if type(text) is str:
            return text, raw
        return input_text(to_jsonable(text)), raw
    except Exception as exc:  # noqa: BLE001 - the user's function must not lose the task
        _diag.warn_once("input_to_str", "input_to_str raised %r; the default extraction is used", exc)
        return raw, raw


def error_metadata(exc: BaseException) -> Dict[str, Any]:
    """``error_type`` (module-qualified for non-builtins) and ``error_message``."""
    cls = type(exc)
    module = getattr(cls, "__module__", "builtins")
    name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a user __str__
        message = f"<unprintable {cls.__name__}>"
    return {"error_type": name, "error_message": message}


def error_level(exc: BaseException) -> int:
    """ERROR for a failure; WARNING for a cancellation, an interrupt, an exit."""
    return logging.ERROR if isinstance(exc, Exception) else logging.WARNING


def caller(depth: int) -> Where:
    """Where the code ``depth`` frames up is (cheap: one frame lookup)."""
    try:
        frame = sys._getframe(depth + 1)
        return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name
    except Exception:  # noqa: BLE001 - not CPython, or too shallow a stack
        return __file__, 0, "log_stream"


class Recorder:
    """What one stream has produced so far, and the one task it becomes."""

    __slots__ = (
        "_logger", "_message", "_where", "_extra", "_metadata", "_started", "_context", "_stop", "_stop_ends",
        "_output_to_str", "_once", "_first", "_count", "_parts", "_raw", "_found", "_finish_reason", "_silent",
        "_plain", "_reader", "_by",
    )

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        where: Where,
        extra: Dict[str, Any],
        metadata: Dict[str, Any],
        started: float,
        stop: Optional[StopFunction] = None,
        stop_ends: bool = False,
        output_to_str: Optional[TextFunction] = None,
    ) -> None:
        self._logger = logger
        self._message = message
        self._where = where
        self._extra = extra
        self._metadata = metadata
        self._started = started
        self._context = contextvars.copy_context()
        self._stop = stop
        self._stop_ends = stop_ends  # the SDK's MutableGenerator: the stop chunk ends iteration
        self._output_to_str = output_to_str
        self._once = [True]  # list.pop() is atomic: the one who pops it logs the task
        self._first: Optional[float] = None
        self._count = 0
        self._parts: List[str] = []
        self._raw: List[Any] = []
        self._found: Dict[str, Any] = {}
        self._finish_reason: Optional[str] = None
        self._silent = False
        self._plain = False  # str chunks known to be plain text: the fast path
        self._reader: Optional[RawReader] = None  # bytes, JSON lines, server-sent events
        self._by: Optional[Recorder] = None  # the recorder that logs this stream's task instead

    def silence(self, by: Recorder) -> None:
        """Another logged stream consumes this one and logs the task: this one logs none
        (its stop function still applies, and what the chunk it stops at says goes to ``by``)."""
        self._silent = True
        self._by = by
        self._parts, self._raw = [], []

    def add(self, chunk: Any) -> bool:
        """Account for one chunk; True when ``stop(chunk)`` says the task ends here."""
        if not self._once:
            return False  # after the end (a stream that goes on after stop): pass through
        stop = self._stop
        if stop is not None and self._stop_ends and self._stopped(stop, chunk):
            # Not yielded, so not part of the output; its model and token counts still are
            # (Ollama's last chunk, the one the SDK's stop functions look for, holds them).
            self._peek(chunk)
            return True
        if self._silent:
            return stop is not None and not self._stop_ends and self._stopped(stop, chunk)
        if self._count == 0:
            self._first = _perf()
        self._count += 1
        try:
            self._take(chunk)
        except Exception as exc:  # noqa: BLE001 - one odd chunk must not break the stream
            _diag.warn_once("stream_chunk", "a streamed chunk could not be recorded: %r", exc)
        return stop is not None and not self._stop_ends and self._stopped(stop, chunk)

    @staticmethod
    def _stopped(stop: StopFunction, chunk: Any) -> bool:
        try:
            return bool(stop(chunk))
        except Exception as exc:  # noqa: BLE001
            _diag.warn_once("stream_stop", "the stream's stop function raised %r; treated as False", exc)
            return False

    def _take(self, chunk: Any) -> None:
        kind = type(chunk)
        if kind is str and self._plain:
            self._parts.append(chunk)
            if len(self._raw) < MAX_RAW_CHUNKS:
                self._raw.append(chunk)
            elif len(self._raw) == MAX_RAW_CHUNKS:
                self._raw.append(None)  # marks the cap
            return
        if kind in TEXT_CHUNKS:
            self._read(chunk)
            return
        value = chunk
        if kind is not dict and chunk is not None:
            dump = getattr(kind, "model_dump", None)
            # pydantic chunks (openai): the fields that came over the wire, not every default.
            value = chunk.model_dump(exclude_unset=True) if callable(dump) else to_jsonable(chunk)
        self._parts.append(chunk_text(value) if self._output_to_str is None else self._text(chunk, value))
        raw = self._raw
        if len(raw) < MAX_RAW_CHUNKS:
            try:
                raw.append(_dumps(value))  # a C-speed copy; JSON safety is the worker's job
            except Exception:  # noqa: BLE001 - foreign types inside: copy them the slow way
                raw.append(_dumps(to_jsonable(value)))
        elif len(raw) == MAX_RAW_CHUNKS:
            raw.append(None)
        if type(value) is dict:
            self._inspect(value)

    def _read(self, chunk: Any) -> None:
        """A chunk of text or bytes: plain text, JSON lines or server-sent events."""
        reader = self._reader
        if reader is None:
            reader = self._reader = RawReader(chunk_text)
        items = reader.feed(chunk)
        if reader.plain and type(chunk) is str and self._output_to_str is None:
            self._plain = True  # from now on str chunks skip the reader
        if self._output_to_str is not None:
            self._parts.append(self._text(chunk, "".join(text for text, _ in items)))
            self._keep(items, False)
        else:
            self._keep(items, True)

    def _keep(self, items: List[Tuple[str, Any]], with_text: bool) -> None:
        raw = self._raw
        for text, value in items:
            if with_text:
                self._parts.append(text)
            if value is None:
                continue
            if len(raw) < MAX_RAW_CHUNKS:
                raw.append(value if type(value) is str else _dumps(value))
            elif len(raw) == MAX_RAW_CHUNKS:
                raw.append(None)
            if type(value) is dict:
                self._inspect(value)

    def _peek(self, chunk: Any) -> None:
        """Model, usage and finish reason of a chunk that is not part of the task."""
        if self._silent:
            if self._by is not None:
                self._by._peek(chunk)
            return
        try:
            kind = type(chunk)
            if kind is dict:
                value = chunk
            elif kind in TEXT_CHUNKS:
                value = parse_line(chunk)
            else:
                dump = getattr(kind, "model_dump", None)
                value = chunk.model_dump(exclude_unset=True) if callable(dump) else to_jsonable(chunk)
            if type(value) is dict:
                self._inspect(value)
        except Exception as exc:  # noqa: BLE001
            _diag.warn_once("stream_chunk", "a streamed chunk could not be recorded: %r", exc)

    def _text(self, chunk: Any, value: Any) -> str:
        convert = self._output_to_str
        if convert is not None:
            try:
                text = convert(chunk)
                if type(text) is str:
                    return text
            except Exception as exc:  # noqa: BLE001
                _diag.warn_once("output_to_str", "output_to_str raised %r; the default extraction is used", exc)
        return chunk_text(value)

    def _inspect(self, value: Dict[str, Any]) -> None:
        """Usage (openai's include_usage chunk, Ollama's last chunk), model, finish reason."""
        if value.get("usage") or "eval_count" in value:
            self._found.update(detect(None, value))
        elif "model" in value and "model" not in self._found:
            model = value["model"]
            if type(model) is str:
                self._found["model"] = model
        choices = value.get("choices")
        if type(choices) is list and choices and type(choices[0]) is dict:
            reason = choices[0].get("finish_reason")
            if type(reason) is str:
                self._finish_reason = reason
        elif value.get("done_reason") and type(value["done_reason"]) is str:  # Ollama
            self._finish_reason = value["done_reason"]
        error = value.get("error")
        if error:  # an error the server streamed instead of text (Ollama, OpenAI-compatible)
            message = error.get("message") if type(error) is dict else error
            self._found["stream_error"] = message if type(message) is str else str(error)

    def finish(self, end: str, error: Optional[BaseException] = None) -> None:
        """Log the task, the first time only. Never raises."""
        try:
            self._once.pop()
        except IndexError:
            return
        if self._silent:
            return
        try:
            self._log(end, error)
        except Exception as exc:  # noqa: BLE001
            _diag.warn_once("stream_finish", "a stream's task could not be built: %r", exc)
        finally:
            self._parts, self._raw = [], []  # a long-lived wrapper should not hold them

    def _log(self, end: str, error: Optional[BaseException]) -> None:
        now = _perf()
        if self._reader is not None:  # a line the stream did not end with a newline
            items = self._reader.end()
            if self._output_to_str is not None and items:
                self._parts.append("".join(text for text, _ in items))
            self._keep(items, self._output_to_str is None)
        complete = end in ("exhausted", "stop")
        metadata = dict(self._metadata)
        metadata["latency_s"] = round(now - self._started, 6)
        if self._first is not None:
            metadata["time_to_first_chunk_s"] = round(self._first - self._started, 6)
        metadata["chunks"] = self._count
        metadata["stream_complete"] = complete
        metadata["stream_end"] = end
        if self._finish_reason is not None:
            metadata["finish_reason"] = self._finish_reason
        metadata.update(self._found)
        raw: List[Any] = []
        for item in self._raw:
            if item is None:
                metadata["raw_output_truncated"] = True
                break
            raw.append(item if type(item) is str else _loads(item))
        level = logging.INFO
        message = self._message
        if error is not None:
            metadata.update(error_metadata(error))
            level = error_level(error)
            message = f"{message} raised {type(error).__name__}"
        elif not complete:
            message = f"{message} (stream {end.replace('_', ' ')})"
        extra = dict(self._extra)
        extra["output"] = "".join(self._parts) if self._count or complete else None
        extra["raw_output"] = raw or None
        extra["metadata"] = metadata
        emit(self._logger, level, message, self._where, extra, self._context)
