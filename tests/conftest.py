"""Shared fixtures: a clean logging state and an isolated environment for every test."""

from __future__ import annotations

import logging
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
