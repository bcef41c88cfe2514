"""``HTTPExporter``: batches to phospho's ingestion API, over one keep-alive session.

The only HTTP client of the package: the engine, ``phospho-logging check`` and
``phospho-logging push`` all send through it. Exceptions and statuses of the underlying
library are translated here, once, into ``ExportResult`` values (``_export.KINDS``).
"""

from __future__ import annotations

import datetime
import json
import platform
import re
from email.utils import parsedate_to_datetime
from typing import Any, Dict, List, Optional, Sequence

from ._export import ExportResult, WireEvent, request_body
from ._version import __version__

USER_AGENT = f"phospho-logging/{__version__} python/{platform.python_version()}"

#: Statuses worth retrying: the request may succeed later, unchanged.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The longest ``Retry-After`` honoured, in seconds.
RETRY_AFTER_CAP = 60.0

#: Sessions a forked child inherited: kept referenced so they are never closed there.
_inherited: List[Any] = []


def parse_retry_after(value: Optional[str], cap: float = RETRY_AFTER_CAP) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except OverflowError:
        return cap
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
            if when.tzinfo is None:  # "-0000": a UTC time of unknown origin (RFC 5322)
                when = when.replace(tzinfo=datetime.timezone.utc)
            seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, cap))


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


class HTTPExporter:
    """POSTs batches to ``{base_url}/v2/log/{project_id}``.

    Args:
        endpoint: the ingestion URL of the project.
        api_key: the key sent as ``Authorization: Bearer``; never shown.
    """

    def __init__(self, endpoint: str, api_key: str) -> None:
        # Imported here, on the configuring thread: a first import on two worker threads at
        # once (an old and a new engine) can deadlock on the import lock.
        import requests  # noqa: F401

        self.destination = endpoint
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._session: Any = None  # made on first use, on the sending thread

    def __repr__(self) -> str:
        return f"HTTPExporter({self.destination!r})"

    def export(self, events: Sequence[WireEvent], timeout: float) -> ExportResult:
        """POST one batch and classify the answer; never raises for network problems."""
        import requests

        url = self.destination
        if self._session is None:
            self._session = make_session(url)
        try:
            response = self._session.post(
                url,
                data=request_body(events),
                headers=self._headers,
                timeout=(min(timeout, 5.0), timeout),
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            return ExportResult.retry(f"TLS error talking to {url}: {_reason(exc)}", cause="tls")
        except requests.Timeout:
            return ExportResult.retry(f"no answer from {url} within {timeout:g} s", cause="timeout")
        except requests.RequestException as exc:
            reason = _reason(exc)
            return ExportResult.retry(f"cannot reach {url}: {reason}", cause=_cause(reason))
        return classify(response.status_code, response.content, response.headers, url, len(events))

    def close(self) -> None:
        """Close the session; the next ``export`` opens a new one."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's connections without closing them."""
        if self._session is not None:
            _inherited.append(self._session)  # never closed here: the sockets are the parent's
        self._session = None


def classify(status: int, content: bytes, headers: Any, url: str, count: int) -> ExportResult:
    """The ``ExportResult`` of an HTTP answer to a batch of ``count`` events."""
    if status == 200:
        return ExportResult.delivered(_rejections(content, count))
    detail = _detail(content)
    if status in (401, 403):
        return ExportResult("auth", error=f"phospho rejected the API key (HTTP {status}{detail})", status=status)
    if status == 404:
        return ExportResult("not_found", error=f"unknown project: {url} answered 404{detail}", status=status)
    if status == 413:
        return ExportResult("too_large", error="batch too large (HTTP 413)", status=status)
    if status in (400, 422):
        return ExportResult("invalid", error=f"phospho could not accept the batch (HTTP {status}{detail})",
                            status=status)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if 300 <= status < 400:
        where = headers.get("Location", "elsewhere")
        return ExportResult("failed", error=f"{url} redirects (HTTP {status}) to {where}: set base_url to the API root",
                            status=status)
    error = f"{url} answered HTTP {status}{detail}"
    if status in RETRYABLE_STATUSES:
        return ExportResult.retry(error, status=status, retry_after=retry_after)
    return ExportResult("failed", error=error, status=status, retry_after=retry_after)


def _reason(exc: BaseException) -> str:
    """The useful end of a requests exception ("[Errno 111] Connection refused")."""
    text = str(exc)
    found = re.findall(r"\[(?:Errno -?\d+|SSL: [A-Z_]+|SSL)\][^'\"()]*", text)
    return found[-1].strip() if found else type(exc).__name__


def _cause(reason: str) -> str:
    lowered = reason.lower()
    if "refused" in lowered:
        return "refused"
    if "name or service" in lowered or "nodename" in lowered or "getaddrinfo" in lowered or "errno -" in lowered:
        return "dns"
    return "connection"


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
