"""Configure phospho-logging with ``logging.config.dictConfig``, log two tasks, show where they went.

    python examples/dictconfig.py [CONFIG]

CONFIG is a .yaml or .json dictConfig file; by default ``logging.yaml`` beside this script,
or ``logging.json`` when PyYAML is not installed. Runs offline: with no
PHOSPHO_API_KEY / PHOSPHO_PROJECT_ID set, the tasks go to the local store (PHOSPHO_LOCAL_DIR
chooses where). With both set, they go to phospho.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import phospho_logging

HERE = Path(__file__).resolve().parent


def load_config(path: Optional[Path] = None) -> Dict[str, Any]:
    """Read a dictConfig from YAML (with PyYAML) or JSON."""
    if path is None:
        try:
            import yaml  # noqa: F401
        except ImportError:
            path = HERE / "logging.json"
        else:
            path = HERE / "logging.yaml"
    print(f"configuration: {path}")
    with path.open(encoding="utf-8") as f:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return dict(yaml.safe_load(f))
        return dict(json.load(f))


logging.config.dictConfig(load_config(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
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
# An OpenAI-style request and response: the input text is the last message, the output
# text the first choice; the model and token usage go into the metadata.
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

# The handler dictConfig attached: a PhosphoHandler, or with the 3.12+ queue shape a
# PhosphoQueueHandler whose PhosphoQueueListener batches and sends.
handler = next(h for h in log.handlers if isinstance(h, (phospho_logging.PhosphoHandler,
                                                         phospho_logging.PhosphoQueueHandler)))
listener = getattr(handler, "listener", None)
if isinstance(listener, phospho_logging.PhosphoQueueListener):
    delivered = listener.flush(timeout=10)
    options = listener.sender.options
else:
    assert isinstance(handler, phospho_logging.PhosphoHandler), "use PhosphoQueueListener to flush"
    delivered = handler.flush(timeout=10)
    options = handler.options
# Flushing is only needed to print the result here: at exit, what is queued is delivered.

stats = handler.stats()
print(f"delivered: {delivered}; sent {stats['sent']} of {stats['enqueued']} task(s) to the {stats['destination']}")

if not options.online:
    from phospho_logging.cli import main

    print("\nThe latest tasks in the local store (`phospho-logging tail -n 2`):")
    main(["tail", "-n", "2", "--local-dir", str(options.store_path().parent)])
