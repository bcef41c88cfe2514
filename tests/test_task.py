"""Record -> task: field rules, extraction, strictness and snapshot semantics."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import re
import sys
from typing import Any, Dict, Iterator, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phospho_logging._event import build_event, task_from_record
from phospho_logging._item import STANDARD_ATTRS, plain_event_dict, plain_record, snapshot_of
from phospho_logging._snapshot import snapshot_record
from tests.strict import wire_errors


def make_record(msg: str = "answered", args: Any = None, **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("phospho.test")
    return logger.makeRecord("phospho.test", logging.INFO, "app.py", 12, msg, args, None, "handler", extra)


def task(**extra: Any) -> Dict[str, Any]:
    return task_from_record(make_record(**extra))


class TestStandardAttrs:
    def test_read_from_a_real_record(self) -> None:
        """The standard attribute set comes from a live LogRecord: taskName is one on 3.12+,
        and before 3.12 an extra of that name is the user's, shipped in the metadata."""
        assert {"name", "msg", "args", "created", "exc_info", "stack_info"} <= STANDARD_ATTRS
        if sys.version_info >= (3, 12):
            assert "taskName" in vars(make_record()) and "taskName" in STANDARD_ATTRS
        else:
            assert "taskName" not in STANDARD_ATTRS
            assert task(input="q", taskName="mine")["metadata"]["taskName"] == "mine"

    def test_no_standard_attribute_leaks_into_metadata(self) -> None:
        """filename, stack_info, taskName and friends never appear as user metadata."""
        event = task(input="q")
        leaked = set(event["metadata"]) & STANDARD_ATTRS
        assert leaked == set()


class TestFields:
    def test_the_issue_example(self) -> None:
        """The README example maps each extra to its protocol field."""
        event = task(input="What is 2+2?", output="4", metadata={"model": "m1"}, session_id="s-1", user_id="u-7")
        assert event["input"] == "What is 2+2?"
        assert event["output"] == "4"
        assert event["session_id"] == "s-1"
        assert event["user_id"] == "u-7"
        assert event["metadata"]["model"] == "m1"
        assert event["task_id"].startswith("task_")
        assert isinstance(event["client_created_at"], int)
        assert wire_errors(event) is None

    def test_other_extras_go_to_metadata_not_top_level(self) -> None:
        """Unknown extras land in metadata, where they cannot collide with server fields."""
        event = task(input="q", environment="prod", created_at="x", tenant="acme")
        assert event["metadata"]["tenant"] == "acme"
        assert event["metadata"]["environment"] == "prod"
        assert event["metadata"]["created_at"] == "x"
        assert "tenant" not in event and "environment" not in event and "created_at" not in event

    def test_metadata_keeps_the_callers_order(self) -> None:
        """Loose extras appear in metadata in the order the caller gave them."""
        event = task(input="q", zeta=1, alpha=2, mid=3)
        assert [k for k in event["metadata"] if not k.startswith("log_")] == ["zeta", "alpha", "mid"]

    def test_underscore_extras_are_private(self) -> None:
        """Extras starting with _ (structlog's _logger, _name) are not shipped."""
        event = task(input="q", _logger=object(), _name="x", visible=1)
        assert "_logger" not in event["metadata"] and "_name" not in event["metadata"]
        assert event["metadata"]["visible"] == 1

    def test_explicit_metadata_wins_over_loose_extras(self) -> None:
        """A key in metadata= beats an extra of the same name."""
        event = task(input="q", metadata={"tenant": "from-metadata"}, tenant="from-extra")
        assert event["metadata"]["tenant"] == "from-metadata"

    def test_log_fields_in_metadata(self) -> None:
        """Logger, level, message and source location are recorded under log_* keys."""
        event = task_from_record(make_record("hello %s", ("you",), input="q"))
        meta = event["metadata"]
        assert meta["log_logger"] == "phospho.test"
        assert meta["log_level"] == "INFO"
        assert meta["log_message"] == "hello you"
        assert meta["log_file"] == "app.py" and meta["log_line"] == 12 and meta["log_function"] == "handler"

    def test_exception_text_recorded(self) -> None:
        """A record logged with exc_info carries the traceback text in metadata."""
        try:
            raise ValueError("boom")
        except ValueError:
            record = logging.getLogger("x").makeRecord("x", 40, "f", 1, "m", None, sys.exc_info(), extra={"input": "q"})
        event = task_from_record(record)
        assert "ValueError: boom" in event["metadata"]["log_exception"]

    def test_given_task_id_and_flag_kept(self) -> None:
        """task_id, version_id and a valid flag are passed through."""
        event = task(input="q", task_id="t-1", version_id="v2", flag="success")
        assert (event["task_id"], event["version_id"], event["flag"]) == ("t-1", "v2", "success")

    def test_version_id_option_is_the_default(self) -> None:
        """The version_id option applies unless the record has its own."""
        pending = snapshot_record(make_record(input="q"))
        assert build_event(pending, version_id="v9")["version_id"] == "v9"
        pending = snapshot_record(make_record(input="q", version_id="mine"))
        assert build_event(pending, version_id="v9")["version_id"] == "mine"

    def test_no_output_is_null(self) -> None:
        """A record without output gives output null, which the server accepts."""
        event = task(input="q")
        assert event["output"] is None and event["raw_output"] is None
        assert wire_errors(event) is None


class TestExtraction:
    def test_json_bytes_are_their_value(self) -> None:
        """Bytes holding a JSON object or array (a raw HTTP body) become that value in
        raw_input/raw_output, as the phospho SDK reads them, and the text, model and token
        counts are taken from it; other bytes stay decoded text."""
        body_in = b'{"model": "llama3", "prompt": "Why is the sky blue?"}'
        body_out = json.dumps({"model": "llama3", "response": "Rayleigh.", "done": True,
                               "prompt_eval_count": 5, "eval_count": 7}).encode()
        event = task(input=body_in, output=body_out)
        assert event["raw_input"] == {"model": "llama3", "prompt": "Why is the sky blue?"}
        assert event["raw_output"]["response"] == "Rayleigh."
        assert (event["input"], event["output"]) == ("Why is the sky blue?", "Rayleigh.")
        assert (event["model"], event["prompt_tokens"], event["completion_tokens"]) == ("llama3", 5, 7)
        assert wire_errors(event) is None
        for plain in (b"just text", b"[not json", b"42"):
            event = task(input=plain)
            assert event["raw_input"] == plain.decode() and event["input"] == plain.decode()
        assert task(input="q", raw_output=b'[{"a": 1}]', output="x")["raw_output"] == [{"a": 1}]

    def test_openai_request_and_response(self) -> None:
        """messages -> last user text; choices -> answer; model, system prompt and usage detected."""
        request = {"model": "gpt-x", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]}
        response = {"model": "gpt-x-2024", "choices": [{"message": {"role": "assistant", "content": "Hello."}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
        event = task(input=request, output=response)
        assert event["input"] == "Hi?"
        assert event["output"] == "Hello."
        assert event["model"] == "gpt-x-2024"
        assert event["system_prompt"] == "Be brief."
        assert (event["prompt_tokens"], event["completion_tokens"], event["total_tokens"]) == (5, 2, 7)
        assert event["raw_input"] == request and event["raw_input_type_name"] == "dict"
        assert wire_errors(event) is None

    def test_pydantic_like_objects(self) -> None:
        """Objects with model_dump (openai's ChatCompletion) are read as their dicts."""

        class Completion:
            def model_dump(self) -> Dict[str, Any]:
                return {"choices": [{"message": {"content": "from pydantic"}}]}

        event = task(input="q", output=Completion())
        assert event["output"] == "from pydantic"
        assert event["raw_output_type_name"] == "Completion"

    def test_custom_text_functions(self) -> None:
        """input_to_str / output_to_str given on the record replace the extraction."""
        event = task(input={"q": 1}, output=[1, 2], input_to_str=lambda x: "IN", output_to_str=lambda x: "OUT")
        assert (event["input"], event["output"]) == ("IN", "OUT")
        assert "input_to_str" not in event["metadata"]

    def test_custom_function_that_raises_or_returns_non_str(self) -> None:
        """A failing text function falls back to the default extraction and is marked."""
        def bad(x: Any) -> str:
            raise RuntimeError("no")

        event = task(input="q", output="a", input_to_str=bad, output_to_str=lambda x: 42)
        assert event["input"] == "q"
        assert event["output"] == "42"
        assert {"input_to_str_raised", "output_to_str_not_str"} <= set(event["metadata"]["phospho_logging_problems"])
        assert wire_errors(event) is None


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


class TestBadInput:
    @pytest.mark.parametrize(
        "extra",
        [
            {"input": datetime.datetime(2024, 1, 1)},
            {"input": b"\xff bytes"},
            {"input": {1, 2}},
            {"input": float("nan"), "output": math.inf},
            {"input": Unprintable(), "output": Unprintable()},
            {"input": 42, "output": 3.5},
            {"input": None},
            {"input": "q", "metadata": "not a dict"},
            {"input": "q", "metadata": {1: "a", "1": "b", (2, 3): "c"}},
            {"input": "q", "user_id": 7, "session_id": 1.5, "flag": "meh", "task_id": ["x"]},
            {"input": "q", "raw_input": 5, "raw_output": [1, "a", None]},
            {"input": "\ud800 lone surrogate", "output": "\udfff"},
        ],
    )
    def test_best_effort_valid_task(self, extra: Dict[str, Any]) -> None:
        """Odd values never raise and always give an event the backend accepts."""
        event = task(**extra)
        assert wire_errors(event) is None
        assert isinstance(event["input"], str)

    def test_cycles(self) -> None:
        """A self-referencing input or metadata is cut, not a crash."""
        loop: Dict[str, Any] = {"messages": []}
        loop["self"] = loop
        event = task(input=loop, metadata={"loop": loop})
        assert wire_errors(event) is None
        assert "cycle" in event["metadata"]["phospho_logging_problems"]

    def test_problems_are_marked(self) -> None:
        """Coercions are listed in metadata so nothing changes silently."""
        event = task(input=42, user_id=7, flag="meh")
        problems = set(event["metadata"]["phospho_logging_problems"])
        assert {"input_not_text", "user_id_not_str", "flag_invalid"} <= problems
        assert event["user_id"] == "7" and event.get("flag") is None
        assert event["metadata"]["flag_invalid"] == "meh"

    def test_bad_format_args(self) -> None:
        """A message whose %-args do not match still gives a task."""
        event = task_from_record(make_record("%d items", ("many",), input="q"))
        assert "message_format" in event["metadata"]["phospho_logging_problems"]
        assert wire_errors(event) is None

    def test_huge_values_truncated_visibly(self) -> None:
        """Fields over max_field_chars are cut and listed in metadata."""
        big = "x" * 5000
        pending = snapshot_record(make_record(input=big, output=big, metadata={"blob": big, "small": "s"}, raw_input={"a": big}))
        event = build_event(pending, max_field_chars=1000)
        assert len(event["input"]) < 1100 and event["input"].endswith("[truncated by phospho-logging]")
        assert set(event["metadata"]["phospho_logging_truncated"]) >= {"input", "output", "raw_input", "metadata.blob"}
        assert event["metadata"]["small"] == "s"
        assert wire_errors(event) is None


class TestSnapshot:
    def test_later_mutation_does_not_change_the_task(self) -> None:
        """What is shipped is the value at the logging call."""
        messages = [{"role": "user", "content": "first"}]
        meta = {"k": "before", "nested": {"n": 1}}
        pending = snapshot_record(make_record(input={"messages": messages}, metadata=meta))
        messages.append({"role": "user", "content": "second"})
        messages[0]["content"] = "changed"
        meta["k"] = "after"
        meta["nested"]["n"] = 2
        event = build_event(pending)
        assert event["input"] == "first"
        assert event["metadata"]["k"] == "before" and event["metadata"]["nested"] == {"n": 1}

    def test_short_tuples_expand_to_their_task(self) -> None:
        """Both short forms the hot paths enqueue carry everything the task needs."""
        record = make_record(input="q", output="a", metadata={"k": "v"})
        short = plain_record(record)
        assert short is not None
        event = build_event(snapshot_of(short))
        assert (event["input"], event["output"], event["metadata"]["k"]) == ("q", "a", "v")
        assert (event["metadata"]["log_level"], event["metadata"]["log_line"]) == ("INFO", 12)
        item = plain_event_dict({"event": "answered", "input": "q", "level": "info"}, "warning", "task_given")
        event = build_event(snapshot_of(item))
        assert (event["task_id"], event["input"], event["metadata"]["log_message"]) == ("task_given", "q", "answered")
        assert event["metadata"]["log_level"] == "INFO"

    def test_a_flat_metadata_dict_is_copied_at_the_call(self) -> None:
        """The commonest record (str input and output, metadata of scalars) is queued as
        a shallow copy: mutating the caller's dict afterwards does not change the task."""
        meta: Dict[str, Any] = {"model": "m1", "temperature": 0.2, "n": 3, "ok": True, "none": None}
        items = [plain_record(make_record(input="q", output="a", metadata=meta)) for _ in range(2)]
        meta["model"], meta["new"] = "changed", 1
        for item in items:  # the call that numbers its call site and the one that finds it
            event = build_event(snapshot_of(item))
            assert {k: v for k, v in event["metadata"].items() if not k.startswith("log_")} == {
                "model": "m1", "temperature": 0.2, "n": 3, "ok": True, "none": None}

    def test_a_hand_made_line_or_time_is_copied_at_the_call(self) -> None:
        """A record built by hand may carry a list as its line or an object as its time:
        the commonest record's item copies them, as it copies the fields."""
        lineno: list = [7]
        record = logging.LogRecord("phospho.test", logging.INFO, "app.py", lineno, "answered", None, None,  # type: ignore[arg-type]
                                   func="handler")
        record.__dict__.update(input="q", output="a", metadata={"k": "v"})
        item = plain_record(record)
        lineno.append("changed")
        assert build_event(snapshot_of(item))["metadata"]["log_line"] == [7]

    def test_the_worker_ships_the_value_at_the_call(self) -> None:
        """Through a handler, with the worker held in an export while the task waits on
        the queue: the caller's later changes to the metadata dict are not shipped."""
        import threading

        import phospho_logging
        from phospho_logging import ExportResult

        entered, release = threading.Event(), threading.Event()
        shipped: list = []

        class Gate:
            destination = "gate"

            def export(self, events: Any, timeout: float) -> Any:
                shipped.extend(json.loads(e.json) for e in events)
                entered.set()
                release.wait(30)
                return ExportResult.delivered()

            def close(self) -> None:
                pass

        handler = phospho_logging.PhosphoHandler(exporter=Gate(), api_key="k", project_id="p")
        logger = logging.getLogger("phospho.test.copied_at_the_call")
        logger.propagate, logger.level = False, logging.INFO
        logger.addHandler(handler)
        try:
            meta: Dict[str, Any] = {"model": "m1"}
            logger.info("first", extra={"input": "q0"})
            assert entered.wait(30)  # the worker is in export(): the next tasks stay queued
            for i in range(3):
                logger.info("answered", extra={"input": f"q{i + 1}", "output": "a", "metadata": meta})
            meta["model"] = "changed"
            meta["added"] = "later"
            release.set()
            assert handler.flush(timeout=30)
        finally:
            release.set()
            logger.removeHandler(handler)
            handler.close()
        assert [e["input"] for e in shipped] == ["q0", "q1", "q2", "q3"]
        assert [(e["metadata"]["model"], "added" in e["metadata"]) for e in shipped[1:]] == [("m1", False)] * 3

    def test_callers_metadata_not_mutated(self) -> None:
        """Building the task never changes the caller's own dicts."""
        meta = {"k": "v"}
        task(input="q", metadata=meta, extra_key=1)
        assert meta == {"k": "v"}


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(max_size=20),
    st.datetimes(), st.sets(st.integers(), max_size=3),
)
values = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), children, max_size=4),
    ),
    max_leaves=12,
)
extra_keys = st.sampled_from(
    ["input", "output", "metadata", "session_id", "task_id", "user_id", "version_id", "flag",
     "raw_input", "raw_output", "tenant", "model", "created_at", "environment"]
)


class TestProperties:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(extra_keys, values, max_size=8), values)
    def test_any_extras_give_a_strict_valid_event(self, extra: Dict[str, Any], input_value: Any) -> None:
        """Whatever the extras, the task builds without raising and passes strict validation."""
        extra["input"] = input_value
        event = task(**extra)
        assert wire_errors(event) is None

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(extra_keys, values, max_size=8), values)
    def test_the_short_path_builds_the_same_event(self, extra: Dict[str, Any], input_value: Any) -> None:
        """The handlers' compact item (``plain_record``, expanded on the worker)
        gives the event the full snapshot gives, whenever it applies."""
        extra["input"] = input_value
        record = make_record(**extra)
        full = build_event(snapshot_record(record))
        given = extra.get("task_id")
        if not (type(given) is str and given):
            full.pop("task_id")  # random when not given (or unusable)
        for compact in (False, True):  # the queue short, or a backlog
            short = plain_record(record, compact)
            if short is None:
                continue  # foreign types: the handler takes the full path
            event = build_event(snapshot_of(short))
            if not (type(given) is str and given):
                event.pop("task_id")
            assert event == full


class _Wire:
    """An exporter that keeps the wire bytes of each event (the documented boundary)."""

    destination = "wire"

    def __init__(self) -> None:
        self.json: list = []

    def export(self, events: Any, timeout: float) -> Any:
        from phospho_logging import ExportResult

        self.json.extend(e.json for e in events)
        return ExportResult.delivered()

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _side_by_side(name: str, fast: Any = None, **options: Any) -> Iterator[Tuple[logging.Logger, _Wire, _Wire]]:
    """A logger with two handlers: one takes the common-record path, the other (a
    pass-through filter) the general path; each keeps its wire bytes. Both flushed at exit."""
    import phospho_logging

    fast, general = fast or _Wire(), _Wire()
    handlers = [phospho_logging.PhosphoHandler(exporter=fast, api_key="k", project_id="p", **options),
                phospho_logging.PhosphoHandler(exporter=general, api_key="k", project_id="p", **options)]
    handlers[1].addFilter(lambda record: True)
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield logger, fast, general
        for handler in handlers:
            assert handler.flush(timeout=30)
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


_plain_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_ids = st.none() | st.text(max_size=6) | st.integers(0, 3)


class TestCommonRecordPath:
    """The worker writes the commonest records' events straight from their fields; what it
    sends must be what the general path sends, byte for byte (task ids aside)."""

    def test_hand_made_records_with_odd_log_fields(self) -> None:
        """Records built by hand (or rewritten by a filter) may hold a float or a bool where
        logging puts an int or a str: equal values of other types are not confused."""
        with _side_by_side("phospho.test.hand_made") as (logger, fast, general):
            for lineno, func in ((1, "fn"), (1.0, "fn"), (True, "fn"), (0, 0), (0, 0.0), (0, False), (2, ["fn"])):
                record = logging.LogRecord("phospho.test.hand_made", logging.INFO, "f.py", lineno, "m", None, None,
                                           func=func)  # type: ignore[arg-type]
                record.input = "hi"
                logger.handle(record)
        strip = re.compile(rb'^\{"task_id":"task_[0-9a-f]{32}"')
        assert [strip.sub(b"", e) for e in fast.json] == [strip.sub(b"", e) for e in general.json]
        assert len(fast.json) == 7

    def test_parts_equal_to_a_known_site_are_not_that_site(self) -> None:
        """Call sites are numbered by their text: a record whose path or logger name only
        compares equal to a known site's (an object with its own ``__eq__``) keeps its own."""
        import phospho_logging
        from phospho_logging.testing import InMemoryExporter

        class Caseless(str):
            def __eq__(self, other: object) -> bool:
                return isinstance(other, str) and self.lower() == other.lower()

            def __hash__(self) -> int:
                return hash(self.lower())

        class Alias:
            def __eq__(self, other: object) -> bool:
                return other == "phospho.test.alias" or other is self

            def __hash__(self) -> int:
                return hash("phospho.test.alias")

            def __repr__(self) -> str:
                return "other"

        exporter = InMemoryExporter()
        handler = phospho_logging.PhosphoHandler(exporter=exporter, api_key="k", project_id="p")
        logger = logging.getLogger("phospho.test.alias")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            for path, name in (("f.py", "phospho.test.alias"), (Caseless("F.PY"), "phospho.test.alias"),
                               ("f.py", Alias())):
                record = logging.LogRecord(name, logging.INFO, path, 1, "m", None, None, func="fn")  # type: ignore[arg-type]
                record.input = "hi"
                logger.handle(record)
            assert handler.flush(timeout=10)
        finally:
            logger.removeHandler(handler)
            handler.close()
        logged = [(e["metadata"]["log_file"], e["metadata"]["log_logger"]) for e in exporter.events]
        assert logged == [("f.py", "phospho.test.alias"), ("F.PY", "phospho.test.alias"), ("f.py", "other")]

    def test_messages_that_vary_per_call(self) -> None:
        """Call sites are numbered so a queued task is one bytes object; messages that vary
        per call (past the table's cap) and long ones take another form: every task still
        has its own message, line and fields, as the general path writes them."""
        n = 5000  # more than the call-site table holds, whatever other tests put in it
        with _side_by_side("phospho.test.varying") as (logger, fast, general):
            for i in range(n):
                logger.info(f"answer {i}", extra={"input": f"q{i}", "metadata": {"i": i}})
                if i % 1000 == 0:
                    logger.warning("x" * (300 + i), extra={"input": "long"})
                    logger.info("constant", extra={"input": f"c{i}"})
        strip = re.compile(rb'^\{"task_id":"task_[0-9a-f]{32}"')
        assert [strip.sub(b"", e) for e in fast.json] == [strip.sub(b"", e) for e in general.json]
        events = [json.loads(e) for e in fast.json]
        assert len(events) == n + 10
        answers = [e for e in events if e["metadata"]["log_message"].startswith("answer ")]
        assert [(e["input"], e["metadata"]["log_message"], e["metadata"]["i"]) for e in answers] == [
            (f"q{i}", f"answer {i}", i) for i in range(n)]
        assert [len(e["metadata"]["log_message"]) for e in events if e["input"] == "long"] == [
            300 + i for i in range(0, n, 1000)]

    def test_flat_records_as_the_general_path_writes_them(self) -> None:
        """The commonest extras (a str input, a str output or none, metadata of scalars)
        are queued without marshalling: same bytes as the general path, edge values included."""
        metadatas: list = [
            None, {}, {"model": "m1", "temperature": 0.2}, {"n": 2**63, "m": -(2**63) - 1},
            {"nan": float("nan"), "inf": float("-inf")}, {"log_line": 1}, {1: "int key"},
            {"t": True, "f": False, "z": None, "u": "é\u2028\ud800"}, {"nested": {"a": 1}},
        ]
        with _side_by_side("phospho.test.flat") as (logger, fast, general):
            for metadata in metadatas:
                for output in (None, "a", "\udfff"):
                    for _ in range(2):  # the call that numbers its call site, then the one that finds it
                        extra: Dict[str, Any] = {"input": "q\n\"", "output": output}
                        if metadata is not None:
                            extra["metadata"] = metadata
                        logger.info("flat", extra=extra)
                logger.info("no output", extra={"input": "q", "metadata": metadata})
        strip = re.compile(rb'^\{"task_id":"task_[0-9a-f]{32}"')
        assert [strip.sub(b"", e) for e in fast.json] == [strip.sub(b"", e) for e in general.json]
        assert len(fast.json) == 7 * len(metadatas)
        events = [json.loads(e) for e in fast.json]
        assert [e["output"] for e in events[:7]] == [None, None, "a", "a", "\ufffd", "\ufffd", None]

    def test_a_backlog_is_queued_compact_and_written_the_same(self) -> None:
        """Past a backlog of ``COMPACT_FROM`` queued items (the worker held in an export),
        the commonest records are queued marshalled: their events are still byte for
        byte the general path's."""
        import threading

        from phospho_logging._engine import COMPACT_FROM

        entered, release = threading.Event(), threading.Event()

        class Gated(_Wire):
            def export(self, events: Any, timeout: float) -> Any:
                entered.set()
                release.wait(30)
                return super().export(events, timeout)

        with _side_by_side("phospho.test.backlog", fast=Gated(), flush_interval=0.01) as (logger, fast, general):
            try:
                logger.info("first", extra={"input": "q"})
                assert entered.wait(30)  # the fast handler's worker is in export(): a backlog builds
                for i in range(COMPACT_FROM + 200):
                    logger.info("flat", extra={"input": f"q{i}", "output": None if i % 3 else "a",
                                                "metadata": {"i": i, "f": i / 7, "s": "x"}})
            finally:
                release.set()
        strip = re.compile(rb'^\{"task_id":"task_[0-9a-f]{32}"')
        assert [strip.sub(b"", e) for e in fast.json] == [strip.sub(b"", e) for e in general.json]
        assert [json.loads(e)["input"] for e in fast.json[-2:]] == [f"q{COMPACT_FROM + 198}", f"q{COMPACT_FROM + 199}"]

    def test_a_long_run_of_records_is_progress_not_a_stuck_worker(self) -> None:
        """A shutdown watches the worker and keeps what it holds if it takes nothing for a
        while. A long run of records the worker takes one after another (here each one
        through the general path: a NaN in its metadata) is progress: nothing is spooled."""
        import threading

        import phospho_logging

        entered, release = threading.Event(), threading.Event()

        class Gated(_Wire):
            def export(self, events: Any, timeout: float) -> Any:
                if any(b'"input":"held"' in e.json for e in events):
                    entered.set()
                    release.wait(30)
                return super().export(events, timeout)

        exporter = Gated()
        n = 100_000
        handler = phospho_logging.PhosphoHandler(exporter=exporter, api_key="k", project_id="p",
                                                 max_batch_size=n, max_batch_bytes=50_000_000, max_queue_size=2 * n)
        logger = logging.getLogger("phospho.test.long_run")
        logger.propagate, logger.level = False, logging.INFO
        logger.addHandler(handler)
        try:
            logger.info("held", extra={"input": "held"})
            assert entered.wait(30)  # the worker waits in export(): the records below queue up
            metadata = {"v": float("nan")}
            for i in range(n):
                logger.info("b", extra={"input": f"i{i}", "output": "o", "metadata": metadata})
            release.set()
            handler.engine.shutdown(timeout=3.0)
            stats = handler.stats()
        finally:
            release.set()
            logger.removeHandler(handler)
            handler.close()
        assert (stats["sent"], stats["spooled"], stats["dropped"]) == (n + 1, 0, 0)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        input_=st.text(max_size=40) | st.sampled_from(["\ud800", "a\udfffb", "é\n\x01\u2028\"\\"]),
        output=st.none() | st.text(max_size=40),
        metadata=st.none() | st.dictionaries(st.text(max_size=6) | st.sampled_from(["log_line", "log_level"]),
                                             _plain_values, max_size=4) | st.integers(),
        session_id=_ids, user_id=_ids, version_id=_ids, task_id=st.none() | st.text(max_size=6),
        other=st.none() | st.text(max_size=5),
        message=st.text(max_size=12),
        limit=st.sampled_from([100_000, 400]),
    )
    def test_same_bytes_as_the_general_path(self, input_: str, output: Any, metadata: Any, session_id: Any,
                                            user_id: Any, version_id: Any, task_id: Any, other: Any,
                                            message: str, limit: int) -> None:
        import phospho_logging

        extra: Dict[str, Any] = {"input": input_}
        for key, value in (("output", output), ("metadata", metadata), ("session_id", session_id),
                           ("user_id", user_id), ("version_id", version_id), ("task_id", task_id),
                           ("other", other)):
            if value is not None or key == "output":
                extra[key] = value
        fast, general = _Wire(), _Wire()
        options = dict(api_key="k", project_id="p", version_id="v0", max_field_chars=limit)
        handlers = [phospho_logging.PhosphoHandler(exporter=fast, **options),
                    phospho_logging.PhosphoHandler(exporter=general, **options)]
        handlers[1].addFilter(lambda record: True)  # a filter: the handler's general path
        # Two loggers, the same call otherwise: what each call site adds is its own.
        loggers = [logging.getLogger("phospho.test.common_path"), logging.getLogger("phospho.test.other_path")]
        for logger in loggers:
            logger.propagate = False
            logger.setLevel(logging.INFO)
            for handler in handlers:
                logger.addHandler(handler)
        try:
            for logger in loggers:
                logger.info(message, extra=extra)
            for handler in handlers:
                assert handler.flush(timeout=10)
        finally:
            for logger in loggers:
                for handler in handlers:
                    logger.removeHandler(handler)
            for handler in handlers:
                handler.close()
        assert len(fast.json) == len(general.json) == 2
        for mine, theirs in zip(fast.json, general.json):
            if task_id is None:  # each path drew its own id
                mine, theirs = (re.sub(rb'^\{"task_id":"task_[0-9a-f]{32}"', b"<id>", e) for e in (mine, theirs))
            assert mine == theirs
