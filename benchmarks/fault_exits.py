"""Exit time and losses of a real subprocess under each backend fault.

    python benchmarks/fault_exits.py

Each row runs a child process that logs N tasks against a scripted loopback
``PhosphoTestServer`` (``shutdown_timeout=2``), then lets it exit, and reports the time
from "exit now" to the process being gone, how many tasks reached the server, how many are
in the spool, and how many are in neither. tests/test_faults.py asserts the same books.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phospho_logging.testing import PhosphoTestServer  # noqa: E402
from tests.test_faults import Child, env_for, spooled  # noqa: E402


def run(name: str, script: Optional[Callable[[PhosphoTestServer], Any]], n: int = 500, **options: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="phospho-faults-") as tmp, PhosphoTestServer() as server:
        local_dir = Path(tmp)
        url = server.url
        if script is None:
            server.stop()  # connection refused from here on
        else:
            script(server)
        child = Child(env_for(url, local_dir, n, shutdown_timeout=2.0, **options), stdin_wait=True)
        child.read_report()
        if options.get("timeout") == 30:
            server.wait_for_requests(1, timeout=10)  # the worker is stuck in a request
        child.finish()
        delivered = {t["input"] for t in server.tasks}
        kept = set(spooled(local_dir))
    lost = n - len(delivered | kept)
    drops = child.report["stats"]["dropped"]
    print(f"| {name} | {child.exit_seconds:.2f} s | {len(delivered)} | {len(kept)} | {lost} (drops: {drops}) |")


def main() -> None:
    print("| backend fault | exit | delivered | spooled | lost |")
    print("|---|---|---|---|---|")
    run("connection refused", None)
    run("accepts, never answers", lambda s: s.hang_next(10_000), timeout=30, flush_interval=0.01)
    run("503 + Retry-After: 30, forever", lambda s: s.fail_next(503, count=100_000, retry_after=30))
    run("503 three times, then OK", lambda s: s.fail_next(503, count=3, retry_after="0.2"))
    run("429 three times, then OK", lambda s: s.fail_next(429, count=3))
    run("slow: 1.5 s a request", lambda s: setattr(s, "delay", 1.5), max_batch_size=50)
    run("401 bad key", lambda s: None, key="wrong")
    run("down for 50,000 tasks", None, n=50_000)


if __name__ == "__main__":
    main()
