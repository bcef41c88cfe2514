"""Streams: chunks pass through unchanged, and exactly one task is logged however a stream ends."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import logging
import threading
import time
from typing import Any, AsyncIterator, Dict, Iterator, List

import openai
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

import phospho_logging
from phospho_logging import MutableAsyncGenerator, MutableGenerator, log_stream, wrap
from phospho_logging._recorder import MAX_RAW_CHUNKS
from phospho_logging.testing import PhosphoTestServer, capture_tasks
from tests.fake_openai import FakeOpenAI, reply_words
from tests.strict import wire_errors

MESSAGES = [{"role": "user", "content": "stream this answer please"}]
ANSWER = "You said: stream this answer please"
USAGE = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}


def openai_chunks(text: str = "Hello world", usage: bool = False) -> List[Dict[str, Any]]:
    """OpenAI-style chunk dicts: role, one per word, finish, and optionally the usage chunk."""
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    chunks = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    chunks += [dict(base, choices=[{"index": 0, "delta": {"content": w}, "finish_reason": None}])
               for w in reply_words([{"role": "user", "content": text}])[2:]]
    chunks.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if usage:
        for chunk in chunks:
            chunk["usage"] = None
        chunks.append(dict(base, choices=[], usage=dict(USAGE)))
    return chunks


def agen(items: List[Any]) -> AsyncIterator[Any]:
    async def run() -> AsyncIterator[Any]:
        for item in items:
            await asyncio.sleep(0)
            yield item

    return run()


def only(tasks: List[Dict[str, Any]]) -> Dict[str, Any]:
    assert len(tasks) == 1, tasks
    return tasks[0]



def client(fake: FakeOpenAI) -> openai.OpenAI:
    c = openai.OpenAI(base_url=fake.url + "/v1", api_key="test", max_retries=0)
    c.chat.completions.create = wrap(c.chat.completions.create)  # type: ignore[method-assign]
    return c


def async_client(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    c = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="test", max_retries=0)
    c.chat.completions.create = wrap(c.chat.completions.create)  # type: ignore[method-assign]
    return c


class TestLogStream:
    def test_chunks_pass_through_unchanged(self) -> None:
        """The consumer gets the very chunk objects, in order."""
        chunks = openai_chunks()
        with capture_tasks():
            assert all(a is b for a, b in zip(log_stream(iter(chunks), input="q"), chunks))

    def test_chunks_arrive_immediately(self) -> None:
        """Each chunk reaches the consumer before the next one is produced."""
        events: List[str] = []

        def produce() -> Iterator[str]:
            for i in range(3):
                events.append(f"made {i}")
                yield str(i)

        with capture_tasks():
            for chunk in log_stream(produce()):
                events.append(f"got {chunk}")
        assert events == ["made 0", "got 0", "made 1", "got 1", "made 2", "got 2"]

    def test_one_task_at_the_end_not_before(self) -> None:
        """Nothing is logged while the stream runs; one complete task when it is exhausted."""
        with capture_tasks() as tasks:
            stream = log_stream(iter(openai_chunks("Hello world")), input={"messages": MESSAGES})
            for _ in stream:
                assert tasks == []
        task = only(tasks)
        assert (task["input"], task["output"]) == ("stream this answer please", "Hello world")
        meta = task["metadata"]
        assert meta["stream_complete"] is True and meta["stream_end"] == "exhausted" and meta["chunks"] == 4
        assert meta["finish_reason"] == "stop" and meta["time_to_first_chunk_s"] <= meta["latency_s"]
        assert task["raw_output"] == openai_chunks("Hello world") and wire_errors(task) is None

    def test_pydantic_chunks(self) -> None:
        """openai's ChatCompletionChunk objects: text from the deltas, raw chunks as dicts."""
        objects = [ChatCompletionChunk.model_validate(c) for c in openai_chunks("a b c", usage=True)]
        with capture_tasks() as tasks:
            assert list(log_stream(iter(objects), input="q")) == objects
        task = only(tasks)
        assert task["output"] == "a b c" and task["metadata"]["total_tokens"] == 10
        assert task["raw_output"][1]["choices"][0]["delta"] == {"content": "a "}

    def test_include_usage_chunk_after_finish(self) -> None:
        """The task waits for the usage chunk that follows the finish chunk, and carries the usage."""
        chunks = openai_chunks("Hi there", usage=True)
        with capture_tasks() as tasks:
            stream = log_stream(iter(chunks), input="q")
            for chunk in stream:
                if chunk["choices"] and chunk["choices"][0]["finish_reason"] == "stop":
                    assert tasks == []  # not at the finish chunk: the usage is still to come
        meta = only(tasks)["metadata"]
        assert {k: meta[k] for k in USAGE} == USAGE and meta["model"] == "gpt-x"
        assert only(tasks)["output"] == "Hi there"

    def test_plain_strings(self) -> None:
        """A generator of plain strings is one task with the joined text."""
        with capture_tasks() as tasks:
            assert list(log_stream((w for w in ["a", "b", "c"]), input="q")) == ["a", "b", "c"]
        assert only(tasks)["output"] == "abc" and only(tasks)["raw_output"] == ["a", "b", "c"]

    def test_ollama_chunks(self) -> None:
        """Ollama-style chunks: the text of message/response, token counts from the last chunk."""
        chunks = [{"model": "llama3", "message": {"role": "assistant", "content": "Hel"}, "done": False},
                  {"model": "llama3", "message": {"role": "assistant", "content": "lo"}, "done": False},
                  {"model": "llama3", "message": {"role": "assistant", "content": ""}, "done": True,
                   "done_reason": "stop", "prompt_eval_count": 7, "eval_count": 2}]
        with capture_tasks() as tasks:
            list(log_stream(iter(chunks), input="q"))
        meta = only(tasks)["metadata"]
        assert only(tasks)["output"] == "Hello"
        assert (meta["prompt_tokens"], meta["completion_tokens"], meta["total_tokens"]) == (7, 2, 9)
        assert meta["finish_reason"] == "stop"

    def test_stop_function(self) -> None:
        """stop(chunk): the chunk is yielded, the task is logged then, later chunks pass, no second task."""
        with capture_tasks() as tasks:
            stream = log_stream(iter(["a", "b", "<end>", "c", "d"]), input="q", stop=lambda c: c == "<end>")
            seen = []
            for chunk in stream:
                seen.append(chunk)
                if chunk == "<end>":
                    assert len(tasks) == 1
        assert seen == ["a", "b", "<end>", "c", "d"]
        task = only(tasks)
        assert task["output"] == "ab<end>" and task["metadata"]["stream_end"] == "stop"
        assert task["metadata"]["stream_complete"] is True

    def test_raising_stop_function(self, diag: List[str]) -> None:
        """A stop function that raises counts as False and is reported; the stream goes on."""

        def bad(chunk: Any) -> bool:
            raise RuntimeError("bad stop")

        with capture_tasks() as tasks:
            assert list(log_stream(iter("ab"), stop=bad)) == ["a", "b"]
        assert only(tasks)["output"] == "ab" and any("stop function" in m for m in diag)

    def test_break_then_close(self) -> None:
        """A consumer that breaks and closes the stream: one task, marked incomplete."""
        with capture_tasks() as tasks:
            stream = log_stream(iter(["a", "b", "c"]), input="q")
            for _chunk in stream:
                break
            stream.close()
            stream.close()
        task = only(tasks)
        assert task["output"] == "a"
        assert task["metadata"]["stream_complete"] is False and task["metadata"]["stream_end"] == "closed"

    def test_close_closes_the_generator(self) -> None:
        """close() also closes the wrapped generator (its finally runs)."""
        closed = []

        def gen() -> Iterator[str]:
            try:
                yield "a"
                yield "b"
            finally:
                closed.append(True)

        with capture_tasks() as tasks:
            stream = log_stream(gen())
            next(stream)
            stream.close()
        assert closed == [True] and only(tasks)["metadata"]["stream_end"] == "closed"

    def test_context_manager(self) -> None:
        """with log_stream(...) as s: leaving the block ends the task once."""
        with capture_tasks() as tasks:
            with log_stream(iter("abc"), input="q") as stream:
                assert next(stream) == "a"
        assert only(tasks)["metadata"]["stream_end"] == "closed" and only(tasks)["output"] == "a"

    def test_garbage_collected(self) -> None:
        """A stream dropped unfinished is logged when collected (refcount or cycle collector)."""
        with capture_tasks() as tasks:
            stream = log_stream(iter("abc"), input="dropped")
            next(stream)
            del stream
            cyclic = log_stream(iter("xyz"), input="cycle")
            next(cyclic)
            holder: List[Any] = [cyclic]
            holder.append(holder)
            del cyclic, holder
            deadline = time.monotonic() + 10
            while len(tasks) < 2 and time.monotonic() < deadline:
                gc.collect()
        by_input = {t["input"]: t for t in tasks}
        assert set(by_input) == {"dropped", "cycle"}
        assert all(t["metadata"]["stream_end"] == "garbage_collected" for t in tasks)
        assert by_input["cycle"]["output"] == "x"

    def test_stream_raises(self) -> None:
        """The stream's exception is re-raised unchanged, and the task records it with the partial text."""
        error = ConnectionError("peer went away")

        def gen() -> Iterator[str]:
            yield "partial "
            raise error

        with capture_tasks() as tasks:
            with pytest.raises(ConnectionError) as caught:
                list(log_stream(gen(), input="q"))
        assert caught.value is error
        task = only(tasks)
        assert task["output"] == "partial " and task["metadata"]["stream_end"] == "error"
        assert task["metadata"]["error_type"] == "ConnectionError" and task["metadata"]["stream_complete"] is False

    def test_raw_output_capped(self) -> None:
        """raw_output keeps the first MAX_RAW_CHUNKS chunks; the text keeps everything."""
        n = MAX_RAW_CHUNKS + 200
        with capture_tasks() as tasks:
            list(log_stream((str(i % 10) for i in range(n)), input="q"))
        task = only(tasks)
        assert len(task["output"]) == n and task["metadata"]["chunks"] == n
        assert isinstance(task["raw_output"], list) and len(task["raw_output"]) == MAX_RAW_CHUNKS
        assert task["metadata"]["raw_output_truncated"] is True

    def test_fields_and_metadata(self) -> None:
        """Task fields are set; other keywords and LogRecord names go into metadata."""
        with capture_tasks() as tasks:
            list(log_stream(iter("a"), input="q", session_id="s", user_id="u", metadata={"k": 1},
                            name="not the logger name", tenant="acme"))
        task = only(tasks)
        assert (task["session_id"], task["user_id"]) == ("s", "u")
        assert task["metadata"]["k"] == 1 and task["metadata"]["tenant"] == "acme"
        assert task["metadata"]["name"] == "not the logger name"

    def test_input_copied_at_start(self) -> None:
        """The input is copied when log_stream is called; later mutation does not change the task."""
        messages = [{"role": "user", "content": "first"}]
        with capture_tasks() as tasks:
            stream = log_stream(iter("ab"), input={"messages": messages})
            messages[0]["content"] = "mutated"
            list(stream)
        assert only(tasks)["input"] == "first"

    def test_text_functions(self) -> None:
        """output_to_str is applied to each chunk, input_to_str to the input."""
        with capture_tasks() as tasks:
            list(log_stream(iter([{"t": "a"}, {"t": "b"}]), input=["x", "y"],
                            input_to_str=lambda v: "+".join(v), output_to_str=lambda c: c["t"].upper()))
        assert (only(tasks)["input"], only(tasks)["output"]) == ("x+y", "AB")

    def test_context_of_the_call(self) -> None:
        """Fields bound with phospho_logging.context when the stream starts apply, wherever it ends."""
        with capture_tasks() as tasks:
            with phospho_logging.context(session_id="ctx-session"):
                stream = log_stream(iter("ab"), input="q")
            list(stream)
        assert only(tasks)["session_id"] == "ctx-session"

    def test_attributes_delegate(self) -> None:
        """Attributes the wrapper does not have are the wrapped stream's."""

        class Source:
            response = "the response"

            def __init__(self) -> None:
                self.items = iter("ab")

            def __iter__(self) -> Iterator[str]:
                return self.items

        with capture_tasks():
            stream = log_stream(Source())
            assert stream.response == "the response" and list(stream) == ["a", "b"]

    def test_odd_chunks_pass_and_are_valid(self) -> None:
        """Chunks of any type pass through; the task is valid for the backend."""

        class Weird:
            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        items: List[Any] = [None, 1, float("nan"), Weird(), {"x": {1, 2}}, b"bytes"]
        with capture_tasks() as tasks:
            assert list(log_stream(iter(items), input="q")) == items  # same objects (nan is only equal to itself)
        assert wire_errors(only(tasks)) is None

    def test_close_racing_exhaustion_logs_once(self) -> None:
        """Threads closing while another exhausts the stream: exactly one task, every time."""

        def race(stream: Any) -> None:
            barrier = threading.Barrier(5)

            def close() -> None:
                barrier.wait(10)
                stream.close()

            def drain() -> None:
                barrier.wait(10)
                for _ in stream:
                    pass

            threads = [threading.Thread(target=close) for _ in range(4)] + [threading.Thread(target=drain)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)

        for _ in range(20):
            with capture_tasks() as tasks:
                race(log_stream(iter(range(50)), input="q"))
            assert len(tasks) == 1


class TestAsyncLogStream:
    def test_exhausted(self) -> None:
        """An async generator: chunks pass through, one task at the end."""

        async def main() -> List[Any]:
            return [c async for c in log_stream(agen(openai_chunks("a b", usage=True)), input="q")]

        with capture_tasks() as tasks:
            assert asyncio.run(main()) == openai_chunks("a b", usage=True)
        task = only(tasks)
        assert task["output"] == "a b" and task["metadata"]["total_tokens"] == 10

    def test_stop_break_and_aclose(self) -> None:
        """stop ends the task at its chunk; a broken-off stream is logged at aclose()."""

        async def main() -> None:
            s1 = log_stream(agen(["a", "STOP", "b"]), input="stop", stop=lambda c: c == "STOP")
            assert [c async for c in s1] == ["a", "STOP", "b"]
            s2 = log_stream(agen(["a", "b"]), input="break")
            async for _ in s2:
                break
            await s2.aclose()

        with capture_tasks() as tasks:
            asyncio.run(main())
        by_input = {t["input"]: t for t in tasks}
        assert by_input["stop"]["output"] == "aSTOP" and by_input["stop"]["metadata"]["stream_end"] == "stop"
        assert by_input["break"]["metadata"]["stream_end"] == "closed" and len(tasks) == 2

    def test_async_context_manager(self) -> None:
        """async with log_stream(...) ends the task on leaving the block."""

        async def main() -> None:
            async with log_stream(agen(["a", "b"]), input="q") as stream:
                assert await stream.__anext__() == "a"

        with capture_tasks() as tasks:
            asyncio.run(main())
        assert only(tasks)["metadata"]["stream_end"] == "closed"

    def test_raises(self) -> None:
        """An async stream that raises: the same exception, and a task with the error."""

        async def failing() -> AsyncIterator[str]:
            yield "x"
            raise TimeoutError("slow")

        async def main() -> None:
            async for _ in log_stream(failing(), input="q"):
                pass

        with capture_tasks() as tasks:
            with pytest.raises(TimeoutError):
                asyncio.run(main())
        assert only(tasks)["metadata"]["error_type"] == "TimeoutError"

    def test_cancelled(self) -> None:
        """A consumer cancelled mid-stream: one task with stream_end "cancelled"."""

        async def slow() -> AsyncIterator[str]:
            yield "first"
            await asyncio.sleep(30)
            yield "never"

        async def main() -> None:
            started = asyncio.Event()

            async def consume() -> None:
                async for _ in log_stream(slow(), input="q"):
                    started.set()

            task = asyncio.ensure_future(consume())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        with capture_tasks() as tasks:
            asyncio.run(main())
        assert only(tasks)["metadata"]["stream_end"] == "cancelled" and only(tasks)["output"] == "first"

    def test_fifty_concurrent_streams(self) -> None:
        """Fifty streams interleaved in one event loop: fifty tasks, each with its own text."""

        async def one(i: int) -> str:
            out = []
            async for chunk in log_stream(agen([f"s{i}-", "a", "b", "c"]), input=f"q{i}"):
                out.append(chunk)
            return "".join(out)

        async def main() -> List[str]:
            return list(await asyncio.gather(*(one(i) for i in range(50))))

        with capture_tasks() as tasks:
            assert asyncio.run(main()) == [f"s{i}-abc" for i in range(50)]
        assert sorted((t["input"], t["output"]) for t in tasks) == sorted((f"q{i}", f"s{i}-abc") for i in range(50))


class TestMutableGenerator:
    def test_stop_ends_iteration(self) -> None:
        """As in the SDK: iteration ends at the stop chunk, which is not yielded; one task."""
        with capture_tasks() as tasks:
            gen = MutableGenerator(iter(["a", "b", "END", "c"]), lambda c: c == "END", input="q")
            assert list(gen) == ["a", "b"]
            assert list(gen) == []
        task = only(tasks)
        assert task["output"] == "ab" and task["metadata"]["stream_end"] == "stop"

    def test_none_ends_iteration(self) -> None:
        """As in the SDK, a None chunk ends the stream, with or without a stop function."""
        with capture_tasks() as tasks:
            assert list(MutableGenerator(iter(["a", None, "b"]), input="q1")) == ["a"]
            assert list(MutableGenerator(iter(["a", None, "b"]), lambda c: False, input="q2")) == ["a"]
        assert [t["output"] for t in tasks] == ["a", "a"]

    def test_plain_strings_without_none_end(self) -> None:
        """Unlike the SDK, a plain string generator that just ends is logged."""
        with capture_tasks() as tasks:
            assert list(MutableGenerator((s for s in ["x", "y"]), input="q")) == ["x", "y"]
        assert only(tasks)["output"] == "xy"

    def test_async(self) -> None:
        """MutableAsyncGenerator: the same for async generators."""

        async def main() -> List[str]:
            gen = MutableAsyncGenerator(agen(["a", "b", "END", "c"]), lambda c: c == "END", input="q")
            return [c async for c in gen]

        with capture_tasks() as tasks:
            assert asyncio.run(main()) == ["a", "b"]
        assert only(tasks)["output"] == "ab"


class TestOneTaskPerStream:
    """A stream inside another logged stream (the guide's ``log(..., stream=True)`` of a
    ``MutableGenerator``, a wrapped function returning one, ``log_stream`` of
    ``log_stream``): exactly one task, the outermost one's; the inner stop still applies."""

    def test_log_stream_of_a_mutable_generator(self) -> None:
        with capture_tasks() as tasks:
            gen = MutableGenerator(iter(["The ", "sky", "END", "late"]), lambda c: c == "END")
            assert list(log_stream(gen, input="Why?")) == ["The ", "sky"]
        task = only(tasks)
        assert (task["input"], task["output"]) == ("Why?", "The sky")

    def test_log_with_stream_true_of_a_mutable_generator(self) -> None:
        with capture_tasks() as tasks:
            gen = MutableGenerator(iter(["a", "b", None, "c"]))
            assert list(phospho_logging.log("q", gen, stream=True)) == ["a", "b"]
        assert (only(tasks)["input"], only(tasks)["output"]) == ("q", "ab")

    def test_wrapped_function_returning_logged_streams(self) -> None:
        @wrap
        def answer(question: str) -> Any:
            return log_stream(MutableGenerator(iter(["x", "y", "STOP"]), lambda c: c == "STOP"), input="inner")

        with capture_tasks() as tasks:
            assert list(answer("outer question")) == ["x", "y"]
        assert (only(tasks)["input"], only(tasks)["output"]) == ("outer question", "xy")

    def test_async(self) -> None:
        async def main() -> List[str]:
            inner = MutableAsyncGenerator(agen(["a", "b", "END", "c"]), lambda c: c == "END")
            return [c async for c in log_stream(inner, input="q")]

        with capture_tasks() as tasks:
            assert asyncio.run(main()) == ["a", "b"]
        assert (only(tasks)["input"], only(tasks)["output"]) == ("q", "ab")

    def test_a_bare_mutable_generator_still_logs_its_task(self) -> None:
        """Alone (not consumed by another logged stream), a MutableGenerator logs one task,
        with the input it was given (the SDK's logs nothing without phospho.log)."""
        with capture_tasks() as tasks:
            assert list(MutableGenerator(iter(["a", None]), input="q")) == ["a"]
        assert (only(tasks)["input"], only(tasks)["output"]) == ("q", "a")


def _recorded(source: Iterator[Any], seen: List[Any]) -> Iterator[Any]:
    """``source``, remembering every chunk it yields (what the consumer must get unchanged)."""
    for chunk in source:
        seen.append(chunk)
        yield chunk


#: How a consumer reads a raw HTTP body: line by line (bytes or text), or cut anywhere.
READERS = {
    "iter_lines": lambda r: r.iter_lines(),
    "iter_lines_text": lambda r: r.iter_lines(decode_unicode=True),
    "iter_content_1": lambda r: r.iter_content(chunk_size=1),
    "iter_content_7": lambda r: r.iter_content(chunk_size=7),
    "iter_content_none": lambda r: r.iter_content(chunk_size=None),
    "raw_text_37": lambda r: r.iter_content(chunk_size=37, decode_unicode=True),
}

PROMPT = "Why is the sky blue?"
REPLY = "You said: Why is the sky blue?"


class TestRawHTTPStreams:
    """Ollama's JSON lines and OpenAI-compatible server-sent events read with ``requests`` or
    ``httpx`` straight off a loopback server: the text, the parsed chunks, the model and the
    token counts, whatever way the body is cut into chunks; the chunks pass through unchanged."""

    def test_the_guides_ollama_example(self, fake: FakeOpenAI) -> None:
        """The phospho guide's Ollama example: iter_lines, a MutableGenerator stopping at the
        ``done`` line, logged with stream=True. The done line is not yielded, yet its model,
        token counts and done_reason reach the task."""
        import requests

        r = requests.post(fake.url + "/api/generate", json={"model": "mistral-7b", "prompt": PROMPT, "stream": True},
                          stream=True, timeout=10)
        seen: List[Any] = []
        gen = MutableGenerator(_recorded(r.iter_lines(), seen), stop=lambda line: json.loads(line).get("done"))
        with capture_tasks() as tasks:
            got = list(phospho_logging.log(input=PROMPT, output=gen, stream=True))
        assert got == seen[:-1] and all(type(c) is bytes for c in got)  # the done line stops it
        task = only(tasks)
        assert (task["input"], task["output"], task["model"]) == (PROMPT, REPLY, "mistral-7b")
        assert task["raw_output"] == [json.loads(c) for c in got]
        meta = task["metadata"]
        assert (meta["prompt_tokens"], meta["completion_tokens"], meta["finish_reason"]) == (5, 7, "stop")
        assert (task["prompt_tokens"], task["completion_tokens"], task["total_tokens"]) == (5, 7, 12)
        assert meta["stream_complete"] is True

    @pytest.mark.parametrize("reader", sorted(READERS))
    @pytest.mark.parametrize("route", ["/api/generate", "/api/chat", "/v1/chat/completions"])
    def test_whatever_the_cut(self, fake: FakeOpenAI, route: str, reader: str) -> None:
        import requests

        body: Dict[str, Any] = {"model": "llama3", "stream": True}
        if route == "/api/generate":
            body["prompt"] = PROMPT
        else:
            body["messages"] = [{"role": "user", "content": PROMPT}]
        if route.startswith("/v1"):
            body["stream_options"] = {"include_usage": True}
        r = requests.post(fake.url + route, json=body, stream=True, timeout=10)
        seen: List[Any] = []
        with capture_tasks() as tasks:
            got = list(log_stream(_recorded(READERS[reader](r), seen), input=PROMPT))
        assert got == seen
        task = only(tasks)
        assert (task["output"], task["model"]) == (REPLY, "llama3")
        assert (task["prompt_tokens"], task["completion_tokens"]) == (5, 7)
        raw = task["raw_output"]
        assert all(type(item) is dict for item in raw), raw
        if route.startswith("/v1"):  # role chunk, 7 words, finish chunk, usage chunk; not [DONE]
            assert len(raw) == 10 and raw[-1]["usage"]["total_tokens"] == 12
            assert task["metadata"]["finish_reason"] == "stop"
        else:  # 7 words and the done line
            assert len(raw) == 8 and raw[-1]["done"] is True
            assert task["metadata"]["finish_reason"] == "stop"

    def test_httpx_async_lines(self, fake: FakeOpenAI) -> None:
        import httpx

        async def main() -> List[str]:
            async with httpx.AsyncClient(timeout=10) as http:
                body = {"model": "llama3", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
                async with http.stream("POST", fake.url + "/api/chat", json=body) as r:
                    gen = MutableAsyncGenerator(r.aiter_lines(), stop=lambda line: json.loads(line)["done"])
                    return [line async for line in log_stream(gen, input=PROMPT)]

        with capture_tasks() as tasks:
            lines = asyncio.run(main())
        assert len(lines) == 7 and all(type(line) is str for line in lines)
        task = only(tasks)
        assert (task["output"], task["model"], task["total_tokens"]) == (REPLY, "llama3", 12)
        assert [c["message"]["content"] for c in task["raw_output"]] == [json.loads(x)["message"]["content"]
                                                                          for x in lines]

    def test_httpx_sse_bytes(self, fake: FakeOpenAI) -> None:
        import httpx

        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
        with httpx.Client(timeout=10) as http, http.stream("POST", fake.url + "/v1/chat/completions", json=body) as r:
            with capture_tasks() as tasks:
                got = b"".join(log_stream(r.iter_bytes(), input="q"))
        assert got.endswith(b"data: [DONE]\n\n")
        task = only(tasks)
        assert (task["output"], task["model"], task["metadata"]["finish_reason"]) == (ANSWER, "gpt-4o-mini", "stop")

    def test_an_error_line_mid_stream(self, fake: FakeOpenAI) -> None:
        import requests

        r = requests.post(fake.url + "/api/generate", json={"model": "error-stream", "prompt": PROMPT}, stream=True,
                          timeout=10)
        with capture_tasks() as tasks:
            list(log_stream(r.iter_lines(), input=PROMPT))
        task = only(tasks)
        assert task["output"] == "You said: "
        assert task["metadata"]["stream_error"] == "the model ran out of memory"

    def test_text_that_is_not_a_stream_of_json_is_kept_as_it_came(self) -> None:
        """A text stream that happens to start with ``{`` or ``data``, or bytes cut inside a
        character: the output is exactly the text."""
        tokens = ['{"na', 'me": ', '"Ada"', ', "n": {"x": 1}}', "\n\n", "That is ", "the JSON."]
        events = ["da", "ta is ", "what we have"]
        utf8 = "Ça coûte 5 € 😀".encode()
        with capture_tasks() as tasks:
            list(log_stream(iter(tokens), input="q"))
            list(log_stream(iter(events), input="q"))
            list(log_stream((utf8[i:i + 1] for i in range(len(utf8))), input="q"))
        assert [t["output"] for t in tasks] == ["".join(tokens), "".join(events), utf8.decode()]


    def test_cuts_that_look_like_a_new_line(self) -> None:
        """A chunk that starts with ``data:`` or ``{`` inside an event or object, an object
        that closes at a cut and then goes on, a ``\r\n`` cut in two: all read as one."""
        event = json.dumps({"model": "m", "choices": [{"delta": {"content": "Send it as data: {x}"}}]})
        sse = f"data: {event}\n\n"
        at = sse.index("data: {x}")
        text = '{"error": "E42"} means the disk is full.\n{"done": true} marks the end.\n'
        ollama = [json.dumps({"model": "m", "response": w, "done": False}) for w in ("a", "b")]
        with capture_tasks() as tasks:
            list(log_stream(iter([sse[:at], sse[at:]]), input="q"))
            list(log_stream(iter([text[:16], text[16:]]), input="q"))
            list(log_stream(iter([ollama[0], "\r", "\n" + ollama[1] + "\r\n"]), input="q"))
        assert [t["output"] for t in tasks] == ["Send it as data: {x}", text, "ab"]

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(alphabet='{}[]":, ab1\n\r', max_size=12), max_size=12), st.booleans())
    @example(["{}", "\r"], False)  # a line kept as text keeps its own line ending
    @example(["{}", "\r", "\n"], True)
    @example(["{}", "\r", "\n{}", "\r\n"], False)
    @example(['{"a": 1}', "\r", "x"], False)
    def test_text_is_never_lost(self, tokens: List[str], as_bytes: bool) -> None:
        """Whatever a text stream holds (braces, quotes, newlines, JSON of no LLM shape),
        cut anywhere, as text or bytes: the output is the text."""
        chunks: List[Any] = [t.encode() for t in tokens] if as_bytes else tokens
        with capture_tasks() as tasks:
            list(log_stream(iter(chunks), input="q"))
        assert only(tasks)["output"] == "".join(tokens)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(1, 40), min_size=1, max_size=60))
    def test_json_lines_cut_anywhere(self, cuts: List[int]) -> None:
        words = ["The", " sky", " is", " \u00e9\u00e9 \U0001f600", " blue", "}{", "\n"]
        lines = [{"model": "m", "response": w, "done": False} for w in words]
        lines.append({"model": "m", "response": "", "done": True, "prompt_eval_count": 3, "eval_count": 7})
        body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        chunks, at = [], 0
        for n in cuts * (len(body) // sum(cuts) + 1):
            if at >= len(body):
                break
            chunks.append(body[at:at + n])
            at += n
        with capture_tasks() as tasks:
            list(log_stream(iter(chunks), input="q"))
        task = only(tasks)
        assert (task["output"], task["raw_output"], task["total_tokens"]) == ("".join(words), lines, 10)

class TestOpenAIStreams:
    def test_sync_stream_with_usage(self, fake: FakeOpenAI) -> None:
        """stream=True with include_usage: the same chunks as unwrapped, one task with the usage."""
        c = client(fake)
        plain = openai.OpenAI(base_url=fake.url + "/v1", api_key="test", max_retries=0)
        kwargs: Dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                                  "stream_options": {"include_usage": True}}
        expected = [ch.model_dump(exclude={"created"}) for ch in plain.chat.completions.create(**kwargs)]
        with capture_tasks() as tasks:
            got = [ch.model_dump(exclude={"created"}) for ch in c.chat.completions.create(**kwargs)]
        assert got == expected
        task = only(tasks)
        assert (task["input"], task["output"], task["model"]) == (MESSAGES[0]["content"], ANSWER, "gpt-4o-mini")
        meta = task["metadata"]
        assert (meta["prompt_tokens"], meta["completion_tokens"], meta["total_tokens"]) == (4, 6, 10)
        # At the top level too, as for a non-streamed call (read off the usage chunk).
        assert (task["prompt_tokens"], task["completion_tokens"], task["total_tokens"]) == (4, 6, 10)
        assert meta["stream_complete"] is True and meta["chunks"] == len(expected)
        assert task["raw_output"][-1]["choices"] == [] and wire_errors(task) is None

    def test_with_block_and_response(self, fake: FakeOpenAI) -> None:
        """with create(..., stream=True) as s: works, and s.response is the HTTP response."""
        c = client(fake)
        with capture_tasks() as tasks:
            with c.chat.completions.create(model="m", messages=MESSAGES, stream=True) as stream:
                assert stream.response.status_code == 200
                text = "".join(ch.choices[0].delta.content or "" for ch in stream)
        assert text == ANSWER and only(tasks)["output"] == ANSWER
        assert only(tasks)["metadata"]["stream_end"] == "exhausted"

    def test_break_early_and_garbage_collected(self, fake: FakeOpenAI) -> None:
        """A stream read in part and dropped is logged (incomplete) when collected."""
        c = client(fake)
        with capture_tasks() as tasks:
            stream = c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            for _ in stream:
                break
            del stream
            gc.collect()
        task = only(tasks)
        assert task["metadata"]["stream_complete"] is False and task["metadata"]["stream_end"] == "garbage_collected"

    def test_close(self, fake: FakeOpenAI) -> None:
        """close() on a wrapped openai stream logs the task and closes the response."""
        c = client(fake)
        with capture_tasks() as tasks:
            stream = c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            next(stream)
            stream.close()
            assert stream.response.is_closed
        assert only(tasks)["metadata"]["stream_end"] == "closed"

    def test_connection_cut_mid_stream(self, fake: FakeOpenAI) -> None:
        """The connection cut after two words: the client's exception propagates, the task has the partial text."""
        fake.fail_after = 2
        c = client(fake)
        with capture_tasks() as tasks:
            # openai 1.x/2.x let httpx's RemoteProtocolError through; later versions raise APIConnectionError.
            with pytest.raises(Exception) as caught:
                for _ in c.chat.completions.create(model="m", messages=MESSAGES, stream=True):
                    pass
        task = only(tasks)
        error = caught.value
        assert task["output"] == "You said: "
        assert task["metadata"]["error_type"] == f"{type(error).__module__}.{type(error).__qualname__}"

    def test_error_event_mid_stream(self, fake: FakeOpenAI) -> None:
        """An SSE error event: openai raises APIError, the task records it."""
        fake.fail_after, fake.fail_mode = 1, "error_event"
        c = client(fake)
        with capture_tasks() as tasks:
            with pytest.raises(openai.APIError):
                list(c.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        assert only(tasks)["metadata"]["error_type"] == "openai.APIError"

    def test_messages_mutated_while_streaming(self, fake: FakeOpenAI) -> None:
        """The app appending to its messages list while the stream runs does not change the task."""
        c = client(fake)
        messages = [{"role": "user", "content": "original question"}]
        with capture_tasks() as tasks:
            stream = c.chat.completions.create(model="m", messages=messages, stream=True)
            next(stream)
            messages.append({"role": "assistant", "content": "partial"})
            messages[0]["content"] = "changed"
            list(stream)
        task = only(tasks)
        assert task["input"] == "original question"
        assert task["raw_input"]["messages"] == [{"role": "user", "content": "original question"}]

    def test_async_stream(self, fake: FakeOpenAI) -> None:
        """The async client with stream=True and include_usage: chunks through, one complete task."""
        c = async_client(fake)

        async def main() -> str:
            try:
                stream = await c.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                         stream_options={"include_usage": True})
                async with stream:
                    assert stream.response.status_code == 200
                    return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            finally:
                await c.close()

        with capture_tasks() as tasks:
            assert asyncio.run(main()) == ANSWER
        task = only(tasks)
        assert task["output"] == ANSWER and task["metadata"]["total_tokens"] == 10
        assert task["metadata"]["stream_end"] == "exhausted"

    def test_async_stream_closed_early(self, fake: FakeOpenAI) -> None:
        """await stream.close() after one chunk: one incomplete task."""
        c = async_client(fake)

        async def main() -> None:
            try:
                stream = await c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
                await stream.__anext__()
                await stream.close()
            finally:
                await c.close()

        with capture_tasks() as tasks:
            asyncio.run(main())
        assert only(tasks)["metadata"]["stream_end"] == "closed"

    def test_fifty_concurrent_async_streams(self, fake: FakeOpenAI) -> None:
        """Fifty openai streams gathered in one loop: fifty complete tasks, no cross-talk."""
        c = async_client(fake)

        async def one(i: int) -> str:
            stream = await c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"question number {i}"}], stream=True)
            return "".join([ch.choices[0].delta.content or "" async for ch in stream])

        async def main() -> List[str]:
            try:
                return list(await asyncio.gather(*(one(i) for i in range(50))))
            finally:
                await c.close()

        with capture_tasks() as tasks:
            answers = asyncio.run(main())
        assert answers == [f"You said: question number {i}" for i in range(50)]
        assert len(tasks) == 50
        assert all(t["output"] == "You said: " + t["input"] for t in tasks)
        assert all(t["metadata"]["stream_complete"] for t in tasks)

    def test_delivered_to_phospho(self, fake: FakeOpenAI, server: PhosphoTestServer, creds: Dict[str, str]) -> None:
        """Through configure(): sync and async streams reach the phospho server once each, complete."""
        pipeline = phospho_logging.configure(**creds)
        c = client(fake)
        list(c.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                       stream_options={"include_usage": True}))
        stream = c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        next(stream)
        stream.close()
        ac = async_client(fake)

        async def main() -> None:
            try:
                async for _ in await ac.chat.completions.create(model="m", messages=MESSAGES, stream=True):
                    pass
            finally:
                await ac.close()

        asyncio.run(main())
        assert pipeline.flush(timeout=10)
        tasks = server.tasks
        assert [t["metadata"]["stream_end"] for t in tasks] == ["exhausted", "closed", "exhausted"]
        assert [t["output"] for t in tasks] == [ANSWER, "", ANSWER]
        assert tasks[0]["metadata"]["total_tokens"] == 10
        assert server.rejected == [] and server.duplicates == 0


class TestSDKFailureCases:
    """The official SDK's streaming and wrap failures, each working here."""

    def test_sdk_plain_string_generator_ends_without_none_or_stop(self) -> None:
        """SDK: a generator of plain strings never ends a task unless it yields None. Here it does."""
        with capture_tasks() as tasks:
            list(log_stream((s for s in ["a", "b"]), input="q"))
        assert only(tasks)["output"] == "ab"

    def test_sdk_include_usage_trailing_chunk_is_sent(self) -> None:
        """SDK: openai's include_usage trailing chunk leaves the task unsent. Here it is sent, with the usage."""
        with capture_tasks() as tasks:
            list(log_stream(iter(openai_chunks("x", usage=True)), input="q"))
        assert only(tasks)["metadata"]["total_tokens"] == 10

    def test_sdk_partially_read_stream_is_sent(self) -> None:
        """SDK: a stream that is not fully read is never sent. Here it is, marked incomplete."""
        with capture_tasks() as tasks:
            stream = log_stream(iter(["a", "b"]), input="q")
            next(stream)
            del stream
        assert only(tasks)["metadata"]["stream_complete"] is False

    def test_sdk_async_def_is_awaited_by_wrap(self) -> None:
        """SDK: async def functions are not awaited by wrap. Here the task has the awaited value."""

        @wrap
        async def f() -> str:
            return "value"

        with capture_tasks() as tasks:
            asyncio.run(f())
        assert only(tasks)["output"] == "value"

    def test_sdk_odd_objects_do_not_raise_into_the_caller(self) -> None:
        """SDK: datetimes and arbitrary objects could raise into the caller; NaN blocked the queue."""
        import datetime

        with capture_tasks() as tasks:
            list(log_stream(iter([{"at": datetime.datetime.now(), "v": float("nan")}]), input=object(),
                            metadata={"when": datetime.date.today()}))
        assert wire_errors(only(tasks)) is None

    def test_sdk_unfinished_stream_at_exit_is_delivered(self, server: PhosphoTestServer) -> None:
        """SDK: what is still pending at exit is lost. Here a stream left open is sent at exit."""
        from tests.test_exit import run, server_env

        result = run("""
            import phospho_logging
            pipeline = phospho_logging.configure()
            stream = phospho_logging.log_stream(iter(["a", "b", "c"]), input="left open")
            next(stream)
            print("exiting")
        """, server_env(server))
        assert result.returncode == 0, result.stderr
        tasks = server.tasks
        assert [(t["input"], t["output"], t["metadata"]["stream_end"]) for t in tasks] == [
            ("left open", "a", "interpreter_exit")]

    def test_task_logged_once_when_stream_is_iterated_after_end(self) -> None:
        """Reading an exhausted stream again does not log a second task."""
        with capture_tasks() as tasks:
            stream = log_stream(iter("ab"), input="q")
            list(stream)
            assert list(stream) == []
            stream.close()
        assert len(tasks) == 1


class TestMisuse:
    def test_not_iterable(self) -> None:
        """log_stream on something that is not a stream raises TypeError and logs nothing."""
        with capture_tasks() as tasks:
            with pytest.raises(TypeError):
                log_stream(42)
            gc.collect()
        assert tasks == []


class TestRecord:
    def test_record_points_at_the_log_stream_call(self) -> None:
        """The task's record names the file, line and function where log_stream was called."""
        seen: List[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record)

        target = logging.getLogger("phospho")
        handler = Keep()
        target.addHandler(handler)
        target.setLevel(logging.INFO)
        try:
            line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
            list(log_stream(iter("ab"), input="q"))
        finally:
            target.removeHandler(handler)
        assert (seen[0].pathname, seen[0].lineno, seen[0].funcName) == (__file__, line, "test_record_points_at_the_log_stream_call")
        assert seen[0].levelname == "INFO" and seen[0].getMessage().startswith("log_stream")
