"""Feedback on a task: your user's thumbs up or down, filed in phospho as a human evaluation.

Runs offline: with no PHOSPHO_API_KEY / PHOSPHO_PROJECT_ID set, tasks and feedback go to the
local store, and `phospho-logging push` sends them to phospho later (the tasks first). With
both set, feedback follows its task to phospho; the caller never waits for it.
"""

import logging

import phospho_logging

pipeline = phospho_logging.configure()

# 1. A task, and its id: phospho_logging.log returns the task as it will be sent.
task = phospho_logging.log(input="What is the capital of Australia?", output="Canberra.", session_id="s-1")

# 2. The user clicks "thumbs up": no network call here, the feedback is shipped after the task.
phospho_logging.feedback(task["task_id"], "success", notes="quick and right", source="user")

# 3. The same as a log record, from code that only has a logger (no input: it is not a task).
logging.getLogger("phospho").info(
    "rated", extra={"task_id": task["task_id"], "flag": "failure", "notes": "changed their mind", "source": "user"}
)

delivered = pipeline.flush(timeout=10)
stats = pipeline.stats()
print(f"delivered: {delivered}; sent {stats['sent']} task(s) to the {stats['destination']}")
fb = stats["feedback"]
print(f"feedback: {fb['given']} given, {fb['sent']} sent to the {stats['destination']}, {fb['spooled']} in the spool, "
      f"{fb['dropped']} dropped")

if not pipeline.options.online:
    from phospho_logging.cli import main

    print("\nWhat `phospho-logging push --dry-run` would send to phospho:")
    main(["push", "--dry-run", "--local-dir", str(pipeline.options.store_path().parent)])
