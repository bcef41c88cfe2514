"""Interpreter exit, in real subprocesses: every task delivered, never a hang."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List

import pytest

from phospho_logging.testing import PhosphoTestServer

ROOT = Path(__file__).resolve().parent.parent


def child_env(env: Dict[str, str]) -> Dict[str, str]:
    """The test's environment without PHOSPHO_* variables, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PHOSPHO_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return full_env


def run(code: str, env: Dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=child_env(env),
                          capture_output=True, text=True, timeout=timeout)


def popen(code: str, env: Dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=child_env(env), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def server_env(server: PhosphoTestServer) -> Dict[str, str]:
    return {"PHOSPHO_API_KEY": server.api_key, "PHOSPHO_PROJECT_ID": server.project_id,
            "PHOSPHO_BASE_URL": server.url}


def stored_inputs(local_dir: Path, table: str = "tasks") -> List[str]:
    """The inputs of the events in the local store (``tasks``) or the spool (``outbox``); none
    when the file or the table was never made (nothing had to be kept: the spool is opened
    only when a task is spooled or replayed)."""
    path = local_dir / "tasks.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            return []
        return [json.loads(row[0])["input"] for row in conn.execute(f"SELECT event FROM {table}")]  # noqa: S608
    finally:
        conn.close()


LOG_AND_EXIT = """
    import logging, phospho_logging
    phospho_logging.configure(flush_interval=60)
    log = logging.getLogger("phospho")
    for i in range(500):
        log.info("t", extra={"input": f"q{i}", "output": "a"})
    print("logged")
"""


class TestExit:
    def test_exit_without_flush_delivers_everything(self, server: PhosphoTestServer) -> None:
        """A script that logs and just ends still delivers every task."""
        result = run(LOG_AND_EXIT, server_env(server))
        assert result.returncode == 0, result.stderr
        assert sorted(t["input"] for t in server.tasks) == sorted(f"q{i}" for i in range(500))
        assert server.duplicates == 0

    def test_exit_through_sys_exit(self, server: PhosphoTestServer) -> None:
        """sys.exit() with a code also drains the queue."""
        result = run(LOG_AND_EXIT + "\n    import sys; sys.exit(3)\n", server_env(server))
        assert result.returncode == 3, result.stderr
        assert len(server.tasks) == 500

    def test_exit_is_bounded_with_a_hung_backend(self, server: PhosphoTestServer) -> None:
        """With a backend that never answers, exit takes about shutdown_timeout, not forever."""
        server.hang_next(100)
        env = dict(server_env(server), PHOSPHO_SHUTDOWN_TIMEOUT="1", PHOSPHO_TIMEOUT="30")
        code = """
            import logging, sys, phospho_logging
            phospho_logging.configure(flush_interval=0.01)
            logging.getLogger("phospho").info("t", extra={"input": "q"})
            sys.stdin.readline()  # the test answers once the worker is stuck in its request
            print("exiting", flush=True)
        """
        proc = popen(code, env)
        try:
            assert server.wait_for_requests(1, timeout=30)
            start = time.monotonic()
            out, err = proc.communicate("go\n", timeout=60)
        finally:
            proc.kill()
        elapsed = time.monotonic() - start
        assert proc.returncode == 0, err
        assert "exiting" in out
        # The 1 s shutdown_timeout plus interpreter teardown, with a wide margin; the
        # 30 s request timeout would show up as a failure here.
        assert elapsed < 5, elapsed

    def test_exit_is_bounded_with_a_refusing_backend(self) -> None:
        """Connection refused for every attempt: exit still within shutdown_timeout."""
        with PhosphoTestServer() as srv:
            env = server_env(srv)
        env.update(PHOSPHO_SHUTDOWN_TIMEOUT="1")  # the server is stopped: the port refuses
        start = time.monotonic()
        result = run(LOG_AND_EXIT, env)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - start < 10
        assert "kept in the spool" in result.stderr


class TestMultiprocessing:
    def test_child_that_configures_after_it_started(self, tmp_path: Path) -> None:
        """A multiprocessing child (fork) that configures only once it runs: its tasks are
        stored when it ends, though multiprocessing ends children with os._exit()."""
        if not hasattr(os, "fork"):
            pytest.skip("needs fork")
        code = """
            import logging, multiprocessing, phospho_logging

            def work(n):
                phospho_logging.configure()
                for i in range(n):
                    logging.getLogger("phospho").info("t", extra={"input": f"child-{i}"})

            if __name__ == "__main__":
                ctx = multiprocessing.get_context("fork")
                p = ctx.Process(target=work, args=(50,))
                p.start()
                p.join(60)
                assert p.exitcode == 0, p.exitcode
        """
        result = run(code, {"PHOSPHO_LOCAL_DIR": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        inputs = sorted(stored_inputs(tmp_path))
        assert inputs == sorted(f"child-{i}" for i in range(50))

    def test_pool_closed_and_joined_keeps_every_task(self, tmp_path: Path) -> None:
        """A Pool's workers end through multiprocessing's exit path when the pool is closed
        and joined (the README's advice): every task they logged is stored. (``with Pool()``
        alone terminates them with SIGTERM, which no exit hook survives.)"""
        if not hasattr(os, "fork"):
            pytest.skip("needs fork")
        code = """
            import logging, multiprocessing, phospho_logging
            phospho_logging.configure()

            def work(c):
                for i in range(100):
                    logging.getLogger("phospho").info("t", extra={"input": f"child{c}-{i}"})

            if __name__ == "__main__":
                with multiprocessing.get_context("fork").Pool(4) as pool:
                    pool.map(work, range(4))
                    pool.close()
                    pool.join()
        """
        result = run(code, {"PHOSPHO_LOCAL_DIR": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        inputs = sorted(stored_inputs(tmp_path))
        assert inputs == sorted(f"child{c}-{i}" for c in range(4) for i in range(100))
