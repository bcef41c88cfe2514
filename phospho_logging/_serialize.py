"""Turn arbitrary Python objects into a JSON snapshot, and JSON into bytes, never raising.

`to_jsonable` runs on the caller's thread inside every logging call, so it must be fast for
the common shapes (strings, small dicts of strings, chat-message lists) and must never raise
or touch I/O, whatever the caller hands it. Everything it returns is freshly built from
dict/list/str/int/float/bool/None, so later mutation of the caller's objects cannot change
what is shipped, and the worker thread can encode it without holding any caller locks.

`dumps` encodes such a snapshot to compact UTF-8 JSON bytes, with orjson when installed.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import ipaddress
import json
import math
import pathlib
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from decimal import Decimal
from typing import Any, Union

__all__ = ["JSON", "dumps", "to_jsonable"]

JSON = Union[None, bool, int, float, str, list["JSON"], dict[str, "JSON"]]
"""A value made only of JSON types (dict keys are always str, floats are always finite)."""

_orjson_dumps: Callable[[Any], bytes] | None
try:
    import orjson as _orjson  # type: ignore[import-not-found, unused-ignore]

    _orjson_dumps = _orjson.dumps
except ImportError:  # orjson is an optional extra
    _orjson_dumps = None

# Tests flip this to exercise the stdlib path on machines where orjson is installed.
_USE_ORJSON = _orjson_dumps is not None

# Ints outside signed 64 bits become strings: orjson refuses them, JavaScript loses
# precision, BSON stores cannot hold them, and str() of a huge int can even raise
# ValueError (the int_max_str_digits limit of Python 3.11+), so they are a liability
# everywhere past this point.
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1

# Placeholders are strings rather than null so that a reader of the logged data can tell
# "the caller passed None" from "something was cut here".
CYCLE = "<cycle>"
MAX_DEPTH = "<max depth>"

# If encoding still fails after scrubbing surrogates (only possible for input that did
# not come from to_jsonable, or when the caller's stack is nearly exhausted), the payload
# is re-snapshotted this shallow; the stdlib encoder recurses in C and orjson stops at 255.
_FALLBACK_DEPTH = 64

# The time types share isoformat(); listed once so the isinstance check is a single call.
_ISO_TYPES = (datetime.datetime, datetime.date, datetime.time)
# Types whose str() is their canonical, lossless text form.
_STR_TYPES = (
    uuid.UUID,
    Decimal,
    pathlib.PurePath,
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)
_BYTES_TYPES = (bytes, bytearray, memoryview)


class _State:
    """Per-call bookkeeping shared by the recursive walk."""

    __slots__ = ("active", "max_depth", "problems")

    def __init__(self, max_depth: int, problems: list[str] | None) -> None:
        self.max_depth = max_depth
        self.problems = problems
        # ids of the containers on the current path only: a shared (non-cyclic) reference
        # seen twice is copied twice, only a true back-reference is a cycle.
        self.active: set[int] = set()

    def tag(self, problem: str) -> None:
        if self.problems is not None:
            self.problems.append(problem)


def to_jsonable(obj: object, *, max_depth: int = 20, problems: list[str] | None = None) -> JSON:
    """Return an independent snapshot of ``obj`` made only of JSON types; never raises.

    Containers are always copied, so mutating ``obj`` afterwards does not change the
    result. Values that JSON cannot carry are coerced (datetimes to ISO text, NaN to
    ``"NaN"``, unknown objects to their ``repr``...), and each lossy coercion appends a
    short tag to ``problems`` so the caller can count them. Only ``Exception`` is
    contained: a ``KeyboardInterrupt`` raised by a user ``__repr__`` still propagates.

    Args:
        obj: Any Python object. Generators, iterators and files are never consumed.
        max_depth: Containers nested deeper than this become ``"<max depth>"``.
        problems: If given, receives one tag per coercion (for example ``"nan"``,
            ``"cycle"``, ``"max_depth"``, ``"object_repr"``, ``"repr_failed"``).

    Returns:
        A value built only of dict (str keys), list, str, int, finite float, bool, None.
    """
    # The hot path: most inputs and outputs are plain strings, which need no state.
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj  # type: ignore[return-value]
    if t is int and _INT_MIN <= obj <= _INT_MAX:  # type: ignore[operator]
        return obj  # type: ignore[return-value]
    state = _State(max_depth, problems)
    try:
        if t is dict:  # the next most common shape; skips one call
            return _walk_dict(obj.items(), obj, 0, state)  # type: ignore[attr-defined]
        return _walk(obj, 0, state)
    except RecursionError:  # the caller's own stack was already nearly exhausted
        state.tag("max_depth")
        return MAX_DEPTH
    except Exception:  # noqa: BLE001 - the last guard of a never-raising function
        state.tag("repr_failed")
        return _unrepresentable(obj)


def _walk(obj: Any, depth: int, st: _State) -> JSON:
    # Exact-type checks first: they are a pointer comparison each, where isinstance on
    # an ABC such as Mapping costs far more; subclasses fall through to _walk_other.
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj  # type: ignore[no-any-return]
    if t is dict:
        return _walk_dict(obj.items(), obj, depth, st)
    if t is list or t is tuple:
        return _walk_list(obj, depth, st)
    if t is int:
        return _int(obj, st)
    if t is float:
        return _float(obj, st)
    try:
        return _walk_other(obj, depth, st)
    except RecursionError:  # the stack ran out here, or inside a user hook
        st.tag("max_depth")
        return MAX_DEPTH
    except Exception:  # noqa: BLE001 - model_dump, items(), isoformat... are user code
        st.tag("convert_failed")
        return _safe_repr(obj, st)


def _int(obj: int, st: _State) -> JSON:
    if _INT_MIN <= obj <= _INT_MAX:
        return obj
    st.tag("big_int")
    try:
        return str(obj)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        return f"<int of {obj.bit_length()} bits>"


def _float(obj: float, st: _State) -> JSON:
    if math.isfinite(obj):
        return obj
    st.tag("nan")
    if math.isnan(obj):
        return "NaN"
    return "Infinity" if obj > 0 else "-Infinity"


def _enter(owner: object, depth: int, st: _State) -> str | None:
    """Register a container on the current path, or return the placeholder it becomes."""
    if depth >= st.max_depth:
        st.tag("max_depth")
        return MAX_DEPTH
    oid = id(owner)
    if oid in st.active:
        st.tag("cycle")
        return CYCLE
    st.active.add(oid)
    return None


def _walk_dict(items: Iterable[tuple[Any, Any]], owner: object, depth: int, st: _State) -> JSON:
    # _enter() inlined: this is the hot path of every dict-shaped log call.
    if depth >= st.max_depth:
        st.tag("max_depth")
        return MAX_DEPTH
    oid = id(owner)
    active = st.active
    if oid in active:
        st.tag("cycle")
        return CYCLE
    active.add(oid)
    out: dict[str, JSON] = {}
    try:
        # list() snapshots the items in one C call, so another thread resizing a plain
        # dict cannot raise "changed size during iteration" halfway through our loop.
        for k, v in list(items):
            key = k if type(k) is str else _key(k, st)
            if key in out:
                key = _free_key(key, out, st)
            tv = type(v)
            if tv is str or tv is bool or v is None:
                out[key] = v
            else:
                out[key] = _walk(v, depth + 1, st)
    except RecursionError:
        # Caught per container, where some stack has been unwound: only this level is
        # lost, the levels above keep their other members.
        st.tag("max_depth")
        return MAX_DEPTH
    finally:
        active.discard(oid)
    return out


def _walk_list(seq: Iterable[Any], depth: int, st: _State, owner: object = None) -> JSON:
    if owner is None:
        owner = seq
    if depth >= st.max_depth:
        st.tag("max_depth")
        return MAX_DEPTH
    oid = id(owner)
    active = st.active
    if oid in active:
        st.tag("cycle")
        return CYCLE
    active.add(oid)
    out: list[JSON] = []
    append = out.append
    try:
        for v in seq:
            tv = type(v)
            if tv is str or tv is bool or v is None:
                append(v)
            else:
                append(_walk(v, depth + 1, st))
    except RecursionError:
        st.tag("max_depth")
        return MAX_DEPTH
    finally:
        active.discard(oid)
    return out


def _walk_set(obj: AbstractSet[Any], depth: int, st: _State) -> JSON:
    # Snapshot first: iterating a set that another thread resizes raises.
    items = _walk_list(list(obj), depth, st, owner=obj)
    if type(items) is list:
        try:
            # Sorting the converted values keeps user __lt__ out of it and makes the
            # output deterministic across runs (set order depends on hash seeds).
            items.sort()
        except TypeError:
            pass  # mixed or unorderable members: keep iteration order
    return items


def _walk_other(obj: Any, depth: int, st: _State) -> JSON:
    """Convert everything that is not an exact dict/list/tuple/str/int/float/bool/None."""
    if isinstance(obj, enum.Enum):
        # Before the int/str checks: IntEnum and StrEnum members are ints and strs too.
        return _walk(obj.value, depth + 1, st)
    if isinstance(obj, int):  # bool is caught earlier by exact type
        return _int(int.__int__(obj), st)
    if isinstance(obj, float):  # includes numpy.float64
        return _float(float.__float__(obj), st)
    if isinstance(obj, str):
        # str.__str__ copies the character data; str() would call an overridden __str__.
        return str.__str__(obj)
    if isinstance(obj, _BYTES_TYPES):
        st.tag("bytes")
        data = obj.tobytes() if isinstance(obj, memoryview) else bytes(obj)
        return data.decode("utf-8", errors="replace")
    if isinstance(obj, _ISO_TYPES):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, _STR_TYPES):
        return str(obj)
    if isinstance(obj, type):
        # Classes carry model_dump, __dataclass_fields__... as unbound attributes; a class
        # is shown by name, never "dumped".
        st.tag("object_repr")
        return _safe_repr(obj, st)
    if isinstance(obj, Mapping):
        return _walk_dict(obj.items(), obj, depth, st)
    # The C-level tuple/list iterators below ignore an overridden __iter__, which could
    # be a generator or never end.
    if isinstance(obj, tuple):
        items = list(tuple.__iter__(obj))
        fields = getattr(type(obj), "_fields", None)
        if type(fields) is tuple and callable(getattr(obj, "_asdict", None)):
            # A namedtuple: zip directly instead of _asdict(), which a subclass may break.
            return _walk_dict(zip(fields, items), obj, depth, st)
        return _walk_list(items, depth, st, owner=obj)
    if isinstance(obj, list):
        return _walk_list(list.copy(obj), depth, st, owner=obj)
    if isinstance(obj, deque):
        return _walk_list(list(obj), depth, st, owner=obj)
    if isinstance(obj, AbstractSet):
        return _walk_set(obj, depth, st)
    return _walk_duck(obj, depth, st)


def _walk_duck(obj: Any, depth: int, st: _State) -> JSON:
    """Convert models, dataclasses and arrays recognised by the attributes of their type.

    Attributes are looked up on the type, not the instance: objects such as ``Mock`` or
    proxies answer every instance attribute, and would otherwise be "dumped" forever.
    """
    cls = type(obj)
    if callable(getattr(cls, "model_dump", None)):  # pydantic v2
        return _replace(obj, obj.model_dump(), depth, st)
    if hasattr(cls, "__fields__") and callable(getattr(cls, "dict", None)):  # pydantic v1
        return _replace(obj, obj.dict(), depth, st)
    if hasattr(cls, "__dataclass_fields__"):
        # Not dataclasses.asdict(): it deep-copies every field value (slow, and may raise
        # for uncopyable members) before we would walk them anyway.
        pairs = [(f.name, _getattr(obj, f.name, st)) for f in dataclasses.fields(obj)]
        return _walk_dict(pairs, obj, depth, st)
    if hasattr(cls, "tolist") and hasattr(cls, "dtype"):  # numpy arrays and scalars
        return _replace(obj, obj.tolist(), depth, st)
    # Everything else, notably generators, iterators, coroutines and files: iterating them
    # would consume the caller's data, so they are only described.
    st.tag("object_repr")
    return _safe_repr(obj, st)


def _replace(obj: object, replacement: object, depth: int, st: _State) -> JSON:
    # The replacement counts as one level deeper, and the object stays on the path while
    # it is walked, so a model_dump() returning self (a cycle) or a fresh model each time
    # (ended by max_depth) cannot loop forever.
    placeholder = _enter(obj, depth, st)
    if placeholder is not None:
        return placeholder
    try:
        return _walk(replacement, depth + 1, st)
    finally:
        st.active.discard(id(obj))


def _getattr(obj: object, name: str, st: _State) -> object:
    try:
        return getattr(obj, name)
    except Exception:  # noqa: BLE001 - e.g. a field(init=False) never set, a raising property
        st.tag("field_failed")
        return "<unreadable field>"


def _key(k: object, st: _State) -> str:
    if isinstance(k, str):  # str subclasses (StrEnum) keep their text, no coercion
        return str.__str__(k)
    st.tag("key_coerced")
    try:
        s = str(k)
    except Exception:  # noqa: BLE001 - a user __str__
        st.tag("repr_failed")
        return _unrepresentable(k)
    # str() may return a str subclass when __str__ does.
    return s if type(s) is str else str.__str__(s)


def _free_key(key: str, out: dict[str, JSON], st: _State) -> str:
    # Two source keys mapped to the same text (1 and "1"): the first keeps it, later ones
    # get "#2", "#3"... so no value is silently overwritten.
    st.tag("key_collision")
    n = 2
    while f"{key}#{n}" in out:
        n += 1
    return f"{key}#{n}"


def _safe_repr(obj: object, st: _State) -> str:
    try:
        s = repr(obj)
    except Exception:  # noqa: BLE001 - a user __repr__
        st.tag("repr_failed")
        return _unrepresentable(obj)
    return s if type(s) is str else str.__str__(s)


def _unrepresentable(obj: object) -> str:
    try:
        name = type(obj).__name__
    except Exception:  # noqa: BLE001 - a metaclass can make even __name__ raise
        name = "object"
    return f"<unrepresentable {name}>"


def dumps(obj: JSON) -> bytes:
    """Encode a `to_jsonable` result as compact UTF-8 JSON bytes; never raises for one.

    Uses orjson when it is installed, else the standard library; both produce the same
    content. Strings holding lone surrogates (which UTF-8 cannot encode) are repaired
    with U+FFFD on a slow path taken only when the fast encode fails.

    Args:
        obj: A value returned by `to_jsonable`.

    Returns:
        The JSON document as bytes.
    """
    try:
        return _encode(obj)
    except Exception:  # noqa: BLE001 - lone surrogates, mostly; repaired below
        return _dumps_repaired(obj)


def _dumps_repaired(obj: object) -> bytes:
    try:
        # The stdlib encoder here, not orjson: it also takes what orjson refuses (more
        # than 255 levels, from a large max_depth), and this path is rare anyway.
        return _stdlib_encode(_scrub(obj))
    except Exception:  # noqa: BLE001 - not a to_jsonable result, or nested too deep
        try:
            return _stdlib_encode(_scrub(to_jsonable(obj, max_depth=_FALLBACK_DEPTH)))
        except Exception:  # noqa: BLE001 - the caller's own stack is exhausted
            # A valid document beats an exception on the worker thread.
            return b'"<unserializable>"'


def _encode(obj: object) -> bytes:
    if _USE_ORJSON and _orjson_dumps is not None:
        return _orjson_dumps(obj)
    return _stdlib_encode(obj)


#: One encoder for every call: ``json.dumps`` with options builds a new one each time.
_STDLIB_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_encode_basestring = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _c_iterencoder() -> Callable[[Any, int], Any] | None:
    """The C encoder ``JSONEncoder.encode`` builds anew for every call, built once (no
    circular check: ``to_jsonable`` results are trees), or None where it is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encoder = make(None, _STDLIB_ENCODER.default, _encode_basestring, None, ":", ",", False, False, False)
        sample = {"a": [1, 2.5, None, True, "é\n"]}
        if "".join(encoder(sample, 0)) != _STDLIB_ENCODER.encode(sample):
            return None
        return encoder  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - another Python's signature: the public encoder then
        return None


_C_ITERENCODE = _c_iterencoder()


def _stdlib_encode(obj: object) -> bytes:
    if _C_ITERENCODE is not None:
        return "".join(_C_ITERENCODE(obj, 0)).encode("utf-8")
    return _STDLIB_ENCODER.encode(obj).encode("utf-8")


def _fix_str(s: str) -> str:
    # Round-tripping through UTF-16 with surrogatepass joins valid surrogate pairs back
    # into their character and turns each lone surrogate into exactly one U+FFFD.
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return s


def _scrub(obj: Any) -> JSON:
    """Copy a JSON value with every string made UTF-8 safe (the slow repair path)."""
    t = type(obj)
    if t is str:
        return _fix_str(obj)
    if t is dict:
        out: dict[str, JSON] = {}
        for k, v in obj.items():
            key = _fix_str(k if type(k) is str else str(to_jsonable(k)))
            if key in out:  # two keys that differed only in their bad surrogates
                key = _free_key(key, out, _State(0, None))
            out[key] = _scrub(v)
        return out
    if t is list:
        return [_scrub(v) for v in obj]
    if t is bool or obj is None or (t is float and math.isfinite(obj)):
        return obj  # type: ignore[no-any-return]
    if t is int and _INT_MIN <= obj <= _INT_MAX:
        return obj  # type: ignore[no-any-return]
    return _scrub(to_jsonable(obj))


def orjson_dumps() -> Callable[[Any], bytes] | None:
    """orjson's ``dumps`` when it is installed and in use (``dumps`` then encodes with it),
    else None."""
    return _orjson_dumps if _USE_ORJSON else None


def dumps_text(obj: JSON) -> str:
    """``dumps`` as text, for a value that is only JSON types (no repair: may raise)."""
    if _USE_ORJSON and _orjson_dumps is not None:
        return _orjson_dumps(obj).decode("utf-8")
    if _C_ITERENCODE is not None:
        return "".join(_C_ITERENCODE(obj, 0))
    return _STDLIB_ENCODER.encode(obj)  # type: ignore[no-any-return]


def json_str(text: str) -> str:
    """A string as JSON text (quoted and escaped), as ``dumps`` writes it with either
    encoder; encoding the result to UTF-8 fails for lone surrogates, which ``dumps``
    repairs."""
    return _encode_basestring(text)  # type: ignore[no-any-return]
