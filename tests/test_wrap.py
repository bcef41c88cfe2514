"""phospho_logging.wrap: every form, every call shape, one complete task per call."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import inspect
import logging
import sys
from typing import Any, Dict, Iterator, List

import openai
import pytest

import phospho_logging
from phospho_logging import wrap
from phospho_logging.testing import PhosphoTestServer, capture_tasks
from tests.fake_openai import FakeOpenAI
from tests.strict import wire_errors

USER = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hello there"}]



@pytest.fixture
def records() -> Iterator[List[logging.LogRecord]]:
    """The records logged on the phospho logger during the test."""
    seen: List[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    target = logging.getLogger("phospho")
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        target.removeHandler(handler)


def sync_client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="test", max_retries=0)


def async_client(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="test", max_retries=0)


class TestForms:
    def test_bare_decorator(self) -> None:
        """@wrap logs one task per call with the argument as input and the result as output."""

        @wrap
        def answer(question: str) -> str:
            return question.upper()

        with capture_tasks() as tasks:
            assert answer("hi") == "HI"
            assert answer(question="yo") == "YO"
        assert [(t["input"], t["output"]) for t in tasks] == [("hi", "HI"), ("yo", "YO")]
        assert tasks[0]["raw_input"] == {"question": "hi"}

    def test_decorator_with_options(self) -> None:
        """@wrap(...) takes metadata, extra metadata keywords and task fields."""

        @wrap(metadata={"team": "search"}, env="prod", session_id="s-1", user_id="u-1", version_id="v-1")
        def answer(question: str) -> str:
            return "42"

        with capture_tasks() as tasks:
            answer("q")
        task = tasks[0]
        assert task["metadata"]["team"] == "search" and task["metadata"]["env"] == "prod"
        assert (task["session_id"], task["user_id"], task["version_id"]) == ("s-1", "u-1", "v-1")

    def test_call_form(self) -> None:
        """wrap(fn, **metadata)(*args) logs with that metadata and leaves fn unwrapped."""

        def add(a: int, b: int) -> int:
            return a + b

        with capture_tasks() as tasks:
            assert wrap(add, op="add")(2, 3) == 5
            assert add(1, 1) == 2
        assert len(tasks) == 1
        assert tasks[0]["raw_input"] == {"a": 2, "b": 3} and tasks[0]["output"] == "5"
        assert tasks[0]["metadata"]["op"] == "add"

    def test_custom_logger(self, records: List[logging.LogRecord]) -> None:
        """logger= sends the records to that logger instead of phospho."""
        custom = logging.getLogger("tests.wrap.custom")

        @wrap(logger=custom)
        def f(x: str) -> str:
            return x

        with capture_tasks(logger=custom) as tasks:
            f("a")
        assert tasks[0]["metadata"]["log_logger"] == "tests.wrap.custom"
        assert records == []

    def test_logger_by_name(self) -> None:
        """logger= also takes a logger name."""

        @wrap(logger="tests.wrap.named")
        def f(x: str) -> str:
            return x

        with capture_tasks(logger="tests.wrap.named") as tasks:
            f("a")
        assert tasks[0]["metadata"]["log_logger"] == "tests.wrap.named"

    def test_classmethod_and_staticmethod(self) -> None:
        """wrap on top of classmethod/staticmethod wraps the function and keeps the descriptor."""

        class Bot:
            @wrap
            @classmethod
            def make(cls, name: str) -> str:
                return f"{cls.__name__}:{name}"

            @wrap
            @staticmethod
            def shout(text: str) -> str:
                return text.upper()

        with capture_tasks() as tasks:
            assert Bot.make("x") == "Bot:x"
            assert Bot().shout("hey") == "HEY"
        assert [t["raw_input"] for t in tasks] == [{"name": "x"}, {"text": "hey"}]

    def test_not_callable_is_a_type_error(self) -> None:
        """Wrapping something that is not callable fails at wrap time, not at call time."""
        with pytest.raises(TypeError):
            wrap(42)  # type: ignore[call-overload]


class TestSignature:
    def test_name_doc_signature(self) -> None:
        """The wrapper keeps the name, qualname, docstring, module and signature."""

        def ask(question: str, *, temperature: float = 0.2) -> str:
            """Ask the model."""
            return question

        wrapped = wrap(ask)
        assert wrapped.__name__ == "ask" and wrapped.__doc__ == "Ask the model."
        assert wrapped.__qualname__ == ask.__qualname__ and wrapped.__module__ == ask.__module__
        assert inspect.signature(wrapped) == inspect.signature(ask)
        assert wrapped.__wrapped__ is ask  # type: ignore[attr-defined]

    def test_method_binding(self) -> None:
        """As a decorator in a class it binds like a method; self is not part of the input."""

        class Agent:
            def __init__(self, name: str) -> None:
                self.name = name

            @wrap
            def reply(self, question: str, tone: str = "dry") -> str:
                return f"{self.name}: {question} ({tone})"

        agent = Agent("bob")
        with capture_tasks() as tasks:
            assert agent.reply("hi", tone="warm") == "bob: hi (warm)"
        assert tasks[0]["raw_input"] == {"question": "hi", "tone": "warm"}
        assert list(inspect.signature(agent.reply).parameters) == ["question", "tone"]

    def test_kinds_are_preserved(self) -> None:
        """Coroutine, generator and async generator functions stay what they were."""

        async def co() -> int:
            return 1

        def gen() -> Iterator[int]:
            yield 1

        async def agen() -> Any:
            yield 1

        def plain() -> int:
            return 1

        assert inspect.iscoroutinefunction(wrap(co))
        assert inspect.isgeneratorfunction(wrap(gen))
        assert inspect.isasyncgenfunction(wrap(agen))
        assert not any(f(wrap(plain)) for f in (inspect.iscoroutinefunction, inspect.isgeneratorfunction))

    def test_functools_partial(self) -> None:
        """A callable without __name__ (functools.partial) can be wrapped."""

        def power(base: int, exp: int) -> int:
            return base**exp

        square = wrap(functools.partial(power, exp=2))
        with capture_tasks() as tasks:
            assert square(3) == 9
        assert tasks[0]["raw_input"] == {"base": 3}


class TestInput:
    def test_arguments_by_parameter_name(self) -> None:
        """raw_input names every argument, *args and **kwargs included (not "0", "1")."""

        @wrap
        def f(a: int, b: int, *rest: int, **options: Any) -> int:
            return a

        with capture_tasks() as tasks:
            f(1, 2, 3, 4, flag=True)
        assert tasks[0]["raw_input"] == {"a": 1, "b": 2, "rest": [3, 4], "flag": True}

    def test_messages_give_the_last_message(self) -> None:
        """An OpenAI-style messages= call: the input text is the last message; model and
        system prompt are detected."""

        @wrap
        def chat(model: str, messages: List[Dict[str, str]]) -> Dict[str, Any]:
            return {"model": model, "choices": [{"message": {"role": "assistant", "content": "hi!"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

        with capture_tasks() as tasks:
            chat(model="m1", messages=USER)
        task = tasks[0]
        assert (task["input"], task["output"], task["model"]) == ("hello there", "hi!", "m1")
        assert task["system_prompt"] == "Be terse." and task["total_tokens"] == 4
        assert task["raw_input"] == {"model": "m1", "messages": USER}

    def test_builtin_without_signature(self) -> None:
        """A builtin without a signature falls back to {"args": [...], **kwargs}."""
        wrapped = wrap(max)
        with capture_tasks() as tasks:
            assert wrapped(3, 7) == 7
        assert tasks[0]["raw_input"] == {"args": [3, 7]}

    def test_input_copied_at_call_time(self) -> None:
        """The input is what the arguments were when the call started, not after it."""

        @wrap
        def agent(messages: List[Dict[str, str]]) -> str:
            messages.append({"role": "assistant", "content": "appended by the function"})
            messages[0]["content"] = "rewritten"
            return "ok"

        conversation = [{"role": "user", "content": "original"}]
        with capture_tasks() as tasks:
            agent(conversation)
        assert tasks[0]["input"] == "original"
        assert tasks[0]["raw_input"] == {"messages": [{"role": "user", "content": "original"}]}

    def test_text_functions(self) -> None:
        """input_to_str gets the named arguments, output_to_str the return value."""

        @wrap(input_to_str=lambda args: f"Q: {args['q']}", output_to_str=lambda out: f"A: {out['text']}")
        def f(q: str, k: int) -> Dict[str, str]:
            return {"text": q * k}

        with capture_tasks() as tasks:
            f("ab", 2)
        assert (tasks[0]["input"], tasks[0]["output"]) == ("Q: ab", "A: abab")
        assert tasks[0]["raw_input"] == {"q": "ab", "k": 2}

    def test_raising_text_functions_lose_nothing(self) -> None:
        """A text function that raises falls back to the default extraction; the call is unaffected."""

        def boom(value: Any) -> str:
            raise RuntimeError("bad text function")

        @wrap(input_to_str=boom, output_to_str=boom)
        def f(q: str) -> str:
            return "answer"

        with capture_tasks() as tasks:
            assert f("question") == "answer"
        assert (tasks[0]["input"], tasks[0]["output"]) == ("question", "answer")


class TestOutcome:
    def test_settings_of_a_plain_function(self) -> None:
        """Keyword scalars are settings; positional arguments, containers, long texts and
        non-finite numbers are not (they stay in raw_input)."""
        def answer(question: str, style: str = "", n: int = 1, opts: Any = None, note: str = "",
                   ratio: float = 0.0) -> str:
            return "ok"

        with capture_tasks() as tasks:
            wrap(answer)("why?", style="short", n=2, opts={"a": 1}, note="x" * 500, ratio=float("nan"))
        metadata = tasks[0]["metadata"]
        assert (metadata["style"], metadata["n"]) == ("short", 2)
        assert not {"question", "opts", "note", "ratio"} & set(metadata)
        assert tasks[0]["raw_input"]["opts"] == {"a": 1}

    def test_latency_in_metadata(self) -> None:
        """latency_s is a float number of seconds."""
        with capture_tasks() as tasks:
            wrap(lambda: "x")()
        assert isinstance(tasks[0]["metadata"]["latency_s"], float) and tasks[0]["metadata"]["latency_s"] >= 0

    def test_exception_propagates_and_is_logged(self, records: List[logging.LogRecord]) -> None:
        """The very exception propagates; the task has error_type/message, no output, level ERROR."""
        error = ValueError("no quota")

        @wrap
        def f(q: str) -> str:
            raise error

        with capture_tasks() as tasks:
            with pytest.raises(ValueError) as caught:
                f("q")
        assert caught.value is error
        task = tasks[0]
        assert task["output"] is None and task["input"] == "q"
        assert task["metadata"]["error_type"] == "ValueError" and task["metadata"]["error_message"] == "no quota"
        assert [r.levelname for r in records] == ["ERROR"]

    def test_record_points_at_the_caller(self, records: List[logging.LogRecord]) -> None:
        """The record's file, line and function are the caller's (as logging's own are), and
        the message names the wrapped function."""

        def target(q: str) -> str:
            return q

        wrapped = wrap(target)
        line = sys._getframe().f_lineno + 1
        wrapped("x")
        record = records[0]
        assert record.pathname == __file__ and record.lineno == line
        assert record.funcName == "test_record_points_at_the_caller"
        assert record.getMessage() == "wrap: " + target.__qualname__

    def test_async_def_is_awaited(self) -> None:
        """An async function is awaited: one task after the await, with the awaited value."""

        @wrap
        async def f(q: str) -> str:
            await asyncio.sleep(0)
            return q + "!"

        with capture_tasks() as tasks:
            assert asyncio.run(f("hi")) == "hi!"
        assert [(t["input"], t["output"]) for t in tasks] == [("hi", "hi!")]

    def test_async_exception(self) -> None:
        """An async function that raises: the exception propagates and the task has the error."""

        @wrap
        async def f() -> None:
            raise KeyError("k")

        with capture_tasks() as tasks:
            with pytest.raises(KeyError):
                asyncio.run(f())
        assert tasks[0]["metadata"]["error_type"] == "KeyError"

    def test_sync_function_returning_a_coroutine(self) -> None:
        """A plain def returning a coroutine (openai's async create) is logged after the await."""

        async def inner(q: str) -> str:
            return q * 2

        def outer(q: str) -> Any:
            return inner(q)

        wrapped = wrap(outer)
        with capture_tasks() as tasks:
            assert asyncio.run(wrapped("ab")) == "abab"
        assert [(t["input"], t["output"]) for t in tasks] == [("ab", "abab")]

    def test_cancelled_call_is_logged_as_warning(self, records: List[logging.LogRecord]) -> None:
        """A cancelled async call is logged (WARNING, error_type CancelledError) and stays cancelled."""

        @wrap
        async def slow() -> str:
            await asyncio.sleep(30)
            return "never"

        async def main() -> None:
            task = asyncio.ensure_future(slow())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        with capture_tasks() as tasks:
            asyncio.run(main())
        assert tasks[0]["metadata"]["error_type"].endswith("CancelledError")
        assert records[0].levelname == "WARNING"

    def test_internal_failure_never_reaches_the_app(self, monkeypatch: pytest.MonkeyPatch, diag: List[str]) -> None:
        """If recording the call fails, the call still works and the problem is reported."""
        wrap_module = sys.modules["phospho_logging.wrap"]  # the package attribute is the function

        def broken(*args: Any) -> Any:
            raise RuntimeError("bug in snapshot")

        monkeypatch.setattr(wrap_module, "copy_value", broken)
        with capture_tasks() as tasks:
            assert wrap(lambda q: q + "?")("a") == "a?"
        assert tasks == []
        assert any("could not be recorded" in m for m in diag)

    def test_a_raising_handler_does_not_break_the_call(self) -> None:
        """A handler that raises inside emit does not reach the wrapped call's caller."""

        class Bad(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                raise RuntimeError("handler bug")

            def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - stdlib name
                raise RuntimeError("handleError re-raises")

        target = logging.getLogger("phospho")
        handler = Bad()
        target.addHandler(handler)
        target.setLevel(logging.INFO)
        try:
            assert wrap(lambda: 7)() == 7
        finally:
            target.removeHandler(handler)

    def test_odd_values_make_valid_tasks(self) -> None:
        """Datetimes, NaN, objects and bytes in arguments, results and metadata: no exception,
        and the event passes the backend's validation (SDK: these could raise or block the queue)."""

        class Thing:
            pass

        @wrap(metadata={"when": datetime.datetime(2024, 1, 1), "obj": Thing()}, nan=float("nan"))
        def f(when: datetime.datetime, value: float, blob: bytes, thing: Thing) -> Dict[str, Any]:
            return {"at": when, "value": value, "thing": thing}

        with capture_tasks() as tasks:
            f(datetime.datetime(2024, 5, 1, 12), float("nan"), b"\xff\x00", Thing())
        assert wire_errors(tasks[0]) is None


class TestStreamShapes:
    def test_generator_function(self) -> None:
        """A wrapped generator function yields the same chunks and logs one task at the end."""

        @wrap
        def words(text: str) -> Iterator[str]:
            yield from text.split()

        with capture_tasks() as tasks:
            assert list(words("a b c")) == ["a", "b", "c"]
        assert [(t["input"], t["output"]) for t in tasks] == [("a b c", "abc")]
        assert tasks[0]["metadata"]["stream_complete"] is True and tasks[0]["metadata"]["chunks"] == 3

    def test_generator_send_throw_and_return_value(self) -> None:
        """send(), throw() and the return value reach the wrapped generator as with the original."""

        @wrap
        def echo() -> Any:
            received = []
            try:
                while True:
                    received.append((yield len(received)))
            except ValueError:
                yield "caught"
            return received

        gen = echo()
        assert next(gen) == 0 and gen.send("a") == 1 and gen.send("b") == 2
        assert gen.throw(ValueError("stop")) == "caught"
        with pytest.raises(StopIteration) as stop:
            next(gen)
        assert stop.value.value == ["a", "b"]

    def test_contextmanager_over_wrapped_generator(self) -> None:
        """contextlib.contextmanager works on a wrapped generator function, exceptions included."""

        @contextlib.contextmanager
        @wrap
        def session(name: str) -> Iterator[str]:
            try:
                yield f"session {name}"
            except KeyError:
                pass

        with capture_tasks() as tasks:
            with session("x") as s:
                assert s == "session x"
            with session("y"):
                raise KeyError("handled inside the generator")
        assert [t["output"] for t in tasks] == ["session x", "session y"]

    def test_async_generator_function(self) -> None:
        """A wrapped async generator function yields the same chunks and logs one task."""

        @wrap
        async def words(text: str) -> Any:
            for word in text.split():
                await asyncio.sleep(0)
                yield word

        async def main() -> List[str]:
            return [w async for w in words("x y")]

        with capture_tasks() as tasks:
            assert asyncio.run(main()) == ["x", "y"]
        assert [(t["input"], t["output"]) for t in tasks] == [("x y", "xy")]

    def test_async_generator_asend_athrow(self) -> None:
        """asend() and athrow() reach the wrapped async generator."""

        @wrap
        async def counter() -> Any:
            total = 0
            try:
                while True:
                    total += (yield total) or 0
            except ValueError:
                yield -1

        async def main() -> List[int]:
            gen = counter()
            out = [await gen.__anext__(), await gen.asend(5), await gen.asend(2), await gen.athrow(ValueError())]
            await gen.aclose()
            return out

        with capture_tasks() as tasks:
            assert asyncio.run(main()) == [0, 5, 7, -1]
        assert len(tasks) == 1

    def test_asynccontextmanager_over_wrapped_async_generator(self) -> None:
        """contextlib.asynccontextmanager works on a wrapped async generator function."""

        @contextlib.asynccontextmanager
        @wrap
        async def opened(name: str) -> Any:
            try:
                yield name
            except KeyError:
                pass

        async def main() -> None:
            async with opened("a") as value:
                assert value == "a"
            async with opened("b"):
                raise KeyError("handled inside")

        with capture_tasks() as tasks:
            asyncio.run(main())
        assert [t["input"] for t in tasks] == ["a", "b"]

    def test_returned_generator(self) -> None:
        """A plain function returning a generator is treated as a stream."""

        def make(n: int) -> Iterator[str]:
            return (str(i) for i in range(n))

        with capture_tasks() as tasks:
            assert list(wrap(make)(3)) == ["0", "1", "2"]
        assert tasks[0]["output"] == "012" and tasks[0]["metadata"]["stream_end"] == "exhausted"

    def test_stream_true_in_the_call(self) -> None:
        """Any iterator returned by a call with stream=True is a stream."""

        def complete(prompt: str, stream: bool = False) -> Any:
            return iter(["he", "llo"]) if stream else "hello"

        wrapped = wrap(complete)
        with capture_tasks() as tasks:
            assert wrapped("p") == "hello"
            assert list(wrapped("p", stream=True)) == ["he", "llo"]
        assert [t["output"] for t in tasks] == ["hello", "hello"]

    def test_wrap_stream_true_and_false(self) -> None:
        """wrap(stream=True) streams any iterator; wrap(stream=False) never treats a result as a stream."""
        with capture_tasks() as tasks:
            assert list(wrap(lambda: iter("ab"), stream=True)()) == ["a", "b"]
            gen = wrap(lambda: (c for c in "cd"), stream=False)()
            assert list(gen) == ["c", "d"]
        assert tasks[0]["output"] == "ab"
        assert tasks[1]["output"].startswith("<generator object")

    def test_wrap_stop(self) -> None:
        """wrap(stop=...) ends a stream's task at the chunk where stop is true."""
        wrapped = wrap(lambda: iter(["a", "b", "END", "c"]), stream=True, stop=lambda chunk: chunk == "END")
        with capture_tasks() as tasks:
            assert list(wrapped()) == ["a", "b", "END", "c"]
        assert [t["output"] for t in tasks] == ["abEND"]
        assert tasks[0]["metadata"]["stream_end"] == "stop"


class TestOpenAIClient:
    def test_sync_create_override_in_place(self, fake: FakeOpenAI) -> None:
        """client.chat.completions.create = wrap(...): the response is unchanged and the task complete."""
        client = sync_client(fake)
        client.chat.completions.create = wrap(client.chat.completions.create, feature="chat")  # type: ignore[method-assign]
        with capture_tasks() as tasks:
            response = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert response.choices[0].message.content == "You said: hello there"
        task = tasks[0]
        assert (task["input"], task["output"]) == ("hello there", "You said: hello there")
        assert task["model"] == "gpt-4o-mini" and task["prompt_tokens"] == 4 and task["completion_tokens"] == 4
        assert task["system_prompt"] == "Be terse." and task["metadata"]["feature"] == "chat"
        assert set(task["raw_input"]) == {"model", "messages"}
        assert wire_errors(task) is None

    def test_call_settings_go_to_metadata(self, fake: FakeOpenAI) -> None:
        """The call's keyword settings (temperature, max_tokens, model, a short style) are
        in the task's metadata, where the dashboard filters on them (the SDK sends them at
        the top level); the messages are not, and wrap's own metadata wins on a clash."""
        client = sync_client(fake)
        create = wrap(client.chat.completions.create, feature="chat", temperature="set by wrap")
        with capture_tasks() as tasks:
            create(model="gpt-4o-mini", messages=USER, temperature=0.2, max_tokens=5, user="u-1")
        metadata = tasks[0]["metadata"]
        assert metadata["max_tokens"] == 5 and metadata["model"] == "gpt-4o-mini" and metadata["user"] == "u-1"
        assert metadata["temperature"] == "set by wrap" and metadata["feature"] == "chat"
        assert "messages" not in metadata and wire_errors(tasks[0]) is None

    def test_sync_error_status(self, fake: FakeOpenAI) -> None:
        """An API error propagates as openai raised it, and the task records it."""
        client = sync_client(fake)
        create = wrap(client.chat.completions.create)
        with capture_tasks() as tasks:
            with pytest.raises(openai.RateLimitError):
                create(model="error-429", messages=USER)
        assert tasks[0]["metadata"]["error_type"] == "openai.RateLimitError" and tasks[0]["output"] is None

    def test_async_create(self, fake: FakeOpenAI) -> None:
        """The async client's create is awaited and logged once, with the completion."""
        client = async_client(fake)
        client.chat.completions.create = wrap(client.chat.completions.create)  # type: ignore[method-assign]

        async def main() -> str:
            try:
                response = await client.chat.completions.create(model="m", messages=USER)
                return str(response.choices[0].message.content)
            finally:
                await client.close()

        with capture_tasks() as tasks:
            assert asyncio.run(main()) == "You said: hello there"
        assert [(t["input"], t["output"], t["total_tokens"]) for t in tasks] == [("hello there", "You said: hello there", 8)]

    def test_async_error(self, fake: FakeOpenAI) -> None:
        """An async API error propagates unchanged, with its task."""
        client = async_client(fake)
        create = wrap(client.chat.completions.create)

        async def main() -> None:
            try:
                await create(model="error-500", messages=USER)
            finally:
                await client.close()

        with capture_tasks() as tasks:
            with pytest.raises(openai.InternalServerError):
                asyncio.run(main())
        assert tasks[0]["metadata"]["error_type"] == "openai.InternalServerError"

    def test_delivered_to_phospho(self, fake: FakeOpenAI, server: PhosphoTestServer, creds: Dict[str, str]) -> None:
        """Through configure(): the wrapped calls reach a phospho server as valid, complete tasks."""
        pipeline = phospho_logging.configure(**creds)
        client = sync_client(fake)
        create = wrap(client.chat.completions.create, session_id="s-7")
        create(model="m", messages=USER)
        with pytest.raises(openai.BadRequestError):
            create(model="m", messages=[])
        assert pipeline.flush(timeout=10)
        tasks = server.tasks
        assert [t["output"] for t in tasks] == ["You said: hello there", None]
        assert all(t["session_id"] == "s-7" for t in tasks)
        assert tasks[1]["metadata"]["error_type"] == "openai.BadRequestError"
        assert server.rejected == []


class TestRewrap:
    def test_wrapping_twice_logs_once(self) -> None:
        """Wrapping a wrapped function (a notebook cell run twice) replaces it: one task per call."""

        def f(q: str) -> str:
            return q

        once = wrap(f, run=1)
        twice = wrap(once, run=2)
        with capture_tasks() as tasks:
            twice("x")
        assert len(tasks) == 1 and tasks[0]["metadata"]["run"] == 2
        assert twice.__wrapped__ is f  # type: ignore[attr-defined]

    def test_override_in_place_twice(self, fake: FakeOpenAI) -> None:
        """Overriding a client method twice still logs one task per call."""
        client = sync_client(fake)
        for _ in range(2):
            client.chat.completions.create = wrap(client.chat.completions.create)  # type: ignore[method-assign]
        with capture_tasks() as tasks:
            client.chat.completions.create(model="m", messages=USER)
        assert len(tasks) == 1
