"""phospho_logging.context: per thread and per asyncio task, nested, as decorator."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Dict, List

import phospho_logging
from phospho_logging.testing import PhosphoTestServer, capture_tasks

log = logging.getLogger("phospho")


def by_input(tasks: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {t["input"]: t for t in tasks}


class TestContext:
    def test_binds_fields(self) -> None:
        """session_id, user_id, version_id and metadata apply to tasks logged inside."""
        with capture_tasks() as tasks:
            with phospho_logging.context(session_id="s", user_id="u", version_id="v", metadata={"tenant": "t"}):
                log.info("x", extra={"input": "inside"})
            log.info("x", extra={"input": "outside"})
        inside, outside = by_input(tasks)["inside"], by_input(tasks)["outside"]
        assert (inside["session_id"], inside["user_id"], inside["version_id"]) == ("s", "u", "v")
        assert inside["metadata"]["tenant"] == "t"
        assert outside["session_id"] is None and "tenant" not in outside["metadata"]

    def test_nested_contexts_merge(self) -> None:
        """Inner values win; metadata merges key by key; leaving restores the outer context."""
        with capture_tasks() as tasks:
            with phospho_logging.context(session_id="outer", metadata={"a": 1, "b": 1}):
                with phospho_logging.context(session_id="inner", metadata={"b": 2}):
                    log.info("x", extra={"input": "in"})
                log.info("x", extra={"input": "out"})
        tasks_by = by_input(tasks)
        assert tasks_by["in"]["session_id"] == "inner" and tasks_by["in"]["metadata"]["a"] == 1
        assert tasks_by["in"]["metadata"]["b"] == 2
        assert tasks_by["out"]["session_id"] == "outer" and tasks_by["out"]["metadata"]["b"] == 1

    def test_record_values_win(self) -> None:
        """A field on the record itself beats the context's."""
        with capture_tasks() as tasks, phospho_logging.context(session_id="ctx", metadata={"k": "ctx"}):
            log.info("x", extra={"input": "q", "session_id": "own", "metadata": {"k": "own"}})
        assert tasks[0]["session_id"] == "own" and tasks[0]["metadata"]["k"] == "own"

    def test_threads_do_not_share(self) -> None:
        """Each thread sees only its own context."""
        barrier = threading.Barrier(4)

        def work(n: int) -> None:
            with phospho_logging.context(session_id=f"s{n}"):
                barrier.wait(10)  # all four contexts are open at once
                log.info("x", extra={"input": f"t{n}"})

        with capture_tasks() as tasks:
            threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
        assert {t["input"]: t["session_id"] for t in tasks} == {f"t{n}": f"s{n}" for n in range(4)}

    def test_asyncio_tasks_do_not_share(self) -> None:
        """Concurrent asyncio tasks each keep their own context across awaits."""

        async def handle(n: int) -> None:
            with phospho_logging.context(session_id=f"s{n}"):
                await asyncio.sleep(0)  # let the other tasks run inside their contexts
                log.info("x", extra={"input": f"a{n}"})

        async def main() -> None:
            await asyncio.gather(*(handle(n) for n in range(20)))

        with capture_tasks() as tasks:
            asyncio.run(main())
        assert {t["input"]: t["session_id"] for t in tasks} == {f"a{n}": f"s{n}" for n in range(20)}

    def test_decorator_sync_and_async(self) -> None:
        """As a decorator, it wraps each call of a sync or async function."""

        @phospho_logging.context(session_id="sync")
        def sync_call() -> str:
            log.info("x", extra={"input": "sync"})
            return "ok"

        @phospho_logging.context(session_id="async")
        async def async_call() -> str:
            log.info("x", extra={"input": "async"})
            return "ok"

        with capture_tasks() as tasks:
            assert sync_call() == "ok"
            assert asyncio.run(async_call()) == "ok"
            log.info("x", extra={"input": "after"})
        assert {t["input"]: t["session_id"] for t in tasks} == {"sync": "sync", "async": "async", "after": None}
        assert sync_call.__name__ == "sync_call"

    def test_reaches_the_server(self, server: PhosphoTestServer, creds: dict) -> None:
        """Bound fields go all the way through the pipeline."""
        pipeline = phospho_logging.configure(**creds)
        with phospho_logging.context(session_id="wire", metadata={"tenant": "acme"}):
            log.info("x", extra={"input": "q"})
        assert pipeline.flush(timeout=10)
        assert server.tasks[0]["session_id"] == "wire" and server.tasks[0]["metadata"]["tenant"] == "acme"
