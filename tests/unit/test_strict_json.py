"""Strict JSON decoding: the nesting check agrees with the parsed document."""

from __future__ import annotations

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
