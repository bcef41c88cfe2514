"""Ship LLM tasks to phospho with the logging tools you already use.

A log record that carries an ``input`` (``extra={"input": ..., "output": ...}``) becomes a
phospho task, snapshotted on the caller's thread and sent in batches by a worker thread.
Without credentials, tasks go to a local SQLite store instead.
"""

from __future__ import annotations

from ._configure import Pipeline, configure, flush, shutdown, stats
from ._context import context
from ._export import Exporter, ExportResult, WireEvent
from ._feedback import Feedback, feedback
from ._handlers import PhosphoHandler
from ._log import log
from ._queue_pair import PhosphoQueueHandler, PhosphoQueueListener
from ._stream import MutableAsyncGenerator, MutableGenerator, log_stream
from ._version import __version__
from .wrap import wrap

__all__ = [
    "ExportResult",
    "Exporter",
    "Feedback",
    "MutableAsyncGenerator",
    "MutableGenerator",
    "PhosphoHandler",
    "PhosphoQueueHandler",
    "PhosphoQueueListener",
    "Pipeline",
    "WireEvent",
    "__version__",
    "configure",
    "context",
    "feedback",
    "flush",
    "log",
    "log_stream",
    "shutdown",
    "stats",
    "wrap",
]
