"""Redaction: personal data and secrets masked before an event is sent, stored or printed.

``configure(redact=True)`` masks, in every text of an event (``input``, ``output``,
``system_prompt``, the raw fields and the metadata values, however nested), what
``mask_text`` finds: e-mail addresses, phone numbers, payment card numbers (Luhn-checked),
IBANs (checksum-checked), and secrets (OpenAI-style ``sk-...`` keys, AWS access key ids,
``Bearer`` tokens, JWTs), each replaced by a visible marker such as ``[REDACTED:email]``.
``configure(redact=callable)`` runs yours instead: it takes the event (a dict) and returns
it changed, or None to drop it. The worker applies it to each event before it is encoded,
so the HTTP request, the local store, the spool and the durable copy only ever hold the
redacted event; the JSON formatter applies it to the lines it renders.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Dict, List, Optional, Union

from ._serialize import to_jsonable

__all__ = ["RedactError", "Redaction", "Redactor", "Sampler", "mask_event", "mask_text", "redactor"]

#: Top-level fields of an event whose texts are masked (ids and times are left alone).
TEXT_FIELDS = ("input", "output", "system_prompt", "raw_input", "raw_output", "metadata")
#: Metadata values that are ids, never masked (a span id of decimal digits could pass for a card).
ID_KEYS = frozenset({"trace_id", "span_id"})

# Every pattern below is linear in the text, whatever it holds: a run is tried from its
# start only (a lookbehind for the run's own characters), quantifiers are bounded, and
# e-mail addresses are found from their "@" out (a logged 1 MB string of "sk-" or of
# letters before an "@" costs one pass, not a pass per position).
_DOMAIN = re.compile(r"[\w-]{1,63}(?:\.[\w-]{1,63}){0,9}\.(?:xn--[A-Za-z0-9-]{1,59}|[^\W\d_]{2,24})(?![^\W\d_])")
#: Before a value: not a letter or digit of the same word, unless it is the ``n``, ``t`` or
#: ``r`` of an escaped newline or tab (a prompt logged as JSON text: ``"...\\nsk-..."``).
_START = r"(?:(?<![A-Za-z0-9_-])|(?<=\\[ntr]))"
_LOCAL_CHARS = frozenset("._%+-")
_SECRETS = (
    ("jwt", re.compile(_START + r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")),
    ("api_key", re.compile(_START + r"sk-[A-Za-z0-9_-]{16,}")),
    ("aws_key", re.compile(_START + r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![A-Za-z0-9])")),
)
_BEARER = re.compile(r"(?:(?<![A-Za-z])|(?<=\\[ntr]))(bearer(?:\s+|\s*[:=]\s*|%20))[A-Za-z0-9._~+/=-]{8,}",
                     re.IGNORECASE)
#: Two letters, two digits, then 11 to 30 letters or digits, in groups of four or not
#: (spaces or dashes), either case; the checksum decides how much of it is the IBAN.
_IBAN = re.compile(_START + r"[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]){11,30}")
_IBAN_HINT = re.compile(r"[A-Za-z]{2}\d{2}")
#: A run of digits and separators (8 characters or more) standing alone (not inside an
#: ASCII word or a decimal number; next to other scripts' letters, it stands alone): where
#: card and phone numbers are looked for.
_NUMBER_RUN = re.compile(r"(?:(?<![A-Za-z0-9_+.])|(?<=\\[ntr])|(?<=[A-Za-z]\.))[+(]?\d[\d ().+/_-]{6,}\d\)?"
                         r"(?![A-Za-z0-9_]|\.\d)")
#: A phone number candidate inside a run: an international one (``+33``, ``(+33)``) or a
#: national one with separators, groups of 1 to 8 digits; ``_phone`` then wants 8 to 15
#: digits and no date, IP address or thousands-grouped number.
_PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+|\(\+)\d{1,3}\)?(?:[ .-]?\(?\d{1,5}\)?(?:[ .-]\d{1,8}){0,5}|\d{6,12})"
    r"|\(?\d{1,5}\)?(?:[ .-]\d{1,8}){1,5})(?!\w|\.\d)"
)
_DATE = re.compile(r"(?<!\d)(?:\d{4}[./ -]\d{1,2}[./ -]\d{1,2}|\d{1,2}[./ -]\d{1,2}[./ -]\d{4})(?!\d)")
#: Whole candidates that are not phone numbers: an IPv4 address, a number in thousands.
_NOT_PHONE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|\d{1,3}(?:[.,]\d{3}){2,}")
_GROUP = re.compile(r"\d+")
#: The gates of the two costlier scans: a run of 8 digits and separators at least (no
#: lookbehind: a plain scan), and an IBAN's country code and check digits.
_RUN_HINT = re.compile(r"\d[\d ().+/_-]{6,}\d")
_ANY_DIGIT = re.compile(r"\d")  # digits of any script (full-width, Arabic-Indic...)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)  # any script's digits (full-width, Arabic-Indic...)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _emails(text: str, at_sign: str = "@") -> str:
    """E-mail addresses, found from each "@" (or its URL encoding ``%40``): up to 64
    characters of local part before it, a domain after it."""
    out: List[str] = []
    last = 0
    width = len(at_sign)
    at = text.find(at_sign)
    while at != -1:
        start = at
        while start > 0 and at - start < 64 and start - 1 >= last:
            ch = text[start - 1]
            if not (ch.isalnum() or ch in _LOCAL_CHARS):
                break
            start -= 1
        domain = _DOMAIN.match(text, at + width) if start < at else None
        if domain is None:
            at = text.find(at_sign, at + 1)
            continue
        out.append(text[last:start])
        out.append("[REDACTED:email]")
        last = domain.end()
        at = text.find(at_sign, last)
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _valid_iban(found: str) -> int:
    """The length of the checksum-valid IBAN that ``found`` starts with (the longest), or 0."""
    for end in range(len(found), 14, -1):
        candidate = found[:end].rstrip(" -")
        if len(candidate) != end:
            continue
        compact = candidate.replace(" ", "").replace("-", "").upper()
        if 15 <= len(compact) <= 34 and compact[:2].isalpha() and compact.isalnum() and compact.isascii():
            moved = compact[4:] + compact[:4]
            if int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1:
                return end
    return 0


def _ibans(text: str) -> str:
    """IBANs: each candidate is cut to the checksum-valid IBAN it starts with; the search
    goes on right after it (a greedy candidate may have taken the start of the next one)."""
    out: List[str] = []
    pos = last = 0
    while True:
        match = _IBAN.search(text, pos)
        if match is None:
            break
        size = _valid_iban(match.group())
        if size:
            out.append(text[last:match.start()])
            out.append("[REDACTED:iban]")
            last = pos = match.start() + size
        else:
            pos = match.start() + 1
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _cards(run: str) -> str:
    """Card numbers in a run of digits: 13 to 19 digits in whole groups of 3 digits or more
    (4-4-4-4, 4-6-5, or one group) that pass the Luhn check; a group of more than 19
    digits, or that fails, is tried cut to a card's length from its start. A card next to
    another number (a CVV, a quantity, a phone number) is found too."""
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    out: List[str] = []
    last = 0
    i = 0
    while i < len(groups):
        best = None
        digits = ""
        for j in range(i, len(groups)):
            start, end = groups[j]
            if end - start < 3 or len(digits) + end - start > 19:
                break
            digits += run[start:end]
            if len(digits) >= 13 and _luhn(digits) and (best is None or len(digits) in (15, 16)):
                best = (j, end)
        if best is None and groups[i][1] - groups[i][0] >= 13:  # written without spaces, with more after it
            whole = run[groups[i][0]:groups[i][1]]
            for size in (16, 15, 19, 18, 17, 14, 13):
                if size < len(whole) and _luhn(whole[:size]):
                    best = (i, groups[i][0] + size)
                    break
        if best is None:
            i += 1
            continue
        out.append(run[last:groups[i][0]])
        out.append("[REDACTED:card]")
        last = best[1]
        i = best[0] + 1
    if not out:
        return run
    out.append(run[last:])
    return "".join(out)


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    digits = sum(ch.isdigit() for ch in text)
    if not 8 <= digits <= 15 or _DATE.search(text) is not None or _NOT_PHONE.fullmatch(text) is not None:
        return text
    return "[REDACTED:phone]"


def _numbers(match: re.Match[str]) -> str:
    return _PHONE.sub(_phone, _cards(match.group()))


def mask_text(text: str) -> str:
    """``text`` with e-mails, phone numbers, card numbers, IBANs and secrets replaced by
    ``[REDACTED:<kind>]`` markers. Linear in the text, and cheap for text with none of
    them: each kind is looked for only when what it needs is there (an ``@``, a key's
    prefix, a digit)."""
    if "@" in text:
        text = _emails(text)
    if "%40" in text:
        text = _emails(text, "%40")
    # Substring tests first (C memchr scans): Python's regular expressions cost several
    # nanoseconds a character even where nothing matches.
    if "sk-" in text or "eyJ" in text or "AKIA" in text or "ASIA" in text or "ABIA" in text or "ACCA" in text:
        for kind, pattern in _SECRETS:
            text = pattern.sub(f"[REDACTED:{kind}]", text)
    if "earer" in text or "EARER" in text or "bearer" in text.lower():
        text = _BEARER.sub(r"\1[REDACTED:bearer]", text)
    if ("0" in text or "1" in text or "2" in text or "3" in text or "4" in text or "5" in text or "6" in text
            or "7" in text or "8" in text or "9" in text or (not text.isascii() and _ANY_DIGIT.search(text))):
        if _IBAN_HINT.search(text) is not None:
            text = _ibans(text)
        # Cards and phones only where digits run (the patterns, on those runs alone).
        if _RUN_HINT.search(text) is not None:
            text = _NUMBER_RUN.sub(_numbers, text)
    return text


def _mask(value: Any, seen: Dict[str, str], depth: int = 0) -> Any:
    kind = type(value)
    if kind is int and 10**14 <= abs(value) < 10**19 and _luhn(str(abs(value))):
        return "[REDACTED:card]"  # a card number kept as a number (15 to 19 digits)
    if kind is str:
        masked = seen.get(value)
        if masked is None:  # the input's text is in raw_input too: masked once
            masked = seen[value] = mask_text(value)
        return masked
    if depth > 100:
        return value
    if kind is dict:  # keys are text too ({"jane@doe.com": "opened"})
        return {_mask(key, seen) if type(key) is str else key: _mask(item, seen, depth + 1)
                for key, item in value.items()}
    if kind is list:
        return [_mask(item, seen, depth + 1) for item in value]
    return value


def mask_event(event: Dict[str, Any]) -> Dict[str, Any]:
    """The event with ``mask_text`` applied to every text of its ``TEXT_FIELDS`` (in place,
    and returned): what ``redact=True`` does. Call it from your own ``redact`` function to
    keep the built-in masks."""
    seen: Dict[str, str] = {}
    for key in TEXT_FIELDS:
        value = event.get(key)
        if value is None:
            continue
        if key == "metadata" and type(value) is dict:
            event[key] = {_mask(k, seen) if type(k) is str else k: (v if k in ID_KEYS else _mask(v, seen, 1))
                          for k, v in value.items()}
        else:
            event[key] = _mask(value, seen)
    return event


#: A redaction step: takes the event, returns it (changed) or None to drop it.
Redactor = Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]


def redactor(setting: Union[None, bool, Redactor]) -> Optional[Redactor]:
    """The step for a ``redact`` option: None (off), ``mask_event`` (True), or the callable."""
    if setting is None or setting is False:
        return None
    if setting is True:
        return mask_event
    return setting


class RedactError(Exception):
    """A ``redact`` function raised, or returned something that is not an event."""


class Redaction:
    """The ``redact`` option as the worker applies it: the event in, the event out (None:
    drop it); a function of yours that fails raises ``RedactError`` (the task is then
    dropped, never sent unredacted)."""

    __slots__ = ("_step", "_custom")

    def __init__(self, setting: Union[bool, Redactor]) -> None:
        step = redactor(setting)
        assert step is not None
        self._step = step
        self._custom = step is not mask_event

    def __call__(self, event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        name = getattr(self._step, "__qualname__", None) or type(self._step).__name__
        try:
            out = self._step(event)
        except Exception as exc:  # noqa: BLE001 - the user's function: reported as such
            raise RedactError(f"the redact function {name} raised {type(exc).__name__} (its text is not shown: it "
                              "may hold what it was masking); the task is dropped") from None
        if out is None:
            return None
        if type(out) is not dict:
            raise RedactError(f"the redact function {name} returned {type(out).__name__}, not the event (a dict) "
                              "or None; the task is dropped")
        if self._custom:
            out = to_jsonable(out)  # type: ignore[assignment]
            problem = _invalid(out)  # type: ignore[arg-type]
            if problem:
                raise RedactError(f"the redact function {name} returned an event phospho would refuse ({problem}); "
                                  "the task is dropped")
        return out  # type: ignore[return-value]


def _invalid(event: Dict[str, Any]) -> Optional[str]:
    """What makes an event changed by a redact function one phospho refuses, or None."""
    if type(event.get("task_id")) is not str or not event["task_id"]:
        return "task_id must stay a non-empty string"
    if type(event.get("input")) is not str:
        return "input must stay a string"
    for key in ("output", "session_id", "user_id", "version_id", "project_id", "system_prompt"):
        if event.get(key) is not None and type(event[key]) is not str:
            return f"{key} must be a string or None"
    if event.get("metadata") is not None and type(event["metadata"]) is not dict:
        return "metadata must be a dict or None"
    for key in ("raw_input", "raw_output"):
        if event.get(key) is not None and type(event[key]) not in (dict, list, str):
            return f"{key} must be a dict, a list, a string or None"
    return None


def make_redaction(setting: Any) -> Optional[Redaction]:
    """The ``Redaction`` of an option value, or None when redaction is off."""
    return None if setting is None or setting is False else Redaction(setting)


class Sampler:
    """``sample_rate``: keeps or drops whole sessions, by a hash of the session id (of the
    task id for a task without one), the same in every process and every run."""

    __slots__ = ("_limit", "_left_out")

    #: Task ids left out that are remembered, so that feedback on them is left out too.
    REMEMBERED = 100_000

    def __init__(self, rate: float) -> None:
        self._limit = int(rate * 2**64)
        self._left_out: Dict[str, None] = {}  # insertion-ordered: the oldest are forgotten first

    def keeps(self, session_id: Optional[str], task_id: str) -> bool:
        key = (session_id if session_id else task_id).encode("utf-8", "surrogatepass")
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") < self._limit

    def left_out(self, task_id: str) -> None:
        """Remember a task left out (the worker's thread only)."""
        left = self._left_out
        left[task_id] = None
        if len(left) > self.REMEMBERED:
            del left[next(iter(left))]

    def was_left_out(self, task_id: str) -> bool:
        """True for a task this process left out (feedback on it is left out as well)."""
        return task_id in self._left_out


def make_sampler(rate: float) -> Optional[Sampler]:
    """The ``Sampler`` of a rate, or None for 1 (everything kept)."""
    return None if rate >= 1.0 else Sampler(rate)
