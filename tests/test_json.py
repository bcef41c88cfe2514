"""python-json-logger integration: task-carrying records as JSON lines, others unchanged."""

from __future__ import annotations

import datetime
import io
import itertools
import json
import logging
import logging.config
import math
import subprocess
import sys
from typing import Any, Callable, Dict, Iterator, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import phospho_logging
from phospho_logging.json import PhosphoJsonFormatter
from phospho_logging.testing import capture_tasks
from tests.strict import wire_errors
from tests.test_exit import child_env

try:
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # python-json-logger 2.0.7
    from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[no-redef,attr-defined,unused-ignore]

FMT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_KEYS = {"asctime", "levelname", "name", "message"}
_names = itertools.count()


def parse(line: str) -> Dict[str, Any]:
    """json.loads that also refuses NaN and Infinity tokens."""

    def reject(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    value = json.loads(line, parse_constant=reject)
    assert isinstance(value, dict)
    return value


class JsonLog:
    """A dedicated logger writing through a real StreamHandler into a StringIO."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)
        self.logger = logging.getLogger(f"tests.json.n{next(_names)}")
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False

    def lines(self) -> List[str]:
        return self.stream.getvalue().splitlines()

    def events(self) -> List[Dict[str, Any]]:
        return [parse(line) for line in self.lines()]

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()
        self.logger.setLevel(logging.NOTSET)
        self.logger.propagate = True


@pytest.fixture
def json_log() -> Iterator[Callable[..., JsonLog]]:
    """Build JsonLogs around a PhosphoJsonFormatter (or any formatter); removed after the test."""
    made: List[JsonLog] = []

    def make(*args: Any, formatter: Any = None, **kwargs: Any) -> JsonLog:
        log = JsonLog(formatter or PhosphoJsonFormatter(*(args or (FMT,)), **kwargs))
        made.append(log)
        return log

    try:
        yield make
    finally:
        for log in made:
            log.close()


def task_part(line: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in line.items() if key not in LOG_KEYS}


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


def raising_to_str(value: Any) -> str:
    raise RuntimeError("user function failed")


def upper_to_str(value: Any) -> str:
    return str(value).upper()


class TestImport:
    def test_missing_package_names_the_extra(self) -> None:
        """Without python-json-logger, importing phospho_logging.json says which extra to install."""
        code = ("import sys; sys.modules['pythonjsonlogger'] = None\n"
                "try:\n    import phospho_logging.json\nexcept ImportError as e:\n    print(e)\n")
        result = subprocess.run([sys.executable, "-c", code], env=child_env({}), capture_output=True, text=True, timeout=60)
        assert "pip install python-json-logger" in result.stdout, result.stderr

    def test_import_is_quiet(self) -> None:
        """Importing the module uses python-json-logger's current path: no DeprecationWarning."""
        code = "import phospho_logging.json, json; assert json.dumps is not None and hasattr(json, 'JSONDecodeError')"
        result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code],
                                env=child_env({}), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    def test_package_import_does_not_load_python_json_logger(self) -> None:
        """Importing phospho_logging alone never imports the optional dependency."""
        code = "import sys, phospho_logging; print('pythonjsonlogger' in sys.modules)"
        result = subprocess.run([sys.executable, "-c", code], env=child_env({}), capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == "False", result.stderr


class TestTaskLine:
    def test_issue_example_matches_capture(self, json_log: Callable[..., JsonLog]) -> None:
        """The README example renders one line whose task fields equal the captured task."""
        log = json_log()
        extra = {"input": "What is 2+2?", "output": "4", "metadata": {"model": "m1"}, "session_id": "s-1",
                 "user_id": "u-7", "task_id": "task_fixed"}
        with capture_tasks(log.logger) as tasks:
            log.logger.info("answered", extra=extra)
        [line] = log.lines()
        [captured] = tasks
        event = parse(line)
        assert {key: event[key] for key in captured} == captured
        assert (event["input"], event["output"], event["session_id"], event["user_id"]) == ("What is 2+2?", "4", "s-1", "u-7")
        assert event["metadata"]["model"] == "m1"
        assert (event["levelname"], event["name"], event["message"]) == ("INFO", log.logger.name, "answered")
        assert isinstance(event["asctime"], str)

    def test_task_fields_are_strict_valid(self, json_log: Callable[..., JsonLog]) -> None:
        """The task part of the line passes the backend's strict validation."""
        log = json_log()
        log.logger.info("answered", extra={"input": "q", "output": "a", "flag": "success", "version_id": "v1"})
        [event] = log.events()
        assert wire_errors(task_part(event)) is None
        assert event["task_id"].startswith("task_") and isinstance(event["client_created_at"], int)

    def test_loose_extras_only_in_metadata(self, json_log: Callable[..., JsonLog]) -> None:
        """Extras other than task fields appear inside metadata, not at the top level."""
        log = json_log()
        log.logger.info("answered", extra={"input": "q", "tenant": "acme", "request_id": 7})
        [event] = log.events()
        assert "tenant" not in event and "request_id" not in event
        assert event["metadata"]["tenant"] == "acme" and event["metadata"]["request_id"] == 7

    def test_extra_named_in_format_stays_top_level(self, json_log: Callable[..., JsonLog]) -> None:
        """An extra the format string asks for is still rendered at the top level, made JSON-safe."""
        cycle: Dict[str, Any] = {}
        cycle["self"] = cycle
        log = json_log("%(levelname)s %(message)s %(tenant)s %(request)s")
        log.logger.info("answered", extra={"input": "q", "tenant": "acme", "request": cycle})
        [event] = log.events()
        assert event["tenant"] == "acme" and event["metadata"]["tenant"] == "acme"
        assert event["request"] == {"self": "<cycle>"}

    def test_task_fields_win_over_log_fields(self, json_log: Callable[..., JsonLog]) -> None:
        """A static field or format field named like a task field is replaced by the task's value."""
        log = json_log("%(message)s %(user_id)s", static_fields={"input": "static", "service": "api"})
        log.logger.info("answered", extra={"input": "q", "user_id": 42})
        [event] = log.events()
        assert event["input"] == "q" and event["user_id"] == "42" and event["service"] == "api"

    def test_rename_static_and_timestamp(self, json_log: Callable[..., JsonLog]) -> None:
        """rename_fields, static_fields and timestamp apply to task lines as to plain ones."""
        log = json_log(FMT, rename_fields={"levelname": "level"}, static_fields={"service": "api"}, timestamp=True)
        log.logger.warning("answered", extra={"input": "q"})
        log.logger.warning("plain")
        task, plain = log.events()
        for event in (task, plain):
            assert event["level"] == "WARNING" and "levelname" not in event
            assert event["service"] == "api"
            assert datetime.datetime.fromisoformat(event["timestamp"]).tzinfo is not None
        assert task["input"] == "q" and "input" not in plain

    def test_context_binding_applies(self, json_log: Callable[..., JsonLog]) -> None:
        """Fields bound with phospho_logging.context() appear in the line; the record's win."""
        log = json_log()
        with phospho_logging.context(session_id="s-ctx", user_id="u-ctx", metadata={"tenant": "acme"}):
            log.logger.info("answered", extra={"input": "q", "user_id": "u-rec", "metadata": {"k": 1}})
        [event] = log.events()
        assert (event["session_id"], event["user_id"]) == ("s-ctx", "u-rec")
        assert event["metadata"]["tenant"] == "acme" and event["metadata"]["k"] == 1

    def test_phospho_options(self, json_log: Callable[..., JsonLog]) -> None:
        """project_id, version_id, max_field_chars and a 'module:function' input_to_str apply."""
        log = json_log(project_id="p-1", version_id="v-1", max_field_chars="10",
                       input_to_str="tests.test_json:upper_to_str")
        log.logger.info("answered", extra={"input": "what is two plus two", "output": "4"})
        [event] = log.events()
        assert (event["project_id"], event["version_id"]) == ("p-1", "v-1")
        assert event["input"].startswith("WHAT IS TW") and "truncated" in event["input"]
        assert "input" in event["metadata"]["phospho_logging_truncated"]

    def test_exception_is_a_log_field_and_in_metadata(self, json_log: Callable[..., JsonLog]) -> None:
        """exc_info renders as python-json-logger does, and the traceback is in the task too."""
        log = json_log()
        try:
            raise KeyError("missing")
        except KeyError:
            log.logger.exception("failed", extra={"input": "q"})
        [line] = log.lines()
        event = parse(line)
        assert "KeyError" in event["exc_info"] and "KeyError" in event["metadata"]["log_exception"]

    def test_dict_message_keys_not_repeated(self, json_log: Callable[..., JsonLog]) -> None:
        """A dict message carrying a task renders its keys in the task only."""
        log = json_log()
        log.logger.info({"input": "q", "output": "a", "tenant": "acme"})
        [event] = log.events()
        assert event["input"] == "q" and event["output"] == "a"
        assert "tenant" not in event and event["metadata"]["tenant"] == "acme"

    def test_record_not_mutated(self) -> None:
        """Formatting a task-carrying record leaves the caller's record as it was."""
        record = logging.getLogger("tests.json").makeRecord(
            "tests.json", logging.INFO, "app.py", 1, "answered %s", ("x",), None, extra={"input": "q"})
        before = dict(record.__dict__)
        PhosphoJsonFormatter(FMT).format(record)
        assert record.__dict__ == before

    def test_one_serialization_per_line(self, json_log: Callable[..., JsonLog]) -> None:
        """A task line is serialized once, through the configured json_serializer."""
        calls: List[Dict[str, Any]] = []

        def serializer(obj: Dict[str, Any], **kwargs: Any) -> str:
            calls.append(obj)
            return json.dumps(obj, **kwargs)

        log = json_log(FMT, json_serializer=serializer, json_ensure_ascii=False)
        log.logger.info("answered", extra={"input": "café"})
        [line] = log.lines()
        assert len(calls) == 1 and "café" in line


class TestBadInput:
    @pytest.mark.parametrize(
        ("extra", "options"),
        [
            pytest.param({"input": datetime.datetime(2024, 1, 2, 3, 4, 5), "when": datetime.date(2024, 1, 2)}, {}, id="datetime"),
            pytest.param({"input": "q", "output": math.nan, "metadata": {"score": math.inf}}, {}, id="nan"),
            pytest.param({"input": b"\xff\x00bytes", "raw_output": bytearray(b"x")}, {}, id="bytes"),
            pytest.param({"input": {"a", "b"}, "tags": frozenset({1})}, {}, id="set"),
            pytest.param({"input": "cycle", "metadata": "cycle"}, {}, id="cycle"),
            pytest.param({"input": Unprintable(), "output": Unprintable(), "thing": Unprintable()}, {}, id="unprintable"),
            pytest.param({"input": "q"}, {"input_to_str": raising_to_str, "output_to_str": raising_to_str}, id="raising_input_to_str"),
            pytest.param({"input": 42, "session_id": 7, "flag": "maybe", "metadata": [1, 2]}, {}, id="wrong_types"),
        ],
    )
    def test_bad_values_give_a_valid_line(
        self, json_log: Callable[..., JsonLog], extra: Dict[str, Any], options: Dict[str, Any]
    ) -> None:
        """Values JSON cannot carry still give one parsable line with a strict-valid task, no exception."""
        if extra.get("metadata") == "cycle":
            cycle: Dict[str, Any] = {"n": 1}
            cycle["self"] = cycle
            extra = {**extra, "metadata": cycle, "output": [cycle]}
        log = json_log(FMT, **options)
        log.logger.info("answered", extra=extra)
        [line] = log.lines()
        event = parse(line)
        assert wire_errors(task_part(event)) is None
        assert isinstance(event["input"], str) and isinstance(event["metadata"], dict)

    def test_bad_percent_format_keeps_the_task(self, json_log: Callable[..., JsonLog]) -> None:
        """A message whose %-format fails still renders the task."""
        log = json_log()
        log.logger.info("answered %s %s", "only one", extra={"input": "q"})
        [event] = log.events()
        assert event["input"] == "q" and "message_format" in event["metadata"]["phospho_logging_problems"]

    @settings(max_examples=75, deadline=None)
    @given(
        extras=st.dictionaries(
            st.text(min_size=1, max_size=8).filter(lambda k: k.isidentifier() and not k.startswith("_")),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=8)
                | st.datetimes() | st.builds(Unprintable),
                lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                | st.frozensets(st.integers(), max_size=3),
                max_leaves=10,
            ),
            max_size=6,
        ),
        value=st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.lists(st.floats(), max_size=3)),
    )
    def test_any_extras_give_a_valid_line(self, extras: Dict[str, Any], value: Any) -> None:
        """Any extras and input give one strict-valid line and never an exception."""
        extras = {k: v for k, v in extras.items() if k not in logging.LogRecord("", 0, "", 0, "", (), None).__dict__
                  and k not in {"message", "asctime"}}
        record = logging.getLogger("tests.json").makeRecord(
            "tests.json", logging.INFO, "app.py", 1, "answered", (), None, extra={**extras, "input": value})
        line = PhosphoJsonFormatter(FMT).format(record)
        assert "\n" not in line
        assert wire_errors(task_part(parse(line))) is None


class TestFallback:
    def test_internal_failure_gives_plain_line_with_error(
        self, json_log: Callable[..., JsonLog], monkeypatch: pytest.MonkeyPatch, diag: List[str]
    ) -> None:
        """If building the task fails, the plain python-json-logger line carries phospho_logging_error."""

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("internal bug")

        monkeypatch.setattr("phospho_logging.json.build_event", broken)
        log = json_log()
        log.logger.info("answered", extra={"input": "q", "tenant": "acme"})
        [event] = log.events()
        assert event["phospho_logging_error"] == "RuntimeError: internal bug"
        assert event["message"] == "answered" and event["input"] == "q" and event["tenant"] == "acme"
        assert any("internal bug" in message for message in diag)

    def test_unrenderable_plain_line_gives_minimal_line(
        self, json_log: Callable[..., JsonLog], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the plain line cannot be rendered either, a minimal valid line still comes out."""

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("internal bug")

        monkeypatch.setattr("phospho_logging.json.build_event", broken)
        cycle: Dict[str, Any] = {}
        cycle["self"] = cycle
        log = json_log()
        log.logger.error("answered", extra={"input": "q", "request": cycle})
        [event] = log.events()
        assert event == {"name": log.logger.name, "levelname": "ERROR", "message": "answered",
                         "phospho_logging_error": "RuntimeError: internal bug"}


class TestPlainRecords:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {},
            {"rename_fields": {"levelname": "level"}, "static_fields": {"service": "api"}},
            {"timestamp": "ts", "json_indent": 2},
        ],
        ids=["defaults", "rename_static", "timestamp_indent"],
    )
    def test_same_as_python_json_logger(self, kwargs: Dict[str, Any]) -> None:
        """Records without input render exactly as the parent formatter renders them."""
        logger = logging.getLogger("tests.json")
        try:
            raise ValueError("bad")
        except ValueError:
            exc_info = sys.exc_info()
        records = [
            logger.makeRecord("tests.json", logging.INFO, "app.py", 1, "hello %s", ("you",), None, extra={"tenant": "acme"}),
            logger.makeRecord("tests.json", logging.ERROR, "app.py", 2, "failed", (), exc_info),
            logger.makeRecord("tests.json", logging.INFO, "app.py", 3, {"event": "e", "n": 1}, (), None),
        ]
        for record in records:
            assert PhosphoJsonFormatter(FMT, **kwargs).format(record) == JsonFormatter(FMT, **kwargs).format(record)

    def test_plain_record_through_handler(self, json_log: Callable[..., JsonLog]) -> None:
        """A plain record keeps its extras at the top level and gets no task fields."""
        log = json_log()
        log.logger.info("hello", extra={"tenant": "acme"})
        [event] = log.events()
        assert event == {"asctime": event["asctime"], "levelname": "INFO", "name": log.logger.name,
                         "message": "hello", "tenant": "acme"}


class TestConstructor:
    def test_format_is_a_spelling_of_fmt(self, json_log: Callable[..., JsonLog]) -> None:
        """format= works like fmt=, as dictConfig passes it to factories."""
        log = json_log(formatter=PhosphoJsonFormatter(format="%(levelname)s %(message)s"))
        log.logger.info("hello")
        assert log.events() == [{"levelname": "INFO", "message": "hello"}]

    def test_fmt_and_format_together_refused(self) -> None:
        """Giving both fmt and format is a TypeError."""
        with pytest.raises(TypeError, match="fmt or format"):
            PhosphoJsonFormatter(fmt="%(message)s", format="%(message)s")

    @pytest.mark.parametrize(
        ("options", "match"),
        [
            ({"max_field_chars": "many"}, "max_field_chars"),
            ({"max_field_chars": 0}, "max_field_chars"),
            ({"input_to_str": "no_such_module_xyz:func"}, "input_to_str"),
            ({"output_to_str": 3}, "output_to_str"),
            ({"version_id": 3}, "version_id"),
            ({"project_id": 3}, "project_id"),
        ],
    )
    def test_bad_options_raise_clearly(self, options: Dict[str, Any], match: str) -> None:
        """A phospho option of the wrong kind fails at construction, naming the option."""
        with pytest.raises(ValueError, match=match):
            PhosphoJsonFormatter(FMT, **options)

    def test_environment_is_not_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """PHOSPHO_* variables do not change what the formatter prints, nor make it fail."""
        monkeypatch.setenv("PHOSPHO_API_KEY", "key-without-project")
        monkeypatch.setenv("PHOSPHO_VERSION_ID", "from-env")
        record = logging.getLogger("tests.json").makeRecord(
            "tests.json", logging.INFO, "app.py", 1, "answered", (), None, extra={"input": "q"})
        event = parse(PhosphoJsonFormatter(FMT).format(record))
        assert event["version_id"] is None and event["project_id"] is None


class TestDictConfig:
    @pytest.mark.parametrize("key", ["()", "class"])
    def test_configured_from_dict(self, key: str) -> None:
        """dictConfig builds the formatter from "()" (with format and phospho options) or "class"."""
        stream = io.StringIO()
        name = f"tests.json.dictconfig{next(_names)}"
        formatter: Dict[str, Any] = {key: "phospho_logging.json.PhosphoJsonFormatter",
                                     "format": "%(asctime)s %(levelname)s %(message)s"}
        if key == "()":
            formatter.update({"static_fields": {"service": "api"}, "version_id": "v-1", "max_field_chars": "1000"})
        logging.config.dictConfig({
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"phospho_json": formatter},
            "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "phospho_json", "stream": stream}},
            "loggers": {name: {"handlers": ["out"], "level": "INFO", "propagate": False}},
        })
        logger = logging.getLogger(name)
        try:
            assert isinstance(logger.handlers[0].formatter, PhosphoJsonFormatter)
            logger.info("answered", extra={"input": "q", "output": "a", "tenant": "acme"})
            logger.info("plain")
        finally:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
        task, plain = (parse(line) for line in stream.getvalue().splitlines())
        assert {"asctime", "levelname", "message"} <= set(task) and task["input"] == "q"
        assert "tenant" not in task and task["metadata"]["tenant"] == "acme"
        assert plain == {"asctime": plain["asctime"], "levelname": "INFO", "message": "plain",
                         **({"service": "api"} if key == "()" else {})}
        if key == "()":
            assert task["service"] == "api" and task["version_id"] == "v-1"
