"""The fault suite: real subprocesses against a scripted loopback server.

Every case ends with the same books: tasks logged == tasks on the server + tasks still in
the spool + drops that stats() reported, and the server never saw a task twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest

from phospho_logging.testing import PhosphoTestServer
from tests.conftest import said
from tests.test_exit import child_env

CHILD = """
import json, logging, os, resource, sys, time
import phospho_logging
options = json.loads(os.environ.get("CHILD_OPTIONS", "{}"))
pipeline = phospho_logging.configure(**options)
log = logging.getLogger("phospho")
tag, n = os.environ.get("CHILD_TAG", "q"), int(os.environ.get("CHILD_N", "0"))
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for i in range(n):
    log.info("t", extra={"input": f"{tag}{i}", "output": "a", "metadata": {"i": i}})
if os.environ.get("CHILD_FLUSH"):
    pipeline.flush(timeout=float(os.environ["CHILD_FLUSH"]))
rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"stats": pipeline.stats(), "rss_growth_kb": rss_after - rss_before}), flush=True)
if os.environ.get("CHILD_WAIT"):
    sys.stdin.readline()
"""


class Child:
    """One run of the child script: its stats line, exit code, and exit time."""

    def __init__(self, env: Dict[str, str], stdin_wait: bool = False) -> None:
        env = dict(env)
        if stdin_wait:
            env["CHILD_WAIT"] = "1"
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD)], env=child_env(env),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.report: Dict[str, Any] = {}
        self.exit_seconds = 0.0
        self.stderr = ""

    def read_report(self, timeout: float = 120) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while not line and time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
        assert line, f"the child printed no report: {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.report = json.loads(line)
        return self.report

    def finish(self, timeout: float = 60) -> Child:
        """Let the child end (it exits after its report) and time how long that takes."""
        if not self.report:
            self.read_report()
        start = time.monotonic()
        try:
            _, self.stderr = self.proc.communicate("\n", timeout=timeout)
        finally:
            self.proc.kill()
        self.exit_seconds = time.monotonic() - start
        assert self.proc.returncode == 0, self.stderr
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)


def _exited_within(proc: subprocess.Popen, seconds: float) -> bool:
    """True if ``proc`` ended within ``seconds`` (a bounded wait on the process itself)."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def spooled(local_dir: Path) -> List[str]:
    """Task ids waiting in the spool."""
    path = local_dir / "tasks.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(str(path))
    try:
        return [json.loads(row[0])["input"] for row in conn.execute("SELECT event FROM outbox")]
    except sqlite3.OperationalError:  # no outbox table yet
        return []
    finally:
        conn.close()


def env_for(server_url: str, local_dir: Path, n: int, tag: str = "q", key: str = "test-key",
            flush: Optional[float] = None, **options: Any) -> Dict[str, str]:
    env = {"PHOSPHO_API_KEY": key, "PHOSPHO_PROJECT_ID": "test-project", "PHOSPHO_BASE_URL": server_url,
           "PHOSPHO_LOCAL_DIR": str(local_dir), "CHILD_N": str(n), "CHILD_TAG": tag,
           "CHILD_OPTIONS": json.dumps(options)}
    if flush is not None:
        env["CHILD_FLUSH"] = str(flush)
    return env


def replay(server: PhosphoTestServer, local_dir: Path, expected: int) -> Child:
    """A later start with a working backend: the spool is replayed in the background."""
    child = Child(env_for(server.url, local_dir, 0), stdin_wait=True)
    try:
        child.read_report()
        assert server.wait_for_tasks(expected, timeout=60)
    finally:
        child.finish()
    return child


def assert_books(logged: int, server: PhosphoTestServer, local_dir: Path, drops: int = 0) -> None:
    inputs = [t["input"] for t in server.tasks]
    assert len(inputs) == len(set(inputs)), "a task reached the server twice"
    left = spooled(local_dir)
    assert logged == len(inputs) + len(set(left) - set(inputs)) + drops, (logged, len(inputs), len(left), drops)


@pytest.fixture
def local_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


SHUTDOWN = 1.0
# Exit takes at most shutdown_timeout plus a second (the README's promise); a hang would
# take the 30 s request timeout, or forever.
EXIT_LIMIT = SHUTDOWN + 1.0


class TestBackendDown:
    def test_refused(self, local_dir: Path) -> None:
        """Connection refused: exit on time, every task spooled, all delivered on the next start."""
        with PhosphoTestServer() as gone:
            url = gone.url  # stopped at the end of the block: the port refuses
        child = Child(env_for(url, local_dir, 300, shutdown_timeout=SHUTDOWN), stdin_wait=True).finish()
        assert child.exit_seconds < EXIT_LIMIT, child.exit_seconds
        assert len(spooled(local_dir)) == 300
        with PhosphoTestServer() as server:
            replay(server, local_dir, 300)
            assert_books(300, server, local_dir)
            assert spooled(local_dir) == []

    def test_hang(self, local_dir: Path) -> None:
        """Accepts and never answers: exit on time, the stuck batch and the queue spooled."""
        with PhosphoTestServer() as server:
            server.hang_next(1000)
            child = Child(env_for(server.url, local_dir, 300, shutdown_timeout=SHUTDOWN, timeout=30,
                                  flush_interval=0.01), stdin_wait=True)
            child.read_report()
            assert server.wait_for_requests(1, timeout=30)  # the worker is stuck in a request
            child.finish()
            assert child.exit_seconds < EXIT_LIMIT, child.exit_seconds
        assert len(set(spooled(local_dir))) == 300
        with PhosphoTestServer() as server:
            replay(server, local_dir, 300)
            assert_books(300, server, local_dir)

    def test_503_forever(self, local_dir: Path) -> None:
        """503 with Retry-After on every request: exit on time, nothing lost."""
        with PhosphoTestServer() as server:
            server.fail_next(503, count=10_000, retry_after=30)
            child = Child(env_for(server.url, local_dir, 200, shutdown_timeout=SHUTDOWN), stdin_wait=True).finish()
            assert child.exit_seconds < EXIT_LIMIT, child.exit_seconds
        assert len(spooled(local_dir)) == 200
        with PhosphoTestServer() as server:
            replay(server, local_dir, 200)
            assert_books(200, server, local_dir)

    def test_slow_backend(self, local_dir: Path) -> None:
        """A backend slower than the shutdown deadline: exit on time, the rest spooled."""
        with PhosphoTestServer() as server:
            server.delay = 0.7
            child = Child(env_for(server.url, local_dir, 500, shutdown_timeout=SHUTDOWN, max_batch_size=50),
                          stdin_wait=True).finish()
            assert child.exit_seconds < EXIT_LIMIT, child.exit_seconds
            delivered = {t["input"] for t in server.tasks}
        left = set(spooled(local_dir))
        assert delivered | left == {f"q{i}" for i in range(500)}, (len(delivered), len(left), child.stderr)
        with PhosphoTestServer() as server:
            replay(server, local_dir, len(left))  # a batch in flight at the deadline may be in both
            inputs = [t["input"] for t in server.tasks]
            assert set(inputs) | delivered == {f"q{i}" for i in range(500)}

    def test_fifty_thousand_tasks(self, local_dir: Path) -> None:
        """Backend down for 50,000 tasks: memory stays bounded, exit on time, nothing
        lost silently, everything kept is delivered on the next start."""
        with PhosphoTestServer() as gone:
            url = gone.url
        child = Child(env_for(url, local_dir, 50_000, shutdown_timeout=5.0), stdin_wait=True)
        report = child.read_report()
        child.finish()
        stats = report["stats"]
        assert child.exit_seconds < 5.0 + 3.0, child.exit_seconds
        # Memory is bounded by the queue (100,000 tasks by default), not by the backlog.
        assert report["rss_growth_kb"] < 40 * 1024, report["rss_growth_kb"]
        kept = spooled(local_dir)
        drops = stats["dropped_by_reason"].get("queue_full", 0)
        assert drops == 0 and len(kept) == 50_000, (len(kept), stats)
        with PhosphoTestServer() as server:
            replay(server, local_dir, len(kept))
            assert_books(50_000, server, local_dir, drops=drops)


API_ANSWER = b'{"logged_events": []}'


def _three_slow_answers(local_dir: Path, **slow: float) -> Tuple[Dict[str, Any], Set[str], Set[str]]:
    """A child logs 50 tasks (timeout 1 s, 2 attempts) to a server whose first three
    answers are slow (``answer_next``'s ``drip`` or ``drip_head``); it must exit on time with
    every task sent or spooled. Returns its stats and the inputs delivered and spooled."""
    with PhosphoTestServer() as server:
        server.answer_next(200, API_ANSWER, count=3, content_type="application/json", **slow)
        child = Child(env_for(server.url, local_dir, 50, flush=20, timeout=1.0, max_attempts=2,
                              shutdown_timeout=SHUTDOWN), stdin_wait=True).finish()
        stats = child.report["stats"]
        assert child.exit_seconds < EXIT_LIMIT, child.exit_seconds
        assert stats["sent"] + stats["spooled"] == 50 and stats["requests"] >= 2, stats
        delivered = {t["input"] for t in server.tasks}
    left = set(spooled(local_dir))
    assert delivered | left == {f"q{i}" for i in range(50)}
    return stats, delivered, left


class TestBadAnswers:
    """Answers that must not hold the sender, fill its memory, or pass for delivery."""

    def test_the_key_echoed_by_the_server_is_never_shown(self, tmp_path: Path, diag: List[str],
                                                         capsys: pytest.CaptureFixture) -> None:
        """A 401 (and a per-event rejection) whose text echoes the token: the key is in no
        warning, not in stats()["last_error"], not in ``check``'s output."""
        import logging

        import phospho_logging
        from phospho_logging.cli import main

        with PhosphoTestServer() as server:
            key = server.api_key
            server.fail_next(401, count=50, body={"detail": f"Invalid token Bearer {key} for this project"})
            pipeline = phospho_logging.configure(api_key=key, project_id=server.project_id, base_url=server.url,
                                                 local_dir=str(tmp_path), max_attempts=1)
            logging.getLogger("phospho").info("t", extra={"input": "q"})
            pipeline.flush(timeout=10)
            last_error = pipeline.stats()["last_error"] or ""
            phospho_logging.shutdown(timeout=5)
            assert "Invalid token Bearer [api key hidden]" in last_error and key not in last_error
            assert main(["check", "--api-key", key, "--project-id", server.project_id, "--base-url", server.url,
                         "--local-dir", str(tmp_path)]) != 0
        out = capsys.readouterr()
        assert "[api key hidden]" in out.err + out.out
        assert key not in out.err + out.out
        assert said(diag, "rejected the API key") and not any(key in message for message in diag)

    def test_a_key_with_json_escapes_is_hidden_in_nested_details(self, tmp_path: Path) -> None:
        """A key holding quotes or backslashes, echoed inside a nested JSON detail (shown
        as JSON, so escaped): hidden too."""
        import logging

        import phospho_logging

        key = 'sk-"secret"\\-1234567890'
        with PhosphoTestServer(api_key=key) as server:
            server.fail_next(403, count=50, body={"detail": {"reason": f"token {key} not allowed"}})
            pipeline = phospho_logging.configure(api_key=key, project_id=server.project_id, base_url=server.url,
                                                 local_dir=str(tmp_path), max_attempts=1)
            logging.getLogger("phospho").info("t", extra={"input": "q"})
            pipeline.flush(timeout=10)
            last_error = pipeline.stats()["last_error"] or ""
            phospho_logging.shutdown(timeout=5)
        assert "[api key hidden]" in last_error and "secret" not in last_error, last_error

    def test_a_dripping_answer(self, local_dir: Path) -> None:
        """A 200 whose body arrives a byte every 0.3 s: each request ends at its timeout
        (not per socket read), the batch is retried or spooled, nothing is lost, and the
        next start delivers what was kept."""
        stats, delivered, left = _three_slow_answers(local_dir, drip=0.3)
        with PhosphoTestServer() as server:
            replay(server, local_dir, len(left - delivered))
            assert set(t["input"] for t in server.tasks) | delivered == {f"q{i}" for i in range(50)}

    def test_dripping_headers(self, local_dir: Path) -> None:
        """A server that sends its status line and headers a byte every 0.3 s (about 25 s
        for the whole head): each request still ends at its 1 s timeout, nothing is lost,
        and exit stays on time."""
        stats, _, _ = _three_slow_answers(local_dir, drip_head=0.3)
        assert "too slow to arrive whole" in (stats["last_error"] or "") or stats["sent"] == 50, stats

    def test_an_endless_answer(self, local_dir: Path) -> None:
        """A 200 of 320 MB: the sender reads at most its cap (memory stays bounded), takes
        it for no acknowledgement, and delivers the batch on the next attempt."""
        with PhosphoTestServer() as server:
            server.answer_next(200, b"x" * 65536, count=1, repeat=5000)
            child = Child(env_for(server.url, local_dir, 50, flush=30), stdin_wait=True).finish()
            report = child.report
            assert report["rss_growth_kb"] < 100 * 1024, report["rss_growth_kb"]
            assert report["stats"]["sent"] == 50 and report["stats"]["retries"] >= 1, report
            assert_books(50, server, local_dir)

    def test_an_html_page_is_not_a_delivery(self, local_dir: Path) -> None:
        """A proxy or captive portal answering 200 with HTML: not counted as sent; the
        tasks are kept and delivered once the real API answers."""
        page = b"<html><body>Please log in to the Wi-Fi</body></html>"
        with PhosphoTestServer() as server:
            server.answer_next(200, page, count=10_000)
            child = Child(env_for(server.url, local_dir, 30, flush=20, max_attempts=2,
                                  shutdown_timeout=SHUTDOWN), stdin_wait=True).finish()
            stats = child.report["stats"]
            assert stats["sent"] == 0 and stats["spooled"] == 30, stats
            assert "not with the ingestion API's JSON" in stats["last_error"], stats
        with PhosphoTestServer() as server:
            replay(server, local_dir, 30)
            assert_books(30, server, local_dir)


class TestRecoverable:
    @pytest.mark.parametrize("status, retry_after", [(503, "0.2"), (429, None), (502, "0")])
    def test_retried_until_delivered(self, local_dir: Path, status: int, retry_after: Optional[str]) -> None:
        """A few 5xx/429 answers: retried with back-off, delivered once, nothing spooled."""
        with PhosphoTestServer() as server:
            server.fail_next(status, count=3, retry_after=retry_after)
            child = Child(env_for(server.url, local_dir, 100, flush=30), stdin_wait=True).finish()
            assert child.report["stats"]["retries"] >= 3
            assert_books(100, server, local_dir)
            assert len(server.tasks) == 100 and spooled(local_dir) == []

    def test_retry_after_http_date(self, local_dir: Path) -> None:
        """Retry-After as an HTTP date is honoured too."""
        from email.utils import formatdate

        with PhosphoTestServer() as server:
            # HTTP dates have whole seconds: now + 3 s is at least 2 s ahead once truncated,
            # and the child takes well under a second to start and send its first batch.
            server.fail_next(429, count=1, retry_after=formatdate(time.time() + 3, usegmt=True))
            Child(env_for(server.url, local_dir, 10, flush=30), stdin_wait=True).finish()
            statuses = [r.status for r in server.requests]
            assert statuses[0] == 429 and len(server.tasks) == 10
            gap = server.requests[1].time - server.requests[0].time
            assert gap >= 0.5  # waited for the date, not a back-off step (0.2 s at most here)

    def test_bad_key_then_good_key(self, local_dir: Path) -> None:
        """401: tasks are kept; restarting with the right key delivers them."""
        with PhosphoTestServer() as server:
            child = Child(env_for(server.url, local_dir, 40, key="wrong", flush=10), stdin_wait=True).finish()
            assert "phospho rejected the API key" in child.stderr
            assert "wrong" not in child.stderr.replace("wrong key", "")
            assert server.tasks == [] and len(spooled(local_dir)) == 40
            replay(server, local_dir, 40)
            assert_books(40, server, local_dir)

    def test_413_splits(self, local_dir: Path) -> None:
        """A body limit smaller than a batch: batches are split, every task arrives."""
        with PhosphoTestServer(max_body_bytes=4000) as server:
            Child(env_for(server.url, local_dir, 60, flush=30), stdin_wait=True).finish()
            assert 413 in [r.status for r in server.requests]
            assert_books(60, server, local_dir)
            assert len(server.tasks) == 60

    def test_single_event_too_large_is_truncated(self, local_dir: Path) -> None:
        """One event over the body limit is truncated field by field, marked, and sent."""
        code = """
            import logging, phospho_logging
            p = phospho_logging.configure()
            logging.getLogger("phospho").info("t", extra={"input": "q", "output": "x" * 20000, "metadata": {"big": "y" * 9000}})
            assert p.flush(timeout=30)
        """
        with PhosphoTestServer(max_body_bytes=6000) as server:
            result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                                    env=child_env(env_for(server.url, local_dir, 0)), timeout=60)
            assert result.returncode == 0, result.stderr
            [task] = server.tasks
            assert "output" in task["metadata"]["phospho_logging_truncated"]
            assert len(task["output"]) < 6000

    def test_many_small_metadata_keys_fit_the_request_limit(self, local_dir: Path) -> None:
        """One event with 100,000 small metadata keys (1.5 MB) behind a 1 MB body limit:
        cut to max_batch_bytes before sending (metadata keys dropped, marked as truncation
        is), so the server takes it on the first request instead of refusing it."""
        code = """
            import logging, phospho_logging
            p = phospho_logging.configure(max_batch_bytes=1_000_000)
            metadata = {f"k{i}": i for i in range(100_000)}
            logging.getLogger("phospho").info("t", extra={"input": "q", "metadata": metadata})
            assert p.flush(timeout=30)
        """
        with PhosphoTestServer(max_body_bytes=1_000_000) as server:
            result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                                    env=child_env(env_for(server.url, local_dir, 0)), timeout=60)
            assert result.returncode == 0, result.stderr
            assert [r.status for r in server.requests] == [200]
            [task] = server.tasks
            [cut] = task["metadata"]["phospho_logging_truncated"]
            assert cut.startswith("metadata (") and cut.endswith("keys dropped)")
            assert "truncated" in task["metadata"]["phospho_logging_problems"]

    def test_400_is_split_like_422(self, local_dir: Path) -> None:
        """A server that answers 400 to one event whatever the batch: the batch is split
        until that event is isolated; it is rejected and counted, the others delivered,
        and nothing is spooled to be replayed (and refused) at every start."""
        with PhosphoTestServer() as server:
            server.fail_next(400, count=4, after=0)  # the whole batch, then the halves with the bad event
            child = Child(env_for(server.url, local_dir, 8, flush=30), stdin_wait=True).finish()
            stats = child.report["stats"]
            assert stats["spooled"] == 0 and spooled(local_dir) == [], stats
            assert stats["sent"] + stats["rejected"] == 8 and stats["rejected"] >= 1, stats
            assert len(server.tasks) == stats["sent"]

    def test_per_event_rejections(self, local_dir: Path) -> None:
        """Quota errors in a 200 reply: counted as rejected with the reason, not retried."""
        with PhosphoTestServer() as server:
            server.reject_next_events(5, "Quota exceeded")
            child = Child(env_for(server.url, local_dir, 20, flush=30), stdin_wait=True).finish()
            stats = child.report["stats"]
            assert stats["rejected"] == 5 and stats["rejected_by_reason"] == {"Quota exceeded": 5}
            assert len(server.requests) == 1  # not retried
            assert_books(20, server, local_dir, drops=5)


class TestCrash:
    def test_kill_9_with_durable(self, local_dir: Path) -> None:
        """durable=True: a batch being sent when the process is killed is delivered later."""
        with PhosphoTestServer() as server:
            server.hang_next(100)
            child = Child(env_for(server.url, local_dir, 50, durable=True, timeout=30, flush_interval=0.01),
                          stdin_wait=True)
            child.read_report()
            assert server.wait_for_requests(1, timeout=30)
            child.kill9()
        with PhosphoTestServer() as server:
            replay(server, local_dir, 50)
            assert_books(50, server, local_dir)

    DURABLE_STREAM = """
        import logging, sys, threading, phospho_logging
        phospho_logging.configure(durable=True)
        log = logging.getLogger("phospho")
        for i in range(500):
            log.info("t", extra={"input": f"q{i}"})
        threading.Event().wait(1.3)  # the scenario: the first batch is sent (and hangs) meanwhile
        for i in range(500, 1000):
            log.info("t", extra={"input": f"q{i}"})
        print("logged", flush=True)
        threading.Event().wait(60)  # killed before this ends
    """

    def test_kill_9_durable_with_a_hung_backend(self, local_dir: Path) -> None:
        """durable=True, a backend that never answers: 1,000 tasks logged (the second half
        while the first batch hangs), a kill -9 1.5 s later; the next start delivers all
        1,000: writing to the spool does not wait for sending."""
        with PhosphoTestServer() as server:
            server.hang_next(10**6)
            env = child_env({"PHOSPHO_API_KEY": server.api_key, "PHOSPHO_PROJECT_ID": server.project_id,
                             "PHOSPHO_BASE_URL": server.url, "PHOSPHO_LOCAL_DIR": str(local_dir)})
            proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(self.DURABLE_STREAM)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "logged"
                assert not _exited_within(proc, 1.5)  # the scenario's 1.5 s, then kill -9
            finally:
                proc.kill()
                proc.communicate(timeout=30)
            assert server.wait_for_requests(1, timeout=5)
        assert len(set(spooled(local_dir))) == 1000
        with PhosphoTestServer() as server:
            replay(server, local_dir, 1000)
            assert sorted(int(t["input"][1:]) for t in server.tasks) == list(range(1000))

    def test_kill_9_without_durable_loses_the_batch(self, local_dir: Path) -> None:
        """Without durable, the same kill loses the batch in flight: what durable is for."""
        with PhosphoTestServer() as server:
            server.hang_next(100)
            child = Child(env_for(server.url, local_dir, 50, timeout=30, flush_interval=0.01), stdin_wait=True)
            child.read_report()
            assert server.wait_for_requests(1, timeout=30)
            child.kill9()
        assert spooled(local_dir) == []


FORK_CHILD = """
import logging, os, sys, phospho_logging
phospho_logging.configure(flush_interval=60)
log = logging.getLogger("phospho")
log.info("t", extra={"input": "parent-before"})
pid = os.fork()
if pid == 0:
    for i in range(5):
        log.info("t", extra={"input": f"child-{i}"})
    sys.exit(0)  # atexit runs in the child: it drains its own queue
_, status = os.waitpid(pid, 0)
log.info("t", extra={"input": "parent-after"})
"""

MULTIPROCESSING_CHILD = """
import logging, multiprocessing, phospho_logging
phospho_logging.configure(flush_interval=60)
log = logging.getLogger("phospho")

def work(n):
    for i in range(3):
        log.info("t", extra={"input": f"worker{n}-{i}"})

if __name__ == "__main__":
    log.info("t", extra={"input": "main"})
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=work, args=(n,)) for n in range(3)]
    for p in procs: p.start()
    for p in procs: p.join(60)
"""

STRUCTLOG_FORK_CHILD = """
import os, structlog, phospho_logging
from phospho_logging.structlog import PhosphoProcessor
phospho_logging.configure(flush_interval=60)
structlog.configure(processors=[PhosphoProcessor(), structlog.processors.JSONRenderer()])
log = structlog.get_logger()
log.info("t", input="parent")
pid = os.fork()
if pid == 0:
    log.info("t", input="child")
    ok = phospho_logging.flush(timeout=20)
    print("child flush", ok, flush=True)
    os._exit(0)  # no exit hooks: the flush alone must have delivered it
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
class TestFork:
    def test_structlog_child_flush_delivers(self, local_dir: Path) -> None:
        """In a forked child, PhosphoProcessor's tasks start the child's own listener."""
        with PhosphoTestServer() as server:
            result = subprocess.run([sys.executable, "-c", textwrap.dedent(STRUCTLOG_FORK_CHILD)], capture_output=True,
                                    text=True, env=child_env(env_for(server.url, local_dir, 0)), timeout=120)
            assert result.returncode == 0, result.stderr
            assert "child flush True" in result.stdout, result.stdout + result.stderr
            assert sorted(t["input"] for t in server.tasks) == ["child", "parent"]

    @pytest.mark.parametrize("script, expected", [
        (FORK_CHILD, {"parent-before", "parent-after"} | {f"child-{i}" for i in range(5)}),
        (MULTIPROCESSING_CHILD, {"main"} | {f"worker{n}-{i}" for n in range(3) for i in range(3)}),
    ], ids=["os.fork", "multiprocessing"])
    def test_children_deliver_their_own_tasks_once(self, local_dir: Path, script: str, expected: set) -> None:
        """After fork the child ships its own tasks; the parent's are not sent twice."""
        with PhosphoTestServer() as server:
            result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                                    env=child_env(env_for(server.url, local_dir, 0)), timeout=120)
            assert result.returncode == 0, result.stderr
            assert {t["input"] for t in server.tasks} == expected
            assert len(server.tasks) == len(expected) and server.duplicates == 0
