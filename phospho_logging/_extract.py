"""The phospho SDK's rules for turning LLM inputs and outputs into text, and for detection.

Every function takes values already snapshotted by `to_jsonable` (dicts, lists, str...),
so it only ever reads plain containers; none of them raises, whatever the shape.
The rules follow the official SDK so that tasks look the same in the phospho UI whichever
client logged them, extended to the message shapes of
multimodal content parts, tool calls and the Anthropic and Ollama APIs.
"""

from __future__ import annotations

import json
from typing import Any

from ._serialize import JSON, to_jsonable

__all__ = ["chunk_text", "detect", "input_text", "output_text"]

# Content-part types that carry text: OpenAI chat and Anthropic use "text", the OpenAI
# Responses API uses "input_text" and "output_text".
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
_SYSTEM_ROLES = frozenset({"system", "developer"})  # "developer" replaces "system" for o1+


def input_text(raw: JSON) -> str:
    """Return the text of an LLM input, as the phospho SDK extracts it.

    Args:
        raw: A `to_jsonable` snapshot of the input (a prompt, a request dict, messages).

    Returns:
        The prompt text: the last message of a ``messages`` request, the trailing user
        messages of a message list, a completions ``prompt``, or else JSON / ``str()``
        of the whole value. Never raises.
    """
    try:
        return _input_text(raw)
    except Exception:  # noqa: BLE001 - extraction must never fail a logging call
        return _fallback_text(raw)


def _input_text(raw: Any) -> str:
    if type(raw) is str:
        return raw
    if raw is None:
        return ""
    if type(raw) is dict:
        messages = raw.get("messages")
        if type(messages) is list and messages:
            return _message_text(messages[-1])
        prompt = raw.get("prompt")
        if type(prompt) is str:
            return prompt
        if type(prompt) is list and _is_str_list(prompt):
            # The completions API also takes a batch of prompts.
            return "\n".join(prompt)
        if _is_message(raw):
            return _message_text(raw)
    elif _is_message_list(raw):
        return _trailing_run(raw, "user")
    return _fallback_text(raw)


def output_text(raw: JSON) -> str | None:
    """Return the text of an LLM output, as the phospho SDK extracts it.

    Args:
        raw: A `to_jsonable` snapshot of the output (a completion, a chunk, messages).

    Returns:
        None when there is no output; otherwise the first choice's message or delta
        content (tool calls as JSON when there is no content), an Ollama ``response``
        or ``message``, the text blocks of an Anthropic message, the trailing assistant
        messages of a message list, or else JSON / ``str()`` of the value. Never raises.
    """
    if raw is None:
        return None
    try:
        return _output_text(raw)
    except Exception:  # noqa: BLE001 - extraction must never fail a logging call
        return _fallback_text(raw)


def _output_text(raw: Any) -> str:
    if type(raw) is str:
        return raw
    if type(raw) is dict:
        choices = raw.get("choices")
        if type(choices) is list and choices:
            text = _choice_text(choices[0])
            if text is not None:
                return text
        response = raw.get("response")
        if type(response) is str:  # Ollama generate
            return response
        message = raw.get("message")
        if type(message) is dict and "content" in message:  # Ollama chat
            return _message_text(message)
        content = raw.get("content")
        if type(content) is list:  # an Anthropic message: a list of content blocks
            return _content_text(content)
        if _is_message(raw):
            return _message_text(raw)
    elif _is_message_list(raw):
        return _trailing_run(raw, "assistant")
    return _fallback_text(raw)


def _choice_text(choice: Any) -> str | None:
    """Text of one OpenAI choice, or None when it has none of the known shapes."""
    if type(choice) is not dict:
        return None
    message = choice.get("message")
    if type(message) is dict:
        return _message_text(message)
    delta = choice.get("delta")
    if type(delta) is dict:
        content = delta.get("content")
        return content if type(content) is str else ""
    text = choice.get("text")  # the legacy completions API
    if type(text) is str:
        return text
    return None


def chunk_text(chunk: JSON) -> str:
    """Return the text one streamed chunk adds to the output.

    Args:
        chunk: A `to_jsonable` snapshot of one chunk: a str, an OpenAI chunk dict, an
            Ollama chunk, or an Anthropic stream event.

    Returns:
        The chunk's text, or ``""`` for chunks that carry none (role-only deltas, usage
        chunks, ``None``, unknown shapes). Never raises.
    """
    try:
        return _chunk_text(chunk)
    except Exception:  # noqa: BLE001 - a stream must never break on one odd chunk
        return ""


def _chunk_text(chunk: Any) -> str:
    if type(chunk) is str:
        return chunk
    if type(chunk) is not dict:
        return ""
    choices = chunk.get("choices")
    if type(choices) is list:
        if not choices:
            return ""  # e.g. openai's trailing include_usage chunk
        first = choices[0]
        if type(first) is not dict:
            return ""
        delta = first.get("delta")
        if type(delta) is dict:
            content = delta.get("content")
            return content if type(content) is str else ""
        text = first.get("text")
        return text if type(text) is str else ""
    response = chunk.get("response")
    if type(response) is str:  # Ollama generate
        return response
    message = chunk.get("message")
    if type(message) is dict:  # Ollama chat
        content = message.get("content")
        return content if type(content) is str else ""
    if chunk.get("type") == "content_block_delta":  # Anthropic stream event
        delta = chunk.get("delta")
        if type(delta) is dict:
            text = delta.get("text")
            return text if type(text) is str else ""
    return ""


def detect(raw_input: JSON, raw_output: JSON) -> dict[str, JSON]:
    """Detect the model, system prompt and token usage of one LLM call.

    Args:
        raw_input: A `to_jsonable` snapshot of the input (a request dict or messages).
        raw_output: A `to_jsonable` snapshot of the output (a response dict).

    Returns:
        A dict holding whichever of ``model``, ``system_prompt``, ``prompt_tokens``,
        ``completion_tokens`` and ``total_tokens`` were found; keys not found are
        omitted. Never raises.
    """
    found: dict[str, JSON] = {}
    if type(raw_output) is list:
        # A stream's chunks: the last dict chunk holds the model and, with openai's
        # include_usage, the token counts.
        raw_output = next((c for c in reversed(raw_output) if type(c) is dict), None)
    try:
        _detect_model(raw_input, raw_output, found)
    except Exception:  # noqa: BLE001, S110 - detection is best effort, per item
        pass
    try:
        _detect_system_prompt(raw_input, found)
    except Exception:  # noqa: BLE001, S110
        pass
    try:
        _detect_usage(raw_output, found)
    except Exception:  # noqa: BLE001, S110
        pass
    return found


def _detect_model(raw_input: Any, raw_output: Any, found: dict[str, JSON]) -> None:
    for source in (raw_output, raw_input):
        if type(source) is dict:
            model = source.get("model")
            if type(model) is str:
                found["model"] = model
                return


def _detect_system_prompt(raw_input: Any, found: dict[str, JSON]) -> None:
    messages = raw_input.get("messages") if type(raw_input) is dict else raw_input
    if type(messages) is list:
        for message in messages:
            if type(message) is dict and message.get("role") in _SYSTEM_ROLES:
                found["system_prompt"] = _content_text(message.get("content"))
                return
    if type(raw_input) is dict:
        system = raw_input.get("system")  # Anthropic messages, Ollama generate
        if type(system) is str:
            found["system_prompt"] = system
        elif type(system) is list and system:
            found["system_prompt"] = _content_text(system)


def _detect_usage(raw_output: Any, found: dict[str, JSON]) -> None:
    if type(raw_output) is not dict:
        return
    usage = raw_output.get("usage")
    if type(usage) is dict:
        # OpenAI chat names first; Anthropic and the OpenAI Responses API use input/output.
        prompt = _first_int(usage, "prompt_tokens", "input_tokens")
        completion = _first_int(usage, "completion_tokens", "output_tokens")
        total = _first_int(usage, "total_tokens")
    else:  # Ollama reports counts at the top level of its final message
        prompt = _first_int(raw_output, "prompt_eval_count")
        completion = _first_int(raw_output, "eval_count")
        total = None
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    for key, value in (
        ("prompt_tokens", prompt),
        ("completion_tokens", completion),
        ("total_tokens", total),
    ):
        if value is not None:
            found[key] = value


def _first_int(source: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = source.get(key)
        if type(value) is int:  # exact: True is an int too, but never a token count
            return value
    return None


def _is_message(value: Any) -> bool:
    return type(value) is dict and type(value.get("role")) is str and "content" in value


def _is_message_list(value: Any) -> bool:
    return type(value) is list and bool(value) and all(type(m) is dict and type(m.get("role")) is str for m in value)


def _is_str_list(value: list[Any]) -> bool:
    return bool(value) and all(type(v) is str for v in value)


def _trailing_run(messages: list[Any], role: str) -> str:
    """Join the texts of the last consecutive messages that have ``role``."""
    run: list[str] = []
    for message in reversed(messages):
        if message.get("role") != role:
            break
        run.append(_message_text(message))
    if not run:
        # The list does not end with that role (for example a whole conversation
        # logged as output): its last message is the most useful text, not "".
        return _message_text(messages[-1])
    run.reverse()
    return "\n".join(run)


def _message_text(message: Any) -> str:
    """Text of one chat message: its content, else its tool calls as JSON."""
    if type(message) is not dict:
        return _fallback_text(message)
    content = message.get("content")
    if content is None or content == "":
        # An assistant turn that only calls tools has null content (OpenAI) or ""
        # (Ollama); the calls are what it said.
        for key in ("tool_calls", "function_call", "refusal"):
            value = message.get(key)
            if value:
                return value if type(value) is str else _json_text(value)
        return ""
    return _content_text(content)


def _content_text(content: Any) -> str:
    """Text of a message ``content``: a str, None, or a list of content parts/blocks."""
    if type(content) is str:
        return content
    if content is None:
        return ""
    parts = [content] if type(content) is dict else content
    if type(parts) is list:
        texts = [text for text in map(_part_text, parts) if text is not None]
        if texts:
            return "\n".join(texts)
    # Only images, tool results and the like: their JSON keeps what was sent.
    return _fallback_text(content)


def _part_text(part: Any) -> str | None:
    if type(part) is str:
        return part
    if type(part) is dict and part.get("type") in _TEXT_PART_TYPES:
        text = part.get("text")
        if type(text) is str:
            return text
    return None


def _fallback_text(value: Any) -> str:
    """Compact JSON for containers, ``str()`` for scalars."""
    if type(value) is dict or type(value) is list:
        return _json_text(value)
    if value is None:
        return ""
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - only reachable for a value not from to_jsonable
        return _json_text(value)


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except Exception:  # noqa: BLE001 - not jsonable after all, or nested too deep
        try:
            snapshot = to_jsonable(value, max_depth=64)
            return json.dumps(snapshot, ensure_ascii=False, separators=(",", ":"))
        except Exception:  # noqa: BLE001 - the caller's stack is exhausted
            return "<unserializable>"
