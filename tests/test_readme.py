"""The README's copy-paste snippets run as written (offline, on the local store)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest

from phospho_logging._store import latest
from tests.fake_openai import FakeOpenAI
from tests.test_exit import child_env

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> Dict[str, List[str]]:
    """The README's fenced code blocks of ``language``, by section title."""
    found: Dict[str, List[str]] = {}
    section = ""
    text = README.read_text(encoding="utf-8")
    for match in re.finditer(r"^## ([^\n]+)$|^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if match.group(1):
            section = match.group(1).strip()
        elif match.group(2) == language:
            found.setdefault(section, []).append(match.group(3))
    return found


# Snippets that need nothing but the package (others need an OpenAI key, a web request...).
RUNNABLE = ["Quickstart", "structlog", "JSON lines (python-json-logger)"]


@pytest.mark.parametrize("section", RUNNABLE)
def test_python_snippet_runs(section: str, tmp_path: Path) -> None:
    """The section's snippet runs as pasted and its task reaches the local store."""
    code = blocks("python")[section][0]
    script = code + textwrap.dedent("""
        import phospho_logging
        phospho_logging.flush(timeout=10)
    """)
    result = subprocess.run([sys.executable, "-c", script], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if section.startswith("JSON lines"):
        assert '"input": "What is 2+2?"' in result.stderr  # the JSON line, on the handler's stream
    else:
        assert [e["input"] for e in latest(tmp_path / "tasks.sqlite3")] == ["What is 2+2?"]


def test_context_snippet_runs(tmp_path: Path) -> None:
    """The Context section's handler, called as a web framework would: its task carries the
    session and the tenant bound around it."""
    code = blocks("python")["Context"][0] + textwrap.dedent("""
        import types
        phospho_logging.configure()
        my_llm = lambda q: "an answer"
        handle(types.SimpleNamespace(headers={"x-session": "s-42"}), "a question")
        assert phospho_logging.flush(timeout=10)
    """)
    result = subprocess.run([sys.executable, "-c", code], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [event] = latest(tmp_path / "tasks.sqlite3")
    assert (event["input"], event["session_id"], event["metadata"]["tenant"]) == ("a question", "s-42", "acme")


def test_feedback_snippet_runs(tmp_path: Path) -> None:
    """The Feedback section's snippet: a task and two feedbacks on it, in the local store."""
    code = "import logging, phospho_logging\nphospho_logging.configure()\nquestion, answer = 'q', 'a'\n" + \
        blocks("python")["Feedback"][0] + "\nassert phospho_logging.flush(timeout=10)\nprint(task['task_id'])\n"
    result = subprocess.run([sys.executable, "-c", code], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    conn = sqlite3.connect(str(tmp_path / "tasks.sqlite3"))
    try:
        rows = conn.execute("SELECT task_id, flag, notes FROM feedback ORDER BY id").fetchall()
    finally:
        conn.close()
    task_id = result.stdout.strip()
    assert rows == [(task_id, "success", "quick and right"), (task_id, "failure", None)]


def test_raw_stream_snippet_runs(tmp_path: Path, fake: FakeOpenAI) -> None:
    """The raw HTTP stream snippet, against the loopback stand-in for Ollama: one task, the text."""
    snippet = [b for b in blocks("python")["wrap and streams"] if "iter_lines" in b][0]
    code = ("import json, requests, phospho_logging\nphospho_logging.configure()\nq = 'Why?'\n"
            + snippet.replace("http://localhost:11434", fake.url) + "\nassert phospho_logging.flush(timeout=10)\n")
    result = subprocess.run([sys.executable, "-c", code], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "You said: Why?"
    [event] = latest(tmp_path / "tasks.sqlite3")
    assert (event["input"], event["output"], event["model"]) == ("Why?", "You said: Why?", "mistral")


def test_redaction_snippet_runs(tmp_path: Path) -> None:
    """The Redaction section's snippet: the stored input is the one its comment shows."""
    code = "import logging, phospho_logging\nlog = logging.getLogger('phospho')\n" + \
        blocks("python")["Redaction"][0] + "\nassert phospho_logging.flush(timeout=10)\n"
    result = subprocess.run([sys.executable, "-c", code], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [event] = latest(tmp_path / "tasks.sqlite3")
    assert event["input"] == "I am [REDACTED:email], card [REDACTED:card]"


def test_loguru_snippet_runs(tmp_path: Path) -> None:
    """The loguru section's snippet, with the real loguru: a task and a feedback on it."""
    pytest.importorskip("loguru")
    code = "import phospho_logging\ntask_id = 'task_from_loguru'\n" + blocks("python")["loguru"][0].replace(
        'session_id="s-1")', 'session_id="s-1", task_id=task_id)') + "\nassert phospho_logging.flush(timeout=10)\n"
    result = subprocess.run([sys.executable, "-c", code], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [event] = latest(tmp_path / "tasks.sqlite3")
    assert (event["input"], event["output"], event["session_id"]) == ("What is 2+2?", "4", "s-1")
    conn = sqlite3.connect(str(tmp_path / "tasks.sqlite3"))
    try:
        assert conn.execute("SELECT task_id, flag FROM feedback").fetchall() == [("task_from_loguru", "success")]
    finally:
        conn.close()


@pytest.mark.parametrize("index", [0, 1], ids=["capture-and-exporter", "test-server"])
def test_testing_snippets_run(tmp_path: Path, index: int) -> None:
    """The testing section's snippets (capture and the in-memory exporter; the loopback
    server) run as pasted."""
    code = blocks("python")["Testing your code"][index]
    result = subprocess.run([sys.executable, "-c", code], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_dictconfig_yaml_snippet(tmp_path: Path) -> None:
    """The dictConfig section's YAML, loaded with yaml.safe_load, ships a task."""
    yaml_text = blocks("yaml")["dictConfig"][0]
    (tmp_path / "logging.yaml").write_text(yaml_text)
    script = textwrap.dedent("""
        import logging, logging.config, yaml, phospho_logging
        logging.config.dictConfig(yaml.safe_load(open("logging.yaml")))
        logging.getLogger("phospho").info("answered", extra={"input": "from yaml", "output": "ok"})
        assert phospho_logging.flush(timeout=10)
    """)
    result = subprocess.run([sys.executable, "-c", script], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [e["input"] for e in latest(tmp_path / "tasks.sqlite3")] == ["from yaml"]


def test_setup_commands_are_the_ci_ones() -> None:
    """The README's test command is the one .ci/run runs."""
    commands = blocks("bash")["Set up"]
    test_command = commands[1].strip()
    assert test_command in (README.parent / ".ci" / "run").read_text()
