"""A second worker joins mid-stream: nothing is skipped or stored twice."""

from __future__ import annotations

import asyncio

import pytest

from ingest_worker.kafka import make_producer
from ingest_worker.settings import Settings
from tests.integration.support import (
    fetch_all,
    read_topic,
    running_worker,
    sample_factory,
    seed_sample,
    spi_values,
    wait_for,
)

pytestmark = pytest.mark.integration

UNITS = 400


async def _stored_at_least(running: object, count: int) -> bool:
    return running.worker.counts["stored"] >= count  # type: ignore[attr-defined]


async def test_second_worker_joins_mid_stream(settings: Settings) -> None:
    database_url = settings.require_database_url()
    factory = sample_factory()
    factory["units"][0]["snRange"]["to"] = 1000 + UNITS
    await seed_sample(database_url, factory)
    values = spi_values(UNITS, "rebalance")
    settings = settings.model_copy(update={"max_batch_records": 20})

    second_joined = asyncio.Event()

    async def publish_slowly() -> None:
        # The first half flows while the second worker joins; the second half
        # only once it has partitions, so both workers get records. Records are
        # keyed by serial, as stations do, so they spread over the partitions.
        producer = make_producer(settings)
        await producer.start()
        try:
            for index, value in enumerate(values):
                if index == UNITS // 2:
                    await asyncio.wait_for(second_joined.wait(), 60)
                key = f"SN-2026-{1001 + index:05d}".encode()
                await producer.send_and_wait(settings.topics.auto, value, key=key)
                if index % 10 == 9:
                    await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    async with running_worker(settings) as first:
        await asyncio.wait_for(first.worker.assigned.wait(), 30)
        publishing = asyncio.create_task(publish_slowly())
        await wait_for(lambda: _stored_at_least(first, 30))
        async with running_worker(settings) as second:
            await asyncio.wait_for(second.worker.assigned.wait(), 60)
            second_joined.set()
            await publishing
            await second.settle(timeout_s=60)
            await first.settle(timeout_s=60)
            handled = first.worker.counts["stored"] + second.worker.counts["stored"]
            assert second.worker.counts["stored"] > 0
            assert first.worker.counts["stored"] > 0

    rows = await fetch_all(
        database_url,
        "SELECT count(*) AS n, count(DISTINCT dedupe_key) AS keys FROM ingest_event",
    )
    assert rows[0]["n"] == UNITS
    assert rows[0]["keys"] == UNITS
    assert handled == UNITS
    assert await read_topic(settings, settings.topics.dlq) == []
    moved = await fetch_all(
        database_url, "SELECT count(*) AS n FROM unit WHERE current_step_no = 20"
    )
    assert moved[0]["n"] == UNITS
