"""Shared fixtures: a clean logging state and an isolated environment for every test."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

import phospho_logging
from phospho_logging import _diag
from phospho_logging.testing import PhosphoTestServer
from tests.fake_openai import FakeOpenAI

_ENV = [
    "PHOSPHO_API_KEY",
    "PHOSPHO_PROJECT_ID",
    "PHOSPHO_BASE_URL",
    "PHOSPHO_LOCAL_DIR",
]


@pytest.fixture(autouse=True)
def clean_state(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test starts with no PHOSPHO_* variables, a private data dir, and no handlers."""
    import os

    for name in list(os.environ):
        if name.startswith("PHOSPHO_"):
            monkeypatch.delenv(name)
    data_home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    loggers = [logging.getLogger(), logging.getLogger("phospho")]
    before = {id(lg): (list(lg.handlers), lg.level, lg.propagate) for lg in loggers}
    _diag.reset()
    yield
    phospho_logging.shutdown(timeout=2)
    for lg in loggers:
        handlers, level, propagate = before[id(lg)]
        for h in list(lg.handlers):
            if h not in handlers:
                lg.removeHandler(h)
                try:
                    h.close()
                except Exception:
                    pass
        lg.setLevel(level)
        lg.propagate = propagate
    _diag.reset()


@pytest.fixture
def diag() -> Iterator[List[str]]:
    """The messages phospho_logging reports about itself during the test."""
    messages: List[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect()
    _diag.logger.addHandler(handler)
    try:
        yield messages
    finally:
        _diag.logger.removeHandler(handler)


def said(diag: List[str], text: str, timeout: float = 10) -> int:
    """How many of the ``diag`` notices hold ``text``, once one does (notices are said from
    the control thread: bounded polling, at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not any(text in m for m in diag) and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    return sum(text in m for m in diag)


@pytest.fixture
def server() -> Iterator[PhosphoTestServer]:
    """A running loopback phospho server, stopped after the test."""
    srv = PhosphoTestServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def creds(server: PhosphoTestServer) -> dict:
    """configure() keyword arguments pointing at the loopback server."""
    return {"api_key": server.api_key, "project_id": server.project_id, "base_url": server.url}


@pytest.fixture
def netrc_for_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``.netrc`` with credentials for 127.0.0.1, found through ``NETRC`` and ``HOME``."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    return netrc


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """A running loopback fake of the OpenAI API, stopped after the test."""
    from tests.fake_openai import FakeOpenAI

    server = FakeOpenAI()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ForwardingProxy:
    """A plain HTTP proxy on 127.0.0.1 for ``http://`` URLs: each request (absolute form)
    goes to its host with ``Connection: close``, and the answer comes back as it arrives,
    the client's connection closed after it. ``requests`` counts what it forwarded."""

    def __init__(self) -> None:
        import socketserver

        owner = self
        self.requests = 0

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._forward(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-proxy", daemon=True)

    def _forward(self, client: socket.socket) -> None:
        from urllib.parse import urlsplit

        client.settimeout(30)
        reader = client.makefile("rb")
        method, target, _ = reader.readline().decode("latin-1").split()
        head, length = [], 0
        while True:
            line = reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name = line.split(b":", 1)[0].strip().lower()
            if name == b"content-length":
                length = int(line.split(b":", 1)[1])
            if name not in (b"connection", b"proxy-connection", b"proxy-authorization"):
                head.append(line)
        body = reader.read(length) if length else b""
        url = urlsplit(target)
        self.requests += 1
        with socket.create_connection((url.hostname, url.port), timeout=30) as upstream:
            upstream.sendall(f"{method} {url.path or '/'} HTTP/1.1\r\n".encode() + b"".join(head)
                             + b"Connection: close\r\n\r\n" + body)
            try:
                while True:
                    chunk = upstream.recv(65536)
                    if not chunk:
                        break
                    client.sendall(chunk)
            except OSError:  # the client gave up on the answer
                pass

    def __enter__(self) -> ForwardingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def forwarding_proxy() -> Iterator[ForwardingProxy]:
    """A running ``ForwardingProxy``, stopped after the test."""
    with ForwardingProxy() as proxy:
        yield proxy
