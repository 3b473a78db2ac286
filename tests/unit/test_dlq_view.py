"""How dead letters are view: exact text where a parser would change them."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from ingest_worker.failures.dlq import describe_record


def record(value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("dlq", 0, 7, 0, 0, None, value, None, 0, len(value), [])


def test_repeated_key_shown_as_text() -> None:
    value = b'{"dedupeKey": "a", "dedupeKey": "b", "payload": {}}'
    view = describe_record(record(value))
    assert view["valueEncoding"] == "text"
    assert view["value"] == value.decode()


def test_plain_object_shown_as_json() -> None:
    view = describe_record(record(b'{"dedupeKey": "a", "payload": {"x": 1}}'))
    assert view["valueEncoding"] == "json"
    assert view["value"] == {"dedupeKey": "a", "payload": {"x": 1}}


def test_invalid_utf8_shown_as_base64() -> None:
    view = describe_record(record(b"\xff{}"))
    assert view["valueEncoding"] == "base64"
    assert view["value"] == "/3t9"
