"""The public surface: names, import side effects, the test helpers."""

from __future__ import annotations

import logging
import subprocess
import sys

import phospho_logging
from phospho_logging.testing import PhosphoTestServer, capture_tasks
from tests.test_exit import child_env


class TestPublicNames:
    def test_all_is_pinned_and_sorted(self) -> None:
        """__all__ is exactly the documented API, sorted."""
        assert phospho_logging.__all__ == sorted(phospho_logging.__all__)
        assert phospho_logging.__all__ == [
            "ExportResult", "Exporter", "Feedback", "MutableAsyncGenerator", "MutableGenerator", "PhosphoHandler",
            "PhosphoQueueHandler", "PhosphoQueueListener", "Pipeline", "WireEvent", "__version__", "configure",
            "context", "feedback", "flush", "log", "log_stream", "shutdown", "stats", "wrap",
        ]
        for name in phospho_logging.__all__:
            assert getattr(phospho_logging, name) is not None

    def test_import_has_no_side_effects(self) -> None:
        """Importing the package adds no handler, changes no level and starts no thread."""
        code = (
            "import logging, threading\n"
            "before = {n: (list(l.handlers), l.level) for n, l in logging.Logger.manager.loggerDict.items() if isinstance(l, logging.Logger)}\n"
            "root = (list(logging.getLogger().handlers), logging.getLogger().level)\n"
            "threads = threading.active_count()\n"
            "import phospho_logging, phospho_logging.testing\n"
            "assert (list(logging.getLogger().handlers), logging.getLogger().level) == root\n"
            "assert logging.getLogger('phospho').handlers == [] and logging.getLogger('phospho').level == 0\n"
            "assert threading.active_count() == threads\n"
            "import atexit\n"
            "print('ok')\n"
        )
        result = subprocess.run([sys.executable, "-c", code], env=child_env({}), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok" and result.stderr == ""


class TestCaptureTasks:
    def test_captures_without_configuration(self) -> None:
        """capture_tasks sees tasks logged on the phospho logger with nothing configured."""
        with capture_tasks() as tasks:
            logging.getLogger("phospho").info("t", extra={"input": "q", "output": "a"})
            logging.getLogger("phospho").info("not a task")
        assert [(t["input"], t["output"]) for t in tasks] == [("q", "a")]
        assert logging.getLogger("phospho").level == logging.NOTSET

    def test_captures_instead_of_sending(self, server, creds) -> None:
        """With a pipeline configured, captured tasks are not sent, and are captured once."""
        pipeline = phospho_logging.configure(**creds)
        with capture_tasks() as tasks:
            logging.getLogger("phospho").info("t", extra={"input": "q"})
        assert [t["input"] for t in tasks] == ["q"]
        assert pipeline.flush(timeout=10)
        assert server.tasks == []
        logging.getLogger("phospho").info("t", extra={"input": "after"})
        assert pipeline.flush(timeout=10)
        assert [t["input"] for t in server.tasks] == ["after"]

    def test_context_applies(self) -> None:
        """Fields bound with phospho_logging.context reach captured tasks."""
        with capture_tasks() as tasks, phospho_logging.context(session_id="s-9", metadata={"tenant": "acme"}):
            logging.getLogger("phospho").info("t", extra={"input": "q", "metadata": {"k": 1}})
        assert tasks[0]["session_id"] == "s-9"
        assert tasks[0]["metadata"]["tenant"] == "acme" and tasks[0]["metadata"]["k"] == 1


class TestDocstrings:
    def test_every_public_object_is_documented(self) -> None:
        """Every public name, and every public method of a public class, has a docstring."""
        import inspect

        import phospho_logging.json
        import phospho_logging.structlog
        import phospho_logging.testing

        missing = []
        for module in (phospho_logging, phospho_logging.testing, phospho_logging.structlog, phospho_logging.json):
            for name in module.__all__:
                if name.startswith("__"):
                    continue
                obj = getattr(module, name)
                if not (inspect.getdoc(obj) or "").strip():
                    missing.append(f"{module.__name__}.{name}")
                if inspect.isclass(obj):
                    for attr, value in vars(obj).items():
                        if not attr.startswith("_") and callable(value) and not (inspect.getdoc(value) or "").strip():
                            missing.append(f"{module.__name__}.{name}.{attr}")
        assert missing == []


class TestLog:
    """``phospho_logging.log``: the SDK's ``phospho.log``, migrated by a change of import."""

    def test_returns_the_task_as_sent(self, server: PhosphoTestServer, creds: dict) -> None:
        """The returned task is the one the server gets: same id, texts and metadata."""
        pipeline = phospho_logging.configure(**creds)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
        task = phospho_logging.log(input=messages, output="4", session_id="s-1", metadata={"model": "m1"},
                                   style="short", name="clashes with a LogRecord attribute")
        assert (task["input"], task["output"], task["session_id"]) == ("What is 2+2?", "4", "s-1")
        assert task["metadata"]["model"] == "m1" and task["metadata"]["style"] == "short"
        assert task["metadata"]["name"] == "clashes with a LogRecord attribute"
        assert task["project_id"] == creds["project_id"] and task["task_id"].startswith("task_")
        assert pipeline.flush(timeout=10)
        [sent] = server.tasks
        assert sent["task_id"] == task["task_id"]
        assert {k: sent[k] for k in ("input", "output", "session_id")} == \
            {k: task[k] for k in ("input", "output", "session_id")}
        # The server also files top-level fields it does not know (system_prompt) as metadata.
        assert {k: sent["metadata"][k] for k in task["metadata"]} == task["metadata"]

    def test_with_context_and_a_given_id(self, server: PhosphoTestServer, creds: dict) -> None:
        """Fields bound with context() and a given task_id are in the returned task too."""
        pipeline = phospho_logging.configure(**creds)
        with phospho_logging.context(user_id="u-7"):
            task = phospho_logging.log("q", "a", task_id="mine-1")
        assert (task["task_id"], task["user_id"]) == ("mine-1", "u-7")
        assert pipeline.flush(timeout=10)
        assert [(t["task_id"], t["user_id"]) for t in server.tasks] == [("mine-1", "u-7")]

    def test_stream_true_is_log_stream(self, server: PhosphoTestServer, creds: dict) -> None:
        """stream=True wraps the output stream: chunks pass through, one task at the end."""
        pipeline = phospho_logging.configure(**creds)
        chunks = list(phospho_logging.log("q", (c for c in ["The ", "sky ", "is blue."]), stream=True))
        assert chunks == ["The ", "sky ", "is blue."]
        assert pipeline.flush(timeout=10)
        assert [(t["input"], t["output"]) for t in server.tasks] == [("q", "The sky is blue.")]
