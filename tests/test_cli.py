"""The phospho-logging command: tail."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import phospho_logging
from phospho_logging.cli import format_task, main
from tests.test_exit import child_env


@pytest.fixture
def store(tmp_path: Path) -> Path:
    pipeline = phospho_logging.configure(local_dir=str(tmp_path))
    log = logging.getLogger("phospho")
    for i in range(5):
        log.info("t", extra={"input": f"question {i}", "output": f"answer {i}", "session_id": f"s-{i % 2}"})
    log.info("t", extra={"input": "no answer"})
    assert pipeline.flush(timeout=10)
    return tmp_path


class TestTail:
    def test_readable_lines(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """tail prints the latest tasks, oldest first, one readable line each."""
        assert main(["tail", "-n", "3", "--local-dir", str(store)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 3
        assert "question 3" in lines[0] and "answer 3" in lines[0] and "s-1" in lines[0]
        assert "no answer" in lines[2] and "(no output)" in lines[2]

    def test_json_lines(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """--json prints one wire-format event per line."""
        assert main(["tail", "--json", "--local-dir", str(store)]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [e["input"] for e in events] == [f"question {i}" for i in range(5)] + ["no answer"]
        assert all(e["task_id"].startswith("task_") for e in events)

    def test_session_filter(self, store: Path, capsys: pytest.CaptureFixture) -> None:
        """--session keeps one session's tasks."""
        assert main(["tail", "--json", "--session", "s-0", "--local-dir", str(store)]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [e["input"] for e in events] == ["question 0", "question 2", "question 4"]

    def test_missing_store_is_one_line(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """No store yet: a one-line explanation and exit code 1, no traceback."""
        assert main(["tail", "--local-dir", str(tmp_path / "none")]) == 1
        err = capsys.readouterr().err
        assert "no local store" in err and "Traceback" not in err and err.count("\n") == 1

    def test_lines_fit_the_width(self) -> None:
        """Long input and output are cut to the terminal width."""
        event = {"client_created_at": 0, "session_id": "s", "input": "q" * 500, "output": "a\n" * 300}
        line = format_task(event, 80)
        assert len(line) <= 80 and "\n" not in line

    def test_module_entry_point(self, store: Path) -> None:
        """python -m phospho_logging tail works like the console script."""
        result = subprocess.run([sys.executable, "-m", "phospho_logging", "tail", "-n", "1", "--local-dir", str(store)],
                                env=child_env({}), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "no answer" in result.stdout


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
