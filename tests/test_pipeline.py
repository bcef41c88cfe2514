"""End to end: configure(), the queue pair and PhosphoHandler against a real loopback server."""

from __future__ import annotations

import gzip
import json
import logging
import queue
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List

import pytest

import phospho_logging
from phospho_logging import PhosphoHandler, PhosphoQueueHandler, PhosphoQueueListener
from phospho_logging.testing import InMemoryExporter, PhosphoTestServer
from tests.strict import wire_errors

log = logging.getLogger("phospho")


def reconciles(stats: Dict[str, Any]) -> bool:
    """The books balance, and no task is counted twice (which would make ``queued`` negative)."""
    return stats["queued"] >= 0 and (
        stats["enqueued"] == stats["sent"] + stats["rejected"] + stats["dropped"] + stats["queued"] + stats["spooled"]
    )


class TestConfigure:
    def test_tasks_reach_the_server(self, server: PhosphoTestServer, creds: dict) -> None:
        """The issue's example: a logged task arrives with every field."""
        pipeline = phospho_logging.configure(**creds)
        log.info("answered", extra={"input": "What is 2+2?", "output": "4", "metadata": {"model": "m1"},
                                    "session_id": "s-1", "user_id": "u-7"})
        assert pipeline.flush(timeout=10)
        [task] = server.tasks
        assert (task["input"], task["output"], task["session_id"], task["user_id"]) == ("What is 2+2?", "4", "s-1", "u-7")
        assert task["metadata"]["model"] == "m1"
        assert server.rejected == []

    def test_request_headers(self, server: PhosphoTestServer, creds: dict) -> None:
        """Bearer auth, JSON content type and a real User-Agent are sent."""
        phospho_logging.configure(**creds)
        log.info("x", extra={"input": "q"})
        assert phospho_logging.flush(timeout=10)
        headers = {k.lower(): v for k, v in server.requests[0].headers.items()}
        assert headers["authorization"] == f"Bearer {server.api_key}"
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("phospho-logging/")

    def test_records_without_input_are_ignored(self, server: PhosphoTestServer, creds: dict) -> None:
        """Only task-carrying records become tasks."""
        pipeline = phospho_logging.configure(**creds)
        log.info("plain line")
        log.warning("another", extra={"output": "no input"})
        log.info("task", extra={"input": "q"})
        assert pipeline.flush(timeout=10)
        assert [t["input"] for t in server.tasks] == ["q"]
        assert pipeline.stats()["enqueued"] == 1

    def test_batches_by_count(self, server: PhosphoTestServer, creds: dict) -> None:
        """max_batch_size caps the events per request."""
        pipeline = phospho_logging.configure(**creds, max_batch_size=10, flush_interval=60)
        for i in range(25):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=10)
        # Requests overlap (max_in_flight), so they may arrive in any order.
        assert sorted(r.n_events for r in server.requests) == [5, 10, 10]
        assert sorted(int(t["input"][1:]) for t in server.tasks) == list(range(25))

    def test_batches_by_bytes(self, server: PhosphoTestServer, creds: dict) -> None:
        """max_batch_bytes caps the body size; every task still arrives."""
        pipeline = phospho_logging.configure(**creds, max_batch_bytes=4000, flush_interval=60)
        for i in range(20):
            log.info("t", extra={"input": f"{i}" + "x" * 1000})
        assert pipeline.flush(timeout=10)
        assert len(server.tasks) == 20
        assert len(server.requests) >= 5
        assert max(r.body_bytes for r in server.requests) <= 4000

    def test_batches_by_time(self, server: PhosphoTestServer, creds: dict) -> None:
        """Without flush, a partial batch is sent after flush_interval."""
        phospho_logging.configure(**creds, flush_interval=0.2)
        log.info("t", extra={"input": "q"})
        assert server.wait_for_tasks(1, timeout=10)

    def test_reconfigure_never_ships_twice(self, server: PhosphoTestServer, creds: dict) -> None:
        """A second configure() replaces the pipeline; each task is delivered exactly once."""
        first = phospho_logging.configure(**creds, flush_interval=60)
        for i in range(10):
            log.info("t", extra={"input": f"a{i}"})
        second = phospho_logging.configure(**creds, flush_interval=60)
        for i in range(10):
            log.info("t", extra={"input": f"b{i}"})
        assert second.flush(timeout=10) and first.flush(timeout=10)
        assert sorted(t["input"] for t in server.tasks) == sorted([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)])
        assert server.duplicates == 0
        assert len([h for h in log.handlers if isinstance(h, PhosphoQueueHandler)]) == 1
        assert second.handler is first.handler  # handed over, not replaced

    def test_stats_reconcile(self, server: PhosphoTestServer, creds: dict) -> None:
        """enqueued == sent + rejected + dropped + queued, and sent matches the server."""
        pipeline = phospho_logging.configure(**creds)
        server.reject_next_events(2, "Quota exceeded")
        for i in range(12):
            log.info("t", extra={"input": f"q{i}"})
        pipeline.flush(timeout=10)
        stats = pipeline.stats()
        assert reconciles(stats)
        assert stats["sent"] == len(server.tasks) == 10
        assert stats["rejected"] == 2
        assert stats["rejected_by_reason"] == {"Quota exceeded": 2}

    def test_flush_false_after_rejections(self, server: PhosphoTestServer, creds: dict) -> None:
        """flush() says False when tasks since the last flush were rejected, True again after."""
        pipeline = phospho_logging.configure(**creds)
        server.reject_next_events(1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10) is False
        log.info("t", extra={"input": "q2"})
        assert pipeline.flush(timeout=10) is True

    def test_full_queue_drops_and_counts(self, server: PhosphoTestServer, creds: dict, diag: List[str]) -> None:
        """A full queue drops tasks without blocking, counts them, and warns once."""
        pipeline = phospho_logging.configure(**creds, max_queue_size=5, max_batch_size=1, timeout=1)
        server.hang_next(1)
        log.info("t", extra={"input": "first"})
        assert server.wait_for_requests(1, timeout=10)  # the worker is now stuck in a request
        for i in range(20):
            log.info("t", extra={"input": f"q{i}"})
        stats = pipeline.stats()
        assert stats["enqueued"] == 21
        assert stats["dropped_by_reason"] == {"queue_full": 15}
        assert stats["queued"] == 6
        assert reconciles(stats)
        assert pipeline.flush(timeout=20) is False  # drops happened since the last flush
        assert sorted(t["input"] for t in server.tasks) == sorted(["first"] + [f"q{i}" for i in range(5)])
        assert reconciles(pipeline.stats())
        assert sum("task queue is full" in m for m in diag) == 1

    def test_module_level_functions(self, server: PhosphoTestServer, creds: dict) -> None:
        """phospho_logging.flush/stats/shutdown act on the configured pipeline."""
        assert phospho_logging.stats() == {} and phospho_logging.flush() is True
        phospho_logging.configure(**creds)
        log.info("t", extra={"input": "q"})
        assert phospho_logging.flush(timeout=10)
        assert phospho_logging.stats()["sent"] == 1
        phospho_logging.shutdown(timeout=5)
        assert phospho_logging.stats() == {}
        log.info("after", extra={"input": "late"})
        assert [t["input"] for t in server.tasks] == ["q"]

    def test_configure_a_logger_object_or_root(self, server: PhosphoTestServer, creds: dict) -> None:
        """logger= accepts a Logger, and "" for the root logger."""
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        pipeline = phospho_logging.configure(**creds, logger="")
        logging.getLogger("anything.below").info("t", extra={"input": "from child"})
        assert pipeline.flush(timeout=10)
        assert [t["input"] for t in server.tasks] == ["from child"]
        other = logging.getLogger("mine")
        pipeline = phospho_logging.configure(**creds, logger=other)
        other.info("t", extra={"input": "from mine"})
        assert pipeline.flush(timeout=10)
        assert other.level == logging.INFO

    def test_many_threads_exactly_once(self, server: PhosphoTestServer, creds: dict) -> None:
        """16 threads logging at once: every task delivered exactly once."""
        pipeline = phospho_logging.configure(**creds, max_queue_size=100_000)

        def work(n: int) -> None:
            for i in range(200):
                log.info("t", extra={"input": f"{n}-{i}"})

        threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert pipeline.flush(timeout=30)
        inputs = [t["input"] for t in server.tasks]
        assert len(inputs) == len(set(inputs)) == 3200
        assert server.duplicates == 0
        stats = pipeline.stats()
        assert stats["sent"] == 3200 and reconciles(stats)


class TestDelivery:
    def test_retries_5xx_then_delivers(self, server: PhosphoTestServer, creds: dict) -> None:
        """503s with Retry-After are retried; the batch arrives once."""
        pipeline = phospho_logging.configure(**creds)
        server.fail_next(503, count=2, retry_after="0")
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20)
        assert [r.status for r in server.requests] == [503, 503, 200]
        assert len(server.tasks) == 1 and pipeline.stats()["retries"] == 2

    @pytest.mark.parametrize("no_proxy, delivered", [("", False), ("127.0.0.1", True)], ids=["proxied", "no_proxy"])
    def test_proxy_variables_apply(self, server: PhosphoTestServer, creds: dict, monkeypatch: pytest.MonkeyPatch,
                                   no_proxy: str, delivered: bool) -> None:
        """HTTP_PROXY and NO_PROXY from the environment are honoured (read once per session)."""
        import socket

        with socket.socket() as closed:  # a port nobody listens on: the "proxy" refuses
            closed.bind(("127.0.0.1", 0))
            dead_proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, dead_proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, no_proxy)
        pipeline = phospho_logging.configure(**creds, max_attempts=1)
        log.info("t", extra={"input": "q"})
        pipeline.flush(timeout=20)
        assert len(server.tasks) == (1 if delivered else 0)
        stats = pipeline.stats()
        assert stats["spooled"] == (0 if delivered else 1)
        if not delivered:  # the message names the proxy, not the API, as what refused
            assert "through the proxy" in stats["last_error"] and "HTTP_PROXY" in stats["last_error"], stats

    def test_netrc_does_not_replace_the_key(self, server: PhosphoTestServer, creds: dict,
                                            netrc_for_loopback: Path) -> None:
        """A ~/.netrc entry for the host does not replace the Bearer key (requests would)."""
        pipeline = phospho_logging.configure(**creds)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20)
        assert server.requests[-1].headers["Authorization"] == f"Bearer {server.api_key}"

    def test_connection_closed_is_retried(self, server: PhosphoTestServer, creds: dict) -> None:
        """A dropped connection is retried on a new one."""
        pipeline = phospho_logging.configure(**creds)
        server.close_next(1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20)
        assert len(server.tasks) == 1

    def test_hung_server_times_out(self, server: PhosphoTestServer, creds: dict) -> None:
        """A server that never answers costs one timeout, then the retry succeeds."""
        pipeline = phospho_logging.configure(**creds, timeout=0.5)
        server.hang_next(1)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20)
        assert len(server.tasks) == 1

    def test_bad_key_reported_once(self, server: PhosphoTestServer, creds: dict, diag: List[str]) -> None:
        """401 is a configuration error: one clear message, tasks kept in the spool, key not shown."""
        creds = dict(creds, api_key="wrong-key-123")
        pipeline = phospho_logging.configure(**creds, max_batch_size=1)
        for i in range(3):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=10)  # kept durably: nothing lost
        stats = pipeline.stats()
        assert stats["spooled"] == 3 and stats["dropped"] == 0 and reconciles(stats)
        assert stats["spooled_by_reason"]["http_401"] == 1  # then the circuit stays open
        assert len(server.requests) == 1  # no hammering with a key that was refused
        err = "\n".join(diag)
        assert err.count("phospho rejected the API key") == 1
        assert "wrong-key-123" not in err and "wrong-key-123" not in repr(stats)
        assert "wrong-key-123" not in repr(pipeline.options) and "wrong-key-123" not in repr(pipeline.engine)

    def test_unknown_project(self, server: PhosphoTestServer, creds: dict, diag: List[str]) -> None:
        """404 names the unknown project, and the task is kept."""
        pipeline = phospho_logging.configure(**dict(creds, project_id="nope"))
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=10)
        assert pipeline.stats()["spooled"] == 1
        assert any("unknown project" in m for m in diag)

    def test_413_splits_the_batch(self, creds: dict) -> None:
        """A body over the server's limit is split until it fits."""
        with PhosphoTestServer(max_body_bytes=3000) as srv:
            pipeline = phospho_logging.configure(api_key=srv.api_key, project_id=srv.project_id, base_url=srv.url,
                                                 flush_interval=60)
            for i in range(8):
                log.info("t", extra={"input": f"{i}" + "y" * 600})
            assert pipeline.flush(timeout=20)
            assert len(srv.tasks) == 8
            assert 413 in [r.status for r in srv.requests]

    def test_every_event_strictly_valid(self, server: PhosphoTestServer, creds: dict) -> None:
        """Odd inputs end up as events the server logs without error_in_log."""
        pipeline = phospho_logging.configure(**creds)
        log.info("t", extra={"input": float("nan"), "output": {"choices": []}, "user_id": 5, "flag": 1,
                             "metadata": {"when": __import__("datetime").date(2024, 1, 2)}, "raw_input": 3})
        assert pipeline.flush(timeout=10)
        assert server.rejected == [] and len(server.tasks) == 1
        assert wire_errors(server.tasks[0]) is None


def _chunked(body: bytes, size: int = 7) -> bytes:
    """``body`` in HTTP/1.1 chunked framing, ``size`` bytes a chunk."""
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


#: A 200 of the API for a batch of three whose second event was refused.
SECOND_REFUSED = json.dumps({"logged_events": [{"input": "q0"}, {"error_in_log": "Quota exceeded"},
                                               {"input": "q2"}]}).encode()


class TestAnswers:
    """How an answer to a batch is read: any HTTP framing, never a stale or partial one."""

    @pytest.mark.parametrize("framing", ["length", "gzip", "gzip_members", "gzip_twice", "deflate", "chunked",
                                         "until_close"])
    def test_any_framing_is_read_whole(self, server: PhosphoTestServer, creds: dict, framing: str) -> None:
        """The answer's per-event refusal is found whatever its framing: so it was read
        whole and decoded (an answer not understood would be retried, not counted)."""
        body, headers = SECOND_REFUSED, {}
        if framing == "gzip":
            body, headers = gzip.compress(body), {"Content-Encoding": "gzip"}
        elif framing == "gzip_members":  # two gzip members one after the other
            body, headers = gzip.compress(body[:30]) + gzip.compress(body[30:]), {"Content-Encoding": "gzip"}
        elif framing == "gzip_twice":
            body, headers = gzip.compress(gzip.compress(body)), {"Content-Encoding": "gzip, gzip"}
        elif framing == "deflate":
            body, headers = zlib.compress(body), {"Content-Encoding": "deflate"}
        elif framing == "chunked":
            body, headers = _chunked(body), {"Transfer-Encoding": "chunked"}
        elif framing == "until_close":
            headers = {"Content-Length": None}
        server.answer_next(200, body, content_type="application/json", headers=headers)
        pipeline = phospho_logging.configure(**creds, max_batch_size=3, flush_interval=60)
        for i in range(3):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=20) is False  # a refusal since the last flush
        stats = pipeline.stats()
        assert stats["rejected_by_reason"] == {"Quota exceeded": 1} and stats["sent"] == 2, stats
        assert stats["retries"] == 0 and reconciles(stats), stats

    def test_an_answer_cut_short_is_not_a_delivery(self, server: PhosphoTestServer, creds: dict) -> None:
        """A 200 that announces more bytes than it sends before the connection closes (its
        start looks like the API's answer): the batch is sent again, and arrives once."""
        answer = b'{"logged_events": []}'
        server.answer_next(200, answer, content_type="application/json",
                           headers={"Content-Length": str(len(answer) + 500)})
        pipeline = phospho_logging.configure(**creds, flush_interval=60)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=20)
        stats = pipeline.stats()
        assert stats["retries"] >= 1 and stats["sent"] == 1, stats
        assert [t["input"] for t in server.tasks] == ["q"]

    @pytest.mark.parametrize("cut", ["json", "gzip"])
    def test_an_answer_that_ends_mid_way_is_not_a_delivery(self, server: PhosphoTestServer, creds: dict,
                                                           cut: str) -> None:
        """A 200 whose framing is whole but whose body stops mid-way: JSON that does not
        close its object, or a gzip stream without its end. The batch goes again."""
        body, headers = SECOND_REFUSED[:40], {}
        if cut == "gzip":
            body, headers = gzip.compress(SECOND_REFUSED)[:-8], {"Content-Encoding": "gzip"}
        server.answer_next(200, body, content_type="application/json", headers=headers)
        pipeline = phospho_logging.configure(**creds, max_batch_size=3, flush_interval=60)
        for i in range(3):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=20)
        stats = pipeline.stats()
        assert stats["retries"] >= 1 and stats["sent"] == 3 and stats["rejected"] == 0, stats
        assert sorted(t["input"] for t in server.tasks) == ["q0", "q1", "q2"]

    @pytest.mark.parametrize("framing", ["until_close", "gzip"])
    def test_a_dripping_answer_ends_at_the_timeout(self, server: PhosphoTestServer, creds: dict,
                                                   framing: str) -> None:
        """A 200 sent a byte every 0.25 s (12 s for the whole of it) on a connection the
        server closes after it, or compressed (its header holds a comment, so nothing
        decodes until its end): the request still ends at its 1 s timeout, and the batch
        goes again and arrives once."""
        body = b'{"logged_events": [' + b" " * 27 + b"]}"
        headers: Dict[str, Any] = {"Content-Length": None}
        if framing == "gzip":
            packed = gzip.compress(body)
            # FCOMMENT set, a comment after the 10-byte header: no output until the stream ends.
            body = packed[:3] + bytes([packed[3] | 0x10]) + packed[4:10] + b"c" * 20 + b"\0" + packed[10:]
            headers = {"Content-Encoding": "gzip"}
        server.answer_next(200, body, content_type="application/json", headers=headers, drip=0.25)
        pipeline = phospho_logging.configure(**creds, timeout=1.0, flush_interval=60)
        log.info("t", extra={"input": "q"})
        started = time.monotonic()
        assert pipeline.flush(timeout=30)
        elapsed = time.monotonic() - started
        stats = pipeline.stats()
        assert stats["retries"] == 1 and stats["sent"] == 1, stats
        assert elapsed < 6, f"the request was held {elapsed:.1f} s past its 1 s timeout"
        assert [t["input"] for t in server.tasks] == ["q"]

    def test_an_answer_through_a_proxy_ends_at_the_timeout(self, server: PhosphoTestServer, creds: dict,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          forwarding_proxy: Any) -> None:
        """Through an HTTP proxy (HTTP_PROXY), an answer that ends when the connection
        closes, sent a byte every 0.9 s: the request ends at its 1 s timeout, not at the
        first read past it (1.8 s), and the batch goes again and arrives once."""
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, forwarding_proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        server.answer_next(200, b'{"logged_events": []}', content_type="application/json",
                           headers={"Content-Length": None}, drip=0.9)
        pipeline = phospho_logging.configure(**creds, timeout=1.0, flush_interval=60)
        log.info("t", extra={"input": "q"})
        assert pipeline.flush(timeout=30)
        first, retry = server.requests[0], server.requests[1]
        assert forwarding_proxy.requests == 2 and pipeline.stats()["retries"] == 1
        # The first attempt's length, plus the back-off before the retry (at most 0.2 s).
        assert retry.time - first.time < 1.6, retry.time - first.time
        assert [t["input"] for t in server.tasks] == ["q"]

    def test_a_short_answer_after_a_long_one_is_read_alone(self, server: PhosphoTestServer, creds: dict) -> None:
        """Answers read one after another by one thread (one request in flight): a short
        JSON 200 that is not the API's, after an answer hundreds of times longer that
        was, is not taken for an acknowledgement (nothing of the earlier one is read
        into it: the echo of its events holds the API's key all along); the batch goes
        again and arrives once."""
        pipeline = phospho_logging.configure(**creds, max_in_flight=1, flush_interval=60)
        for i in range(300):
            log.info("t", extra={"input": f"long {i} " + "x" * 2000, "metadata": {"logged_events": i}})
        assert pipeline.flush(timeout=20)
        server.answer_next(200, b'{"status": "ok"}', content_type="application/json")
        log.info("t", extra={"input": "short"})
        assert pipeline.flush(timeout=20)
        stats = pipeline.stats()
        assert stats["retries"] == 1 and stats["sent"] == 301 and reconciles(stats), stats
        assert [t["input"] for t in server.tasks].count("short") == 1 and len(server.tasks) == 301


class TestPhosphoTestRunner:
    """phospho's test runner sets PHOSPHO_TEST_ID (and PHOSPHO_TEST_METRIC) while it runs
    the app's code: as with the phospho SDK, tasks carry test_id under the metric
    "evaluate", and are not sent under another."""

    def test_evaluate_tags_compare_holds_back(self, server: PhosphoTestServer, creds: dict,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        pipeline = phospho_logging.configure(**creds)
        log = logging.getLogger("phospho")
        monkeypatch.setenv("PHOSPHO_TEST_ID", "test-42")
        monkeypatch.setenv("PHOSPHO_TEST_METRIC", "evaluate")
        log.info("t", extra={"input": "evaluated"})
        log.info("t", extra={"input": "evaluated too", "metadata": {"k": 1}})
        assert pipeline.flush(timeout=10)
        monkeypatch.setenv("PHOSPHO_TEST_METRIC", "compare")
        log.info("t", extra={"input": "compared"})
        assert pipeline.flush(timeout=10) is False  # held back: counted, not delivered
        monkeypatch.delenv("PHOSPHO_TEST_ID")
        monkeypatch.delenv("PHOSPHO_TEST_METRIC")
        log.info("t", extra={"input": "after the test run"})
        assert pipeline.flush(timeout=10)
        tags = {t["input"]: t.get("test_id") for t in server.tasks}
        assert tags == {"evaluated": "test-42", "evaluated too": "test-42", "after the test run": None}
        assert pipeline.stats()["dropped_by_reason"] == {"test_run": 1}


class TestInFlight:
    def test_requests_overlap_once_one_succeeded(self, server: PhosphoTestServer, creds: dict) -> None:
        """After a first success, batches go out while earlier ones are still in flight: two
        requests that never answer do not keep a third from arriving; they time out, are
        retried, and every task arrives once."""
        pipeline = phospho_logging.configure(**creds, max_batch_size=10, max_in_flight=3, timeout=1.0)
        log.info("t", extra={"input": "first"})
        assert pipeline.flush(timeout=10)  # one request at a time until one succeeds
        server.hang_next(2)
        for i in range(30):
            log.info("t", extra={"input": f"q{i}"})
        assert server.wait_for_requests(4, timeout=10)
        hung, third = server.requests[1], server.requests[3]
        assert third.time - hung.time < 0.5  # made while the hung ones waited for their 1 s timeout
        assert pipeline.flush(timeout=30)
        assert sorted(t["input"] for t in server.tasks) == sorted(["first"] + [f"q{i}" for i in range(30)])
        stats = pipeline.stats()
        assert stats["sent"] == 31 and stats["retries"] >= 2 and reconciles(stats)

    def test_one_at_a_time_until_one_succeeds(self, server: PhosphoTestServer, creds: dict) -> None:
        """At the start (and after a failure) one request at a time: three batches behind a
        request that hangs wait for it, so a failing endpoint never sees a burst."""
        pipeline = phospho_logging.configure(**creds, max_batch_size=10, max_in_flight=3, timeout=1.0,
                                             max_attempts=1)
        server.hang_next(1)
        for i in range(30):
            log.info("t", extra={"input": f"q{i}"})
        assert server.wait_for_requests(1, timeout=10)
        assert pipeline.flush(timeout=30)
        # The hung request timed out before the second was made: no two overlapped.
        times = [(r.time, r.n_events) for r in server.requests]
        assert times[1][0] - times[0][0] >= 0.9, times
        stats = pipeline.stats()
        assert stats["sent"] == 20 and stats["sent"] + stats["spooled"] + stats["dropped"] == 30 and reconciles(stats)

    def test_a_backlog_goes_out_in_large_requests(self, server: PhosphoTestServer, creds: dict) -> None:
        """A backlog goes out in requests as large as max_batch_bytes allows (not 100 tasks
        each): 3,000 tasks logged at once take a handful of requests."""
        pipeline = phospho_logging.configure(**creds, flush_interval=60)
        for i in range(3000):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=30)
        assert len(server.tasks) == 3000 and len(server.requests) <= 5, [r.n_events for r in server.requests]
        assert all(r.body_bytes <= pipeline.options.max_batch_bytes for r in server.requests)


class TestHandlers:
    def test_phospho_handler_alone_is_asynchronous(self) -> None:
        """PhosphoHandler on a logger ships from a worker thread, never the caller's."""
        threads: List[threading.Thread] = []

        class Recording(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> Any:
                threads.append(threading.current_thread())
                return super().export(events, timeout)

        exporter = Recording()
        handler = PhosphoHandler(exporter=exporter)
        lg = logging.getLogger("phospho.direct")
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        try:
            lg.info("t", extra={"input": "q"})
            assert handler.flush(timeout=10)
            assert [e["input"] for e in exporter.events] == ["q"]
            assert threads and threading.current_thread() not in threads
        finally:
            lg.removeHandler(handler)
            handler.close()

    @pytest.mark.parametrize("kind", ["PhosphoHandler", "pipeline"])
    def test_records_after_close_keep_the_books(self, server: PhosphoTestServer, creds: dict, kind: str) -> None:
        """Records reaching a closed handler (or a shut-down pipeline) are delivered by a
        revived worker that keeps its predecessor's counts: stats() and flush() stay true."""
        lg = logging.getLogger(f"phospho.revive.{kind}")
        lg.setLevel(logging.INFO)
        if kind == "PhosphoHandler":
            handler: Any = PhosphoHandler(**creds)
            lg.addHandler(handler)
            lg.info("t", extra={"input": "before"})
            assert handler.flush(timeout=10)
            handler.close()
            target = handler
        else:
            pipeline = phospho_logging.configure(**creds, logger=lg)
            lg.info("t", extra={"input": "before"})
            assert pipeline.flush(timeout=10)
            pipeline.shutdown()
            handler = pipeline.handler
            target = pipeline
        try:
            for i in range(3):
                handler.handle(lg.makeRecord(lg.name, logging.INFO, __file__, 1, "t", (), None, extra={"input": f"late-{i}"}))
                assert target.flush(timeout=10)
            stats = target.stats()
            assert len(server.tasks) == 4
            assert (stats["enqueued"], stats["sent"], stats["queued"]) == (4, 4, 0)
        finally:
            lg.removeHandler(handler)

    def test_stdlib_listener_with_phospho_handler(self, server: PhosphoTestServer, creds: dict) -> None:
        """The stdlib QueueListener can drive PhosphoHandler: the queue handler puts record
        copies carrying their task on the queue, as the stdlib contract says."""
        q: queue.Queue[Any] = queue.Queue()
        sender = PhosphoHandler(**creds)
        listener = logging.handlers.QueueListener(q, sender)
        handler = PhosphoQueueHandler(q)
        lg = logging.getLogger("phospho.stdlib")
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        listener.start()
        try:
            lg.info("hello %s", "you", extra={"input": "q"})
            listener.stop()
            assert sender.flush(timeout=10)
            [task] = server.tasks
            assert task["metadata"]["log_message"] == "hello you"
        finally:
            lg.removeHandler(handler)
            sender.close()

    def test_stdlib_listener_keeps_what_the_caller_snapshotted(self) -> None:
        """Behind a stdlib listener, the task is the one snapshotted on the caller's thread:
        its bound context and the queue handler's own text function are kept."""
        q: queue.Queue[Any] = queue.Queue()
        exporter = InMemoryExporter()
        sender = PhosphoHandler(exporter=exporter)
        listener = logging.handlers.QueueListener(q, sender)
        handler = PhosphoQueueHandler(q, input_to_str=lambda value: "TEXT")
        lg = logging.getLogger("phospho.stdlib.context")
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        listener.start()
        try:
            with phospho_logging.context(session_id="ctx-session"):
                lg.info("t", extra={"input": "q"})
            listener.stop()
            assert sender.flush(timeout=10)
            [event] = exporter.events
            assert (event["input"], event["session_id"]) == ("TEXT", "ctx-session")
        finally:
            lg.removeHandler(handler)
            sender.close()

    def test_listener_forwards_records_to_other_handlers(self, server: PhosphoTestServer, creds: dict) -> None:
        """Other handlers given to PhosphoQueueListener still receive the records."""
        seen = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record.getMessage())

        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        listener = PhosphoQueueListener(q, PhosphoHandler(**creds), Collect())
        handler = PhosphoQueueHandler(q)
        handler.listener = listener
        lg = logging.getLogger("phospho.fwd")
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        listener.start()
        try:
            lg.info("msg %d", 1, extra={"input": "q"})
            assert listener.flush(timeout=10)
            assert seen == ["msg 1"] and len(server.tasks) == 1
        finally:
            lg.removeHandler(handler)
            listener.stop(timeout=2)

    def test_other_handlers_get_every_record(self) -> None:
        """With other handlers behind the listener, they get every record (tasks or not),
        as from the stdlib pair; only tasks are shipped."""
        seen: List[str] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record.getMessage())

        exporter = InMemoryExporter()
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        listener = PhosphoQueueListener(q, PhosphoHandler(exporter=exporter), Collect())
        handler = PhosphoQueueHandler(q)
        handler.listener = listener
        lg = logging.getLogger("phospho.every")
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        try:
            lg.info("a task", extra={"input": "q"})
            lg.warning("plain %s", "warning")
            assert listener.flush(timeout=10)
            assert seen == ["a task", "plain warning"]
            assert [e["input"] for e in exporter.events] == ["q"]
        finally:
            lg.removeHandler(handler)
            listener.stop(timeout=2)

    def test_a_handler_finds_its_listener_by_queue(self) -> None:
        """The stdlib pattern (handler and listener share a queue, neither told of the
        other, the listener not started): tasks are still shipped."""
        exporter = InMemoryExporter()
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        handler = PhosphoQueueHandler(q)
        listener = PhosphoQueueListener(q, PhosphoHandler(exporter=exporter))
        lg = logging.getLogger("phospho.byqueue")
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        try:
            lg.info("t", extra={"input": "q"})
            assert listener.flush(timeout=10)
            assert [e["input"] for e in exporter.events] == ["q"] and handler.listener is listener
        finally:
            lg.removeHandler(handler)
            listener.stop(timeout=2)

    def test_filters_apply(self, server: PhosphoTestServer, creds: dict) -> None:
        """Handler filters still decide which records are shipped."""
        pipeline = phospho_logging.configure(**creds)
        pipeline.handler.addFilter(lambda r: r.__dict__.get("input") != "secret")
        log.info("t", extra={"input": "secret"})
        log.info("t", extra={"input": "public"})
        assert pipeline.flush(timeout=10)
        assert [t["input"] for t in server.tasks] == ["public"]


class TestOptions:
    def test_environment_variables(self, server: PhosphoTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
        """PHOSPHO_* variables configure everything, including a trailing /v2 in the URL."""
        monkeypatch.setenv("PHOSPHO_API_KEY", server.api_key)
        monkeypatch.setenv("PHOSPHO_PROJECT_ID", server.project_id)
        monkeypatch.setenv("PHOSPHO_BASE_URL", server.url + "/v2/")
        monkeypatch.setenv("PHOSPHO_MAX_BATCH_SIZE", "2")
        pipeline = phospho_logging.configure()
        assert pipeline.options.max_batch_size == 2
        for i in range(3):
            log.info("t", extra={"input": f"q{i}"})
        assert pipeline.flush(timeout=10)
        assert [r.n_events for r in server.requests] == [2, 1]

    @pytest.mark.parametrize(
        "options, message",
        [
            ({"api_key": "k"}, "project_id"),
            ({"project_id": "p"}, "api_key"),
            ({"max_batch_size": 0}, "max_batch_size"),
            ({"timeout": "soon"}, "timeout"),
            ({"nonsense": 1}, "unknown"),
            ({"api_key": "k", "project_id": "p", "base_url": "http://example.com"}, "plain http"),
            ({"base_url": "ftp://x"}, "base_url"),
        ],
    )
    def test_bad_options_are_clear_errors(self, options: dict, message: str) -> None:
        """Misconfiguration fails at configure() with a message naming the option."""
        with pytest.raises((ValueError, TypeError), match=message):
            phospho_logging.configure(**options)

    def test_plain_http_refusal_names_both_switches(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The refusal names the option and the variable (dictConfig and docker-compose
        users set variables), and the variable does let a trusted endpoint through."""
        with pytest.raises(ValueError) as refused:
            phospho_logging.configure(api_key="k", project_id="p", base_url="http://example.com")
        assert "allow_insecure_http=True" in str(refused.value)
        assert "PHOSPHO_ALLOW_INSECURE_HTTP=1" in str(refused.value)
        monkeypatch.setenv("PHOSPHO_ALLOW_INSECURE_HTTP", "1")
        pipeline = phospho_logging.configure(api_key="k", project_id="p", base_url="http://example.com")
        assert pipeline.options.endpoint == "http://example.com/v2/log/p"
        pipeline.shutdown(timeout=0)

    def test_insecure_http_allowed_explicitly(self) -> None:
        """allow_insecure_http=True lets a trusted plain-http endpoint through."""
        pipeline = phospho_logging.configure(api_key="k", project_id="p", base_url="http://example.com",
                                             allow_insecure_http=True)
        assert pipeline.options.endpoint == "http://example.com/v2/log/p"
        pipeline.shutdown(timeout=0)
