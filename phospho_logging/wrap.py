"""``wrap``: log every call of a function (an LLM client method, your own) as one task.

The call's arguments, bound to their parameter names, are copied when the call starts;
the task is logged when the result is known: after the return, after the ``await``, or
when a returned stream ends (see ``_stream``). It is an ordinary record on the
``phospho`` logger (or the one given), so it goes wherever that logger's handlers send it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
import types
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union, overload

from . import _diag
from ._recorder import (
    Recorder,
    StopFunction,
    TextFunction,
    Where,
    caller,
    copy_value,
    emit,
    error_level,
    error_metadata,
    resolve_logger,
    snapshot_input,
)
from ._stream import LoggedAsyncStream, LoggedStream, is_async_stream

__all__ = ["wrap"]

F = TypeVar("F", bound=Callable[..., Any])
_perf = time.perf_counter
#: Keywords of ``wrap`` that set task fields; every other extra keyword is metadata.
_TASK_FIELDS = ("session_id", "user_id", "version_id")
#: openai's and anthropic's stream classes are called this; any iterator counts with stream=True.
_STREAM_CLASSES = frozenset({"Stream", "AsyncStream"})
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class _Binder:
    """Names a call's arguments as ``inspect.Signature.bind_partial`` would, faster.

    Only what the caller passed is named (no defaults: openai's are sentinels), ``**kwargs``
    are flattened, and a leading ``self``/``cls`` is dropped.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.positional: List[str] = []
        self.var_positional: Optional[str] = None
        self.var_keyword: Optional[str] = None
        try:
            self.signature: Optional[inspect.Signature] = inspect.signature(fn)
        except Exception:  # noqa: BLE001 - builtins without a signature, or a hostile __signature__
            self.signature = None
            return
        for param in self.signature.parameters.values():
            if param.kind in _POSITIONAL:
                self.positional.append(param.name)
            elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                self.var_positional = param.name
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                self.var_keyword = param.name
        self.drop = self.positional[0] if self.positional and self.positional[0] in ("self", "cls") else None

    def bind(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Dict[str, Any]:
        if self.signature is None:
            return {"args": list(args), **kwargs} if args else dict(kwargs)
        if not args:
            return dict(kwargs)
        bound = dict(zip(self.positional, args))
        if len(args) > len(self.positional):
            if self.var_positional is None:
                return {"args": list(args), **kwargs}  # a call that will fail anyway
            bound[self.var_positional] = list(args[len(self.positional):])
        for key, value in kwargs.items():
            if key in bound:
                return {"args": list(args), **kwargs}
            bound[key] = value
        if self.drop is not None:
            bound.pop(self.drop, None)
        return bound


def _input_of(arguments: Dict[str, Any]) -> Any:
    """The task's input: the request itself for a ``messages``/``prompt`` call, the one
    argument of a one-argument call, else all the named arguments."""
    if "messages" in arguments or "prompt" in arguments or len(arguments) != 1:
        return arguments
    (value,) = arguments.values()
    return value if isinstance(value, (str, list, dict)) else arguments


def _where(fn: Callable[..., Any]) -> Where:
    """The wrapped function's own definition: where its tasks' records point."""
    try:
        target = inspect.unwrap(fn)
        code = getattr(getattr(target, "__func__", target), "__code__", None)
        name = str(getattr(target, "__qualname__", None) or getattr(fn, "__name__", "wrapped"))
        if code is not None:
            return str(code.co_filename), int(code.co_firstlineno), name
        return __file__, 0, name
    except Exception:  # noqa: BLE001 - exotic callables
        return __file__, 0, "wrapped"


#: Keyword arguments that are the call's content, not its settings (never in metadata).
_CONTENT_KEYS = frozenset({"messages", "prompt", "input", "system", "contents", "query", "question", "text"})
#: A text keyword argument longer than this is content, not a setting.
SETTING_MAX_CHARS = 200
_SCALARS = (str, int, float, bool)


def _settings(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The call's keyword arguments that are settings (``temperature=0.2``,
    ``max_tokens=50``, ``style="short"``): JSON scalars, texts up to SETTING_MAX_CHARS,
    not the content keys. The phospho SDK sends them at the top level, where the backend
    files them as metadata the dashboard filters on; here they go into the metadata."""
    found = {}
    for key, value in kwargs.items():
        if type(key) is not str or key in _CONTENT_KEYS or type(value) not in _SCALARS:
            continue
        if type(value) is str and len(value) > SETTING_MAX_CHARS:
            continue
        if type(value) is float and not math.isfinite(value):
            continue
        found[key] = value
    return found


class _Call:
    __slots__ = ("input", "raw_input", "started", "stream_flag", "where", "settings")

    def __init__(self, input: Any, raw_input: Any, started: float, stream_flag: bool, where: Where,
                 settings: Optional[Dict[str, Any]] = None) -> None:
        self.input = input
        self.raw_input = raw_input
        self.started = started
        self.stream_flag = stream_flag
        self.where = where  # the caller's line: what the task's log_file/log_line point at
        self.settings = settings or {}  # the call's keyword settings, for the metadata


class _Wrapped:
    """The options of one ``wrap`` and what a call does with them; never raises into the app."""

    def __init__(self, fn: Callable[..., Any], logger: Union[None, str, logging.Logger],
                 metadata: Optional[Dict[str, Any]], extra_metadata: Dict[str, Any], stream: Optional[bool],
                 stop: Optional[StopFunction], input_to_str: Optional[TextFunction],
                 output_to_str: Optional[TextFunction]) -> None:
        self.binder = _Binder(fn)
        self.logger = resolve_logger(logger)
        self.where = _where(fn)
        self.message = "wrap: " + self.where[2]
        self.metadata: Dict[str, Any] = dict(metadata or {})
        self.fields: Dict[str, Any] = {}
        for key, value in extra_metadata.items():
            if key in _TASK_FIELDS:
                if value is not None:
                    self.fields[key] = value
            else:
                self.metadata[key] = value
        self.stream = stream
        self.stop = stop
        self.input_to_str = input_to_str
        self.output_to_str = output_to_str

    def start(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[_Call]:
        """Copy the call's arguments now: the app may mutate them while a stream runs."""
        try:
            arguments = self.binder.bind(args, kwargs)
            flag = arguments.get("stream") is True
            raw = copy_value(arguments)
            if self.input_to_str is not None:
                value, _ = snapshot_input(_input_of(arguments), self.input_to_str)
            else:
                value = _input_of(raw) if type(raw) is dict else raw
            return _Call(value, raw, _perf(), flag, caller(2), _settings(kwargs))  # caller(2): the wrapper's caller
        except Exception as exc:  # noqa: BLE001
            _diag.warn_once("wrap_start", "a wrapped call's arguments could not be recorded: %r", exc)
            return None

    def _extra(self, call: _Call, metadata: Dict[str, Any]) -> Dict[str, Any]:
        extra = dict(self.fields)
        extra["input"] = call.input
        extra["raw_input"] = call.raw_input
        extra["metadata"] = metadata
        return extra

    def failed(self, call: Optional[_Call], exc: BaseException) -> None:
        """Log the task of a call that raised ``exc`` (the caller re-raises it)."""
        if call is None:
            return
        try:
            metadata = {**call.settings, **self.metadata}
            metadata["latency_s"] = round(_perf() - call.started, 6)
            metadata.update(error_metadata(exc))
            extra = self._extra(call, metadata)
            extra["output"] = None
            emit(self.logger, error_level(exc), f"{self.message} raised {type(exc).__name__}", call.where, extra)
        except Exception as err:  # noqa: BLE001
            _diag.warn_once("wrap_failed", "a failed call's task could not be logged: %r", err)

    def returned(self, call: Optional[_Call], result: Any) -> Any:
        """Log the task of a call that returned ``result``; what the caller gets back:
        ``result``, or the stream or coroutine wrapped so that the task is logged later."""
        if call is None:
            return result
        try:
            if inspect.iscoroutine(result):
                return self._awaited(call, result)  # a sync def returning a coroutine (openai's async create)
            stream = self._stream(call, result)
            if stream is not None:
                return stream
            metadata = {**call.settings, **self.metadata}
            metadata["latency_s"] = round(_perf() - call.started, 6)
            extra = self._extra(call, metadata)
            extra["output"] = result
            if self.output_to_str is not None:
                extra["output_to_str"] = self.output_to_str
            emit(self.logger, logging.INFO, self.message, call.where, extra)
        except Exception as exc:  # noqa: BLE001
            _diag.warn_once("wrap_returned", "a wrapped call's task could not be logged: %r", exc)
        return result

    async def _awaited(self, call: _Call, coroutine: Any) -> Any:
        try:
            result = await coroutine
        except BaseException as exc:
            self.failed(call, exc)
            raise
        return self.returned(call, result)

    def _stream(self, call: _Call, result: Any) -> Any:
        if self.stream is False:
            return None
        kind = type(result)
        flagged = self.stream is True or call.stream_flag
        # A logged stream returned by the function (log_stream, MutableGenerator): the
        # task is this call's, and that stream logs none.
        known = flagged or kind.__name__ in _STREAM_CLASSES or isinstance(result, (LoggedStream, LoggedAsyncStream))
        if kind is types.GeneratorType or (known and hasattr(kind, "__next__")):
            return LoggedStream(result, self.recorder(call))
        if kind is types.AsyncGeneratorType or (known and is_async_stream(result)):
            return LoggedAsyncStream(result, self.recorder(call))
        return None

    def recorder(self, call: Optional[_Call]) -> Recorder:
        if call is None:  # the arguments could not be copied: the stream is still logged
            call = _Call(None, None, _perf(), False, self.where)
        extra = self._extra(call, {})
        del extra["metadata"]
        return Recorder(self.logger, self.message, call.where, extra, {**call.settings, **self.metadata},
                         call.started, self.stop, False, self.output_to_str)


@overload
def wrap(
    fn: F,
    *,
    metadata: Optional[Dict[str, Any]] = ...,
    logger: Union[None, str, logging.Logger] = ...,
    stream: Optional[bool] = ...,
    stop: Optional[StopFunction] = ...,
    input_to_str: Optional[TextFunction] = ...,
    output_to_str: Optional[TextFunction] = ...,
    **extra_metadata: Any,
) -> F: ...


@overload
def wrap(
    fn: None = ...,
    *,
    metadata: Optional[Dict[str, Any]] = ...,
    logger: Union[None, str, logging.Logger] = ...,
    stream: Optional[bool] = ...,
    stop: Optional[StopFunction] = ...,
    input_to_str: Optional[TextFunction] = ...,
    output_to_str: Optional[TextFunction] = ...,
    **extra_metadata: Any,
) -> Callable[[F], F]: ...


def wrap(
    fn: Optional[Callable[..., Any]] = None,
    *,
    metadata: Optional[Dict[str, Any]] = None,
    logger: Union[None, str, logging.Logger] = None,
    stream: Optional[bool] = None,
    stop: Optional[StopFunction] = None,
    input_to_str: Optional[TextFunction] = None,
    output_to_str: Optional[TextFunction] = None,
    **extra_metadata: Any,
) -> Any:
    """Log each call of ``fn`` as one phospho task; the call itself is unchanged.

    Works on sync and ``async def`` functions, generator and async generator functions,
    methods (as a decorator in a class, or on a bound method such as
    ``client.chat.completions.create``), and functions returning a stream: an openai
    ``Stream``/``AsyncStream``, a generator, or any iterator when the call passes
    ``stream=True``. A stream is passed through chunk by chunk and logged when it ends.

    The input is the call's arguments by parameter name (``raw_input``); its text is the
    last message of a ``messages=`` request, or the argument of a one-argument call.
    Metadata gets ``latency_s`` (and ``time_to_first_chunk_s``, ``chunks``,
    ``stream_complete``, ``stream_end`` for streams). A call that raises is logged at
    ERROR with ``error_type`` and ``error_message`` and no output, and the exception
    propagates unchanged.

    Args:
        fn: the function; omit it to get a decorator (``@wrap(metadata=...)``).
        metadata: task metadata for every call.
        logger: the logger (or its name) to log on; default ``phospho``.
        stream: ``True`` treats any returned iterator as a stream, ``False`` never
            does; ``None`` (default) detects generators, openai streams and ``stream=True``.
        stop: ``stop(chunk) -> True`` ends a stream's task at that chunk.
        input_to_str: text of the input, from the dict of named arguments.
        output_to_str: text of the return value (of each chunk, for a stream).
        **extra_metadata: more metadata; ``session_id``, ``user_id`` and ``version_id``
            set those task fields instead.

    Returns:
        The wrapped function (or a decorator), with ``fn``'s name, docstring and signature.
    """
    def decorate(func: F) -> F:
        if isinstance(func, (classmethod, staticmethod)):
            inner = decorate(func.__func__)
            return type(func)(inner)  # type: ignore[return-value]
        if not callable(func):
            raise TypeError(f"phospho_logging.wrap() needs a callable, not {type(func).__name__}")
        for _ in range(100):  # bounded: an object may answer any attribute
            if getattr(func, "__phospho_wrapped__", None) is not True:
                break
            # Wrapping again (a notebook cell run twice) replaces the options: one task per call.
            func = func.__wrapped__  # type: ignore[attr-defined]
        w = _Wrapped(func, logger, metadata, extra_metadata, stream, stop, input_to_str, output_to_str)
        return _make(func, w)  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def _make(fn: Callable[..., Any], w: _Wrapped) -> Callable[..., Any]:
    target = inspect.unwrap(fn) if hasattr(fn, "__wrapped__") else fn
    wrapper: Callable[..., Any]
    if inspect.isasyncgenfunction(fn) or inspect.isasyncgenfunction(target):

        async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
            stream: LoggedAsyncStream[Any] = LoggedAsyncStream(fn(*args, **kwargs), w.recorder(w.start(args, kwargs)))
            try:
                value = await stream.__anext__()
            except StopAsyncIteration:
                return
            while True:  # forward asend/athrow/aclose, as `yield from` would for a sync generator
                try:
                    sent = yield value
                except GeneratorExit:
                    await stream.aclose()
                    raise
                except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer: pass it on
                    try:
                        value = await stream.athrow(exc)
                    except StopAsyncIteration:
                        return
                else:
                    try:
                        value = await (stream.__anext__() if sent is None else stream.asend(sent))
                    except StopAsyncIteration:
                        return

        wrapper = agen_wrapper
    elif inspect.isgeneratorfunction(fn) or inspect.isgeneratorfunction(target):

        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            return (yield from LoggedStream(fn(*args, **kwargs), w.recorder(w.start(args, kwargs))))

        wrapper = gen_wrapper
    elif inspect.iscoroutinefunction(fn):

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            call = w.start(args, kwargs)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                w.failed(call, exc)
                raise
            return w.returned(call, result)

        wrapper = async_wrapper
    else:

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            call = w.start(args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                w.failed(call, exc)
                raise
            return w.returned(call, result)

        wrapper = sync_wrapper
    try:
        functools.update_wrapper(wrapper, fn)
    except Exception:  # noqa: BLE001, S110 - a callable object without the usual attributes
        pass
    if w.binder.signature is not None:
        wrapper.__signature__ = w.binder.signature  # type: ignore[attr-defined,union-attr]
    wrapper.__phospho_wrapped__ = True  # type: ignore[attr-defined,union-attr]
    return wrapper
