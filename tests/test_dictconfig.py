"""``logging.config.dictConfig`` end to end: the portable handler, the 3.12+ queue shape,
interpreter exit, reconfiguring under load, and the shipped example."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import yaml  # a dev dependency: the YAML path is tested everywhere, never skipped

from phospho_logging import PhosphoHandler, PhosphoQueueHandler, PhosphoQueueListener
from phospho_logging.testing import PhosphoTestServer

from .test_exit import child_env, server_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LOGGER = "phospho_dictconfig_test"  # dedicated: the autouse fixture only restores root and "phospho"
NATIVE = sys.version_info >= (3, 12)
needs_native = pytest.mark.skipif(
    not NATIVE, reason="dictConfig's queue keys (handlers, queue, listener) need Python 3.12+"
)
BOUNDED_QUEUE = {"()": "queue.Queue", "maxsize": 1000}

#: How a dictConfig can attach phospho_logging; the native shapes are 3.12+.
SHAPES = [
    pytest.param("portable", id="portable"),
    pytest.param("native", id="native-stdlib-listener", marks=needs_native),
    pytest.param("native-listener", id="native-phospho-listener", marks=needs_native),
]

RECONFIGURE_SHAPES = SHAPES
EXIT_SHAPES = SHAPES


def make_config(shape: str, queue: Optional[Dict[str, Any]] = None, **options: Any) -> Dict[str, Any]:
    """A dictConfig for ``LOGGER`` in one of the SHAPES, ``options`` going to PhosphoHandler."""
    handlers: Dict[str, Any]
    if shape == "portable":
        handlers = {"phospho": {"class": "phospho_logging.PhosphoHandler", **options}}
        attached = "phospho"
    else:
        front: Dict[str, Any] = {"class": "phospho_logging.PhosphoQueueHandler", "handlers": ["phospho"]}
        if shape == "native-listener":
            front["listener"] = "phospho_logging.PhosphoQueueListener"
        if queue is not None:
            front["queue"] = dict(queue)
        handlers = {"phospho_async": front, "phospho": {"()": "phospho_logging.PhosphoHandler", **options}}
        attached = "phospho_async"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": handlers,
        "loggers": {LOGGER: {"level": "INFO", "handlers": [attached], "propagate": False}},
    }


def attached() -> List[logging.Handler]:
    """The handlers dictConfig attached to ``LOGGER``."""
    return list(logging.getLogger(LOGGER).handlers)


def teardown(handlers: List[logging.Handler]) -> None:
    """Detach everything from ``LOGGER``, stop (drain) listeners, close the handlers."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    for handler in handlers:
        listener = getattr(handler, "listener", None)
        if listener is not None and getattr(listener, "_thread", None) is not None:
            listener.stop()
        for inner in getattr(listener, "handlers", ()):
            inner.close()
        handler.close()


def flush(handler: logging.Handler, timeout: float = 30) -> bool:
    """Flush a PhosphoHandler, or the PhosphoQueueListener behind a queue handler.

    A stdlib ``QueueListener`` cannot be flushed without stopping it: only the server
    can tell then (``assert_delivered_once``), so this returns True.
    """
    listener = getattr(handler, "listener", None)
    if isinstance(listener, PhosphoQueueListener):
        return listener.flush(timeout)
    if listener is not None:
        return True
    assert isinstance(handler, PhosphoHandler), handler
    return handler.flush(timeout)


def assert_delivered_once(
    server: PhosphoTestServer, inputs: List[str], timeout: float = 30, context: Optional[List[logging.Handler]] = None
) -> None:
    """Every input arrived on the server, exactly once, and nothing else did."""
    if not server.wait_for_tasks(len(inputs), timeout=timeout):
        stats: List[Any] = [(h, getattr(h, "stats", dict)()) for h in context or []]
        raise AssertionError(f"{len(server.tasks)} of {len(inputs)} tasks arrived; handlers: {stats}")
    got = sorted(t["input"] for t in server.tasks)
    assert got == sorted(inputs), (len(got), len(inputs), sorted(set(inputs) - set(got))[:10])
    assert server.duplicates == 0


@pytest.fixture
def server_creds(server: PhosphoTestServer, monkeypatch: pytest.MonkeyPatch) -> PhosphoTestServer:
    """The loopback server's credentials in PHOSPHO_* variables, so no config holds them."""
    for name, value in server_env(server).items():
        monkeypatch.setenv(name, value)
    return server


@pytest.fixture
def configured() -> Iterator[List[logging.Handler]]:
    """Collects the handlers a test configured; tears them all down afterwards."""
    handlers: List[logging.Handler] = []
    try:
        yield handlers
    finally:
        teardown(handlers)


def dict_config(config: Dict[str, Any], handlers: List[logging.Handler]) -> logging.Logger:
    """Run dictConfig and remember what it attached, for teardown."""
    logging.config.dictConfig(config)
    handlers.extend(attached())
    return logging.getLogger(LOGGER)


PORTABLE_YAML = f"""
version: 1
disable_existing_loggers: false
handlers:
  phospho:
    class: phospho_logging.PhosphoHandler
    max_batch_size: "2"          # strings are converted, as from an ini file
    flush_interval: 0.05
    max_queue_size: 1000
    timeout: "5"
loggers:
  {LOGGER}:
    level: INFO
    handlers: [phospho]
    propagate: false
"""


class TestPortableShape:
    """``{"class": "phospho_logging.PhosphoHandler", ...}``: every Python 3.9-3.13."""

    @pytest.mark.parametrize("source", ["dict", "json", "yaml"])
    def test_tasks_arrive_with_credentials_from_the_environment(
        self, server_creds: PhosphoTestServer, configured: List[logging.Handler], tmp_path: Path, source: str
    ) -> None:
        """A config from a dict, a JSON or a YAML file sends tasks, options given as strings."""
        config = yaml.safe_load(PORTABLE_YAML)
        if source == "json":
            path = tmp_path / "logging.json"
            path.write_text(json.dumps(config, indent=2))
            with path.open() as f:
                config = json.load(f)
        elif source == "yaml":
            path = tmp_path / "logging.yaml"
            path.write_text(PORTABLE_YAML)
            with path.open() as f:
                config = yaml.safe_load(f)
        log = dict_config(config, configured)
        (handler,) = configured
        assert isinstance(handler, PhosphoHandler)
        assert (handler.options.max_batch_size, handler.options.timeout) == (2, 5.0)
        assert handler.options.online
        inputs = [f"{source}-{i}" for i in range(5)]
        for text in inputs:
            log.info("answered", extra={"input": text, "output": "ok"})
        log.info("not a task")
        assert flush(handler)
        assert_delivered_once(server_creds, inputs)
        assert all(r.n_events <= 2 for r in server_creds.requests)
        assert server_creds.tasks[0]["metadata"]["log_logger"] == LOGGER

    def test_values_from_ext_references(
        self, server: PhosphoTestServer, configured: List[logging.Handler], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``ext://`` pulls credentials and an input_to_str function from a settings module."""
        settings = types.ModuleType("phospho_test_settings")
        settings.API_KEY = server.api_key  # type: ignore[attr-defined]
        settings.PROJECT_ID = server.project_id  # type: ignore[attr-defined]
        settings.BASE_URL = server.url  # type: ignore[attr-defined]
        settings.shout = lambda value: str(value).upper()  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "phospho_test_settings", settings)
        log = dict_config(
            make_config(
                "portable",
                api_key="ext://phospho_test_settings.API_KEY",
                project_id="ext://phospho_test_settings.PROJECT_ID",
                base_url="ext://phospho_test_settings.BASE_URL",
                input_to_str="ext://phospho_test_settings.shout",
                flush_interval=0.05,
            ),
            configured,
        )
        log.info("answered", extra={"input": "quiet please", "output": "ok"})
        assert flush(configured[0])
        assert [t["input"] for t in server.tasks] == ["QUIET PLEASE"]

    def test_logging_call_returns_while_the_worker_is_stuck(
        self, server_creds: PhosphoTestServer, configured: List[logging.Handler]
    ) -> None:
        """With the backend hanging, logging a task returns at once: the worker waits, not the app."""
        server = server_creds
        server.hang_next(1)
        log = dict_config(
            make_config("portable", flush_interval="0.01", timeout="2", shutdown_timeout="5"), configured
        )
        log.info("first", extra={"input": "q1"})
        assert server.wait_for_requests(1, timeout=10)  # the worker is inside the hung request
        log.info("second", extra={"input": "q2"})  # returns although the request is unanswered
        assert [r.status for r in server.requests] == [None]
        assert server.tasks == []
        # The hung request times out (2 s) and the retry delivers both.
        assert flush(configured[0])
        assert_delivered_once(server, ["q1", "q2"])


class TestNativeQueueShape:
    """3.12+: ``{"class": "phospho_logging.PhosphoQueueHandler", "handlers": [...], ...}``."""

    @needs_native
    @pytest.mark.parametrize("queue", [None, BOUNDED_QUEUE], ids=["default-queue", "queue-dict"])
    @pytest.mark.parametrize(
        "listener", [None, "phospho_logging.PhosphoQueueListener"], ids=["stdlib-listener", "phospho-listener"]
    )
    def test_tasks_arrive_without_starting_the_listener(
        self,
        server_creds: PhosphoTestServer,
        configured: List[logging.Handler],
        queue: Optional[Dict[str, Any]],
        listener: Optional[str],
    ) -> None:
        """dictConfig builds but never starts the listener: none needs starting. The
        stdlib default listener is replaced by ours (same queue, same handlers), and the
        handler hands its tasks to the engine without a thread reading the queue."""
        shape = "native" if listener is None else "native-listener"
        log = dict_config(make_config(shape, queue=queue, flush_interval="0.05", max_batch_size=3), configured)
        (handler,) = configured
        assert isinstance(handler, PhosphoQueueHandler)
        built = handler.listener
        assert isinstance(built, PhosphoQueueListener)
        if queue is not None:
            assert handler.queue.maxsize == 1000  # type: ignore[attr-defined]
        inputs = [f"native-{i}" for i in range(7)]
        for text in inputs:
            log.info("answered", extra={"input": text, "output": "ok"})
        assert_delivered_once(server_creds, inputs)
        assert getattr(built, "_thread", None) is None  # nobody called listener.start(), nothing needed it
        assert built.flush(10)
        assert built.stats()["sent"] == len(inputs)

    @needs_native
    def test_the_queue_bound_applies(self, server_creds: PhosphoTestServer,
                                     configured: List[logging.Handler]) -> None:
        """A bounded ``queue`` given to dictConfig bounds the tasks waiting to be sent."""
        server_creds.hang_next(1)
        log = dict_config(make_config("native", queue={"()": "queue.Queue", "maxsize": 5}, max_batch_size=1,
                                      flush_interval="0.01", timeout="2"), configured)
        log.info("t", extra={"input": "first"})
        assert server_creds.wait_for_requests(1, timeout=10)  # the worker is stuck in that request
        for i in range(20):
            log.info("t", extra={"input": f"q{i}"})
        stats = configured[0].stats()  # type: ignore[attr-defined]
        assert stats["dropped_by_reason"]["queue_full"] == 15


EXIT_SCRIPT = """
    import json, logging, logging.config, sys
    logging.config.dictConfig(json.loads(sys.argv[1]))
    log = logging.getLogger(sys.argv[2])
    for i in range(int(sys.argv[3])):
        log.info("t", extra={"input": f"q{i}", "output": "a"})
    print("logged", flush=True)
"""


class TestExit:
    """A script that configures with dictConfig, logs, and simply ends."""

    @pytest.mark.parametrize("shape", EXIT_SHAPES)
    def test_exit_delivers_every_task_once(self, server: PhosphoTestServer, shape: str) -> None:
        """No flush, no shutdown: interpreter exit drains the listener and the worker."""
        n = 300
        # flush_interval=60: nothing would go before exit on its own.
        config = make_config(shape, queue=BOUNDED_QUEUE if shape == "native" else None, flush_interval="60")
        args = [sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), json.dumps(config), LOGGER, str(n)]
        proc = subprocess.Popen(args, env=child_env(server_env(server)), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "logged" in out
        assert_delivered_once(server, [f"q{i}" for i in range(n)], timeout=5)


class _Sink(logging.Handler):
    """Counts the records it sees (closing it, as dictConfig does, does not stop it)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(record.name)


class TestReconfigure:
    """A second dictConfig while threads log: nothing lost, nothing twice, no deadlock."""

    THREADS = 4
    BEFORE = 500  # each thread logs this many before the second dictConfig...
    AFTER = 500  # ...and this many after it returned
    LIMIT = 20_000  # per thread, whatever happens

    @pytest.mark.parametrize("urllib3_debug", [False, True], ids=["quiet", "urllib3-debug"])
    @pytest.mark.parametrize("shape", SHAPES)
    def test_reconfigure_under_load(
        self, server_creds: PhosphoTestServer, configured: List[logging.Handler], shape: str, urllib3_debug: bool
    ) -> None:
        """Every input logged around a second dictConfig arrives exactly once, all joins bounded."""
        server = server_creds
        root, urllib3_logger = logging.getLogger(), logging.getLogger("urllib3")
        sink, urllib3_level = _Sink(), urllib3_logger.level
        if urllib3_debug:
            # The worker logs each request through urllib3: with the cache dictConfig
            # clears, that takes logging's module lock, which dictConfig holds.
            root.addHandler(sink)
            urllib3_logger.setLevel(logging.DEBUG)
        logged: List[List[str]] = [[] for _ in range(self.THREADS)]
        ready = [threading.Event() for _ in range(self.THREADS)]
        reconfigured = threading.Event()
        failures: List[BaseException] = []
        # The threads log faster than one loopback server takes tasks: the queues must hold
        # all of them (LIMIT per thread at most), or queue_full drops would blur the check.
        # The queue handler's queue is bounded by its own maxsize, not by the PhosphoHandler's
        # max_queue_size, when the stdlib listener is in between.
        bound = self.THREADS * self.LIMIT
        options: Dict[str, Any] = {"flush_interval": "0.05", "max_queue_size": str(bound)}
        if shape != "portable":
            options["queue"] = {"()": "queue.Queue", "maxsize": bound}

        def work(k: int) -> None:
            log, mine, after = logging.getLogger(LOGGER), logged[k], 0
            try:
                for i in range(self.LIMIT):
                    text = f"t{k}-{i}"
                    log.info("r", extra={"input": text})
                    mine.append(text)
                    if i + 1 == self.BEFORE:
                        ready[k].set()
                    if reconfigured.is_set():
                        after += 1
                        if after >= self.AFTER:
                            return
            except BaseException as exc:  # surfaced by the test thread
                failures.append(exc)
            finally:
                ready[k].set()

        def reconfigure() -> None:
            try:
                dict_config(make_config(shape, max_batch_size="50", **options), configured)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(self.THREADS)]
        try:
            log = dict_config(make_config(shape, **options), configured)
            # One task through first: the worker is running and has imported requests (which
            # the GIL-starved import would otherwise delay past the whole test).
            log.info("warm-up", extra={"input": "warm-up"})
            assert server.wait_for_tasks(1, timeout=30)
            for thread in threads:
                thread.start()
            assert all(event.wait(30) for event in ready)
            # In a thread of its own so that a deadlock fails the test instead of hanging it.
            second = threading.Thread(target=reconfigure, daemon=True)
            second.start()
            second.join(30)
            assert not second.is_alive(), "the second dictConfig deadlocked"
        finally:
            reconfigured.set()
            for thread in threads:
                thread.join(60)
            root.removeHandler(sink)
            urllib3_logger.setLevel(urllib3_level)
        assert not any(thread.is_alive() for thread in threads), "a logging thread is stuck"
        assert not failures, failures
        assert all(len(mine) >= self.BEFORE + self.AFTER for mine in logged)
        assert flush(configured[-1])
        inputs = ["warm-up"] + [text for mine in logged for text in mine]
        assert_delivered_once(server, inputs, context=configured)
        if urllib3_debug:
            assert "urllib3.connectionpool" in sink.names  # the worker did log meanwhile

    @pytest.mark.parametrize("shape", RECONFIGURE_SHAPES)
    def test_reconfigure_right_after_the_first_tasks(
        self, server_creds: PhosphoTestServer, configured: List[logging.Handler], shape: str
    ) -> None:
        """Tasks logged just before a second dictConfig arrive, even if no worker had started yet."""
        log = dict_config(make_config(shape, flush_interval="0.05"), configured)
        early = [f"early-{i}" for i in range(10)]
        for text in early:
            log.info("t", extra={"input": text})
        dict_config(make_config(shape, flush_interval="0.05"), configured)
        log.info("t", extra={"input": "late"})
        assert flush(configured[-1])
        assert_delivered_once(server_creds, early + ["late"], timeout=5, context=configured)


def uncomment_native_alternative(yaml_text: str) -> str:
    """The example YAML with its commented 3.12+ queue-handler block switched on."""
    lines, out, inside = yaml_text.splitlines(), [], False
    for line in lines:
        if line.startswith("  # phospho_queue:"):
            inside = True
        elif inside and not line.startswith("  #   "):
            inside = False
        if inside:
            line = "  " + line[4:]
        if line.strip().startswith("handlers: [phospho]") and "[phospho_queue]" in line:
            line = line.split("handlers:")[0] + "handlers: [phospho_queue]"
        out.append(line)
    return "\n".join(out) + "\n"


class TestExample:
    """``examples/dictconfig.py`` with ``examples/logging.yaml`` (or ``.json``), offline."""

    def _run(self, tmp_path: Path, *args: str, pythonpath: Optional[Path] = None) -> subprocess.CompletedProcess[str]:
        env = child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path / "store")})
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath) + os.pathsep + env["PYTHONPATH"]
        return subprocess.run([sys.executable, str(EXAMPLES / "dictconfig.py"), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    def _stored_inputs(self, tmp_path: Path) -> List[str]:
        conn = sqlite3.connect(str(tmp_path / "store" / "tasks.sqlite3"))
        try:
            return sorted(json.loads(row[0])["input"] for row in conn.execute("SELECT event FROM tasks"))
        finally:
            conn.close()

    def test_example_runs_offline(self, tmp_path: Path) -> None:
        """The example loads the YAML, logs two tasks into the local store and says so."""
        result = self._run(tmp_path)
        assert result.returncode == 0, result.stderr
        assert "logging.yaml" in result.stdout
        assert "sent 2 of 2 task(s) to the local store" in result.stdout
        assert self._stored_inputs(tmp_path) == ["Capital of France?", "What is 2+2?"]

    def test_example_falls_back_to_json_without_pyyaml(self, tmp_path: Path) -> None:
        """Without PyYAML, the example loads logging.json instead, with the same result."""
        blocker = tmp_path / "blocker"
        blocker.mkdir()
        (blocker / "yaml.py").write_text("raise ImportError('PyYAML hidden by the test')\n")
        result = self._run(tmp_path, pythonpath=blocker)
        assert result.returncode == 0, result.stderr
        assert "logging.json" in result.stdout
        assert self._stored_inputs(tmp_path) == ["Capital of France?", "What is 2+2?"]

    def test_json_matches_yaml(self) -> None:
        """logging.json is the YAML's configuration, for installs without PyYAML."""
        with (EXAMPLES / "logging.yaml").open() as f:
            from_yaml = yaml.safe_load(f)
        with (EXAMPLES / "logging.json").open() as f:
            assert json.load(f) == from_yaml

    @needs_native
    def test_native_alternative_in_the_example_works(self, tmp_path: Path) -> None:
        """The YAML's commented 3.12+ queue-handler alternative, switched on, works as documented."""
        text = uncomment_native_alternative((EXAMPLES / "logging.yaml").read_text())
        config = yaml.safe_load(text)
        assert config["handlers"]["phospho_queue"]["class"] == "phospho_logging.PhosphoQueueHandler"
        assert config["loggers"]["phospho"]["handlers"] == ["phospho_queue"]
        path = tmp_path / "native.yaml"
        path.write_text(text)
        result = self._run(tmp_path, str(path))
        assert result.returncode == 0, result.stderr
        assert "sent 2 of 2 task(s) to the local store" in result.stdout
        assert self._stored_inputs(tmp_path) == ["Capital of France?", "What is 2+2?"]
