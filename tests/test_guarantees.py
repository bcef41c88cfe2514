"""The engine's guarantees, each a named test (issue "One engine").

A test that runs into a hang fails: every child process runs under a timeout, every wait
in this process is bounded.
"""

from __future__ import annotations

import ast
import gc
import json
import logging
import logging.handlers
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phospho_logging
from phospho_logging import ExportResult
from phospho_logging.testing import InMemoryExporter, PhosphoTestServer

from .test_exit import child_env, server_env, stored_inputs

PACKAGE = Path(__file__).resolve().parent.parent / "phospho_logging"
log = logging.getLogger("phospho")


def balanced(stats: Dict[str, Any]) -> bool:
    """Settled: nothing left in hand or queued, and the books balance (a task counted
    twice would make ``queued`` negative, one never settled would leave it above 0)."""
    return stats["queued"] == 0 and (
        stats["enqueued"] == stats["sent"] + stats["rejected"] + stats["dropped"] + stats["queued"] + stats["spooled"]
    )


def run_child(code: str, env: Dict[str, str], timeout: float = 90, args: List[str] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; a hang fails the test (TimeoutExpired)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=child_env(env),
                          capture_output=True, text=True, timeout=timeout)


def time_exit(code: str, env: Dict[str, str]) -> Tuple[float, int, str]:
    """Run ``code`` (which prints "exit now" when done with its work) and time its exit:
    (seconds from that line to the process gone, exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True, env=child_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "exit now"
        start = time.monotonic()
        _, err = proc.communicate(timeout=60)
        return time.monotonic() - start, proc.returncode, err
    finally:
        proc.kill()


SETUP = """
    import json, logging, logging.config, os, sys, phospho_logging
    mode = sys.argv[1]
    options = json.loads(os.environ.get("CHILD_OPTIONS", "{}"))
    if mode == "configure":
        phospho_logging.configure(**options)
    else:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
            "handlers": {"p": {"class": "phospho_logging.PhosphoHandler", **options}},
            "loggers": {"phospho": {"level": "INFO", "handlers": ["p"]}}})
    log = logging.getLogger("phospho")
"""
MODES = ["configure", "dictconfig"]


class TestNeverDeadlocks:
    """A logging call never deadlocks and never raises, whatever calls it."""

    SIGNAL_CHILD = SETUP + """
    import signal
    fired = [0]

    def on_alarm(signum, frame):
        fired[0] += 1
        log.info("from the handler", extra={"input": f"alarm-{fired[0]}"})

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    n = int(os.environ["CHILD_N"])
    for i in range(n):
        log.info("main", extra={"input": f"main-{i}"})
    signal.setitimer(signal.ITIMER_REAL, 0)
    flushed = phospho_logging.flush(timeout=60)
    print(json.dumps({"fired": fired[0], "flushed": flushed, "stats": phospho_logging.stats()}), flush=True)
    """

    @pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
    @pytest.mark.parametrize("mode", MODES)
    def test_signal_handler_that_logs(self, tmp_path: Path, mode: str) -> None:
        """SIGALRM every 1 ms, its handler logging a task, while the main thread logs:
        the process finishes and every task of both is stored."""
        result = run_child(self.SIGNAL_CHILD, {"PHOSPHO_LOCAL_DIR": str(tmp_path), "CHILD_N": "30000"}, args=[mode])
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["fired"] > 0 and report["flushed"] is True
        inputs = stored_inputs(tmp_path)
        assert len(inputs) == len(set(inputs)) == 30000 + report["fired"]

    @pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
    @pytest.mark.parametrize("mode", MODES)
    def test_signal_handler_that_logs_into_a_full_queue(self, tmp_path: Path, mode: str) -> None:
        """The same with a queue that is full most of the time (the first drop is reported
        from the handler too): no hang, and every task is stored or counted as dropped."""
        env = {"PHOSPHO_LOCAL_DIR": str(tmp_path), "CHILD_N": "30000",
               "CHILD_OPTIONS": json.dumps({"max_queue_size": 50})}
        result = run_child(self.SIGNAL_CHILD, env, args=[mode])
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        stats = report["stats"]
        assert stats["dropped_by_reason"].get("queue_full", 0) > 0 and "task queue is full" in result.stderr
        assert len(stored_inputs(tmp_path)) + stats["dropped"] == 30000 + report["fired"] == stats["enqueued"]

    @pytest.mark.parametrize("mode", MODES)
    def test_sigterm_handler_that_logs_and_exits(self, tmp_path: Path, mode: str) -> None:
        """The everyday form: a SIGTERM handler logs a task and exits; the process ends on
        time and the handler's task is stored with the others."""
        code = textwrap.dedent(SETUP) + textwrap.dedent("""
        import signal

        def on_term(signum, frame):
            log.info("stopping", extra={"input": "sigterm"})
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        i = 0
        while True:
            log.info("main", extra={"input": f"main-{i}"})
            i += 1
        """)
        proc = subprocess.Popen([sys.executable, "-c", code, mode], text=True,
                                env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(0.3)  # let it log for a while (not a wait for a thread)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "sigterm" in stored_inputs(tmp_path)

    def test_del_that_logs_at_interpreter_teardown(self, tmp_path: Path) -> None:
        """A ``__del__`` that logs while the interpreter tears down: the process exits, and
        the late task is counted and said once (no thread is started that could never run)."""
        code = """
        import logging, phospho_logging

        class Late:
            log = logging.getLogger("phospho")

            def __del__(self):
                self.log.info("bye", extra={"input": "from __del__"})

        phospho_logging.configure()
        logging.getLogger("phospho").info("t", extra={"input": "normal"})
        keep = [Late() for _ in range(3)]  # freed when the module is torn down, after atexit
        """
        result = run_child(code, {"PHOSPHO_LOCAL_DIR": str(tmp_path)}, timeout=30)
        assert result.returncode == 0, result.stderr
        assert stored_inputs(tmp_path) == ["normal"]
        assert result.stderr.count("logged after the exit drain") == 1

    def test_atexit_hooks_that_log(self, tmp_path: Path) -> None:
        """atexit hooks that log: one registered after configure() runs before the exit
        drain (its task is stored); one registered before it runs after (counted, said once)."""
        code = """
        import atexit, logging, phospho_logging
        log = logging.getLogger("phospho")
        atexit.register(lambda: log.info("t", extra={"input": "after the drain"}))
        phospho_logging.configure()
        atexit.register(lambda: log.info("t", extra={"input": "before the drain"}))
        """
        result = run_child(code, {"PHOSPHO_LOCAL_DIR": str(tmp_path)}, timeout=30)
        assert result.returncode == 0, result.stderr
        assert stored_inputs(tmp_path) == ["before the drain"]
        assert result.stderr.count("logged after the exit drain") == 1

    def test_finalizers_run_by_the_collector_on_the_worker_are_delivered(self) -> None:
        """Tasks logged by finalizers the garbage collector runs on the worker thread (even
        inside its own I/O) are not the library's own: every one is delivered."""
        exporter = InMemoryExporter()
        pipeline = phospho_logging.configure(exporter=exporter, max_batch_size=50)
        threads: set = set()

        class Cyclic:
            def __init__(self) -> None:
                self.me = self

            def __del__(self) -> None:
                threads.add(threading.current_thread().name)
                log.info("fin", extra={"input": "finalizer"})

        old = gc.get_threshold()
        gc.set_threshold(50, 5, 5)
        try:
            for i in range(20_000):
                Cyclic()
                log.info("t", extra={"input": f"t{i}"})
            # A collection on the worker may still be running its finalizers: collect and
            # flush until every one has logged (bounded).
            deadline = time.monotonic() + 60
            while len(exporter.events) < 40_000 and time.monotonic() < deadline:
                gc.collect()
                assert pipeline.flush(timeout=60)
        finally:
            gc.set_threshold(*old)
        inputs = [e["input"] for e in exporter.events]
        assert inputs.count("finalizer") == 20_000 and len(inputs) == 40_000
        assert any(name != threading.current_thread().name for name in threads)  # some ran on the worker
        assert balanced(pipeline.stats()) and pipeline.stats()["ignored_own_io"] == 0

    @pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
    def test_signal_handler_that_flushes_while_the_app_reads_stats(self) -> None:
        """A signal handler flushes while the interrupted thread was reading stats() (a
        metrics loop): stats() holds nothing the worker needs, so no flush stalls."""
        code = """
            import json, logging, signal, time, phospho_logging
            from phospho_logging.testing import InMemoryExporter
            phospho_logging.configure(exporter=InMemoryExporter())
            results = []

            def on_alarm(signum, frame):
                results.append(phospho_logging.flush(timeout=5))
                signal.setitimer(signal.ITIMER_REAL, 0.01)

            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            log = logging.getLogger("phospho")
            i = 0
            while len(results) < 50:
                log.info("m", extra={"input": f"q{i}"})
                phospho_logging.stats()
                i += 1
            signal.setitimer(signal.ITIMER_REAL, 0)
            print(json.dumps(results))
        """
        result = run_child(code, {}, timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [True] * 50

    def test_flush_and_shutdown_from_the_exporter_return_at_once(self, diag: List[str]) -> None:
        """flush() or shutdown() on the worker's own thread (an exporter, or a finalizer
        the collector runs there) cannot wait for itself: it returns False at once, said
        once; the batch is delivered."""
        answers: List[Tuple[bool, bool]] = []

        class Flushing(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> ExportResult:
                if not answers:
                    answers.append((phospho_logging.flush(timeout=30), handler.engine.shutdown(timeout=30)))
                return super().export(events, timeout)

        exporter = Flushing()
        handler = phospho_logging.PhosphoHandler(exporter=exporter)
        lg = logging.getLogger("phospho.selfflush")
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        try:
            lg.info("t", extra={"input": "q"})
            deadline = time.monotonic() + 20
            while not exporter.events and time.monotonic() < deadline:
                threading.Event().wait(0.01)  # bounded polling on what the exporter got
            assert answers == [(False, False)] and [e["input"] for e in exporter.events] == ["q"]
            deadline = time.monotonic() + 10
            while not any("worker's own thread" in m for m in diag) and time.monotonic() < deadline:
                threading.Event().wait(0.01)  # said from the control thread: bounded polling
            assert any("worker's own thread" in m for m in diag)
        finally:
            lg.removeHandler(handler)
            handler.close()

    def test_every_kind_of_finalizer_during_an_export_is_shipped(self) -> None:
        """A collection that runs during an export (here forced by the exporter; in an app,
        any allocation there) runs a ``__del__``, a weakref callback and an abandoned
        generator's ``finally:``: each one's task is the application's, and shipped."""
        import weakref

        lg = logging.getLogger("phospho")

        class Collecting(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> ExportResult:
                gc.collect()
                return super().export(events, timeout)

        class WithDel:
            def __init__(self) -> None:
                self.me = self

            def __del__(self) -> None:
                lg.info("t", extra={"input": "from __del__"})

        class Plain:
            def __init__(self) -> None:
                self.me = self

        def on_collect(ref: Any) -> None:
            lg.info("t", extra={"input": "from a weakref callback"})

        def stream() -> Any:
            try:
                yield "chunk"
                yield "chunk"
            finally:
                lg.info("t", extra={"input": "from a generator's finally"})

        class Holder:
            def __init__(self) -> None:
                self.me = self
                self.stream = stream()
                next(self.stream)

        exporter = Collecting()
        pipeline = phospho_logging.configure(exporter=exporter)
        gc.disable()  # the cycles wait for the exporter's collection
        try:
            WithDel()
            plain = Plain()
            ref = weakref.ref(plain, on_collect)
            del plain
            Holder()
            log.info("t", extra={"input": "trigger"})
            assert pipeline.flush(timeout=10)  # the export of "trigger" collected them
            assert pipeline.flush(timeout=10)  # their tasks, logged meanwhile
        finally:
            gc.enable()
        assert ref() is None
        assert sorted(e["input"] for e in exporter.events) == sorted([
            "trigger", "from __del__", "from a weakref callback", "from a generator's finally"])
        assert pipeline.stats()["ignored_own_io"] == 0 and balanced(pipeline.stats())

    def test_the_garbage_collector_callback_runs_no_python_code(self) -> None:
        """The library's ``gc.callbacks`` hook (it tells a finalizer's record from our own
        I/O's) is a builtin: no signal handler can run inside it and have its exception (a
        SIGTERM handler's ``sys.exit()``, a Ctrl-C) swallowed by the collector."""
        import types

        ours = [cb for cb in gc.callbacks if getattr(cb, "__self__", None).__class__.__module__ == "collections"]
        assert len(ours) == 1 and all(isinstance(cb, types.BuiltinMethodType) for cb in gc.callbacks if cb in ours)
        assert not any(isinstance(cb, types.FunctionType) and "phospho_logging" in cb.__module__ for cb in gc.callbacks)

    def test_records_made_by_our_own_io_are_ignored_and_counted(self) -> None:
        """A task logged from inside an export (an exporter of the user's that logs) is not
        shipped, so it cannot loop; it is counted apart and said once."""

        class Chatty(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> ExportResult:
                log.info("exporting", extra={"input": "from inside the export"})
                return super().export(events, timeout)

        exporter = Chatty()
        pipeline = phospho_logging.configure(exporter=exporter)
        for i in range(3):
            log.info("t", extra={"input": f"t{i}"})
            assert pipeline.flush(timeout=10)
        stats = pipeline.stats()
        assert [e["input"] for e in exporter.events] == ["t0", "t1", "t2"]
        assert stats["ignored_own_io"] == 3 and balanced(stats) and stats["enqueued"] == 3

    def test_threads_log_while_engines_come_and_go(self) -> None:
        """Many threads logging while engines are made, flushed and shut down: no call
        raises or blocks for long."""
        exporter = InMemoryExporter()
        stop = threading.Event()
        errors: List[BaseException] = []
        slowest = [0.0]

        def work(k: int) -> None:
            i = 0
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    log.info("t", extra={"input": f"{k}-{i}"})
                except BaseException as exc:  # noqa: BLE001 - surfaced below
                    errors.append(exc)
                slowest[0] = max(slowest[0], time.perf_counter() - start)
                i += 1

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        try:
            for _ in range(5):
                pipeline = phospho_logging.configure(exporter=exporter)
                pipeline.flush(timeout=5)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not errors and not any(t.is_alive() for t in threads)
        assert slowest[0] < 5.0
        assert phospho_logging.flush(timeout=30)


class TestExitOnTime:
    """Exit ends within shutdown_timeout + 1 s whatever other threads keep logging."""

    DAEMON_CHILD = """
    import json, logging, os, sys, threading, time, phospho_logging
    phospho_logging.configure(shutdown_timeout=2)
    log = logging.getLogger("phospho")

    def forever():
        i = 0
        while True:
            log.info("t", extra={"input": f"daemon-{i}"})
            i += 1

    for i in range(1000):
        log.info("t", extra={"input": f"main-{i}"})
    threading.Thread(target=forever, daemon=True).start()
    time.sleep(0.2)  # the daemon thread logs meanwhile (not a wait for it)
    print("exit now", flush=True)
    """

    def _exit(self, env: Dict[str, str]) -> Tuple[float, int, str]:
        return time_exit(self.DAEMON_CHILD, env)

    def test_daemon_thread_logging_at_exit_offline(self, tmp_path: Path) -> None:
        """Offline: exit on time; the tasks logged first are stored; later ones are stored
        if there is time, else counted and said once."""
        seconds, code, err = self._exit({"PHOSPHO_LOCAL_DIR": str(tmp_path)})
        assert code == 0, err
        assert seconds < 2 + 1.0, seconds
        inputs = stored_inputs(tmp_path)
        assert {f"main-{i}" for i in range(1000)} <= set(inputs)
        assert len(inputs) == len(set(inputs))
        # What could not be kept in time is counted and said once (the daemon thread may not
        # run again after the exit drain: then it logged nothing later to speak of).
        assert err.count("logged after the exit drain") <= 1 and err.count("could not be delivered or kept") <= 1

    @pytest.mark.parametrize("fault", ["ok", "hang", "refused"])
    def test_daemon_thread_logging_at_exit_online(self, tmp_path: Path, fault: str) -> None:
        """Online, with the backend up, hung or gone: exit on time, and every task logged
        before exit began is delivered or in the spool."""
        with PhosphoTestServer() as server:
            if fault == "hang":
                server.hang_next(10**6)
            env = dict(server_env(server), PHOSPHO_LOCAL_DIR=str(tmp_path))
            if fault == "refused":
                server.stop()
            seconds, code, err = self._exit(env)
            delivered = {t["input"] for t in server.tasks}
        assert code == 0, err
        assert seconds < 2 + 1.0, seconds
        spooled = set(stored_inputs(tmp_path, "outbox"))
        assert {f"main-{i}" for i in range(1000)} <= delivered | spooled

    def test_exit_drain_honours_max_batch_bytes(self, tmp_path: Path) -> None:
        """Tasks drained at exit (no flush before it) go out within max_batch_bytes."""
        with PhosphoTestServer() as server:
            code = """
            import logging, phospho_logging
            phospho_logging.configure(max_batch_bytes=10_000, flush_interval=60)
            for i in range(100):
                logging.getLogger("phospho").info("t", extra={"input": f"{i}-" + "x" * 1000})
            """
            result = run_child(code, dict(server_env(server), PHOSPHO_LOCAL_DIR=str(tmp_path)), timeout=30)
            assert result.returncode == 0, result.stderr
            assert len(server.tasks) == 100
            assert max(r.body_bytes for r in server.requests) <= 10_000


    def test_shutdown_timeout_bounds_the_rescue_of_a_backlog(self, server: PhosphoTestServer, tmp_path: Path) -> None:
        """shutdown(timeout=1) with the backend hung and a large backlog returns on time:
        what it could not keep stays counted as queued (delivered later), said once."""
        server.hang_next(10**6)
        pipeline = phospho_logging.configure(api_key=server.api_key, project_id=server.project_id,
                                             base_url=server.url, local_dir=str(tmp_path))
        for i in range(100_000):
            log.info("t", extra={"input": f"q{i}", "output": "a" * 200})
        started = time.monotonic()
        pipeline.shutdown(timeout=1)
        seconds = time.monotonic() - started
        stats = pipeline.stats()
        assert seconds < 1 + 0.5, seconds
        assert stats["spooled"] > 0
        assert stats["enqueued"] == 100_000 == (stats["sent"] + stats["rejected"] + stats["dropped"]
                                                + stats["queued"] + stats["spooled"])

    def test_exit_keeps_a_backlog_when_the_backend_hangs(self, tmp_path: Path) -> None:
        """At exit the backend never answers: the worker is seen stuck early, and the
        backlog is kept in the spool within shutdown_timeout, none of it lost."""
        with PhosphoTestServer() as server:
            server.hang_next(10**6)
            code = """
                import logging, phospho_logging
                phospho_logging.configure(shutdown_timeout=2)
                for i in range(20_000):
                    logging.getLogger("phospho").info("t", extra={"input": f"q{i}"})
                print("exit now", flush=True)
            """
            seconds, code_, err = time_exit(code, dict(server_env(server), PHOSPHO_LOCAL_DIR=str(tmp_path)))
        assert code_ == 0, err
        assert seconds < 2 + 1.0, seconds
        spooled = set(stored_inputs(tmp_path, "outbox"))
        assert spooled == {f"q{i}" for i in range(20_000)} and "could not be delivered or kept" not in err

    def test_exit_report_tallies_every_loss(self, tmp_path: Path) -> None:
        """Losses are said rate-limited while the app runs; at exit one line gives the
        whole tally, by reason."""
        (tmp_path / "tasks.sqlite3").mkdir()  # the spool cannot be written
        with PhosphoTestServer() as server:
            env = dict(server_env(server), PHOSPHO_LOCAL_DIR=str(tmp_path))
            server.stop()  # refused: every batch goes to the spool, which fails
            code = """
                import logging, phospho_logging
                phospho_logging.configure(max_batch_size=100, max_attempts=1, shutdown_timeout=2)
                for i in range(500):
                    logging.getLogger("phospho").info("t", extra={"input": f"q{i}"})
                phospho_logging.flush(timeout=20)
            """
            result = run_child(code, env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "500 task(s) of this run could not be delivered or kept (500 spool_error" in result.stderr


    def test_exit_keeps_what_an_earlier_shutdown_left(self, tmp_path: Path) -> None:
        """A shutdown() that ran out of time (here timeout=0, with the worker stuck in a
        request) leaves tasks queued; exit gets a deadline of its own and keeps them."""
        with PhosphoTestServer() as server:
            server.hang_next(10**6)
            code = """
                import logging, phospho_logging
                from phospho_logging.testing import PhosphoTestServer
                phospho_logging.configure(shutdown_timeout=2)
                for i in range(500):
                    logging.getLogger("phospho").info("t", extra={"input": f"q{i}"})
                import os, time
                deadline = time.monotonic() + 20
                while phospho_logging.stats()["requests"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)  # bounded polling: until the worker is in its request
                phospho_logging.shutdown(timeout=0)
                print("exit now", flush=True)
            """
            seconds, code_, err = time_exit(code, dict(server_env(server), PHOSPHO_LOCAL_DIR=str(tmp_path)))
        assert code_ == 0, err
        assert seconds < 2 + 1.0, seconds
        spooled = set(stored_inputs(tmp_path, "outbox"))
        assert spooled == {f"q{i}" for i in range(500)}, err

    @pytest.mark.parametrize("how", ["sigint", "sigterm-handler-exits"])
    def test_an_interrupted_exit_keeps_the_queue(self, tmp_path: Path, how: str) -> None:
        """Ctrl-C (or a SIGTERM handler's sys.exit()) during the exit drain: what is queued
        is kept in the spool at once, and the interruption is said."""
        with PhosphoTestServer() as server:
            server.hang_next(10**6)
            code = """
                import atexit, logging, os, signal, sys, threading, phospho_logging
                if sys.argv[1] == "sigterm-handler-exits":
                    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
                sig = signal.SIGINT if sys.argv[1] == "sigint" else signal.SIGTERM
                phospho_logging.configure(shutdown_timeout=3)
                for i in range(500):
                    logging.getLogger("phospho").info("t", extra={"input": f"q{i}"})

                exiting = threading.Event()

                def interrupt():  # started now: Python 3.12+ refuses new threads at exit
                    exiting.wait()
                    threading.Event().wait(0.3)  # into the exit drain
                    # to the main thread, as a Ctrl-C or a `kill` from another process is delivered
                    signal.pthread_kill(threading.main_thread().ident, sig)

                threading.Thread(target=interrupt, daemon=True).start()
                atexit.register(exiting.set)  # runs first at exit (atexit is last in, first out)
            """
            result = run_child(code, dict(server_env(server), PHOSPHO_LOCAL_DIR=str(tmp_path)), timeout=60,
                               args=[how])
        spooled = set(stored_inputs(tmp_path, "outbox"))
        assert "the exit drain of an engine was interrupted" in result.stderr, result.stderr
        assert spooled == {f"q{i}" for i in range(500)}, result.stderr

    INTERRUPTED_BACKLOG = """
        import atexit, logging, os, signal, sys, threading, phospho_logging
        n, signals = int(sys.argv[1]), int(sys.argv[2])
        phospho_logging.configure(shutdown_timeout=10)
        for i in range(n):
            logging.getLogger("phospho").info("t", extra={"input": f"q{i}"})
        exiting = threading.Event()

        def interrupt():  # started now: Python 3.12+ refuses new threads at exit
            exiting.wait()
            for _ in range(signals):
                threading.Event().wait(0.2)  # into the exit drain (then into the rescue)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        atexit.register(exiting.set)
    """

    @pytest.mark.parametrize("signals", [1, 2])
    def test_an_interrupted_exit_with_a_backlog(self, tmp_path: Path, signals: int) -> None:
        """A backlog (20,000 tasks, backend hung) and a Ctrl-C during the exit drain: sending
        stops, and the backlog is kept in the spool within the exit deadline. A second
        Ctrl-C during that stops the keeping too: what is not in the spool is counted in
        the exit line, which says the drain was interrupted (not that time ran out)."""
        n = 20_000
        with PhosphoTestServer() as server:
            server.hang_next(10**6)
            result = run_child(self.INTERRUPTED_BACKLOG, dict(server_env(server), PHOSPHO_LOCAL_DIR=str(tmp_path)),
                               timeout=60, args=[str(n), str(signals)])
        spooled = set(stored_inputs(tmp_path, "outbox"))
        err = result.stderr
        assert "the exit drain of an engine was interrupted" in err, err
        assert "shutdown_timeout ran out" not in err, err
        if signals == 1 or len(spooled) == n:  # a second Ctrl-C may come after the keeping ended
            assert spooled == {f"q{i}" for i in range(n)}, err
        else:
            assert spooled <= {f"q{i}" for i in range(n)}
            match = re.search(r"(\d+) task\(s\) of this run could not be delivered or kept \(([^)]*)\); "
                              r"the exit drain was interrupted", err)
            assert match is not None, err
            assert int(match.group(1)) == n - len(spooled), err

    def test_flush_in_a_del_at_teardown_returns_at_once(self, tmp_path: Path) -> None:
        """Objects whose __del__ flushes, collected at interpreter teardown after the exit
        drain: each flush returns at once (nothing can be sent any more), so exit stays
        bounded however many there are."""
        code = """
            import logging, phospho_logging
            phospho_logging.configure(shutdown_timeout=1)

            class Client:
                def __del__(self):
                    logging.getLogger("phospho").info("t", extra={"input": "bye"})
                    phospho_logging.flush(timeout=5)

            clients = [Client() for _ in range(10)]
            print("exit now", flush=True)
        """
        seconds, code_, err = time_exit(code, {"PHOSPHO_LOCAL_DIR": str(tmp_path)})
        assert code_ == 0, err
        assert seconds < 1 + 1.0, seconds


class TestExtraKeys:
    """Every extra key the stdlib accepts works."""

    def test_non_string_and_empty_keys(self) -> None:
        """extra={1: ...} and extra={"": ...} become text metadata keys, listed as problems."""
        exporter = InMemoryExporter()
        pipeline = phospho_logging.configure(exporter=exporter)
        log.info("t", extra={"input": "q", 1: "one", "": "empty", (2, 3): "pair"})
        assert pipeline.flush(timeout=10)
        [event] = exporter.events
        metadata = event["metadata"]
        assert (metadata["1"], metadata["(empty key)"], metadata["(2, 3)"]) == ("one", "empty", "pair")
        assert {"key_coerced", "extra_key_empty"} <= set(metadata["phospho_logging_problems"])

    def test_a_str_subclass_key_that_is_empty(self) -> None:
        """A key of a str subclass, empty: named like an empty key, not a lost task."""
        class Key(str):
            pass

        exporter = InMemoryExporter()
        pipeline = phospho_logging.configure(exporter=exporter)
        log.info("t", extra={"input": "q", Key(""): "v"})
        assert pipeline.flush(timeout=10)
        [event] = exporter.events
        assert event["metadata"]["(empty key)"] == "v" and balanced(pipeline.stats())

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(st.one_of(st.text(max_size=4), st.integers(), st.none(), st.booleans(), st.floats(),
                                     st.tuples(st.integers())), st.one_of(st.text(max_size=5), st.integers()),
                           max_size=5))
    def test_any_keys_never_raise(self, extra: Dict[Any, Any]) -> None:
        """Whatever keys ``extra`` has (those logging accepts), the call does not raise and
        the task is captured."""
        from phospho_logging.testing import capture_tasks

        extra = {k: v for k, v in extra.items() if k not in ("message", "asctime") and not (
            isinstance(k, str) and k in logging.LogRecord("", 0, "", 0, "", (), None).__dict__)}
        extra["input"] = "q"
        with capture_tasks() as tasks:
            log.info("t", extra=extra)
        assert [t["input"] for t in tasks] == ["q"]


class TestWorkerSurvives:
    """The worker survives any exception from storage or the exporter; the books balance."""

    def test_exporter_that_raises_then_recovers(self) -> None:
        """Exceptions from the exporter are failed attempts: retried, then delivered."""
        exporter = InMemoryExporter([RuntimeError("boom"), OSError("disk"), ValueError("odd")])
        pipeline = phospho_logging.configure(exporter=exporter, max_attempts=5)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20)
        stats = pipeline.stats()
        assert [e["input"] for e in exporter.events] == ["q"] and stats["retries"] == 3 and balanced(stats)

    def test_a_failure_without_a_spool_says_why_it_is_dropped(self, diag: List[str]) -> None:
        """Your exporter without credentials has no spool: a failed task is dropped, counted,
        and the message says that keeping it needs the credentials."""
        exporter = InMemoryExporter([ExportResult.retry("nope", status=503)] * 10)
        pipeline = phospho_logging.configure(exporter=exporter, max_attempts=1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10) is False
        stats = pipeline.stats()
        assert sum(stats["dropped_by_reason"].values()) == 1 and balanced(stats)
        assert any("nope" in m and "no spool to keep them" in m and "PHOSPHO_API_KEY" in m for m in diag), diag

    def test_spooled_for_your_exporter_is_not_pushed(self, tmp_path: Path) -> None:
        """At exit, tasks your exporter could not take wait in the spool: the exit line says
        they are replayed through it on the next start (``push`` would send them to
        phospho's API instead, so it is not suggested)."""
        code = """
            import logging, phospho_logging
            from phospho_logging import ExportResult
            from phospho_logging.testing import InMemoryExporter
            exporter = InMemoryExporter([ExportResult.retry("down")] * 100)
            phospho_logging.configure(exporter=exporter, api_key="k", project_id="p", max_attempts=1)
            logging.getLogger("phospho").info("t", extra={"input": "q"})
        """
        result = run_child(code, {"PHOSPHO_LOCAL_DIR": str(tmp_path)}, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "replayed through your exporter on the next start" in result.stderr, result.stderr
        assert "phospho-logging push" not in result.stderr, result.stderr

    def test_exporter_that_always_raises(self, tmp_path: Path, diag: List[str]) -> None:
        """An exporter that always raises: each task spooled (with credentials) and counted,
        the worker goes on; later tasks are handled too."""
        exporter = InMemoryExporter([RuntimeError("boom")] * 100)
        pipeline = phospho_logging.configure(exporter=exporter, api_key="k", project_id="p",
                                             local_dir=str(tmp_path), max_attempts=2, max_batch_size=1)
        for i in range(4):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=30)
        stats = pipeline.stats()
        assert stats["spooled"] == 4 and stats["worker_alive"] and balanced(stats)
        assert any("the exporter raised RuntimeError: boom" in m for m in diag)

    def test_exporter_that_returns_nonsense(self) -> None:
        """An exporter that returns something else than an ExportResult: a failed attempt,
        without a spool dropped with a reason; flush says so."""
        class Odd(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> Any:
                return "fine"

        pipeline = phospho_logging.configure(exporter=Odd(), max_attempts=1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10) is False
        stats = pipeline.stats()
        assert stats["dropped"] == 1 and balanced(stats) and "ExportResult" in stats["last_error"]

    def test_exporter_that_raises_system_exit(self) -> None:
        """Even ``SystemExit`` from an exporter is a failed attempt: a flush waiting behind
        the batch returns, and the task is counted (``exporter_error``)."""
        pipeline = phospho_logging.configure(exporter=InMemoryExporter([SystemExit(1)]), max_attempts=1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10) is False
        stats = pipeline.stats()
        assert stats["dropped_by_reason"] == {"exporter_error": 1} and stats["worker_alive"] and balanced(stats)
        log.info("t", extra={"input": "next"})
        assert pipeline.flush(timeout=10) is True

    def test_exporter_gets_a_batch_it_cannot_change(self) -> None:
        """The batch an exporter gets is read-only: one that tries to empty it before saying
        "delivered" fails instead of hiding tasks."""
        class Clearing(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> ExportResult:
                events.clear()
                return ExportResult.delivered()

        pipeline = phospho_logging.configure(exporter=Clearing(), max_attempts=1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10) is False
        stats = pipeline.stats()
        assert (stats["sent"], stats["dropped_by_reason"]) == (0, {"exporter_error": 1}) and balanced(stats)

    def test_timeouts_of_any_value(self) -> None:
        """flush() and shutdown() take any number: infinity waits as long as the policy
        needs, a huge one is capped, NaN and negatives do not wait; none raises."""
        exporter = InMemoryExporter()
        pipeline = phospho_logging.configure(exporter=exporter)
        for timeout in (float("inf"), 1e300, 10**400, float("nan"), -1.0, 0.0):
            log.info("t", extra={"input": "q"})
            assert pipeline.flush(timeout) in (True, False)
            assert phospho_logging.flush(timeout) in (True, False)
        assert pipeline.flush(float("inf")) is True and len(exporter.events) == 6
        pipeline.shutdown(float("inf"))
        assert balanced(pipeline.stats())

    def test_a_retry_after_too_large_for_a_float(self) -> None:
        """An exporter asking for a pause of 10**400 s: the pause is capped (the endpoint
        rests), the batch fails as any other; nothing is counted as an internal error."""
        exporter = InMemoryExporter([ExportResult.retry("slow down", retry_after=10**400)])
        pipeline = phospho_logging.configure(exporter=exporter, max_attempts=2)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10) is False
        stats = pipeline.stats()
        assert stats["circuit_open"] and stats["dropped_by_reason"] == {"unreachable": 1} and balanced(stats)

    @pytest.mark.parametrize("retry_after", [float("nan"), -1.0, "soon"])
    def test_nonsense_retry_after(self, retry_after: Any) -> None:
        """A Retry-After that is not a pause (NaN, negative, text) is ignored: the task is
        retried at once and delivered, the endpoint is not rested."""
        exporter = InMemoryExporter([ExportResult("retry", error="busy", retry_after=retry_after)])
        pipeline = phospho_logging.configure(exporter=exporter, max_attempts=2)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10)
        stats = pipeline.stats()
        assert [e["input"] for e in exporter.events] == ["q"] and not stats["circuit_open"] and balanced(stats)

    def test_a_filter_that_raises_counts_the_task(self, diag: List[str]) -> None:
        """A handler filter that raises on a task-carrying record: the app goes on, the task
        is counted as dropped (``internal_error``) and said, and flush() says so."""
        def angry(record: logging.LogRecord) -> bool:
            if record.__dict__.get("input") == "bad":
                raise ValueError("no")
            return True

        exporter = InMemoryExporter()
        handler = phospho_logging.PhosphoHandler(exporter=exporter)
        handler.addFilter(angry)
        lg = logging.getLogger("phospho.filtered")
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        try:
            lg.info("t", extra={"input": "bad"})
            lg.info("t", extra={"input": "good"})
            assert handler.flush(timeout=10) is False
            stats = handler.stats()
            assert [e["input"] for e in exporter.events] == ["good"]
            assert stats["dropped_by_reason"] == {"internal_error": 1} and balanced(stats)
            assert any("could not be turned into a task" in m and "ValueError" in m for m in diag)
        finally:
            lg.removeHandler(handler)
            handler.close()

    @pytest.mark.parametrize("durable", [False, True], ids=["plain", "durable"])
    def test_unwritable_spool(self, tmp_path: Path, server: PhosphoTestServer, durable: bool) -> None:
        """A spool that cannot be written (its file is a directory): delivered tasks count
        as sent only, undeliverable ones as dropped with a reason; the books balance and
        flush() is True exactly when nothing was lost."""
        (tmp_path / "tasks.sqlite3").mkdir()
        pipeline = phospho_logging.configure(api_key=server.api_key, project_id=server.project_id,
                                             base_url=server.url, local_dir=str(tmp_path), durable=durable)
        for i in range(10):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=10) is True
        stats = pipeline.stats()
        assert (stats["sent"], stats["dropped"]) == (10, 0) and balanced(stats)
        server.fail_next(401)  # not retried: kept in the spool, which cannot be written
        log.info("t", extra={"input": "refused"})
        assert pipeline.flush(timeout=10) is False
        stats = pipeline.stats()
        assert stats["dropped_by_reason"] == {"spool_error": 1} and balanced(stats)

    def test_replay_storage_error_does_not_stop_the_worker(self, tmp_path: Path, server: PhosphoTestServer) -> None:
        """The spool cannot be read at start (a storage error during replay): the worker
        says so once, stays alive, and ships later tasks."""
        (tmp_path / "tasks.sqlite3").mkdir()
        pipeline = phospho_logging.configure(api_key=server.api_key, project_id=server.project_id,
                                             base_url=server.url, local_dir=str(tmp_path))
        for i in range(5):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=10)
        stats = pipeline.stats()
        assert stats["worker_alive"] and stats["sent"] == 5 and balanced(stats)
        assert sorted(t["input"] for t in server.tasks) == [f"q{i}" for i in range(5)]

    def test_books_balance_through_every_outcome(self, tmp_path: Path) -> None:
        """Delivered, rejected one by one, retried, split, spooled: each task counted once."""
        exporter = InMemoryExporter([
            ExportResult.delivered({0: "Quota exceeded"}),
            ExportResult.retry("busy", status=503),
            ExportResult("invalid", error="bad batch", status=422),
            ExportResult("auth", error="no", status=401),
        ])
        pipeline = phospho_logging.configure(exporter=exporter, api_key="k", project_id="p",
                                             local_dir=str(tmp_path), max_batch_size=4)
        for i in range(12):
            log.info("t", extra={"input": f"q{i}"})
        pipeline.flush(timeout=20)
        stats = pipeline.stats()
        assert balanced(stats) and stats["queued"] == 0
        assert stats["rejected"] >= 1 and stats["sent"] + stats["rejected"] + stats["spooled"] == 12


class TestReconfigure:
    """configure() again while threads log loses nothing."""

    @pytest.mark.parametrize("round_", range(3))
    def test_reconfigure_while_four_threads_log(self, server: PhosphoTestServer, creds: dict, round_: int) -> None:
        """4 threads log while configure() is called 3 times in about a second: every task
        arrives exactly once, and flush() is True."""
        stop = threading.Event()
        logged: List[List[str]] = [[] for _ in range(4)]

        def work(k: int) -> None:
            mine = logged[k]
            i = 0
            while not stop.is_set() and i < 50_000:
                text = f"{round_}-{k}-{i}"
                log.info("t", extra={"input": text})
                mine.append(text)
                i += 1

        phospho_logging.configure(**creds, max_queue_size=1_000_000)
        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        try:
            for _ in range(3):
                stop.wait(0.3)  # a moment of logging between reconfigurations
                phospho_logging.configure(**creds, max_queue_size=1_000_000)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert phospho_logging.flush(timeout=120)
        sent = [text for mine in logged for text in mine]
        assert server.wait_for_tasks(len(sent), timeout=60)
        assert sorted(t["input"] for t in server.tasks) == sorted(sent)
        assert server.duplicates == 0


class TestModules:
    def test_no_module_imports_a_private_name_of_another(self) -> None:
        """What modules share is their public internal API: no ``from ._x import _y``."""
        found = []
        for path in sorted(PACKAGE.glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level >= 1 and node.module:
                    found += [f"{path.name}: {alias.name}" for alias in node.names
                              if alias.name.startswith("_") and not alias.name.startswith("__")]
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id.startswith("_") and node.attr.startswith("_") \
                        and not node.attr.startswith("__"):
                    found.append(f"{path.name}: {node.value.id}.{node.attr}")
        assert found == []

    def test_no_reach_into_logging_privates(self) -> None:
        """No ``logging._lock``, ``logging._handlers`` and the like."""
        found = []
        for path in sorted(PACKAGE.glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id == "logging" and node.attr.startswith("_"):
                    found.append(f"{path.name}: logging.{node.attr}")
        assert found == []


class TestEdges:
    """Paths a review found that could lose a task uncounted, loop, or hold exit."""

    def test_a_timed_out_flush_does_not_hide_a_loss(self) -> None:
        """A flush that gave up before its marker was reached leaves the loss to the next
        flush, which reports it."""
        exporter = InMemoryExporter([ExportResult.retry("down")] * 2)
        pipeline = phospho_logging.configure(exporter=exporter, max_attempts=2)  # no spool: a failure is a loss
        log.info("t", extra={"input": "lost"})
        assert pipeline.flush(timeout=0.001) is False
        deadline = time.monotonic() + 30
        while pipeline.stats()["dropped"] == 0 and time.monotonic() < deadline:
            threading.Event().wait(0.01)  # bounded polling on the books
        log.info("t", extra={"input": "ok"})
        assert pipeline.flush(timeout=10) is False  # "lost" was dropped since the last flush that returned
        assert pipeline.flush(timeout=10) is True

    def test_a_task_after_a_rescue_is_settled(self) -> None:
        """shutdown() rescues a worker stuck in a request; a task that arrives before the
        request returns is still settled once, and counted."""
        entered, release = threading.Event(), threading.Event()

        class Hang(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> ExportResult:
                if not entered.is_set():
                    entered.set()
                    release.wait(10)  # a request that does not answer (until released)
                    return ExportResult.retry("timeout")
                return super().export(events, timeout)

        handler = phospho_logging.PhosphoHandler(exporter=Hang(), shutdown_timeout=0.5, max_attempts=1,
                                                 flush_interval=0.01)
        lg = logging.getLogger("phospho.rescue")
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        try:
            lg.info("t", extra={"input": "first"})
            assert entered.wait(10)
            handler.engine.shutdown()  # rescues the stuck batch at the deadline
            lg.info("t", extra={"input": "late"})  # the handler is still attached
            release.set()
            handler.flush(timeout=10)  # False: without a spool, the rescued "first" was dropped
            stats = handler.stats()
            assert stats["queued"] == 0 and balanced(stats) and stats["enqueued"] == 2
            assert (stats["sent"], stats["dropped_by_reason"]) == (1, {"shutdown_deadline": 1})
        finally:
            lg.removeHandler(handler)
            release.set()
            handler.close()

    def test_structlog_inside_our_own_io_does_not_loop(self) -> None:
        """An exporter that logs through structlog (an instrumented client, say): its events
        are not shipped, so one task makes one export, not an endless feed."""
        import structlog

        from phospho_logging.structlog import PhosphoProcessor

        structlog.configure(processors=[PhosphoProcessor(), structlog.processors.JSONRenderer()],
                            logger_factory=structlog.ReturnLoggerFactory())
        slog = structlog.get_logger()

        class Chatty(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> ExportResult:
                slog.info("exporting", input="from inside the export")
                return super().export(events, timeout)

        exporter = Chatty()
        pipeline = phospho_logging.configure(exporter=exporter)
        try:
            slog.info("app", input="one task")
            assert pipeline.flush(timeout=10) and pipeline.flush(timeout=10)
            stats = pipeline.stats()
            assert [e["input"] for e in exporter.events] == ["one task"] and len(exporter.batches) == 1
            assert stats["ignored_own_io"] == 1 and balanced(stats)
        finally:
            structlog.reset_defaults()

    def test_one_exporter_shared_by_two_engines(self) -> None:
        """One exporter given to configure() twice: export is never called by two threads at
        once, and never closed while one is under way."""
        problems: List[str] = []
        inside = [0]
        entered = threading.Event()

        class Watch(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> ExportResult:
                inside[0] += 1
                if inside[0] > 1:
                    problems.append("export || export")
                entered.set()
                threading.Event().wait(0.2)  # a slow request (the other engine tries meanwhile)
                result = super().export(events, timeout)
                inside[0] -= 1
                return result

            def close(self) -> None:
                if inside[0]:
                    problems.append("close during export")
                super().close()

        exporter = Watch()
        phospho_logging.configure(exporter=exporter, flush_interval=0.01)
        log.info("t", extra={"input": "a"})
        assert entered.wait(10)  # the first engine's worker is in export
        second = phospho_logging.configure(exporter=exporter, flush_interval=0.01)
        log.info("t", extra={"input": "b"})
        assert second.flush(timeout=10) and phospho_logging.flush(timeout=10)
        assert problems == [] and sorted(e["input"] for e in exporter.events) == ["a", "b"]

    def test_spooled_by_the_old_engine_replayed_by_the_new(self, tmp_path: Path) -> None:
        """After a handover, what the old engine could not send (and spooled) is replayed by
        the new one, which is healthy, in the same process."""
        go = threading.Event()

        class Down(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> ExportResult:
                go.wait(10)  # fails only once the new engine has looked at the spool and found it empty
                super().export(events, timeout)
                return ExportResult.retry("503", status=503)

        creds = {"api_key": "k", "project_id": "p", "local_dir": str(tmp_path)}
        old = phospho_logging.configure(exporter=Down(), max_attempts=1, flush_interval=60, **creds)
        log.info("t", extra={"input": "from the old engine"})
        new_exporter = InMemoryExporter()
        new = phospho_logging.configure(exporter=new_exporter, **creds)  # the old one drains, fails, spools
        log.info("t", extra={"input": "new"})
        assert new.flush(timeout=10)  # healthy, its spool looked at already
        go.set()
        assert old.flush(timeout=10) and old.stats()["spooled"] == 1
        deadline = time.monotonic() + 30
        while len(new_exporter.events) < 2 and time.monotonic() < deadline:
            threading.Event().wait(0.05)  # bounded polling: the new engine replays when idle
        assert [e["input"] for e in new_exporter.events] == ["new", "from the old engine"]
        assert new.stats()["replayed"] == 1

    def test_capture_is_what_would_be_sent(self) -> None:
        """capture_tasks() cuts events to fit a request exactly as the worker does."""
        from phospho_logging.testing import capture_tasks

        extra = {"input": "q", **{f"k{i}": "x" * 90_000 for i in range(20)}}
        exporter = InMemoryExporter()
        pipeline = phospho_logging.configure(exporter=exporter)
        with capture_tasks() as tasks:
            log.info("t", extra=extra)
        log.info("t", extra=extra)
        assert pipeline.flush(timeout=10)
        captured, sent = tasks[0], exporter.events[0]
        captured.pop("task_id"), sent.pop("task_id")
        captured["client_created_at"] = sent["client_created_at"] = 0
        captured["metadata"].pop("log_line"), sent["metadata"].pop("log_line")
        assert captured == sent and "phospho_logging_truncated" in sent["metadata"]

    def test_exit_with_a_started_listener_is_one_deadline(self) -> None:
        """configure() and a started PhosphoQueueListener, both exporters hung: exit takes one
        shutdown_timeout, not one each."""
        code = """
            import logging, queue, threading, phospho_logging
            from phospho_logging import PhosphoHandler, PhosphoQueueListener, PhosphoQueueHandler
            from phospho_logging.testing import InMemoryExporter

            class Hang(InMemoryExporter):
                def export(self, events, timeout):
                    threading.Event().wait(timeout)  # no answer, within the timeout it was given
                    return phospho_logging.ExportResult.retry("no answer")

            phospho_logging.configure(exporter=Hang(), shutdown_timeout=2, flush_interval=0.01)
            logging.getLogger("phospho").info("t", extra={"input": "a"})
            q = queue.SimpleQueue()
            listener = PhosphoQueueListener(q, PhosphoHandler(exporter=Hang(), shutdown_timeout=2,
                                                              flush_interval=0.01))
            handler = PhosphoQueueHandler(q)
            handler.listener = listener
            lg = logging.getLogger("app")
            lg.setLevel(logging.INFO)
            lg.addHandler(handler)
            listener.start()
            import atexit
            atexit.register(listener.stop)  # the stdlib's advice: runs before our exit hook
            lg.info("t", extra={"input": "b"})
            print("exit now", flush=True)
        """
        seconds, code, err = time_exit(code, {})
        assert code == 0, err
        assert seconds < 2 + 1.0, seconds

    def test_relay_after_fork(self, tmp_path: Path) -> None:
        """A started PhosphoQueueListener relays a stdlib QueueHandler's records in a forked
        child too."""
        if not hasattr(os, "fork"):
            return
        code = """
            import logging, logging.handlers, os, queue, sys, phospho_logging
            from phospho_logging import PhosphoHandler, PhosphoQueueListener
            q = queue.Queue()
            lg = logging.getLogger("app")
            lg.setLevel(logging.INFO)
            lg.addHandler(logging.handlers.QueueHandler(q))
            listener = PhosphoQueueListener(q, PhosphoHandler())
            listener.start()
            lg.info("t", extra={"input": "parent"})
            assert phospho_logging.flush(timeout=10)
            pid = os.fork()
            if pid == 0:
                for i in range(3):
                    lg.info("t", extra={"input": f"child{i}"})
                listener.stop()
                os._exit(0 if listener.flush(timeout=10) else 3)
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
        """
        result = run_child(code, {"PHOSPHO_LOCAL_DIR": str(tmp_path)}, timeout=60)
        assert result.returncode == 0, result.stderr
        assert sorted(stored_inputs(tmp_path)) == ["child0", "child1", "child2", "parent"]

    def test_exit_with_the_store_locked_by_another_process(self, tmp_path: Path) -> None:
        """Another process holds the store's write lock: exit still ends on time, and says
        what it could not keep."""
        child = """
            import logging, sys, phospho_logging
            phospho_logging.configure(shutdown_timeout=1, flush_interval=60)
            log = logging.getLogger("phospho")
            for i in range(500):
                log.info("t", extra={"input": f"q{i}"})
            print("exit now", flush=True)
        """
        # The store exists (made by a first run) and another process holds its write lock.
        first = run_child("import logging, phospho_logging\nphospho_logging.configure()\n"
                          "logging.getLogger('phospho').info('t', extra={'input': 'first'})\n",
                          {"PHOSPHO_LOCAL_DIR": str(tmp_path)}, timeout=30)
        assert first.returncode == 0, first.stderr
        conn = sqlite3.connect(str(tmp_path / "tasks.sqlite3"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM tasks WHERE 0")
            seconds, code, err = time_exit(child, {"PHOSPHO_LOCAL_DIR": str(tmp_path)})
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        assert code == 0, err
        assert seconds < 1 + 1.0, seconds
        assert "500 task(s) of this run could not be kept in the local store" in err, err

    def test_flush_waits_for_the_relay(self) -> None:
        """Behind a started listener, flush() first waits for the relay to hand over what
        other producers put on the queue: True means those tasks were delivered."""
        import queue as queue_module

        exporter = InMemoryExporter()
        q: queue_module.Queue[Any] = queue_module.Queue()
        listener = phospho_logging.PhosphoQueueListener(q, phospho_logging.PhosphoHandler(exporter=exporter))
        producer = logging.handlers.QueueHandler(q)  # the stdlib's: goes through the relay
        lg = logging.getLogger("phospho.relayed")
        lg.addHandler(producer)
        lg.setLevel(logging.INFO)
        listener.start()
        try:
            for i in range(20_000):
                lg.info("t", extra={"input": f"q{i}"})
            assert listener.flush(timeout=60)
            assert len(exporter.events) == 20_000 and balanced(listener.stats())
        finally:
            lg.removeHandler(producer)
            listener.stop(timeout=5)

    @pytest.mark.parametrize("others", [False, True])
    def test_stats_never_go_backwards(self, others: bool) -> None:
        """enqueued only grows, read while threads log and the worker drains (with other
        handlers behind the listener too, whose records are not tasks)."""
        import queue as queue_module

        handlers: List[logging.Handler] = [phospho_logging.PhosphoHandler(exporter=InMemoryExporter())]
        if others:
            handlers.append(logging.NullHandler())
        q: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        listener = phospho_logging.PhosphoQueueListener(q, *handlers)
        handler = phospho_logging.PhosphoQueueHandler(q)
        lg = logging.getLogger("phospho.counted")
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        done = threading.Event()

        def produce(n: int) -> None:
            for i in range(n):
                lg.info("t", extra={"input": f"q{i}"})
                lg.info("no task")
            done.set()

        seen: List[int] = []
        thread = threading.Thread(target=produce, args=(30_000,))
        thread.start()
        try:
            while not done.is_set() and len(seen) < 1_000_000:
                seen.append(handler.stats()["enqueued"])
            thread.join(30)
            assert listener.flush(timeout=30)
            final = handler.stats()
        finally:
            lg.removeHandler(handler)
            listener.stop(timeout=5)
        assert all(a <= b for a, b in zip(seen, seen[1:]))
        assert final["enqueued"] == 30_000 and balanced(final)
