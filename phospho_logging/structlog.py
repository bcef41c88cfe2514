"""structlog integration: a processor that turns event dicts with an ``input`` into tasks.

Put ``PhosphoProcessor()`` anywhere in a structlog processor chain::

    structlog.configure(processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        PhosphoProcessor(),
        structlog.dev.ConsoleRenderer(),
    ])
    phospho_logging.configure()
    structlog.get_logger().info("answered", input="What is 2+2?", output="4")

The event is snapshotted on the caller's thread and handed to the configured pipeline's
queue; the worker thread builds and sends it. The event dict comes back with a ``task_id``
added, so the console line can be matched with the task in phospho.
"""

from __future__ import annotations

from typing import Any, Callable, MutableMapping, Optional

try:
    import structlog as _structlog  # noqa: F401 - only to fail early with a clear message
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "phospho_logging.structlog needs structlog: pip install structlog"
    ) from exc

from threading import get_ident

from . import _capture, _configure, _context, _lifecycle
from ._config import Options, resolve
from ._feedback import feedback_of
from ._item import new_task_id, plain_event_dict
from ._lifecycle import OWN_IO, made_by_own_io
from ._snapshot import snapshot_event_dict

__all__ = ["PhosphoProcessor", "ShippedEvent"]

EventDict = MutableMapping[str, Any]


class PhosphoProcessor:
    """A structlog processor: an event dict carrying ``input`` becomes a phospho task.

    Field rules are those of log records: ``output``, ``metadata``, ``session_id``,
    ``task_id``, ``user_id``, ``version_id``, ``flag``, ``raw_input``, ``raw_output`` have
    their meaning; other keys go into the task's metadata; the ``event`` text is the message.
    It never raises into the application and never blocks.

    Args:
        pipeline: where tasks go (default: the pipeline of the last
            ``phospho_logging.configure()`` call, looked up on each event; without one, the
            ``PhosphoHandler`` a dictConfig made).
        input_to_str, output_to_str: text functions (or ``"module:function"``), as in
            ``configure``; the pipeline's own apply otherwise.
    """

    def __init__(
        self,
        pipeline: Optional[_configure.Pipeline] = None,
        *,
        input_to_str: Optional[Callable[[Any], str]] = None,
        output_to_str: Optional[Callable[[Any], str]] = None,
    ) -> None:
        self._pipeline = pipeline
        self._engine = pipeline.engine if pipeline is not None else None
        own = resolve({"input_to_str": input_to_str, "output_to_str": output_to_str}, environ={})
        self._input_to_str = own.input_to_str
        self._output_to_str = own.output_to_str
        self._plain = self._input_to_str is None and self._output_to_str is None

    def __repr__(self) -> str:
        return f"PhosphoProcessor(pipeline={self._pipeline!r})"

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        if "input" not in event_dict:
            if "flag" in event_dict and "task_id" in event_dict:
                self._feedback(event_dict)
            return event_dict
        if OWN_IO and get_ident() in OWN_IO and made_by_own_io():
            return self._own_io(event_dict)
        try:
            task_id = event_dict.get("task_id")
            if type(task_id) is not str or not task_id:
                task_id = new_task_id()
            engine = self._engine or _configure.installed_engine
            if engine is None:
                engine = _configure.default_engine()  # a dictConfig handler's, if any
            if engine is not None and engine.plain and self._plain and _context_get() is None \
                    and "exc_info" not in event_dict:
                # The commonest event, on the shortest path: one marshal copy, submitted.
                item = plain_event_dict(event_dict, method_name, task_id)
                if item is not None:
                    engine.submit(item)
                    shipped = ShippedEvent(event_dict)
                    shipped["task_id"] = task_id
                    return shipped
            options = engine.options if engine is not None else _DEFAULTS
            snapshot = snapshot_event_dict(
                event_dict,
                method_name,
                task_id,
                self._input_to_str or options.input_to_str,
                self._output_to_str or options.output_to_str,
                _context_get(),
            )
            if engine is not None:
                engine.submit(snapshot)
            elif _capture.active():
                _capture.deliver(snapshot, options)
            else:
                _lifecycle.unshipped(
                    "PhosphoProcessor got a task but nothing ships it: call phospho_logging.configure() "
                    "or configure a PhosphoHandler (tasks are not kept until then; counted in "
                    "phospho_logging.stats()['dropped_by_reason']['not_configured'])",
                )
                return event_dict
            # A new dict (the caller's is not ours to change), of a type that tells our
            # handlers the task is already shipped if the event goes on to stdlib.
            shipped = ShippedEvent(event_dict)
            shipped["task_id"] = task_id
            return shipped
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            _lifecycle.report("processor_error", "PhosphoProcessor could not make a task: %r", exc)
            return event_dict

    def _feedback(self, event_dict: EventDict) -> None:
        """An event with a ``task_id`` and a ``flag`` and no ``input``: feedback on that task,
        shipped by the configured pipeline after the tasks logged before it."""
        try:
            engine = self._engine or _configure.installed_engine or _configure.default_engine()
            if OWN_IO and get_ident() in OWN_IO and made_by_own_io():
                if engine is not None:
                    engine.ignore_own_io()
                return
            found = feedback_of(event_dict)
            if engine is None:
                if _capture.active() and not isinstance(found, str):
                    _capture.deliver_feedback(found)
                else:
                    _lifecycle.report("processor_feedback", "PhosphoProcessor got a feedback but nothing ships it: "
                                      "call phospho_logging.configure() or configure a PhosphoHandler")
            elif isinstance(found, str):
                engine.feedback_invalid(found)
            else:
                engine.submit_feedback(found)
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            _lifecycle.report("processor_error", "PhosphoProcessor could not take a feedback: %r", exc)

    def _own_io(self, event_dict: EventDict) -> EventDict:
        """An event logged from inside the library's own I/O: not shipped (it could loop),
        counted on the engine it would have gone to."""
        engine = self._engine or _configure.installed_engine or _configure.default_engine()
        if engine is not None:
            engine.ignore_own_io()
        return event_dict


class ShippedEvent(dict):  # type: ignore[type-arg]
    """An event dict whose task ``PhosphoProcessor`` already shipped.

    Our handlers only read tasks from a record whose ``msg`` is exactly a ``dict``, so an
    event that goes on to stdlib (``ProcessorFormatter.wrap_for_formatter``) is not
    shipped twice; everything else treats it as the plain dict it is.
    """

    __slots__ = ()


_DEFAULTS = Options()
_context_get = _context.current
