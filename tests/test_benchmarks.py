"""The benchmark suite runs: each case in a subprocess, as ``benchmarks/run.py`` runs it.

Speed is not checked here (ratios are read from ``python benchmarks/run.py``); these tests
keep the cases from rotting: each reports a value, and the product cases' own checks (every
call enqueued, every task delivered) hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_case(case: str, n: int) -> Dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOSPHO_")}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "cases.py"), case, "--n", str(n)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result: Dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    "case",
    ["hot_path", "floor_handler", "structlog_processor", "floor_processor", "wrap_call", "stream_wrapped",
     "stream_raw_lines", "stream_raw_cut"],
)
def test_per_call_cases_run_and_enqueue_every_call(case: str) -> None:
    result = run_case(case, 1000)
    assert "error" not in result, result["error"]
    assert result["unit"].startswith("ns/") and result["value"] > 0


@pytest.mark.parametrize("case", ["end_to_end", "latency_down", "cpu_per_task"])
def test_end_to_end_cases_account_for_every_task(case: str) -> None:
    result = run_case(case, 500)
    assert "error" not in result, result["error"]
    if case == "end_to_end":
        assert result["delivered"] == 500 and result["flushed"] is True
    elif case == "cpu_per_task":  # the server in its own process, stopped by the case
        assert result["sent"] == 500 and result["flushed"] is True and result["value"] > 0
    else:
        assert result["stats"]["enqueued"] == 500 and result["rss_growth_mb"] >= 0


def test_profile_script_shows_the_handler() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "profile_case.py"), "hot_path", "--n", "1000", "--cprofile"],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("PHOSPHO_")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "plain_record" in proc.stdout


def test_e2e_breakdown_script_adds_up() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "e2e_breakdown.py")], capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("PHOSPHO_")},
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: float(line.split()[1]) for line in proc.stdout.splitlines()[1:]}
    assert set(rows) == {"caller", "worker", "server", "HTTP", "total"}
    assert abs(rows["total"] - sum(v for k, v in rows.items() if k != "total")) < 0.05
