"""Strict JSON decoding of record values.

A station's JSON must mean one thing. Plain parsers guess where the text is
ambiguous: they keep the last of repeated keys, round integers beyond 64 bits
to floats, or accept NaN. Here each of those is rejected, with its location.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

import orjson

from ingest_worker.errors import ErrorCode, RecordRejected

# An escape sequence inside a JSON string, such as \" or \\.
_ESCAPE = re.compile(rb"\\.")
# Every byte except quotes and brackets.
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'"[]{}'))
# Opening brackets become 2 and closing ones 0, so that byte - 1 is the step.
_DEPTH_STEPS = bytes.maketrans(b"{[]}", b"\x02\x02\x00\x00")
# Digits become "0", e and E become "e", signs stay, every other byte a space:
# a shape in which long numbers are found by plain substring search.
_NUMBER_SHAPE = bytes(
    0x30
    if byte in b"0123456789"
    else 0x65
    if byte in b"eE"
    else byte
    if byte in b"+-"
    else 0x20
    for byte in range(256)
)
_NINETEEN_DIGITS = b"0" * 19
_LARGE_EXPONENTS = (b"e000", b"e+000", b"e-000")
# An escaped UTF-16 surrogate, which must come in a valid pair.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


_SEND_JSON = "stations must send one JSON object as defined by RFC 8259"


class _Ambiguous(ValueError):
    pass


class _RepeatedKey(_Ambiguous):
    pass


class _NotJson(ValueError):
    pass


def _unreadable(message: str, **detail: Any) -> RecordRejected:
    return RecordRejected(ErrorCode.ENVELOPE_UNREADABLE, message, detail)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        repeated = sorted({key for key, _ in pairs if key in seen or seen.add(key)})
        raise _RepeatedKey(
            f"an object has the key {', '.join(map(repr, repeated))} more than "
            "once, so its value is ambiguous; send each key once"
        )
    return document


class _Pairs(list[tuple[str, Any]]):
    """The key-value pairs of one object, kept as sent, repeats included."""


def _repeat_location(text: str) -> str:
    """Return where the first object with a repeated key lies, as a JSON path.

    "First" is in the order the parser completes objects, so the path names
    the object that the key-checking parse stopped at.
    """

    def visit(node: Any, where: str) -> str | None:
        if isinstance(node, _Pairs):
            for key, child in node:
                found = visit(child, f"{where}.{key}")
                if found is not None:
                    return found
            keys = [key for key, _ in node]
            return where if len(set(keys)) != len(keys) else None
        if isinstance(node, list):
            for index, child in enumerate(node):
                found = visit(child, f"{where}[{index}]")
                if found is not None:
                    return found
        return None

    try:
        tree = json.loads(text, object_pairs_hook=_Pairs, parse_constant=float)
    except ValueError:
        return "$"  # such as an integer too long for int()
    return visit(tree, "$") or "$"


def _exact_int(text: str) -> int:
    # More than 20 digits is out of range, and int() refuses very long text.
    number = int(text) if len(text) <= 21 else None
    if number is None or not -(2**63) <= number < 2**64:
        raise _Ambiguous(
            f"the integer {text[:40]} is outside the 64-bit range and cannot be "
            "stored exactly; send it as a string"
        )
    return number


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotJson(
            f"the number {text[:40]} is too large for a double; send it as a "
            "string or within ±1.7e308"
        )
    return number


def _no_constant(text: str) -> Any:
    raise _NotJson(f"{text} is not a JSON value; send null or a number")


def _check_depth(value: bytes, max_depth: int) -> None:
    # Fewer brackets than the limit cannot nest deeper than it.
    if value.count(b"{") + value.count(b"[") <= max_depth:
        return
    # Without escapes, quotes alternate between opening and closing strings,
    # so every other piece between quotes lies outside all strings.
    if b"\\" in value:
        value = _ESCAPE.sub(b"", value)
    pieces = value.translate(None, _NOT_STRUCTURE).split(b'"')
    brackets = b"".join(pieces[::2]).translate(_DEPTH_STEPS)
    if max(accumulate(step - 1 for step in brackets)) > max_depth:
        raise _unreadable(
            f"JSON nesting exceeds the limit of {max_depth} levels; "
            "flatten the payload or raise the nesting limit",
            maxDepth=max_depth,
        )


def _find_nul(node: Any, where: str) -> str | None:
    """Return the location of the first string or key holding a NUL character."""
    if isinstance(node, str):
        return where if "\x00" in node else None
    if isinstance(node, dict):
        for key, child in node.items():
            if "\x00" in key:
                return f"{where} key"
            found = _find_nul(child, f"{where}.{key}")
            if found:
                return found
    if isinstance(node, list):
        for index, child in enumerate(node):
            found = _find_nul(child, f"{where}[{index}]")
            if found:
                return found
    return None


def _fast_load(value: bytes) -> dict[str, Any] | None:
    """Decode an object with orjson, or return None if the full check must run.

    orjson keeps the last of repeated keys, so the colons are counted. Unless
    the text escapes a colon, each of its colons ends a key or lies in a
    string, and orjson's own output has fewer only when a key was repeated.
    """
    if b"\\u003" in value:
        return None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    if value.count(b":") != orjson.dumps(document).count(b":"):
        return None
    return document


def exact_object(value: bytes, max_depth: int = 1000) -> dict[str, Any] | None:
    """Return the JSON object of the value, or None unless it means one thing.

    For showing and filtering stored records: a value with a repeated key, for
    one, is better shown as its text than as the object a parser makes of it.
    """
    try:
        return load_object(value, max_depth)
    except RecordRejected:
        return None


def load_object(value: bytes, max_depth: int) -> dict[str, Any]:
    """Decode a record value that must be a JSON object, or raise RecordRejected.

    Invalid UTF-8, invalid JSON, NaN or infinite numbers, nesting over
    `max_depth` and a value that is not an object are ENVELOPE_UNREADABLE.
    Repeated keys, integers beyond 64 bits and NUL characters (which
    PostgreSQL text and jsonb cannot store) are INGEST_PAYLOAD_INVALID.
    """
    # Checked on the text first, so no parser recurses into a deep document.
    _check_depth(value, max_depth)
    if b"\\u" in value and _SURROGATE_ESCAPE.search(value):
        # The standard parser accepts a lone surrogate, which no UTF-8 text
        # can hold; orjson rejects it.
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError as error:
            raise _unreadable(
                f"the record value is not valid JSON: {error}; {_SEND_JSON}",
                position=error.pos,
            ) from None
    # Checking every number costs a call each; only long ones need it. Nineteen
    # digits or a three-digit exponent may be beyond 64 bits or a double.
    shape = value.translate(_NUMBER_SHAPE)
    long_numbers = _NINETEEN_DIGITS in shape or any(
        exponent in shape for exponent in _LARGE_EXPONENTS
    )
    document = None if long_numbers else _fast_load(value)
    if document is None:
        document = _strict_load(value, long_numbers)
    if b"\\u0000" in value:
        where = _find_nul(document, "$")
        if where is not None:
            raise RecordRejected(
                ErrorCode.INGEST_PAYLOAD_INVALID,
                f"the string at {where} contains a NUL character (\\u0000), which "
                "PostgreSQL cannot store; remove it at the station",
                {"fields": {where: "contains \\u0000"}},
            )
    return document


def _strict_load(value: bytes, long_numbers: bool) -> dict[str, Any]:
    """Decode with the standard parser, checking each object and long number."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _unreadable(
            f"the record value is not valid UTF-8 (byte {error.start}: "
            f"{error.reason}); stations must send UTF-8 JSON",
            position=error.start,
        ) from None
    try:
        document = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_exact_int if long_numbers else None,
            parse_float=_finite_float if long_numbers else None,
            parse_constant=_no_constant,
        )
    except _Ambiguous as error:
        where = _repeat_location(text) if isinstance(error, _RepeatedKey) else "$"
        raise RecordRejected(
            ErrorCode.INGEST_PAYLOAD_INVALID,
            f"the envelope is invalid: {where}: {error}",
            {"fields": {where: str(error)}},
        ) from None
    except _NotJson as error:
        raise _unreadable(f"the record value is not valid JSON: {error}") from None
    except (json.JSONDecodeError, RecursionError) as error:
        raise _unreadable(
            f"the record value is not valid JSON: {error}; {_SEND_JSON}"
        ) from None
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise _unreadable(
            f"the record value is a JSON {kind}, not an object", jsonType=kind
        )
    return document
