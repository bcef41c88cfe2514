"""Feedback on a task (phospho's human evaluation): ``feedback()`` and its record form, shipped
by the same engine after its task, never blocking the caller; a task not ingested yet (404)
retried with back-off, then kept in the spool; offline in the local store, sent by ``push``."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Dict, List

import pytest
import requests
import structlog

import phospho_logging
from phospho_logging import ExportResult, WireEvent
from phospho_logging.cli import main
from phospho_logging.structlog import PhosphoProcessor
from phospho_logging.testing import InMemoryExporter, PhosphoTestServer, capture_tasks
from tests.conftest import said
from tests.test_cli import credentials
from tests.test_exit import run

log = logging.getLogger("phospho")


def feedback_requests(server: PhosphoTestServer) -> List[Any]:
    return [r for r in server.requests if r.path.endswith("/human-eval")]


def spooled_feedback(directory: Path) -> List[tuple]:
    conn = sqlite3.connect(str(directory / "tasks.sqlite3"))
    try:
        return conn.execute("SELECT destination, task_id, flag FROM feedback ORDER BY id").fetchall()
    finally:
        conn.close()


class TestOnline:
    def test_feedback_reaches_phospho_after_its_task(self, server: PhosphoTestServer, creds: dict,
                                                     tmp_path: Path) -> None:
        """The body the SDK sends, to /v2/tasks/{task_id}/human-eval, after the task's batch."""
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        task = phospho_logging.log(input="Is the sky blue?", output="Yes.")
        given = phospho_logging.feedback(task["task_id"], "success", notes="short and right", source="user@x.io")
        assert phospho_logging.flush(timeout=10)
        assert given["task_id"] == task["task_id"] and given["flag"] == "success"
        assert server.feedback == [{"task_id": task["task_id"], "human_eval": "success",
                                    "project_id": server.project_id, "source": "user@x.io",
                                    "notes": "short and right"}]
        paths = [r.path for r in server.requests]
        assert paths == [f"/v2/log/{server.project_id}", f"/v2/tasks/{task['task_id']}/human-eval"]
        counts = phospho_logging.stats()["feedback"]
        assert (counts["given"], counts["sent"], counts["waiting"], counts["dropped"]) == (1, 1, 0, 0)

    def test_the_caller_never_waits(self, server: PhosphoTestServer, creds: dict, tmp_path: Path) -> None:
        """feedback() returns before phospho could answer (every answer takes a second)."""
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        task = phospho_logging.log(input="q", output="a")
        assert phospho_logging.flush(timeout=10)
        server.delay = 1.0
        phospho_logging.feedback(task["task_id"], "failure")
        assert phospho_logging.stats()["feedback"]["sent"] == 0
        assert phospho_logging.flush(timeout=10)
        assert phospho_logging.stats()["feedback"]["sent"] == 1
        assert [f["human_eval"] for f in server.feedback] == ["failure"]

    def test_not_ingested_yet_is_retried_with_backoff(self, server: PhosphoTestServer, creds: dict,
                                                      tmp_path: Path) -> None:
        """phospho ingests in the background: 404 for a while, then accepted. flush() waits
        for the feedback as it does for tasks."""
        server.ingest_lag = 0.6
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        task = phospho_logging.log(input="q", output="a")
        phospho_logging.feedback(task["task_id"], "success")
        assert phospho_logging.flush(timeout=15)
        answers = [r.status for r in feedback_requests(server)]
        assert answers[-1] == 200 and set(answers[:-1]) == {404} and len(answers) >= 2
        gaps = [b.time - a.time for a, b in zip(feedback_requests(server), feedback_requests(server)[1:])]
        assert max(gaps) > 0.1  # backed off, not hammered
        assert len(answers) < 30
        assert phospho_logging.stats()["feedback"]["sent"] == 1

    def test_still_unknown_after_max_retry_time_is_spooled_then_sent(self, server: PhosphoTestServer,
                                                                      creds: dict, tmp_path: Path,
                                                                      diag: List[str]) -> None:
        """A task phospho does not know for max_retry_time: the feedback is kept in the
        spool, said once, and sent by the next run once the task is there."""
        phospho_logging.configure(local_dir=str(tmp_path), max_retry_time=0.5, **creds)
        phospho_logging.feedback("task_not_logged_yet", "failure", notes="late")
        assert phospho_logging.flush(timeout=10)
        counts = phospho_logging.stats()["feedback"]
        assert (counts["spooled"], counts["sent"], counts["waiting"]) == (1, 0, 0)
        assert spooled_feedback(tmp_path) == [(server.project_id, "task_not_logged_yet", "failure")]
        assert said(diag, "phospho does not have its task yet (HTTP 404)") == 1
        phospho_logging.shutdown(timeout=5)

        body = {"batched_log_events": [{"task_id": "task_not_logged_yet", "input": "q"}]}
        requests.post(f"{server.url}/v2/log/{server.project_id}", json=body, timeout=5,
                      headers={"Authorization": f"Bearer {server.api_key}"}).raise_for_status()
        phospho_logging.configure(local_dir=str(tmp_path), **creds)  # the next run replays its spool
        assert server.wait_for_feedback(1, timeout=15)
        assert server.feedback[0]["notes"] == "late"
        assert phospho_logging.flush(timeout=10)
        assert spooled_feedback(tmp_path) == []
        assert phospho_logging.stats()["feedback"]["replayed"] == 1

    def test_shutdown_keeps_what_it_cannot_send(self, server: PhosphoTestServer, creds: dict,
                                                tmp_path: Path) -> None:
        """Past the shutdown deadline, feedback still waiting for its task is in the spool,
        and push sends it once the task is there."""
        server.ingest_lag = 3600
        pipeline = phospho_logging.configure(local_dir=str(tmp_path), **creds)
        task = phospho_logging.log(input="q", output="a")
        phospho_logging.feedback(task["task_id"], "success")
        pipeline.shutdown(timeout=1.5)
        counts = pipeline.stats()["feedback"]
        assert (counts["spooled"], counts["waiting"], counts["dropped"]) == (1, 0, 0)
        assert len(feedback_requests(server)) >= 2
        server.ingest_lag = 0.0
        assert main(["push", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        assert [f["task_id"] for f in server.feedback] == [task["task_id"]]
        assert spooled_feedback(tmp_path) == []

    def test_at_exit_feedback_follows_its_task(self, server: PhosphoTestServer, tmp_path: Path) -> None:
        """A program that logs a task and its feedback and exits at once: both arrive (the
        exit drain retries the 404 while its deadline allows)."""
        server.ingest_lag = 0.3
        result = run("""
            import phospho_logging
            phospho_logging.configure()
            task = phospho_logging.log(input="q", output="a")
            phospho_logging.feedback(task["task_id"], "success")
        """, {"PHOSPHO_API_KEY": server.api_key, "PHOSPHO_PROJECT_ID": server.project_id,
              "PHOSPHO_BASE_URL": server.url, "PHOSPHO_LOCAL_DIR": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        assert len(server.task_ids) == 1
        assert [f["task_id"] for f in server.feedback] == server.task_ids
        assert result.stderr == ""

    def test_a_mistyped_task_id_does_not_hold_the_exit(self, server: PhosphoTestServer, tmp_path: Path) -> None:
        """Stopping, a 404 is retried for 2 s, then the feedback waits in the spool: a
        program with a 30 s shutdown_timeout still ends within seconds (the subprocess
        timeout fails the test otherwise)."""
        result = run("""
            import phospho_logging
            phospho_logging.configure(shutdown_timeout=30)
            phospho_logging.feedback("task_typo", "success")
        """, {"PHOSPHO_API_KEY": server.api_key, "PHOSPHO_PROJECT_ID": server.project_id,
              "PHOSPHO_BASE_URL": server.url, "PHOSPHO_LOCAL_DIR": str(tmp_path)}, timeout=12)
        assert result.returncode == 0, result.stderr
        assert spooled_feedback(tmp_path) == [(server.project_id, "task_typo", "success")]
        assert len(feedback_requests(server)) >= 2

    def test_record_form_and_structlog(self, server: PhosphoTestServer, creds: dict, tmp_path: Path) -> None:
        """extra={"task_id": ..., "flag": ...} without an input, and the same structlog event."""
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        task = phospho_logging.log(input="q", output="a")
        log.info("thumbs down", extra={"task_id": task["task_id"], "flag": "failure", "notes": "wrong answer"})
        structlog.configure(processors=[PhosphoProcessor(), structlog.processors.JSONRenderer()],
                            logger_factory=structlog.ReturnLoggerFactory())
        try:
            structlog.get_logger().info("thumbs up", task_id=task["task_id"], flag="success", source="system")
        finally:
            structlog.reset_defaults()
        assert phospho_logging.flush(timeout=10)
        assert [(f["human_eval"], f["notes"], f["source"]) for f in server.feedback] == [
            ("failure", "wrong answer", "user"), ("success", None, "system")]
        assert len(server.task_ids) == 1  # feedback records are not tasks


class TestMisbehavingServer:
    def test_exit_on_time_when_feedback_hangs(self, server: PhosphoTestServer, tmp_path: Path) -> None:
        """The human-eval endpoint never answers: the program still exits within its
        shutdown_timeout (the subprocess timeout fails the test otherwise), the task is
        delivered and the feedback kept in the spool."""
        server.hang_next(5, route="feedback")
        result = run("""
            import phospho_logging
            phospho_logging.configure(shutdown_timeout=2, timeout=30)
            task = phospho_logging.log(input="q", output="a")
            phospho_logging.feedback(task["task_id"], "success")
        """, {"PHOSPHO_API_KEY": server.api_key, "PHOSPHO_PROJECT_ID": server.project_id,
              "PHOSPHO_BASE_URL": server.url, "PHOSPHO_LOCAL_DIR": str(tmp_path)}, timeout=15)
        assert result.returncode == 0, result.stderr
        assert len(server.task_ids) == 1 and server.feedback == []
        assert spooled_feedback(tmp_path) == [(server.project_id, server.task_ids[0], "success")]
        assert "1 feedback(s) wait in the spool" in result.stderr

    def test_a_page_is_not_an_acknowledgement(self, server: PhosphoTestServer, creds: dict, tmp_path: Path) -> None:
        """A proxy answering 200 with HTML: not delivered; tried again, and sent once phospho answers."""
        server.answer_next(200, b"<html>login</html>", count=2, route="feedback")
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        task = phospho_logging.log(input="q", output="a")
        phospho_logging.feedback(task["task_id"], "failure")
        assert phospho_logging.flush(timeout=15)
        assert [f["task_id"] for f in server.feedback] == [task["task_id"]]
        assert [r.status for r in feedback_requests(server)] == [200, 200, 200]
        assert phospho_logging.stats()["feedback"]["sent"] == 1

    def test_a_hung_feedback_endpoint_does_not_starve_the_tasks(self, server: PhosphoTestServer, creds: dict,
                                                                 tmp_path: Path) -> None:
        """20 feedbacks waiting on an endpoint that never answers: a task logged then is
        still delivered promptly (feedback pauses after a request that got no answer)."""
        server.hang_next(1000, route="feedback")
        phospho_logging.configure(local_dir=str(tmp_path), timeout=1, flush_interval=0.1, **creds)
        task = phospho_logging.log(input="q", output="a")
        assert server.wait_for_tasks(1, timeout=5)
        for _ in range(20):
            phospho_logging.feedback(task["task_id"], "success")
        assert server.wait_for_requests(2, timeout=5)  # the first feedback request hangs
        phospho_logging.log(input="later")
        assert server.wait_for_tasks(2, timeout=5)

    def test_feedback_from_everywhere_at_exit_is_accounted_for(self, server: PhosphoTestServer,
                                                              tmp_path: Path) -> None:
        """The main thread (flushing with tiny timeouts), a signal handler and a daemon
        thread give thousands of feedbacks on a task phospho never ingests, then the
        program exits: each is in the spool, or counted as lost and said at exit."""
        server.ingest_lag = 3600
        result = run("""
            import signal, threading, time, phospho_logging
            phospho_logging.configure(shutdown_timeout=2)
            tid = phospho_logging.log(input="q", output="a")["task_id"]
            signal.signal(signal.SIGALRM, lambda *a: phospho_logging.feedback(tid, "success", notes="signal"))
            signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
            def spam():
                while True:
                    phospho_logging.feedback(tid, "failure", notes="thread")
                    time.sleep(0.001)
            threading.Thread(target=spam, daemon=True).start()
            stop = time.monotonic() + 1.0
            while time.monotonic() < stop:
                phospho_logging.feedback(tid, "success", notes="main")
                phospho_logging.flush(timeout=0.01)
            signal.setitimer(signal.ITIMER_REAL, 0)
        """, {"PHOSPHO_API_KEY": server.api_key, "PHOSPHO_PROJECT_ID": server.project_id,
              "PHOSPHO_BASE_URL": server.url, "PHOSPHO_LOCAL_DIR": str(tmp_path)}, timeout=30)
        assert result.returncode == 0, result.stderr
        spooled = len(spooled_feedback(tmp_path))
        assert spooled > 1000 and server.feedback == []
        said_lost = [line for line in result.stderr.splitlines() if "feedback(s) of this run could not be" in line]
        assert f"{spooled} feedback(s) wait in the spool" in result.stderr, result.stderr
        assert len(said_lost) <= 1  # the ones given after the exit drain, if any: counted and said

    def test_a_busy_feedback_endpoint_does_not_hold_the_tasks(self, server: PhosphoTestServer, creds: dict,
                                                               tmp_path: Path) -> None:
        """A feedback request that hangs for its timeout: tasks logged meanwhile still go."""
        server.hang_next(1, route="feedback")
        phospho_logging.configure(local_dir=str(tmp_path), timeout=1, **creds)
        task = phospho_logging.log(input="q", output="a")
        phospho_logging.feedback(task["task_id"], "success")
        for i in range(50):
            phospho_logging.log(input=f"later {i}")
        assert phospho_logging.flush(timeout=15)
        assert len(server.task_ids) == 51
        assert phospho_logging.stats()["feedback"]["sent"] == 1  # tried again after the timeout


class TestBadInput:
    def test_a_bad_flag_is_a_clear_error(self) -> None:
        with pytest.raises(ValueError, match="flag must be 'success' or 'failure', got 'good'"):
            phospho_logging.feedback("task_1", "good")
        with pytest.raises(ValueError, match="task_id must be a non-empty string"):
            phospho_logging.feedback("", "success")

    def test_only_real_strings_are_flags(self) -> None:
        """An object that merely compares equal to "success" is refused at the call; a str
        Enum is read as its text; notes whose str() raises do not make feedback() raise."""
        import enum

        class Loose:
            def __eq__(self, other: object) -> bool:
                return True

            __hash__ = object.__hash__

        class Verdict(str, enum.Enum):
            GOOD = "success"

        class Unprintable:
            def __str__(self) -> str:
                raise RuntimeError("no")

        with pytest.raises(ValueError, match="flag must be"):
            phospho_logging.feedback("task_1", Loose())  # type: ignore[arg-type]
        with capture_tasks() as tasks:
            phospho_logging.feedback("task_1", Verdict.GOOD, notes=Unprintable())  # type: ignore[arg-type]
        [given] = tasks.feedback
        assert (type(given["flag"]), given["flag"], given["notes"]) == (str, "success", "<unprintable Unprintable>")

    def test_dot_task_ids_reach_their_own_url(self, server: PhosphoTestServer, creds: dict, tmp_path: Path) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        for task_id in (".", "..", "a/b?c#d"):
            phospho_logging.log(input="q", task_id=task_id)
            phospho_logging.feedback(task_id, "success")
        assert phospho_logging.flush(timeout=10)
        assert sorted(f["task_id"] for f in server.feedback) == [".", "..", "a/b?c#d"]

    def test_a_bad_record_is_counted_and_said_once(self, server: PhosphoTestServer, creds: dict,
                                                    tmp_path: Path, diag: List[str]) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        for _ in range(3):
            log.info("rating", extra={"task_id": "task_1", "flag": 5})
        assert not phospho_logging.flush(timeout=10)  # something was lost: flush says so
        assert phospho_logging.stats()["feedback"]["dropped"] == 3
        assert said(diag, "flag must be 'success' or 'failure', got 5") == 1
        assert feedback_requests(server) == []

    def test_rejected_by_phospho_is_counted(self, server: PhosphoTestServer, creds: dict, tmp_path: Path) -> None:
        """A 422 is not retried: counted as rejected."""
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        task = phospho_logging.log(input="q", output="a")
        assert phospho_logging.flush(timeout=10)
        server.answer_next(200, b"")  # consumed by log requests only: feedback is answered normally
        body = json.dumps({"human_eval": "maybe"}).encode()
        answer = requests.post(f"{server.url}/v2/tasks/{task['task_id']}/human-eval", data=body, timeout=5,
                               headers={"Authorization": f"Bearer {server.api_key}"})
        assert answer.status_code == 422 and "human_eval" in answer.text

    def test_an_exporter_without_feedback_says_so(self, tmp_path: Path, diag: List[str]) -> None:
        class TasksOnly:
            def export(self, events: List[WireEvent], timeout: float) -> ExportResult:
                return ExportResult.delivered()

            def close(self) -> None:
                pass

        phospho_logging.configure(exporter=TasksOnly(), local_dir=str(tmp_path))
        phospho_logging.feedback("task_1", "success")
        assert not phospho_logging.flush(timeout=10)
        assert phospho_logging.stats()["feedback"]["dropped"] == 1
        assert said(diag, "has no export_feedback()") == 1


class TestOffline:
    def test_kept_in_the_local_store_and_pushed_after_the_tasks(self, server: PhosphoTestServer,
                                                                  tmp_path: Path) -> None:
        phospho_logging.configure(local_dir=str(tmp_path))
        task = phospho_logging.log(input="q", output="a")
        phospho_logging.feedback(task["task_id"], "success", notes="thanks")
        log.info("rating", extra={"task_id": task["task_id"], "flag": "failure"})
        assert phospho_logging.flush(timeout=10)
        assert spooled_feedback(tmp_path) == [("", task["task_id"], "success"), ("", task["task_id"], "failure")]
        phospho_logging.shutdown(timeout=5)

        assert main(["push", "--dry-run", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        assert main(["push", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        assert server.task_ids == [task["task_id"]]
        assert [(f["human_eval"], f["notes"]) for f in server.feedback] == [("success", "thanks"), ("failure", None)]
        paths = [r.path.split("/")[2] for r in server.requests]
        assert paths == ["log", "tasks", "tasks"]  # the task first
        assert main(["push", *credentials(server), "--local-dir", str(tmp_path)]) == 0  # nothing twice
        assert len(server.feedback) == 2

    def test_push_keeps_feedback_whose_task_is_unknown(self, server: PhosphoTestServer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
        phospho_logging.configure(local_dir=str(tmp_path))
        phospho_logging.feedback("task_elsewhere", "success")
        assert phospho_logging.flush(timeout=10)
        phospho_logging.shutdown(timeout=5)
        assert main(["push", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        assert "1 waiting for their task in phospho (a later push sends them)" in capsys.readouterr().out
        body = {"batched_log_events": [{"task_id": "task_elsewhere", "input": "q"}]}
        requests.post(f"{server.url}/v2/log/{server.project_id}", json=body, timeout=5,
                      headers={"Authorization": f"Bearer {server.api_key}"}).raise_for_status()
        assert main(["push", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        assert [f["task_id"] for f in server.feedback] == ["task_elsewhere"]


class TestCommandLine:
    def test_stats_counts_feedback_apart_from_tasks(self, server: PhosphoTestServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
        phospho_logging.configure(local_dir=str(tmp_path))
        task = phospho_logging.log(input="q", output="a")
        phospho_logging.feedback(task["task_id"], "success")
        phospho_logging.feedback(task["task_id"], "failure")
        assert phospho_logging.flush(timeout=10)
        phospho_logging.shutdown(timeout=5)
        assert main(["push", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        capsys.readouterr()
        assert main(["stats", "--local-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert f"pushed     1 to project {server.project_id}" in out  # the task, not the feedback
        assert f"feedback   2, 2 pushed to project {server.project_id}" in out

    def test_stats_shows_feedback_waiting_in_the_spool(self, server: PhosphoTestServer, creds: dict,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), max_retry_time=0.2, **creds)
        phospho_logging.feedback("task_typo", "failure")
        assert phospho_logging.flush(timeout=10)
        assert "task_typo" in phospho_logging.stats()["last_error"]
        phospho_logging.shutdown(timeout=5)
        assert main(["stats", "--local-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert f"spool        1 feedback(s) for project {server.project_id}" in out
        assert "spool        empty" not in out

    def test_offline_feedback_on_a_task_the_store_lacks_is_said(self, tmp_path: Path, diag: List[str]) -> None:
        phospho_logging.configure(local_dir=str(tmp_path))
        phospho_logging.feedback("task_typo", "success")
        assert phospho_logging.flush(timeout=10)
        assert said(diag, "names task task_typo, which is not in the local store") == 1
        assert spooled_feedback(tmp_path) == [("", "task_typo", "success")]

    def test_push_gives_up_a_week_later(self, server: PhosphoTestServer, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
        """Feedback whose task phospho still lacks 7 days after it was given: push stops
        trying it, and says so."""
        phospho_logging.configure(local_dir=str(tmp_path))
        phospho_logging.feedback("task_never", "success")
        assert phospho_logging.flush(timeout=10)
        phospho_logging.shutdown(timeout=5)
        conn = sqlite3.connect(str(tmp_path / "tasks.sqlite3"))
        with conn:
            conn.execute("UPDATE feedback SET created_at = created_at - 8 * 86400")
        conn.close()
        assert main(["push", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        assert "1 given up (their task was still unknown to phospho 7 days later)" in capsys.readouterr().out
        requests_before = len(feedback_requests(server))
        assert main(["push", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        assert len(feedback_requests(server)) == requests_before  # not tried again

    def test_push_stopped_by_an_error_says_feedback_is_left(self, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
        phospho_logging.configure(local_dir=str(tmp_path))
        task = phospho_logging.log(input="q", output="a")
        phospho_logging.feedback(task["task_id"], "success")
        assert phospho_logging.flush(timeout=10)
        phospho_logging.shutdown(timeout=5)
        with PhosphoTestServer() as other:
            assert main(["push", *credentials(other), "--api-key", "wrong-key", "--local-dir", str(tmp_path)]) == 3
        assert "feedback  1 not sent (sent after the tasks: run push again)" in capsys.readouterr().out


class TestTestingHelpers:
    def test_capture_tasks_collects_feedback_apart(self) -> None:
        with capture_tasks() as tasks:
            task = phospho_logging.log(input="q", output="a")
            phospho_logging.feedback(task["task_id"], "failure", notes="no")
        assert [t["task_id"] for t in tasks] == [task["task_id"]]
        assert [(f["task_id"], f["flag"], f["notes"]) for f in tasks.feedback] == [(task["task_id"], "failure", "no")]

    def test_capture_with_a_pipeline_configured(self, server: PhosphoTestServer, creds: dict,
                                                 tmp_path: Path) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), **creds)
        with capture_tasks() as tasks:
            phospho_logging.feedback("task_1", "success")
        assert [f["flag"] for f in tasks.feedback] == ["success"]
        assert phospho_logging.flush(timeout=10)
        assert feedback_requests(server) == []

    def test_in_memory_exporter(self) -> None:
        exporter = InMemoryExporter()
        phospho_logging.configure(exporter=exporter)
        task = phospho_logging.log(input="q", output="a")
        phospho_logging.feedback(task["task_id"], "success")
        assert phospho_logging.flush(timeout=10)
        assert [e["task_id"] for e in exporter.events] == [task["task_id"]]
        assert [(f["task_id"], f["flag"]) for f in exporter.feedback] == [(task["task_id"], "success")]

    def test_the_server_answers_404_until_the_task_exists(self, server: PhosphoTestServer) -> None:
        auth = {"Authorization": f"Bearer {server.api_key}"}
        url = f"{server.url}/v2/tasks/task_9/human-eval"
        body: Dict[str, Any] = {"human_eval": "success", "project_id": server.project_id, "source": "user",
                                "notes": None}
        assert requests.post(url, json=body, headers=auth, timeout=5).status_code == 404
        assert requests.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
        requests.post(f"{server.url}/v2/log/{server.project_id}", headers=auth, timeout=5,
                      json={"batched_log_events": [{"task_id": "task_9", "input": "q"}]}).raise_for_status()
        answer = requests.post(url, json=body, headers=auth, timeout=5)
        assert answer.status_code == 200 and answer.json()["flag"] == "success"
        assert server.feedback == [{"task_id": "task_9", **body}]
