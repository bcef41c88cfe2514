"""Raw HTTP streams: chunks of bytes or text that hold JSON lines or server-sent events.

An LLM server read without its client library streams lines: Ollama sends one JSON object
per line (``{"model": ..., "response": "The", "done": false}``), OpenAI-compatible servers
send server-sent events (``data: {...}`` lines, a blank line between events, then
``data: [DONE]``). A consumer may hand them over one line per chunk (``iter_lines()``,
with or without the newline) or cut anywhere (``iter_content()``, ``iter_bytes()``).

``RawReader`` turns such chunks back into items ``(text, value)``: the text the item adds
to the task's output and the value kept in ``raw_output`` (the parsed dict, or text).
What it reads is decided by the first chunk that is not blank:

* ``{`` starts JSON lines; a line that is a JSON object of a known LLM shape gives its
  text (``response``, ``message.content``, ``choices[0].delta.content``...);
* ``data:``, ``event:``, ``id:`` or ``retry:`` starts server-sent events; a ``data:``
  payload is read as above, ``[DONE]``, comments and the other fields add nothing;
* anything else is plain text, passed on as it comes (bytes decoded as UTF-8, a character
  cut between two chunks kept whole).

Nothing is ever lost: a line that is not a known shape is kept as it came, newline
included, so a text stream that happens to start with ``{`` still gives its text.
"""

from __future__ import annotations

import codecs
import json
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["RawReader", "TEXT_CHUNKS", "parse_line"]

#: Chunk types a ``RawReader`` reads.
TEXT_CHUNKS = (str, bytes, bytearray, memoryview)

#: (text added to the output, value kept in raw_output or None for nothing).
Item = Tuple[str, Any]

_SSE_FIELDS = ("data:", "event:", "id:", "retry:")
_SSE_IGNORED = ("event:", "id:", "retry:", ":")
_UNDECIDED, _PLAIN, _JSON, _SSE = 0, 1, 2, 3
_loads = json.loads


def known_shape(value: Any) -> bool:
    """True for the JSON objects LLM servers stream: an OpenAI chunk, an Ollama chunk, an
    Anthropic event, a usage or error message."""
    if type(value) is not dict:
        return False
    get = value.get
    if type(get("choices")) is list or type(get("response")) is str or type(get("message")) is dict:
        return True
    if type(get("done")) is bool or type(get("usage")) is dict or "error" in value:
        return True
    kind = get("type")
    return type(kind) is str and kind.startswith(("message", "content_block", "ping", "error", "response."))


def _object(text: str) -> Optional[dict]:  # type: ignore[type-arg]
    """The JSON object ``text`` (stripped) holds, or None."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = _loads(text)
    except (ValueError, RecursionError):
        return None
    return value if type(value) is dict else None


def parse_line(chunk: Any) -> Optional[dict]:  # type: ignore[type-arg]
    """The JSON object one line holds (bytes or text, a ``data:`` prefix allowed), or None."""
    try:
        text = chunk if type(chunk) is str else bytes(chunk).decode("utf-8", "replace")
        text = text.strip()
        if text.startswith("data:"):
            text = text[5:].strip()
        return _object(text)
    except Exception:  # noqa: BLE001 - whatever the chunk, no answer is an answer
        return None


class RawReader:
    """Reads the text chunks of one stream; see the module's docstring."""

    __slots__ = ("_mode", "_pending", "_decoder", "_text_of", "_held", "_after", "_memo")

    def __init__(self, text_of: Callable[[Any], str]) -> None:
        self._mode = _UNDECIDED
        self._pending = ""  # a line not ended yet
        self._decoder: Any = None
        self._text_of = text_of  # the text of a parsed object (the extraction rules)
        self._held: List[str] = []  # blank chunks before the first one that decides
        # A line was taken whole before its newline came: what that newline adds when it
        # does come ("\n" after a line kept as text, nothing after a parsed one).
        self._after: Optional[str] = None
        self._memo: Tuple[str, Any] = ("", None)  # the last text parsed, and its object

    @property
    def plain(self) -> bool:
        """True once the stream is known to be plain text."""
        return self._mode == _PLAIN

    def feed(self, chunk: Any) -> List[Item]:
        """The items one chunk completes (none while a line is still open)."""
        if type(chunk) is str:
            text = chunk
        else:
            if self._decoder is None:
                self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
            text = self._decoder.decode(bytes(chunk))
            if not text and chunk:
                return []  # part of a character: the next chunk has the rest
        if self._mode == _UNDECIDED:
            self._held.append(text)
            head = "".join(self._held).lstrip()
            if not head or any(field.startswith(head) for field in _SSE_FIELDS):
                return []  # blank, or "da" of a "data:" cut short: the next chunk decides
            self._held.pop()
            self._decide(head)
            held, self._held = "".join(self._held), []
            if self._mode == _PLAIN:
                return [(held + text, held + text)] if held else [(text, text)]
            text = held + text
        if self._mode == _PLAIN:
            return [(text, text)] if text else []
        return self._lines(text)

    def end(self) -> List[Item]:
        """The items still open when the stream ends."""
        tail = self._decoder.decode(b"", True) if self._decoder is not None else ""
        if self._mode == _UNDECIDED or self._mode == _PLAIN:
            text = "".join(self._held) + tail
            self._held = []
            return [(text, text)] if text else []
        pending, self._pending = self._pending + tail, ""
        return self._line(pending, "") if pending else []

    def _decide(self, text: str) -> None:
        head = text.lstrip()
        if head.startswith("{"):
            self._mode = _JSON
        elif head.startswith(_SSE_FIELDS):
            self._mode = _SSE
        else:
            self._mode = _PLAIN

    def _lines(self, text: str) -> List[Item]:
        items: List[Item] = []
        after = self._after
        if after is not None and text:
            self._after = None
            cut = 1 if text.startswith("\n") else 2 if text.startswith("\r\n") else 0
            if cut:  # the newline of the line already taken
                text = text[cut:]
                if after:
                    items.append((after, None))
        pending = self._pending
        if pending and self._starts_a_line(pending, text):
            # One line per chunk without its newline (iter_lines): the previous one is whole.
            items += self._line(pending, "")
            pending = ""
        text = pending + text
        lines = text.split("\n")
        last = lines.pop()
        for line in lines:
            items += self._line(line, "\n")
        if last and self._whole(last):
            taken = self._line(last, "")
            items += taken
            self._after = "\n" if self._mode == _JSON and taken and taken[0][0] == last else ""
            last = ""
        self._pending = last
        return items

    def _starts_a_line(self, pending: str, text: str) -> bool:
        """Whether ``text`` starts a new line after an open line with no newline."""
        if not text:
            return True  # iter_lines() gives the blank line between two events as ""
        if self._mode == _JSON:
            # A new object; not the inner object of one cut in two (iter_content).
            return text.startswith("{") and not pending.lstrip().startswith("{")
        return text.startswith(_SSE_FIELDS)

    def _whole(self, line: str) -> bool:
        """A line with no newline yet that cannot go on: a JSON object, ``data: {...}``."""
        line = line.rstrip()
        if not line.endswith(("}", "]")):
            return False
        if self._mode == _SSE:
            if not line.startswith("data:"):
                return False
            line = line[5:]
            if line.strip() == "[DONE]":
                return True
        return self._object(line) is not None

    def _object(self, text: str) -> Optional[dict]:  # type: ignore[type-arg]
        """``_object``, remembering the last answer: a line is parsed once, whether whole or not."""
        text = text.strip()
        memo = self._memo
        if text == memo[0]:
            return memo[1]  # type: ignore[no-any-return]
        value = _object(text)
        self._memo = (text, value)
        return value

    def _line(self, line: str, newline: str) -> List[Item]:
        if self._mode == _SSE:
            return self._event_line(line, newline)
        value = self._object(line)
        if value is not None:
            if known_shape(value):
                return [(self._text_of(value), value)]
            return [(line + newline, value)]
        if not line.strip():
            return [(line + newline, None)] if line or newline else []
        return [(line + newline, line)]

    def _event_line(self, line: str, newline: str) -> List[Item]:
        line = line.rstrip("\r")
        if line.startswith("data:"):
            payload = line[5:]
            if payload.startswith(" "):
                payload = payload[1:]
            if payload.strip() == "[DONE]":
                return []
            value = self._object(payload)
            if value is None:
                return [(payload, payload)] if payload else []  # a text event
            return [(self._text_of(value) if known_shape(value) else payload, value)]
        if not line or line.startswith(_SSE_IGNORED):
            return []
        return [(line + newline, line)]  # not an event field: kept as it came
