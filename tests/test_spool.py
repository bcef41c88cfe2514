"""The spool: durable, capped, shared by processes, never a crash on a bad file."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest

import phospho_logging
from phospho_logging._spool import Spool
from phospho_logging.testing import PhosphoTestServer
from tests.test_exit import child_env

log = logging.getLogger("phospho")


def event(task_id: str) -> bytes:
    return json.dumps({"task_id": task_id, "input": task_id}).encode()


class TestSpool:
    def test_put_claim_ack_oldest_first(self, tmp_path: Path) -> None:
        """Rows come back oldest first, leased, and go away when acknowledged."""
        spool = Spool(tmp_path / "tasks.sqlite3", "p", 100)
        spool.put([f"t{i}" for i in range(5)], [event(f"t{i}") for i in range(5)])
        rows = spool.claim(3)
        assert [json.loads(r[1])["task_id"] for r in rows] == ["t0", "t1", "t2"]
        assert [json.loads(r[1])["task_id"] for r in spool.claim(10)] == ["t3", "t4"]  # the first 3 are leased
        spool.ack([r[0] for r in rows])
        assert spool.count() == 2
        spool.close()

    def test_same_task_id_once(self, tmp_path: Path) -> None:
        """Spooling a task twice keeps one row (replays stay idempotent)."""
        spool = Spool(tmp_path / "tasks.sqlite3", "p", 100)
        assert spool.put(["a"], [event("a")]) == (1, 0)
        assert spool.put(["a"], [event("a")]) == (0, 0)
        assert spool.count() == 1

    def test_projects_are_kept_apart(self, tmp_path: Path) -> None:
        """One project's rows are never claimed for another."""
        Spool(tmp_path / "tasks.sqlite3", "p1", 100).put(["a"], [event("a")])
        assert Spool(tmp_path / "tasks.sqlite3", "p2", 100).claim(10) == []

    def test_cap_drops_oldest(self, tmp_path: Path) -> None:
        """Past max_tasks the oldest rows are evicted and reported as such."""
        spool = Spool(tmp_path / "tasks.sqlite3", "p", 3)
        assert spool.put([f"t{i}" for i in range(5)], [event(f"t{i}") for i in range(5)]) == (5, 2)
        assert [json.loads(r[1])["task_id"] for r in spool.claim(10)] == ["t2", "t3", "t4"]

    def test_owner_only(self, tmp_path: Path) -> None:
        """The spool file is readable by its owner only."""
        Spool(tmp_path / "tasks.sqlite3", "p", 3).put(["a"], [event("a")])
        assert stat.S_IMODE((tmp_path / "tasks.sqlite3").stat().st_mode) == 0o600

    def test_corrupt_file_moved_aside(self, tmp_path: Path, diag: List[str]) -> None:
        """A file that is not a database is renamed with one warning; spooling goes on."""
        path = tmp_path / "tasks.sqlite3"
        path.write_bytes(b"this is not a database" * 100)
        spool = Spool(path, "p", 100)
        assert spool.put(["a"], [event("a")]) == (1, 0)
        assert spool.count() == 1
        assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
        assert sum("moved aside" in m for m in diag) == 1

    def test_dead_owners_leases_are_reclaimed(self, tmp_path: Path) -> None:
        """Rows leased by a process that died are replayable at once."""
        path = tmp_path / "tasks.sqlite3"
        code = textwrap.dedent(f"""
            from pathlib import Path
            from phospho_logging._spool import Spool
            s = Spool(Path({str(path)!r}), "p", 100)
            s.put(["a"], [b'{{"task_id": "a"}}'], leased=True)
        """)
        result = subprocess.run([sys.executable, "-c", code], env=child_env({}), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        spool = Spool(path, "p", 100)
        assert spool.claim(10) == []  # leased by the (now dead) process
        assert spool.reclaim_dead() == 1
        assert len(spool.claim(10)) == 1

    def test_processes_claim_disjoint_rows(self, tmp_path: Path) -> None:
        """Several processes replaying at once never claim the same row."""
        path = tmp_path / "tasks.sqlite3"
        Spool(path, "p", 10_000).put([f"t{i}" for i in range(400)], [event(f"t{i}") for i in range(400)])
        code = textwrap.dedent(f"""
            import json
            from pathlib import Path
            from phospho_logging._spool import Spool
            s = Spool(Path({str(path)!r}), "p", 10_000)
            got = []
            while True:
                rows = s.claim(7)
                if not rows:
                    break
                got += [json.loads(r[1])["task_id"] for r in rows]
            print(json.dumps(got))
        """)
        procs = [subprocess.Popen([sys.executable, "-c", code], env=child_env({}), stdout=subprocess.PIPE, text=True)
                 for _ in range(4)]
        claimed: List[str] = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            claimed += json.loads(out)
        assert sorted(claimed) == sorted(f"t{i}" for i in range(400))


class TestKeyNeverStored:
    def test_spool_holds_no_key(self, tmp_path: Path) -> None:
        """The API key appears nowhere in the spool files."""
        with PhosphoTestServer() as gone:
            url = gone.url
        pipeline = phospho_logging.configure(api_key="sk-very-secret-key", project_id="p", base_url=url,
                                             local_dir=str(tmp_path), max_attempts=1)
        log.info("t", extra={"input": "q"})
        pipeline.shutdown(timeout=5)
        assert pipeline.stats()["spooled"] == 1
        for path in tmp_path.iterdir():
            assert b"sk-very-secret-key" not in path.read_bytes(), path


class TestReplay:
    @pytest.mark.parametrize("delay", [0.0, 0.3])
    def test_a_short_run_replays_what_its_exit_allows(self, tmp_path: Path, server: PhosphoTestServer,
                                                      delay: float) -> None:
        """After a key is fixed, a short-lived program (log one task, exit) sends what
        earlier runs spooled within shutdown_timeout at exit, batch after batch; what is left
        is said at exit with `push` to send it now."""
        spool = Spool(tmp_path / "tasks.sqlite3", server.project_id, 10_000)
        spool.put([f"old{i}" for i in range(2000)],
                  [json.dumps({"task_id": f"old{i}", "input": f"old{i}", "client_created_at": 1}).encode()
                   for i in range(2000)])
        spool.close()
        server.delay = delay
        result = subprocess.run(
            [sys.executable, "-c", "import logging, phospho_logging\n"
             "phospho_logging.configure(max_batch_size=200, shutdown_timeout=2)\n"
             "logging.getLogger('phospho').info('t', extra={'input': 'new'})\n"],
            env=child_env({"PHOSPHO_API_KEY": server.api_key, "PHOSPHO_PROJECT_ID": server.project_id,
                           "PHOSPHO_BASE_URL": server.url, "PHOSPHO_LOCAL_DIR": str(tmp_path)}),
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        sent_old = len([t for t in server.tasks if t["input"].startswith("old")])
        left = Spool(tmp_path / "tasks.sqlite3", server.project_id, 10_000).count()
        assert sent_old + left == 2000 and "new" in [t["input"] for t in server.tasks]
        if delay == 0.0:
            assert left == 0 and "wait in the spool" not in result.stderr, result.stderr
        else:  # 0.3 s a request, 2 s at exit: a few batches of 200, the rest said
            assert 200 < sent_old < 2000, sent_old
            assert f"{left} task(s) wait in the spool" in result.stderr and "phospho-logging push" in result.stderr

    def test_replayed_on_next_start_without_blocking(self, tmp_path: Path, server: PhosphoTestServer) -> None:
        """Spooled tasks go out in the background after configure() returns, oldest first."""
        spool = Spool(tmp_path / "tasks.sqlite3", server.project_id, 100)
        spool.put([f"old{i}" for i in range(30)],
                  [json.dumps({"task_id": f"old{i}", "input": f"old{i}", "client_created_at": 1}).encode()
                   for i in range(30)])
        spool.close()
        pipeline = phospho_logging.configure(api_key=server.api_key, project_id=server.project_id,
                                             base_url=server.url, local_dir=str(tmp_path), max_batch_size=10)
        log.info("t", extra={"input": "new"})
        assert server.wait_for_tasks(31, timeout=30)
        olds = [t["input"] for t in server.tasks if t["input"].startswith("old")]
        assert olds == [f"old{i}" for i in range(30)]
        assert pipeline.flush(timeout=10)
        assert pipeline.stats()["replayed"] == 30
        assert Spool(tmp_path / "tasks.sqlite3", server.project_id, 100).count() == 0

    def test_long_retry_after_opens_the_circuit(self, tmp_path: Path, server: PhosphoTestServer) -> None:
        """A 503 asking for a long pause: tasks are spooled at once, the worker stays free."""
        pipeline = phospho_logging.configure(api_key=server.api_key, project_id=server.project_id,
                                             base_url=server.url, local_dir=str(tmp_path))
        server.fail_next(503, count=1, retry_after=30)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10)
        stats = pipeline.stats()
        assert stats["spooled"] == 1 and stats["circuit_open"]
        assert len(server.requests) == 1

    def test_durable_rows_removed_once_delivered(self, tmp_path: Path, server: PhosphoTestServer) -> None:
        """durable=True stores each batch before sending and forgets it once acknowledged."""
        pipeline = phospho_logging.configure(api_key=server.api_key, project_id=server.project_id,
                                             base_url=server.url, local_dir=str(tmp_path), durable=True)
        for i in range(20):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=10)
        assert len(server.tasks) == 20
        assert Spool(tmp_path / "tasks.sqlite3", server.project_id, 100).count() == 0
        assert pipeline.stats()["spooled"] == 0

    def test_handler_removed_while_sending(self, tmp_path: Path, server: PhosphoTestServer) -> None:
        """Removing and closing the handler while the worker sends neither hangs nor loses."""
        server.delay = 0.3
        pipeline = phospho_logging.configure(api_key=server.api_key, project_id=server.project_id,
                                             base_url=server.url, local_dir=str(tmp_path), flush_interval=0.01)
        log.info("t", extra={"input": "q"})
        assert server.wait_for_requests(1, timeout=10)
        log.removeHandler(pipeline.handler)
        pipeline.handler.close()
        pipeline.engine.shutdown(wait=False)
        assert pipeline.flush(timeout=10)
        assert [t["input"] for t in server.tasks] == ["q"]


def test_fork_hooks_leave_no_sqlite_in_use(tmp_path: Path) -> None:
    """A fork while the store is in use: the child writes its own rows, the parent goes on."""
    if not hasattr(os, "fork"):
        return
    code = textwrap.dedent("""
        import logging, os, sys, phospho_logging
        p = phospho_logging.configure()
        log = logging.getLogger("phospho")
        log.info("t", extra={"input": "parent-1"})
        assert p.flush(timeout=10)
        pid = os.fork()
        if pid == 0:
            log.info("t", extra={"input": "child"})
            sys.exit(0 if p.flush(timeout=10) else 3)
        _, status = os.waitpid(pid, 0)
        log.info("t", extra={"input": "parent-2"})
        assert p.flush(timeout=10)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    result = subprocess.run([sys.executable, "-c", code], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    from phospho_logging._store import latest

    assert sorted(e["input"] for e in latest(tmp_path / "tasks.sqlite3")) == ["child", "parent-1", "parent-2"]


class TestCircuit:
    def test_opens_spools_then_probes_and_replays(self, tmp_path: Path, server: PhosphoTestServer,
                                                   monkeypatch) -> None:
        """Batches failing in a row open the circuit (tasks go to the spool without a request);
        after the cool-down a probe succeeds and the spool is replayed in the same process."""
        from phospho_logging import _delivery

        monkeypatch.setattr(_delivery, "CIRCUIT_COOLDOWN", 0.3)
        pipeline = phospho_logging.configure(api_key=server.api_key, project_id=server.project_id,
                                             base_url=server.url, local_dir=str(tmp_path),
                                             max_batch_size=1, max_attempts=1)
        server.fail_next(503, count=3)
        for i in range(5):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=10)
        stats = pipeline.stats()
        assert stats["spooled_by_reason"].get("circuit_open", 0) >= 1  # no request for those
        assert [r.status for r in server.requests][:3] == [503, 503, 503]
        assert server.wait_for_tasks(5, timeout=20)  # probe, then the spool replayed
        assert sorted(t["input"] for t in server.tasks) == [f"q{i}" for i in range(5)]
        assert server.duplicates == 0
