"""Privacy and volume: mask personal data before it leaves the process, keep one session in
three, and drop what your own rule says must never be logged.

Runs offline: tasks go to the local store (`phospho-logging tail` shows them, masked), or to
phospho when PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID are set.
"""

import logging

import phospho_logging
from phospho_logging.redact import mask_event


def redact(event):
    """Your rule on top of the built-in masks: internal tasks are never sent."""
    if event["metadata"].get("internal"):
        return None  # dropped, counted in stats()["redacted_out"]
    event["metadata"].pop("customer_name", None)
    return mask_event(event)  # e-mails, phones, cards, IBANs, keys -> [REDACTED:...]


pipeline = phospho_logging.configure(redact=redact, sample_rate=1 / 3)
log = logging.getLogger("phospho")

for session in range(30):
    for turn in range(2):
        log.info("answered", extra={
            "input": f"Hi, I'm jane{session}@example.com, my card is 4111 1111 1111 1111",
            "output": "Thanks, I cannot read card numbers. Call +1 415 555 2671.",
            "session_id": f"session-{session}",
            "metadata": {"customer_name": "Jane Doe", "turn": turn},
        })
log.info("health check", extra={"input": "ping", "metadata": {"internal": True}})

delivered = pipeline.flush(timeout=10)
stats = pipeline.stats()
print(f"delivered: {delivered}; sent {stats['sent']} of {stats['enqueued']} task(s) to the {stats['destination']}")
print(f"left out on purpose: {stats['sampled_out']} by sample_rate (whole sessions), "
      f"{stats['redacted_out']} by your redact function")

if not pipeline.options.online:
    from phospho_logging.cli import main

    print("\nWhat was kept (`phospho-logging tail -n 2`):")
    main(["tail", "-n", "2", "--local-dir", str(pipeline.options.store_path().parent)])
