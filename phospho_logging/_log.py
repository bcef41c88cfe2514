"""``phospho_logging.log``: the phospho SDK's ``phospho.log`` as an ordinary log record.

Migrating from the SDK is a change of import: ``log(input=q, output=a, session_id=s)``
logs a record on the ``phospho`` logger (whatever pipeline is configured ships it, as any
other) and returns the task as it will be sent, so ``task["task_id"]``, ``task["input"]``
and ``task["output"]`` work as they did with the SDK's return value.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Union

from . import _configure, _context
from ._event import task_from_record
from ._item import STANDARD_ATTRS, new_task_id
from ._recorder import caller, resolve_logger
from ._redact import RedactError, make_redaction
from ._stream import log_stream


def log(
    input: Any,
    output: Any = None,
    *,
    stream: bool = False,
    logger: Union[None, str, logging.Logger] = None,
    level: int = logging.INFO,
    message: str = "log",
    **fields: Any,
) -> Any:
    """Log one task as a record on the ``phospho`` logger (or ``logger``) and return it.

    Args:
        input: the task's input, as ``extra={"input": ...}``.
        output: its output; with ``stream=True``, a stream to wrap (``log_stream``).
        stream: ``output`` is a stream: return it wrapped, the task logged when it ends.
        logger: the logger (or its name); default ``phospho``.
        level: the record's level (default INFO).
        message: the record's message.
        **fields: the other task fields of ``extra=`` (``session_id``, ``user_id``,
            ``version_id``, ``task_id``, ``flag``, ``metadata``, ``raw_input``,
            ``raw_output``, ``input_to_str``, ``output_to_str``); any other keyword goes
            into the task's metadata.

    Returns:
        The task as it will be sent (a dict: ``task_id``, the extracted ``input`` and
        ``output`` texts, ``metadata``...), or with ``stream=True`` the wrapped stream. The
        record is logged only if the logger is enabled for ``level``; the task is returned
        either way. Never raises for what the fields hold.
    """
    if stream:
        return log_stream(output, input=input, logger=logger, **fields)
    target = resolve_logger(logger)
    extra: Dict[str, Any] = {}
    metadata: Dict[str, Any] = {}
    for key, value in fields.items():
        if key in STANDARD_ATTRS:  # a LogRecord's own name (``name``, ``message``...): metadata
            metadata[key] = value
        else:
            extra[key] = value
    if metadata:
        given = extra.get("metadata")
        extra["metadata"] = {**metadata, **given} if isinstance(given, dict) else {**metadata, "metadata": given}
    extra["input"] = input
    extra["output"] = output
    if extra.get("task_id") is None:
        extra["task_id"] = new_task_id()  # the returned task and the shipped one share it
    file, line, function = caller(1)
    record = target.makeRecord(target.name, level, file, line, message, (), None, function, extra)
    if target.isEnabledFor(level):
        target.handle(record)
    task = task_from_record(record, context=_context.current(), **_destination())
    pipeline = _configure.installed
    redaction = make_redaction(pipeline.options.redact) if pipeline is not None else None
    if redaction is not None:
        try:
            task = redaction(task) or task  # dropped by your redact function: not sent, yours to see
        except RedactError:
            pass  # the worker says so and drops the task; the caller sees its own values
    return task


def _destination() -> Dict[str, Optional[str]]:
    """The project and version the configured pipeline stamps on events."""
    pipeline = _configure.installed
    if pipeline is None:
        return {"project_id": None, "version_id": None}
    return {"project_id": pipeline.options.project_id, "version_id": pipeline.options.version_id}
