"""Tests for phospho_logging._serialize: the never-raising snapshot and the JSON encoder."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import io
import ipaddress
import json
import math
import pathlib
import sys
import types
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, NamedTuple
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phospho_logging import _serialize
from phospho_logging._serialize import JSON, dumps, to_jsonable

_orjson_installed = _serialize._orjson_dumps is not None


def assert_jsonable(value: object) -> None:
    """Fail unless ``value`` is built only of the exact JSON types (finite floats)."""
    stack = [value]
    while stack:
        item = stack.pop()
        t = type(item)
        if t is dict:
            for k, v in item.items():  # type: ignore[attr-defined]
                assert type(k) is str, f"non-str key {k!r}"
                stack.append(v)
        elif t is list:
            stack.extend(item)  # type: ignore[arg-type]
        elif t is float:
            assert math.isfinite(item), item  # type: ignore[arg-type]
        else:
            assert item is None or t in (str, int, bool), f"bad type {t!r}"


def nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def depth_of(value: object) -> int:
    depth = 0
    while type(value) is list and value:
        depth += 1
        value = value[0]
    return depth + (1 if value == [] else 0)


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    def __str__(self) -> str:
        return "overridden"


class Ratio(float):
    pass


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Inner:
    when: datetime.date
    tags: set[str]


@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner
    score: float = float("nan")
    later: int = dataclasses.field(init=False)


class BadRepr:
    def __repr__(self) -> str:
        raise ValueError("no repr")


class BadStr:
    def __hash__(self) -> int:
        return 1

    def __str__(self) -> str:
        raise ValueError("no str")

    def __repr__(self) -> str:
        raise ValueError("no repr")


class FakeModel:
    """Looks like a pydantic v2 model."""

    def __init__(self, **fields: object) -> None:
        self.fields = fields

    def model_dump(self) -> dict[str, object]:
        return dict(self.fields)


class BrokenModel:
    def model_dump(self) -> dict[str, object]:
        raise RuntimeError("validation failed")

    def __repr__(self) -> str:
        return "BrokenModel()"


class SelfDumpingModel:
    def model_dump(self) -> object:
        return self

    def __repr__(self) -> str:
        return "SelfDumpingModel()"


class FakeV1Model:
    """Looks like a pydantic v1 model."""

    __fields__: ClassVar[dict[str, None]] = {"a": None}

    def dict(self) -> dict[str, object]:
        return {"a": datetime.time(12, 30)}


class FakeArray:
    """Looks like a numpy array: tolist() and dtype."""

    dtype = "float64"

    def tolist(self) -> list[object]:
        return [1.0, float("inf"), [2, 3]]


class ReadOnlyMapping(Mapping[Any, Any]):
    def __init__(self, data: dict[Any, Any]) -> None:
        self._data = data

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class TestScalars:
    def test_plain_scalars_are_returned_as_is(self) -> None:
        """str, int, bool, None and finite floats come back unchanged (the same object)."""
        text = "hello" * 20
        assert to_jsonable(text) is text
        assert to_jsonable(7) == 7
        assert to_jsonable(True) is True
        assert to_jsonable(None) is None
        assert to_jsonable(1.5) == 1.5

    def test_bool_stays_bool(self) -> None:
        """A bool is not turned into an int, even inside containers."""
        result = to_jsonable([True, False])
        assert result == [True, False]
        assert all(type(v) is bool for v in result)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (float("nan"), "NaN"),
            (float("inf"), "Infinity"),
            (float("-inf"), "-Infinity"),
        ],
    )
    def test_non_finite_floats_become_strings(self, value: float, expected: str) -> None:
        """NaN, inf and -inf become "NaN", "Infinity", "-Infinity" and are tagged "nan"."""
        problems: list[str] = []
        assert to_jsonable({"x": value}, problems=problems) == {"x": expected}
        assert problems == ["nan"]

    def test_int_subclass_becomes_plain_int(self) -> None:
        """An IntEnum member becomes its plain int value."""
        result = to_jsonable([Level.HIGH])
        assert result == [3]
        assert type(result[0]) is int

    def test_enum_becomes_its_converted_value(self) -> None:
        """An Enum member is replaced by its value, itself converted (a tuple -> a list)."""
        assert to_jsonable(Color.RED) == "red"
        assert to_jsonable(Color.PAIR) == [1, 2]

    def test_str_subclass_becomes_plain_str_without_calling_str(self) -> None:
        """A str subclass becomes a plain str of its characters; its __str__ is not used."""
        result = to_jsonable(Name("alice"))
        assert result == "alice"
        assert type(result) is str

    def test_float_subclass_becomes_plain_float(self) -> None:
        """A float subclass becomes a plain float."""
        result = to_jsonable(Ratio(0.25))
        assert result == 0.25
        assert type(result) is float

    def test_int_beyond_64_bits_becomes_a_string(self) -> None:
        """An int outside signed 64 bits becomes its decimal text, tagged "big_int"."""
        problems: list[str] = []
        assert to_jsonable(2**63, problems=problems) == str(2**63)
        assert to_jsonable(-(2**63)) == -(2**63)
        assert problems == ["big_int"]

    def test_int_too_long_for_str_does_not_raise(self) -> None:
        """An int with more digits than int_max_str_digits allows becomes a placeholder."""
        result = to_jsonable(10**5000)
        assert isinstance(result, str)

    def test_complex_is_described_by_repr(self) -> None:
        """A type JSON cannot carry (complex) becomes its repr, tagged "object_repr"."""
        problems: list[str] = []
        assert to_jsonable(1 + 2j, problems=problems) == "(1+2j)"
        assert problems == ["object_repr"]


class TestBytes:
    @pytest.mark.parametrize("kind", [bytes, bytearray, lambda b: memoryview(bytes(b))])
    def test_bytes_like_are_decoded_with_replacement(self, kind: Any) -> None:
        """bytes, bytearray and memoryview are decoded as UTF-8, bad bytes -> U+FFFD."""
        problems: list[str] = []
        assert to_jsonable(kind(b"caf\xc3\xa9 \xff"), problems=problems) == "café \ufffd"
        assert problems == ["bytes"]


class TestStdlibTypes:
    def test_dates_and_times_become_isoformat(self) -> None:
        """datetime, date and time become their isoformat() text, with any timezone."""
        tz = datetime.timezone(datetime.timedelta(hours=2))
        value = {
            "dt": datetime.datetime(2024, 5, 17, 8, 30, 1, 250, tzinfo=tz),
            "d": datetime.date(2024, 5, 17),
            "t": datetime.time(8, 30),
        }
        assert to_jsonable(value) == {
            "dt": "2024-05-17T08:30:01.000250+02:00",
            "d": "2024-05-17",
            "t": "08:30:00",
        }

    def test_timedelta_becomes_seconds(self) -> None:
        """A timedelta becomes its total seconds as a float."""
        assert to_jsonable(datetime.timedelta(minutes=1, milliseconds=500)) == 60.5

    def test_value_types_become_their_text(self) -> None:
        """UUID, Decimal, paths and ipaddress objects become str()."""
        value = [
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            decimal.Decimal("1.10"),
            decimal.Decimal("NaN"),
            pathlib.PurePosixPath("/tmp/x.txt"),
            ipaddress.ip_address("10.0.0.1"),
            ipaddress.ip_address("::1"),
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_interface("10.0.0.1/24"),
        ]
        assert to_jsonable(value) == [
            "12345678-1234-5678-1234-567812345678",
            "1.10",
            "NaN",
            "/tmp/x.txt",
            "10.0.0.1",
            "::1",
            "10.0.0.0/8",
            "10.0.0.1/24",
        ]


class TestContainers:
    def test_dict_is_copied(self) -> None:
        """A dict of str keys comes back equal but as a new object."""
        original = {"a": "x", "b": 2, "c": None}
        result = to_jsonable(original)
        assert result == original
        assert result is not original

    def test_snapshot_is_independent_of_later_mutation(self) -> None:
        """Mutating the original, at any depth, after the call does not change the snapshot."""
        original: dict[str, Any] = {
            "messages": [{"role": "user", "content": "hi"}],
            "n": [1],
        }
        result = to_jsonable(original)
        original["messages"][0]["content"] = "changed"
        original["messages"].append({"role": "user", "content": "more"})
        original["n"].append(2)
        original["new"] = 1
        assert result == {"messages": [{"role": "user", "content": "hi"}], "n": [1]}

    def test_any_mapping_becomes_a_dict(self) -> None:
        """Mappings that are not dicts (MappingProxyType, a custom Mapping) become dicts."""
        assert to_jsonable(types.MappingProxyType({"a": 1})) == {"a": 1}
        assert to_jsonable(ReadOnlyMapping({"b": [1]})) == {"b": [1]}
        assert to_jsonable(collections.OrderedDict(c=2)) == {"c": 2}

    def test_non_str_keys_are_coerced(self) -> None:
        """Non-str keys become str(key), tagged "key_coerced"."""
        problems: list[str] = []
        result = to_jsonable({1: "a", None: "b", (1, 2): "c", 2.5: "d"}, problems=problems)
        assert result == {"1": "a", "None": "b", "(1, 2)": "c", "2.5": "d"}
        assert problems == ["key_coerced"] * 4

    def test_colliding_keys_keep_the_first_and_suffix_later_ones(self) -> None:
        """Keys whose text collides keep every value: later ones get "#2", "#3"..."""
        problems: list[str] = []
        value = {
            1: "int",
            "1": "str",
            (1, 2): "tuple",
            "(1, 2)": "str2",
            "1#2": "literal",
        }
        result = to_jsonable(value, problems=problems)
        assert result == {
            "1": "int",
            "1#2": "str",
            "(1, 2)": "tuple",
            "(1, 2)#2": "str2",
            "1#2#2": "literal",
        }
        assert problems.count("key_collision") == 3

    def test_key_whose_str_raises_gets_a_placeholder(self) -> None:
        """A key whose __str__ raises becomes "<unrepresentable Type>", tagged "repr_failed"."""
        problems: list[str] = []
        assert to_jsonable({BadStr(): 1}, problems=problems) == {"<unrepresentable BadStr>": 1}
        assert "repr_failed" in problems

    def test_str_subclass_key_keeps_its_text(self) -> None:
        """A str-subclass key becomes a plain str of its characters, not coerced."""
        problems: list[str] = []
        result = to_jsonable({Name("k"): 1}, problems=problems)
        assert result == {"k": 1}
        assert type(next(iter(result))) is str
        assert problems == []

    def test_sequences_become_lists(self) -> None:
        """Tuples, list subclasses and deques become lists."""

        class MyList(list):  # type: ignore[type-arg]
            pass

        assert to_jsonable((1, (2, 3))) == [1, [2, 3]]
        assert to_jsonable(MyList([1, 2])) == [1, 2]
        assert to_jsonable(collections.deque(["a", "b"])) == ["a", "b"]

    def test_sets_become_sorted_lists(self) -> None:
        """set and frozenset become lists, sorted when their converted members are orderable."""
        assert to_jsonable({3, 1, 2}) == [1, 2, 3]
        assert to_jsonable(frozenset({"b", "a"})) == ["a", "b"]

    def test_unorderable_set_keeps_every_member(self) -> None:
        """A set of mixed types cannot be sorted and keeps its iteration order."""
        value = {1, "a", None}
        result = to_jsonable(value)
        assert isinstance(result, list)
        assert result == [to_jsonable(v) for v in value]

    def test_namedtuple_becomes_a_dict(self) -> None:
        """A namedtuple becomes a dict of its fields."""
        assert to_jsonable([Point(1, 2)]) == [{"x": 1, "y": 2}]


class TestObjects:
    def test_dataclass_becomes_a_dict_of_fields(self) -> None:
        """A dataclass becomes a dict of its fields, converted recursively."""
        problems: list[str] = []
        value = Outer("n", Inner(datetime.date(2024, 1, 2), {"b", "a"}))
        assert to_jsonable(value, problems=problems) == {
            "name": "n",
            "inner": {"when": "2024-01-02", "tags": ["a", "b"]},
            "score": "NaN",
            "later": "<unreadable field>",
        }
        assert sorted(problems) == ["field_failed", "nan"]

    def test_pydantic_like_object_is_model_dumped(self) -> None:
        """An object with a model_dump method is replaced by its converted model_dump()."""
        value = FakeModel(id=uuid.UUID(int=1), nested=FakeModel(x=b"hi"))
        assert to_jsonable(value) == {
            "id": "00000000-0000-0000-0000-000000000001",
            "nested": {"x": "hi"},
        }

    def test_failing_model_dump_falls_back_to_repr(self) -> None:
        """A model_dump that raises gives the object's repr, tagged "convert_failed"."""
        problems: list[str] = []
        assert to_jsonable({"m": BrokenModel()}, problems=problems) == {"m": "BrokenModel()"}
        assert problems == ["convert_failed"]

    def test_model_dump_returning_self_is_a_cycle(self) -> None:
        """A model_dump that returns the object itself ends as "<cycle>"."""
        assert to_jsonable(SelfDumpingModel()) == "<cycle>"

    def test_pydantic_v1_like_object_uses_dict(self) -> None:
        """An object with __fields__ and dict() is replaced by its converted dict()."""
        assert to_jsonable(FakeV1Model()) == {"a": "12:30:00"}

    def test_array_like_uses_tolist(self) -> None:
        """An object with tolist() and dtype is replaced by its converted tolist()."""
        assert to_jsonable(FakeArray()) == [1.0, "Infinity", [2, 3]]

    def test_real_numpy_values(self) -> None:
        """numpy arrays and scalars become lists and Python numbers."""
        np = pytest.importorskip("numpy")
        value = {
            "a": np.arange(3).reshape(1, 3),
            "i": np.int64(5),
            "f": np.float32(0.5),
        }
        assert to_jsonable(value) == {"a": [[0, 1, 2]], "i": 5, "f": 0.5}

    def test_real_pydantic_model(self) -> None:
        """A real pydantic model is dumped and its fields converted."""
        pydantic = pytest.importorskip("pydantic")

        class Completion(pydantic.BaseModel):  # type: ignore[misc, name-defined]
            model: str
            created: datetime.datetime

        value = Completion(model="m", created=datetime.datetime(2024, 1, 1))
        assert to_jsonable(value) == {"model": "m", "created": "2024-01-01T00:00:00"}

    def test_classes_are_not_dumped(self) -> None:
        """A class that has model_dump/dataclass fields is shown by repr, not called."""
        problems: list[str] = []
        assert to_jsonable(FakeModel, problems=problems) == repr(FakeModel)
        assert to_jsonable(Outer) == repr(Outer)
        assert problems == ["object_repr"]

    def test_mock_is_not_dumped(self) -> None:
        """A Mock, which answers every attribute, is shown by repr."""
        value = mock.Mock()
        assert to_jsonable(value) == repr(value)
        value.model_dump.assert_not_called()

    def test_generator_is_not_consumed(self) -> None:
        """A generator becomes its repr, and still yields everything afterwards."""
        problems: list[str] = []
        gen = (i for i in range(3))
        result = to_jsonable({"g": gen}, problems=problems)
        assert result == {"g": repr(gen)}
        assert problems == ["object_repr"]
        assert list(gen) == [0, 1, 2]

    def test_iterator_is_not_consumed(self) -> None:
        """An iterator over a list becomes its repr, and still yields afterwards."""
        it = iter([1, 2])
        assert isinstance(to_jsonable(it), str)
        assert list(it) == [1, 2]

    def test_coroutine_is_not_awaited(self) -> None:
        """A coroutine object becomes its repr and is left runnable."""

        async def work() -> int:
            return 1

        coro = work()
        try:
            assert to_jsonable(coro) == repr(coro)
            with pytest.raises(StopIteration):
                coro.send(None)
        finally:
            coro.close()

    def test_file_is_not_read(self) -> None:
        """A file object becomes its repr and its position is unchanged."""
        stream = io.StringIO("line1\nline2\n")
        assert isinstance(to_jsonable([stream]), list)
        assert stream.tell() == 0
        assert stream.read() == "line1\nline2\n"

    def test_repr_that_raises_gives_a_placeholder(self) -> None:
        """An object whose __repr__ raises becomes "<unrepresentable Type>"."""
        problems: list[str] = []
        assert to_jsonable([BadRepr()], problems=problems) == ["<unrepresentable BadRepr>"]
        assert problems == ["object_repr", "repr_failed"]

    def test_keyboard_interrupt_from_user_code_propagates(self) -> None:
        """Only Exception is contained: a KeyboardInterrupt in __repr__ is not swallowed."""

        class Interrupting:
            def __repr__(self) -> str:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            to_jsonable([Interrupting()])

    def test_mapping_whose_items_raise_falls_back_to_repr(self) -> None:
        """A Mapping that fails while being read becomes its repr."""

        class Broken(ReadOnlyMapping):
            def __iter__(self) -> Iterator[Any]:
                raise RuntimeError("closed")

            def __repr__(self) -> str:
                return "Broken()"

        problems: list[str] = []
        assert to_jsonable(Broken({}), problems=problems) == "Broken()"
        assert problems == ["convert_failed"]


class TestLimits:
    def test_self_referencing_list_is_cut(self) -> None:
        """A list that contains itself has the back-reference replaced by "<cycle>"."""
        problems: list[str] = []
        value: list[Any] = [1]
        value.append(value)
        assert to_jsonable(value, problems=problems) == [1, "<cycle>"]
        assert problems == ["cycle"]

    def test_self_referencing_dict_is_cut(self) -> None:
        """A dict that contains itself, through a list, is cut at the back-reference."""
        value: dict[str, Any] = {"a": 1}
        value["children"] = [value]
        assert to_jsonable(value) == {"a": 1, "children": ["<cycle>"]}

    def test_shared_reference_is_not_a_cycle(self) -> None:
        """The same list referenced twice (no cycle) is copied twice."""
        shared = [1, 2]
        assert to_jsonable({"a": shared, "b": shared}) == {"a": [1, 2], "b": [1, 2]}

    def test_deep_nesting_is_cut_at_max_depth(self) -> None:
        """A 1000-level nesting is cut after max_depth levels, tagged "max_depth"."""
        problems: list[str] = []
        result = to_jsonable(nested_list(1000), problems=problems)
        assert problems == ["max_depth"]
        node = result
        for _ in range(20):
            assert type(node) is list
            node = node[0]
        assert node == "<max depth>"

    def test_max_depth_counts_container_levels(self) -> None:
        """max_depth=2 keeps two container levels; scalars are never cut."""
        assert to_jsonable({"a": {"b": {"c": 1}}, "s": "x"}, max_depth=2) == {
            "a": {"b": "<max depth>"},
            "s": "x",
        }
        assert to_jsonable([1], max_depth=0) == "<max depth>"
        assert to_jsonable("x", max_depth=0) == "x"

    def test_nesting_beyond_the_recursion_limit_does_not_raise(self) -> None:
        """With max_depth above the interpreter's recursion limit, the walk stops safely."""
        problems: list[str] = []
        depth = sys.getrecursionlimit() * 3
        result = to_jsonable(nested_list(depth), max_depth=depth + 1, problems=problems)
        assert_jsonable(result)
        assert "max_depth" in problems
        assert json.loads(dumps(result)) == result

    def test_called_near_the_recursion_limit_does_not_raise(self) -> None:
        """Called from a deeply recursing caller, it still returns a JSON value."""

        def recurse(n: int) -> JSON:
            if n == 0:
                return to_jsonable({"a": [[[1]]]})
            return recurse(n - 1)

        for margin in (5, 10, 20, 40):
            try:
                result = recurse(sys.getrecursionlimit() - margin)
            except RecursionError:
                continue  # the test's own recursion did not fit: try a wider margin
            assert_jsonable(result)


class TestDumps:
    @pytest.fixture(params=["orjson", "stdlib"])
    def encoder(self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
        if request.param == "orjson" and not _orjson_installed:
            pytest.skip("orjson is not installed")
        monkeypatch.setattr(_serialize, "_USE_ORJSON", request.param == "orjson")
        return str(request.param)

    def test_output_is_compact_utf8(self, encoder: str) -> None:
        """The document is compact (no spaces) and non-ASCII text is raw UTF-8."""
        assert dumps({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'.encode()

    def test_lone_surrogates_are_replaced(self, encoder: str) -> None:
        """Lone surrogates, in values and keys, become U+FFFD instead of failing."""
        value: JSON = {"k\ud800": ["a\udfffb", "\ud800"], "ok": 1}
        assert json.loads(dumps(value)) == {"k\ufffd": ["a\ufffdb", "\ufffd"], "ok": 1}

    def test_keys_differing_only_in_surrogates_are_kept(self, encoder: str) -> None:
        """Two keys that both repair to the same text are both kept."""
        assert json.loads(dumps({chr(0xD800): 1, chr(0xDFFF): 2})) == {
            "\ufffd": 1,
            "\ufffd#2": 2,
        }

    def test_split_surrogate_pair_is_joined(self, encoder: str) -> None:
        """A surrogate pair held as two code points becomes the character it encodes."""
        assert json.loads(dumps("\ud83d\ude00")) == "\U0001f600"

    def test_deep_document_is_encoded(self, encoder: str) -> None:
        """Nesting deeper than orjson's 255-level limit is still encoded in full."""
        value = to_jsonable(nested_list(400), max_depth=500)
        assert json.loads(dumps(value)) == value

    def test_non_jsonable_input_does_not_raise(self, encoder: str) -> None:
        """Input that did not come from to_jsonable is snapshotted rather than raising."""
        value: Any = {1: float("nan"), "d": datetime.date(2024, 1, 1), "big": 2**70}
        assert json.loads(dumps(value)) == {
            "1": "NaN",
            "d": "2024-01-01",
            "big": str(2**70),
        }

    def test_both_encoders_agree(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """orjson and the stdlib produce documents with equal content."""
        if not _orjson_installed:
            pytest.skip("orjson is not installed")
        value = to_jsonable({"f": [0.1, 1e300, -0.0, 2**62], "s": "\ud800é", "n": None})
        with_orjson = json.loads(dumps(value))
        monkeypatch.setattr(_serialize, "_USE_ORJSON", False)
        assert json.loads(dumps(value)) == with_orjson


# --- property tests -------------------------------------------------------------------

_any_text = st.text(st.characters(exclude_categories=()), max_size=20) | st.sampled_from(
    ["\ud800", "a\udfffb", "\ud83d\ude00", "NaN", "1", "1#2"]
)
_hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    _any_text,
    st.binary(max_size=20),
    st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)),
    st.uuids(),
    st.decimals(allow_nan=False, allow_infinity=True),
    st.sampled_from(list(Color) + list(Level)),
)
# Unhashable leaves: bytearray, and Decimal NaNs (a signaling NaN cannot be hashed).
_leaves = _hashable_leaves | st.builds(bytearray, st.binary(max_size=10)) | st.decimals()
_keys = st.one_of(
    _any_text,
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.tuples(st.integers(), _any_text),
)
_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(_keys, children, max_size=5),
        st.sets(_hashable_leaves, max_size=5),
        st.frozensets(_hashable_leaves, max_size=5),
    ),
    max_leaves=30,
)
_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestProperties:
    @_settings
    @given(_values, st.integers(min_value=0, max_value=25))
    def test_any_value_gives_a_jsonable_snapshot(self, value: object, max_depth: int) -> None:
        """Any nested value converts without raising into JSON types only."""
        problems: list[str] = []
        result = to_jsonable(value, max_depth=max_depth, problems=problems)
        assert_jsonable(result)
        assert all(type(p) is str for p in problems)
        # Nothing here has a hostile hook: a failure tag would mean a bug of our own.
        assert "convert_failed" not in problems
        assert "repr_failed" not in problems

    @_settings
    @given(_values)
    def test_snapshot_is_a_fixed_point(self, value: object) -> None:
        """Converting a snapshot again gives an equal snapshot."""
        result = to_jsonable(value)
        assert to_jsonable(result) == result

    @_settings
    @given(_values)
    def test_dumps_output_parses_and_encoders_agree(self, value: object) -> None:
        """dumps() of any snapshot is valid JSON, with the same content on both encoders."""
        result = to_jsonable(value)
        parsed = json.loads(dumps(result))
        saved = _serialize._USE_ORJSON
        try:
            _serialize._USE_ORJSON = False
            assert json.loads(dumps(result)) == parsed
        finally:
            _serialize._USE_ORJSON = saved
