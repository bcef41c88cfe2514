"""The loopback server's validation, applied to one event as it would go over the wire."""

from __future__ import annotations

from typing import Any, Dict, Optional

from phospho_logging._serialize import dumps
from phospho_logging._testserver import _check_event, _parse_batch


def wire_errors(event: Dict[str, Any]) -> Optional[str]:
    """What the backend would say about ``event``: None when it would log it."""
    payload, errors = _parse_batch(b'{"batched_log_events":[' + dumps(event) + b']}')
    if errors:
        return f"422: {errors}"
    return _check_event(payload["batched_log_events"][0])
