"""Where an end-to-end task's time goes, stage by stage, in microseconds per task.

Usage::

    python benchmarks/e2e_breakdown.py

``end_to_end`` (``benchmarks/run.py``) runs the caller, the worker and ``PhosphoTestServer``
in one process, so they share one interpreter lock and the rate is 1 / (the sum of the
stages). A sampling profiler sees one thread only; this times each stage alone, on the
payload ``end_to_end`` logs (100-character input and output, a 3-key metadata dict):

* caller: ``log.info(..., extra=...)`` into the phospho queue handler (snapshot, enqueue);
* worker: ``encode`` (the protocol event and its JSON) for each task;
* server: the test server's own work for a 100-task batch (parse, strict checks, echo and
  its JSON reply), called directly;
* HTTP: one ``HTTPExporter.export`` of that batch to a running test server, minus the
  server's work above (requests, http.server, loopback).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases  # noqa: E402

from phospho_logging import _testserver  # noqa: E402
from phospho_logging._event import encode  # noqa: E402
from phospho_logging._export import request_body  # noqa: E402
from phospho_logging._http import HTTPExporter  # noqa: E402
from phospho_logging._item import plain_record, snapshot_of  # noqa: E402
from phospho_logging.testing import PhosphoTestServer  # noqa: E402

BATCH = 100


def best_us(run: Callable[[], object], per: int, loops: int = 200, repeats: int = 5) -> float:
    """Best of ``repeats`` timings of ``loops`` calls, in microseconds per task."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            run()
        best = min(best, (time.perf_counter() - start) / (loops * per))
    return best * 1e6


def main() -> int:
    log = logging.getLogger("bench.breakdown")
    record = log.makeRecord(log.name, logging.INFO, __file__, 1, "answered", (), None, extra=cases.EXTRA)
    short = plain_record(record)
    assert short is not None

    def build() -> object:
        return encode(snapshot_of(short), project_id="p")  # type: ignore[arg-type]

    events = [build() for _ in range(BATCH)]
    body = request_body(events)  # type: ignore[arg-type]

    caller = cases.hot_path(20_000)["value"] / 1000  # ns -> us, the benchmark's own case
    worker = best_us(build, 1, loops=5000)

    with PhosphoTestServer() as srv:
        def serve() -> None:
            payload, errors = _testserver._parse_batch(body)
            srv._decide(f"Bearer {srv.api_key}", srv.project_id, body, payload, errors)
            srv.reset()

        server = best_us(serve, BATCH, loops=50)
        exporter = HTTPExporter(srv.url + "/v2/log/" + srv.project_id, srv.api_key)
        try:
            def post() -> None:
                assert exporter.export(events, 10.0).ok  # type: ignore[arg-type]
                srv.reset()

            http = best_us(post, BATCH, loops=50) - server
        finally:
            exporter.close()

    total = caller + worker + server + http
    print(f"{'stage':<8} {'us/task':>8} {'share':>6}")
    for name, value in (("caller", caller), ("worker", worker), ("server", server), ("HTTP", http)):
        print(f"{name:<8} {value:8.2f} {value / total:6.0%}")
    print(f"{'total':<8} {total:8.2f}   -> at most {1e6 / total:,.0f} tasks/s with one interpreter lock")
    return 0


if __name__ == "__main__":
    with cases.private_store():
        sys.exit(main())
