"""structlog: the processor, contextvars, and stdlib integration through ProcessorFormatter."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from typing import Any, Dict, Iterator, List

import pytest
import structlog

import phospho_logging
from phospho_logging import PhosphoHandler, PhosphoQueueHandler, PhosphoQueueListener
from phospho_logging.structlog import PhosphoProcessor
from phospho_logging.testing import PhosphoTestServer, capture_tasks
from tests.strict import wire_errors
from tests.test_exit import child_env


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    """structlog's global configuration and context are reset around every test."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


class Collect:
    """A final processor that keeps the event dicts it sees and drops them."""

    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []

    def __call__(self, logger: Any, method_name: str, event_dict: Dict[str, Any]) -> Any:
        self.events.append(event_dict)
        raise structlog.DropEvent


class TestProcessor:
    def test_event_becomes_a_task(self, server: PhosphoTestServer, creds: dict) -> None:
        """An event with input reaches phospho; the returned dict carries its task_id."""
        pipeline = phospho_logging.configure(**creds)
        sink = Collect()
        structlog.configure(processors=[structlog.processors.add_log_level, PhosphoProcessor(), sink])
        structlog.get_logger().warning("answered", input="What is 2+2?", output="4", session_id="s-1",
                                       user_id="u-7", metadata={"model": "m1"}, tenant="acme")
        assert pipeline.flush(timeout=10)
        [task] = server.tasks
        assert (task["input"], task["output"], task["session_id"], task["user_id"]) == ("What is 2+2?", "4", "s-1", "u-7")
        meta = task["metadata"]
        assert meta["model"] == "m1" and meta["tenant"] == "acme"
        assert meta["log_message"] == "answered" and meta["log_level"] == "WARNING"
        assert "event" not in meta and "level" not in meta
        assert sink.events[0]["task_id"] == task["task_id"]
        assert wire_errors(task) is None

    def test_events_without_input_pass_untouched(self, server: PhosphoTestServer, creds: dict) -> None:
        """Ordinary events are returned as they came, and nothing is shipped."""
        pipeline = phospho_logging.configure(**creds)
        sink = Collect()
        structlog.configure(processors=[PhosphoProcessor(), sink])
        structlog.get_logger().info("hello", x=1)
        assert pipeline.flush(timeout=10)
        assert sink.events == [{"event": "hello", "x": 1}] and server.tasks == []

    def test_callers_dict_not_mutated_and_given_task_id_kept(self) -> None:
        """The processor returns a new dict; a task_id given by the caller is used as is."""
        processor = PhosphoProcessor()
        with capture_tasks() as tasks:
            original = {"event": "e", "input": "q"}
            returned = processor(None, "info", original)
            given = processor(None, "info", {"event": "e", "input": "q", "task_id": "mine"})
        assert "task_id" not in original and returned["task_id"] == tasks[0]["task_id"]
        assert given["task_id"] == "mine" and tasks[1]["task_id"] == "mine"

    def test_merge_contextvars_session(self, server: PhosphoTestServer, creds: dict) -> None:
        """A session_id bound with structlog.contextvars flows into the task."""
        pipeline = phospho_logging.configure(**creds)
        structlog.configure(processors=[structlog.contextvars.merge_contextvars, PhosphoProcessor(), Collect()])
        structlog.contextvars.bind_contextvars(session_id="bound-session", request_id="r-1")
        structlog.get_logger().info("answered", input="q")
        assert pipeline.flush(timeout=10)
        [task] = server.tasks
        assert task["session_id"] == "bound-session" and task["metadata"]["request_id"] == "r-1"

    def test_phospho_context_applies(self) -> None:
        """phospho_logging.context() values reach processor tasks; the event's own win."""
        structlog.configure(processors=[PhosphoProcessor(), Collect()])
        with capture_tasks() as tasks, phospho_logging.context(session_id="ctx", user_id="u", metadata={"a": 1}):
            structlog.get_logger().info("e", input="q", user_id="own", metadata={"b": 2})
        assert tasks[0]["session_id"] == "ctx" and tasks[0]["user_id"] == "own"
        assert tasks[0]["metadata"]["a"] == 1 and tasks[0]["metadata"]["b"] == 2

    def test_explicit_pipeline(self, server: PhosphoTestServer, creds: dict) -> None:
        """A processor given a pipeline submits there, whatever configure() says later."""
        mine = phospho_logging.configure(**creds, logger="mine")
        structlog.configure(processors=[PhosphoProcessor(mine), Collect()])
        structlog.get_logger().info("e", input="q")
        assert mine.flush(timeout=10) and len(server.tasks) == 1

    def test_never_raises(self, server: PhosphoTestServer, creds: dict) -> None:
        """Odd values, a raising text function: the app's call returns, a valid task is sent."""
        pipeline = phospho_logging.configure(**creds)

        class Bad:
            def __repr__(self) -> str:
                raise RuntimeError("no")

        def explode(value: Any) -> str:
            raise ValueError("boom")

        structlog.configure(processors=[PhosphoProcessor(input_to_str=explode), Collect()])
        structlog.get_logger().info("e", input=Bad(), output=float("nan"), metadata={"b": Bad()}, flag=3)
        assert pipeline.flush(timeout=10)
        [task] = server.tasks
        assert wire_errors(task) is None
        assert "input_to_str_raised" in task["metadata"]["phospho_logging_problems"]

    def test_exception_text(self) -> None:
        """exc_info on the event puts the traceback in log_exception."""
        structlog.configure(processors=[PhosphoProcessor(), Collect()])
        with capture_tasks() as tasks:
            try:
                raise KeyError("gone")
            except KeyError:
                structlog.get_logger().error("failed", input="q", exc_info=True)
        assert "KeyError: 'gone'" in tasks[0]["metadata"]["log_exception"]

    def test_unconfigured_warns_once(self, diag: List[str]) -> None:
        """With no pipeline, the processor passes events through, says so once, and counts
        the tasks: stats() has them as not_configured, and flush() is False once."""
        def not_configured() -> int:
            return phospho_logging.stats().get("dropped_by_reason", {}).get("not_configured", 0)

        processor = PhosphoProcessor()
        phospho_logging.flush(timeout=5)
        before = not_configured()
        for _ in range(3):
            assert processor(None, "info", {"event": "e", "input": "q"}) == {"event": "e", "input": "q"}
        assert phospho_logging.flush(timeout=5) is False  # also: what logging calls reported is said by now
        assert phospho_logging.flush(timeout=5) is True  # nothing lost since
        assert not_configured() - before == 3
        assert sum("nothing ships it" in m for m in diag) == 1


class TestShortPath:
    """Once the pipeline runs, events take the processor's short path; each case that needs
    the full path must still get it."""

    @pytest.fixture
    def warm(self, server: PhosphoTestServer, creds: dict) -> Iterator[Any]:
        pipeline = phospho_logging.configure(**creds)
        structlog.configure(processors=[PhosphoProcessor(), Collect()])
        structlog.get_logger().info("warm", input="warm-up")
        assert pipeline.flush(timeout=10)
        assert pipeline.engine.plain  # the short path is on: what follows takes it or must not
        yield pipeline

    def later(self, server: PhosphoTestServer, pipeline: Any) -> Dict[str, Any]:
        assert pipeline.flush(timeout=10)
        return [t for t in server.tasks if t["input"] != "warm-up"][-1]

    def test_short_path_task_is_whole(self, warm: Any, server: PhosphoTestServer) -> None:
        """The short path ships the same task as the full one."""
        sink = Collect()
        structlog.configure(processors=[structlog.processors.add_log_level, PhosphoProcessor(), sink])
        structlog.get_logger().warning("answered", input="q", output="a", session_id="s", metadata={"m": 1}, k="v")
        task = self.later(server, warm)
        assert (task["output"], task["session_id"], task["metadata"]["m"], task["metadata"]["k"]) == ("a", "s", 1, "v")
        assert (task["metadata"]["log_message"], task["metadata"]["log_level"]) == ("answered", "WARNING")
        assert sink.events[0]["task_id"] == task["task_id"] and wire_errors(task) is None

    def test_processor_text_function(self, warm: Any, server: PhosphoTestServer) -> None:
        """A processor's own input_to_str runs on the caller's thread, warm or not."""
        structlog.configure(processors=[PhosphoProcessor(input_to_str=lambda v: "TXT"), Collect()])
        structlog.get_logger().info("e", input={"q": 1})
        assert self.later(server, warm)["input"] == "TXT"

    @pytest.mark.parametrize("key", ["input_to_str", "output_to_str"])
    def test_event_text_function(self, warm: Any, server: PhosphoTestServer, key: str) -> None:
        """A text function given on the event is used."""
        structlog.get_logger().info("e", input={"q": 1}, output={"a": 2}, **{key: lambda v: "TXT"})
        task = self.later(server, warm)
        assert task["input" if key == "input_to_str" else "output"] == "TXT"

    def test_bound_context(self, warm: Any, server: PhosphoTestServer) -> None:
        """phospho_logging.context() applies on the warm path too."""
        with phospho_logging.context(session_id="ctx-s", metadata={"c": 1}):
            structlog.get_logger().info("e", input="q")
        task = self.later(server, warm)
        assert task["session_id"] == "ctx-s" and task["metadata"]["c"] == 1

    def test_exc_info(self, warm: Any, server: PhosphoTestServer) -> None:
        """exc_info renders the traceback on the warm path too."""
        try:
            raise KeyError("gone")
        except KeyError:
            structlog.get_logger().error("failed", input="q", exc_info=True)
        assert "KeyError: 'gone'" in self.later(server, warm)["metadata"]["log_exception"]

    def test_capture(self, warm: Any, server: PhosphoTestServer) -> None:
        """capture_tasks() sees warm-path tasks, which then do not reach the server."""
        with capture_tasks() as tasks:
            structlog.get_logger().info("e", input="captured")
        assert warm.flush(timeout=10)
        assert [t["input"] for t in tasks] == ["captured"]
        assert "captured" not in [t["input"] for t in server.tasks]

    def test_foreign_values(self, warm: Any, server: PhosphoTestServer) -> None:
        """Values marshal cannot copy take the full path and are made JSON-safe."""
        import datetime

        when = datetime.datetime(2026, 1, 2, 3, 4, 5)
        structlog.get_logger().info("e", input="q", when=when)
        assert self.later(server, warm)["metadata"]["when"] == when.isoformat()

    @pytest.mark.parametrize("warm_first", [False, True], ids=["cold", "warm"])
    def test_after_shutdown_with_its_pipeline(self, server: PhosphoTestServer, creds: dict, warm_first: bool) -> None:
        """A processor given its pipeline keeps shipping through it after shutdown(): a
        worker comes back for the late events, and the books stay right."""
        pipeline = phospho_logging.configure(**creds)
        structlog.configure(processors=[PhosphoProcessor(pipeline), Collect()])
        log = structlog.get_logger()
        if warm_first:
            log.info("e", input="before")
            assert pipeline.flush(timeout=10)
        pipeline.shutdown()
        for i in range(3):
            log.info("e", input=f"late-{i}")
            assert pipeline.flush(timeout=10)  # each one delivered, whatever the worker's state
        stats = pipeline.stats()
        expected = 4 if warm_first else 3
        assert len(server.tasks) == expected
        assert (stats["enqueued"], stats["sent"], stats["queued"]) == (expected, expected, 0)

    def test_after_shutdown_without_a_pipeline(self, server: PhosphoTestServer, creds: dict,
                                               diag: List[str]) -> None:
        """The default processor follows configure(): after shutdown() nothing ships its
        events, and it says so once."""
        pipeline = phospho_logging.configure(**creds)
        structlog.configure(processors=[PhosphoProcessor(), Collect()])
        structlog.get_logger().info("e", input="before")
        pipeline.shutdown()
        structlog.get_logger().info("e", input="after")
        assert phospho_logging.flush(timeout=5) is False  # "after" was not kept, and is counted
        assert [t["input"] for t in server.tasks] == ["before"]
        assert sum("nothing ships it" in m for m in diag) == 1


def stdlib_chain(*extra_processors: Any) -> None:
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, *extra_processors,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def console_handler() -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=structlog.processors.JSONRenderer()))
    return handler, stream


class TestStdlib:
    def test_processor_with_processor_formatter(self, server: PhosphoTestServer, creds: dict) -> None:
        """BoundLogger + ProcessorFormatter + configure() on the same logger: shipped once,
        and the console line shows the task_id."""
        pipeline = phospho_logging.configure(**creds, logger="app")
        handler, stream = console_handler()
        logging.getLogger("app").addHandler(handler)
        try:
            stdlib_chain(PhosphoProcessor())
            structlog.get_logger("app").info("answered", input="q", output="a")
            assert pipeline.flush(timeout=10)
        finally:
            logging.getLogger("app").removeHandler(handler)
        [task] = server.tasks
        assert server.duplicates == 0 and pipeline.stats()["enqueued"] == 1
        line = json.loads(stream.getvalue())
        assert line["task_id"] == task["task_id"] and line["event"] == "answered"

    def test_wrapped_dicts_without_processor(self, server: PhosphoTestServer, creds: dict) -> None:
        """Without the processor, the handler reads task fields from the event dict in record.msg."""
        pipeline = phospho_logging.configure(**creds, logger="app")
        stdlib_chain(structlog.contextvars.merge_contextvars)
        structlog.contextvars.bind_contextvars(session_id="s-ctx")
        structlog.get_logger("app").info("answered", input="q", output="a", tenant="acme")
        assert pipeline.flush(timeout=10)
        [task] = server.tasks
        assert (task["input"], task["output"], task["session_id"]) == ("q", "a", "s-ctx")
        assert task["metadata"]["tenant"] == "acme" and task["metadata"]["log_message"] == "answered"
        assert "_logger" not in task["metadata"] and "_name" not in task["metadata"]

    def test_processor_formatter_behind_our_queue(self, server: PhosphoTestServer, creds: dict) -> None:
        """structlog issue 702: a ProcessorFormatter behind our queue pair still gets the event dict."""
        handler, stream = console_handler()
        q: Any = __import__("queue").SimpleQueue()
        listener = PhosphoQueueListener(q, PhosphoHandler(**creds), handler)
        queue_handler = PhosphoQueueHandler(q)
        queue_handler.listener = listener
        app = logging.getLogger("app702")
        app.setLevel(logging.INFO)
        app.addHandler(queue_handler)
        listener.start()
        try:
            stdlib_chain()
            structlog.get_logger("app702").info("answered", input="q", output="a", n=1)
            assert listener.flush(timeout=10)
        finally:
            app.removeHandler(queue_handler)
            listener.stop(timeout=2)
        line = json.loads(stream.getvalue())
        assert (line["event"], line["input"], line["n"], line["level"]) == ("answered", "q", 1, "info")
        assert [t["input"] for t in server.tasks] == ["q"]

    def test_capture_sees_processor_tasks_once(self) -> None:
        """capture_tasks collects a processor task once even when it also reaches stdlib."""
        logging.getLogger("cap").setLevel(logging.INFO)
        stdlib_chain(PhosphoProcessor())
        with capture_tasks() as tasks:
            structlog.get_logger("cap").info("e", input="q")
        assert [t["input"] for t in tasks] == ["q"]


class TestOptionalDependency:
    def test_missing_structlog_names_the_extra(self) -> None:
        """Without structlog installed, the import error says which extra to install."""
        code = ("import sys; sys.modules['structlog'] = None\n"
                "try:\n    import phospho_logging.structlog\nexcept ImportError as e:\n    print(e)\n")
        result = subprocess.run([sys.executable, "-c", code], env=child_env({}), capture_output=True, text=True, timeout=60)
        assert "pip install structlog" in result.stdout, result.stderr


class TestWithDictConfig:
    def test_processor_ships_through_a_dictconfig_handler(self, server: PhosphoTestServer, creds: dict) -> None:
        """Without configure(), the processor ships through the PhosphoHandler dictConfig made."""
        import logging.config

        logging.config.dictConfig({
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"phospho": {"class": "phospho_logging.PhosphoHandler", **creds}},
            "loggers": {"sl_dc": {"level": "INFO", "handlers": ["phospho"], "propagate": False}},
        })
        try:
            structlog.configure(processors=[PhosphoProcessor(), Collect()])
            structlog.get_logger().info("answered", input="q", output="a")
            assert phospho_logging.flush(timeout=10)
            assert [t["input"] for t in server.tasks] == ["q"]
        finally:
            logger = logging.getLogger("sl_dc")
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()
