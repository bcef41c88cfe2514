"""Framework recipes in examples/: each runs as a real program (Django's test client, a
Celery prefork worker, a Lambda-style handler frozen between invocations)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phospho_logging._store import latest
from phospho_logging.testing import PhosphoTestServer
from tests.test_exit import child_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_django_view_logs_a_task_per_request(tmp_path: Path) -> None:
    pytest.importorskip("django")
    result = subprocess.run([sys.executable, str(EXAMPLES / "django_app.py")], capture_output=True, text=True,
                            timeout=120, env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = latest(tmp_path / "tasks.sqlite3")
    assert [(e["input"], e["session_id"], e["metadata"]["path"]) for e in events] == [
        ("What is Django?", "django-demo", "/ask"), ("And its ORM?", "django-demo", "/ask"),
        ("And logging?", "django-demo", "/ask")]


def test_celery_prefork_children_deliver_before_os_exit(tmp_path: Path) -> None:
    """A flush interval longer than the run: nothing is sent before the children exit, so
    every task in the store was delivered by worker_process_shutdown's shutdown()."""
    pytest.importorskip("celery")
    env = child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path / "store"), "PHOSPHO_FLUSH_INTERVAL": "60",
                     "CELERY_DEMO_DIR": str(tmp_path / "celery")})
    (tmp_path / "celery").mkdir()
    result = subprocess.run([sys.executable, str(EXAMPLES / "celery_worker.py")], capture_output=True, text=True,
                            timeout=180, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "worker exit code: 0" in result.stdout, result.stdout
    events = latest(tmp_path / "store" / "tasks.sqlite3")
    assert sorted(e["input"] for e in events) == sorted(
        ["What is Celery?", "What is prefork?", "Why a signal?", "And os._exit?"])
    assert os.getpid() not in {e["metadata"]["worker_pid"] for e in events}


def test_lambda_handler_delivers_before_the_freeze(tmp_path: Path) -> None:
    """Each invocation's task is at the server when the handler returns: the process is
    then frozen (SIGSTOP, as the Lambda runtime freezes it) and the task is already there."""
    with PhosphoTestServer() as server:
        env = child_env({"PHOSPHO_API_KEY": server.api_key, "PHOSPHO_PROJECT_ID": server.project_id,
                         "PHOSPHO_BASE_URL": server.url, "PHOSPHO_LOCAL_DIR": str(tmp_path),
                         "PHOSPHO_FLUSH_INTERVAL": "60"})
        proc = subprocess.Popen([sys.executable, str(EXAMPLES / "lambda_handler.py"), "--stdin"], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            for i, question in enumerate(["first", "second", "third"], start=1):
                proc.stdin.write(question + "\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == f"done: You asked: {question}"
                os.kill(proc.pid, signal.SIGSTOP)  # frozen: no thread of it runs now
                try:
                    assert len(server.task_ids) == i
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert [t["input"] for t in server.tasks] == ["first", "second", "third"]
