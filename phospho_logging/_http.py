"""``HTTPExporter``: batches to phospho's ingestion API, over one keep-alive session.

The only HTTP client of the package: the engine, ``phospho-logging check`` and
``phospho-logging push`` all send through it. Exceptions and statuses of the underlying
library are translated here, once, into ``ExportResult`` values (``_export.KINDS``).
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import io
import itertools
import json
import platform
import re
import socket
import threading
import time
import traceback
import zlib
from email.utils import parsedate_to_datetime
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote, unquote, urlsplit

from ._export import BODY_HEAD, BODY_TAIL, ExportResult, WireEvent, request_body
from ._feedback import Feedback
from ._version import __version__

USER_AGENT = f"phospho-logging/{__version__} python/{platform.python_version()}"

#: Statuses worth retrying: the request may succeed later, unchanged.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The longest ``Retry-After`` honoured, in seconds.
RETRY_AFTER_CAP = 60.0

#: The most of an answer read: the API echoes the batch, so a request's answer may be
#: larger than the request (four times its size is allowed, and at least this).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: Bytes asked of the socket per read of an answer.
CHUNK_BYTES = 65536
#: A sending thread keeps its request and answer buffers for the next request up to this
#: size (a larger one, from an unusually large batch or answer, is let go after use).
KEEP_BUFFER_BYTES = 4 * 1024 * 1024

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


class _Deadlines:
    """Ends a wait for an answer's status line and headers at its request's deadline.

    The socket timeout bounds each read, not their sum: a server that sends its headers a
    byte at a time would hold a sender for as long as it likes. Around ``getresponse`` the
    connection registers its socket and the sending thread's deadline here; one daemon
    thread (started on first use, again in a forked child) shuts down the sockets of
    waits past their deadline, which ends the read at once (the connection is then
    discarded). The answer's body is bounded by ``read_answer``.
    """

    def __init__(self) -> None:
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Fresh state (at creation; in a forked child, where the parent's thread and lock
        state do not carry over)."""
        self._cond = threading.Condition(threading.Lock())
        self._waits: Dict[int, Any] = {}  # id -> (deadline, socket)
        self._ids = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self.local = threading.local()  # .deadline: the sending thread's, set by export

    def watch(self, sock: Any) -> Optional[int]:
        deadline = getattr(self.local, "deadline", None)
        if deadline is None or sock is None:
            return None
        key = next(self._ids)
        with self._cond:
            self._waits[key] = (deadline, sock)
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._run, name="phospho-logging-deadlines", daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # interpreter shutdown: reads stay bounded per read
                    del self._waits[key]
                    return None
                self._thread = thread
            self._cond.notify()
        return key

    def done(self, key: Optional[int]) -> None:
        if key is not None:
            with self._cond:
                self._waits.pop(key, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for key, (deadline, sock) in list(self._waits.items()):
                    if deadline <= now:
                        del self._waits[key]
                        try:  # the fd's own shutdown: a TLS socket's state is not touched
                            socket.socket.shutdown(sock, socket.SHUT_RDWR)
                        except (OSError, ValueError, TypeError):
                            pass  # closed meanwhile
                nearest = min((d for d, _ in self._waits.values()), default=None)
                self._cond.wait(IDLE_CHECK if nearest is None else max(0.001, nearest - now))


#: How often the deadline thread looks up when no answer is awaited.
IDLE_CHECK = 60.0
_deadlines = _Deadlines()


def _connection_classes() -> Tuple[Any, Any]:
    """urllib3 connection pools whose connections register their wait for an answer's
    headers with ``_deadlines``."""
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def bounded(base: Any) -> Any:
        class Bounded(base):  # type: ignore[misc, valid-type]
            def getresponse(self, *args: Any, **kwargs: Any) -> Any:
                sock = getattr(self, "sock", None)
                # The answer's body is read from this socket too, even once http.client
                # has handed it to a response that closes the connection.
                _deadlines.local.sock = sock
                key = _deadlines.watch(sock)
                try:
                    return super().getresponse(*args, **kwargs)
                finally:
                    _deadlines.done(key)

        Bounded.__name__ = base.__name__
        return Bounded

    class Pool(HTTPConnectionPool):  # type: ignore[misc]
        ConnectionCls = bounded(HTTPConnectionPool.ConnectionCls)

    class TLSPool(HTTPSConnectionPool):  # type: ignore[misc]
        ConnectionCls = bounded(HTTPSConnectionPool.ConnectionCls)

    return Pool, TLSPool


def _bounded_adapter() -> Any:
    """A requests adapter over ``_connection_classes``, through an HTTP proxy too (a SOCKS
    proxy's connections keep urllib3's own classes, bounded per read only)."""
    from requests.adapters import HTTPAdapter

    pools = _connection_classes()

    class BoundedAdapter(HTTPAdapter):  # type: ignore[misc]
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": pools[0], "https": pools[1]}

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            if not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = {"http": pools[0], "https": pools[1]}
            return manager

    return BoundedAdapter()


def make_session(url: str) -> Any:
    """A requests session for ``url`` whose environment settings (proxies, ``NO_PROXY``, a
    CA bundle from ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``) are read once, now: requests
    otherwise reads them again on every request, a walk over ``os.environ``. ``.netrc`` is
    not read, so it cannot replace the API key (requests lets it override the header)."""
    import requests

    session = requests.Session()
    adapter = _bounded_adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    settings = session.merge_environment_settings(url, {}, None, None, None)
    session.trust_env = False
    session.proxies = settings["proxies"]
    session.verify = settings["verify"]
    session.cert = settings["cert"]
    return session


class HTTPExporter:
    """POSTs batches to ``{base_url}/v2/log/{project_id}``; several threads may export at
    once (``concurrent``), over one pool of keep-alive connections.

    Args:
        endpoint: the ingestion URL of the project.
        api_key: the key sent as ``Authorization: Bearer``; never shown.
    """

    def __init__(self, endpoint: str, api_key: str) -> None:
        # Imported here, on the configuring thread: a first import on two worker threads at
        # once (an old and a new engine) can deadlock on the import lock.
        import requests  # noqa: F401

        self.destination = endpoint
        self._secret = api_key
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            # The answer echoes the batch: decompressing it would cost more CPU than it saves.
            "Accept-Encoding": "identity",
            "User-Agent": USER_AGENT,
        }
        self._session: Any = None  # made on first use, on a sending thread
        self._session_lock = threading.Lock()
        self._template: Optional[Tuple[Any, Any]] = None  # (session, its request for the log endpoint)

    #: ``export`` may be called from several threads at once (the engine then keeps
    #: ``max_in_flight`` requests in flight).
    concurrent = True

    def __repr__(self) -> str:
        return f"HTTPExporter({self.destination!r})"

    def export(self, events: Sequence[WireEvent], timeout: float) -> ExportResult:
        """POST one batch and classify the answer; never raises for network problems.
        Text that came from the server (a 401 may echo the token) never holds the key."""
        return without_secret(self._export(events, timeout), self._secret)

    def _export(self, events: Sequence[WireEvent], timeout: float) -> ExportResult:
        buffers = _buffers
        body = buffers.body_of(events)
        answered = False
        try:
            answer = self._post(self.destination, body, timeout, buffers)
            if isinstance(answer, ExportResult):
                return answer
            answered = True
            status, content, headers = answer
            return classify(status, content, headers, self.destination, len(events))
        finally:
            buffers.done(body, answered)

    def export_feedback(self, feedback: Feedback, timeout: float) -> ExportResult:
        """POST one feedback to ``{base_url}/v2/tasks/{task_id}/human-eval``. A 404 says the
        task is not ingested yet (``not_found``: the engine tries again later)."""
        base, _, project_id = self.destination.rpartition("/v2/log/")
        segment = quote(feedback.task_id, safe="")
        if segment.strip(".") == "":  # "." and "..": dot segments, which a URL would resolve away
            segment = segment.replace(".", "%2E")
        url = f"{base}/v2/tasks/{segment}/human-eval"
        answer = self._post(url, feedback.body(unquote(project_id) or None), timeout)
        if isinstance(answer, ExportResult):
            return without_secret(answer, self._secret)
        status, content, headers = answer
        if status == 404:
            return ExportResult("not_found", error=f"phospho does not know task {feedback.task_id} yet (HTTP 404"
                                f"{_detail(content)})", status=status)
        if status == 200 and content.lstrip()[:1] != b"{":
            kind = headers.get("Content-Type", "no content type")
            return ExportResult.retry(f"{url} answered HTTP 200 but not with phospho's JSON ({kind}, {len(content)} "
                                      "bytes): a proxy or a captive portal? The feedback is not taken as delivered",
                                      cause="not_api")
        if status == 200:
            return ExportResult.delivered()
        return without_secret(classify(status, content, headers, url, 1), self._secret)

    def _post(self, url: str, body: Any, timeout: float, buffers: Optional[_Buffers] = None) -> Any:
        """POST ``body`` (bytes, or a view of ``buffers``' request buffer): (status,
        content, headers), or the ``ExportResult`` of a failure. With ``buffers``, an
        answer's content may be the thread's answer buffer: read it before the thread's
        next request."""
        session = self._session
        if session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = make_session(url)
                session = self._session
        deadline = time.monotonic() + timeout
        _deadlines.local.deadline = deadline
        try:
            # Straight to the session's adapter with a request prepared once per URL (the
            # session's settings were read once, at its making): what ``session.post``
            # adds is redirects, hooks and cookies, none of them used here, at over half
            # the CPU of a request.
            response = session.get_adapter(url).send(
                self._prepared(session, url, body),
                stream=True,  # the answer is read here, within the deadline and a size cap
                timeout=(min(timeout, 5.0), timeout),
                verify=session.verify,
                cert=session.cert,
                proxies=session.proxies,
            )
            try:
                content = read_answer(response.raw, deadline, max(MAX_ANSWER_BYTES, 4 * len(body)), buffers)
            except BaseException:
                response.close()  # the connection is dropped with what is left unread
                raise
            response.raw.release_conn()  # read whole: the connection is kept for the next request
        except _Unfinished as exc:
            return ExportResult.retry(f"{url} {exc}", cause=exc.cause)
        except Exception as exc:  # noqa: BLE001 - requests', urllib3's and the socket's, sorted here
            try:
                return _failure(exc, url, timeout, deadline)
            finally:
                _let_go(exc)
        finally:
            _deadlines.local.deadline = _deadlines.local.sock = None
        return response.status_code, content, response.headers

    def _prepared(self, session: Any, url: str, body: Any) -> Any:
        """A ``PreparedRequest`` POSTing ``body`` to ``url``: the session's preparation of
        the URL and headers, made once for the log endpoint, with this body."""
        template = self._template
        if template is None or template[0] is not session or url != self.destination:
            import requests

            prepared = session.prepare_request(requests.Request("POST", url, headers=self._headers))
            prepared.headers.pop("Content-Length", None)  # the body's own is set below
            template = (session, prepared)
            if url == self.destination:
                self._template = template
        request = template[1].copy()
        request.prepare_body(body, None)
        return request

    def close(self) -> None:
        """Close the session; the next ``export`` opens a new one."""
        self._template = None
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's connections without closing them."""
        _deadlines.reset_after_fork()
        if self._session is not None:
            _inherited.append(self._session)  # never closed here: the sockets are the parent's
        self._session = self._template = None
        self._session_lock = threading.Lock()  # a parent's thread may have held it at the fork


#: What stands for the API key in text from the server.
HIDDEN_KEY = "[api key hidden]"


def without_secret(result: ExportResult, secret: str) -> ExportResult:
    """``result`` with ``secret`` removed from its texts (its error and rejection reasons),
    as is and as JSON escapes it (a server's nested detail is shown as JSON). A short key
    (a test's) is replaced only where it stands alone, not inside a word."""
    if not secret:
        return result
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    texts = [result.error, *result.rejected.values()]
    if not any(form in text for form in forms for text in texts):
        return result
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    if len(secret) < 16:
        pattern = r"(?<![\w-])(?:" + pattern + r")(?![\w-])"
    hidden = re.compile(pattern)

    def hide(text: str) -> str:
        return hidden.sub(HIDDEN_KEY, text)

    return dataclasses.replace(
        result, error=hide(result.error), rejected={i: hide(r) for i, r in result.rejected.items()},
    )


def _failure(exc: Exception, url: str, timeout: float, deadline: float) -> ExportResult:
    """The ``ExportResult`` of a request that raised ``exc``."""
    import requests

    if isinstance(exc, (requests.Timeout, socket.timeout)):
        return ExportResult.retry(f"no answer from {url} within {timeout:g} s", cause="timeout")
    if time.monotonic() >= deadline:  # the read was ended at the deadline (``_deadlines``)
        return ExportResult.retry(f"no answer from {url} within {timeout:g} s (none, or too slow to arrive whole)",
                                  cause="timeout")
    if isinstance(exc, requests.exceptions.SSLError):
        return ExportResult.retry(f"TLS error talking to {url}: {_reason(exc)}", cause="tls")
    if isinstance(exc, requests.exceptions.ProxyError):
        return ExportResult.retry(f"cannot reach {url} through the proxy: {_reason(exc)}; check HTTP_PROXY/"
                                  "HTTPS_PROXY (and NO_PROXY) and that the proxy is up", cause="connection")
    if isinstance(exc, (requests.RequestException, OSError)):
        reason = _reason(exc)
        cause = _cause(reason)
        host = urlsplit(url).hostname or url
        if cause == "dns":
            what = (f"the host name {host} could not be resolved (DNS: {reason}); check base_url "
                    "(PHOSPHO_BASE_URL) for a typo, and the network")
        elif cause == "refused":
            what = f"{host} refused the connection ({reason}); check base_url (PHOSPHO_BASE_URL) and that it is up"
        else:
            what = f"the connection failed ({reason})"
        return ExportResult.retry(f"cannot reach {url}: {what}", cause=cause)
    return ExportResult.retry(f"cannot read the answer of {url}: {type(exc).__name__}", cause="connection")


def _let_go(exc: BaseException) -> None:
    """Free what a failed request's exception holds now, not at the next garbage
    collection: its traceback's frames (requests' and urllib3's) and the exception form
    reference cycles that keep the request body alive, a megabyte per failed attempt
    while the backend is down."""
    seen = 0
    chained: Optional[BaseException] = exc
    while chained is not None and seen < 8:
        seen += 1
        if chained.__traceback__ is not None:
            traceback.clear_frames(chained.__traceback__)
            chained.__traceback__ = None
        if getattr(chained, "request", None) is not None:
            try:
                chained.request = None  # type: ignore[attr-defined]  # requests' errors: the prepared body
            except Exception:  # noqa: BLE001, S110 - a read-only attribute: the frames were the cycle
                pass
        chained = chained.__cause__ or chained.__context__


class _Unfinished(Exception):
    """An answer not read whole: too slow (past the request's deadline) or too large."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def read_answer(raw: Any, deadline: float, cap: int, buffers: Optional[_Buffers] = None) -> Any:
    """The body of an answer (urllib3's ``raw``), read by this thread before ``deadline``
    and up to ``cap`` bytes: a server that drips its answer or sends without end cannot
    hold the sender or fill its memory. The deadline thread watches the socket meanwhile
    (a read that outlives the deadline is ended), and each read is bounded by the time left.

    With ``buffers`` (the sending thread's), a plain answer (no content encoding) is read
    into its answer buffer, straight from the connection, and that buffer is returned,
    cut to the answer's size. Otherwise the answer is new bytes; one a server compressed
    (gzip or deflate, though none was asked for) is decoded here, once whole."""
    # The socket that carried the request (our pools note it: http.client hands it to an
    # answer that closes the connection); through a proxy, the connection's.
    sock = getattr(_deadlines.local, "sock", None) or getattr(getattr(raw, "connection", None), "sock", None)
    key = _deadlines.watch(sock)
    try:
        fp = getattr(raw, "_fp", None) if buffers is not None else None
        coding = raw.headers.get("Content-Encoding", "identity").strip().lower()
        content: Union[bytes, bytearray]
        if (buffers is not None and sock is not None and isinstance(fp, http.client.HTTPResponse)
                and coding == "identity"):
            content = _read_into(fp, sock, deadline, cap, buffers.answer_buffer())
        else:
            content = _read_chunks(raw, sock, deadline, cap)
    finally:
        _deadlines.done(key)
    if time.monotonic() >= deadline:  # the deadline thread may have ended the read
        raise _too_slow(len(content))
    if coding not in ("identity", ""):
        return _decoded(content, coding, cap)
    return content


def _read_chunks(raw: Any, sock: Any, deadline: float, cap: int) -> bytes:
    """``read_answer`` through urllib3, as it came (not decoded), one socket read at a time."""
    from urllib3.exceptions import ReadTimeoutError

    read = getattr(raw, "read1", None) or raw.read  # read1 (urllib3 2.x): at most one socket read
    chunks: List[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left > 0:
            _read_timeout(sock, left)
            try:
                chunk = read(CHUNK_BYTES, decode_content=False)
            except (ReadTimeoutError, socket.timeout):
                left = 0.0
            except OSError:  # the deadline thread's shutdown (TLS), or the connection's end
                if time.monotonic() < deadline:
                    raise
                left = 0.0
        if left <= 0:
            raise _too_slow(size)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        chunks.append(chunk)


#: Room added to an answer buffer at a time (one object, so growing allocates nothing).
_ROOM = bytes(CHUNK_BYTES)


def _read_into(fp: http.client.HTTPResponse, sock: Any, deadline: float, cap: int, buffer: bytearray) -> bytearray:
    """``read_answer`` into ``buffer``, through http.client's response (which undoes a
    chunked encoding and stops at the Content-Length). A read fills as much of the buffer
    as arrives before the deadline thread ends it; an answer cut short by the server is
    not taken as whole."""
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _too_slow(size)
        _read_timeout(sock, left)
        while len(buffer) - size < CHUNK_BYTES and len(buffer) <= cap:
            buffer += _ROOM
        whole = memoryview(buffer)
        window = whole[size:min(len(buffer), cap + 1)]
        try:
            got = fp.readinto(window)
        except OSError as exc:  # a socket timeout, or the deadline thread's shutdown (TLS)
            if isinstance(exc, socket.timeout) or time.monotonic() >= deadline:
                raise _too_slow(size) from None
            raise
        finally:
            window.release()
            whole.release()
        if not got:
            break
        size += got
        if size > cap:
            raise _too_large(cap)
    if fp.length:  # the connection closed before the Content-Length was read
        raise _Unfinished(f"ended its answer early ({size} of {size + fp.length} bytes)", "connection")
    del buffer[size:]
    return buffer


def _decoded(content: Union[bytes, bytearray], coding: str, cap: int) -> Union[bytes, bytearray]:
    """An answer compressed with ``coding`` (a Content-Encoding list, applied in order):
    gzip and deflate decoded (at most ``cap`` bytes, and only whole streams: one cut short
    is not the API's answer); with any other coding, the answer is left as it came (it
    then does not read as the API's answer)."""
    codings = [c.strip() for c in coding.split(",") if c.strip() not in ("", "identity")]
    if not all(c in ("gzip", "x-gzip", "deflate") for c in codings):
        return content
    for name in reversed(codings):
        content = _decompressed(content, name, cap)
    return content


def _decompressed(content: Union[bytes, bytearray], coding: str, cap: int) -> bytes:
    """``content`` gzip- (every member) or deflate-decoded, whole, at most ``cap`` bytes."""
    wbits = [16 + zlib.MAX_WBITS] if coding != "deflate" else [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # deflate: zlib or raw
    for bits in wbits:
        parts: List[bytes] = []
        size, rest = 0, bytes(content)
        try:
            while rest:  # a gzip body may hold several members, one after another
                decoder = zlib.decompressobj(bits)
                part = decoder.decompress(rest, cap + 1 - size)
                size += len(part)
                if size > cap:
                    raise _too_large(cap)
                if not decoder.eof:
                    break
                parts.append(part)
                rest = decoder.unused_data if coding != "deflate" else b""
        except zlib.error:
            continue
        if not rest:
            return b"".join(parts)
        break
    raise _Unfinished(f"answered with a {coding} body that does not decode whole", "not_api")


def _too_slow(size: int) -> _Unfinished:
    return _Unfinished(f"answered too slowly: the whole answer did not arrive within the request's timeout ({size} "
                       "bytes read)", "timeout")


def _too_large(cap: int) -> _Unfinished:
    return _Unfinished(f"answered with more than {cap} bytes: not the ingestion API's answer", "not_api")


class _Buffers(threading.local):
    """A sending thread's request and answer buffers, reused from request to request.

    A batch's body is up to ``max_batch_bytes`` and the API's answer echoes it; blocks
    that large are handed back to the system when freed, so fresh ones cost a page fault
    per 4 KiB each time (measured: about 800 a request of 1,160 tasks). Kept only while
    requests are answered (a backend that is down costs no memory held between tries),
    and up to ``KEEP_BUFFER_BYTES``.
    """

    def __init__(self) -> None:
        self.request = io.BytesIO()
        self.answer = bytearray()

    def body_of(self, events: Sequence[WireEvent]) -> Any:
        """The body of ``POST /v2/log/{project_id}`` for ``events`` (as ``request_body``
        makes it), as a view of the request buffer, valid until ``done``."""
        request = self.request
        request.seek(0)
        try:
            write = request.write
            write(BODY_HEAD)
            for index, event in enumerate(events):
                if index:
                    write(b",")
                write(event.json)
            write(BODY_TAIL)
        except BufferError:  # a view of the last body is still held somewhere: a new buffer
            self.request = io.BytesIO()
            return request_body(events)
        return request.getbuffer()[:request.tell()]

    def answer_buffer(self) -> bytearray:
        """The answer buffer, resizable (one still viewed somewhere is replaced)."""
        answer = self.answer
        try:
            answer.append(0)
            del answer[-1]
        except BufferError:
            answer = self.answer = bytearray()
        return answer

    def done(self, body: Any, answered: bool) -> None:
        """The request of ``body`` is over (``answered``: an answer was read)."""
        if isinstance(body, memoryview):
            body.release()
        if not answered or self.request.tell() > KEEP_BUFFER_BYTES:
            self.request = io.BytesIO()
        if len(self.answer) > KEEP_BUFFER_BYTES:
            self.answer = bytearray()


_buffers = _Buffers()


def _read_timeout(sock: Any, seconds: float) -> None:
    """Bound the next read of ``sock`` (None: unknown) by ``seconds``."""
    if sock is not None:
        try:
            sock.settimeout(max(0.001, seconds))
        except OSError:  # closed meanwhile: the read says so
            pass


def classify(status: int, content: bytes, headers: Any, url: str, count: int) -> ExportResult:
    """The ``ExportResult`` of an HTTP answer to a batch of ``count`` events."""
    if status == 200:
        if not _is_api_answer(content):  # a proxy or captive portal answering 200 with a page
            kind = headers.get("Content-Type", "no content type")
            return ExportResult.retry(f"{url} answered HTTP 200 but not with the ingestion API's JSON ({kind}, "
                                      f"{len(content)} bytes): a proxy or a captive portal? The batch is not "
                                      "taken as delivered", cause="not_api")
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


def _is_api_answer(content: bytes) -> bool:
    """A 200 of the ingestion API: a JSON object (its first and last characters) with
    ``logged_events``, checked without parsing or copying the echo of the whole batch
    (per-event errors are parsed when present)."""
    return (_JSON_OBJECT.match(content) is not None and (content[-64:].rstrip() or content.rstrip())[-1:] == b"}"
            and b'"logged_events"' in content)


_JSON_OBJECT = re.compile(rb"\s*\{")


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
