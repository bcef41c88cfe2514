"""A loopback fake of the OpenAI Chat Completions API, for the real ``openai`` client, and
of Ollama's streaming ``/api/generate`` and ``/api/chat``, for raw HTTP clients.

``POST /v1/chat/completions`` answers ``"You said: <last user message>"``, as a JSON
``ChatCompletion`` or, with ``stream=True``, as server-sent events: one chunk per word,
a finish chunk, with ``stream_options={"include_usage": True}`` a trailing usage chunk
with no choices, then ``data: [DONE]``. Usage counts words. Misbehaviour on demand:

* ``fail_after = k``: a stream stops after ``k`` content chunks, and the connection is
  cut in the middle of the chunked body (the client raises), or with
  ``fail_mode = "error_event"`` an SSE error event is sent instead (openai raises APIError);
* a ``model`` named ``"error-<status>"`` gets that HTTP status and an OpenAI error body.

``POST /api/generate`` (``prompt``) and ``POST /api/chat`` (``messages``) stream Ollama's
JSON lines, one HTTP chunk per line: ``response`` (generate) or ``message.content`` (chat)
per word, then a ``done`` line with ``done_reason``, ``prompt_eval_count`` and
``eval_count``. A ``model`` named ``"error-stream"`` sends two words then an ``error`` line.

Usage::

    with FakeOpenAI() as fake:
        client = openai.OpenAI(base_url=fake.url + "/v1", api_key="test", max_retries=0)
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Set

MODEL = "gpt-fake-1"


def reply_words(messages: Any) -> List[str]:
    """The words of the reply to ``messages``, each with its trailing space but the last."""
    last = ""
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                last = content if isinstance(content, str) else json.dumps(content)
                break
    words = f"You said: {last}".split(" ")
    return [w + " " for w in words[:-1]] + words[-1:]


def _count_words(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # fifty clients connect at once; the default backlog of 5 resets some

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up early is expected
            super().handle_error(request, client_address)


class FakeOpenAI:
    """The fake server. Start it (or use it as a context manager), point a client at
    ``url + "/v1"``, stop it in a ``finally``; ``requests`` holds the JSON bodies received."""

    def __init__(self, fail_after: Optional[int] = None, fail_mode: str = "disconnect", model: str = MODEL) -> None:
        self.fail_after = fail_after
        self.fail_mode = fail_mode
        self.model = model
        self.requests: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._sockets: Set[socket.socket] = set()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(_Handler):
            owner = fake

        server = _Server(("127.0.0.1", 0), Handler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open connections, and join the server thread (well under 2 s)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(2)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    owner: FakeOpenAI
    protocol_version = "HTTP/1.1"
    timeout = 5  # an idle keep-alive connection does not hold its thread for long

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._sockets.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.owner._lock:
                self.owner._sockets.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet tests

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._json(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
        if self.path.rstrip("/") in ("/api/generate", "/api/chat"):
            return self._ollama(body)
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        with self.owner._lock:
            self.owner.requests.append(body)
        model = str(body.get("model") or self.owner.model)
        if model.startswith("error-"):
            status = int(model.split("-", 1)[1])
            return self._json(status, {"error": {"message": f"fake error {status}", "type": "fake_error",
                                                 "code": str(status)}})
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._json(400, {"error": {"message": "messages is required", "type": "invalid_request_error"}})
        words = reply_words(messages)
        usage = {"prompt_tokens": _count_words(messages), "completion_tokens": len(words),
                 "total_tokens": _count_words(messages) + len(words)}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._stream(model, words, usage if include_usage else None)
        return self._json(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": usage,
        })

    def _json(self, status: int, payload: Dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, model: str, delta: Dict[str, Any], finish: Optional[str], with_usage: bool) -> Dict[str, Any]:
        chunk: Dict[str, Any] = {
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if with_usage:
            chunk["usage"] = None
        return chunk

    def _send_event(self, payload: Any) -> None:
        data = b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))  # one HTTP chunk per event
        self.wfile.flush()

    def _stream(self, model: str, words: List[str], usage: Optional[Dict[str, int]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        fail_after = self.owner.fail_after
        with_usage = usage is not None
        self._send_event(self._chunk(model, {"role": "assistant", "content": ""}, None, with_usage))
        for i, word in enumerate(words):
            if fail_after is not None and i >= fail_after:
                if self.owner.fail_mode == "error_event":
                    self._send_event({"error": {"message": "fake failure mid-stream", "type": "server_error"}})
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(b"40\r\npartial")  # a chunk cut short, then the connection is closed
                    self.wfile.flush()
                self.close_connection = True
                return
            self._send_event(self._chunk(model, {"content": word}, None, with_usage))
        self._send_event(self._chunk(model, {}, "stop", with_usage))
        if usage is not None:
            self._send_event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                              "model": model, "choices": [], "usage": usage})
        self._send_event(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _ollama(self, body: Dict[str, Any]) -> None:
        chat = self.path.rstrip("/") == "/api/chat"
        messages = body.get("messages") if chat else [{"role": "user", "content": body.get("prompt", "")}]
        with self.owner._lock:
            self.owner.requests.append(body)
        model = str(body.get("model") or "llama3")
        words = reply_words(messages)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def line(payload: Dict[str, Any]) -> None:
            data = json.dumps(payload).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def part(text: str, done: bool) -> Dict[str, Any]:
            out: Dict[str, Any] = {"model": model, "created_at": "2026-12-05T00:00:00Z"}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out["done"] = done
            return out

        for i, word in enumerate(words):
            if model == "error-stream" and i == 2:
                line({"error": "the model ran out of memory"})
                break
            line(part(word, False))
        else:
            last = part("", True)
            last.update(done_reason="stop", total_duration=1000, prompt_eval_count=_count_words(messages),
                        eval_count=len(words))
            line(last)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
