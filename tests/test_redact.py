"""Redaction (``redact=True`` or a function) before anything is sent, stored, spooled or
printed; and session sampling (``sample_rate``), the same in every process."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import phospho_logging
from phospho_logging.cli import main
from phospho_logging.json import PhosphoJsonFormatter
from phospho_logging.redact import mask_event, mask_text
from phospho_logging.testing import PhosphoTestServer, capture_tasks
from tests.conftest import said
from tests.test_exit import child_env

log = logging.getLogger("phospho")

EMAIL = "jane.doe+llm@example.co.uk"
CARD = "4111 1111 1111 1111"
PHONE = "+33 6 12 34 56 78"
IBAN = "FR76 3000 6000 0112 3456 7890 189"
OPENAI_KEY = "sk-proj-abcdefghijklmnop1234567890"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
SECRETS = [EMAIL, CARD, PHONE, IBAN, OPENAI_KEY, AWS_KEY, JWT, "tok3n-0f-b3ar3r"]
PROMPT = f"I am {EMAIL}, call me at {PHONE}. Card {CARD}, IBAN {IBAN}."


def pii_task(**extra: Any) -> None:
    """One task with personal data and secrets in every field that carries text."""
    log.info("answered", extra={
        "input": {"model": "gpt-4o", "messages": [{"role": "system", "content": f"Support for {EMAIL}"},
                                                  {"role": "user", "content": PROMPT}]},
        "output": {"choices": [{"message": {"role": "assistant", "content": f"Use key {OPENAI_KEY}"}}]},
        "metadata": {"headers": {"Authorization": "Bearer tok3n-0f-b3ar3r"}, "aws": AWS_KEY, "jwt": JWT,
                     "order": 12345},
        "session_id": "s-1", "user_id": "u-1", **extra,
    })


def assert_masked(event: Dict[str, Any]) -> None:
    text = json.dumps(event)
    for secret in SECRETS:
        assert secret not in text, secret
    assert event["input"] == ("I am [REDACTED:email], call me at [REDACTED:phone]. Card [REDACTED:card], "
                              "IBAN [REDACTED:iban].")
    assert event["output"] == "Use key [REDACTED:api_key]"
    assert event["system_prompt"] == "Support for [REDACTED:email]"
    meta = event["metadata"]
    assert (meta["aws"], meta["jwt"], meta["order"]) == ("[REDACTED:aws_key]", "[REDACTED:jwt]", 12345)
    assert meta["headers"] == {"Authorization": "Bearer [REDACTED:bearer]"}
    assert (event["session_id"], event["user_id"]) == ("s-1", "u-1")  # ids are not texts to mask


class TestMasks:
    @pytest.mark.parametrize("text, expected", [
        (f"mail {EMAIL} now", "mail [REDACTED:email] now"),
        ("call +1 415 555 2671 or (415) 555-2671 or 06.12.34.56.78", "call [REDACTED:phone] or [REDACTED:phone] "
         "or [REDACTED:phone]"),
        ("4111-1111-1111-1111 and 378282246310005", "[REDACTED:card] and [REDACTED:card]"),
        ("DE89370400440532013000", "[REDACTED:iban]"),
        (f"{OPENAI_KEY} sk-abcdefghijklmnopqrstuvwx", "[REDACTED:api_key] [REDACTED:api_key]"),
        (f"id {AWS_KEY}", "id [REDACTED:aws_key]"),
        ("Authorization: Bearer abc.def-123456", "Authorization: Bearer [REDACTED:bearer]"),
        (f"t={JWT}", "t=[REDACTED:jwt]"),
        ("4111 1111 1111 1111 123 and qty 2 4111-1111-1111-1111", "[REDACTED:card] 123 and qty 2 [REDACTED:card]"),
        ("4111111111111111123", "[REDACTED:card]123"),
        ("GB82WEST12345698765432 BIC NWBKGB2L", "[REDACTED:iban] BIC NWBKGB2L"),
        ("sk-proj-abc_DEF-xyzXYZ1234567890123 sk-ant-api03-AbC_dEf-1234567890abcdefgh",
         "[REDACTED:api_key] [REDACTED:api_key]"),
        ("Bearer  tok3n-0f-b3ar3r, Bearer\ttok3n-0f-b3ar3r, BeArEr tok3n-0f-b3ar3r",
         "Bearer  [REDACTED:bearer], Bearer\t[REDACTED:bearer], BeArEr [REDACTED:bearer]"),
        ("josé.garcía@correo.es, 07700 900123, 030 1234567, 1-800-555-0199",
         "[REDACTED:email], [REDACTED:phone], [REDACTED:phone], [REDACTED:phone]"),
        ('"keys:\\nsk-proj-abcdefghijklmnopqrstuv\\nAKIAIOSFODNN7EXAMPLE\\nBearer abcdefghijklmnop1234\\n4111111111111111"',
         '"keys:\\n[REDACTED:api_key]\\n[REDACTED:aws_key]\\nBearer [REDACTED:bearer]\\n[REDACTED:card]"'),
        ("我的卡号4111111111111111，谢谢 Card No.4111111111111111 Visa(4111111111111111)",
         "我的卡号[REDACTED:card]，谢谢 Card No.[REDACTED:card] Visa([REDACTED:card])"),
        ("カード ４１１１１１１１１１１１１１１１", "カード [REDACTED:card]"),
        ("jane@doe.com--or jane@doe.com_old ?email=jane%40doe.com ivan@yandex.xn--p1ai",
         "[REDACTED:email]--or [REDACTED:email]_old ?email=[REDACTED:email] [REDACTED:email]"),
        ("Bearer: abcdefghijklmnop1234 auth=Bearer%20abcdefghijklmnop1234",
         "Bearer: [REDACTED:bearer] auth=Bearer%20[REDACTED:bearer]"),
        ("gb82west12345698765432 GB82-WEST-1234-5698-7654-32 GB82WEST12345698765432EUR",
         "[REDACTED:iban] [REDACTED:iban] [REDACTED:iban]EUR"),
    ])
    def test_found_and_masked(self, text: str, expected: str) -> None:
        assert mask_text(text) == expected

    @pytest.mark.parametrize("text", [
        "4111 1111 1111 1112 fails the Luhn check",
        "FR76 3000 6000 0112 3456 7890 188 fails the IBAN check",
        "on 2024-12-05 at 10:30, order 12345, version 1.2.3, pi 3.14159265358979, host 192.168.100.200",
        "sk-short and AKIA123 are too short; a@b is no address",
        "15.03.2024, 15-03-2024, 2024.03.15, 15 03 2024, 2024-01-15 10:30:00, 12.345.678",
        "hash a4111111111111111b, order ORD4111111111111111",
        "task-management-system-overview, pi 3.14159265358979323846",
    ])
    def test_left_alone(self, text: str) -> None:
        assert mask_text(text) == text

    def test_linear_whatever_the_text(self, tmp_path: Path) -> None:
        """Texts built to make patterns backtrack (a run of "sk-", letters before an "@",
        "eyJ-" repeated, digits and spaces): each is masked in one pass; the program ends
        well within the subprocess timeout (minutes, if any pattern were quadratic)."""
        code = ("import logging, phospho_logging\nphospho_logging.configure(redact=True)\n"
                "for text in ['sk-' * 100000, 'a' * 100000 + '@', 'eyJ-' * 100000, '1 ' * 200000, 'a@' * 100000,\n"
                "             'bearer ' * 50000, '@' * 200000, (' +' + '1' * 60) * 6000, 'gb82' + 'a' * 200000]:\n"
                "    logging.getLogger('phospho').info('t', extra={'input': text})\n"
                "assert phospho_logging.flush(timeout=30)\nprint(phospho_logging.stats()['sent'])\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}))
        assert result.returncode == 0 and result.stdout.strip() == "9", result.stderr

    def test_mask_event_walks_every_text_field(self) -> None:
        event = {"task_id": EMAIL, "input": EMAIL, "raw_input": {"a": [EMAIL, {"b": EMAIL}]},
                 "metadata": {"x": 1, EMAIL: "opened", "votes": {OPENAI_KEY: 1}, "span_id": "4111111111111111"}}
        assert mask_event(event) == {"task_id": EMAIL, "input": "[REDACTED:email]",
                                     "raw_input": {"a": ["[REDACTED:email]", {"b": "[REDACTED:email]"}]},
                                     "metadata": {"x": 1, "[REDACTED:email]": "opened",
                                                  "votes": {"[REDACTED:api_key]": 1}, "span_id": "4111111111111111"}}


class TestEverywhere:
    def test_sent_over_http(self, server: PhosphoTestServer, creds: dict, tmp_path: Path) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), redact=True, **creds)
        pii_task()
        assert phospho_logging.flush(timeout=10)
        [request] = server.requests
        [event] = json.loads(request.body)["batched_log_events"]  # as it went over the wire
        assert_masked(event)

    def test_nothing_unmasked_reaches_the_disk(self, tmp_path: Path) -> None:
        """Backend down, durable=True: the spool, the durable copies and the local store
        hold only masked events (the SQLite files are read byte by byte)."""
        with PhosphoTestServer() as gone:
            url = gone.url
        phospho_logging.configure(api_key="k", project_id="p", base_url=url, local_dir=str(tmp_path / "spool"),
                                  redact=True, durable=True, max_attempts=1, max_retry_time=0.1)
        for _ in range(20):
            pii_task()
        assert phospho_logging.flush(timeout=15)
        assert phospho_logging.stats()["spooled"] == 20
        phospho_logging.shutdown(timeout=5)
        phospho_logging.configure(local_dir=str(tmp_path / "store"), redact=True)  # offline: the local store
        pii_task()
        assert phospho_logging.flush(timeout=10)
        phospho_logging.shutdown(timeout=5)
        files = [p for p in tmp_path.rglob("tasks.sqlite3*") if p.is_file()]
        assert files
        for path in files:
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # a -shm or -wal file SQLite removed meanwhile
                continue
            for secret in SECRETS:
                assert secret.encode() not in data, (path, secret)
        assert any(b"[REDACTED:email]" in path.read_bytes() for path in (tmp_path / "store").glob("tasks.sqlite3*")
                   if path.exists())

    def test_the_store_as_tail_shows_it(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), redact=True)
        pii_task()
        assert phospho_logging.flush(timeout=10)
        capsys.readouterr()
        assert main(["tail", "--json", "--local-dir", str(tmp_path)]) == 0
        assert_masked(json.loads(capsys.readouterr().out.splitlines()[-1]))

    def test_json_formatter_lines(self) -> None:
        """The configured pipeline's setting applies to the JSON lines too; the formatter's
        own ``redact=`` wins."""
        phospho_logging.configure(redact=True, logger="app.unused")
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PhosphoJsonFormatter("%(message)s"))
        plain = io.StringIO()
        raw = logging.StreamHandler(plain)
        raw.setFormatter(PhosphoJsonFormatter("%(message)s", redact=False))
        app = logging.getLogger("app.json")
        app.propagate = False
        app.setLevel(logging.INFO)
        app.addHandler(handler)
        app.addHandler(raw)
        try:
            app.info("from %s", EMAIL, extra={"input": PROMPT, "output": f"ok {OPENAI_KEY}"})
        finally:
            app.removeHandler(handler)
            app.removeHandler(raw)
        line = json.loads(stream.getvalue())
        assert line["input"].startswith("I am [REDACTED:email]") and line["output"] == "ok [REDACTED:api_key]"
        assert line["message"] == "from [REDACTED:email]"
        assert EMAIL in plain.getvalue()

    def test_feedback_notes_and_numbers_in_metadata(self, server: PhosphoTestServer, creds: dict,
                                                    tmp_path: Path) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), redact=keep_unless_internal, **creds)
        task = phospho_logging.log(input="q", output="a", metadata={"card": 4111111111111111, "count": 12345})
        phospho_logging.feedback(task["task_id"], "failure", notes=f"wrong, write to {EMAIL}", source=EMAIL)
        assert phospho_logging.flush(timeout=10)
        assert [(f["notes"], f["source"]) for f in server.feedback] == [
            ("wrong, write to [REDACTED:email]", "[REDACTED:email]")]
        meta = server.tasks[0]["metadata"]
        assert (meta["card"], meta["count"]) == ("[REDACTED:card]", 12345)

    def test_the_librarys_own_messages(self, tmp_path: Path) -> None:
        """What a redact function raises may hold what it was masking: the message names
        the function and the exception's type only, and every message is masked."""
        code = ("import logging, phospho_logging\n"
                "def redact(event):\n    raise KeyError(event['input'])\n"
                "phospho_logging.configure(redact=redact)\n"
                f"logging.getLogger('phospho').info('t', extra={{'input': {EMAIL!r}}})\n"
                "assert not phospho_logging.flush(timeout=10)\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path)}))
        assert result.returncode == 0, result.stderr
        assert "the redact function redact raised KeyError" in result.stderr
        assert EMAIL not in result.stderr

    def test_json_lines_everywhere_and_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With PHOSPHO_REDACT=1 and no configure(): the task fields, the message, the fields
        the format names, the traceback, and a feedback's notes."""
        monkeypatch.setenv("PHOSPHO_REDACT", "1")
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PhosphoJsonFormatter("%(message)s %(user_email)s"))
        app = logging.getLogger("app.json.env")
        app.propagate = False
        app.addHandler(handler)
        try:
            try:
                raise ValueError(f"failed for {EMAIL}")
            except ValueError:
                app.exception("for %s", EMAIL, extra={"input": PROMPT, "user_email": EMAIL})
            app.warning("rated", extra={"task_id": "t1", "flag": "failure", "notes": f"from {EMAIL}"})
        finally:
            app.removeHandler(handler)
        assert EMAIL not in stream.getvalue()
        first, second = map(json.loads, stream.getvalue().splitlines())
        assert first["user_email"] == "[REDACTED:email]" and "[REDACTED:email]" in first["exc_info"]
        assert second["notes"] == "from [REDACTED:email]"

    def test_push_masks_what_was_stored_before(self, server: PhosphoTestServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        """Tasks stored offline before redaction was turned on are masked by a push made with it."""
        phospho_logging.configure(local_dir=str(tmp_path))
        pii_task()
        assert phospho_logging.flush(timeout=10)
        phospho_logging.shutdown(timeout=5)
        monkeypatch.setenv("PHOSPHO_REDACT", "1")
        assert main(["push", "--api-key", server.api_key, "--project-id", server.project_id, "--base-url", server.url,
                     "--local-dir", str(tmp_path)]) == 0
        [request] = server.requests
        [event] = json.loads(request.body)["batched_log_events"]
        assert_masked(event)

    def test_capture_and_log_show_what_is_sent(self) -> None:
        phospho_logging.configure(redact=True)
        with capture_tasks() as tasks:
            returned = phospho_logging.log(input=PROMPT, output="fine")
        assert tasks[0]["input"] == returned["input"] == mask_text(PROMPT)

    def test_from_the_environment(self, tmp_path: Path) -> None:
        code = ("import logging, phospho_logging\nphospho_logging.configure()\n"
                f"logging.getLogger('phospho').info('t', extra={{'input': {PROMPT!r}}})\n"
                "assert phospho_logging.flush(timeout=10)\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path), "PHOSPHO_REDACT": "1"}))
        assert result.returncode == 0, result.stderr
        assert EMAIL.encode() not in (tmp_path / "tasks.sqlite3").read_bytes()


def keep_unless_internal(event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if event["metadata"].get("internal"):
        return None
    event["metadata"].pop("customer", None)
    return mask_event(event)


class TestYourFunction:
    def test_changes_drops_and_is_counted(self, server: PhosphoTestServer, creds: dict, tmp_path: Path) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), redact=keep_unless_internal, **creds)
        log.info("a", extra={"input": EMAIL, "metadata": {"customer": "ACME"}})
        log.info("b", extra={"input": "q", "metadata": {"internal": True}})
        assert phospho_logging.flush(timeout=10)  # a task your function drops is not a loss
        [event] = server.tasks
        assert event["input"] == "[REDACTED:email]" and "customer" not in event["metadata"]
        stats = phospho_logging.stats()
        assert (stats["redacted_out"], stats["dropped"], stats["queued"]) == (1, 0, 0)
        assert stats["enqueued"] == stats["sent"] + stats["redacted_out"]

    @pytest.mark.parametrize("broken", ["raises", "returns a string"])
    def test_a_broken_function_drops_the_task_never_sends_it(self, broken: str, server: PhosphoTestServer,
                                                             creds: dict, tmp_path: Path, diag: List[str]) -> None:
        def redact(event: Dict[str, Any]) -> Any:
            if broken == "raises":
                raise KeyError("customer")
            return "not an event"

        phospho_logging.configure(local_dir=str(tmp_path), redact=redact, **creds)
        for _ in range(3):
            log.info("a", extra={"input": EMAIL})
        assert not phospho_logging.flush(timeout=10)
        assert server.tasks == []
        assert phospho_logging.stats()["dropped_by_reason"] == {"redact_error": 3}
        assert said(diag, "the task is dropped (never sent unredacted)") == 1

    @pytest.mark.parametrize("bad", [{}, {"task_id": 5, "input": "q"}, {"task_id": "t", "input": {"a": 1}}])
    def test_an_event_phospho_would_refuse_is_not_sent(self, bad: Dict[str, Any], server: PhosphoTestServer,
                                                       creds: dict, tmp_path: Path) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), redact=lambda event: bad, **creds)
        log.info("a", extra={"input": "q"})
        assert not phospho_logging.flush(timeout=10)
        assert server.tasks == [] and phospho_logging.stats()["dropped_by_reason"] == {"redact_error": 1}

    def test_named_in_the_environment(self, tmp_path: Path) -> None:
        code = ("import logging, phospho_logging\nphospho_logging.configure()\n"
                "logging.getLogger('phospho').info('t', extra={'input': 'q', 'metadata': {'internal': True}})\n"
                "logging.getLogger('phospho').info('t', extra={'input': 'kept'})\n"
                "assert phospho_logging.flush(timeout=10)\n"
                "print(phospho_logging.stats()['redacted_out'])\n")
        env = child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path),
                         "PHOSPHO_REDACT": "tests.test_redact:keep_unless_internal"})
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                                cwd=str(Path(__file__).resolve().parent.parent))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1"


KEPT_SESSIONS = """
import phospho_logging
from phospho_logging.testing import capture_tasks
phospho_logging.configure(sample_rate=0.3)
with capture_tasks(sample_rate=0.3) as tasks:
    for s in range(300):
        phospho_logging.log(input="q", session_id=f"session-{s}")
print(sorted({t["session_id"] for t in tasks}))
"""


class TestSessionSampling:
    def test_whole_sessions_kept_or_left_out(self, server: PhosphoTestServer, creds: dict, tmp_path: Path) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), sample_rate=0.3, **creds)
        for turn in range(4):
            for s in range(200):
                phospho_logging.log(input=f"turn {turn}", session_id=f"session-{s}")
        for _ in range(200):
            phospho_logging.log(input="no session")
        assert phospho_logging.flush(timeout=20)
        by_session: Dict[Optional[str], int] = {}
        for task in server.tasks:
            by_session[task["session_id"]] = by_session.get(task["session_id"], 0) + 1
        kept = {s: n for s, n in by_session.items() if s is not None}
        assert set(kept.values()) == {4}  # every turn of a kept session, none of the others
        assert 30 <= len(kept) <= 90  # about 30% of 200 sessions
        assert 30 <= by_session.get(None, 0) <= 90  # no session: decided by task id
        stats = phospho_logging.stats()
        assert stats["sampled_out"] == 1000 - len(server.tasks)
        assert stats["dropped"] == 0 and stats["enqueued"] == stats["sent"] + stats["sampled_out"]

    def test_feedback_on_a_task_left_out_is_left_out(self, server: PhosphoTestServer, creds: dict,
                                                     tmp_path: Path) -> None:
        phospho_logging.configure(local_dir=str(tmp_path), sample_rate=0.0, **creds)
        task = phospho_logging.log(input="q", session_id="s-out")
        phospho_logging.feedback(task["task_id"], "success")
        assert phospho_logging.flush(timeout=10)
        counts = phospho_logging.stats()["feedback"]
        assert (counts["sampled_out"], counts["spooled"], counts["waiting"]) == (1, 0, 0)
        assert [r for r in server.requests if r.path.endswith("/human-eval")] == []

    def test_the_same_sessions_in_every_process(self) -> None:
        """Two processes (different hash seeds) keep exactly the same sessions."""
        runs = []
        for seed in ("1", "2"):
            result = subprocess.run([sys.executable, "-c", KEPT_SESSIONS], capture_output=True, text=True,
                                    timeout=60, env=child_env({"PYTHONHASHSEED": seed}))
            assert result.returncode == 0, result.stderr
            runs.append(json.loads(result.stdout.replace("'", '"')))
        assert runs[0] == runs[1] and 40 <= len(runs[0]) <= 140

    def test_a_rate_of_zero_is_said(self, tmp_path: Path) -> None:
        code = ("import phospho_logging\nphospho_logging.configure()\nphospho_logging.log(input='q')\n"
                "assert phospho_logging.flush(timeout=10)\nprint(phospho_logging.stats()['sampled_out'])\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                env=child_env({"PHOSPHO_LOCAL_DIR": str(tmp_path), "PHOSPHO_SAMPLE_RATE": "0"}))
        assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr
        assert result.stderr.count("sample_rate is 0: no task is sent or kept") == 1

    def test_a_bad_rate_is_a_clear_error(self) -> None:
        with pytest.raises(ValueError, match="sample_rate must be a number from 0 to 1"):
            phospho_logging.configure(sample_rate=1.5)
