"""loguru as the logging library, OpenTelemetry for traces: each task carries the trace and
span ids of the span it was logged in.

Needs `loguru`, `opentelemetry-api` and `opentelemetry-sdk` (all in the dev install). Runs
offline: tasks go to the local store, or to phospho when PHOSPHO_API_KEY and
PHOSPHO_PROJECT_ID are set.
"""

import json

from loguru import logger
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import phospho_logging
from phospho_logging import PhosphoHandler

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("example")

handler = PhosphoHandler()
logger.add(handler, format="{message}")

with tracer.start_as_current_span("handle-request") as span:
    question = "What is a span?"
    answer = "A timed operation in a trace."  # your LLM call
    logger.bind(input=question, output=answer, session_id="otel-demo").info("answered")
    ids = span.get_span_context()
    print(f"span: trace_id={ids.trace_id:032x} span_id={ids.span_id:016x}")

delivered = handler.flush(timeout=10)
stats = handler.stats()
print(f"delivered: {delivered}; sent {stats['sent']} of {stats['enqueued']} task(s) to the {stats['destination']}")

if not handler.options.online:
    import contextlib
    import io

    from phospho_logging.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["tail", "-n", "1", "--json", "--local-dir", str(handler.options.store_path().parent)])
    task = json.loads(out.getvalue().splitlines()[-1])
    print(f"task:  trace_id={task['metadata']['trace_id']} span_id={task['metadata']['span_id']} "
          f"input={task['input']!r}")
phospho_logging.shutdown()
