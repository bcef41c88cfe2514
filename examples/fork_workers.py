"""Fork safety: configure once in the parent, log from forked workers, every task kept once.

multiprocessing with the "fork" start method does what gunicorn --preload and Celery prefork
do: the workers are copies of a parent that already configured phospho_logging. Each forked
worker gets its own queue and worker thread; the parent's queued tasks are not sent twice;
a worker's tasks are delivered when it returns normally or calls sys.exit().

Runs offline: with no PHOSPHO_API_KEY / PHOSPHO_PROJECT_ID, tasks go to the local store,
which is then read back to count them. Without fork (Windows), only the parent's part runs.
"""

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import uuid

import phospho_logging

TASKS_PER_WORKER = 5
RUN = uuid.uuid4().hex[:8]  # tells this run's tasks apart from earlier ones in the store
log = logging.getLogger("phospho")


def log_tasks(worker: str) -> None:
    for i in range(TASKS_PER_WORKER):
        log.info("answered", extra={"input": f"{worker}: question {i}", "output": f"answer {i}",
                                    "session_id": f"{RUN}-{worker}", "metadata": {"run": RUN}})


def worker(name: str) -> None:
    log_tasks(name)
    # Returning ends the process normally: phospho_logging delivers the worker's tasks first.


def worker_ending_with_os_exit(name: str) -> None:
    log_tasks(name)
    # os._exit() skips every exit hook, the one that delivers queued tasks included (Celery
    # prefork workers end this way). Without this shutdown(), these tasks would be lost.
    phospho_logging.shutdown()
    os._exit(0)


pipeline = phospho_logging.configure()
# Logged before the fork and still queued when it happens: the workers must not send it again.
log.info("parent", extra={"input": "parent: question", "output": "answer", "session_id": f"{RUN}-parent",
                          "metadata": {"run": RUN}})
expected = 1

if "fork" in multiprocessing.get_all_start_methods():
    fork = multiprocessing.get_context("fork")
    processes = [fork.Process(target=worker, args=(f"worker-{i}",)) for i in range(3)]
    processes.append(fork.Process(target=worker_ending_with_os_exit, args=("worker-os-exit",)))
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    print("worker exit codes:", [process.exitcode for process in processes])
    expected += TASKS_PER_WORKER * len(processes)
else:
    print("note: this platform has no fork (Windows, say), so only the parent's part ran")

delivered = pipeline.flush(timeout=10)
if pipeline.options.online:
    print("tasks went to phospho: each worker sent its own, so the parent cannot count them here")
else:
    # The most recent tasks of the local store, as `phospho-logging tail --json` prints them.
    tail = subprocess.run([sys.executable, "-m", "phospho_logging", "tail", "--json", "-n", str(10 * expected),
                           "--local-dir", str(pipeline.options.store_path().parent)],
                          capture_output=True, text=True, timeout=60, check=True)
    events = [json.loads(line) for line in tail.stdout.splitlines() if line.startswith("{")]
    ours = [event for event in events if event.get("metadata", {}).get("run") == RUN]
    once = len(ours) == len({event["task_id"] for event in ours})
    print(f"{len(ours)} task(s) of {expected} in the local store {pipeline.options.store_path()}, each once: {once}")
    delivered = delivered and once and len(ours) == expected
print(f"delivered: {delivered}")
