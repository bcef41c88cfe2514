"""The exporter boundary: what the engine hands an exporter, and what it gets back.

An exporter sends one batch of wire-format events somewhere, synchronously, within a
timeout, and says what happened in an ``ExportResult``. It never retries, sleeps, spools
or counts: the engine above it does all of that, the same way for every exporter
(``_delivery``). ``HTTPExporter`` (``_http``), the local store (``_store``) and
``phospho_logging.testing.InMemoryExporter`` implement it; ``configure(exporter=...)``
takes any object that does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

__all__ = ["BODY_HEAD", "BODY_TAIL", "ENVELOPE_BYTES", "ExportResult", "Exporter", "WireEvent", "request_body"]

#: A request body: ``BODY_HEAD``, the events joined by commas, ``BODY_TAIL``.
BODY_HEAD, BODY_TAIL = b'{"batched_log_events":[', b"]}"
#: The bytes a request adds around its events: ``{"batched_log_events":[...]}``.
ENVELOPE_BYTES = len(BODY_HEAD + BODY_TAIL)


class WireEvent(NamedTuple):
    """One event as it goes over the wire, with the fields exporters index it by.

    Attributes:
        task_id: the task's id (the server skips ids it already has).
        session_id: the task's session, or None.
        created: ``client_created_at``, in Unix seconds.
        json: the event as compact UTF-8 JSON (one object of the ingestion API).
    """

    task_id: str
    session_id: Optional[str]
    created: int
    json: bytes

    def data(self) -> Dict[str, Any]:
        """The event as a dict (parsed from ``json``)."""
        return json.loads(self.json)  # type: ignore[no-any-return]


def request_body(events: Sequence[WireEvent]) -> bytes:
    """The body of ``POST /v2/log/{project_id}`` for these events."""
    if not events:
        return BODY_HEAD + BODY_TAIL
    parts = [e.json for e in events]
    # The envelope joins the first and last events: the body is made in one copy.
    parts[0] = BODY_HEAD + parts[0]
    parts[-1] = parts[-1] + BODY_TAIL
    return b",".join(parts)


#: What an ``ExportResult`` can say, and what the engine does about it.
KINDS = {
    "ok": "delivered (``rejected`` lists events the server refused one by one; never retried)",
    "retry": "may succeed later unchanged (timeouts, connection errors, 408/425/429/5xx): retried with back-off",
    "too_large": "the request was too large (413): the batch is split, a single event truncated",
    "invalid": "the server could not accept the batch (400/422): split until the bad event is isolated, rejected",
    "auth": "the key was refused (401/403): the tasks are spooled and sending is paused",
    "not_found": "unknown project (404): as for auth",
    "failed": "anything else: not retried, the tasks are spooled",
}


@dataclass(frozen=True)
class ExportResult:
    """What happened to one batch.

    Attributes:
        kind: one of ``KINDS`` (``"ok"``, ``"retry"``, ``"too_large"``, ``"invalid"``,
            ``"auth"``, ``"not_found"``, ``"failed"``).
        rejected: for ``"ok"``: the index in the batch of each event the server refused,
            with its reason.
        error: one line for people (never a secret).
        status: the HTTP status, if there was one.
        retry_after: the server's wish, in seconds, before the next try.
        cause: for failures without a status: ``"timeout"``, ``"refused"``, ``"dns"``,
            ``"tls"``, ``"connection"``, ``"storage"`` (a local file could not be written),
            and ``"exporter"`` when the engine made the result because the exporter raised
            or returned something else.
    """

    kind: str
    rejected: Mapping[int, str] = field(default_factory=dict)
    error: str = ""
    status: Optional[int] = None
    retry_after: Optional[float] = None
    cause: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ExportResult kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def ok(self) -> bool:
        """True when the batch was delivered (some events may still be ``rejected``)."""
        return self.kind == "ok"

    @classmethod
    def delivered(cls, rejected: Optional[Mapping[int, str]] = None) -> ExportResult:
        """The batch arrived; ``rejected`` maps refused events' indexes to reasons."""
        return cls("ok", rejected=dict(rejected or {}))

    @classmethod
    def retry(cls, error: str, *, status: Optional[int] = None, retry_after: Optional[float] = None,
              cause: Optional[str] = None) -> ExportResult:
        """A failure that may pass if the same batch is sent again later."""
        return cls("retry", error=error, status=status, retry_after=retry_after, cause=cause)


@runtime_checkable
class Exporter(Protocol):
    """Sends batches of ``WireEvent`` somewhere. Implement ``export`` and ``close``.

    ``export`` is called from one thread at a time (the engine's worker, or the exiting
    thread at shutdown), whichever engines share the exporter, with the events of one
    batch (a tuple, in order) and the seconds it may take at most: it must return by then
    (exit is bounded only if exporters are). It returns an ``ExportResult`` and should not
    raise: an exception (any, even ``SystemExit``) is treated as ``ExportResult.retry`` with
    the exception as its error, counted under ``exporter_error``. ``close`` releases
    connections; ``export`` may be called again after it (and must then reconnect).

    Optional: ``reset_after_fork()`` is called in a forked child, to drop (not close)
    connections the parent owns; ``destination`` names where events go, for messages and
    ``stats()``; ``local = True`` says the exporter writes to local storage, so at the
    shutdown deadline the engine still writes what is left to it, within the exit grace.
    """

    def export(self, events: Sequence[WireEvent], timeout: float) -> ExportResult:
        """Send one batch; see the class docstring."""
        ...  # pragma: no cover - protocol

    def close(self) -> None:
        """Release connections and files."""
        ...  # pragma: no cover - protocol


def destination_of(exporter: Any) -> str:
    """What ``exporter`` calls its destination, or its repr."""
    name = getattr(exporter, "destination", None)
    if isinstance(name, str) and name:
        return name
    try:
        return repr(exporter)
    except Exception:  # noqa: BLE001 - a user __repr__
        return type(exporter).__name__
