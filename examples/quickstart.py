"""Log a few LLM tasks with the standard logging module, then show where they went.

Runs offline: with no PHOSPHO_API_KEY / PHOSPHO_PROJECT_ID set, tasks go to the local
store (run `phospho-logging tail` to see them again). With both set, they go to phospho.
"""

import logging

import phospho_logging

pipeline = phospho_logging.configure()  # reads PHOSPHO_* from the environment
log = logging.getLogger("phospho")

log.info(
    "answered",
    extra={
        "input": "What is 2+2?",
        "output": "4",
        "metadata": {"model": "m1"},
        "session_id": "s-1",
        "user_id": "u-7",
    },
)
# An OpenAI-style request and response: the input text is the last message,
# the output text the first choice, and the model and token usage are filled in.
log.info(
    "chat",
    extra={
        "input": {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Capital of France?"},
            ],
        },
        "output": {
            "model": "gpt-4o-mini",
            "choices": [{"message": {"role": "assistant", "content": "Paris."}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
        },
        "session_id": "s-1",
    },
)
log.info("not a task: records without an input are ignored")

delivered = pipeline.flush(timeout=10)
stats = pipeline.stats()
where = stats["destination"] if pipeline.options.online else f"the {stats['destination']}"
print(f"delivered: {delivered}; sent {stats['sent']} of {stats['enqueued']} task(s) to {where}")

if not pipeline.options.online:
    from phospho_logging.cli import main

    print("\nThe latest tasks in the local store (`phospho-logging tail -n 2`):")
    main(["tail", "-n", "2", "--local-dir", str(pipeline.options.store_path().parent)])
