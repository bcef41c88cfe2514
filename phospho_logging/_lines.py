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
#: A tentative line was ended by a lone "\r" (a "\n" next belongs to it); _CR_KEPT: that
#: line was kept as text, so the "\n" is kept too.
_CR, _CR_KEPT = 1, 2
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
    """Reads the text chunks of one stream; see the module's docstring.

    Linear in the stream's size however it is cut: the open line is kept in pieces, joined
    once its newline comes; whether it is already a whole object (a chunk per line, as
    ``iter_lines()`` gives them) is asked when it closes its braces, and again only once it
    has doubled in size. A line taken whole before its newline is tentative: the next chunk
    confirms it (a newline, a new line, the end) or shows it goes on.
    """

    __slots__ = ("_mode", "_parts", "_size", "_depth", "_next_check", "_decoder", "_text_of", "_held", "_head",
                 "_tentative", "_cr", "_memo")

    def __init__(self, text_of: Callable[[Any], str]) -> None:
        self._mode = _UNDECIDED
        self._parts: List[str] = []  # the open line (its newline not seen yet), in pieces
        self._size = 0  # its length
        self._depth = 0  # its "{" less its "}" (strings not parsed: a hint of where it may end)
        self._next_check = 0  # its length at which to ask again whether it is whole
        self._decoder: Any = None
        self._text_of = text_of  # the text of a parsed object (the extraction rules)
        self._held: List[str] = []  # blank chunks before the first one that decides
        self._head = ""  # the held text, left-stripped, its first characters: what decides
        #: A line taken whole before its newline: (its text, its items), until confirmed.
        self._tentative: Optional[Tuple[str, List[Item]]] = None
        self._cr = 0  # _CR or _CR_KEPT: a tentative line was ended by a lone "\r"
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
            self._head = (self._head + text[:16]).lstrip()[:8]
            if not self._head or any(field.startswith(self._head) for field in _SSE_FIELDS):
                return []  # blank, or "da" of a "data:" cut short: the next chunk decides
            self._decide(self._head)
            text, self._held = "".join(self._held), []
            if self._mode == _PLAIN:
                return [(text, text)]
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
        items = self._lines(tail) if tail else []
        if self._tentative is not None:
            items += self._tentative[1]
            self._tentative = None
        if self._parts:
            items += self._line(self._take_open(), "")
        return items

    def _decide(self, head: str) -> None:
        if head.startswith("{"):
            self._mode = _JSON
        elif head.startswith(_SSE_FIELDS):
            self._mode = _SSE
        else:
            self._mode = _PLAIN

    def _take_open(self) -> str:
        line = "".join(self._parts)
        self._parts, self._size, self._depth, self._next_check = [], 0, 0, 0
        return line

    def _open(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._mode == _JSON or self._mode == _SSE:
            self._depth += text.count("{") - text.count("}")

    def _lines(self, text: str) -> List[Item]:
        items: List[Item] = []
        if self._cr:
            kept, self._cr = self._cr == _CR_KEPT, 0
            if text.startswith("\n"):
                text = text[1:]
                if kept:
                    items.append(("\n", None))  # the rest of the "\r\n" of a line kept as text
        if self._tentative is not None:
            text = self._confirm(text, items)
        if not text:
            if self._parts and not self._cr:  # iter_lines() gives a blank line as "": the open one is whole
                items += self._line(self._take_open(), "")
            return items
        if self._parts and self._starts_a_line(text):
            # One line per chunk without its newline (iter_lines): the open one is whole.
            items += self._line(self._take_open(), "")
        fresh = not self._parts
        if "\n" in text:
            pieces = text.split("\n")
            last = pieces.pop()
            if self._parts:
                self._open(pieces[0])
                pieces[0] = self._take_open()
            for line in pieces:
                items += self._line(line, "\n")
            fresh = True
            text = last
            if not text:
                return items
        self._open(text)
        tail = text.rstrip()
        if tail.endswith(("}", "]")) and (fresh or (self._depth == 0 and self._size >= self._next_check)):
            line = "".join(self._parts)
            if self._whole(line):
                self._take_open()
                self._tentative = (line, self._line(line, ""))
            else:
                self._parts = [line]
                self._next_check = 2 * self._size  # asked again only once it has doubled
        return items

    def _confirm(self, text: str, items: List[Item]) -> str:
        """The chunk after a line taken whole before its newline: a newline, a new line or a
        blank chunk confirm it; anything else goes on with it (it was not a line)."""
        line, taken = self._tentative  # type: ignore[misc]
        ending = ""
        if text.startswith("\r\n"):
            text, ending = text[2:], "\r\n"
        elif text.startswith("\n"):
            text, ending = text[1:], "\n"
        elif text.startswith("\r"):
            text, ending = text[1:], "\r"
        elif text and not self._starts_new(text):
            self._tentative = None
            self._open(line)  # it goes on: the open line again
            return text
        self._tentative = None
        items += taken
        kept = self._mode == _JSON and bool(taken) and taken[0][0] == line
        if ending and kept:
            items.append((ending, None))  # kept as text: its newline too, as it came
        if ending == "\r" and not text:
            self._cr = _CR_KEPT if kept else _CR  # "\r" then "\n" in the next chunk: one newline
        return text

    def _starts_new(self, text: str) -> bool:
        if self._mode == _JSON:
            return text.startswith("{")
        return text.startswith(_SSE_FIELDS) or text.startswith(":")

    def _starts_a_line(self, text: str) -> bool:
        """Whether ``text`` starts a new line after an open line with no newline: a new object
        or field, unless the open line is an object not closed yet (cut anywhere, as
        ``iter_content()`` cuts, a chunk may start with ``{`` or ``data:`` inside it)."""
        first = self._open_start()
        if self._mode == _JSON:
            return text.startswith("{") and not first.startswith("{")
        if first.startswith("data:"):
            first = first[5:].lstrip()
        return text.startswith(_SSE_FIELDS) and not first.startswith("{")

    def _open_start(self) -> str:
        """The first characters of the open line (left-stripped), from as few pieces as it takes."""
        start = ""
        for piece in self._parts:
            start += piece[:16]
            if len(start.lstrip()) >= 8:
                break
        return start.lstrip()

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
