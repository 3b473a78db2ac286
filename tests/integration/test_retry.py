"""Deferrable failures wait on the retry topic and come back when due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest_worker.failures import headers as h
from ingest_worker.mapping import format_utc
from ingest_worker.settings import Settings
from tests.integration.support import (
    SAMPLES,
    fetch_all,
    headers_of,
    publish_raw,
    read_topic,
    running_worker,
    sample_factory,
    seed_sample,
    wait_for,
)

pytestmark = pytest.mark.integration


def spi_envelope(index: int = 0, machine: str = "SPI-A2") -> dict[str, object]:
    """Return a sample SPI envelope reported by another paste inspection machine."""
    lines = (SAMPLES / "events" / "10-spi.jsonl").read_bytes().splitlines()
    envelope = orjson.loads(lines[index])
    envelope["payload"]["machine"] = machine
    return envelope


def factory_with_station(code: str) -> dict[str, object]:
    document = sample_factory()
    document["stations"].append(
        {"code": code, "line": "SMT-A", "group": "SPI", "stationType": "AUTO"}
    )
    return document


async def stored_events(database_url: str) -> int:
    rows = await fetch_all(database_url, "SELECT count(*) AS n FROM ingest_event")
    return int(rows[0]["n"])


async def test_retry_stores_after_master_data(settings: Settings) -> None:
    settings = settings.model_copy(update={"retry_delays_s": (1.0, 1.0, 1.0)})
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    async with running_worker(settings) as running:
        await publish_raw(
            settings, settings.topics.auto, [orjson.dumps(spi_envelope())]
        )
        retried = await wait_for(lambda: read_topic(settings, settings.topics.retry))
        headers = headers_of(retried[0])
        assert headers[h.CODE] == "STATION_NOT_FOUND"
        assert headers[h.ATTEMPT] == "1"
        assert headers[h.ORIGIN_TOPIC] == settings.topics.auto
        assert h.RETRY_DUE in headers

        await seed_sample(database_url, factory_with_station("SPI-A2"))
        await wait_for(lambda: stored_events(database_url))
        await running.settle()

    assert await stored_events(database_url) == 1
    assert await read_topic(settings, settings.topics.dlq) == []


async def test_retries_exhausted_then_dead_letter(settings: Settings) -> None:
    settings = settings.model_copy(update={"retry_delays_s": (0.2, 0.2)})
    await seed_sample(settings.require_database_url())
    async with running_worker(settings):
        await publish_raw(
            settings, settings.topics.auto, [orjson.dumps(spi_envelope())]
        )
        dead = await wait_for(lambda: read_topic(settings, settings.topics.dlq))

    headers = headers_of(dead[0])
    assert headers[h.CODE] == "STATION_NOT_FOUND"
    assert headers[h.ATTEMPT] == "3"
    assert headers[h.ORIGIN_TOPIC] == settings.topics.auto
    assert h.RETRY_DUE not in headers
    attempts = [
        headers_of(record)[h.ATTEMPT]
        for record in await read_topic(settings, settings.topics.retry)
    ]
    assert sorted(attempts) == ["1", "2"]


async def test_empty_schedule_dead_letters_at_once(settings: Settings) -> None:
    settings = settings.model_copy(update={"retry_delays_s": ()})
    await seed_sample(settings.require_database_url())
    async with running_worker(settings) as running:
        await publish_raw(
            settings, settings.topics.auto, [orjson.dumps(spi_envelope())]
        )
        await running.settle()
        dead = await wait_for(lambda: read_topic(settings, settings.topics.dlq))

    assert headers_of(dead[0])[h.CODE] == "STATION_NOT_FOUND"
    assert await read_topic(settings, settings.topics.retry) == []


async def test_waiting_record_does_not_block_partition(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    now = datetime.now(UTC)

    def retry_headers(due: datetime) -> list[tuple[str, bytes]]:
        return [
            (h.CODE, b"STATION_NOT_FOUND"),
            (h.ORIGIN_TOPIC, settings.topics.auto.encode()),
            (h.ORIGIN_PARTITION, b"0"),
            (h.ORIGIN_OFFSET, b"0"),
            (h.ATTEMPT, b"1"),
            (h.RETRY_DUE, format_utc(due).encode()),
        ]

    # Both on one partition: the later one is due first.
    later = orjson.dumps(spi_envelope(0, machine="SPI-A1"))
    sooner = orjson.dumps(spi_envelope(1, machine="SPI-A1"))
    await publish_raw(
        settings,
        settings.topics.retry,
        [later],
        key=b"same",
        headers=retry_headers(now + timedelta(minutes=10)),
    )
    await publish_raw(
        settings,
        settings.topics.retry,
        [sooner],
        key=b"same",
        headers=retry_headers(now),
    )
    async with running_worker(settings) as running:
        await wait_for(lambda: stored_events(database_url))
        assert running.worker.retries.waiting == 1
    rows = await fetch_all(database_url, "SELECT sn FROM ingest_event")
    assert [row["sn"] for row in rows] == ["SN-2026-01002"]
