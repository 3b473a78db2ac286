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
