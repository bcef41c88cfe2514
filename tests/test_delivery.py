"""Delivery policy through the public exporter boundary: an ``InMemoryExporter`` scripted
with ``ExportResult`` values stands where HTTP would be (HTTP itself is tested against the
loopback server in test_pipeline, test_faults and test_cli)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

import pytest

import phospho_logging
from phospho_logging import Exporter, ExportResult, WireEvent
from phospho_logging.testing import InMemoryExporter, capture_tasks

log = logging.getLogger("phospho")


def balanced(stats: Dict[str, Any]) -> bool:
    """Settled (every use is after a flush): nothing queued, and the books balance (a task
    counted twice would make ``queued`` negative, one never settled would leave it above 0)."""
    return stats["queued"] == 0 and (
        stats["enqueued"] == stats["sent"] + stats["rejected"] + stats["dropped"] + stats["queued"] + stats["spooled"]
    )


def online(exporter: Any, tmp_path: Path, **options: Any) -> phospho_logging.Pipeline:
    """configure() with credentials (so there is a spool) and ``exporter`` in place of HTTP."""
    return phospho_logging.configure(exporter=exporter, api_key="k", project_id="p", local_dir=str(tmp_path),
                                     **options)


def log_tasks(n: int, prefix: str = "q") -> List[str]:
    inputs = [f"{prefix}{i}" for i in range(n)]
    for text in inputs:
        log.info("t", extra={"input": text})
    return inputs


class TestBoundary:
    def test_in_memory_exporter_is_an_exporter(self) -> None:
        """The test double satisfies the public protocol."""
        assert isinstance(InMemoryExporter(), Exporter)

    def test_export_receives_wire_events_in_order(self) -> None:
        """export() gets WireEvents (task id, session, time, JSON bytes) in logging order."""
        seen: List[WireEvent] = []

        class Keep(InMemoryExporter):
            def export(self, events: Any, timeout: float) -> ExportResult:
                seen.extend(events)
                assert 0 < timeout <= 10
                return super().export(events, timeout)

        exporter = Keep()
        pipeline = phospho_logging.configure(exporter=exporter)
        log.info("t", extra={"input": "a", "session_id": "s-1", "task_id": "t-1"})
        log.info("t", extra={"input": "b"})
        assert pipeline.flush(timeout=10)
        assert [e.task_id for e in seen][0] == "t-1" and seen[0].session_id == "s-1"
        assert [e.data()["input"] for e in seen] == ["a", "b"] == [e["input"] for e in exporter.events]
        assert all(isinstance(e.json, bytes) and isinstance(e.created, int) for e in seen)

    def test_unknown_kind_is_refused(self) -> None:
        """An ExportResult of a kind the engine does not know is an error where it is made."""
        with pytest.raises(ValueError, match="kind must be one of"):
            ExportResult("maybe")

    def test_exporter_from_dictconfig_handler(self) -> None:
        """PhosphoHandler takes an exporter too."""
        exporter = InMemoryExporter()
        handler = phospho_logging.PhosphoHandler(exporter=exporter)
        lg = logging.getLogger("phospho.exporter")
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        try:
            lg.info("t", extra={"input": "q"})
            assert handler.flush(timeout=10)
            assert [e["input"] for e in exporter.events] == ["q"]
        finally:
            lg.removeHandler(handler)
            handler.close()


class TestRetries:
    def test_transient_failures_are_retried(self, tmp_path: Path) -> None:
        """retry, retry, then delivered: three attempts of the same batch, delivered once."""
        exporter = InMemoryExporter([ExportResult.retry("busy", status=503), ExportResult.retry("busy")])
        pipeline = online(exporter, tmp_path)
        log_tasks(3)
        assert pipeline.flush(timeout=20)
        assert [len(b) for b in exporter.batches] == [3, 3, 3]
        assert [e["input"] for e in exporter.events] == ["q0", "q1", "q2"]
        stats = pipeline.stats()
        assert (stats["retries"], stats["sent"], stats["spooled"]) == (2, 3, 0) and balanced(stats)

    def test_max_attempts_then_spooled(self, tmp_path: Path) -> None:
        """After max_attempts transient failures the batch goes to the spool."""
        exporter = InMemoryExporter([ExportResult.retry("down", cause="refused")] * 3)
        pipeline = online(exporter, tmp_path, max_attempts=3)
        log_tasks(2)
        assert pipeline.flush(timeout=20)  # kept: nothing lost
        stats = pipeline.stats()
        assert [[e["input"] for e in b] for b in exporter.batches[:3]] == [["q0", "q1"]] * 3
        assert stats["spooled_by_reason"] == {"unreachable": 2} and balanced(stats)
        # Then, the exporter working again, the spool is replayed in the background.
        assert phospho_logging.shutdown(timeout=10) is None and len(exporter.events) in (0, 2)

    def test_without_a_spool_undeliverable_tasks_are_dropped_and_counted(self) -> None:
        """No credentials, a custom exporter, failures: dropped with a reason; flush False."""
        exporter = InMemoryExporter([ExportResult("failed", error="nope", status=418)])
        pipeline = phospho_logging.configure(exporter=exporter)
        log_tasks(1)
        assert pipeline.flush(timeout=10) is False
        stats = pipeline.stats()
        assert stats["dropped_by_reason"] == {"http_418": 1} and balanced(stats)

    def test_a_long_retry_after_rests_the_endpoint(self, tmp_path: Path) -> None:
        """A Retry-After over 5 s: no waiting in the worker, the batch is spooled and the
        circuit stays open for that long (the next batch makes no call)."""
        exporter = InMemoryExporter([ExportResult.retry("later", status=429, retry_after=30.0)])
        pipeline = online(exporter, tmp_path)
        log_tasks(1)
        assert pipeline.flush(timeout=10)
        log_tasks(1, "r")
        assert pipeline.flush(timeout=10)
        stats = pipeline.stats()
        assert len(exporter.batches) == 1 and stats["circuit_open"]
        assert stats["spooled_by_reason"] == {"http_429": 1, "circuit_open": 1} and balanced(stats)

    def test_three_failed_batches_open_the_circuit(self, tmp_path: Path) -> None:
        """Three batches failing in a row: the fourth is spooled without a call."""
        exporter = InMemoryExporter([ExportResult.retry("down")] * 3)
        pipeline = online(exporter, tmp_path, max_attempts=1, max_batch_size=1)
        log_tasks(4)
        assert pipeline.flush(timeout=10)
        stats = pipeline.stats()
        assert len(exporter.batches) == 3 and stats["spooled_by_reason"].get("circuit_open") == 1


class TestSplitting:
    def test_too_large_splits_the_batch(self) -> None:
        """413 for a batch of 4: two halves, both delivered."""
        exporter = InMemoryExporter([ExportResult("too_large", status=413)])
        pipeline = phospho_logging.configure(exporter=exporter, max_batch_size=4, flush_interval=60)
        log_tasks(4)
        assert pipeline.flush(timeout=10)
        assert [len(b) for b in exporter.batches] == [4, 2, 2]
        assert sorted(e["input"] for e in exporter.events) == ["q0", "q1", "q2", "q3"]

    def test_one_event_too_large_is_truncated_and_sent(self) -> None:
        """413 for a single event: it is cut (visibly) and sent again."""
        exporter = InMemoryExporter([ExportResult("too_large", status=413)])
        pipeline = phospho_logging.configure(exporter=exporter)
        log.info("t", extra={"input": "x" * 5000})
        assert pipeline.flush(timeout=10)
        [event] = exporter.events
        assert len(event["input"]) < 5000 and event["input"].endswith("[truncated by phospho-logging]")
        assert "input" in event["metadata"]["phospho_logging_truncated"]

    def test_invalid_batch_isolates_the_bad_event(self) -> None:
        """422 for a batch of 4: halves are tried until the one bad event is rejected alone."""
        invalid = ExportResult("invalid", error="bad event", status=422)
        ok = ExportResult.delivered()
        exporter = InMemoryExporter([invalid, ok, invalid, ok, invalid])  # [4] [2] [2] [1] [1]
        pipeline = phospho_logging.configure(exporter=exporter, max_batch_size=4, flush_interval=60)
        log_tasks(4)
        assert pipeline.flush(timeout=10) is False  # a rejection since the last flush
        stats = pipeline.stats()
        assert [len(b) for b in exporter.batches] == [4, 2, 2, 1, 1]
        assert (stats["sent"], stats["rejected"]) == (3, 1) and balanced(stats)
        assert [e["input"] for e in exporter.events] == ["q0", "q1", "q2"]

    def test_per_event_rejections(self) -> None:
        """A delivered batch with refused events: those are counted by reason, not retried."""
        exporter = InMemoryExporter([ExportResult.delivered({1: "Quota exceeded"})])
        pipeline = phospho_logging.configure(exporter=exporter)
        log_tasks(3)
        assert pipeline.flush(timeout=10) is False
        stats = pipeline.stats()
        assert stats["rejected_by_reason"] == {"Quota exceeded": 1} and stats["sent"] == 2 and balanced(stats)
        assert len(exporter.batches) == 1


class TestConfigurationErrors:
    @pytest.mark.parametrize("kind, status", [("auth", 401), ("auth", 403), ("not_found", 404)])
    def test_kept_and_the_endpoint_rested(self, tmp_path: Path, diag: List[str], kind: str, status: int) -> None:
        """A refused key or unknown project: the tasks are spooled, said once, and the next
        batch makes no call."""
        exporter = InMemoryExporter([ExportResult(kind, error="refused", status=status)])
        pipeline = online(exporter, tmp_path, max_batch_size=1)
        log_tasks(2)
        assert pipeline.flush(timeout=10)
        stats = pipeline.stats()
        assert len(exporter.batches) == 1 and stats["spooled"] == 2 and balanced(stats)
        assert sum("PHOSPHO_API_KEY" in m for m in diag) == 1


class TestCapture:
    def test_capture_swaps_the_sink_and_gives_it_back(self) -> None:
        """Inside capture_tasks() the engine's tasks are captured, not exported; after it,
        exported again."""
        exporter = InMemoryExporter()
        pipeline = phospho_logging.configure(exporter=exporter)
        with capture_tasks() as tasks:
            log.info("t", extra={"input": "captured"})
        log.info("t", extra={"input": "exported"})
        assert pipeline.flush(timeout=10)
        assert [t["input"] for t in tasks] == ["captured"]
        assert [e["input"] for e in exporter.events] == ["exported"]

    def test_engines_made_during_a_capture_are_captured(self) -> None:
        """A pipeline configured inside the block is captured too."""
        exporter = InMemoryExporter()
        with capture_tasks() as tasks:
            pipeline = phospho_logging.configure(exporter=exporter)
            log.info("t", extra={"input": "inside"})
        assert pipeline.flush(timeout=10)
        assert [t["input"] for t in tasks] == ["inside"] and exporter.events == []
