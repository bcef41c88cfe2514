"""Benchmark cases for phospho_logging, one per process.

Run one case (normally ``benchmarks/run.py`` does this, in a fresh subprocess)::

    python benchmarks/cases.py CASE --n N

It prints one JSON line: ``{"case", "value", "unit", "n", ...}``. Works from a source
checkout (the repository root is put first on ``sys.path``) and with the package installed.
``PHOSPHO_*`` environment variables are ignored, so the local-store cases stay offline.

Per-call cases warm up, then time N calls of ``log.info(...)`` with
``time.perf_counter_ns`` three times and report the best, in ns per call. As ``timeit``
does, the garbage collector is off during the timed loops (the hot-path cases keep every
snapshot on a queue nobody drains, which would make full collections ever slower; that
is an artefact of the set-up, not a cost an application pays).

* ``null_extra``        baseline: a logger with a ``NullHandler``, a task-carrying call
                        (``input``/``output`` of 100 chars and a small ``metadata`` dict).
* ``stdlib_queue``      the same call into ``logging.handlers.QueueHandler`` (stdlib
                        ``prepare``: format + copy), no listener: the caller's cost only.
* ``hot_path``          the same call into ``PhosphoQueueHandler`` wired to a
                        ``PhosphoQueueListener`` whose engine's worker never runs: the
                        caller's own cost of snapshotting and enqueueing a task.
* ``floor_handler``     a reference, not a product path: the least a handler that keeps
                        the task at the call can do (walk the extras, one ``marshal`` copy,
                        an 8-slot tuple on a queue), with none of the product's checks
                        (filters, bound context, per-record text functions, capture mode,
                        worker-thread guard, queue bound). Its ratio to ``null_extra`` is
                        the floor under ``hot_path``'s.
* ``null_messages``     baseline with an OpenAI-style request dict as ``input`` and a
                        ChatCompletion-like dict as ``output``.
* ``hot_path_messages`` ``hot_path`` with that extra.
* ``structlog_enqueue`` baseline: a structlog chain whose one processor puts the event
                        dict on a queue (then a processor that drops the event).
* ``structlog_processor`` ``PhosphoProcessor`` in its place: the caller's cost.
* ``floor_processor``   a reference: the least a processor that keeps the task at the call
                        can do (a task id, one ``marshal`` copy, a tuple on a queue, a new
                        dict with the task id returned), with none of the product's checks.
* ``null_plain``        baseline: ``log.info("plain line")`` into a ``NullHandler``.
* ``non_task``          ``log.info("plain line")`` into the phospho handler (should be
                        close to ``null_plain``: a record without ``input`` is ignored).
* ``end_to_end``        tasks/s delivered to a loopback ``PhosphoTestServer`` with the
                        default options: ``configure()``, N calls from the main thread,
                        ``flush(timeout=120)``; timed from the first call to the flush's
                        return. The value is tasks delivered / elapsed; if fewer than N
                        arrive (a full queue drops tasks) the line has an ``error``.
                        ``--max-queue-size`` overrides that one option. Also reports the
                        peak RSS of the process (``peak_rss_mb``).
* ``end_to_end_50ms``   the same with a server that takes 50 ms a request (5,000 tasks):
                        the rate a distant backend allows with one request in flight.
* ``end_to_end_local``  the same into the SQLite local store (no credentials).
* ``wrap_plain``        baseline: calling an unwrapped trivial function (``model=``,
                        ``messages=``) that returns a ChatCompletion-like dict, per call.
* ``wrap_call``         the same function through ``phospho_logging.wrap``, logging on a
                        ``PhosphoQueueHandler`` whose listener never starts: the caller's
                        cost of binding and copying the arguments, timing, and logging a task.
* ``stream_plain``      baseline: iterating a generator over 100 OpenAI-style chunk dicts
                        (a list), in ns per chunk.
* ``stream_wrapped``    the same generator through ``phospho_logging.log_stream`` on that
                        handler: per chunk, the one task per 100 chunks included.
* ``hot_path_otel_idle`` ``hot_path`` with OpenTelemetry installed, no span open (every other
                        case runs with OpenTelemetry hidden).
* ``hot_path_otel_span`` ``hot_path`` inside a recording span: trace and span ids added.
* ``redact_worker``     the worker's cost per task of ``redact=True``: events built with and
                        without the masks, ns per task more (text with an e-mail, a phone
                        number and a key).
* ``stream_raw_lines``  a raw HTTP stream through ``log_stream``: Ollama JSON lines as bytes,
                        one line per chunk (``iter_lines()``), in ns per line.
* ``stream_raw_cut``    one Ollama last line with a long ``context`` (N bytes) cut a byte at a
                        time (``iter_content()``'s default), in ns per byte: stays flat as N
                        grows (the reader is linear however a stream is cut).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import gc
import json
import logging
import logging.handlers
import marshal
import os
import queue
import sqlite3
import sys
import tempfile
import time
from itertools import repeat
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "phospho_logging" / "__init__.py").exists() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
for _name in [k for k in os.environ if k.startswith("PHOSPHO_")]:
    del os.environ[_name]

if not (len(sys.argv) > 1 and sys.argv[1].startswith("hot_path_otel")):
    # Every other case measures phospho-logging without OpenTelemetry (installed with the
    # dev extras): its trace correlation has cases of its own.
    sys.modules.setdefault("opentelemetry", None)  # type: ignore[arg-type]

import phospho_logging  # noqa: E402
from phospho_logging import PhosphoHandler, PhosphoQueueHandler, PhosphoQueueListener  # noqa: E402
from phospho_logging.testing import PhosphoTestServer  # noqa: E402


def _text(prefix: str) -> str:
    """A deterministic 100-character string."""
    return (prefix + " " + "lorem ipsum dolor sit amet " * 4)[:100]


EXTRA: Dict[str, Any] = {
    "input": _text("What is the capital of France?"),
    "output": _text("The capital of France is Paris."),
    "metadata": {"model": "m1", "temperature": "0.2", "user": "u-7"},
}
MESSAGES_EXTRA: Dict[str, Any] = {
    "input": {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": _text("You are a helpful assistant.")},
            {"role": "user", "content": _text("What is the capital of France?")},
        ],
    },
    "output": {
        "id": "chatcmpl-9xYzAbCdEfGhIjKlMnOpQrStUv",
        "object": "chat.completion",
        "created": 1717171717,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _text("The capital of France is Paris.")},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 21, "total_tokens": 63},
    },
}
REPEATS = 3


# -- helpers ---------------------------------------------------------------------------------


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"bench.{name}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.handlers[:] = [handler]
    return log


CHUNK = 1000


def _per_call(call: Callable[[], Any], n: int, between: Callable[[], None] = lambda: None) -> Dict[str, Any]:
    """Best of REPEATS timed loops of ``n`` calls, in ns per call (gc off while timing).

    The calls are timed in chunks of ``CHUNK``, with ``between()`` (draining the queue
    nobody else drains) run untimed after each chunk: in an application the worker
    drains the queue as it goes, so the caller's memory does not pile up.
    """
    for _ in repeat(None, min(n, 2000)):
        call()
    between()
    runs = []
    for _ in range(REPEATS):
        gc.collect()
        gc.disable()
        try:
            elapsed = 0
            for _ in range(max(1, n // CHUNK)):
                start = time.perf_counter_ns()
                for _ in repeat(None, CHUNK):
                    call()
                elapsed += time.perf_counter_ns() - start
                between()
            runs.append(elapsed / (max(1, n // CHUNK) * CHUNK))
        finally:
            gc.enable()
    return {"value": min(runs), "unit": "ns/call", "runs": runs}


def _drain(q: queue.SimpleQueue[Any]) -> int:
    """Empty ``q``; how many items it held."""
    n = 0
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return n
        n += 1


class _Counting:
    """``_drain`` that adds up what it took: the benchmark's check that every call was
    enqueued (the engine counts tasks when its worker takes them, and here none does)."""

    def __init__(self, q: Any) -> None:
        self.q = q
        self.total = 0

    def __call__(self) -> None:
        self.total += _drain(self.q)


def _info_call(log: logging.Logger, msg: str, extra: Optional[Dict[str, Any]]) -> Callable[[], Any]:
    info = log.info
    if extra is None:
        return lambda: info(msg)
    return lambda: info(msg, extra=extra)


def _null(name: str, msg: str, extra: Optional[Dict[str, Any]], n: int) -> Dict[str, Any]:
    return _per_call(_info_call(_logger(name, logging.NullHandler()), msg, extra), n)


def _phospho(name: str, msg: str, extra: Optional[Dict[str, Any]], n: int) -> Dict[str, Any]:
    """The caller's cost through the queue handler; the listener is never started."""
    expected = _expected_calls(n) if extra is not None else 0
    return _with_queue_logger(
        name, lambda log, drain: _per_call(_info_call(log, msg, extra), n, between=drain), expected
    )


def _hold_worker(engine: Any) -> None:
    """Make the engine look to its producers as if its worker ran, without starting it:
    the timed loop then measures the caller's cost alone (nothing drains or sends). A
    benchmark-only reach into the engine's state."""
    engine._running = True


def _engine_queue(engine: Any) -> Any:
    """The engine's queue, for the benchmark to drain between timed chunks."""
    return engine._queue


def _peak_rss_mb() -> Optional[float]:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _throughput(pipeline: Any, n: int, count: Callable[[], int],
                arrived: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
    """Log ``n`` tasks on the pipeline's logger, flush (then wait for ``arrived()``, if
    given: what a flush left in the spool is sent from there), and check ``count()`` == n."""
    info = pipeline.logger.info
    extra = EXTRA
    start = time.perf_counter()
    for _ in repeat(None, n):
        info("answered", extra=extra)
    flushed = pipeline.flush(timeout=120)
    if arrived is not None:
        arrived()
    elapsed = time.perf_counter() - start
    delivered = count()
    stats = pipeline.stats()
    result: Dict[str, Any] = {
        "value": delivered / elapsed,  # == n / elapsed unless tasks were lost
        "unit": "tasks/s",
        "seconds": elapsed,
        "offered_per_s": n / elapsed,
        "delivered": delivered,
        "flushed": flushed,
        "dropped_by_reason": stats.get("dropped_by_reason"),
        "batches": stats.get("batches"),
    }
    if delivered != n:
        result["error"] = (
            f"{delivered} of {n} tasks delivered (flush returned {flushed}, "
            f"dropped_by_reason={stats.get('dropped_by_reason')}, rejected={stats.get('rejected')})"
        )
    return result


# -- the cases -------------------------------------------------------------------------------


def null_extra(n: int) -> Dict[str, Any]:
    return _null("null_extra", "answered", EXTRA, n)


def stdlib_queue(n: int) -> Dict[str, Any]:
    log = _logger("stdlib_queue", logging.handlers.QueueHandler(queue.SimpleQueue()))
    q = log.handlers[0].queue  # type: ignore[attr-defined]
    return _per_call(_info_call(log, "answered", EXTRA), n, between=lambda: _drain(q))


def hot_path(n: int) -> Dict[str, Any]:
    return _phospho("hot_path", "answered", EXTRA, n)


def floor_handler(n: int) -> Dict[str, Any]:
    from phospho_logging._item import IGNORED, INIT_ATTRS

    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    put, dumps = q.put, marshal.dumps

    class Floor(logging.Handler):
        def handle(self, record: logging.LogRecord) -> bool:
            attrs = record.__dict__
            if "input" not in attrs:
                return False
            fields = {}
            for key, value in reversed(attrs.items()):
                if key in IGNORED:
                    if key in INIT_ATTRS:
                        break
                    continue
                fields[key] = value
            put((dumps(fields), record.created, record.name, record.levelname, record.msg, record.pathname,
                 record.lineno, record.funcName))
            return True

    return _per_call(_info_call(_logger("floor_handler", Floor()), "answered", EXTRA), n, between=lambda: _drain(q))


def null_messages(n: int) -> Dict[str, Any]:
    return _null("null_messages", "answered", MESSAGES_EXTRA, n)


def hot_path_otel_idle(n: int) -> Dict[str, Any]:
    """``hot_path`` with OpenTelemetry installed and a tracer provider set, no span open:
    what trace correlation costs a call made outside any span."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    return _phospho("hot_path_otel_idle", "answered", EXTRA, n)


def hot_path_otel_span(n: int) -> Dict[str, Any]:
    """``hot_path`` inside a recording OpenTelemetry span: its trace and span ids go into
    each task's metadata."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    with trace.get_tracer("bench").start_as_current_span("request"):
        return _phospho("hot_path_otel_span", "answered", EXTRA, n)


def hot_path_messages(n: int) -> Dict[str, Any]:
    return _phospho("hot_path_messages", "answered", MESSAGES_EXTRA, n)


def null_plain(n: int) -> Dict[str, Any]:
    return _null("null_plain", "plain line", None, n)


def non_task(n: int) -> Dict[str, Any]:
    return _phospho("non_task", "plain line", None, n)


def _structlog_chain(first: Any, n: int, between: Callable[[], None]) -> Dict[str, Any]:
    """``log.info("answered", **EXTRA)`` through a structlog chain of ``first`` then a drop."""
    import structlog

    def drop(logger: Any, method_name: str, event_dict: Any) -> Any:
        raise structlog.DropEvent

    structlog.configure(processors=[first, drop], cache_logger_on_first_use=True)
    log = structlog.get_logger()
    info = log.info
    fields = dict(EXTRA)
    return _per_call(lambda: info("answered", **fields), n, between)


def structlog_enqueue(n: int) -> Dict[str, Any]:
    """Baseline: a minimal structlog chain that only puts the event dict on a queue."""
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    put = q.put

    def enqueue(logger: Any, method_name: str, event_dict: Any) -> Any:
        put(event_dict)
        return event_dict

    return _structlog_chain(enqueue, n, lambda: _drain(q))


def floor_processor(n: int) -> Dict[str, Any]:
    from phospho_logging._item import new_task_id

    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    put, dumps, now = q.put, marshal.dumps, time.time

    def keep(logger: Any, method_name: str, event_dict: Any) -> Any:
        if "input" not in event_dict:
            return event_dict
        task_id = new_task_id()
        put((dumps(event_dict), now(), method_name, task_id))
        returned = dict(event_dict)
        returned["task_id"] = task_id
        return returned

    return _structlog_chain(keep, n, lambda: _drain(q))


def structlog_processor(n: int) -> Dict[str, Any]:
    """``PhosphoProcessor`` on a pipeline whose worker never runs: the caller's cost."""
    from phospho_logging.structlog import PhosphoProcessor

    with tempfile.TemporaryDirectory(prefix="phospho-bench-") as tmp:
        pipeline = phospho_logging.configure(local_dir=tmp, max_queue_size=10**8, logger="bench.structlog")
        _hold_worker(pipeline.engine)
        drain = _Counting(_engine_queue(pipeline.engine))
        result = _structlog_chain(PhosphoProcessor(pipeline), n, drain)
        enqueued = drain.total
        phospho_logging.shutdown()
    if enqueued != n * REPEATS + min(n, 2000):
        result["error"] = f"expected every call to be enqueued, {enqueued} were"
    return result


# Default options, except a queue that holds the whole burst: the loop logs faster than any
# backend takes tasks, and throughput is what is measured here, not drops.
E2E_OPTIONS: Dict[str, Any] = {}


def _to_test_server(n: int, delay: float = 0.0, **options: Any) -> Dict[str, Any]:
    """``_throughput`` to a ``PhosphoTestServer`` that waits ``delay`` s before each reply."""
    srv = PhosphoTestServer()
    pipeline = None
    try:
        srv.start()
        srv.delay = delay
        pipeline = phospho_logging.configure(
            api_key=srv.api_key, project_id=srv.project_id, base_url=srv.url,
            **{"max_queue_size": n, **E2E_OPTIONS, **options}
        )
        pipeline.logger.propagate = False
        arrived = (lambda: srv.wait_for_tasks(n, timeout=60)) if options.get("durable") else None
        return _throughput(pipeline, n, lambda: len(srv.task_ids), arrived)
    finally:
        if pipeline is not None:
            pipeline.shutdown(timeout=10)
        srv.stop()


def end_to_end(n: int) -> Dict[str, Any]:
    result = _to_test_server(n)
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def end_to_end_50ms(n: int) -> Dict[str, Any]:
    """``end_to_end`` with a server that takes 50 ms a request, as a distant backend does:
    requests overlap (``max_in_flight``) and grow with the backlog, so the wait is hidden."""
    return _to_test_server(n, delay=0.05)


SERVER_PROCESS = """
import sys
from phospho_logging.testing import PhosphoTestServer
server = PhosphoTestServer().start()
print(server.url, server.api_key, server.project_id, flush=True)
sys.stdin.read()  # until the benchmark closes it
server.stop()
"""


def cpu_per_task(n: int) -> Dict[str, Any]:
    """CPU time of this process per task shipped, in ns: the caller, the worker and the
    HTTP client (``time.process_time()`` over the log-and-flush loop, divided by the
    tasks), with the server in another process so its work is not counted."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", SERVER_PROCESS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    pipeline = None
    try:
        assert proc.stdout is not None
        url, key, project = proc.stdout.readline().split()
        pipeline = phospho_logging.configure(api_key=key, project_id=project, base_url=url,
                                             **{"max_queue_size": n, **E2E_OPTIONS})
        pipeline.logger.propagate = False
        info, extra = pipeline.logger.info, EXTRA
        for _ in repeat(None, 1000):  # warm: the connection, the sender threads
            info("answered", extra=extra)
        pipeline.flush(timeout=60)
        sent_before = pipeline.stats()["sent"]
        gc.collect()
        start = time.process_time()
        for _ in repeat(None, n):
            info("answered", extra=extra)
        flushed = pipeline.flush(timeout=120)
        cpu = time.process_time() - start
        sent = pipeline.stats()["sent"] - sent_before
    finally:
        if pipeline is not None:
            pipeline.shutdown(timeout=10)
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    result: Dict[str, Any] = {"value": cpu / n * 1e9, "unit": "ns CPU/task", "sent": sent, "flushed": flushed}
    if sent != n or not flushed:
        result["error"] = f"{sent} of {n} tasks sent (flush returned {flushed})"
    return result


def end_to_end_durable(n: int) -> Dict[str, Any]:
    """``end_to_end`` with ``durable=True``: each batch is written to the spool before it is
    sent and removed once acknowledged; a batch no request can take at once is sent from the
    spool later. Timed until every task arrived (a private spool: see ``private_store``)."""
    return _to_test_server(n, durable=True)


def end_to_end_local(n: int) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="phospho-bench-") as tmp:
        pipeline = phospho_logging.configure(local_dir=tmp, **{"max_queue_size": n, **E2E_OPTIONS})
        try:
            pipeline.logger.propagate = False
            path = pipeline.options.store_path()

            def count() -> int:
                with sqlite3.connect(str(path)) as conn:
                    return int(conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])

            result = _throughput(pipeline, n, count)
        finally:
            pipeline.shutdown(timeout=10)
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


# -- wrap and streams ------------------------------------------------------------------------

CHAT_MESSAGES: Any = MESSAGES_EXTRA["input"]["messages"]
STREAM_CHUNKS = [
    {"id": "chatcmpl-9xYzAbCdEfGhIjKlMnOpQrStUv", "object": "chat.completion.chunk", "created": 1717171717,
     "model": "gpt-4o-mini-2024-07-18",
     "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "logprobs": None,
                  "finish_reason": "stop" if i == 99 else None}]}
    for i in range(100)
]


def _chat(model: str, messages: Any) -> Dict[str, Any]:
    return MESSAGES_EXTRA["output"]  # type: ignore[no-any-return]


def _expected_calls(n: int) -> int:
    """How many calls ``_per_call(call, n)`` makes: the warm-up and the timed loops."""
    return min(n, 2000) + REPEATS * max(1, n // CHUNK) * CHUNK


def _with_queue_logger(name: str, body: Callable[[logging.Logger, Callable[[], None]], Dict[str, Any]],
                       expected: int) -> Dict[str, Any]:
    """Run ``body(logger, drain)`` with a phospho queue handler whose listener never starts."""
    with tempfile.TemporaryDirectory(prefix="phospho-bench-") as tmp:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        sender = PhosphoHandler(local_dir=tmp, max_queue_size=10**8)
        listener = PhosphoQueueListener(q, sender)
        handler = PhosphoQueueHandler(q)
        handler.listener = listener
        _hold_worker(listener.engine)
        log = _logger(name, handler)
        try:
            drain = _Counting(_engine_queue(listener.engine))
            result = body(log, drain)
            enqueued = drain.total
        finally:
            log.removeHandler(handler)
            sender.close()
    if enqueued != expected:
        result["error"] = f"expected {expected} tasks enqueued, {enqueued} were"
    return result


def wrap_plain(n: int) -> Dict[str, Any]:
    create, messages = _chat, CHAT_MESSAGES
    return _per_call(lambda: create(model="gpt-4o-mini", messages=messages), n)


def wrap_call(n: int) -> Dict[str, Any]:
    messages = CHAT_MESSAGES

    def body(log: logging.Logger, drain: Callable[[], None]) -> Dict[str, Any]:
        create = phospho_logging.wrap(_chat, logger=log)
        return _per_call(lambda: create(model="gpt-4o-mini", messages=messages), n, between=drain)

    return _with_queue_logger("wrap_call", body, _expected_calls(n))


def _per_chunk(result: Dict[str, Any]) -> Dict[str, Any]:
    size = len(STREAM_CHUNKS)
    result["value"] /= size
    result["runs"] = [r / size for r in result["runs"]]
    result["unit"] = "ns/chunk"
    return result


def stream_plain(n: int) -> Dict[str, Any]:
    chunks = STREAM_CHUNKS

    def consume() -> None:
        for _ in (c for c in chunks):
            pass

    return _per_chunk(_per_call(consume, max(1, n // len(chunks))))


def stream_wrapped(n: int) -> Dict[str, Any]:
    chunks = STREAM_CHUNKS
    streams = max(1, n // len(chunks))

    def body(log: logging.Logger, drain: Callable[[], None]) -> Dict[str, Any]:
        log_stream = phospho_logging.log_stream

        def consume() -> None:
            for _ in log_stream((c for c in chunks), input=MESSAGES_EXTRA["input"], logger=log):
                pass

        return _per_chunk(_per_call(consume, streams, between=drain))

    return _with_queue_logger("stream_wrapped", body, _expected_calls(streams))


def redact_worker(n: int) -> Dict[str, Any]:
    from phospho_logging._event import encode
    from phospho_logging._item import make_snapshot
    from phospho_logging._redact import make_redaction

    fields = {"input": "Hi, I am jane@example.com, call me on +33 6 12 34 56 78 " + EXTRA["input"],
              "output": "Here is your key: sk-abcdefghijklmnopqrstuvwxyz " + EXTRA["output"],
              "metadata": dict(EXTRA["metadata"])}
    redaction = make_redaction(True)
    count = max(1, n // 10)

    def build(transform: Any) -> float:
        started = time.perf_counter_ns()
        for _ in range(count):
            encode(make_snapshot(dict(fields)), max_bytes=1_000_000, transform=transform)
        return (time.perf_counter_ns() - started) / count

    runs = []
    for _ in range(3):
        runs.append(build(redaction) - build(None))
    clean = {"input": EXTRA["input"], "output": EXTRA["output"], "metadata": dict(EXTRA["metadata"])}
    fields, pii = clean, fields
    no_pii = min(build(redaction) - build(None) for _ in range(3))
    return {"value": min(runs), "runs": runs, "no_pii": no_pii, "pii_fields": sorted(pii),
            "unit": "ns/task more on the worker (an e-mail, a phone number, a key)"}


OLLAMA_LINES = [json.dumps({"model": "llama3", "created_at": "2026-12-05T00:00:00Z", "response": f" word{i}",
                            "done": False}).encode() for i in range(100)]


def stream_raw_lines(n: int) -> Dict[str, Any]:
    lines = OLLAMA_LINES
    streams = max(1, n // len(lines))

    def body(log: logging.Logger, drain: Callable[[], None]) -> Dict[str, Any]:
        log_stream = phospho_logging.log_stream

        def consume() -> None:
            for _ in log_stream(iter(lines), input="q", logger=log):
                pass

        result = _per_call(consume, streams, between=drain)
        result["value"] /= len(lines)
        result["runs"] = [r / len(lines) for r in result["runs"]]
        result["unit"] = "ns/line"
        return result

    return _with_queue_logger("stream_raw_lines", body, _expected_calls(streams))


def stream_raw_cut(n: int) -> Dict[str, Any]:
    line = json.dumps({"model": "llama3", "response": "", "done": True, "eval_count": 3,
                       "context": list(range(max(1, n // 7)))}).encode() + b"\n"
    chunks = [line[i:i + 1] for i in range(len(line))]
    log = logging.getLogger("phospho.bench.raw_cut")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    log.setLevel(logging.INFO)
    runs = []
    for _ in range(3):
        started = time.perf_counter_ns()
        for _ in phospho_logging.log_stream(iter(chunks), input="q", logger=log):
            pass
        runs.append((time.perf_counter_ns() - started) / len(line))
    return {"value": min(runs), "runs": runs, "unit": f"ns/byte ({len(line)} bytes)"}


def _latencies(pipeline: Any, n: int) -> Dict[str, Any]:
    """Per-call latency of ``n`` task logs (p50, p99, max) and the RSS growth meanwhile."""
    info = pipeline.logger.info
    extra = EXTRA
    clock = time.perf_counter_ns
    # Preallocated (8 bytes a sample), so the samples are not counted as the logger's memory.
    samples = array.array("q", bytes(8 * n))
    before = _rss_now_mb()
    for i in range(n):
        start = clock()
        info("answered", extra=extra)
        samples[i] = clock() - start
    growth = _rss_now_mb() - before
    samples = array.array("q", sorted(samples))
    return {
        "value": samples[int(len(samples) * 0.99)],
        "unit": "ns p99",
        "p50_ns": samples[len(samples) // 2],
        "max_ns": samples[-1],
        "rss_growth_mb": growth,
        "stats": {k: v for k, v in pipeline.stats().items() if k in ("enqueued", "sent", "spooled", "dropped")},
    }


def _rss_now_mb() -> float:
    """Current resident memory (Linux /proc), in MB; peak RSS elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float(_peak_rss_mb() or 0.0)


def latency_up(n: int) -> Dict[str, Any]:
    """Per-call p99 with a healthy backend (the worker sending meanwhile)."""
    srv = PhosphoTestServer().start()
    with tempfile.TemporaryDirectory(prefix="phospho-bench-") as tmp:
        pipeline = phospho_logging.configure(api_key=srv.api_key, project_id=srv.project_id, base_url=srv.url,
                                             local_dir=tmp)
        try:
            pipeline.logger.propagate = False
            return _latencies(pipeline, n)
        finally:
            pipeline.shutdown(timeout=10)
            srv.stop()


def latency_down(n: int) -> Dict[str, Any]:
    """Per-call p99 and memory growth with the backend refusing connections."""
    srv = PhosphoTestServer().start()
    url = srv.url
    srv.stop()
    with tempfile.TemporaryDirectory(prefix="phospho-bench-") as tmp:
        pipeline = phospho_logging.configure(api_key="k", project_id="p", base_url=url, local_dir=tmp)
        try:
            pipeline.logger.propagate = False
            return _latencies(pipeline, n)
        finally:
            pipeline.shutdown(timeout=10)


def exit_hung(n: int) -> Dict[str, Any]:
    """Seconds for a process to exit after logging ``n`` tasks, the backend never answering."""
    import subprocess

    srv = PhosphoTestServer().start()
    srv.hang_next(10**6)
    code = (
        "import logging, sys, phospho_logging\n"
        "phospho_logging.configure(flush_interval=0.01)\n"
        f"for i in range({n}): logging.getLogger('phospho').info('t', extra={{'input': str(i)}})\n"
        "print('logged', flush=True); sys.stdin.readline()\n"
    )
    with tempfile.TemporaryDirectory(prefix="phospho-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHOSPHO_")}
        env.update(PHOSPHO_API_KEY=srv.api_key, PHOSPHO_PROJECT_ID=srv.project_id, PHOSPHO_BASE_URL=srv.url,
                   PHOSPHO_LOCAL_DIR=tmp, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "logged"
            srv.wait_for_requests(1, timeout=30)
            start = time.perf_counter()
            proc.communicate("\n", timeout=60)
            seconds = time.perf_counter() - start
        finally:
            proc.kill()
            srv.stop()
    return {"value": seconds, "unit": "s (shutdown_timeout=5)"}


def _sdk() -> Any:
    """The official phospho SDK, if installed (``pip install phospho``), else None."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns that it is deprecated
            import phospho  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return phospho


@contextlib.contextmanager
def _sdk_on_loopback(delay: float = 0.0) -> Iterator[Any]:
    """The SDK initialised against a loopback server (``(phospho, server)``) that waits
    ``delay`` s before each reply, or None."""
    phospho = _sdk()
    if phospho is None:
        yield None
        return
    srv = PhosphoTestServer().start()
    srv.delay = delay
    try:
        phospho.init(api_key=srv.api_key, project_id=srv.project_id, base_url=srv.url)
        yield phospho, srv
    finally:
        srv.stop()


SDK_MISSING = {"skipped": "the phospho package is not installed"}


def sdk_log(n: int) -> Dict[str, Any]:
    """``phospho.log(...)`` per call, the SDK's sender shipping to a loopback server."""
    with _sdk_on_loopback() as sdk:
        if sdk is None:
            return dict(SDK_MISSING)
        phospho, _ = sdk
        fields = dict(EXTRA)
        return _per_call(lambda: phospho.log(**fields), n)


def sdk_end_to_end(n: int, delay: float = 0.0) -> Dict[str, Any]:
    """Tasks/s the SDK delivers to a loopback server (same load as ``end_to_end``)."""
    with _sdk_on_loopback(delay) as sdk:
        if sdk is None:
            return dict(SDK_MISSING)
        phospho, srv = sdk
        fields = dict(EXTRA)
        start = time.perf_counter()
        for _ in repeat(None, n):
            phospho.log(**fields)
        srv.wait_for_tasks(n, timeout=120)
        elapsed = time.perf_counter() - start
        delivered = len(srv.tasks)
    result: Dict[str, Any] = {"value": delivered / elapsed, "unit": "tasks/s", "delivered": delivered}
    if delivered != n:
        result["error"] = f"{delivered} of {n} tasks delivered within 120 s"
    return result


def sdk_end_to_end_50ms(n: int) -> Dict[str, Any]:
    """``sdk_end_to_end`` with a server that takes 50 ms a request (as ``end_to_end_50ms``)."""
    return sdk_end_to_end(n, delay=0.05)


CASES: Dict[str, Callable[[int], Dict[str, Any]]] = {
    f.__name__: f
    for f in (
        null_extra, stdlib_queue, hot_path, hot_path_otel_idle, hot_path_otel_span, floor_handler, null_messages,
        hot_path_messages,
        null_plain, non_task, structlog_enqueue, structlog_processor, floor_processor, end_to_end,
        end_to_end_50ms, end_to_end_durable, end_to_end_local, cpu_per_task,
        latency_up, latency_down, exit_hung, sdk_log, sdk_end_to_end, sdk_end_to_end_50ms,
        wrap_plain, wrap_call, stream_plain, stream_wrapped, stream_raw_lines, stream_raw_cut, redact_worker,
    )
}


@contextlib.contextmanager
def private_store() -> Iterator[None]:
    """Run with ``PHOSPHO_LOCAL_DIR`` pointing at a temporary directory (unless it is set):
    a benchmark never writes to, or replays from, the user's own local store."""
    if os.environ.get("PHOSPHO_LOCAL_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="phospho-bench-") as tmp:
        os.environ["PHOSPHO_LOCAL_DIR"] = tmp
        try:
            yield
        finally:
            del os.environ["PHOSPHO_LOCAL_DIR"]


def main(argv: Optional[list] = None) -> int:
    with private_store():
        return _main(argv)


def _main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--n", type=int, default=20_000, help="calls (or tasks) per timed loop")
    parser.add_argument("--max-queue-size", type=int, help="end-to-end cases: override this option")
    args = parser.parse_args(argv)
    if args.max_queue_size is not None:
        E2E_OPTIONS["max_queue_size"] = args.max_queue_size
    result = {"case": args.case, "n": args.n}
    result.update(CASES[args.case](args.n))
    if E2E_OPTIONS and args.case.startswith("end_to_end"):
        result["options"] = dict(E2E_OPTIONS)
    result["version"] = phospho_logging.__version__
    result["package"] = str(Path(phospho_logging.__file__).resolve().parent)
    print(json.dumps(result), flush=True)
    if "error" in result:
        print(f"{args.case}: ERROR: {result['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
