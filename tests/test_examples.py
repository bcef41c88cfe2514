"""Every script in examples/ runs offline, as a newcomer would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_exit import child_env

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_offline(script: Path, tmp_path: Path) -> None:
    """The example exits 0 with no credentials, reports its tasks delivered, and keeps them
    in the local store, not in the working directory."""
    result = subprocess.run([sys.executable, str(script)], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path / "store")}),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "delivered: True" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr
    assert (tmp_path / "store" / "tasks.sqlite3").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_raw_http_stream_example_logs_text_model_and_tokens(tmp_path: Path) -> None:
    """The guide's Ollama example, read back from the local store: the text, not the JSON
    lines; the model and the token counts of the last line."""
    script = EXAMPLES[0].parent / "raw_http_stream.py"
    result = subprocess.run([sys.executable, str(script)], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path / "s")}),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'Why is the sky blue?' -> 'The sky is blue because of Rayleigh scattering.'" in result.stdout, \
        result.stdout
    assert "'And at sunset?' -> 'At sunset light crosses more air, so reds remain.'" in result.stdout
    assert "model=mistral prompt_tokens=12 completion_tokens=8 raw_output: 8 parsed chunks" in result.stdout
    assert "model=mistral prompt_tokens=12 completion_tokens=9 raw_output: 10 parsed chunks" in result.stdout


def test_feedback_example_keeps_feedback_for_push(tmp_path: Path) -> None:
    """Offline, both feedbacks are in the local store, and push would send them after the task."""
    script = EXAMPLES[0].parent / "feedback.py"
    result = subprocess.run([sys.executable, str(script)], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path / "s")}),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "feedback: 2 given, 2 sent to the local store" in result.stdout, result.stdout
    assert "would send 1 task(s)" in result.stdout and "and 2 feedback(s), after the tasks" in result.stdout


def test_redaction_sampling_example_keeps_whole_sessions_masked(tmp_path: Path) -> None:
    script = EXAMPLES[0].parent / "redaction_sampling.py"
    result = subprocess.run([sys.executable, str(script)], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path / "s")}),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sent 22 of 61 task(s)" in result.stdout, result.stdout  # 11 sessions of 30, both turns each
    assert "38 by sample_rate (whole sessions), 1 by your redact function" in result.stdout
    stored = b"".join(p.read_bytes() for p in (tmp_path / "s").glob("tasks.sqlite3*") if p.exists())
    assert b"@example.com" not in stored and b"4111 1111" not in stored and b"Jane Doe" not in stored


def test_opentelemetry_loguru_example_correlates(tmp_path: Path) -> None:
    pytest.importorskip("loguru")
    pytest.importorskip("opentelemetry.sdk")
    script = EXAMPLES[0].parent / "opentelemetry_loguru.py"
    result = subprocess.run([sys.executable, str(script)], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path / "s")}),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    span = next(line for line in result.stdout.splitlines() if line.startswith("span:"))
    task = next(line for line in result.stdout.splitlines() if line.startswith("task:"))
    assert span[len("span: "):] in task, result.stdout
