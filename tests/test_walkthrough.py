"""The README's walk-through, as a newcomer runs it: local tasks, a local server, check, push."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.test_exit import child_env


def run(args: list, env: dict, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=child_env(env), capture_output=True, text=True,
                          timeout=timeout)


class TestWalkthrough:
    def test_local_store_then_check_then_push(self, tmp_path: Path) -> None:
        """quickstart offline, `python -m phospho_logging.testing`, `check`, `push`, a second
        `push` that sends nothing again."""
        store = {"PHOSPHO_LOCAL_DIR": str(tmp_path)}
        root = Path(__file__).resolve().parent.parent
        quick = run([str(root / "examples" / "quickstart.py")], store)
        assert quick.returncode == 0 and "delivered: True" in quick.stdout, quick.stderr

        server = subprocess.Popen([sys.executable, "-m", "phospho_logging.testing"], env=child_env({}),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            server.stdout.readline()  # "listening on ..."
            exports = server.stdout.readline()
            found = dict(re.findall(r"(PHOSPHO_\w+)=(\S+)", exports))
            assert set(found) == {"PHOSPHO_BASE_URL", "PHOSPHO_API_KEY", "PHOSPHO_PROJECT_ID"}, exports
            env = {**store, **found}

            check = run(["-m", "phospho_logging", "check"], env)
            assert check.returncode == 0, check.stdout + check.stderr
            push = run(["-m", "phospho_logging", "push"], env)
            assert push.returncode == 0, push.stdout + push.stderr
            again = run(["-m", "phospho_logging", "push"], env)
            assert again.returncode == 0, again.stdout + again.stderr
        finally:
            server.send_signal(signal.SIGINT)
            out, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
        # Two tasks from the quickstart, sent once: the second push had nothing new.
        assert "stopped; 2 task(s) and 0 feedback(s) received" in out, out
