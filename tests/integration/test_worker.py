"""The worker end to end over the real broker and database."""

from __future__ import annotations

import orjson
import pytest

from ingest_worker.consumer.worker import Worker
from ingest_worker.settings import Settings
from tests.integration.support import (
    EVENT_FILES,
    SAMPLES,
    fetch_all,
    headers_of,
    publish_file,
    publish_raw,
    read_topic,
    running_worker,
    seed_sample,
)

pytestmark = pytest.mark.integration

SPI_FILE = SAMPLES / "events" / "10-spi.jsonl"


def spi_envelopes() -> list[dict[str, object]]:
    return [orjson.loads(line) for line in SPI_FILE.read_bytes().splitlines()]


async def count_events(database_url: str) -> int:
    rows = await fetch_all(database_url, "SELECT count(*) AS n FROM ingest_event")
    return int(rows[0]["n"])


async def test_same_file_twice_stored_once(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    async with running_worker(settings) as running:
        assert await publish_file(settings, SPI_FILE) == 10
        await running.settle()
        assert await publish_file(settings, SPI_FILE) == 10
        await running.settle()
        counts = dict(running.worker.counts)

    assert counts == {"stored": 10, "duplicate": 10}
    assert await count_events(database_url) == 10
    tracks = await fetch_all(database_url, "SELECT count(*) AS n FROM track")
    assert tracks[0]["n"] == 10
    assert await read_topic(settings, settings.topics.dlq) == []


async def test_changed_payload_is_dedupe_conflict(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    original = spi_envelopes()[0]
    changed = orjson.loads(orjson.dumps(original))
    changed["payload"]["board"]["padCount"] = 1185
    async with running_worker(settings) as running:
        await publish_raw(settings, settings.topics.auto, [orjson.dumps(original)])
        await running.settle()
        changed_bytes = orjson.dumps(changed)
        await publish_raw(settings, settings.topics.auto, [changed_bytes])
        await running.settle()

    dead = await read_topic(settings, settings.topics.dlq)
    assert len(dead) == 1
    assert dead[0].value == changed_bytes
    headers = headers_of(dead[0])
    assert headers["ingest.error.code"] == "DEDUPE_KEY_CONFLICT"
    assert original["dedupeKey"] in headers["ingest.error.message"]
    stored = await fetch_all(database_url, "SELECT raw FROM ingest_event")
    assert len(stored) == 1
    assert stored[0]["raw"]["payload"]["board"]["padCount"] == 1184


async def test_dead_letter_keeps_key_value_headers(settings: Settings) -> None:
    value = b'{"not": "an envelope"'
    original_headers = [("trace-id", b"abc"), ("binary", b"\xff\x00")]
    async with running_worker(settings) as running:
        await publish_raw(
            settings,
            settings.topics.test,
            [value],
            key=b"SN-1",
            headers=original_headers,
        )
        await running.settle()

    dead = await read_topic(settings, settings.topics.dlq)
    assert len(dead) == 1
    record = dead[0]
    assert record.key == b"SN-1"
    assert record.value == value
    assert ("trace-id", b"abc") in record.headers
    assert ("binary", b"\xff\x00") in record.headers
    headers = dict(record.headers)
    assert headers["ingest.error.code"] == b"ENVELOPE_UNREADABLE"
    assert headers["ingest.origin.topic"] == settings.topics.test.encode()
    assert headers["ingest.origin.offset"] == b"0"
    assert headers["ingest.attempt"] == b"1"
    assert headers["ingest.replay.count"] == b"0"
    for name in (
        "ingest.error.message",
        "ingest.error.detail",
        "ingest.origin.partition",
        "ingest.origin.timestamp",
        "ingest.failed.at",
    ):
        assert name in headers, name


async def test_bad_records_do_not_stop_worker(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    good = [orjson.dumps(envelope) for envelope in spi_envelopes()]
    wrong_type = orjson.loads(good[1])
    wrong_type["eventType"] = "TEST"
    bad = [
        None,
        b"",
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
        b'{"dedupeKey": "x"}',
        orjson.dumps(wrong_type),
    ]
    values = [good[0], *bad, *good[2:]]
    async with running_worker(settings) as running:
        await publish_raw(settings, settings.topics.auto, values)
        await running.settle()

    codes = sorted(
        headers_of(record)["ingest.error.code"]
        for record in await read_topic(settings, settings.topics.dlq)
    )
    assert codes == [
        "ENVELOPE_UNREADABLE",
        "ENVELOPE_UNREADABLE",
        "ENVELOPE_UNREADABLE",
        "ENVELOPE_UNREADABLE",
        "EVENT_TYPE_MISMATCH",
        "INGEST_PAYLOAD_INVALID",
    ]
    assert await count_events(database_url) == 9


class _CrashAfterDatabaseCommit(Exception):
    pass


class _CrashingWorker(Worker):
    """Dies after the database commit and before the offset commit."""

    async def _commit(self, outcomes: object) -> None:
        raise _CrashAfterDatabaseCommit


async def test_crash_before_offset_commit_no_second_row(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    async with running_worker(settings, _CrashingWorker) as running:
        await publish_file(settings, SPI_FILE)
        with pytest.raises(_CrashAfterDatabaseCommit):
            await running.task
        crashed_counts = dict(running.worker.counts)
    assert await count_events(database_url) > 0
    assert crashed_counts == {}

    async with running_worker(settings) as running:
        await running.settle()
        counts = dict(running.worker.counts)

    assert await count_events(database_url) == 10
    assert counts.get("duplicate", 0) >= 1
    assert counts.get("duplicate", 0) + counts.get("stored", 0) == 10
    assert await read_topic(settings, settings.topics.dlq) == []


async def test_every_sample_file_twice_changes_nothing(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    async with running_worker(settings) as running:
        for path in EVENT_FILES:
            await publish_file(settings, path)
            await running.settle()
        first = await fetch_all(
            database_url, "SELECT sn, status, current_step_no, version FROM unit"
        )
        for path in EVENT_FILES:
            await publish_file(settings, path)
            await running.settle()
        second = await fetch_all(
            database_url, "SELECT sn, status, current_step_no, version FROM unit"
        )
        counts = dict(running.worker.counts)

    assert sorted(map(tuple, first)) == sorted(map(tuple, second))
    assert counts["stored"] == 26
    assert counts["duplicate"] == 26
    assert counts["rejected"] == 2
    assert await count_events(database_url) == 26
