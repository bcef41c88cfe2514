"""The offline default: the local store, its notice, and several processes writing."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import phospho_logging
from phospho_logging import _store
from tests.conftest import said
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


def _other_app_db(path: Path) -> None:
    """Another program's SQLite database (rollback journal, one table)."""
    conn = sqlite3.connect(str(path))
    try:
        conn.execute("CREATE TABLE theirs (x)")
        conn.commit()
    finally:
        conn.close()


class TestLocalFiles:
    """The files the package creates: never through a link, private whatever the umask,
    and a damaged store moved aside whenever SQLite finds it damaged."""

    def test_a_link_at_the_store_path_is_not_followed(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """A symlink to another program's database: that database is left as it was (no
        tables of ours, no WAL mode); the task is counted as lost, and the start-up line
        names the link (not "tasks are kept")."""
        other = tmp_path / "other.db"
        _other_app_db(other)
        store_dir = tmp_path / "store"
        store_dir.mkdir()
        (store_dir / "tasks.sqlite3").symlink_to(other)
        pipeline = phospho_logging.configure(local_dir=str(store_dir), max_attempts=1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20) is False
        assert pipeline.stats()["dropped"] == 1
        conn = sqlite3.connect(str(other))
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert tables == {"theirs"}
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        finally:
            conn.close()
        err = capsys.readouterr().err
        assert "is a symbolic link" in err and "tasks logged are lost" in err and "are kept" not in err

    def test_a_hard_link_at_the_store_path_is_refused(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        """A hard link (another name for another program's database): refused too, and
        that database is left as it was."""
        other = tmp_path / "other.db"
        _other_app_db(other)
        store_dir = tmp_path / "store"
        store_dir.mkdir()
        os.link(other, store_dir / "tasks.sqlite3")
        pipeline = phospho_logging.configure(local_dir=str(store_dir), max_attempts=1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20) is False
        conn = sqlite3.connect(str(other))
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert tables == {"theirs"} and conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        finally:
            conn.close()
        assert "hard links" in capsys.readouterr().err

    def test_a_dangling_link_creates_nothing(self, tmp_path: Path) -> None:
        """A link to a path that does not exist: no database is created there."""
        target = tmp_path / "elsewhere" / "made.db"
        target.parent.mkdir()
        store_dir = tmp_path / "store"
        store_dir.mkdir()
        (store_dir / "tasks.sqlite3").symlink_to(target)
        pipeline = phospho_logging.configure(local_dir=str(store_dir), max_attempts=1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20) is False
        assert not target.exists() and list(target.parent.iterdir()) == []

    def test_online_with_an_unwritable_spool_directory_says_so_at_start(self, tmp_path: Path) -> None:
        """Online, a local directory that cannot be written means the spool cannot keep
        undelivered tasks: one start-up line says so and what to set; the failed writes
        add no line; the exit line counts the loss."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        code = (
            "import logging, phospho_logging\n"
            "phospho_logging.configure(max_attempts=1, shutdown_timeout=2)\n"
            "logging.getLogger('phospho').info('t', extra={'input': 'q'})\n"
        )
        env = child_env({"PHOSPHO_LOCAL_DIR": str(blocker / "s"), "PHOSPHO_API_KEY": "k", "PHOSPHO_PROJECT_ID": "p",
                         "PHOSPHO_BASE_URL": "http://127.0.0.1:9"})  # nothing listens
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert str(blocker / "s") in lines[0] and "cannot be kept in the spool" in lines[0], proc.stderr
        assert "PHOSPHO_LOCAL_DIR" in lines[1]
        assert not any("spool" in line and "cannot write" in line for line in lines), proc.stderr
        assert "1 task(s) of this run could not be delivered or kept (1 spool_error)" in lines[-1], proc.stderr

    def test_private_whatever_the_umask(self, tmp_path: Path) -> None:
        """Under umask 000 the missing parents of local_dir are created 0700 and the store
        0600; a directory that existed keeps its mode."""
        tmp_path.chmod(0o755)
        local_dir = tmp_path / "home" / ".local" / "share" / "phospho-logging"
        code = (
            "import logging, os, sys, phospho_logging\n"
            "os.umask(0)\n"
            "p = phospho_logging.configure(local_dir=sys.argv[1])\n"
            "logging.getLogger('phospho').info('t', extra={'input': 'q'})\n"
            "assert p.flush(timeout=20)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code, str(local_dir)], env=child_env({}), capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        for folder in (tmp_path / "home", tmp_path / "home" / ".local", tmp_path / "home" / ".local" / "share",
                       local_dir):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        for name in ("tasks.sqlite3", "tasks.sqlite3-wal", "tasks.sqlite3-shm"):
            if (local_dir / name).exists():
                assert stat.S_IMODE((local_dir / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755

    def test_offline_with_an_unwritable_directory_says_so_once(self, tmp_path: Path) -> None:
        """No credentials and a local directory that cannot be written: the start-up line
        says so (naming the directory, that tasks are lost, what to set), in offline words;
        no line per failed write; at exit, how many were lost. configure() does not raise
        (a logging setup must not stop the app)."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        code = (
            "import logging, phospho_logging\n"
            "p = phospho_logging.configure(max_attempts=1)\n"
            "for i in range(100):\n"
            "    logging.getLogger('phospho').info('t', extra={'input': str(i)})\n"
            "p.flush(timeout=10)\n"
            "for i in range(100):\n"
            "    logging.getLogger('phospho').info('t', extra={'input': str(i)})\n"
            "print(p.stats()['dropped_by_reason'])\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], env=child_env({"PHOSPHO_LOCAL_DIR": str(blocker / "s")}),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 3, proc.stderr
        assert str(blocker / "s") in lines[0] and "cannot be written" in lines[0] and "lost" in lines[0]
        assert "PHOSPHO_LOCAL_DIR" in lines[1]
        assert lines[2] == ("phospho-logging: 200 task(s) of this run could not be kept in the local store "
                            "(200 local_store_error)")
        assert "endpoint" not in proc.stderr and "spool" not in proc.stderr and "are kept" not in proc.stderr

    def test_exit_on_time_when_another_process_holds_the_spool(self, tmp_path: Path) -> None:
        """Another process holds the SQLite file (BEGIN EXCLUSIVE: a backup, a `push`) while
        the backend refuses, so every batch goes to the locked spool: every wait on it is
        bounded by the time left, exit with shutdown_timeout=2 takes about 2 s, and the
        tasks that could not be kept are counted in the exit report. (Offline, with the
        local store locked: ``TestEdges::test_exit_with_the_store_locked_by_another_process``.)"""
        from tests.test_guarantees import time_exit

        path = tmp_path / "tasks.sqlite3"
        _store.close_connection(_store.connect(path))
        locker = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys\n"
             "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline()", str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            env = {"PHOSPHO_LOCAL_DIR": str(tmp_path), "PHOSPHO_API_KEY": "k", "PHOSPHO_PROJECT_ID": "p",
                   "PHOSPHO_BASE_URL": "http://127.0.0.1:9"}  # nothing listens: every batch goes to the spool
            seconds, code, err = time_exit("""
                import logging, phospho_logging
                phospho_logging.configure(shutdown_timeout=2, max_attempts=1)
                for i in range(200):
                    logging.getLogger("phospho").info("t", extra={"input": f"q{i}"})
                print("exit now", flush=True)
            """, env)
        finally:
            locker.communicate("\n", timeout=10)
        assert code == 0, err
        assert seconds < 2 + 1.0, seconds
        assert "200 task(s) of this run could not be delivered or kept" in err, err

    def test_damaged_pages_are_moved_aside_while_running(self, tmp_path: Path, diag: List[str]) -> None:
        """A store whose header is intact but whose pages are damaged opens fine and then
        fails writes as "malformed": it is moved aside then, with one warning, and the
        task goes to a new store instead of being lost."""
        path = tmp_path / "tasks.sqlite3"
        conn = _store.connect(path)
        try:
            conn.execute("PRAGMA journal_mode = DELETE")  # everything in the main file
            _store.insert_rows(conn, "INSERT INTO tasks (task_id, session_id, created_at, stored_at, event) VALUES",
                               [(f"t{i}", None, 0, 0.0, "x" * 2000) for i in range(500)])
        finally:
            _store.close_connection(conn)
        size = path.stat().st_size
        with open(path, "r+b") as f:  # damage pages in the middle; the header page stays
            f.seek(size // 2)
            f.write(b"\xff" * (size // 4))
        pipeline = phospho_logging.configure(local_dir=str(tmp_path), max_attempts=1)
        log.info("t", extra={"input": "after the damage"})
        assert pipeline.flush(timeout=20)
        assert [e["input"] for e in _store.latest(path)] == ["after the damage"]
        aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
        assert aside and pipeline.stats()["dropped"] == 0
        assert said(diag, "could not be read") == 1


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
