"""A database outage under load: nothing lost, nothing doubled, nothing dead."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from ingest_worker.embedded import EmbeddedDatabase
from ingest_worker.settings import Settings
from ingest_worker.storage.database import connect
from ingest_worker.storage.migrations import migrate
from tests.integration.support import (
    fetch_all,
    publish_raw,
    read_topic,
    running_worker,
    sample_factory,
    seed_sample,
    spi_values,
    wait_for,
)

pytestmark = pytest.mark.integration

UNITS = 300


@pytest.fixture
def own_database() -> EmbeddedDatabase:
    database = EmbeddedDatabase()
    database.start()
    yield database
    database.stop()


async def test_database_outage_loses_nothing(
    settings: Settings, own_database: EmbeddedDatabase
) -> None:
    url = own_database.url
    connection = await connect(url)
    await migrate(connection)
    await connection.close()
    factory = sample_factory()
    factory["units"][0]["snRange"]["to"] = 1000 + UNITS
    await seed_sample(url, factory)
    settings = settings.model_copy(update={"database_url": SecretStr(url)})
    values = spi_values(UNITS, "outage")

    async with running_worker(settings) as running:
        await running.worker.assigned.wait()
        readiness: list[bool] = []

        async def watch() -> None:
            while True:
                readiness.append(running.worker.ready)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        publishing = asyncio.create_task(
            publish_raw(settings, settings.topics.auto, values[: UNITS // 2])
        )
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_database.halt)
        await publishing
        await publish_raw(settings, settings.topics.auto, values[UNITS // 2 :])
        await asyncio.sleep(3)
        await asyncio.to_thread(own_database.resume)
        await running.settle(timeout_s=90)
        watcher.cancel()
        counts = dict(running.worker.counts)

    rows = await fetch_all(
        url, "SELECT count(*) AS n, count(DISTINCT sn) AS units FROM ingest_event"
    )
    assert rows[0]["n"] == UNITS
    assert rows[0]["units"] == UNITS
    assert counts.get("stored", 0) + counts.get("duplicate", 0) == UNITS
    assert await read_topic(settings, settings.topics.dlq) == []
    assert await read_topic(settings, settings.topics.retry) == []
    assert False in readiness
    assert readiness[-1] is True


async def test_stop_during_outage_hands_batch_back(
    settings: Settings, own_database: EmbeddedDatabase
) -> None:
    url = own_database.url
    connection = await connect(url)
    await migrate(connection)
    await connection.close()
    await seed_sample(url)
    settings = settings.model_copy(update={"database_url": SecretStr(url)})
    values = spi_values(5, "stop")

    async with running_worker(settings) as running:
        await running.worker.assigned.wait()
        await asyncio.to_thread(own_database.halt)
        await publish_raw(settings, settings.topics.auto, values)
        await wait_for(lambda: _not_ready(running.worker))
        running.stop.set()
        # The worker leaves its retry wait at once instead of waiting for the
        # database; the uncommitted batch is handed back.
        await asyncio.wait_for(running.task, 10)
        assert running.worker.counts["stored"] == 0

    await asyncio.to_thread(own_database.resume)
    async with running_worker(settings) as running:
        await running.settle()
    rows = await fetch_all(url, "SELECT count(*) AS n FROM ingest_event")
    assert rows[0]["n"] == 5
    assert await read_topic(settings, settings.topics.dlq) == []


async def _not_ready(worker: object) -> bool:
    return not worker.ready  # type: ignore[attr-defined]
