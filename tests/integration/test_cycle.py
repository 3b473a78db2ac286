"""The worker's cycle around the batch judged ahead: stops and cancellations."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ingest_worker.consumer import batch as batch_module
from ingest_worker.consumer.worker import Worker
from ingest_worker.settings import Settings
from ingest_worker.storage.database import connect, create_pool
from ingest_worker.storage.floor import FloorLoader
from tests.integration.support import EVENT_FILES, publish_file, seed_sample

pytestmark = pytest.mark.integration


async def test_stop_ends_blocked_judging(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    settings = settings.model_copy(update={"max_batch_records": 3})
    stop = asyncio.Event()
    locked = asyncio.Event()
    release = asyncio.Event()
    lockers: list[asyncio.Task[None]] = []

    async def hold_unit_table() -> None:
        # Another session, such as a migration, locks the unit table.
        connection = await connect(database_url)
        try:
            async with connection.transaction():
                await connection.execute("LOCK TABLE unit IN ACCESS EXCLUSIVE MODE")
                locked.set()
                await release.wait()
        finally:
            await connection.close()

    class BlockedLoader(FloorLoader):
        """Blocks the first judging ahead on the lock, then sets the stop."""

        async def load(self, connection: Any, work: Any, **options: Any) -> Any:
            if options.get("pace") and not lockers:
                lockers.append(asyncio.create_task(hold_unit_table()))
                await locked.wait()
                stop.set()
            return await super().load(connection, work, **options)

    monkeypatch.setattr(batch_module, "FloorLoader", BlockedLoader)
    pool = await create_pool(database_url)
    worker = Worker(settings, pool)
    await worker.start()
    try:
        await publish_file(settings, EVENT_FILES[0])
        running = asyncio.create_task(worker.run(stop))
        done, _ = await asyncio.wait({running}, timeout=60)
        # The worker returned while the lock was still held.
        assert running in done
        assert not release.is_set()
        running.result()
    finally:
        release.set()
        for task in lockers:
            await task
        await worker.stop()
        await pool.close()
    assert lockers


async def test_cycle_cancel_not_swallowed(settings: Settings) -> None:
    pool = await create_pool(settings.require_database_url())
    worker = Worker(settings, pool)
    try:
        processing = asyncio.get_running_loop().create_future()
        processing.set_result([])
        ahead = asyncio.create_task(asyncio.sleep(60))

        async def end_of_cycle() -> str:
            await worker._finish_ahead(ahead, processing)  # type: ignore[arg-type]
            return "cycle went on"

        cycle = asyncio.create_task(end_of_cycle())
        await asyncio.sleep(0.05)
        cycle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cycle
        assert ahead.cancelled()
    finally:
        await worker.stop()
        await pool.close()
