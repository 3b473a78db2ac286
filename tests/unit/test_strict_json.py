"""Strict JSON decoding: nesting, repeated keys, agreement with the standard parser."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest_worker.errors import ErrorCode, RecordRejected
from ingest_worker.strict_json import load_object

# Text that is hard for a structure scan: quotes, backslashes, brackets.
tricky_text = st.text(alphabet='ab"\\[]{}/\n\t\u00e9', max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | tricky_text,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(tricky_text, children, max_size=3)
    ),
    max_leaves=30,
)


def depth_of(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max((depth_of(child) for child in node.values()), default=0)
    if isinstance(node, list):
        return 1 + max((depth_of(child) for child in node), default=0)
    return 0


@given(json_values)
def test_depth_limit_matches_parsed_depth(value: Any) -> None:
    document = {"v": value}
    raw = orjson.dumps(document)
    depth = depth_of(document)
    assert load_object(raw, max_depth=depth) == document
    if depth > 1:
        with pytest.raises(RecordRejected) as caught:
            load_object(raw, max_depth=depth - 1)
        assert caught.value.code == ErrorCode.ENVELOPE_UNREADABLE


@given(json_values)
def test_round_trip_of_valid_objects(value: Any) -> None:
    document = {"v": value, "n": 1}
    assert (
        load_object(orjson.dumps(document, option=orjson.OPT_INDENT_2), 64) == document
    )


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"a": 1, "a": 2}', ErrorCode.INGEST_PAYLOAD_INVALID),
        (b'{"a": 18446744073709551616}', ErrorCode.INGEST_PAYLOAD_INVALID),
        (b'{"a": -9999999999999999999}', ErrorCode.INGEST_PAYLOAD_INVALID),
        (b'{"a": ' + b"9" * 5000 + b"}", ErrorCode.INGEST_PAYLOAD_INVALID),
        (
            b'{"a": 1, "a": 2, "b": ' + b"9" * 5000 + b"}",
            ErrorCode.INGEST_PAYLOAD_INVALID,
        ),
        (b'{"a": 1' + b"0" * 400 + b".5}", ErrorCode.ENVELOPE_UNREADABLE),
        (b'{"a": 2.5E+308}', ErrorCode.ENVELOPE_UNREADABLE),
        (b'{"a": "x\\u0000y"}', ErrorCode.INGEST_PAYLOAD_INVALID),
        (b'{"a": NaN}', ErrorCode.ENVELOPE_UNREADABLE),
        (b'{"a": -Infinity}', ErrorCode.ENVELOPE_UNREADABLE),
        (b'{"a": 1e999}', ErrorCode.ENVELOPE_UNREADABLE),
        (b'{"a": "\\ud800"}', ErrorCode.ENVELOPE_UNREADABLE),
        (b'{"a": 1', ErrorCode.ENVELOPE_UNREADABLE),
        (b"\xc3\x28", ErrorCode.ENVELOPE_UNREADABLE),
        (b"[1]", ErrorCode.ENVELOPE_UNREADABLE),
        (b"[" * 5000 + b"]" * 5000, ErrorCode.ENVELOPE_UNREADABLE),
    ],
)
def test_rejected_values(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(RecordRejected) as caught:
        load_object(raw, max_depth=64)
    assert caught.value.code == code


def test_limits_of_exact_integers() -> None:
    assert load_object(b'{"a": 18446744073709551615}', 64) == {"a": 2**64 - 1}
    assert load_object(b'{"a": -9223372036854775808}', 64) == {"a": -(2**63)}


def test_surrogate_pair_accepted() -> None:
    assert load_object(b'{"a": "\\ud83d\\ude00"}', 64) == {"a": "\U0001f600"}


def with_repeated_key(node: Any, depth: int) -> bytes | None:
    """Serialize the node with a key repeated, up to `depth` levels down.

    The object reached by following first children repeats its first key.
    Returns None when no non-empty object is found that way.
    """
    if isinstance(node, dict) and node:
        items = list(node.items())
        if depth > 0 and isinstance(items[0][1], (dict, list)):
            inner = with_repeated_key(items[0][1], depth - 1)
            if inner is not None:
                rest = b"".join(
                    b"," + orjson.dumps(key) + b":" + orjson.dumps(child)
                    for key, child in items[1:]
                )
                return b"{" + orjson.dumps(items[0][0]) + b":" + inner + rest + b"}"
        body = orjson.dumps(node)[1:-1]
        key, child = items[0]
        return (
            b"{" + body + b"," + orjson.dumps(key) + b":" + orjson.dumps(child) + b"}"
        )
    if isinstance(node, list) and node:
        inner = with_repeated_key(node[0], depth - 1)
        if inner is None:
            return None
        rest = b"".join(b"," + orjson.dumps(child) for child in node[1:])
        return b"[" + inner + rest + b"]"
    return None


@given(json_values, st.integers(0, 5))
def test_repeated_key_rejected_at_any_depth(value: Any, depth: int) -> None:
    raw = with_repeated_key({"v": value}, depth)
    assert raw is not None
    with pytest.raises(RecordRejected) as caught:
        load_object(raw, max_depth=64)
    assert caught.value.code == ErrorCode.INGEST_PAYLOAD_INVALID
    assert "more than once" in str(caught.value)


@given(json_values)
def test_agrees_with_standard_parser(value: Any) -> None:
    raw = orjson.dumps({"v": value, "k": [1.5, -0.0, 1e-7, 12345678901234567]})
    assert load_object(raw, 64) == json.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "b\\":", "c": 1}',
        b'{"a\\"": 1, "b": "\\\\": ""}',
        b'{"a" :1, "b"\n:\t"x"}',
        b'{"": {"": []}}',
        b'{"a\\u003a": ":", "b": "\\u003A"}',
    ],
)
def test_escapes_decoded_as_standard(raw: bytes) -> None:
    try:
        expected = json.loads(raw)
    except json.JSONDecodeError:
        with pytest.raises(RecordRejected):
            load_object(raw, 64)
        return
    assert load_object(raw, 64) == expected


def test_repeated_key_beside_escaped_colon() -> None:
    with pytest.raises(RecordRejected) as caught:
        load_object(b'{"a": 1, "a": "x", "b": "\\u003a"}', 64)
    assert caught.value.code == ErrorCode.INGEST_PAYLOAD_INVALID


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"a": 1, "a": 2}', "$"),
        (b'{"payload": {"board": {"j": "GOOD", "j": "BAD"}}}', "$.payload.board"),
        (b'{"l": [{"x": 1}, {"y": 1, "y": 2}], "z": {"k": 1, "k": 1}}', "$.l[1]"),
    ],
)
def test_repeated_key_names_its_object(raw: bytes, where: str) -> None:
    with pytest.raises(RecordRejected) as caught:
        load_object(raw, 64)
    assert list(caught.value.detail["fields"]) == [where]
    assert f"invalid: {where}: " in caught.value.message
