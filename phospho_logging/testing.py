"""Test helpers shipped with the package: capture tasks in memory, or run a real server.

* ``capture_tasks()`` collects the events the code under test produces, exactly as they
  would be sent, with no network and no threads involved.
* ``PhosphoTestServer`` is a real HTTP server on 127.0.0.1 that speaks the phospho
  ingestion API with the backend's validation rules, and can be told to misbehave.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, List, Optional, Union

from . import _capture, _context
from ._config import Options
from ._snapshot import carries_task, snapshot_record
from ._testserver import PhosphoTestServer, RecordedRequest
from ._worker import WORKER_THREADS

__all__ = ["PhosphoTestServer", "RecordedRequest", "capture_tasks"]


class _CaptureHandler(logging.Handler):
    def __init__(self, options: Options) -> None:
        super().__init__(logging.NOTSET)
        self._options = options

    def emit(self, record: logging.LogRecord) -> None:
        if not carries_task(record) or record.thread in WORKER_THREADS:
            return
        o = self._options
        ctx = _context.current()
        _capture.deliver_record(
            record, lambda: snapshot_record(record, o.input_to_str, o.output_to_str, ctx), o
        )


@contextlib.contextmanager
def capture_tasks(logger: Union[str, logging.Logger] = "phospho", **options: Any) -> Iterator[List[Dict[str, Any]]]:
    """Collect the tasks produced inside the block, as the events that would be sent.

    Records reaching the root logger or ``logger`` are captured, and so is everything that
    configured phospho_logging handlers receive; nothing is sent or stored meanwhile.
    ``logger`` is set to DEBUG for the duration if it has no level of its own.

    Example::

        with capture_tasks() as tasks:
            logging.getLogger("phospho").info("hi", extra={"input": "q", "output": "a"})
        assert tasks[0]["input"] == "q"
    """
    resolved = Options(**{k: v for k, v in options.items() if v is not None})
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger or None)
    root = logging.getLogger()
    handler = _CaptureHandler(resolved)
    sink: List[Dict[str, Any]] = []
    old_level: Optional[int] = None
    if target.level == logging.NOTSET and target is not root:
        old_level = target.level
        target.setLevel(logging.DEBUG)
    root.addHandler(handler)
    if target is not root:
        target.addHandler(handler)
    _capture.push(sink)
    try:
        yield sink
    finally:
        _capture.pop(sink)
        root.removeHandler(handler)
        target.removeHandler(handler)
        if old_level is not None:
            target.setLevel(old_level)
