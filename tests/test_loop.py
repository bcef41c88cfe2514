"""Our own HTTP traffic never becomes a task, even with everything logged at DEBUG."""

from __future__ import annotations

import logging

import phospho_logging
from phospho_logging.testing import PhosphoTestServer


class TestSelfTraffic:
    def test_root_logger_at_debug_with_urllib3_debug(self, server: PhosphoTestServer, creds: dict) -> None:
        """Handler on the root at DEBUG, urllib3 chatty: exactly our tasks arrive, no loop."""
        root = logging.getLogger()
        root.setLevel(logging.DEBUG)
        seen_on_root = []

        class Spy(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen_on_root.append(record.name)

        spy = Spy()
        root.addHandler(spy)
        logging.getLogger("urllib3").setLevel(logging.DEBUG)
        try:
            pipeline = phospho_logging.configure(**creds, logger="", max_batch_size=1)
            for i in range(5):
                logging.getLogger("app").info("t", extra={"input": f"q{i}"})
            assert pipeline.flush(timeout=10)
            # urllib3 did log our requests on the root logger...
            assert any(name.startswith("urllib3") for name in seen_on_root)
            # ...and none of it was shipped or looped: five tasks, five requests.
            assert sorted(t["input"] for t in server.tasks) == [f"q{i}" for i in range(5)]  # batches overlap
            assert len(server.requests) == 5
        finally:
            root.removeHandler(spy)
            logging.getLogger("urllib3").setLevel(logging.NOTSET)

    def test_records_made_on_the_worker_thread_are_ignored(self, server: PhosphoTestServer, creds: dict) -> None:
        """Even a task-looking record created on our worker thread is never shipped."""
        root = logging.getLogger()
        root.setLevel(logging.DEBUG)

        class Echo(logging.Filter):
            """Turns every urllib3 record into a task-looking one, as a hostile filter could."""

            def filter(self, record: logging.LogRecord) -> bool:
                if record.name.startswith("urllib3"):
                    record.input = "self traffic"
                return True

        echo = Echo()
        logging.getLogger("urllib3.connectionpool").addFilter(echo)
        logging.getLogger("urllib3").setLevel(logging.DEBUG)
        try:
            pipeline = phospho_logging.configure(**creds, logger="")
            logging.getLogger("app").info("t", extra={"input": "real"})
            assert pipeline.flush(timeout=10)
            logging.getLogger("app").info("t", extra={"input": "real2"})
            assert pipeline.flush(timeout=10)
            assert [t["input"] for t in server.tasks] == ["real", "real2"]
        finally:
            logging.getLogger("urllib3.connectionpool").removeFilter(echo)
            logging.getLogger("urllib3").setLevel(logging.NOTSET)
