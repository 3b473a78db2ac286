"""Tests of the path engine: syntax, resolution and properties over JSON documents."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest_worker.mapping import CompiledPath, PathSyntaxError, compile_path

DOCUMENT: dict[str, Any] = {
    "dedupeKey": "K-1",
    "sn": "SN-1",
    "payload": {
        "board": {"barcode": "SN-1", "judgement": "GOOD"},
        "stats": [
            {"name": "volume_pct", "value": 99.5},
            {"name": "height_um", "value": 125.6},
            {"name": "offset_x_um", "value": -2.0},
        ],
        "grid": [[1, 2], [3], []],
        "odd.key": {"a[0]": "dotted"},
        'quote"key': 7,
        "back\\slash": 8,
        "phases": [
            {"measurements": {}},
            {"measurements": {"vcc": {"v": 3.3}, "idle": {"v": 0.1}}},
            {"measurements": {"fw": {"v": "1.4.2"}}},
        ],
        "empty": [],
        "nothing": None,
    },
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("dedupeKey", ["K-1"]),
        ("sn", ["SN-1"]),
        ("payload.board.barcode", ["SN-1"]),
        ("payload.stats[*].name", ["volume_pct", "height_um", "offset_x_um"]),
        ("payload.stats[0].value", [99.5]),
        ("payload.stats[-1].name", ["offset_x_um"]),
        ("payload.stats[-3].name", ["volume_pct"]),
        ("payload.grid[*][*]", [1, 2, 3]),
        ("payload.grid[*][0]", [1, 3]),
        ("payload.grid[0][-1]", [2]),
        ('payload["odd.key"]["a[0]"]', ["dotted"]),
        ("payload['odd.key']['a[0]']", ["dotted"]),
        ('payload.["odd.key"]', [{"a[0]": "dotted"}]),
        ('payload["quote\\"key"]', [7]),
        ("payload['back\\\\slash']", [8]),
        ("payload.phases[*].measurements.*.v", [3.3, 0.1, "1.4.2"]),
        ("payload.board.*", ["SN-1", "GOOD"]),
        ("payload.stats.*.name", ["volume_pct", "height_um", "offset_x_um"]),
        ("payload.grid.*[0]", [1, 3]),
        ("payload.nothing", [None]),
    ],
)
def test_resolve_selects_values(path: str, expected: list[Any]) -> None:
    assert compile_path(path).resolve(DOCUMENT) == expected


@pytest.mark.parametrize(
    "path",
    [
        "payload.missing",
        "payload.board.barcode.more",
        "payload.stats[3]",
        "payload.stats[-4]",
        "payload.board[0]",
        "payload.board[*]",
        "payload.empty[*]",
        "payload.empty[0]",
        "payload.stats.name",
        "payload.nothing.x",
        "sn.*",
        "sn[0]",
        "payload.phases[0].measurements.*",
    ],
)
def test_resolve_selects_nothing(path: str) -> None:
    assert compile_path(path).resolve(DOCUMENT) == []


@pytest.mark.parametrize(
    ("path", "position", "fragment"),
    [
        ("", 0, "empty"),
        (".a", 0, "empty segment"),
        ("a..b", 2, "empty segment"),
        ("a.", 2, "empty segment"),
        ("a[", 1, "unterminated '['"),
        ("a[0", 1, "unterminated '['"),
        ("a[*", 1, "unterminated '['"),
        ('a["b"', 1, "unterminated '['"),
        ('a["b', 1, "unterminated quoted key"),
        ("a[x]", 2, "expected '*', an integer index or a quoted key"),
        ("a[]", 2, "expected '*', an integer index or a quoted key"),
        ("a[1.5]", 2, "integer"),
        ("a[-]", 2, "integer"),
        ("a[ 1]", 2, "unexpected ' '"),
        ("a*", 1, "'*'"),
        ("*a", 1, "'*' must be a whole segment"),
        ("a[0]b", 4, "after ']'"),
        ('a["b"]c', 6, "after ']'"),
        ("a b", 1, "unexpected ' '"),
        ("a]", 1, "unexpected ']'"),
        ('a"b', 1, "unexpected '\"'"),
        ('a["\\n"]', 3, "invalid escape"),
        ("a[**]", 3, "expected ']'"),
    ],
)
def test_compile_rejects_invalid_syntax(
    path: str, position: int, fragment: str
) -> None:
    with pytest.raises(PathSyntaxError) as raised:
        compile_path(path)
    assert raised.value.position == position
    assert raised.value.path == path
    assert fragment in str(raised.value)
    assert repr(path) in str(raised.value)
    assert f"position {position}" in str(raised.value)


def test_path_syntax_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="invalid path"):
        compile_path("a..b")


def test_compiled_path_is_immutable_and_hashable() -> None:
    path = compile_path("payload.stats[*].name")
    assert path == compile_path("payload.stats[*].name")
    assert hash(path) == hash(compile_path("payload.stats[*].name"))
    assert path != compile_path("payload.stats[0].name")
    assert {path: 1}[compile_path("payload.stats[*].name")] == 1
    with pytest.raises(AttributeError):
        path.text = "other"  # type: ignore[misc]
    assert str(path) == "payload.stats[*].name"


def test_resolve_returns_document_objects() -> None:
    stats = compile_path("payload.stats").resolve(DOCUMENT)
    assert stats[0] is DOCUMENT["payload"]["stats"]


def test_resolve_on_scalar_document() -> None:
    assert compile_path("a").resolve("text") == []
    assert compile_path("[0]").resolve([5, 6]) == [5]
    assert compile_path("[*]").resolve([5, 6]) == [5, 6]
    assert compile_path("*").resolve([5, 6]) == [5, 6]
    assert compile_path("[0]").resolve({"0": 1}) == []


def test_bool_and_int_keys_do_not_match() -> None:
    assert compile_path("a[1]").resolve({"a": {"1": "x"}}) == []
    assert compile_path("a[0]").resolve({"a": True}) == []


def test_compile_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        compile_path(5)  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
BARE_NAMES = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-$",
    min_size=1,
    max_size=6,
)


def quote_key(key: str, quote: str = '"') -> str:
    escaped = key.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return f"[{quote}{escaped}{quote}]"


BRACKETS = st.one_of(
    st.just("[*]"),
    st.integers(min_value=-5, max_value=5).map(lambda index: f"[{index}]"),
    st.text(max_size=6).map(quote_key),
    st.text(max_size=6).map(lambda key: quote_key(key, "'")),
)
SEGMENTS = st.one_of(
    BARE_NAMES,
    st.just("*"),
    st.tuples(
        st.one_of(BARE_NAMES, st.just("*"), st.just("")),
        st.lists(BRACKETS, min_size=1, max_size=3),
    ).map(lambda parts: parts[0] + "".join(parts[1])),
)
PATH_TEXTS = st.lists(SEGMENTS, min_size=1, max_size=5).map(".".join)


@given(key=st.text(), value=JSON_VALUES, quote=st.sampled_from(['"', "'"]))
def test_property_bracketed_key_selects_exactly_that_value(
    key: str, value: Any, quote: str
) -> None:
    document = {"payload": {key: value, key + "x": "other"}}
    path = compile_path("payload" + quote_key(key, quote))
    assert path.resolve(document) == [value]


@given(keys=st.lists(st.text(max_size=8), min_size=1, max_size=6), value=JSON_VALUES)
def test_property_chained_bracketed_keys_walk_nested_objects(
    keys: list[str], value: Any
) -> None:
    document: Any = value
    for key in reversed(keys):
        document = {key: document}
    path = compile_path("".join(quote_key(key) for key in keys))
    assert path.resolve(document) == [value]


@given(items=st.lists(JSON_VALUES, max_size=8))
def test_property_each_element_returns_elements_in_order(items: list[Any]) -> None:
    assert compile_path("a[*]").resolve({"a": items}) == items


@given(items=st.lists(JSON_VALUES, min_size=1, max_size=8))
def test_property_last_index_returns_last_element(items: list[Any]) -> None:
    assert compile_path("a[-1]").resolve({"a": items}) == [items[-1]]
    assert compile_path("a[0]").resolve({"a": items}) == [items[0]]


@given(items=st.lists(JSON_VALUES, max_size=6), index=st.integers(-10, 10))
def test_property_index_matches_python_indexing(items: list[Any], index: int) -> None:
    expected = [items[index]] if -len(items) <= index < len(items) else []
    assert compile_path(f"a[{index}]").resolve({"a": items}) == expected


@given(obj=st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=6))
def test_property_star_returns_object_values_in_order(obj: dict[str, Any]) -> None:
    assert compile_path("a.*").resolve({"a": obj}) == list(obj.values())


@given(rows=st.lists(st.lists(JSON_VALUES, max_size=4), max_size=4))
def test_property_nested_each_element_flattens(rows: list[list[Any]]) -> None:
    flat = [item for row in rows for item in row]
    assert compile_path("a[*][*]").resolve({"a": rows}) == flat


@given(text=PATH_TEXTS)
def test_property_generated_paths_compile_and_keep_text(text: str) -> None:
    path = compile_path(text)
    assert isinstance(path, CompiledPath)
    assert path.text == text
    assert compile_path(path.text) == path


@given(text=PATH_TEXTS, document=JSON_VALUES)
def test_property_resolve_never_raises(text: str, document: Any) -> None:
    result = compile_path(text).resolve(document)
    assert isinstance(result, list)
    assert isinstance(compile_path(text).resolve({"payload": document}), list)


@given(text=st.text(max_size=20))
def test_property_compile_raises_only_path_syntax_error(text: str) -> None:
    try:
        path = compile_path(text)
    except PathSyntaxError as error:
        assert 0 <= error.position <= len(text)
    else:
        assert path.text == text
