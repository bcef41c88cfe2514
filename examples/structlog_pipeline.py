"""structlog: a processor in the chain turns events with an `input` into phospho tasks.

Runs offline: with no PHOSPHO_API_KEY / PHOSPHO_PROJECT_ID, tasks go to the local store.
The console line of each task carries its task_id, so it can be found in phospho.
"""

import structlog

import phospho_logging
from phospho_logging.structlog import PhosphoProcessor

pipeline = phospho_logging.configure()
structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        PhosphoProcessor(),  # anywhere in the chain; ships events that have an `input`
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.dev.ConsoleRenderer(colors=False),
    ]
)
log = structlog.get_logger()

structlog.contextvars.bind_contextvars(session_id="s-42")  # e.g. from a request header
log.info("answered", input="What is the capital of France?", output="Paris.", model="m1")
log.info("plain log line, not a task")

print("delivered:", pipeline.flush(timeout=10), "| stats:", {k: pipeline.stats()[k] for k in ("enqueued", "sent")})
