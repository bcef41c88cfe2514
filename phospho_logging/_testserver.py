"""A loopback phospho ingestion server for tests, with scriptable faults.

It serves ``POST /v2/log/{project_id}`` with the backend's validation rules
(as the phospho backend applies them), re-implemented here on purpose: the package's own validator is
what the tests check, so it must not also be the referee; and ``POST
/v2/tasks/{task_id}/human-eval`` (feedback), which answers 404 until the task was logged.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import socketserver
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

__all__ = ["PhosphoTestServer", "RecordedRequest"]

_LOG_PATH = re.compile(r"^/v2/log/([^/]+)$")
_FEEDBACK_PATH = re.compile(r"^/v2/tasks/([^/]+)/human-eval$")
_STOP_JOIN_SECONDS = 1.0  # keeps stop() well under its 2 s promise
_POLL_SECONDS = 0.01  # shutdown() waits out one poll; test suites stop many servers


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received; ``status`` is None if it was hung or dropped."""

    method: str
    path: str
    status: int | None
    n_events: int  # len(batched_log_events) when the body had that shape, else 0
    headers: dict[str, str]
    body_bytes: int
    time: float  # time.monotonic() when the reply was decided
    client_port: int
    body: bytes = field(default=b"", repr=False)  # empty when drained past max_body_bytes


# Validation: pydantic semantics, lax for the batch parse, strict per event.


def _is_str(v: object) -> bool:
    if not isinstance(v, str):
        return False
    if v.isascii():  # O(1) in CPython, and the usual case: no surrogate possible
        return True
    try:
        v.encode("utf-8")  # pydantic-core refuses lone surrogates: not UTF-8
    except UnicodeEncodeError:
        return False
    return True


def _is_int(v: object) -> bool:
    return type(v) is int  # strict: neither bool nor float (not even 1.0)


def _is_dict(v: object) -> bool:
    return isinstance(v, dict) and all(map(_is_str, v))


def _opt(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or check(v)


_Check = Callable[[object], bool]


def _raw(item: Callable[[_Check], _Check]) -> _Check:
    """A raw_input/raw_output check: dict, str, null, or a list of one kind of item."""

    def check(v: object) -> bool:
        if isinstance(v, list):  # an empty list fits both kinds
            return all(map(item(_is_dict), v)) or all(map(item(_is_str), v))
        return v is None or _is_str(v) or _is_dict(v)

    return check


_STR, _INT, _RAW = "Input should be a valid string", "Input should be a valid integer", (
    "Input should be a dictionary, a string or a list of ")
_FIELDS: list[tuple[str, Callable[[object], bool], str]] = [
    ("input", _is_str, _STR),
    ("output", _opt(_is_str), _STR),
    ("task_id", _is_str, _STR),
    ("client_created_at", _is_int, _INT),
    ("created_at", _opt(_is_int), _INT),
    ("last_update", _opt(_is_int), _INT),
    ("flag", lambda v: v in (None, "success", "failure"), "Input should be 'success' or 'failure'"),
    ("metadata", _opt(_is_dict), "Input should be a valid dictionary"),
    ("raw_input", _raw(lambda c: c), _RAW + "dictionaries or a list of strings"),
    ("raw_output", _raw(_opt), _RAW + "(dictionary or null) or a list of (string or null)"),
    ("environment", _is_str, _STR),
] + [(name, _opt(_is_str), _STR) for name in (
    "project_id", "session_id", "user_id", "version_id", "test_id", "step_id",
    "raw_input_type_name", "raw_output_type_name")]


def _check_event(event: dict[str, Any]) -> str | None:
    """Return the ``error_in_log`` text of a strictly invalid event, else None."""
    errors = [f"{n}: {msg}" for n, ok, msg in _FIELDS if n in event and not ok(event[n])]
    return "; ".join(errors) or None


def _echo(event: dict[str, Any], project_id: str) -> dict[str, Any]:
    """The event as the backend stores and echoes it, defaults filled in."""
    echo = {name: event.get(name) for name, _, _ in _FIELDS}
    echo["task_id"] = event.get("task_id", "task_" + uuid.uuid4().hex)
    echo["project_id"] = echo["project_id"] or project_id
    echo["client_created_at"] = event.get("client_created_at", int(time.time()))
    if echo["created_at"] is None:
        echo["created_at"] = echo["client_created_at"]
    echo["environment"] = event.get("environment", "default environment")
    echo["metadata"] = event.get("metadata", {})
    extras = {k: v for k, v in event.items() if k not in echo}
    if extras:
        # The backend folds unknown top-level keys into metadata; the caller's
        # own metadata keys win a clash since they were set on purpose.
        echo["metadata"] = {**extras, **(echo["metadata"] or {})}
    return echo


def _err(kind: str, loc: list[Any], msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


def _check_feedback(payload: Any) -> list[dict[str, Any]]:
    """The backend's errors for a human-eval body (``{"human_eval": "success" | "failure",
    "project_id", "source", "notes"}``), as a 422 lists them."""
    if not isinstance(payload, dict):
        return [_err("dict_type", ["body"], "Input should be a valid dictionary", payload)]
    errors = []
    if payload.get("human_eval") not in ("success", "failure"):
        errors.append(_err("literal_error", ["body", "human_eval"], "Input should be 'success' or 'failure'",
                           payload.get("human_eval")))
    for key in ("project_id", "source", "notes"):
        if payload.get(key) is not None and not _is_str(payload[key]):
            errors.append(_err("string_type", ["body", key], "Input should be a valid string", payload[key]))
    return errors


def _parse_batch(body: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """Decode and shape-check a body: (payload, FastAPI-style 422 errors)."""

    def no_constants(name: str) -> Any:
        # Python's json takes NaN/Infinity, which are not JSON: a client that
        # sends them has a bug the tests should see.
        raise ValueError(f"invalid constant {name}")

    if not body:
        return None, [_err("missing", ["body"], "Field required", None)]
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=no_constants)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both
        pos = getattr(exc, "pos", getattr(exc, "start", 0))
        return None, [{**_err("json_invalid", ["body", pos], "JSON decode error", {}),
                       "ctx": {"error": str(exc)}}]
    not_obj = "Input should be a valid dictionary or object to extract fields from"
    loc: list[Any] = ["body", "batched_log_events"]
    if not isinstance(payload, dict):
        return payload, [_err("model_attributes_type", ["body"], not_obj, payload)]
    if "batched_log_events" not in payload:
        return payload, [_err("missing", loc, "Field required", payload)]
    if not isinstance(payload["batched_log_events"], list):
        return payload, [_err("list_type", loc, "Input should be a valid list",
                              payload["batched_log_events"])]
    errors: list[dict[str, Any]] = []
    for i, ev in enumerate(payload["batched_log_events"]):
        if not isinstance(ev, dict):
            errors.append(_err("model_attributes_type", [*loc, i], not_obj, ev))
        elif "input" not in ev:
            errors.append(_err("missing", [*loc, i, "input"], "Field required", ev))
        for key in ("input", "output") if isinstance(ev, dict) else ():
            value = ev.get(key)
            if key in ev and not (value is None and key == "output") and not _is_str(value):
                if isinstance(value, str):
                    errors.append(_err("string_unicode", [*loc, i, key], _STR + ", unable to "
                                       "parse raw data as a unicode string", value))
                else:
                    errors.append(_err("string_type", [*loc, i, key], _STR, value))
    return payload, errors


# HTTP plumbing.


@dataclass
class _Reply:
    kind: str  # "respond", "hang" or "close"
    status: int = 200
    body: bytes = b""
    headers: dict[str, str | None] = field(default_factory=dict)  # None: a header not sent
    content_type: str = "application/json"
    repeat: int = 1  # the body is sent this many times over
    drip: float | None = None  # seconds between two bytes of the body
    drip_head: float | None = None  # seconds between two bytes of the status line and headers


def _json_reply(status: int, payload: Any, headers: dict[str, str | None] | None = None) -> _Reply:
    body = b"" if status in (204, 304) else json.dumps(payload).encode("utf-8")  # no body allowed
    return _Reply("respond", status, body, headers or {})


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed is fine
        sock.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for hung handlers
    request_queue_size = 128
    owner: PhosphoTestServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can
        # take seconds in sandboxes; the name is never used.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing mid-reply is the point of fault tests; the default
        # traceback on stderr would pollute what the package under test captures.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so requests.Session reuses connections
    server_version = "PhosphoTestServer/1"
    disable_nagle_algorithm = True  # small replies must not wait on delayed ACKs
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # never stderr: the package under test captures output and logs

    def do_POST(self) -> None:
        owner, path = self.server.owner, urlsplit(self.path).path
        match = _LOG_PATH.match(path)
        is_log = match is not None and self.command == "POST"
        limit = owner.max_body_bytes if is_log else None
        body: bytes | None = b""
        size, reply = 0, None
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if "Transfer-Encoding" in self.headers or length < 0:
                # Chunked uploads are not supported: refuse rather than misparse.
                raise ValueError
            parts: list[bytes] = []
            # Read all of it even past the limit: closing on unread data would
            # send an RST, and the client must see the 413.
            while size < length:
                chunk = self.rfile.read(min(length - size, 65536))
                if not chunk:
                    raise ConnectionError("client closed mid-body")
                size += len(chunk)
                if limit is None or size <= limit:
                    parts.append(chunk)
            body = None if limit is not None and size > limit else b"".join(parts)
        except ConnectionError:
            self.close_connection = True
            return
        except ValueError:
            reply = _json_reply(411, {"detail": "Length Required"}, {"Connection": "close"})
            self.close_connection = True
        feedback = _FEEDBACK_PATH.match(path) if reply is None and self.command == "POST" else None
        if feedback is not None:
            reply = owner._feedback_reply(self.headers.get("Authorization"), unquote(feedback.group(1)), body)
        if reply is None and match is None:
            reply = _json_reply(404, {"detail": "Not Found"})
        elif reply is None and not is_log:
            reply = _json_reply(405, {"detail": "Method Not Allowed"}, {"Allow": "POST"})
        project_id = unquote(match.group(1)) if match else ""
        reply = owner._handle(self, path, project_id, body, size, reply)
        if reply.kind == "hang":
            owner._stopping.wait()
            reply = _Reply("close")
        elif owner.delay > 0 and owner._stopping.wait(owner.delay):
            reply = _Reply("close")  # stopping: a reply now would outlive stop()
        if reply.kind == "close":
            self.close_connection = True
            return
        if reply.drip_head is not None:
            self._drip_head(reply, owner)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if "Content-Length" in reply.headers or "Transfer-Encoding" in reply.headers:
            # Its own framing (a length given, or None: none, the answer ends at the close).
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(reply.body) * reply.repeat))
        for name, value in reply.headers.items():
            if value is not None:
                self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if reply.drip is not None:
                self.wfile.flush()
                for i in range(len(reply.body)):
                    if owner._stopping.wait(reply.drip):
                        self.close_connection = True
                        return
                    self.wfile.write(reply.body[i:i + 1])
                    self.wfile.flush()
                return
            for _ in range(reply.repeat):
                if owner._stopping.is_set():
                    self.close_connection = True
                    return
                self.wfile.write(reply.body)
        except OSError:  # the client gave up on the answer: expected in these faults
            self.close_connection = True

    def _drip_head(self, reply: _Reply, owner: Any) -> None:
        """Send the status line and headers a byte at a time, then the body at once."""
        head = (f"HTTP/1.1 {reply.status} OK\r\nContent-Type: {reply.content_type}\r\n"
                f"Content-Length: {len(reply.body)}\r\n\r\n").encode("latin-1")
        self.close_connection = True
        try:
            for i in range(len(head)):
                if owner._stopping.wait(reply.drip_head):
                    return
                self.wfile.write(head[i:i + 1])
                self.wfile.flush()
            self.wfile.write(reply.body)
        except OSError:  # the client gave up on the answer: expected in these faults
            pass

    do_GET = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_POST


class PhosphoTestServer:
    """A real HTTP/1.1 phospho ingestion server on 127.0.0.1, for tests.

    Serves ``POST /v2/log/{project_id}`` with the backend's auth, batch parsing,
    strict per-event validation and de-duplication; records every request; lets
    a test script faults. Faults from ``fail_next``, ``hang_next``, ``close_next`` and
    ``answer_next`` share one FIFO per route, consumed one per log request (or, with
    ``route="feedback"``, one per feedback request). Thread-safe;
    ``stop()`` is prompt even with requests hung.

    Example:
        with PhosphoTestServer() as server:
            requests.post(f"{server.url}/v2/log/{server.project_id}", ...)
            assert server.wait_for_tasks(1)
    """

    def __init__(self, api_key: str = "test-key", project_id: str = "test-project", *,
                 max_body_bytes: int | None = None, port: int = 0) -> None:
        """Create a server; nothing listens until ``start()``.

        Args:
            api_key: The only Bearer token accepted.
            project_id: The only project id accepted.
            max_body_bytes: Bodies larger than this get 413; None for no limit.
            port: The port on 127.0.0.1; 0 (the default) picks a free one.
        """
        self.api_key = api_key
        self.project_id = project_id
        self.max_body_bytes = max_body_bytes
        self.port = port
        self.delay: float = 0.0  # seconds before every reply; cut short by stop()
        #: Seconds after a task is logged before feedback on it is accepted (before, 404):
        #: phospho ingests tasks in the background.
        self.ingest_lag: float = 0.0
        self._cond = threading.Condition(threading.Lock())
        self._lifecycle = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._handlers: dict[_Handler, threading.Thread] = {}
        self._reset_state()

    def _reset_state(self) -> None:
        self._tasks: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._logged_at: dict[str, float] = {}
        self._feedback: list[dict[str, Any]] = []
        self._requests: list[RecordedRequest] = []
        self._rejected: list[tuple[dict[str, Any], str]] = []
        self._duplicates = 0
        self._faults: deque[_Reply | None] = deque()
        self._feedback_faults: deque[_Reply | None] = deque()
        self._quota: deque[list[Any]] = deque()  # [remaining, reason] pairs

    @property
    def url(self) -> str:
        """The server root, ``http://127.0.0.1:PORT``; available once started."""
        if self._server is None:
            raise RuntimeError("PhosphoTestServer is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> PhosphoTestServer:
        """Listen on an ephemeral port from a daemon thread; idempotent; returns self.

        Raises:
            RuntimeError: If the server was stopped; it cannot restart.
        """
        with self._lifecycle:
            if self._stopping.is_set():
                raise RuntimeError("a stopped PhosphoTestServer cannot be restarted")
            if self._server is None:
                self._server = server = _Server(("127.0.0.1", self.port), _Handler)
                server.owner = self
                self._thread = threading.Thread(
                    target=server.serve_forever, kwargs={"poll_interval": _POLL_SECONDS},
                    name=f"PhosphoTestServer:{server.server_address[1]}", daemon=True)
                self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end hangs and delays, close every socket; idempotent, ~1 s max."""
        with self._lifecycle:
            if self._server is None or self._stopping.is_set():
                return
            deadline = time.monotonic() + _STOP_JOIN_SECONDS
            self._stopping.set()
            with self._cond:
                self._cond.notify_all()
                handlers = dict(self._handlers)
            self._server.shutdown()
            self._server.server_close()
            # Idle keep-alive handlers block reading the next request forever;
            # shutting their sockets down is what lets those threads end.
            for handler in handlers:
                _shutdown(handler.connection)
            for thread in [self._thread, *handlers.values()]:
                if thread is not None and thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> PhosphoTestServer:  # noqa: PYI034 - typing.Self is 3.11+
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def tasks(self) -> list[dict[str, Any]]:
        """Accepted events in arrival order, as echoed; duplicates excluded."""
        with self._cond:
            return copy.deepcopy(self._tasks)

    @property
    def task_ids(self) -> list[str]:
        """The ``task_id`` of each accepted event, in arrival order."""
        with self._cond:
            return [task["task_id"] for task in self._tasks]

    @property
    def feedback(self) -> list[dict[str, Any]]:
        """Feedback accepted (``POST /v2/tasks/{task_id}/human-eval``), in arrival order:
        the body as sent, with the ``task_id`` of the path."""
        with self._cond:
            return copy.deepcopy(self._feedback)

    def wait_for_feedback(self, n: int, timeout: float = 5.0) -> bool:
        """Block until ``n`` feedbacks were accepted; False on timeout or stop."""
        return self._wait(lambda: len(self._feedback) >= n, timeout)

    def _feedback_reply(self, authorization: str | None, task_id: str, body: bytes | None) -> _Reply:
        """The answer to a feedback: auth as for logs; 422 for a body phospho refuses; 404
        while the task is unknown (or logged less than ``ingest_lag`` seconds ago)."""
        with self._cond:
            if self._feedback_faults:
                fault = self._feedback_faults.popleft()
                if fault is not None:
                    return fault
        scheme, _, token = (authorization or "").partition(" ")
        if not (scheme and token) or scheme.lower() != "bearer":
            return _json_reply(403, {"detail": "Not authenticated"})
        if token != self.api_key:
            return _json_reply(401, {"detail": "Invalid token"})
        try:
            payload = json.loads(body or b"")
        except ValueError:
            return _json_reply(422, {"detail": [_err("json_invalid", ["body"], "JSON decode error", None)]})
        errors = _check_feedback(payload)
        if errors:
            return _json_reply(422, {"detail": errors})
        if payload.get("project_id") not in (None, self.project_id):
            return _json_reply(404, {"detail": "Project not found"})
        with self._cond:
            logged = self._logged_at.get(task_id)
            if logged is None or time.monotonic() - logged < self.ingest_lag:
                return _json_reply(404, {"detail": f"Task {task_id} not found"})
            self._feedback.append({"task_id": task_id, **payload})
            self._cond.notify_all()
        return _json_reply(200, {"id": task_id, "project_id": self.project_id, "flag": payload["human_eval"],
                                 "notes": payload.get("notes")})

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, faulted ones included, in arrival order."""
        with self._cond:
            return list(self._requests)

    @property
    def rejected(self) -> list[tuple[dict[str, Any], str]]:
        """``(event as sent, reason)`` for each event answered with ``error_in_log``."""
        with self._cond:
            return copy.deepcopy(self._rejected)

    @property
    def duplicates(self) -> int:
        """How many events were skipped because their task_id was already logged."""
        with self._cond:
            return self._duplicates

    def wait_for_tasks(self, n: int, timeout: float = 5.0) -> bool:
        """Block until ``n`` tasks were accepted; False on timeout or stop."""
        return self._wait(lambda: len(self._tasks) >= n, timeout)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until ``n`` requests were received; False on timeout or stop."""
        return self._wait(lambda: len(self._requests) >= n, timeout)

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: done() or self._stopping.is_set(), timeout)
            return done()

    def fail_next(self, status: int, count: int = 1, *, retry_after: str | float | None = None,
                  body: dict[str, Any] | None = None, after: int = 0, route: str = "log") -> None:
        """Answer the next ``count`` log requests (``route="feedback"``: feedback requests)
        with ``status``, logging nothing.

        Args:
            status: An HTTP status, 200-599.
            count: How many requests get it.
            after: How many requests are answered normally first.
            retry_after: ``Retry-After`` value: seconds (a whole number is sent
                as an int) or a string such as an HTTP-date, sent as is.
            body: The JSON reply; default ``{"detail": <reason phrase>}``.

        Raises:
            ValueError: If ``status`` is outside 200-599.
        """
        if not 200 <= status <= 599:
            raise ValueError(f"status must be within 200-599, got {status}")
        headers: dict[str, str | None] = {}
        if isinstance(retry_after, str):
            headers["Retry-After"] = retry_after
        elif retry_after is not None:
            seconds = float(retry_after)
            headers["Retry-After"] = str(int(seconds)) if seconds.is_integer() else str(seconds)
        if body is None:
            try:
                body = {"detail": HTTPStatus(status).phrase}
            except ValueError:  # a code http.HTTPStatus does not name
                body = {"detail": "Error"}
        with self._cond:
            self._queue_of(route).extend(None for _ in range(after))
        self._push(count, _json_reply(status, body, headers), route)

    def answer_next(self, status: int = 200, body: bytes = b"", count: int = 1, *,
                    content_type: str = "text/html", repeat: int = 1, drip: float | None = None,
                    drip_head: float | None = None, headers: dict[str, str | None] | None = None,
                    route: str = "log") -> None:
        """Answer the next ``count`` log requests with ``body`` as is, logging nothing: a
        proxy's page (``answer_next(200, b"<html>...")``), an endless answer (``repeat``:
        the body sent that many times over, without holding it all in memory), or a
        dripping one (``drip``: seconds between two bytes of the body; ``drip_head``: of
        the status line and headers).

        ``headers`` are sent as given, e.g. ``{"Content-Encoding": "gzip"}`` for a body
        compressed by the caller or ``{"Transfer-Encoding": "chunked"}`` for one framed
        in chunks (then no ``Content-Length`` is sent). A ``Content-Length`` given there
        replaces the body's own (more than the body: an answer cut short), and None
        sends none (the answer ends when the connection closes). With a framing of its
        own, the connection closes after the body.

        Raises:
            ValueError: If ``status`` is outside 200-599 or ``repeat`` below 1.
        """
        if not 200 <= status <= 599:
            raise ValueError(f"status must be within 200-599, got {status}")
        if repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {repeat}")
        self._push(count, _Reply("respond", status, body, dict(headers or {}), content_type, repeat, drip, drip_head),
                   route)

    def hang_next(self, count: int = 1, *, route: str = "log") -> None:
        """Read the next ``count`` log (or ``route="feedback"``) requests and never answer
        (until stop())."""
        self._push(count, _Reply("hang"), route)

    def close_next(self, count: int = 1, *, route: str = "log") -> None:
        """Read the next ``count`` log (or feedback) requests, then close without replying."""
        self._push(count, _Reply("close"), route)

    def reject_next_events(self, count: int, reason: str = "Quota exceeded") -> None:
        """Answer the next ``count`` otherwise-valid events with ``error_in_log``."""
        with self._cond:
            if count > 0:
                self._quota.append([count, reason])

    def reset(self) -> None:
        """Clear faults, pending rejections, ``delay`` and recorded state (not max_body_bytes)."""
        with self._cond:
            self._reset_state()
            self.delay = 0.0

    def _queue_of(self, route: str) -> deque[_Reply | None]:
        if route not in ("log", "feedback"):
            raise ValueError(f"route must be 'log' or 'feedback', got {route!r}")
        return self._faults if route == "log" else self._feedback_faults

    def _push(self, count: int, reply: _Reply, route: str = "log") -> None:
        with self._cond:
            self._queue_of(route).extend(reply for _ in range(count))

    def _track(self, handler: _Handler, *, add: bool) -> None:
        with self._cond:
            if not add:
                self._handlers.pop(handler, None)
                return
            self._handlers[handler] = threading.current_thread()
        if self._stopping.is_set():
            _shutdown(handler.connection)  # accepted as stop() ran: it may have missed it

    def _handle(self, handler: _Handler, path: str, project_id: str, body: bytes | None,
                size: int, reply: _Reply | None) -> _Reply:
        """Decide a request's reply and record it, atomically (handler threads)."""
        payload, errors = _parse_batch(body) if reply is None and body is not None else (None, [])
        events = payload.get("batched_log_events") if isinstance(payload, dict) else None
        with self._cond:
            if reply is None:
                reply = self._decide(handler.headers.get("Authorization"), project_id,
                                     body, payload, errors)
            self._requests.append(RecordedRequest(
                method=handler.command, path=path,
                status=reply.status if reply.kind == "respond" else None,
                n_events=len(events) if isinstance(events, list) else 0,
                headers=dict(handler.headers.items()), body_bytes=size,
                time=time.monotonic(), client_port=handler.client_address[1], body=body or b""))
            self._cond.notify_all()
            return reply

    def _decide(self, authorization: str | None, project_id: str, body: bytes | None,
                payload: Any, errors: list[dict[str, Any]]) -> _Reply:
        if self._faults:
            fault = self._faults.popleft()
            if fault is not None:  # None: this request is answered normally
                return fault
        if body is None:
            return _json_reply(413, {"detail": "Request Entity Too Large"})
        scheme, _, token = (authorization or "").partition(" ")  # as FastAPI's HTTPBearer
        if not (scheme and token) or scheme.lower() != "bearer":
            return _json_reply(403, {"detail": "Not authenticated"})
        if token != self.api_key:
            return _json_reply(401, {"detail": "Invalid token"})
        if project_id != self.project_id:
            return _json_reply(404, {"detail": "Project not found"})
        if errors:
            return _json_reply(422, {"detail": errors})
        logged: list[dict[str, Any]] = []
        for event in payload["batched_log_events"]:
            reason = _check_event(event)
            if reason is None and event.get("project_id") not in (None, self.project_id):
                reason = "project_id: Project not found"  # the key owns one project
            if reason is None and self._quota:
                reason = self._quota[0][1]
                self._quota[0][0] -= 1
                if self._quota[0][0] <= 0:
                    self._quota.popleft()
            if reason is not None:
                self._rejected.append((event, reason))
                logged.append({"error_in_log": reason})
                continue
            echo = _echo(event, self.project_id)
            logged.append(echo)
            if echo["task_id"] in self._seen:
                self._duplicates += 1  # skipped, and not reported as an error
            else:
                self._seen.add(echo["task_id"])
                self._logged_at[echo["task_id"]] = time.monotonic()
                self._tasks.append(echo)
        return _json_reply(200, {"logged_events": logged})
