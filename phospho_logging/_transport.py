"""Exporters: the one-method interface the worker sends batches through.

An exporter takes a list of encoded events and says what happened to each. It never
retries and never sleeps: retry policy belongs to the worker. Exceptions of the
underlying library are translated here, once, into ``Outcome`` values.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._version import __version__

#: Sessions a forked child inherited: kept referenced so they are never closed there.
_inherited: List[Any] = []

USER_AGENT = f"phospho-logging/{__version__} python/{platform.python_version()}"

#: Statuses worth retrying: the request may succeed later, unchanged.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class Outcome:
    """What happened to one batch.

    ``rejected`` maps an event's index in the batch to the server's reason. ``retry``
    says the whole batch may be sent again; ``retry_after`` is the server's wish in
    seconds, if it said. ``error`` explains a failure in one line (no secrets).
    """

    ok: bool
    rejected: Dict[int, str] = field(default_factory=dict)
    retry: bool = False
    retry_after: Optional[float] = None
    error: str = ""
    status: Optional[int] = None
    too_large: bool = False


class Exporter:
    """Base class: ``export`` sends one batch, synchronously, with a bounded timeout."""

    destination = ""

    def export(
        self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes], timeout: float
    ) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and files."""

    def reset_after_fork(self) -> None:
        """In a forked child: drop the parent's connections without closing them (closing
        a TLS session here could disturb the parent's)."""


def encode_batch(encoded: Sequence[bytes]) -> bytes:
    """The request body, built from events that are already JSON."""
    return b'{"batched_log_events":[' + b",".join(encoded) + b"]}"


def parse_retry_after(value: Optional[str], cap: float = 60.0) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        import datetime as _dt

        now = _dt.datetime.now(when.tzinfo or _dt.timezone.utc)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, cap))


class HTTPExporter(Exporter):
    """POSTs batches to ``{base_url}/v2/log/{project_id}`` over one keep-alive session."""

    def __init__(self, endpoint: str, api_key: str) -> None:
        # Imported here, on the configuring thread: a first import on two worker threads at
        # once (an old and a new pipeline) can deadlock on the import lock.
        import requests  # noqa: F401
        self.destination = endpoint
        self._endpoint = endpoint
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._session: Any = None  # a requests.Session, made on the worker thread on first use

    def __repr__(self) -> str:
        return f"HTTPExporter({self._endpoint!r})"

    def export(
        self, events: Sequence[Dict[str, Any]], encoded: Sequence[bytes], timeout: float
    ) -> Outcome:
        import requests

        if self._session is None:
            self._session = make_session(self._endpoint)
        body = encode_batch(encoded)
        try:
            response = self._session.post(
                self._endpoint,
                data=body,
                headers=self._headers,
                timeout=(min(timeout, 5.0), timeout),
                allow_redirects=False,
            )
        except requests.Timeout:
            return Outcome(False, retry=True, error=f"no answer from {self._endpoint} within {timeout:g} s")
        except requests.RequestException as exc:
            return Outcome(False, retry=True, error=f"cannot reach {self._endpoint}: {type(exc).__name__}")
        status = response.status_code
        if status == 200:
            return Outcome(True, rejected=_rejections(response.content, len(encoded)), status=status)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        detail = _detail(response.content)
        if status in (401, 403):
            error = f"phospho rejected the API key (HTTP {status}{detail})"
        elif status == 404:
            error = f"unknown project: {self._endpoint} answered 404{detail}"
        elif status == 413:
            return Outcome(False, too_large=True, status=status, error="batch too large (HTTP 413)")
        elif status == 422:
            error = f"phospho could not parse the batch (HTTP 422{detail})"
        else:
            error = f"{self._endpoint} answered HTTP {status}{detail}"
        return Outcome(
            False,
            retry=status in RETRYABLE_STATUSES,
            retry_after=retry_after,
            error=error,
            status=status,
        )

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def reset_after_fork(self) -> None:
        if self._session is not None:
            _inherited.append(self._session)  # never closed here: the sockets are the parent's
        self._session = None


def make_session(url: str) -> Any:
    """A requests session for ``url`` whose environment settings (proxies, ``NO_PROXY``, a
    CA bundle from ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``) are read once, now: requests
    otherwise reads them again on every request, a walk over ``os.environ``. ``.netrc`` is
    not read, so it cannot replace the API key (requests lets it override the header)."""
    import requests

    session = requests.Session()
    settings = session.merge_environment_settings(url, {}, None, None, None)
    session.trust_env = False
    session.proxies = settings["proxies"]
    session.verify = settings["verify"]
    session.cert = settings["cert"]
    return session


def _detail(content: bytes) -> str:
    try:
        detail = json.loads(content).get("detail")
    except Exception:  # noqa: BLE001 - any body is possible from a proxy
        return ""
    if not detail:
        return ""
    text = detail if isinstance(detail, str) else json.dumps(detail)[:300]
    return f": {text}"


def _rejections(content: bytes, count: int) -> Dict[int, str]:
    """Per-event ``error_in_log`` entries of a 200 reply, by index."""
    if b'"error_in_log"' not in content:  # the usual reply: skip parsing the whole echo
        return {}
    try:
        logged = json.loads(content).get("logged_events")
    except Exception:  # noqa: BLE001 - a 200 with an odd body still delivered the batch
        return {}
    if not isinstance(logged, list):
        return {}
    rejected = {}
    for index, entry in enumerate(logged[:count]):
        if isinstance(entry, dict) and entry.get("error_in_log"):
            rejected[index] = str(entry["error_in_log"])[:300]
    return rejected


def split_rejections(rejected: Dict[int, str]) -> List[Tuple[str, int]]:
    """Reasons with their counts, for reporting."""
    counts: Dict[str, int] = {}
    for reason in rejected.values():
        counts[reason] = counts.get(reason, 0) + 1
    return sorted(counts.items())
