"""The offline default: the local store, its notice, and several processes writing."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import phospho_logging
from phospho_logging import _store
from tests.test_exit import child_env

log = logging.getLogger("phospho")


class TestLocalStore:
    def test_no_credentials_store_locally(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """Without credentials, tasks land in the local store in wire format, and stderr says where."""
        pipeline = phospho_logging.configure(local_dir=str(tmp_path))
        log.info("answered", extra={"input": "What is 2+2?", "output": "4", "session_id": "s-1"})
        assert pipeline.flush(timeout=10)
        [event] = _store.latest(tmp_path / "tasks.sqlite3")
        assert (event["input"], event["output"], event["session_id"]) == ("What is 2+2?", "4", "s-1")
        err = capsys.readouterr().err
        assert str(tmp_path / "tasks.sqlite3") in err and "phospho-logging tail" in err

    def test_notice_printed_once(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """Reconfiguring to the same store does not repeat the notice."""
        phospho_logging.configure(local_dir=str(tmp_path / "once"))
        phospho_logging.configure(local_dir=str(tmp_path / "once"))
        assert capsys.readouterr().err.count("tasks are kept") == 1

    def test_default_dir_is_per_user_not_cwd(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no local_dir, the store goes to the per-user data dir (XDG_DATA_HOME here)."""
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        monkeypatch.chdir(tmp_path)
        pipeline = phospho_logging.configure()
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10)
        assert (tmp_path / "xdg" / "phospho-logging" / "tasks.sqlite3").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["xdg"]

    def test_local_dir_from_environment(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """PHOSPHO_LOCAL_DIR chooses the store's directory."""
        monkeypatch.setenv("PHOSPHO_LOCAL_DIR", str(tmp_path / "env"))
        pipeline = phospho_logging.configure()
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10)
        assert len(_store.latest(tmp_path / "env" / "tasks.sqlite3")) == 1

    def test_wal_and_owner_only(self, tmp_path: Path) -> None:
        """The store uses WAL and is readable by its owner only."""
        pipeline = phospho_logging.configure(local_dir=str(tmp_path))
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10)
        path = tmp_path / "tasks.sqlite3"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        conn = sqlite3.connect(str(path))
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()

    def test_same_task_id_stored_once(self, tmp_path: Path) -> None:
        """Like the server, the store skips a task id it already has."""
        pipeline = phospho_logging.configure(local_dir=str(tmp_path))
        log.info("t", extra={"input": "q", "task_id": "same"})
        log.info("t", extra={"input": "q", "task_id": "same"})
        assert pipeline.flush(timeout=10)
        assert len(_store.latest(tmp_path / "tasks.sqlite3")) == 1

    def test_several_processes_write_at_once(self, tmp_path: Path) -> None:
        """Four processes logging into one store: every task is kept."""
        code = (
            "import logging, sys, phospho_logging\n"
            "phospho_logging.configure(max_batch_size=7)\n"
            "for i in range(300):\n"
            "    logging.getLogger('phospho').info('t', extra={'input': f'{sys.argv[1]}-{i}'})\n"
        )
        env = child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)})
        procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], env=env, stderr=subprocess.PIPE)
                 for n in range(4)]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        events = _store.latest(tmp_path / "tasks.sqlite3", limit=10_000)
        assert len(events) == 1200
        assert len({e["input"] for e in events}) == 1200

    def test_unwritable_store_is_reported_not_raised(self, tmp_path: Path) -> None:
        """A store that cannot be written gives a counted drop and a message, not an exception."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        pipeline = phospho_logging.configure(local_dir=str(blocker), max_attempts=2)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20) is False
        assert pipeline.stats()["dropped"] == 1


class TestQuickstart:
    def test_quickstart_runs_offline(self, tmp_path: Path) -> None:
        """examples/quickstart.py works with no credentials and shows its tasks."""
        root = Path(__file__).resolve().parent.parent
        result = subprocess.run([sys.executable, str(root / "examples" / "quickstart.py")],
                                env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}), capture_output=True,
                                text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "delivered: True" in result.stdout
        assert "What is 2+2?" in result.stdout and "Paris." in result.stdout
        assert len(_store.latest(tmp_path / "tasks.sqlite3")) == 2
        assert sorted(os.listdir(tmp_path)) == sorted(["tasks.sqlite3", "tasks.sqlite3-wal", "tasks.sqlite3-shm"]) or \
            (tmp_path / "tasks.sqlite3").exists()
