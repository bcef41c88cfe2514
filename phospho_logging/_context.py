"""Context binding: task fields that apply to every task logged inside a block.

Stored in a ``contextvars.ContextVar``, so each thread and each asyncio task sees its own
values. Nested contexts merge (inner values win, ``metadata`` dicts merge key by key);
fields given on the record itself win over the context.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar

_current: contextvars.ContextVar[Optional[Dict[str, Any]]] = contextvars.ContextVar(
    "phospho_logging_context", default=None
)

F = TypeVar("F", bound=Callable[..., Any])



def _opentelemetry() -> Tuple[Optional[Callable[[], Any]], Optional[str], Optional[Callable[[], Any]]]:
    """How to find the OpenTelemetry span current now, when ``opentelemetry-api`` is
    installed (imported here, once, at import time: never on a logging call): OpenTelemetry's
    contextvars runtime and its span key, read straight on a logging call (a call without a
    span pays two C lookups), and ``get_current_span`` for any other runtime. All None when
    it is not installed."""
    try:
        if importlib.util.find_spec("opentelemetry") is None:
            return None, None, None
        from opentelemetry import context as otel_context
        from opentelemetry import trace
    except Exception:  # noqa: BLE001 - not installed, or broken: no correlation
        return None, None, None
    try:
        from opentelemetry.trace.propagation import _SPAN_KEY

        var = vars(otel_context._RUNTIME_CONTEXT).get("_current_context")
        if isinstance(var, contextvars.ContextVar) and isinstance(_SPAN_KEY, str):
            return var.get, _SPAN_KEY, trace.get_current_span
    except Exception:  # noqa: BLE001, S110 - another version's layout: the public call only
        pass
    return None, None, trace.get_current_span


_otel_get, _SPAN, _get_span = _opentelemetry()


def _current_traced() -> Optional[Dict[str, Any]]:
    """The bound fields, with the ``trace_id`` and ``span_id`` (lower-case hex) of the
    OpenTelemetry span current now, if it is sampled (recorded), in their metadata (fields
    you bind win)."""
    fields = _current.get()
    try:
        if _otel_get is not None:
            found = _otel_get()
            span = found.get(_SPAN) if type(found) is not dict or found else None
            if span is None:
                return fields
        else:
            span = _get_span()  # type: ignore[misc]
        ids = span.get_span_context()
        # Sampled: recorded by the tracer (a stream's task is logged when it ends, in the
        # context of its call, where the span may have ended meanwhile: still its span).
        if not (ids.is_valid and ids.trace_flags.sampled):
            return fields
        trace = {"trace_id": format(ids.trace_id, "032x"), "span_id": format(ids.span_id, "016x")}
    except Exception:  # noqa: BLE001 - a tracer of someone else's must not fail a logging call
        return fields
    if fields is None:
        return {"metadata": trace}
    merged = dict(fields)
    bound = merged.get("metadata")
    merged["metadata"] = {**trace, **bound} if isinstance(bound, dict) else trace
    return merged


#: The fields bound in this context, or None. Without OpenTelemetry, the ContextVar's own
#: ``get`` (a logging call reads it, and a Python function around it would cost as much
#: again); with it, the same plus the recording span's ids.
current: Callable[[], Optional[Dict[str, Any]]] = _current.get if _get_span is None else _current_traced


class context:
    """Bind ``session_id``, ``user_id``, ``version_id`` and ``metadata`` to every task
    logged inside, as a context manager or a decorator (sync or async).

    Example::

        with phospho_logging.context(session_id="s-1", metadata={"tenant": "acme"}):
            log.info("answered", extra={"input": q, "output": a})
    """

    def __init__(
        self,
        session_id: Optional[str] = None,
        user_id: Optional[str] = None,
        version_id: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> None:
        fields: Dict[str, Any] = {}
        for key, value in (("session_id", session_id), ("user_id", user_id), ("version_id", version_id)):
            if value is not None:
                fields[key] = value
        if metadata:
            fields["metadata"] = dict(metadata)
        self._fields = fields
        self._tokens: List[contextvars.Token[Optional[Dict[str, Any]]]] = []

    def __enter__(self) -> context:
        parent = _current.get()
        merged = dict(parent) if parent else {}
        for key, value in self._fields.items():
            if key == "metadata" and isinstance(merged.get("metadata"), dict):
                merged["metadata"] = {**merged["metadata"], **value}
            else:
                merged[key] = value
        self._tokens.append(_current.set(merged))
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._tokens.pop())

    def _fresh(self) -> context:
        new = context.__new__(context)
        new._fields = self._fields
        new._tokens = []
        return new

    def __call__(self, func: F) -> F:
        """Use as a decorator: each call of ``func`` runs inside this context."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
