"""Streams: every chunk passes through unchanged, and one task is logged when the stream ends.

A stream is wrapped in ``LoggedStream`` (sync) or ``LoggedAsyncStream`` (async), which hand
each chunk to a ``Recorder`` and then straight back to the consumer. The recorder logs the
task exactly once, however the stream ends: exhausted, ``stop(chunk)``, closed,
garbage-collected, still open at exit, or raising (see ``_recorder``).
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    List,
    Optional,
    TypeVar,
    Union,
    overload,
)

from ._lifecycle import before_exit
from ._recorder import (
    Recorder,
    StopFunction,
    Where,
    caller,
    copy_value,
    resolve_logger,
    snapshot_input,
    split_fields,
)

__all__ = ["LoggedAsyncStream", "LoggedStream", "MutableAsyncGenerator", "MutableGenerator", "log_stream"]

T = TypeVar("T")
_perf = time.perf_counter


#: Streams not finished yet; at exit they are finished, so their tasks are not lost.
_live: weakref.WeakSet[Any] = weakref.WeakSet()
_exit_hook: List[bool] = []


def _track(stream: Any) -> None:
    if not _exit_hook:
        _exit_hook.append(True)
        before_exit(finish_live_streams)  # at exit, open streams log their tasks before the engines drain
    _live.add(stream)


def finish_live_streams() -> None:
    """Log the task of every stream still open (at interpreter exit)."""
    for stream in list(_live):
        try:
            stream._rec.finish("interpreter_exit")
        except Exception:  # noqa: BLE001, S110
            pass


def _end_of(exc: BaseException) -> str:
    return "cancelled" if type(exc).__name__ == "CancelledError" else "error"


def _exhausted() -> Any:
    raise StopIteration


class LoggedStream(Generic[T]):
    """A sync stream that logs one task when it ends; chunks pass through unchanged.

    Iterate it, use it as a context manager, ``close()`` it; other attributes (openai's
    ``response``...) are the wrapped stream's. ``send``/``throw`` reach a wrapped generator.
    """

    __slots__ = ("_inner", "_next", "_rec", "__weakref__")

    def __init__(self, inner: Any, recorder: Recorder) -> None:
        # The stream first: if it is not iterable, nothing is recorded (no task at GC).
        self._next: Callable[[], Any] = inner.__next__ if hasattr(type(inner), "__next__") else iter(inner).__next__
        self._inner = inner
        self._rec = recorder
        if isinstance(inner, LoggedStream):
            inner._rec.silence(recorder)  # log_stream(MutableGenerator(...)), wrap of one...: one task, this one's
        _track(self)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return self._step(self._next)  # type: ignore[no-any-return]

    def _step(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            chunk = call(*args)
        except StopIteration:
            self._rec.finish("exhausted")
            raise
        except BaseException as exc:
            self._rec.finish(_end_of(exc), exc)
            raise
        if self._rec.add(chunk):
            self._rec.finish("stop")
            if self._rec._stop_ends:
                self._next = _exhausted
                raise StopIteration
        return chunk

    def send(self, value: Any) -> T:
        """Send into a wrapped generator (``next()`` for ``None``)."""
        if value is None:
            return self._step(self._next)  # type: ignore[no-any-return]
        return self._step(self._inner.send, value)  # type: ignore[no-any-return]

    def throw(self, *args: Any) -> T:
        """Throw into a wrapped generator; what it raises ends the task with that error."""
        inner_throw = getattr(self._inner, "throw", None)
        if inner_throw is None:
            exc = args[0] if isinstance(args[0], BaseException) else args[0](*args[1:2])
            self._rec.finish(_end_of(exc), exc)
            raise exc
        return self._step(inner_throw, *args)  # type: ignore[no-any-return]

    def close(self) -> None:
        """End the task (marked incomplete if the stream was not finished) and close the stream."""
        self._rec.finish("closed")
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> LoggedStream[T]:
        enter = getattr(type(self._inner), "__enter__", None)
        if enter is not None:
            enter(self._inner)
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        self._rec.finish("closed")
        leave = getattr(type(self._inner), "__exit__", None)
        if leave is not None:
            return leave(self._inner, *exc_info)
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
        return None

    def __getattr__(self, name: str) -> Any:
        if name in LoggedStream.__slots__:
            raise AttributeError(name)  # not set yet: never recurse
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<phospho_logging stream of {self._inner!r}>"

    def __del__(self) -> None:
        try:
            self._rec.finish("garbage_collected")
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown, half-built object
            pass


class LoggedAsyncStream(Generic[T]):
    """An async stream that logs one task when it ends; chunks pass through unchanged.

    ``async for`` it, ``async with`` it, ``await close()``/``aclose()``; other attributes
    are the wrapped stream's. ``asend``/``athrow`` reach a wrapped async generator.
    """

    __slots__ = ("_inner", "_anext", "_rec", "__weakref__")

    def __init__(self, inner: Any, recorder: Recorder) -> None:
        anext = inner.__anext__ if hasattr(type(inner), "__anext__") else inner.__aiter__().__anext__
        self._anext: Callable[[], Any] = anext
        self._inner = inner
        self._rec = recorder
        if isinstance(inner, LoggedAsyncStream):
            inner._rec.silence(recorder)  # one task per stream, the outermost one's
        _track(self)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        return await self._step(self._anext)  # type: ignore[no-any-return]

    async def _step(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            chunk = await call(*args)
        except StopAsyncIteration:
            self._rec.finish("exhausted")
            raise
        except BaseException as exc:
            self._rec.finish(_end_of(exc), exc)
            raise
        if self._rec.add(chunk):
            self._rec.finish("stop")
            if self._rec._stop_ends:
                self._anext = _async_exhausted
                raise StopAsyncIteration
        return chunk

    async def asend(self, value: Any) -> T:
        """Send into a wrapped async generator."""
        if value is None:
            return await self._step(self._anext)  # type: ignore[no-any-return]
        return await self._step(self._inner.asend, value)  # type: ignore[no-any-return]

    async def athrow(self, *args: Any) -> T:
        """Throw into a wrapped async generator; what it raises ends the task with that error."""
        inner_throw = getattr(self._inner, "athrow", None)
        if inner_throw is None:
            exc = args[0] if isinstance(args[0], BaseException) else args[0](*args[1:2])
            self._rec.finish(_end_of(exc), exc)
            raise exc
        return await self._step(inner_throw, *args)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """End the task (incomplete if unfinished) and close the stream."""
        self._rec.finish("closed")
        close = getattr(self._inner, "aclose", None) or getattr(self._inner, "close", None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result

    close = aclose  # openai's AsyncStream.close() is a coroutine too

    async def __aenter__(self) -> LoggedAsyncStream[T]:
        enter = getattr(type(self._inner), "__aenter__", None)
        if enter is not None:
            await enter(self._inner)
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        self._rec.finish("closed")
        leave = getattr(type(self._inner), "__aexit__", None)
        if leave is not None:
            return await leave(self._inner, *exc_info)
        await self.aclose()
        return None

    def __getattr__(self, name: str) -> Any:
        if name in LoggedAsyncStream.__slots__:
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<phospho_logging async stream of {self._inner!r}>"

    def __del__(self) -> None:
        try:
            self._rec.finish("garbage_collected")
        except Exception:  # noqa: BLE001, S110
            pass


async def _async_exhausted() -> Any:
    raise StopAsyncIteration


def is_async_stream(stream: Any) -> bool:
    """True for async iterators and async iterables."""
    return hasattr(type(stream), "__anext__") or hasattr(type(stream), "__aiter__")


def stream_recorder(
    *,
    input: Any,
    logger: Union[None, str, logging.Logger],
    stop: Optional[StopFunction],
    fields: Dict[str, Any],
    where: Where,
    message: str,
    stop_ends: bool = False,
) -> Recorder:
    """A recorder for a stream that starts now (the input is copied now)."""
    fields = dict(fields)
    metadata: Dict[str, Any] = {}
    in_value, raw_in = snapshot_input(input, fields.pop("input_to_str", None))
    output_to_str = fields.pop("output_to_str", None)
    extra = split_fields(fields, metadata)
    extra["input"] = in_value
    if "raw_input" in extra:
        extra["raw_input"] = copy_value(extra["raw_input"])
    elif raw_in is not in_value:
        extra["raw_input"] = raw_in
    return Recorder(resolve_logger(logger), message, where, extra, metadata, _perf(), stop, stop_ends, output_to_str)


@overload
def log_stream(stream: AsyncIterable[T], input: Any = ..., *, logger: Union[None, str, logging.Logger] = ...,
               stop: Optional[StopFunction] = ..., **fields: Any) -> LoggedAsyncStream[T]: ...


@overload
def log_stream(stream: Iterable[T], input: Any = ..., *, logger: Union[None, str, logging.Logger] = ...,
               stop: Optional[StopFunction] = ..., **fields: Any) -> LoggedStream[T]: ...


def log_stream(
    stream: Any,
    input: Any = None,
    *,
    logger: Union[None, str, logging.Logger] = None,
    stop: Optional[StopFunction] = None,
    **fields: Any,
) -> Any:
    """Wrap a stream so that it logs one task when it ends.

    Every chunk is yielded unchanged as soon as it arrives. The task's output is the
    chunks' text (openai deltas, Ollama chunks, strings...), its ``raw_output`` a copy of
    the first ``MAX_RAW_CHUNKS`` chunks, and its metadata holds ``latency_s``,
    ``time_to_first_chunk_s``, ``chunks``, ``stream_complete``, ``stream_end`` and the
    token usage when the stream reports it.

    Args:
        stream: an iterator, iterable, async iterator or async iterable (a generator,
            an openai ``Stream``/``AsyncStream``...).
        input: the task's input (copied now).
        logger: the logger (or its name) to log the task on; default ``phospho``.
        stop: ``stop(chunk) -> True`` ends the task at that chunk (it is still yielded,
            and later chunks still pass through).
        **fields: ``session_id``, ``user_id``, ``version_id``, ``metadata``,
            ``input_to_str``, ``output_to_str`` (applied to each chunk); any other keyword
            goes into the task's metadata.

    Returns:
        A ``LoggedStream`` or ``LoggedAsyncStream``, whichever matches ``stream``.

    Example::

        for chunk in phospho_logging.log_stream(generate(q), input=q, session_id=sid):
            print(chunk, end="")
    """
    name = getattr(type(stream), "__qualname__", "stream")
    rec = stream_recorder(input=input, logger=logger, stop=stop, fields=fields, where=caller(1),
                          message=f"log_stream: {name}")
    if is_async_stream(stream):
        return LoggedAsyncStream(stream, rec)
    return LoggedStream(stream, rec)


def _sdk_stop(stop: Optional[StopFunction]) -> StopFunction:
    if stop is None:
        return _is_none
    return lambda chunk: chunk is None or stop(chunk)


def _is_none(chunk: Any) -> bool:
    return chunk is None


class MutableGenerator(LoggedStream[T]):
    """The phospho SDK's ``MutableGenerator``: iteration ends at the first chunk for which
    ``stop(chunk)`` is true, or that is ``None``; that chunk is not yielded. Logs one task.

    Args:
        generator: the generator (any iterator) to wrap.
        stop: the SDK's stopping criterion (optional here: ``None`` chunks always stop).
        input: the task's input; **fields as for ``log_stream``.
    """

    __slots__ = ()

    def __init__(self, generator: Any, stop: Optional[StopFunction] = None, *, input: Any = None,
                 logger: Union[None, str, logging.Logger] = None, **fields: Any) -> None:
        rec = stream_recorder(input=input, logger=logger, stop=_sdk_stop(stop), fields=fields, where=caller(1),
                              message="MutableGenerator", stop_ends=True)
        super().__init__(generator, rec)


class MutableAsyncGenerator(LoggedAsyncStream[T]):
    """The phospho SDK's ``MutableAsyncGenerator``: ``MutableGenerator`` for async generators."""

    __slots__ = ()

    def __init__(self, generator: Any, stop: Optional[StopFunction] = None, *, input: Any = None,
                 logger: Union[None, str, logging.Logger] = None, **fields: Any) -> None:
        rec = stream_recorder(input=input, logger=logger, stop=_sdk_stop(stop), fields=fields, where=caller(1),
                              message="MutableAsyncGenerator", stop_ends=True)
        super().__init__(generator, rec)
