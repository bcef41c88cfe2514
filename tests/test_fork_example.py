"""examples/fork_workers.py: every task of the parent and its forked workers stored exactly once."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from phospho_logging import _store
from tests.test_exit import child_env

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fork_workers.py"


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
class TestForkWorkersExample:
    def test_each_task_stored_exactly_once(self, tmp_path: Path) -> None:
        """1 parent task + 4 workers x 5 tasks (one worker ending in os._exit) are in the store once each."""
        result = subprocess.run([sys.executable, str(EXAMPLE)], env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}),
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "worker exit codes: [0, 0, 0, 0]" in result.stdout, result.stdout
        events = _store.latest(tmp_path / "tasks.sqlite3", limit=1000)
        assert len(events) == 21
        assert len({e["task_id"] for e in events}) == 21
        sessions = Counter(e["session_id"].split("-", 1)[1] for e in events)
        assert sessions == {"parent": 1, "worker-0": 5, "worker-1": 5, "worker-2": 5, "worker-os-exit": 5}
        assert "delivered: True" in result.stdout
