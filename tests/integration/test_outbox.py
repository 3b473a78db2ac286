"""The normalized topic is fed from the outbox: every committed event, once
or more, and never an event whose transaction rolled back."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from ingest_worker.consumer import batch
from ingest_worker.consumer.worker import Worker
from ingest_worker.outbox.relay import OutboxRelay
from ingest_worker.settings import Settings
from tests.integration.support import (
    SAMPLES,
    fetch_all,
    headers_of,
    publish_file,
    read_topic,
    running_worker,
    seed_sample,
    wait_for,
)

pytestmark = pytest.mark.integration

SPI_FILE = SAMPLES / "events" / "10-spi.jsonl"


async def event_ids(database_url: str) -> set[str]:
    rows = await fetch_all(database_url, "SELECT id FROM ingest_event")
    return {str(row["id"]) for row in rows}


async def outbox_size(database_url: str) -> int:
    rows = await fetch_all(database_url, "SELECT count(*) AS n FROM outbox")
    return int(rows[0]["n"])


async def published(settings: Settings) -> list[Any]:
    return await read_topic(settings, settings.topics.normalized)


async def test_normalized_records_match_events(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    async with running_worker(settings) as running:
        for path in sorted((SAMPLES / "events").glob("*.jsonl"))[:3]:
            await publish_file(settings, path)
            await running.settle()
        await wait_for(lambda: _all_published(settings, database_url))

    stored = await fetch_all(
        database_url, "SELECT id, normalized, sn, carrier_code FROM ingest_event"
    )
    by_id = {str(row["id"]): row for row in stored}
    records = await published(settings)
    assert len(records) == len(stored) == 22
    for record in records:
        value = orjson.loads(record.value)
        row = by_id[value["eventId"]]
        assert value == row["normalized"]
        assert value["schema"] == "mes.ingest.normalized/v1"
        headers = headers_of(record)
        assert headers["ingest.event.type"] == value["eventType"]
        assert headers["ingest.source.system"] == value["sourceSystem"]
        assert headers["ingest.dedupe.key"] == value["dedupeKey"]
        expected_key = (
            row["carrier_code"] if value["eventType"] == "BATCH" else row["sn"]
        )
        assert record.key == expected_key.encode()
    assert await outbox_size(database_url) == 0


async def _all_published(settings: Settings, database_url: str) -> bool:
    return await outbox_size(database_url) == 0 and len(await published(settings)) > 0


async def test_order_per_key_follows_commits(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    async with running_worker(settings) as running:
        for path in sorted((SAMPLES / "events").glob("*.jsonl")):
            await publish_file(settings, path)
            await running.settle()
        await wait_for(lambda: _all_published(settings, database_url))

    steps_by_key: dict[bytes, list[int]] = {}
    for record in await published(settings):
        value = orjson.loads(record.value)
        steps_by_key.setdefault(record.key, []).append(value["stepNo"])
    for key, steps in steps_by_key.items():
        assert steps == sorted(steps), key


class _RelayKilledBeforePublish(OutboxRelay):
    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


class _WorkerKilledBeforePublish(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relay = _RelayKilledBeforePublish(self.pool, self.producer, self.settings)


class _PublishedButNotDeleted(Exception):
    pass


class _RelayKilledBeforeDelete(OutboxRelay):
    async def _delete(self, connection: Any, ids: list[int]) -> None:
        raise _PublishedButNotDeleted(ids)


async def test_kill_between_commit_and_publish(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    async with running_worker(settings, _WorkerKilledBeforePublish) as running:
        await publish_file(settings, SPI_FILE)
        await running.settle()
    assert await outbox_size(database_url) == 10
    assert await published(settings) == []

    async with running_worker(settings):
        await wait_for(lambda: _all_published(settings, database_url))

    ids = [
        orjson.loads(record.value)["eventId"] for record in await published(settings)
    ]
    assert sorted(ids) == sorted(await event_ids(database_url))


async def test_kill_between_publish_and_delete(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    async with running_worker(settings, _WorkerKilledBeforePublish) as running:
        await publish_file(settings, SPI_FILE)
        await running.settle()
        relay = _RelayKilledBeforeDelete(
            running.worker.pool, running.worker.producer, settings
        )
        with pytest.raises(_PublishedButNotDeleted):
            await relay.publish_once()
    assert await outbox_size(database_url) == 10
    assert len(await published(settings)) == 10

    async with running_worker(settings):
        await wait_for(lambda: _all_published(settings, database_url))

    # Delivery is at least once: the repeat carries the same eventId.
    ids = [
        orjson.loads(record.value)["eventId"] for record in await published(settings)
    ]
    assert len(ids) == 20
    assert set(ids) == await event_ids(database_url)


async def test_rolled_back_event_never_published(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    original = batch.write_batch

    async def write_then_fail(*args: Any, **kwargs: Any) -> Any:
        await original(*args, **kwargs)
        raise RuntimeError("the transaction fails after writing")

    monkeypatch.setattr(batch, "write_batch", write_then_fail)
    async with running_worker(settings) as running:
        await publish_file(settings, SPI_FILE)
        await running.settle()
        await asyncio.sleep(0.5)

    assert await event_ids(database_url) == set()
    assert await outbox_size(database_url) == 0
    assert await published(settings) == []
    codes = {
        headers_of(record)["ingest.error.code"]
        for record in await read_topic(settings, settings.topics.dlq)
    }
    assert codes == {"INGEST_INTERNAL_ERROR"}
