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
from typing import Any, Callable, Dict, Optional, Union

from ._serialize import to_jsonable

__all__ = ["RedactError", "Redaction", "Redactor", "Sampler", "mask_event", "mask_text", "redactor"]

#: Top-level fields of an event whose texts are masked (ids and times are left alone).
TEXT_FIELDS = ("input", "output", "system_prompt", "raw_input", "raw_output", "metadata")

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_SECRETS = (
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")),
    ("bearer", re.compile(r"(?<=\bBearer )[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)),
    ("api_key", re.compile(r"\bsk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{16,}")),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")),
)

#: 13 to 19 digits, spaces or dashes between groups: a card number candidate.
_CARD = re.compile(r"(?<![\w])\d(?:[ -]?\d){12,18}(?![\w])")
#: Two letters, two digits, then 11 to 30 letters or digits, in groups of four or not.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
#: An international number (+ and 8 to 15 digits), or a national one with separators.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(?\d{2,4}\)?[ .-]\d{2,4}(?:[ .-]\d{2,4}){1,3})(?!\w|\.\d)"
)
#: Gates, cheaper than the patterns: a run of 8 or more digits and separators (a card or a
#: phone number needs one), and an IBAN's country code and check digits.
_NUMBER_RUN = re.compile(r"[+(]?\d[\d ().+-]{6,}\d\)?")
_IBAN_HINT = re.compile(r"[A-Z]{2}\d{2}")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    return "[REDACTED:card]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group()


def _iban(match: re.Match[str]) -> str:
    text = match.group().replace(" ", "")
    if not 15 <= len(text) <= 34:
        return match.group()
    moved = text[4:] + text[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return "[REDACTED:iban]" if int(number) % 97 == 1 else match.group()


#: Shapes a phone pattern also matches that are not phone numbers: a date, an IPv4 address.
_NOT_PHONE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,3}(?:\.\d{1,3}){3}")


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    digits = sum(ch.isdigit() for ch in text)
    if not 8 <= digits <= 15 or _NOT_PHONE.fullmatch(text) is not None:
        return text
    return "[REDACTED:phone]"


def mask_text(text: str) -> str:
    """``text`` with e-mails, phone numbers, card numbers, IBANs and secrets replaced by
    ``[REDACTED:<kind>]`` markers. Cheap for text with none of them: each kind is looked
    for only when what it needs is there (an ``@``, a key's prefix, a digit)."""
    if "@" in text:
        text = _EMAIL.sub("[REDACTED:email]", text)
    # Substring tests first (C memchr scans): Python's regular expressions cost several
    # nanoseconds a character even where nothing matches.
    if ("sk-" in text or "eyJ" in text or "earer" in text or "EARER" in text or "AKIA" in text
            or "ASIA" in text or "ABIA" in text or "ACCA" in text):
        for kind, pattern in _SECRETS:
            text = pattern.sub(f"[REDACTED:{kind}]", text)
    if ("0" in text or "1" in text or "2" in text or "3" in text or "4" in text or "5" in text or "6" in text
            or "7" in text or "8" in text or "9" in text):
        if _IBAN_HINT.search(text) is not None:
            text = _IBAN.sub(_iban, text)
        # Cards and phones only where digits run (the patterns, on those runs alone).
        text = _NUMBER_RUN.sub(_numbers, text)
    return text


def _numbers(match: re.Match[str]) -> str:
    run = match.group()
    return _PHONE.sub(_phone, _CARD.sub(_card, run))


def _mask(value: Any, seen: Dict[str, str], depth: int = 0) -> Any:
    kind = type(value)
    if kind is str:
        masked = seen.get(value)
        if masked is None:  # the input's text is in raw_input too: masked once
            masked = seen[value] = mask_text(value)
        return masked
    if depth > 100:
        return value
    if kind is dict:
        return {key: _mask(item, seen, depth + 1) for key, item in value.items()}
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
        if value is not None:
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
        try:
            out = self._step(event)
        except Exception as exc:  # noqa: BLE001 - the user's function: reported as such
            raise RedactError(f"the redact function raised {type(exc).__name__}: {exc}") from None
        if out is None:
            return None
        if type(out) is not dict:
            raise RedactError(f"the redact function returned {type(out).__name__}, not the event (a dict) or None")
        return to_jsonable(out) if self._custom else out  # type: ignore[return-value]


def make_redaction(setting: Any) -> Optional[Redaction]:
    """The ``Redaction`` of an option value, or None when redaction is off."""
    return None if setting is None or setting is False else Redaction(setting)


class Sampler:
    """``sample_rate``: keeps or drops whole sessions, by a hash of the session id (of the
    task id for a task without one), the same in every process and every run."""

    __slots__ = ("_limit",)

    def __init__(self, rate: float) -> None:
        self._limit = int(rate * 2**64)

    def keeps(self, session_id: Optional[str], task_id: str) -> bool:
        key = (session_id if session_id else task_id).encode("utf-8", "surrogatepass")
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") < self._limit


def make_sampler(rate: float) -> Optional[Sampler]:
    """The ``Sampler`` of a rate, or None for 1 (everything kept)."""
    return None if rate >= 1.0 else Sampler(rate)
