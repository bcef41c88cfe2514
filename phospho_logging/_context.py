"""Context binding: task fields that apply to every task logged inside a block.

Stored in a ``contextvars.ContextVar``, so each thread and each asyncio task sees its own
values. Nested contexts merge (inner values win, ``metadata`` dicts merge key by key);
fields given on the record itself win over the context.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, TypeVar

_current: contextvars.ContextVar[Optional[Dict[str, Any]]] = contextvars.ContextVar(
    "phospho_logging_context", default=None
)

F = TypeVar("F", bound=Callable[..., Any])


#: The fields bound in this context, or None (the ContextVar's own ``get``: a logging call
#: reads it, and a Python function around it would cost as much again).
current: Callable[[], Optional[Dict[str, Any]]] = _current.get


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
