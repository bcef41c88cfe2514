"""Celery with the prefork pool: each task logs a phospho task from a forked child process.

Prefork children end with `os._exit()`, which skips `atexit`: what a child still holds
would be lost. Celery's `worker_process_shutdown` signal runs in each child before it
exits; calling `phospho_logging.shutdown()` there delivers (or spools) it, within
`shutdown_timeout`. Configure once, in the module the worker imports: children get an
engine of their own after the fork.

Run this file to try it offline: it queues four tasks on a filesystem broker (no Redis or
RabbitMQ needed), starts `celery worker --pool=prefork --concurrency=2` on this module,
waits for the results, stops the worker, and counts the tasks in the local store.
"""

import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from celery import Celery
from celery.signals import worker_process_shutdown

import phospho_logging

pipeline = phospho_logging.configure()
log = logging.getLogger("phospho")

FOLDER = Path(os.environ.setdefault("CELERY_DEMO_DIR", tempfile.mkdtemp(prefix="celery-demo-")))
(FOLDER / "broker").mkdir(exist_ok=True)
(FOLDER / "results").mkdir(exist_ok=True)

app = Celery(
    "celery_worker",
    broker="filesystem://",
    broker_transport_options={"data_folder_in": str(FOLDER / "broker"), "data_folder_out": str(FOLDER / "broker"),
                              "control_folder": str(FOLDER / "control")},
    backend=f"file://{FOLDER / 'results'}",
)
app.conf.worker_hijack_root_logger = False  # leave logging (and the phospho logger) as configured


@app.task
def answer(question):
    reply = f"You asked: {question}"  # your LLM call
    log.info("answered", extra={"input": question, "output": reply, "session_id": "celery-demo",
                                "metadata": {"worker_pid": os.getpid()}})
    return reply


@worker_process_shutdown.connect
def deliver_before_the_child_exits(**_):
    phospho_logging.shutdown()


if __name__ == "__main__":
    questions = ["What is Celery?", "What is prefork?", "Why a signal?", "And os._exit?"]
    results = [answer.delay(q) for q in questions]
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_worker", "worker", "--pool=prefork", "--concurrency=2",
         "--loglevel=WARNING", "--without-heartbeat", "--without-mingle", "--without-gossip"],
        cwd=Path(__file__).resolve().parent,
    )
    try:
        for result in results:
            print(result.get(timeout=60))
    finally:
        worker.send_signal(signal.SIGTERM)  # a warm shutdown: the children exit, the signal runs in each
        worker.wait(timeout=60)
    print(f"worker exit code: {worker.returncode}")
    if not pipeline.options.online:
        from phospho_logging.cli import main

        print("What the children logged (`phospho-logging tail --session celery-demo`):")
        main(["tail", "--session", "celery-demo", "--local-dir", str(pipeline.options.store_path().parent)])
    print(f"delivered: {phospho_logging.flush(timeout=10)}")
