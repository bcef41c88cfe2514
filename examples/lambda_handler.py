"""AWS Lambda-style handler: the runtime freezes the process as soon as the handler returns,
so flush before returning (a worker thread does not run while the process is frozen).

`handler(event, context)` is what you deploy. Run this file to try it offline: three
invocations (or, with `--stdin`, one per line read), answered on stdout; tasks go to the
local store, or to phospho when PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID are set.
"""

import logging
import sys

import phospho_logging

# Once per container (the "init" phase): the engine is reused by every invocation.
phospho_logging.configure(shutdown_timeout=2)
log = logging.getLogger("phospho")


def handler(event, context=None):
    question = event["question"]
    answer = f"You asked: {question}"  # your LLM call
    log.info("answered", extra={"input": question, "output": answer,
                                "session_id": event.get("session_id"),
                                "metadata": {"request_id": getattr(context, "aws_request_id", None)}})
    # The runtime may freeze the process right after this return: deliver now, within a
    # bound that fits the function's timeout. False means some tasks wait in the spool
    # (sent at the next invocation's flush, or the next cold start).
    phospho_logging.flush(timeout=2)
    return {"statusCode": 200, "body": answer}


if __name__ == "__main__":
    questions = sys.stdin if "--stdin" in sys.argv else ["What is a cold start?", "Why flush?", "And then?"]
    for line in questions:
        result = handler({"question": line.strip(), "session_id": "lambda-demo"})
        print(f"done: {result['body']}", flush=True)
    stats = phospho_logging.stats()
    print(f"delivered: {stats['queued'] == 0}; sent {stats['sent']} of {stats['enqueued']} task(s) to the "
          f"{stats['destination']}")
