"""Tests for phospho_logging._extract: the SDK's text extraction and detection rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phospho_logging._extract import chunk_text, detect, input_text, output_text
from phospho_logging._serialize import JSON, to_jsonable

SYSTEM: JSON = {"role": "system", "content": "Be brief."}
IMAGE_PART: JSON = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
TOOL_CALLS: JSON = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
]


def user(content: JSON) -> JSON:
    return {"role": "user", "content": content}


def assistant(content: JSON) -> JSON:
    return {"role": "assistant", "content": content}


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class TestInputText:
    def test_str_is_used_as_is(self) -> None:
        """A string input is its own text."""
        assert input_text("What is 2+2?") == "What is 2+2?"

    def test_none_is_empty(self) -> None:
        """No input gives the empty string (input is required to be a string)."""
        assert input_text(None) == ""

    def test_messages_request_gives_last_message_content(self) -> None:
        """A dict with a non-empty messages list gives the content of the last message."""
        raw: JSON = {
            "model": "m",
            "messages": [SYSTEM, user("first"), assistant("a"), user("last")],
        }
        assert input_text(raw) == "last"

    def test_openai_content_parts_give_joined_text(self) -> None:
        """A content list of OpenAI parts gives its text parts joined by newlines."""
        parts: JSON = [
            {"type": "text", "text": "Describe"},
            IMAGE_PART,
            {"type": "text", "text": "briefly"},
        ]
        assert input_text({"messages": [user(parts)]}) == "Describe\nbriefly"

    def test_anthropic_blocks_give_joined_text(self) -> None:
        """Anthropic text blocks are joined; other blocks are ignored."""
        blocks: JSON = [
            {"type": "image", "source": {"type": "base64", "data": "..."}},
            {"type": "text", "text": "What is this?"},
        ]
        assert input_text({"messages": [user(blocks)]}) == "What is this?"

    def test_only_non_text_parts_give_their_json(self) -> None:
        """Content made only of non-text parts falls back to the JSON of the content."""
        assert input_text({"messages": [user([IMAGE_PART])]}) == compact([IMAGE_PART])

    def test_null_content_with_tool_calls_gives_their_json(self) -> None:
        """A last message with null content but tool calls gives the tool calls as JSON."""
        message: JSON = {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS}
        assert input_text({"messages": [user("q"), message]}) == compact(TOOL_CALLS)

    def test_null_content_alone_is_empty(self) -> None:
        """A last message with null content and nothing else gives ""."""
        assert input_text({"messages": [user(None)]}) == ""

    def test_message_list_gives_trailing_user_run(self) -> None:
        """A list of messages gives the trailing run of user messages joined by newlines."""
        raw: JSON = [SYSTEM, user("old"), assistant("reply"), user("one"), user("two")]
        assert input_text(raw) == "one\ntwo"

    def test_message_list_not_ending_with_user_gives_last_message(self) -> None:
        """A message list ending with another role gives the last message's text."""
        assert input_text([user("q"), assistant("a")]) == "a"

    def test_completions_prompt(self) -> None:
        """A completions request gives its prompt; a batch of prompts is joined."""
        assert input_text({"model": "m", "prompt": "Once upon"}) == "Once upon"
        assert input_text({"prompt": ["a", "b"]}) == "a\nb"

    def test_single_message_dict_gives_its_content(self) -> None:
        """A lone {role, content} message gives its content."""
        assert input_text(user("hello")) == "hello"

    def test_empty_messages_fall_back_to_json(self) -> None:
        """An empty messages list is not a chat request: the dict's JSON is used."""
        assert input_text({"messages": []}) == '{"messages":[]}'

    def test_other_containers_give_compact_json(self) -> None:
        """Other dicts and lists give compact JSON text, non-ASCII kept as is."""
        assert input_text({"question": "café?", "n": [1, 2]}) == '{"question":"café?","n":[1,2]}'
        assert input_text([1, "a"]) == '[1,"a"]'

    @pytest.mark.parametrize(("raw", "expected"), [(42, "42"), (1.5, "1.5"), (True, "True")])
    def test_scalars_give_str(self, raw: JSON, expected: str) -> None:
        """Numbers and booleans give str(x)."""
        assert input_text(raw) == expected


class TestOutputText:
    def test_none_is_none(self) -> None:
        """No output stays None."""
        assert output_text(None) is None

    def test_str_is_used_as_is(self) -> None:
        """A string output is its own text."""
        assert output_text("4") == "4"

    def test_chat_completion_gives_first_choice_content(self) -> None:
        """An OpenAI chat completion gives choices[0].message.content."""
        raw: JSON = {
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": assistant("Paris")},
                {"index": 1, "message": assistant("Lyon")},
            ],
        }
        assert output_text(raw) == "Paris"

    def test_tool_call_completion_gives_tool_calls_json(self) -> None:
        """A completion with null content but tool calls gives the tool calls as JSON."""
        message: JSON = {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS}
        assert output_text({"choices": [{"message": message}]}) == compact(TOOL_CALLS)

    def test_refusal_is_used_when_content_is_null(self) -> None:
        """A completion refused by the model gives the refusal text."""
        message: JSON = {"role": "assistant", "content": None, "refusal": "I can't."}
        assert output_text({"choices": [{"message": message}]}) == "I can't."

    def test_stream_chunk_gives_delta_content(self) -> None:
        """A stream chunk gives choices[0].delta.content, "" when it is null."""
        assert output_text({"choices": [{"delta": {"content": "Par"}}]}) == "Par"
        assert output_text({"choices": [{"delta": {"content": None}}]}) == ""
        assert output_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""

    def test_completions_choice_gives_text(self) -> None:
        """A legacy completions response gives choices[0].text."""
        assert output_text({"choices": [{"text": " a time", "index": 0}]}) == " a time"

    def test_ollama_generate_gives_response(self) -> None:
        """An Ollama generate reply gives its response."""
        assert output_text({"model": "llama3", "response": "Hi!", "done": True}) == "Hi!"

    def test_ollama_chat_gives_message_content(self) -> None:
        """An Ollama chat reply gives message.content."""
        assert output_text({"model": "llama3", "message": assistant("Hello")}) == "Hello"

    def test_anthropic_message_gives_joined_text_blocks(self) -> None:
        """An Anthropic message gives its text blocks joined; tool_use blocks are ignored."""
        raw: JSON = {
            "type": "message",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}},
                {"type": "text", "text": "Done."},
            ],
        }
        assert output_text(raw) == "Let me check.\nDone."

    def test_anthropic_tool_use_only_gives_json(self) -> None:
        """An Anthropic message with only tool_use blocks gives the blocks' JSON."""
        blocks: JSON = [{"type": "tool_use", "id": "t", "name": "f", "input": {"x": 1}}]
        assert output_text({"content": blocks}) == compact(blocks)

    def test_message_list_gives_trailing_assistant_run(self) -> None:
        """A list of messages gives the trailing assistant messages joined by newlines."""
        raw: JSON = [
            user("q"),
            assistant("old"),
            user("q2"),
            assistant("a1"),
            assistant("a2"),
        ]
        assert output_text(raw) == "a1\na2"

    def test_empty_choices_fall_back_to_json(self) -> None:
        """A dict whose choices list is empty gives its JSON."""
        assert output_text({"choices": []}) == '{"choices":[]}'

    def test_other_values_give_json_or_str(self) -> None:
        """Other dicts give compact JSON; scalars give str(x)."""
        assert output_text({"answer": 4}) == '{"answer":4}'
        assert output_text(4) == "4"
        assert output_text(False) == "False"

    def test_real_pydantic_completion_after_snapshot(self) -> None:
        """A pydantic completion object, once snapshotted, gives its message content."""
        pydantic = pytest.importorskip("pydantic")

        class Message(pydantic.BaseModel):  # type: ignore[misc, name-defined]
            role: str
            content: Any = None

        class Choice(pydantic.BaseModel):  # type: ignore[misc, name-defined]
            index: int
            message: Message

        class Completion(pydantic.BaseModel):  # type: ignore[misc, name-defined]
            model: str
            choices: list[Choice]

        raw = Completion(
            model="m",
            choices=[Choice(index=0, message=Message(role="assistant", content="hi"))],
        )
        assert output_text(to_jsonable(raw)) == "hi"


class TestChunkText:
    def test_str_chunk_is_itself(self) -> None:
        """A plain string chunk is its own text."""
        assert chunk_text("tok") == "tok"

    def test_openai_chunks(self) -> None:
        """OpenAI chunks give delta.content, "" for role-only, null or usage-only chunks."""
        assert chunk_text({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}) == "Hel"
        assert chunk_text({"choices": [{"delta": {"role": "assistant", "content": ""}}]}) == ""
        assert chunk_text({"choices": [{"delta": {"content": None}, "finish_reason": "stop"}]}) == ""
        assert chunk_text({"choices": [], "usage": {"total_tokens": 3}}) == ""

    def test_completions_chunk_gives_text(self) -> None:
        """A legacy completions stream chunk gives choices[0].text."""
        assert chunk_text({"choices": [{"text": "lo"}]}) == "lo"

    def test_ollama_chunks(self) -> None:
        """Ollama generate and chat chunks give response and message.content."""
        assert chunk_text({"response": "wor", "done": False}) == "wor"
        assert chunk_text({"message": {"role": "assistant", "content": "ld"}}) == "ld"

    def test_anthropic_events(self) -> None:
        """Anthropic content_block_delta events give delta.text; other events give ""."""
        delta: JSON = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hi"},
        }
        assert chunk_text(delta) == "Hi"
        json_delta: JSON = {
            "type": "content_block_delta",
            "delta": {"type": "input_json_delta", "partial_json": "{"},
        }
        assert chunk_text(json_delta) == ""
        assert chunk_text({"type": "message_stop"}) == ""

    @pytest.mark.parametrize("chunk", [None, 3, True, ["a"], {"unknown": "x"}, {"choices": ["x"]}])
    def test_unknown_chunks_are_empty(self, chunk: JSON) -> None:
        """None and unknown shapes add no text."""
        assert chunk_text(chunk) == ""


class TestDetect:
    def test_model_prefers_output(self) -> None:
        """The model comes from the output, else from the input."""
        assert detect({"model": "asked"}, {"model": "served"}) == {"model": "served"}
        assert detect({"model": "asked"}, {"choices": []}) == {"model": "asked"}
        assert detect({"model": "asked"}, {"model": 3}) == {"model": "asked"}

    def test_system_prompt_from_messages(self) -> None:
        """The first system (or developer) message of the input is the system prompt."""
        raw: JSON = {"messages": [user("q"), SYSTEM, {"role": "system", "content": "second"}]}
        assert detect(raw, None) == {"system_prompt": "Be brief."}
        dev: JSON = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Dev"}]}]}
        assert detect(dev, None) == {"system_prompt": "Dev"}

    def test_system_prompt_from_message_list(self) -> None:
        """A plain list of messages is searched for the system message too."""
        assert detect([SYSTEM, user("q")], None) == {"system_prompt": "Be brief."}

    def test_anthropic_system(self) -> None:
        """An Anthropic-style system key (text or text blocks) is the system prompt."""
        assert detect({"system": "Sys", "messages": [user("q")]}, None) == {"system_prompt": "Sys"}
        blocks: JSON = [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]
        assert detect({"system": blocks}, None) == {"system_prompt": "A\nB"}

    def test_openai_usage(self) -> None:
        """OpenAI usage gives prompt, completion and total tokens."""
        usage: JSON = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        assert detect(None, {"usage": usage}) == {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
        }

    def test_anthropic_usage_is_summed(self) -> None:
        """Anthropic input/output tokens map to prompt/completion, total is their sum."""
        assert detect(None, {"usage": {"input_tokens": 7, "output_tokens": 3}}) == {
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "total_tokens": 10,
        }

    def test_ollama_counts(self) -> None:
        """Ollama's top-level prompt_eval_count and eval_count are the token counts."""
        assert detect(None, {"prompt_eval_count": 4, "eval_count": 6, "done": True}) == {
            "prompt_tokens": 4,
            "completion_tokens": 6,
            "total_tokens": 10,
        }

    def test_only_real_ints_are_taken(self) -> None:
        """Booleans, floats and strings are not token counts."""
        usage: JSON = {
            "prompt_tokens": True,
            "completion_tokens": 2.0,
            "total_tokens": "9",
        }
        assert detect(None, {"usage": usage}) == {}

    def test_partial_usage_omits_missing_keys(self) -> None:
        """Only the counts present are reported; no total without both parts."""
        assert detect(None, {"usage": {"prompt_tokens": 4}}) == {"prompt_tokens": 4}

    def test_full_openai_call(self) -> None:
        """A full request/response pair gives every detected key."""
        request: JSON = {"model": "gpt-4o-mini", "messages": [SYSTEM, user("hi")]}
        response: JSON = {
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"message": assistant("Hello")}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        }
        assert detect(request, response) == {
            "model": "gpt-4o-mini-2024-07-18",
            "system_prompt": "Be brief.",
            "prompt_tokens": 9,
            "completion_tokens": 1,
            "total_tokens": 10,
        }

    @pytest.mark.parametrize("raw", [None, "x", 3, [], [1], {"messages": "x", "usage": []}])
    def test_nothing_found_gives_empty_dict(self, raw: JSON) -> None:
        """Shapes without anything to detect give an empty dict."""
        assert detect(raw, raw) == {}


# --- property tests -------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=()), max_size=10) | st.sampled_from(["\ud800", ""])
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)
_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", 3, None])
_parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_text", 1])},
        optional={"text": _json},
    ),
    max_size=3,
)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": _roles},
        optional={"content": _json | _parts, "tool_calls": _json, "refusal": _json},
    ),
    max_size=4,
)
_llm_shapes = st.one_of(
    _json,
    _messages,
    st.fixed_dictionaries(
        {},
        optional={
            "model": _json,
            "messages": _messages | _json,
            "system": _json | _parts,
            "prompt": _json,
            "choices": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "message": st.fixed_dictionaries({}, optional={"content": _json, "tool_calls": _json}) | _json,
                        "delta": st.fixed_dictionaries({}, optional={"content": _json}) | _json,
                        "text": _json,
                    },
                )
                | _json,
                max_size=2,
            ),
            "usage": st.dictionaries(
                st.sampled_from(
                    [
                        "prompt_tokens",
                        "completion_tokens",
                        "total_tokens",
                        "input_tokens",
                        "output_tokens",
                    ]
                ),
                _json,
            )
            | _json,
            "response": _json,
            "message": _json,
            "content": _json | _parts,
            "type": st.sampled_from(["content_block_delta", "message_stop"]) | _json,
            "delta": _json,
            "prompt_eval_count": _json,
            "eval_count": _json,
        },
    ),
)
_settings = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DETECTED = {
    "model": str,
    "system_prompt": str,
    "prompt_tokens": int,
    "completion_tokens": int,
    "total_tokens": int,
}


class TestProperties:
    @_settings
    @given(_llm_shapes)
    def test_input_text_is_always_a_str(self, raw: JSON) -> None:
        """input_text never raises and always returns a str."""
        assert type(input_text(raw)) is str

    @_settings
    @given(_llm_shapes)
    def test_output_text_is_str_or_none_for_none(self, raw: JSON) -> None:
        """output_text never raises; it returns None exactly when the output is None."""
        text = output_text(raw)
        assert text is None if raw is None else type(text) is str

    @_settings
    @given(_llm_shapes)
    def test_chunk_text_is_always_a_str(self, raw: JSON) -> None:
        """chunk_text never raises and always returns a str."""
        assert type(chunk_text(raw)) is str

    @_settings
    @given(_llm_shapes, _llm_shapes)
    def test_detect_gives_known_keys_with_right_types(self, raw_input: JSON, raw_output: JSON) -> None:
        """detect never raises and gives only known keys, each with its exact type."""
        found = detect(raw_input, raw_output)
        for key, value in found.items():
            assert type(value) is _DETECTED[key]

    @settings(max_examples=100, deadline=None)
    @given(
        st.recursive(
            st.none() | st.floats() | st.binary() | _text,
            lambda c: st.lists(c) | st.dictionaries(st.integers() | _text, c),
            max_leaves=15,
        )
    )
    def test_functions_accept_any_snapshot(self, value: object) -> None:
        """Every extractor accepts whatever to_jsonable returns."""
        raw = to_jsonable(value)
        assert type(input_text(raw)) is str
        assert output_text(raw) is None or type(output_text(raw)) is str
        assert type(chunk_text(raw)) is str
        assert isinstance(detect(raw, raw), dict)
