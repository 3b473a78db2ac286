"""The worker against PostgreSQL and Kafka in containers, where Docker runs."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from ingest_worker.kafka import ensure_topics
from ingest_worker.settings import Settings
from ingest_worker.storage.database import connect
from ingest_worker.storage.migrations import migrate
from tests.integration.containers import kafka_container, postgres_container
from tests.integration.support import (
    SAMPLES,
    fetch_all,
    publish_file,
    running_worker,
    seed_sample,
)

pytestmark = pytest.mark.integration


async def test_sample_file_twice_in_containers(settings: Settings) -> None:
    with postgres_container() as url, kafka_container() as bootstrap:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
        settings = settings.model_copy(
            update={"database_url": SecretStr(url), "kafka": kafka}
        )
        connection = await connect(url)
        await migrate(connection)
        await connection.close()
        await seed_sample(url)
        await ensure_topics(settings)
        spi = SAMPLES / "events" / "10-spi.jsonl"
        async with running_worker(settings) as running:
            await publish_file(settings, spi)
            await running.settle(timeout_s=120)
            await publish_file(settings, spi)
            await running.settle(timeout_s=120)
        rows = await fetch_all(url, "SELECT count(*) AS n FROM ingest_event")
    assert rows[0]["n"] == 10
