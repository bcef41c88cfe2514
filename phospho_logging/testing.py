"""Test helpers shipped with the package: capture tasks in memory, or run a real server.

* ``capture_tasks()`` collects the events the code under test produces, exactly as they
  would be sent, with no network and no threads involved.
* ``PhosphoTestServer`` is a real HTTP server on 127.0.0.1 that speaks the phospho
  ingestion API with the backend's validation rules, and can be told to misbehave.

``python -m phospho_logging.testing [--port N]`` runs that server in the foreground, to try
``phospho-logging check`` and ``push`` (or an app) without a phospho account.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, List, Optional, Union

from . import _capture, _context
from ._config import Options
from ._lifecycle import WORKER_THREADS
from ._snapshot import carries_task, snapshot_record
from ._testserver import PhosphoTestServer, RecordedRequest

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
                    print(f"{request.method} {request.path} -> {request.status}: {request.n_events} task(s); "
                          f"{len(server.task_ids)} stored in all", flush=True)
                seen = len(requests_)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    sys.stdout.write(f"stopped; {len(server.task_ids)} task(s) received\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised in a subprocess test
    raise SystemExit(main())
