"""What a newcomer reads: clear errors, one message per cause, nothing confusing at exit."""

from __future__ import annotations

import logging
import logging.config
import subprocess
import sys
import textwrap
from typing import Any, List

import pytest

import phospho_logging
from phospho_logging.testing import PhosphoTestServer
from tests.conftest import said
from tests.test_exit import child_env


def run(code: str, env: dict) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=child_env(env), capture_output=True,
                          text=True, timeout=60)


class TestMessages:
    @pytest.mark.parametrize("call", ["phospho_logging.configure(max_batch_sise=10)",
                                      "phospho_logging.PhosphoHandler(flush_intervall=2)",
                                      "phospho_logging.configure(max_batch_size='ten')"])
    def test_bad_option_is_one_clear_error(self, call: str, tmp_path) -> None:
        """A typo or a bad value: one clear exception (with a suggestion), nothing more at exit."""
        result = run(f"""
            import phospho_logging
            try:
                {call}
            except (TypeError, ValueError) as exc:
                print("error:", exc)
        """, {"PHOSPHO_LOCAL_DIR": str(tmp_path)})
        assert result.returncode == 0
        assert result.stdout.startswith("error: ")
        if "sise" in call:
            assert "did you mean max_batch_size?" in result.stdout
        if "intervall" in call:
            assert "did you mean flush_interval?" in result.stdout
        assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr

    def test_root_at_warning_is_said(self, tmp_path, diag: List[str]) -> None:
        """configure(logger="") with the root logger at WARNING says info() tasks are ignored."""
        logging.getLogger().setLevel(logging.WARNING)
        phospho_logging.configure(logger="", local_dir=str(tmp_path))
        assert any("root logger's level is WARNING" in m for m in diag)

    def test_bad_key_message_first_with_a_hint(self, server: PhosphoTestServer, creds: dict, diag: List[str]) -> None:
        """A 401 says what is wrong and how to check it, not that the endpoint keeps failing."""
        pipeline = phospho_logging.configure(**dict(creds, api_key="nope"))
        logging.getLogger("phospho").info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10)
        assert "phospho rejected the API key" in diag[0] and "phospho-logging check" in diag[0]
        assert not any("keeps failing" in m for m in diag)

    def test_output_without_input_said_once_per_logger(self, tmp_path) -> None:
        """A record with an output (or a session_id) but no input is not a task: one line
        per logger says so and how to fix it; records of neither kind say nothing."""
        result = run("""
            import logging, phospho_logging
            logging.getLogger().setLevel(logging.INFO)
            p = phospho_logging.configure(logger="")
            for _ in range(3):
                logging.getLogger("app.a").info("done", extra={"output": "4"})
            logging.getLogger("app.b").info("done", extra={"session_id": "s-1"})
            logging.getLogger("app.c").info("plain")
            assert p.flush(timeout=10) and p.stats()["sent"] == 0
        """, {"PHOSPHO_LOCAL_DIR": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if "but no 'input'" in line]
        assert len(said) == 2 and "'app.a'" in said[0] and "'app.b'" in said[1], result.stderr
        assert "extra={'input': ...}" in said[0]

    def test_a_mistyped_host_is_named_as_such(self, tmp_path, diag: List[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """A host name the resolver does not know: the message says DNS, names the host and
        what to check, not only "ConnectionError". (The resolver's answer is simulated: no
        test may query a real DNS server.)"""
        import socket

        real = socket.getaddrinfo

        def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "api.phospho-typo.example":
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return real(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        pipeline = phospho_logging.configure(api_key="k", project_id="p", base_url="https://api.phospho-typo.example",
                                             local_dir=str(tmp_path), max_attempts=1)
        logging.getLogger("phospho").info("t", extra={"input": "q"})
        pipeline.flush(timeout=10)
        error = pipeline.stats()["last_error"] or ""
        assert "api.phospho-typo.example could not be resolved (DNS" in error, error
        assert "PHOSPHO_BASE_URL" in error and "not known" in error  # a short key is not hidden inside words
        assert said(diag, "kept in the spool") and any("could not be resolved" in m for m in diag)

    def test_refused_and_repeated_failures_in_plain_words(self, tmp_path, diag: List[str]) -> None:
        """Connection refused names the host and what to check; failing batches in a row
        say what happens to new tasks, without internal words (endpoint, circuit)."""
        with PhosphoTestServer() as gone:
            url = gone.url
        pipeline = phospho_logging.configure(api_key="k", project_id="p", base_url=url, local_dir=str(tmp_path),
                                             max_attempts=1)
        for _ in range(4):
            logging.getLogger("phospho").info("t", extra={"input": "q"})
            pipeline.flush(timeout=10)
        assert said(diag, "failed several times in a row")
        assert any("127.0.0.1 refused the connection" in m and "check base_url" in m for m in diag), diag
        assert not any("endpoint" in m or "circuit" in m or "resting" in m for m in diag), diag

    def test_exit_counts_what_the_capped_spool_holds(self, tmp_path) -> None:
        """500 tasks with the backend down and max_spool_tasks=100: exit says the 100 that
        wait (not a running total of 500) and the 400 dropped to keep the cap."""
        result = run("""
            import logging, phospho_logging
            phospho_logging.configure(max_spool_tasks=100, max_batch_size=50, max_attempts=1)
            for i in range(500):
                logging.getLogger("phospho").info("t", extra={"input": str(i)})
        """, {"PHOSPHO_API_KEY": "k", "PHOSPHO_PROJECT_ID": "p", "PHOSPHO_BASE_URL": "http://127.0.0.1:9",
              "PHOSPHO_LOCAL_DIR": str(tmp_path), "PHOSPHO_SHUTDOWN_TIMEOUT": "2"})
        assert result.returncode == 0, result.stderr
        assert "100 task(s) wait in the spool" in result.stderr, result.stderr
        assert "400 spooled task(s) were dropped, oldest first, to keep the spool within max_spool_tasks=100" \
            in result.stderr, result.stderr

    def test_spool_total_said_at_exit(self, tmp_path) -> None:
        """With the backend down, exit says how many tasks wait in the spool and how to send them."""
        with PhosphoTestServer() as gone:
            url = gone.url
        result = run("""
            import logging, phospho_logging
            phospho_logging.configure()
            for i in range(250):
                logging.getLogger("phospho").info("t", extra={"input": str(i)})
        """, {"PHOSPHO_API_KEY": "k", "PHOSPHO_PROJECT_ID": "p", "PHOSPHO_BASE_URL": url,
              "PHOSPHO_LOCAL_DIR": str(tmp_path), "PHOSPHO_SHUTDOWN_TIMEOUT": "2"})
        assert result.returncode == 0, result.stderr
        assert "250 task(s) wait in the spool" in result.stderr, result.stderr
        assert "phospho-logging push" in result.stderr


class TestModuleFunctionsWithDictConfig:
    def test_flush_and_stats_find_dictconfig_handlers(self, server: PhosphoTestServer, creds: dict) -> None:
        """Without configure(), phospho_logging.flush() and stats() act on dictConfig's handlers."""
        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"phospho": {"class": "phospho_logging.PhosphoHandler", **creds}},
            "loggers": {"dc_app": {"level": "INFO", "handlers": ["phospho"], "propagate": False}},
        }
        logging.config.dictConfig(config)
        try:
            for i in range(3):
                logging.getLogger("dc_app").info("t", extra={"input": f"q{i}"})
            assert phospho_logging.flush(timeout=10)
            assert len(server.tasks) == 3
            assert phospho_logging.stats()["sent"] == 3
        finally:
            logger = logging.getLogger("dc_app")
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()
