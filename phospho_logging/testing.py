"""Test helpers shipped with the package: capture tasks, an in-memory exporter, a real server.

* ``capture_tasks()`` collects the events the code under test produces, exactly as they
  would be sent, synchronously, with no network and no threads involved.
* ``InMemoryExporter`` plugs in where the real exporter goes (``configure(exporter=...)``)
  and keeps the events it receives; it can be told what to answer, to test delivery policy
  without HTTP.
* ``PhosphoTestServer`` is a real HTTP server on 127.0.0.1 that speaks the phospho
  ingestion API with the backend's validation rules, and can be told to misbehave.

``python -m phospho_logging.testing [--port N]`` runs that server in the foreground, to try
``phospho-logging check`` and ``push`` (or an app) without a phospho account.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from . import _capture, _context
from ._config import Options
from ._export import ExportResult, WireEvent
from ._feedback import Feedback, feedback_of, is_feedback
from ._handlers import PhosphoHandler
from ._lifecycle import OWN_IO, made_by_own_io
from ._queue_pair import PhosphoQueueHandler
from ._snapshot import carries_task, snapshot_record
from ._testserver import PhosphoTestServer, RecordedRequest

__all__ = ["InMemoryExporter", "PhosphoTestServer", "RecordedRequest", "capture_tasks"]


class InMemoryExporter:
    """An exporter that keeps what it is given, and answers what it is told to.

    Args:
        results: what the next calls to ``export`` return, in order (an ``ExportResult``,
            or an exception to raise); once they are used up, every batch is delivered.

    Attributes:
        events: the wire-format events delivered, in order (rejected ones left out).
        batches: the events of every call to ``export``, delivered or not.
        feedback: the feedback delivered (``export_feedback``), as dicts, in order.
        closed: how many times ``close`` was called.

    Example::

        exporter = InMemoryExporter([ExportResult.retry("down"), ExportResult.retry("down")])
        phospho_logging.configure(exporter=exporter)
        logging.getLogger("phospho").info("hi", extra={"input": "q"})
        assert phospho_logging.flush(timeout=5)
        assert exporter.events[0]["input"] == "q" and len(exporter.batches) == 3
    """

    destination = "memory"

    def __init__(self, results: Iterable[Union[ExportResult, BaseException]] = ()) -> None:
        self.events: List[Dict[str, Any]] = []
        self.batches: List[List[Dict[str, Any]]] = []
        self.feedback: List[Dict[str, Any]] = []
        self.closed = 0
        self._results = list(results)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"InMemoryExporter({len(self.events)} events)"

    def answer(self, *results: Union[ExportResult, BaseException]) -> None:
        """Queue what the next calls to ``export`` return (or raise)."""
        with self._lock:
            self._results.extend(results)

    def export(self, events: Sequence[WireEvent], timeout: float) -> ExportResult:
        """Record the batch and answer with the next scripted result (default: delivered)."""
        batch = [event.data() for event in events]
        with self._lock:
            self.batches.append(batch)
            result = self._results.pop(0) if self._results else ExportResult.delivered()
            if isinstance(result, BaseException):
                raise result
            if result.ok:
                self.events.extend(e for i, e in enumerate(batch) if i not in result.rejected)
        return result

    def export_feedback(self, feedback: Feedback, timeout: float) -> ExportResult:
        """Keep one feedback (always delivered)."""
        with self._lock:
            self.feedback.append(feedback.data())
        return ExportResult.delivered()

    def close(self) -> None:
        """Count the call; the exporter keeps working (as a real one reconnects)."""
        self.closed += 1


def _reaches_ours(record: logging.LogRecord) -> bool:
    """True when a handler of ours on the record's logger chain takes it: its engine
    captures it then, and the capture handler must not take it twice."""
    found = logging.Logger.manager.loggerDict.get(record.name)
    logger: Optional[logging.Logger] = found if isinstance(found, logging.Logger) else logging.getLogger()
    while logger is not None:
        for handler in logger.handlers:
            if isinstance(handler, (PhosphoHandler, PhosphoQueueHandler)) and record.levelno >= handler.level:
                return True
        logger = logger.parent if logger.propagate else None
    return False


class _CaptureHandler(logging.Handler):
    """Captures task-carrying records that no handler of ours takes."""

    def __init__(self, options: Options) -> None:
        super().__init__(logging.NOTSET)
        self._options = options
        self._seen: weakref.WeakSet[logging.LogRecord] = weakref.WeakSet()

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if is_feedback(record.__dict__) and record not in self._seen and not _reaches_ours(record):
            self._seen.add(record)
            found = feedback_of(record.__dict__, record.created)
            if not isinstance(found, str):
                _capture.deliver_feedback(found)
            return True
        if not carries_task(record) or (record.thread in OWN_IO and made_by_own_io(record)) or record in self._seen \
                or _reaches_ours(record):
            return False
        self._seen.add(record)
        o = self._options
        _capture.deliver(snapshot_record(record, o.input_to_str, o.output_to_str, _context.current()), o)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


class CapturedTasks(List[Dict[str, Any]]):
    """The tasks ``capture_tasks()`` collected (a list), and ``feedback``: the feedback."""

    def __init__(self) -> None:
        super().__init__()
        self.feedback: List[Dict[str, Any]] = []


@contextlib.contextmanager
def capture_tasks(logger: Union[str, logging.Logger] = "phospho", **options: Any) -> Iterator[CapturedTasks]:
    """Collect the tasks produced inside the block, as the events that would be sent.

    Every engine of the process (``configure()``'s, the handlers' of a dictConfig) builds
    its events into the list instead of queueing them, and task-carrying records that
    reach ``logger`` or the root logger without meeting a handler of ours are captured
    too; nothing is sent or stored meanwhile. ``logger`` is set to DEBUG for the duration
    if it has no level of its own.

    Feedback given meanwhile (``phospho_logging.feedback``, or a record with a ``task_id``
    and a ``flag`` and no ``input``) is collected in ``tasks.feedback``, as dicts.

    Example::

        with capture_tasks() as tasks:
            logging.getLogger("phospho").info("hi", extra={"input": "q", "output": "a"})
        assert tasks[0]["input"] == "q"
    """
    resolved = Options(**{k: v for k, v in options.items() if v is not None})
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger or None)
    root = logging.getLogger()
    handler = _CaptureHandler(resolved)
    sink = CapturedTasks()
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


def main(argv: Optional[List[str]] = None) -> int:
    """Serve a ``PhosphoTestServer`` until Ctrl-C, reporting what it receives."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m phospho_logging.testing",
        description="A local phospho ingestion server, for trying phospho-logging without an account.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--project-id", default="test-project")
    args = parser.parse_args(argv)
    server = PhosphoTestServer(args.api_key, args.project_id, port=args.port).start()
    print(f"phospho test server listening on {server.url} (Ctrl-C to stop). In another shell:")
    print(f"  export PHOSPHO_BASE_URL={server.url} PHOSPHO_API_KEY={args.api_key} "
          f"PHOSPHO_PROJECT_ID={args.project_id}", flush=True)
    seen = 0
    try:
        while True:
            if server.wait_for_requests(seen + 1, timeout=1.0):
                requests_ = server.requests
                for request in requests_[seen:]:
                    if request.path.endswith("/human-eval"):
                        print(f"{request.method} {request.path} -> {request.status}: feedback "
                              f"{_feedback_line(request.body)}; {len(server.feedback)} accepted in all", flush=True)
                        continue
                    print(f"{request.method} {request.path} -> {request.status}: {request.n_events} task(s); "
                          f"{len(server.task_ids)} stored in all", flush=True)
                seen = len(requests_)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    sys.stdout.write(f"stopped; {len(server.task_ids)} task(s) and {len(server.feedback)} feedback(s) received\n")
    return 0


def _feedback_line(body: bytes) -> str:
    """A feedback body for people: ``failure (source qa, notes 'wrong')``."""
    import json

    try:
        data = json.loads(body)
        return f"{data.get('human_eval')} (source {data.get('source')}, notes {data.get('notes')!r})"
    except Exception:  # noqa: BLE001 - whatever was sent
        return f"{len(body)} bytes"


if __name__ == "__main__":  # pragma: no cover - exercised in a subprocess test
    raise SystemExit(main())
