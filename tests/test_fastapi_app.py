"""examples/fastapi_app.py: one task per request, in the session named by the request header."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional

import pytest

import phospho_logging
from phospho_logging.testing import PhosphoTestServer, capture_tasks

TestClient = pytest.importorskip("fastapi.testclient").TestClient

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"


def load_example() -> ModuleType:
    """Import examples/fastapi_app.py by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("examples_fastapi_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = load_example()


@pytest.fixture
def client() -> Iterator[Any]:
    """A TestClient with the app's lifespan running (configure() with no credentials)."""
    with TestClient(example.app) as test_client:
        yield test_client


def ask(client: Any, message: str, session_id: Optional[str] = None) -> Any:
    headers = {"X-Session-Id": session_id} if session_id is not None else {}
    reply = client.post("/chat", json={"message": message}, headers=headers)
    assert reply.status_code == 200, reply.text
    return reply


class TestChatEndpoint:
    def test_answers_and_logs_one_task_per_request(self, client: Any) -> None:
        """Each POST /chat returns the fake LLM's answer and logs exactly one task for it."""
        with capture_tasks() as tasks:
            first = ask(client, "Capital of France?", "s-1")
            ask(client, "What is 2+2?", "s-1")
        assert first.json() == {"answer": "You asked: Capital of France?"}
        assert [t["input"] for t in tasks] == ["Capital of France?", "What is 2+2?"]
        assert tasks[0]["output"] == "You asked: Capital of France?"
        assert tasks[0]["metadata"]["feature"] == "chat"

    def test_invalid_body_logs_nothing(self, client: Any) -> None:
        """A request FastAPI rejects (422) never reaches the LLM, so no task is logged."""
        with capture_tasks() as tasks:
            reply = client.post("/chat", json={"wrong": "field"}, headers={"X-Session-Id": "s-1"})
        assert reply.status_code == 422
        assert tasks == []


class TestSessionMiddleware:
    def test_header_is_the_session_id(self, client: Any) -> None:
        """The X-Session-Id header becomes the task's session_id and is echoed back."""
        with capture_tasks() as tasks:
            reply = ask(client, "hello", "s-alice")
        assert reply.headers["X-Session-Id"] == "s-alice"
        assert [t["session_id"] for t in tasks] == ["s-alice"]

    def test_missing_header_gets_a_generated_session_id(self, client: Any) -> None:
        """Without the header each request gets a new id, returned in the response header."""
        with capture_tasks() as tasks:
            first, second = ask(client, "one"), ask(client, "two")
        ids = [first.headers["X-Session-Id"], second.headers["X-Session-Id"]]
        assert all(ids) and ids[0] != ids[1]
        assert [t["session_id"] for t in tasks] == ids

    def test_session_does_not_leak_between_requests(self, client: Any) -> None:
        """A request without the header does not inherit the previous request's session."""
        with capture_tasks() as tasks:
            ask(client, "one", "s-first")
            ask(client, "two")
        assert tasks[1]["session_id"] not in (None, "s-first")

    def test_concurrent_requests_keep_their_own_session(self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """Requests in flight at the same time, from several threads, each log in their own session."""
        n = 8
        original = example.complete
        gate: Dict[str, Any] = {"arrived": 0, "all_in": None}

        async def gated(**kwargs: Any) -> Any:
            # Hold every request inside the endpoint until all n are: they overlap for sure.
            if gate["all_in"] is None:
                gate["all_in"] = asyncio.Event()  # created on the app's loop (3.9 binds it there)
            gate["arrived"] += 1
            if gate["arrived"] == n:
                gate["all_in"].set()
            await asyncio.wait_for(gate["all_in"].wait(), timeout=10)
            return await original(**kwargs)

        monkeypatch.setattr(example, "complete", gated)
        with capture_tasks() as tasks, ThreadPoolExecutor(max_workers=n) as pool:
            replies = list(pool.map(lambda i: ask(client, f"q{i}", f"s-{i}"), range(n)))
        assert [r.headers["X-Session-Id"] for r in replies] == [f"s-{i}" for i in range(n)]
        assert sorted((t["input"], t["session_id"]) for t in tasks) == sorted((f"q{i}", f"s-{i}") for i in range(n))


class TestLifespan:
    def test_tasks_reach_phospho_with_their_sessions(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With PHOSPHO_* set, the lifespan's configure() sends each request's task, in its session."""
        with PhosphoTestServer() as server:
            monkeypatch.setenv("PHOSPHO_API_KEY", server.api_key)
            monkeypatch.setenv("PHOSPHO_PROJECT_ID", server.project_id)
            monkeypatch.setenv("PHOSPHO_BASE_URL", server.url)
            with TestClient(example.app) as client:
                ask(client, "Capital of France?", "s-alice")
                ask(client, "What is 2+2?", "s-bob")
                anonymous = ask(client, "Who am I?").headers["X-Session-Id"]
                assert phospho_logging.flush(timeout=10)
            received: List[Dict[str, Any]] = server.tasks
        assert sorted((t["input"], t["session_id"]) for t in received) == [
            ("Capital of France?", "s-alice"), ("What is 2+2?", "s-bob"), ("Who am I?", anonymous)]
        assert server.duplicates == 0
