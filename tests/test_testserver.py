"""Tests for the loopback PhosphoTestServer, driven by a real `requests` client."""

from __future__ import annotations

import email.utils
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from phospho_logging._testserver import PhosphoTestServer


@pytest.fixture
def srv() -> Iterator[PhosphoTestServer]:
    """A started server, always stopped."""
    server = PhosphoTestServer()
    try:
        yield server.start()
    finally:
        server.stop()


def endpoint(server: PhosphoTestServer, project_id: str | None = None) -> str:
    return f"{server.url}/v2/log/{project_id or server.project_id}"


def post(
    server: PhosphoTestServer,
    events: list[Any] | None = None,
    *,
    data: bytes | None = None,
    key: str | None = "test-key",
    project_id: str | None = None,
    session: Any = requests,
    timeout: float = 5.0,
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if data is None:
        data = json.dumps({"batched_log_events": events or []}).encode()
    return session.post(endpoint(server, project_id), data=data, headers=headers, timeout=timeout)


def event(**fields: Any) -> dict[str, Any]:
    return {"input": "hi", "output": "hello", **fields}


def slot_error(server: PhosphoTestServer, **fields: Any) -> str | None:
    """Send one event; return its error_in_log, or None when it was accepted."""
    reply = post(server, [event(**fields)])
    assert reply.status_code == 200
    return reply.json()["logged_events"][0].get("error_in_log")


class TestHappyPath:
    def test_echoes_events_with_defaults(self, srv: PhosphoTestServer) -> None:
        """Accepted events are echoed with task_id, environment, project_id and times filled."""
        before = int(time.time())
        reply = post(srv, [event(), event(task_id="t-2", client_created_at=1700000000)])
        assert reply.status_code == 200
        first, second = reply.json()["logged_events"]
        assert first["task_id"].startswith("task_")
        assert len(first["task_id"]) == 37
        assert first["environment"] == "default environment"
        assert first["project_id"] == "test-project"
        assert first["metadata"] == {}
        assert before <= first["client_created_at"] == first["created_at"] <= time.time()
        assert second["created_at"] == 1700000000
        assert srv.tasks == [first, second]
        assert srv.task_ids == [first["task_id"], "t-2"]

    def test_unknown_keys_fold_into_metadata(self, srv: PhosphoTestServer) -> None:
        """Unknown top-level keys are kept inside metadata; the caller's metadata keys win."""
        post(srv, [event(model="gpt", total_tokens=3, metadata={"a": 1, "model": "mine"})])
        task = srv.tasks[0]
        assert task["metadata"] == {"a": 1, "model": "mine", "total_tokens": 3}
        assert "model" not in task
        assert "total_tokens" not in task

    def test_empty_batch(self, srv: PhosphoTestServer) -> None:
        """An empty batch is a valid request answered 200 with no events."""
        reply = post(srv, [])
        assert (reply.status_code, reply.json()) == (200, {"logged_events": []})
        assert srv.tasks == []
        assert srv.requests[0].n_events == 0

    def test_recorded_request(self, srv: PhosphoTestServer) -> None:
        """Each request is recorded with status, size, headers, path and event count."""
        reply = post(srv, [event(), event()])
        rec = srv.requests[0]
        assert (rec.status, rec.n_events, rec.method) == (200, 2, "POST")
        assert rec.path == "/v2/log/test-project"
        assert rec.body_bytes == len(reply.request.body) == len(rec.body)
        assert rec.headers["Authorization"] == "Bearer test-key"
        assert rec.time <= time.monotonic()

    def test_state_reads_are_copies(self, srv: PhosphoTestServer) -> None:
        """Mutating what a state property returned does not change the server."""
        post(srv, [event(metadata={"k": 1})])
        srv.tasks[0]["metadata"]["k"] = 2
        srv.tasks.clear()
        assert srv.tasks[0]["metadata"] == {"k": 1}

    def test_concurrent_clients(self, srv: PhosphoTestServer) -> None:
        """Concurrent senders lose no event."""
        def send(n: int) -> None:
            with requests.Session() as session:
                for i in range(10):
                    post(srv, [event(task_id=f"{n}-{i}-{j}") for j in range(5)], session=session)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert srv.wait_for_tasks(400, timeout=5)
        assert len(set(srv.task_ids)) == 400
        assert srv.duplicates == 0


class TestBatchParse:
    def test_missing_input_fails_whole_batch(self, srv: PhosphoTestServer) -> None:
        """An event without input makes the whole batch 422 and nothing is logged."""
        reply = post(srv, [event(), {"output": "x"}])
        assert reply.status_code == 422
        (error,) = reply.json()["detail"]
        assert error["loc"] == ["body", "batched_log_events", 1, "input"]
        assert error["type"] == "missing"
        assert srv.tasks == []
        assert srv.requests[0].status == 422

    def test_non_string_output(self, srv: PhosphoTestServer) -> None:
        """A non-string, non-null output is a 422 located at that event's output."""
        reply = post(srv, [event(output=3)])
        assert reply.status_code == 422
        assert reply.json()["detail"][0]["loc"] == ["body", "batched_log_events", 0, "output"]
        assert srv.tasks == []

    def test_null_or_absent_output_ok(self, srv: PhosphoTestServer) -> None:
        """output may be null or absent."""
        reply = post(srv, [event(output=None), {"input": "x"}])
        assert reply.status_code == 200
        assert len(srv.tasks) == 2

    @pytest.mark.parametrize(
        "data",
        [b"{not json", b"", b"[]", b'{"events": []}', b'{"batched_log_events": {}}',
         b'{"batched_log_events": [1]}', b'{"batched_log_events": [{"input": NaN}]}',
         b'{"batched_log_events": [{"input": "\xff"}]}',
         b'{"batched_log_events": [{"input": "\\ud800"}]}'],
    )
    def test_malformed_bodies(self, srv: PhosphoTestServer, data: bytes) -> None:
        """Bad JSON, bad UTF-8, NaN, lone surrogates or a wrong shape get a 422 detail list."""
        reply = post(srv, data=data)
        assert reply.status_code == 422
        detail = reply.json()["detail"]
        assert detail
        assert all({"loc", "msg", "type"} <= set(d) for d in detail)
        assert detail[0]["loc"][0] == "body"
        assert srv.tasks == []


class TestStrictEvents:
    @pytest.mark.parametrize(
        "fields",
        [{"client_created_at": 1700000000}, {"last_update": None}, {"created_at": 5},
         {"raw_input": ["a", "b"]}, {"raw_input": [{"a": 1}]}, {"raw_input": []},
         {"raw_input": {"m": [1]}}, {"raw_input": "s"}, {"raw_output": [None, "x"]},
         {"raw_output": [{"a": 1}, None]}, {"raw_output": None}, {"flag": "success"},
         {"flag": None}, {"metadata": None}, {"user_id": None}, {"session_id": "s"},
         {"environment": "prod"}, {"task_id": ""}, {"anything": [1, {"x": None}]}],
    )
    def test_valid_fields_accepted(self, srv: PhosphoTestServer, fields: dict[str, Any]) -> None:
        """Values of the right strict type are accepted."""
        assert slot_error(srv, **fields) is None
        assert len(srv.tasks) == 1

    @pytest.mark.parametrize(
        ("fields", "field"),
        [({"client_created_at": 1.0}, "client_created_at"),
         ({"client_created_at": 1.5}, "client_created_at"),
         ({"client_created_at": True}, "client_created_at"),
         ({"client_created_at": "1700000000"}, "client_created_at"),
         ({"last_update": 2.0}, "last_update"), ({"created_at": False}, "created_at"),
         ({"user_id": 42}, "user_id"), ({"version_id": True}, "version_id"),
         ({"flag": "ok"}, "flag"), ({"flag": True}, "flag"),
         ({"raw_input": 3}, "raw_input"), ({"raw_input": True}, "raw_input"),
         ({"raw_input": ["a", {"b": 1}]}, "raw_input"), ({"raw_input": [None]}, "raw_input"),
         ({"raw_output": ["a", {"b": 1}]}, "raw_output"), ({"raw_output": 1.5}, "raw_output"),
         ({"task_id": None}, "task_id"), ({"task_id": 7}, "task_id"),
         ({"metadata": []}, "metadata"), ({"environment": None}, "environment"),
         ({"project_id": 1}, "project_id"), ({"session_id": "\ud800"}, "session_id")],
    )
    def test_invalid_fields_rejected(
        self, srv: PhosphoTestServer, fields: dict[str, Any], field: str
    ) -> None:
        """A strictly invalid field yields a per-event error_in_log naming it, and no task."""
        error = slot_error(srv, **fields)
        assert error is not None
        assert error.startswith(f"{field}: ")
        assert srv.tasks == []
        assert srv.rejected == [(event(**fields), error)]

    def test_bad_event_does_not_fail_batch(self, srv: PhosphoTestServer) -> None:
        """Good events around a bad one are logged; the reply keeps slot order."""
        reply = post(srv, [event(task_id="a"), event(user_id=1), event(task_id="c")])
        slots = reply.json()["logged_events"]
        assert [s.get("task_id") for s in slots] == ["a", None, "c"]
        assert "error_in_log" in slots[1]
        assert srv.task_ids == ["a", "c"]

    def test_other_project_in_event_rejected(self, srv: PhosphoTestServer) -> None:
        """An event naming a project the key does not own is rejected."""
        assert slot_error(srv, project_id="someone-else") == "project_id: Project not found"
        assert slot_error(srv, project_id="test-project") is None


class TestAuth:
    @pytest.mark.parametrize(
        ("headers", "status", "detail"),
        [({}, 403, "Not authenticated"), ({"Authorization": "test-key"}, 403, "Not authenticated"),
         ({"Authorization": "Basic test-key"}, 403, "Not authenticated"),
         ({"Authorization": "Bearer nope"}, 401, "Invalid token")],
    )
    def test_bad_credentials(
        self, srv: PhosphoTestServer, headers: dict[str, str], status: int, detail: str
    ) -> None:
        """Missing or non-Bearer credentials get 403, a wrong token 401; nothing logged."""
        body = json.dumps({"batched_log_events": [event()]})
        reply = requests.post(endpoint(srv), data=body, headers=headers, timeout=5)
        assert (reply.status_code, reply.json()) == (status, {"detail": detail})
        assert srv.tasks == []

    def test_auth_checked_before_body(self, srv: PhosphoTestServer) -> None:
        """A bad key on a malformed body still gets the auth error."""
        assert post(srv, data=b"{", key="nope").status_code == 401

    def test_unknown_project(self, srv: PhosphoTestServer) -> None:
        """A path naming another project gets 404 Project not found."""
        reply = post(srv, [event()], project_id="other")
        assert (reply.status_code, reply.json()) == (404, {"detail": "Project not found"})

    def test_wrong_path_and_method(self, srv: PhosphoTestServer) -> None:
        """Other paths get 404; other methods on the log path get 405."""
        assert requests.post(f"{srv.url}/v1/log/test-project", timeout=5).status_code == 404
        assert requests.get(f"{srv.url}/", timeout=5).status_code == 404
        reply = requests.get(endpoint(srv), timeout=5)
        assert (reply.status_code, reply.headers["Allow"]) == (405, "POST")


class TestDuplicates:
    def test_skipped_across_requests(self, srv: PhosphoTestServer) -> None:
        """Re-sending a task_id echoes it without error but does not log it again."""
        post(srv, [event(task_id="t1", input="first")])
        reply = post(srv, [event(task_id="t1", input="second")])
        assert reply.json()["logged_events"][0]["task_id"] == "t1"
        assert "error_in_log" not in reply.json()["logged_events"][0]
        assert [t["input"] for t in srv.tasks] == ["first"]
        assert srv.duplicates == 1

    def test_skipped_within_batch(self, srv: PhosphoTestServer) -> None:
        """A task_id repeated within one batch is logged once."""
        post(srv, [event(task_id="t1"), event(task_id="t2"), event(task_id="t1")])
        assert srv.task_ids == ["t1", "t2"]
        assert srv.duplicates == 1


class TestFailNext:
    def test_status_and_retry_after_seconds(self, srv: PhosphoTestServer) -> None:
        """fail_next answers the status with Retry-After, logs nothing, then recovers."""
        srv.fail_next(503, 2, retry_after=2.0)
        first, second = post(srv, [event()]), post(srv, [event()])
        assert [first.status_code, second.status_code] == [503, 503]
        assert first.headers["Retry-After"] == "2"
        assert first.json() == {"detail": "Service Unavailable"}
        assert srv.tasks == []
        assert post(srv, [event()]).status_code == 200
        assert [r.status for r in srv.requests] == [503, 503, 200]
        assert srv.requests[0].n_events == 1

    def test_retry_after_fraction_and_http_date(self, srv: PhosphoTestServer) -> None:
        """A fractional Retry-After is sent as a float string; an HTTP-date is passed through."""
        date = email.utils.formatdate(time.time() + 30, usegmt=True)
        srv.fail_next(429, retry_after=1.5)
        srv.fail_next(502, retry_after=date, body={"error": "bad gateway"})
        first, second = post(srv, [event()]), post(srv, [event()])
        assert (first.status_code, first.headers["Retry-After"]) == (429, "1.5")
        assert (second.status_code, second.headers["Retry-After"]) == (502, date)
        assert second.json() == {"error": "bad gateway"}

    def test_no_retry_after_by_default(self, srv: PhosphoTestServer) -> None:
        """Without retry_after there is no Retry-After header."""
        srv.fail_next(500)
        assert "Retry-After" not in post(srv, [event()]).headers

    def test_faults_form_one_fifo(self, srv: PhosphoTestServer) -> None:
        """fail_next and close_next apply in the order they were scripted."""
        srv.fail_next(500)
        srv.close_next()
        srv.fail_next(413)
        assert post(srv, []).status_code == 500
        with pytest.raises(requests.ConnectionError):
            post(srv, [])
        assert post(srv, []).status_code == 413
        assert post(srv, []).status_code == 200

    def test_rejects_bad_status(self) -> None:
        """Statuses outside 200-599 are refused."""
        with pytest.raises(ValueError, match="200-599"):
            PhosphoTestServer().fail_next(101)


class TestHangNext:
    def test_client_times_out_and_stop_is_prompt(self) -> None:
        """A hung request times the client out, and stop() still returns within 2 s."""
        server = PhosphoTestServer().start()
        try:
            server.hang_next()
            with pytest.raises(requests.ReadTimeout):
                post(server, [event()], timeout=0.5)
            assert server.requests[0].status is None
            assert server.tasks == []
            # A second request hung with a client still waiting on it.
            server.hang_next()
            outcome: list[BaseException] = []

            def waiting_client() -> None:
                try:
                    post(server, [event()], timeout=30)
                except requests.RequestException as exc:
                    outcome.append(exc)

            client = threading.Thread(target=waiting_client)
            client.start()
            assert server.wait_for_requests(2)
        finally:
            started = time.monotonic()
            server.stop()
            elapsed = time.monotonic() - started
        client.join(5)
        assert elapsed < 2.5
        assert not client.is_alive()
        assert len(outcome) == 1
        assert isinstance(outcome[0], requests.ConnectionError)


class TestCloseNext:
    def test_connection_closed_without_reply(self, srv: PhosphoTestServer) -> None:
        """close_next reads the request and drops the connection: the client sees an error."""
        srv.close_next()
        with pytest.raises(requests.ConnectionError):
            post(srv, [event()])
        assert srv.requests[0].status is None
        assert srv.requests[0].n_events == 1
        assert srv.tasks == []
        assert post(srv, [event()]).status_code == 200


class TestDelay:
    def test_delays_every_reply(self, srv: PhosphoTestServer) -> None:
        """delay holds each reply back by that many seconds."""
        srv.delay = 0.3
        started = time.monotonic()
        assert post(srv, [event()]).status_code == 200
        assert time.monotonic() - started >= 0.29

    def test_stop_ends_delay(self) -> None:
        """stop() cuts a long delay short."""
        server = PhosphoTestServer().start()
        errors: list[BaseException] = []

        def slow_client() -> None:
            try:
                post(server, [event()], timeout=30)
            except requests.RequestException as exc:
                errors.append(exc)

        client = threading.Thread(target=slow_client)
        try:
            server.delay = 30
            client.start()
            assert server.wait_for_requests(1)
        finally:
            started = time.monotonic()
            server.stop()
            elapsed = time.monotonic() - started
        client.join(5)
        assert elapsed < 2.5
        assert not client.is_alive()
        assert len(errors) == 1


class TestMaxBodyBytes:
    def test_oversized_body_gets_413(self) -> None:
        """A body over max_body_bytes is drained and answered 413; nothing is logged."""
        with PhosphoTestServer(max_body_bytes=1000) as server, requests.Session() as session:
            big = [event(input="x" * 5000)]
            reply = post(server, big, session=session)
            assert reply.status_code == 413
            assert reply.json() == {"detail": "Request Entity Too Large"}
            assert server.tasks == []
            assert server.requests[0].body_bytes > 1000
            # The body was drained, so the same connection still works.
            assert post(server, [event()], session=session).status_code == 200
            assert server.requests[0].client_port == server.requests[1].client_port

    def test_attribute_can_change(self, srv: PhosphoTestServer) -> None:
        """max_body_bytes set after start applies to the next request."""
        srv.max_body_bytes = 10
        assert post(srv, [event()]).status_code == 413
        srv.max_body_bytes = None
        assert post(srv, [event()]).status_code == 200


class TestRejectNextEvents:
    def test_quota_errors(self, srv: PhosphoTestServer) -> None:
        """The next valid events get the quota error; invalid ones do not consume it."""
        srv.reject_next_events(2)
        reply = post(srv, [event(user_id=1), event(task_id="a"), event(task_id="b"),
                           event(task_id="c")])
        slots = reply.json()["logged_events"]
        assert slots[1:3] == [{"error_in_log": "Quota exceeded"}] * 2
        assert slots[0]["error_in_log"].startswith("user_id: ")
        assert srv.task_ids == ["c"]
        assert [reason for _, reason in srv.rejected][1:] == ["Quota exceeded"] * 2
        # A rejected task_id was never logged, so re-sending it later works.
        post(srv, [event(task_id="a")])
        assert srv.task_ids == ["c", "a"]

    def test_custom_reason(self, srv: PhosphoTestServer) -> None:
        """The reason given is the error_in_log text."""
        srv.reject_next_events(1, reason="Max usage quota reached")
        assert slot_error(srv) == "Max usage quota reached"


class TestWaiting:
    def test_wait_for_tasks_times_out(self, srv: PhosphoTestServer) -> None:
        """wait_for_tasks returns False after its timeout when too few tasks arrived."""
        post(srv, [event()])
        started = time.monotonic()
        assert srv.wait_for_tasks(2, timeout=0.2) is False
        assert 0.19 <= time.monotonic() - started < 2

    def test_wait_for_tasks_reached(self, srv: PhosphoTestServer) -> None:
        """wait_for_tasks returns True once enough tasks arrived from another thread."""
        sender = threading.Thread(target=post, args=(srv, [event(), event()]))
        sender.start()
        try:
            assert srv.wait_for_tasks(2, timeout=5) is True
        finally:
            sender.join(5)

    def test_wait_for_requests(self, srv: PhosphoTestServer) -> None:
        """wait_for_requests counts faulted requests too."""
        srv.fail_next(500)
        post(srv, [])
        assert srv.wait_for_requests(1, timeout=1) is True
        assert srv.wait_for_requests(2, timeout=0.1) is False


class TestConnections:
    def test_keep_alive(self, srv: PhosphoTestServer) -> None:
        """Two requests on one Session share one connection."""
        with requests.Session() as session:
            post(srv, [event()], session=session)
            post(srv, [event()], session=session)
        first, second = srv.requests
        assert first.client_port == second.client_port

    def test_stop_with_idle_keep_alive_connection(self) -> None:
        """stop() is prompt even with an idle keep-alive connection open."""
        with requests.Session() as session:
            server = PhosphoTestServer().start()
            try:
                post(server, [event()], session=session)
            finally:
                started = time.monotonic()
                server.stop()
            assert time.monotonic() - started < 2.5
            with pytest.raises(requests.ConnectionError):
                post(server, [event()], session=session, timeout=2)


class TestLifecycle:
    def test_stop_idempotent(self) -> None:
        """stop() may be called twice, and before start()."""
        PhosphoTestServer().stop()
        server = PhosphoTestServer().start()
        server.stop()
        server.stop()
        with pytest.raises(RuntimeError):
            server.start()

    def test_stop_leaves_no_threads(self) -> None:
        """After stop(), no server or handler thread is left, hung or idle ones included."""
        before = threading.active_count()
        with requests.Session() as session:
            with PhosphoTestServer() as server:
                post(server, [event()], session=session)  # leaves an idle keep-alive handler
                server.hang_next()
                with pytest.raises(requests.ReadTimeout):
                    post(server, [event()], timeout=0.2)
            assert threading.active_count() == before

    def test_start_idempotent(self) -> None:
        """start() twice keeps one port and returns the server."""
        server = PhosphoTestServer()
        try:
            assert server.start() is server
            url = server.url
            assert server.start().url == url
            assert url.startswith("http://127.0.0.1:")
        finally:
            server.stop()

    def test_url_before_start(self) -> None:
        """url is unavailable until the server listens."""
        with pytest.raises(RuntimeError):
            PhosphoTestServer().url  # noqa: B018

    def test_custom_credentials(self) -> None:
        """The api_key and project_id given are the ones enforced."""
        with PhosphoTestServer(api_key="k2", project_id="p2") as server:
            assert post(server, [event()], key="k2", project_id="p2").status_code == 200
            assert post(server, [event()], project_id="p2").status_code == 401

    def test_reset(self, srv: PhosphoTestServer) -> None:
        """reset() clears faults, pending rejections, delay and recorded state."""
        post(srv, [event(task_id="t")])
        srv.fail_next(500)
        srv.reject_next_events(1)
        srv.delay = 5
        srv.reset()
        assert (srv.tasks, srv.requests, srv.rejected, srv.duplicates) == ([], [], [], 0)
        assert slot_error(srv, task_id="t") is None  # no fault, no quota, not a duplicate
        assert srv.delay == 0

    def test_silent_on_stderr(self, capfd: pytest.CaptureFixture[str]) -> None:
        """Requests, faults and dropped clients write nothing to stdout or stderr."""
        with PhosphoTestServer() as server:
            post(server, [event()])
            server.close_next()
            with pytest.raises(requests.ConnectionError):
                post(server, [event()])
            server.hang_next()
            with pytest.raises(requests.ReadTimeout):
                post(server, [event()], timeout=0.2)
        assert capfd.readouterr() == ("", "")

    def test_module_does_not_import_requests(self) -> None:
        """Importing the module leaves requests unimported."""
        # Load the file alone: the package __init__ may import requests itself.
        path = os.path.join(os.path.dirname(__file__), "..", "phospho_logging", "_testserver.py")
        code = (
            "import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('_ts', {path!r})\n"
            "module = sys.modules['_ts'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "assert module.PhosphoTestServer\n"
            "sys.exit('requests' in sys.modules)\n"
        )
        assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
