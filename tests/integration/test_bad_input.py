"""A corpus of bad input: each record gets its code, none stops the worker."""

from __future__ import annotations

import orjson
import pytest

from ingest_worker.failures import headers as h
from ingest_worker.kafka import make_producer
from ingest_worker.settings import Settings
from tests.integration.support import (
    SAMPLES,
    fetch_all,
    read_topic,
    running_worker,
    seed_sample,
)

pytestmark = pytest.mark.integration

GOOD_LINES = (SAMPLES / "events" / "10-spi.jsonl").read_bytes().splitlines()


def envelope(index: int = 0) -> dict[str, object]:
    return orjson.loads(GOOD_LINES[index])


def with_changes(index: int, **changes: object) -> bytes:
    document = envelope(index)
    document.update(changes)
    return orjson.dumps(document)


def nested(depth: int) -> bytes:
    document = envelope(0)
    inner: dict[str, object] = {}
    document["payload"]["deep"] = inner
    for _ in range(depth):
        inner["next"] = {}
        inner = inner["next"]  # type: ignore[assignment]
    return orjson.dumps(document)


UNREADABLE = "ENVELOPE_UNREADABLE"
INVALID = "INGEST_PAYLOAD_INVALID"

# The label of each case, its value and the code it must get.
CORPUS: list[tuple[str, bytes | None, str]] = [
    ("tombstone", None, UNREADABLE),
    ("empty value", b"", UNREADABLE),
    ("invalid UTF-8", GOOD_LINES[0].replace(b"SPI-A1", b"SPI-\xff1"), UNREADABLE),
    ("lone surrogate", GOOD_LINES[0].replace(b'"GOOD"', b'"\\ud800"'), UNREADABLE),
    ("not JSON", b"SN-2026-01001;PASS", UNREADABLE),
    ("JSON array", b"[]", UNREADABLE),
    ("JSON string", b'"hello"', UNREADABLE),
    ("NaN", GOOD_LINES[0].replace(b"99.5", b"NaN"), UNREADABLE),
    ("infinite number", GOOD_LINES[0].replace(b"99.5", b"1e400"), UNREADABLE),
    (
        "huge integer",
        GOOD_LINES[0].replace(b"1184", b"123456789012345678901234567890"),
        INVALID,
    ),
    (
        "NUL in payload",
        GOOD_LINES[0].replace(b"MB-100_TOP_r3", b"MB-100\\u0000TOP"),
        INVALID,
    ),
    (
        "NUL in key",
        GOOD_LINES[0].replace(b'"padCount"', b'"pad\\u0000Count"'),
        INVALID,
    ),
    (
        "timestamp without offset",
        with_changes(0, occurredAt="2026-12-04T06:00:00"),
        INVALID,
    ),
    (
        "duplicate JSON keys",
        GOOD_LINES[0].replace(b'"padCount":1184', b'"padCount":1184,"padCount":1185'),
        INVALID,
    ),
    ("missing dedupeKey", with_changes(0, dedupeKey=None), INVALID),
    ("number as sourceSystem", with_changes(0, sourceSystem=7), INVALID),
    ("unknown eventType", with_changes(0, eventType="MANUAL"), INVALID),
    ("payload not an object", with_changes(0, payload=[1]), INVALID),
    ("nesting over the limit", nested(70), UNREADABLE),
    ("10 MB value", b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}', UNREADABLE),
    ("wrong topic", with_changes(1, eventType="TEST"), "EVENT_TYPE_MISMATCH"),
]


@pytest.fixture
async def corpus_results(settings: Settings) -> dict[str, dict[str, str]]:
    """Publish the corpus between good records and return each dead letter."""
    await seed_sample(settings.require_database_url())
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.auto, GOOD_LINES[2], key=b"good")
        for label, value, _ in CORPUS:
            await producer.send_and_wait(
                settings.topics.auto,
                value,
                key=b"bad",
                headers=[("case", label.encode())],
            )
        # The same dedupe key twice in one fetched batch: stored once, then a
        # changed copy is a conflict.
        await producer.send_and_wait(settings.topics.auto, GOOD_LINES[3], key=b"twice")
        await producer.send_and_wait(settings.topics.auto, GOOD_LINES[3], key=b"twice")
        await producer.send_and_wait(
            settings.topics.auto,
            GOOD_LINES[3].replace(b"1184", b"1183"),
            key=b"twice",
            headers=[("case", b"changed copy in one batch")],
        )
        await producer.send_and_wait(settings.topics.auto, GOOD_LINES[4], key=b"good")
    finally:
        await producer.stop()

    async with running_worker(settings) as running:
        await running.settle(timeout_s=60)
        assert running.worker.counts["duplicate"] == 1
    results: dict[str, dict[str, str]] = {}
    for record in await read_topic(settings, settings.topics.dlq):
        headers = dict(record.headers)
        label = headers["case"].decode() if "case" in headers else "?"
        results[label] = {
            **headers_of_safe(record),
            "value_size": str(len(record.value or b"")),
        }
    return results


def headers_of_safe(record: object) -> dict[str, str]:
    return {
        key: value.decode("utf-8", errors="replace")
        for key, value in record.headers  # type: ignore[attr-defined]
    }


async def test_corpus_codes(
    settings: Settings, corpus_results: dict[str, dict[str, str]]
) -> None:
    expected = {label: code for label, _, code in CORPUS}
    expected["changed copy in one batch"] = "DEDUPE_KEY_CONFLICT"
    codes = {label: result[h.CODE] for label, result in corpus_results.items()}
    assert codes == expected

    rows = await fetch_all(
        settings.require_database_url(), "SELECT dedupe_key FROM ingest_event"
    )
    assert sorted(row["dedupe_key"] for row in rows) == sorted(
        envelope(index)["dedupeKey"] for index in (2, 3, 4)
    )


async def test_corpus_messages_name_the_problem(
    corpus_results: dict[str, dict[str, str]],
) -> None:
    for label, result in corpus_results.items():
        message = result[h.MESSAGE]
        assert len(message) > 20, label
        assert orjson.loads(result[h.DETAIL]) is not None, label
    assert "padCount" in corpus_results["duplicate JSON keys"][h.MESSAGE]
    assert "occurredAt" in corpus_results["timestamp without offset"][h.MESSAGE]
    assert "UTF-8" in corpus_results["invalid UTF-8"][h.MESSAGE]
    assert "64" in corpus_results["nesting over the limit"][h.MESSAGE]
    assert "dedupeKey" in corpus_results["missing dedupeKey"][h.MESSAGE]


async def test_corpus_values_kept_byte_for_byte(
    corpus_results: dict[str, dict[str, str]],
) -> None:
    for label, value, _ in CORPUS:
        assert corpus_results[label]["value_size"] == str(len(value or b"")), label
