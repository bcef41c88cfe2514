"""Trace correlation (the span recording at the logging call goes into the task's metadata)
with the real OpenTelemetry SDK, and loguru's handler sink with the real loguru."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import phospho_logging
from phospho_logging import PhosphoHandler
from phospho_logging.testing import capture_tasks
from tests.test_exit import child_env

trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
sampling = pytest.importorskip("opentelemetry.sdk.trace.sampling")

log = logging.getLogger("phospho")


@pytest.fixture(scope="module")
def tracer() -> Any:
    """A real SDK tracer (the global provider can be set once per process)."""
    provider = sdk_trace.TracerProvider()
    trace.set_tracer_provider(provider)
    return trace.get_tracer("tests")


def ids(span: Any) -> Tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def trace_of(task: Dict[str, Any]) -> Tuple[Any, Any]:
    return task["metadata"].get("trace_id"), task["metadata"].get("span_id")


class TestTraceCorrelation:
    def test_the_recording_span_at_the_call(self, tracer: Any) -> None:
        with capture_tasks() as tasks:
            with tracer.start_as_current_span("request") as outer:
                log.info("a", extra={"input": "in the request"})
                with tracer.start_as_current_span("llm") as inner:
                    log.info("b", extra={"input": "in the llm call"})
            log.info("c", extra={"input": "outside"})
        assert [trace_of(t) for t in tasks] == [ids(outer), ids(inner), (None, None)]
        assert ids(outer)[0] == ids(inner)[0] and len(ids(inner)[0]) == 32 and ids(inner)[0].islower()

    def test_a_span_not_recording_adds_nothing(self, tracer: Any) -> None:
        never = sdk_trace.TracerProvider(sampler=sampling.ALWAYS_OFF).get_tracer("off")
        with capture_tasks() as tasks:
            with never.start_as_current_span("sampled out"):
                log.info("a", extra={"input": "q"})
        assert trace_of(tasks[0]) == (None, None)

    def test_what_you_bind_wins(self, tracer: Any) -> None:
        with capture_tasks() as tasks, tracer.start_as_current_span("request") as span:
            with phospho_logging.context(metadata={"trace_id": "mine", "tenant": "acme"}):
                log.info("a", extra={"input": "q"})
            log.info("b", extra={"input": "q", "metadata": {"span_id": "on the record"}})
        assert tasks[0]["metadata"]["trace_id"] == "mine" and tasks[0]["metadata"]["span_id"] == ids(span)[1]
        assert tasks[0]["metadata"]["tenant"] == "acme"
        assert tasks[1]["metadata"]["span_id"] == "on the record"

    def test_streams_and_async_tasks_take_the_span_of_their_call(self, tracer: Any) -> None:
        def answer(question: str) -> Iterator[str]:
            yield from ["a", "b"]

        async def one(name: str) -> Tuple[str, str]:
            with tracer.start_as_current_span(name) as span:
                await asyncio.sleep(0)
                log.info(name, extra={"input": name})
                return ids(span)

        async def both() -> List[Tuple[str, str]]:
            return list(await asyncio.gather(one("x"), one("y")))

        with capture_tasks() as tasks:
            with tracer.start_as_current_span("stream") as span:
                stream = phospho_logging.log_stream(answer("q"), input="q")
            list(stream)  # consumed, and its task logged, after the span ended
            expected = asyncio.run(both())
        assert trace_of(tasks[0]) == ids(span)
        assert sorted(trace_of(t) for t in tasks[1:]) == sorted(expected)

    def test_shipped_to_phospho(self, tracer: Any, server: Any, creds: dict, tmp_path: Any) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        with tracer.start_as_current_span("request") as span:
            phospho_logging.log(input="q", output="a")
        assert phospho_logging.flush(timeout=10)
        assert trace_of(server.tasks[0]) == ids(span)

    def test_nothing_without_opentelemetry(self, tmp_path: Any) -> None:
        """OpenTelemetry not importable: tasks as before, no trace fields."""
        code = ("import sys\nsys.modules['opentelemetry'] = None\n"
                "import logging, phospho_logging\nfrom phospho_logging.testing import capture_tasks\n"
                "with capture_tasks() as tasks:\n"
                "    logging.getLogger('phospho').info('a', extra={'input': 'q'})\n"
                "assert 'trace_id' not in tasks[0]['metadata'] and tasks[0]['input'] == 'q'\n"
                "print('ok')\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}))
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


loguru = pytest.importorskip("loguru")


class TestLoguru:
    def test_bound_fields_make_a_task(self, server: Any, creds: dict, tmp_path: Any) -> None:
        """``logger.add(PhosphoHandler())`` and ``logger.bind(input=..., output=...)``."""
        handler = PhosphoHandler(local_dir=str(tmp_path), **creds)
        sink = loguru.logger.add(handler, format="{message}")
        try:
            loguru.logger.bind(input="What is 2+2?", output="4", session_id="s-1",
                               metadata={"model": "m1"}).info("answered {}", "now")
            loguru.logger.info("a plain line is not a task")
            loguru.logger.bind(task_id="task_x", flag="success").info("feedback, the record form")
        finally:
            loguru.logger.remove(sink)
        assert handler.flush(timeout=10)
        [task] = server.tasks
        assert (task["input"], task["output"], task["session_id"]) == ("What is 2+2?", "4", "s-1")
        assert task["metadata"]["model"] == "m1" and task["metadata"]["log_message"] == "answered now"
        assert task["metadata"]["log_level"] == "INFO"
        handler.engine.shutdown(timeout=5)

    def test_bound_names_a_log_record_owns_go_to_metadata(self) -> None:
        handler = PhosphoHandler()
        sink = loguru.logger.add(handler, format="{message}")
        try:
            with capture_tasks() as tasks:
                loguru.logger.bind(input="q", name="n1", module="m1", message="msg").info("hi")
        finally:
            loguru.logger.remove(sink)
            handler.engine.shutdown(timeout=5)
        meta = tasks[0]["metadata"]
        assert (meta["name"], meta["module"], meta["message"], meta["log_message"]) == ("n1", "m1", "msg", "hi")

    def test_captured_too(self) -> None:
        handler = PhosphoHandler()
        sink = loguru.logger.add(handler)
        try:
            with capture_tasks() as tasks:
                loguru.logger.bind(input="q", output="a").warning("w")
        finally:
            loguru.logger.remove(sink)
            handler.engine.shutdown(timeout=5)
        assert [(t["input"], t["output"], t["metadata"]["log_level"]) for t in tasks] == [("q", "a", "WARNING")]
