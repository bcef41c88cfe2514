"""The phospho-logging command: check, tail, push, stats, and how errors are reported."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import phospho_logging
from phospho_logging._cli_push import Progress
from phospho_logging._spool import Spool
from phospho_logging.cli import format_task, main
from phospho_logging.testing import PhosphoTestServer
from tests.test_exit import child_env, server_env

log = logging.getLogger("phospho")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A local store with 6 tasks: 5 in sessions s-0/s-1, then one without output or session."""
    pipeline = phospho_logging.configure(local_dir=str(tmp_path))
    for i in range(5):
        log.info("t", extra={"input": f"question {i}", "output": f"answer {i}", "session_id": f"s-{i % 2}"})
    log.info("t", extra={"input": "no answer"})
    assert pipeline.flush(timeout=10)
    return tmp_path


def spool(directory: Path, project_id: str, *inputs: str, session_id: Any = None) -> List[str]:
    """Put one spooled event per input for ``project_id``; returns their task ids."""
    ids = [f"task_spool_{project_id}_{text.replace(' ', '_')}" for text in inputs]
    events = [json.dumps({"task_id": tid, "input": text, "output": "spooled answer", "session_id": session_id,
                          "client_created_at": 2_000_000_000}).encode() for tid, text in zip(ids, inputs)]
    target = Spool(directory / "tasks.sqlite3", project_id, 1000)
    try:
        target.put(ids, events)
    finally:
        target.close()
    return ids


def credentials(server: PhosphoTestServer) -> List[str]:
    return ["--api-key", server.api_key, "--project-id", server.project_id, "--base-url", server.url]


@pytest.fixture
def stopped_url() -> str:
    """The URL of a server that was stopped: its port refuses connections."""
    with PhosphoTestServer() as srv:
        return srv.url


def spool_rows(directory: Path) -> List[tuple]:
    conn = sqlite3.connect(str(directory / "tasks.sqlite3"))
    try:
        return conn.execute("SELECT destination, task_id FROM outbox ORDER BY id").fetchall()
    finally:
        conn.close()


class TestCheck:
    def test_ok_sends_one_empty_batch(self, server: PhosphoTestServer, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
        """check POSTs one empty batch with the Bearer key and says where tasks go."""
        assert main(["check", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        [request] = server.requests
        assert request.path == f"/v2/log/{server.project_id}" and request.n_events == 0
        assert json.loads(request.body) == {"batched_log_events": []}
        assert request.headers["Authorization"] == f"Bearer {server.api_key}"
        assert request.headers["User-Agent"].startswith("phospho-logging/")
        assert f"{server.url}/v2/log/{server.project_id}" in out and "ok (HTTP 200" in out
        assert server.tasks == []

    def test_netrc_does_not_replace_the_key(self, server: PhosphoTestServer, tmp_path: Path,
                                            netrc_for_loopback: Path) -> None:
        """A .netrc entry for the host does not replace the Bearer key check sends."""
        assert main(["check", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        assert server.requests[-1].headers["Authorization"] == f"Bearer {server.api_key}"

    def test_key_is_masked(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """Only the key's last 4 characters are printed, never the key."""
        key = "phk_live_0123456789abcdefa1b2"
        with PhosphoTestServer(api_key=key) as srv:
            assert main(["check", *credentials(srv), "--local-dir", str(tmp_path)]) == 0
            assert main(["check", "--api-key", key + "x", "--project-id", srv.project_id, "--base-url", srv.url,
                         "--local-dir", str(tmp_path)]) == 3
        captured = capsys.readouterr()
        assert "…a1b2" in captured.out and "…1b2x" in captured.out
        assert "0123456789" not in captured.out + captured.err

    def test_short_key_fully_hidden(self, server: PhosphoTestServer, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
        """A key under 12 characters shows only its length."""
        assert main(["check", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "(hidden, 8 characters)" in out and server.api_key not in out

    def test_environment_variables(self, server: PhosphoTestServer, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        """Credentials come from PHOSPHO_* variables, and check says so."""
        for name, value in server_env(server).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("PHOSPHO_LOCAL_DIR", str(tmp_path))
        assert main(["check"]) == 0
        out = capsys.readouterr().out
        assert "($PHOSPHO_API_KEY)" in out and "($PHOSPHO_BASE_URL)" in out and str(tmp_path) in out
        assert len(server.requests) == 1

    def test_offline_with_a_writable_store_exit_0(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """Without a key and project (offline, a supported mode) and a writable local
        directory: exit 0, a line saying tasks are kept locally and how to send them."""
        assert main(["check", "--local-dir", str(tmp_path)]) == 0
        captured = capsys.readouterr()
        assert "(not set)" in captured.out and "local store" in captured.out
        assert "offline: the local store can be written" in captured.out and "PHOSPHO_API_KEY" in captured.out
        assert captured.err == ""

    @pytest.mark.parametrize("online", ["offline", "online", "online, phospho unreachable"])
    def test_unwritable_local_dir_exit_8(self, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         server: PhosphoTestServer, stopped_url: str, online: str) -> None:
        """A local directory that cannot be written (a file where it should be): exit 8,
        naming the directory and what to set, offline and online (the spool) alike, said
        before the network is tried (an unreachable phospho is when the spool matters)."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        args = ["check", "--local-dir", str(blocker / "store")]
        if online != "offline":
            args += credentials(server)
        if online == "online, phospho unreachable":
            args += ["--base-url", stopped_url]
        assert main(args) == 8
        err = capsys.readouterr().err
        assert str(blocker / "store") in err and "PHOSPHO_LOCAL_DIR" in err and err.count("\n") == 1

    @pytest.mark.parametrize("what", ["symlink", "fifo"])
    def test_a_store_path_the_app_refuses_exit_8(self, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 what: str) -> None:
        """Offline, a link or a FIFO at the store's path: the app keeps nothing there, so
        check says so (exit 8) instead of "can be written"."""
        path = tmp_path / "tasks.sqlite3"
        if what == "symlink":
            path.symlink_to(tmp_path / "elsewhere.db")
        else:
            os.mkfifo(path)
        assert main(["check", "--local-dir", str(tmp_path)]) == 8
        captured = capsys.readouterr()
        assert "can be written" not in captured.out and str(path) in captured.err

    def test_half_the_credentials_exit_2(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """A key without a project id is a configuration error (exit 2) naming what is missing."""
        assert main(["check", "--api-key", "k" * 20, "--local-dir", str(tmp_path)]) == 2
        assert "PHOSPHO_PROJECT_ID" in capsys.readouterr().err

    def test_plain_http_to_a_remote_host_exit_2(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """The key is never sent over plain http to a non-loopback host: exit 2 before any request."""
        assert main(["check", "--api-key", "k" * 20, "--project-id", "p", "--base-url", "http://phospho.example",
                     "--local-dir", str(tmp_path)]) == 2
        assert "plain http" in capsys.readouterr().err

    def test_bad_key_exit_3(self, server: PhosphoTestServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """A key the server refuses (401): exit 3, "phospho rejected the API key"."""
        assert main(["check", *credentials(server), "--api-key", "wrong-key", "--local-dir", str(tmp_path)]) == 3
        err = capsys.readouterr().err
        assert "phospho rejected the API key (HTTP 401" in err and err.count("\n") == 1

    def test_forbidden_exit_3(self, server: PhosphoTestServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """403 (project of another organisation) is a key problem too: exit 3."""
        server.fail_next(403)
        assert main(["check", *credentials(server), "--local-dir", str(tmp_path)]) == 3
        assert "HTTP 403" in capsys.readouterr().err

    def test_unknown_project_exit_4(self, server: PhosphoTestServer, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
        """A project the server does not know (404): exit 4, naming the project."""
        assert main(["check", *credentials(server), "--project-id", "nope", "--local-dir", str(tmp_path)]) == 4
        assert "unknown project 'nope'" in capsys.readouterr().err

    def test_unreachable_exit_5(self, stopped_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """Nothing listening at base_url: exit 5, one line."""
        assert main(["check", "--api-key", "k" * 20, "--project-id", "p", "--base-url", stopped_url,
                     "--local-dir", str(tmp_path)]) == 5
        err = capsys.readouterr().err
        assert "cannot reach" in err and "Traceback" not in err and err.count("\n") == 1
        assert "refused the connection" in err and err.count("check base_url") == 1  # the hint once

    def test_timeout_exit_5(self, server: PhosphoTestServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """A server that never answers: exit 5 after --timeout."""
        server.hang_next()
        assert main(["check", *credentials(server), "--timeout", "0.3", "--local-dir", str(tmp_path)]) == 5
        assert "no answer" in capsys.readouterr().err

    def test_tls_error_exit_6(self, server: PhosphoTestServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """https to a plain-http port fails the TLS handshake: exit 6."""
        url = server.url.replace("http://", "https://")
        assert main(["check", *credentials(server), "--base-url", url, "--local-dir", str(tmp_path)]) == 6
        assert "TLS error" in capsys.readouterr().err

    def test_other_status_exit_7_without_retry(self, server: PhosphoTestServer, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
        """A 500 answer: exit 7 with the status, after a single request."""
        server.fail_next(500, count=3)
        assert main(["check", *credentials(server), "--local-dir", str(tmp_path)]) == 7
        assert "HTTP 500" in capsys.readouterr().err
        assert len(server.requests) == 1

    @pytest.mark.parametrize("retry_after", ["Mon, 01 Jan 2000 00:00:00 -0000",
                                             "Mon, 01 Jan 99999999999999999999 00:00:00 GMT", "9" * 400])
    def test_a_hostile_retry_after_is_still_a_status(self, server: PhosphoTestServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture, retry_after: str) -> None:
        """A 503 whose Retry-After is a date without a zone, a date out of range or a number
        too large for a float: still "another HTTP status" (exit 7), not a crash."""
        server.fail_next(503, count=3, retry_after=retry_after)
        assert main(["check", *credentials(server), "--local-dir", str(tmp_path)]) == 7
        assert "HTTP 503" in capsys.readouterr().err

    def test_a_page_that_is_not_the_api_exit_5(self, server: PhosphoTestServer, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
        """A proxy's HTML page with status 200 is not the API answering: exit 5, said so."""
        server.answer_next(200, b"<html><body>Sign in to the Wi-Fi</body></html>")
        assert main(["check", *credentials(server), "--local-dir", str(tmp_path)]) == 5
        assert "not with the ingestion API's JSON (text/html" in capsys.readouterr().err

    def test_a_dripping_answer_ends_at_the_timeout_exit_5(self, server: PhosphoTestServer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
        """An answer dripping a byte every 0.4 s: check gives up at its --timeout (the
        whole answer, not each socket read), exit 5."""
        server.answer_next(200, b'{"logged_events": []}', content_type="application/json", drip=0.4)
        assert main(["check", *credentials(server), "--timeout", "1", "--local-dir", str(tmp_path)]) == 5
        assert "answered too slowly" in capsys.readouterr().err

    def test_spooled_tasks_are_mentioned(self, server: PhosphoTestServer, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
        """check says how many tasks of this project wait in the spool, and how to send them."""
        spool(tmp_path, server.project_id, "a", "b")
        assert main(["check", *credentials(server), "--local-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "2 task(s) waiting for this project" in out and "phospho-logging push" in out

    def test_module_entry_point(self, server: PhosphoTestServer, tmp_path: Path) -> None:
        """python -m phospho_logging check reads the environment and exits 0."""
        env = child_env(dict(server_env(server), PHOSPHO_LOCAL_DIR=str(tmp_path)))
        result = subprocess.run([sys.executable, "-m", "phospho_logging", "check"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "ok (HTTP 200" in result.stdout and len(server.requests) == 1


class TestTail:
    def test_readable_lines(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """tail prints the latest tasks, oldest first, one readable line each."""
        assert main(["tail", "-n", "3", "--local-dir", str(store)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 3
        assert "question 3" in lines[0] and "answer 3" in lines[0] and "s-1" in lines[0]
        assert "no answer" in lines[2] and "(no output)" in lines[2]
        assert "[spooled]" not in "".join(lines)

    def test_json_lines(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """--json prints one wire-format event per line, marked "_source": "store"."""
        assert main(["tail", "--json", "--local-dir", str(store)]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [e["input"] for e in events] == [f"question {i}" for i in range(5)] + ["no answer"]
        assert all(e["task_id"].startswith("task_") and e["_source"] == "store" for e in events)

    def test_session_filter(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """--session keeps one session's tasks, in the store and in the spool."""
        spool(store, "p1", "spooled s-0", session_id="s-0")
        spool(store, "p1", "spooled other", session_id="s-9")
        assert main(["tail", "--json", "--session", "s-0", "--local-dir", str(store)]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [e["input"] for e in events] == ["question 0", "question 2", "question 4", "spooled s-0"]

    def test_spool_rows_are_marked(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """Spooled tasks appear with a [spooled] column; store tasks have it blank."""
        spool(store, "p1", "waiting 1", "waiting 2")
        assert main(["tail", "-n", "4", "--local-dir", str(store)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 4
        assert "question 4" in lines[0] and "[spooled]" not in lines[0]
        assert "waiting 1" in lines[2] and "[spooled]" in lines[2] and "[spooled]" in lines[3]

    def test_spool_rows_in_json(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """--json marks spooled events with "_source": "spool" and their "_project"."""
        ids = spool(store, "p1", "waiting")
        assert main(["tail", "--json", "-n", "2", "--local-dir", str(store)]) == 0
        first, last = (json.loads(line) for line in capsys.readouterr().out.splitlines())
        assert first["_source"] == "store" and "_project" not in first
        assert last == {**last, "task_id": ids[0], "_source": "spool", "_project": "p1"}

    @pytest.mark.parametrize("where", ["under a file", "in /proc"])
    def test_store_that_cannot_be_made_is_said(self, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               where: str) -> None:
        """No store, and a local directory where none can be made (also as root, whom
        permission bits do not stop): exit 8 saying why, not "log a task first"."""
        if where == "under a file":
            blocker = tmp_path / "file"
            blocker.write_text("not a directory")
            local_dir = blocker / "store"
        else:
            if not os.path.isdir("/proc/self"):
                pytest.skip("no /proc here")
            local_dir = Path("/proc/phospho-logging-nope")
        for command in ("tail", "stats"):
            assert main([command, "--local-dir", str(local_dir)]) == 8
            err = capsys.readouterr().err
            assert "cannot make one" in err and "log a task first" not in err
        if where == "under a file":
            assert "is not a directory" in err

    def test_missing_store_is_one_line(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """No store yet: a one-line explanation and exit code 1, no traceback."""
        assert main(["tail", "--local-dir", str(tmp_path / "none")]) == 1
        err = capsys.readouterr().err
        assert "no local store" in err and "Traceback" not in err and err.count("\n") == 1
        assert "examples/" not in err  # a hint that works from a wheel too (no examples there)

    def test_lines_fit_the_width(self) -> None:
        """Long input and output are cut to the terminal width."""
        event = {"client_created_at": 0, "session_id": "s", "input": "q" * 500, "output": "a\n" * 300}
        for tag in (None, "", "[spooled]"):
            line = format_task(event, 80, tag)
            assert len(line) <= 80 and "\n" not in line

    def test_follow_picks_up_new_tasks(self, store: Path) -> None:
        """tail -f prints a task logged after it started, and Ctrl-C ends it with exit 0."""
        command = [sys.executable, "-m", "phospho_logging", "tail", "-f", "--json", "-n", "1",
                   "--max-seconds", "60", "--local-dir", str(store)]
        proc = subprocess.Popen(command, env=child_env({}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout is not None
            # readline is bounded: the follower ends by itself after --max-seconds.
            assert json.loads(proc.stdout.readline())["input"] == "no answer"
            log.info("t", extra={"input": "late question", "output": "late answer", "session_id": "late"})
            assert phospho_logging.flush(timeout=10)
            assert json.loads(proc.stdout.readline())["input"] == "late question"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert out == "" and "Traceback" not in err
        finally:
            proc.kill()
            proc.communicate()

    def test_follow_is_bounded(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """tail -f on a store that does not exist yet waits for it, within --max-seconds."""
        assert main(["tail", "-f", "--max-seconds", "0.2", "--local-dir", str(tmp_path / "later")]) == 0
        assert capsys.readouterr().out == ""

    def test_module_entry_point(self, store: Path) -> None:
        """python -m phospho_logging tail works like the console script."""
        result = subprocess.run([sys.executable, "-m", "phospho_logging", "tail", "-n", "1", "--local-dir", str(store)],
                                env=child_env({}), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "no answer" in result.stdout


class TestPush:
    def test_sends_store_and_spool(self, store: Path, server: PhosphoTestServer,
                                   capsys: pytest.CaptureFixture) -> None:
        """push sends every store task and this project's spool rows, keeping task ids; others stay."""
        spooled = spool(store, server.project_id, "spooled 1", "spooled 2")
        other = spool(store, "other-project", "not ours")
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        out = capsys.readouterr().out
        assert len(server.tasks) == 8 and server.duplicates == 0
        assert set(spooled) <= set(server.task_ids) and not set(other) & set(server.task_ids)
        assert spool_rows(store) == [("other-project", other[0])]
        assert "sent      8  (6 from the local store, 2 from the spool)" in out and "failed    0" in out

    def test_second_push_sends_nothing(self, store: Path, server: PhosphoTestServer,
                                       capsys: pytest.CaptureFixture) -> None:
        """Pushed tasks are remembered: a second push makes no request and reports them skipped."""
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        requests = len(server.requests)
        capsys.readouterr()
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        out = capsys.readouterr().out
        assert len(server.tasks) == 6 and len(server.requests) == requests
        assert "sent      0" in out and "skipped   6" in out

    def test_batches_follow_the_options(self, store: Path, server: PhosphoTestServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """PHOSPHO_MAX_BATCH_SIZE sets the batch size."""
        monkeypatch.setenv("PHOSPHO_MAX_BATCH_SIZE", "4")
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        assert [r.n_events for r in server.requests] == [4, 2]

    def test_resumes_after_a_failure_midway(self, store: Path, server: PhosphoTestServer,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        """A 401 at the second batch stops push (exit 3); the next push sends only the rest."""
        monkeypatch.setenv("PHOSPHO_MAX_BATCH_SIZE", "2")
        server.fail_next(401, after=1)  # the second request, exactly
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 3
        captured = capsys.readouterr()
        assert "sent      2" in captured.out and "failed    4" in captured.out
        assert "phospho rejected the API key" in captured.err and "run push again" in captured.err
        assert len(server.tasks) == 2
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        out = capsys.readouterr().out
        assert "sent      4" in out and "skipped   2" in out
        assert len(server.tasks) == 6 and server.duplicates == 0

    def test_retries_a_dropped_connection(self, store: Path, server: PhosphoTestServer,
                                          capsys: pytest.CaptureFixture) -> None:
        """A connection closed without an answer is retried; everything arrives once."""
        server.close_next()
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        assert len(server.tasks) == 6 and len(server.requests) == 2
        assert "retries   1" in capsys.readouterr().out

    def test_unreachable_exit_5(self, store: Path, stopped_url: str, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
        """Nothing listening: push retries max_attempts times, then exits 5 with the counts."""
        monkeypatch.setenv("PHOSPHO_MAX_ATTEMPTS", "2")
        assert main(["push", "--api-key", "k" * 20, "--project-id", "p", "--base-url", stopped_url,
                     "--local-dir", str(store)]) == 5
        captured = capsys.readouterr()
        assert "failed    6" in captured.out and "cannot reach" in captured.err

    def test_bad_key_exit_3(self, store: Path, server: PhosphoTestServer, capsys: pytest.CaptureFixture) -> None:
        """A refused key stops push at once with exit 3; nothing is marked as pushed."""
        assert main(["push", *credentials(server), "--api-key", "wrong-key", "--local-dir", str(store)]) == 3
        assert "phospho rejected the API key" in capsys.readouterr().err
        assert len(server.requests) == 1
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        assert len(server.tasks) == 6

    def test_unknown_project_exit_4(self, store: Path, server: PhosphoTestServer) -> None:
        """An unknown project stops push with exit 4."""
        assert main(["push", *credentials(server), "--project-id", "nope", "--local-dir", str(store)]) == 4

    def test_rejections_are_reported_and_retried(self, store: Path, server: PhosphoTestServer,
                                                 capsys: pytest.CaptureFixture) -> None:
        """Per-event rejections are listed with their reason, and tried again by the next push."""
        server.reject_next_events(2, "Quota exceeded")
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        out = capsys.readouterr().out
        assert "rejected  2" in out and "2 x Quota exceeded" in out and len(server.tasks) == 4
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        assert "sent      2" in capsys.readouterr().out and len(server.tasks) == 6

    def test_dry_run_makes_no_request(self, store: Path, server: PhosphoTestServer,
                                      capsys: pytest.CaptureFixture) -> None:
        """--dry-run counts what would be sent and touches neither the network nor the store."""
        spool(store, server.project_id, "spooled")
        assert main(["push", "--dry-run", *credentials(server), "--local-dir", str(store)]) == 0
        out = capsys.readouterr().out
        assert "would send 7 task(s)" in out and "6 from the local store" in out and "1 from the spool" in out
        assert server.requests == []
        assert main(["push", "--dry-run", "--local-dir", str(store)]) == 0  # works without credentials too

    def test_no_credentials_exit_2(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """push without a key and project: exit 2 and how to set them."""
        assert main(["push", "--local-dir", str(store)]) == 2
        assert "PHOSPHO_API_KEY" in capsys.readouterr().err

    def test_progress_bar_on_a_terminal(self) -> None:
        """On a terminal the progress is a bar redrawn in place, ended by a newline."""

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        stream = Terminal()
        progress = Progress(stream, 6)
        progress.update(3)
        progress.close()
        assert stream.getvalue() == "\r[" + "#" * 15 + "." * 15 + "] 3/6 tasks  50%\n"

    def test_progress_lines_elsewhere(self) -> None:
        """Elsewhere (a pipe, CI) progress is a plain line at most every few seconds."""
        stream = io.StringIO()
        progress = Progress(stream, 6, every=0.0)
        progress.update(3)
        progress.close()
        assert stream.getvalue() == "push: 3/6 tasks\n"
        quiet = io.StringIO()
        Progress(quiet, 6).update(3)
        assert quiet.getvalue() == ""


class TestStats:
    def test_numbers(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """stats --json counts store tasks, sessions, spool rows per project and disk bytes."""
        spool(store, "p1", "a", "b")
        spool(store, "p2", "c")
        assert main(["stats", "--json", "--local-dir", str(store)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["store"]["tasks"] == 6 and info["store"]["sessions"] == 2
        assert info["store"]["oldest"] <= info["store"]["newest"]
        assert {p: s["tasks"] for p, s in info["spool"].items()} == {"p1": 2, "p2": 1}
        files = info["disk"]["files"]
        assert "tasks.sqlite3" in files and "tasks.sqlite3-wal" in files
        assert info["disk"]["total"] == sum(files.values()) > 0

    def test_readable(self, store: Path, server: PhosphoTestServer, capsys: pytest.CaptureFixture) -> None:
        """The readable form shows counts, times, pushed tasks, the spool and the size."""
        spool(store, "p1", "a", "b")
        assert main(["push", *credentials(server), "--local-dir", str(store)]) == 0
        capsys.readouterr()
        assert main(["stats", "--local-dir", str(store)]) == 0
        out = capsys.readouterr().out
        assert "6 in 2 session(s)" in out and f"6 to project {server.project_id}" in out
        assert "2 task(s) for project p1" in out and "disk" in out and "KiB" in out

    def test_missing_store(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """No store: one line, exit 1."""
        assert main(["stats", "--local-dir", str(tmp_path)]) == 1
        assert "no local store" in capsys.readouterr().err


class TestErrors:
    @pytest.fixture
    def damaged(self, tmp_path: Path) -> Iterator[Path]:
        (tmp_path / "tasks.sqlite3").write_bytes(b"this is not a database" * 100)
        yield tmp_path

    def test_one_line_without_debug(self, damaged: Path, capsys: pytest.CaptureFixture) -> None:
        """A file that is not a database: one line on stderr, exit 1, no traceback."""
        assert main(["stats", "--local-dir", str(damaged)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("phospho-logging: cannot read the local store") and err.count("\n") == 1

    def test_traceback_with_debug(self, damaged: Path, capsys: pytest.CaptureFixture) -> None:
        """--debug (before or after the command) adds the traceback."""
        assert main(["--debug", "tail", "--local-dir", str(damaged)]) == 1
        assert "Traceback" in capsys.readouterr().err
        assert main(["tail", "--debug", "--local-dir", str(damaged)]) == 1
        assert "Traceback" in capsys.readouterr().err

    def test_unexpected_error(self, store: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture) -> None:
        """A bug is one line naming the exception (exit 1); --debug lets it raise."""
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr("phospho_logging.cli._read", broken)
        assert main(["tail", "--local-dir", str(store)]) == 1
        assert capsys.readouterr().err == "phospho-logging: RuntimeError: boom (run with --debug for the traceback)\n"
        with pytest.raises(RuntimeError):
            main(["--debug", "tail", "--local-dir", str(store)])

    def test_common_options_before_the_command(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """--local-dir works before the command as well as after it."""
        assert main(["--local-dir", str(store), "tail", "-n", "1"]) == 0
        assert "no answer" in capsys.readouterr().out

    def test_usage_errors_exit_2(self, capsys: pytest.CaptureFixture) -> None:
        """A bad argument or no command: usage on stderr, exit 2."""
        assert main(["tail", "-n", "many"]) == 2
        assert main([]) == 2
        assert "usage:" in capsys.readouterr().err


class TestConsoleScript:
    def test_installed_command(self, store: Path) -> None:
        """The phospho-logging console script is installed with the package and runs tail."""
        import shutil
        import sysconfig

        script = shutil.which("phospho-logging", path=sysconfig.get_path("scripts"))
        if script is None:
            pytest.skip("the package is not installed in this environment (run the README's set-up command)")
        result = subprocess.run([script, "tail", "-n", "1", "--json", "--local-dir", str(store)],
                                env=child_env({}), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["input"] == "no answer"


class TestInstalledMetadata:
    def test_pip_show_has_an_author_and_links(self) -> None:
        """What `pip show` and a package index show: an author and project links."""
        from importlib.metadata import metadata

        meta = metadata("phospho-logging")
        assert meta["Author"]
        assert any(url.endswith("https://phospho.ai") for url in meta.get_all("Project-URL") or [])
