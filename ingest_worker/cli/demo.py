"""`ingest-worker demo`: the sample line end to end on the embedded services."""

from __future__ import annotations

import asyncio
import os
import sys
from importlib import resources
from pathlib import Path

import orjson

from ingest_worker.consumer.worker import Worker, wait_until_settled
from ingest_worker.embedded import embedded_services
from ingest_worker.kafka import ensure_topics, make_producer
from ingest_worker.publish import plan_records, publish_records, read_lines
from ingest_worker.settings import load_settings
from ingest_worker.storage.database import create_pool
from ingest_worker.storage.migrations import migrate
from ingest_worker.storage.seed import load_factory, seed_factory
from ingest_worker.trace.query import trace_unit

DEMO_SN = "SN-2026-01001"
_SETTLE_TIMEOUT_S = 30.0
# The washer names its basket in the payload; it is the key of BATCH records.
_KEY_PATHS = {"30-wash.jsonl": "payload.basket"}


def _samples() -> Path:
    return Path(str(resources.files("ingest_worker").joinpath("samples")))


async def demo_command() -> int:
    samples = _samples()
    out = sys.stdout
    with embedded_services(dict(os.environ)) as services:
        settings = load_settings({**os.environ, **services.environment()})
        out.write(f"broker   {services.bootstrap_servers}\n")
        pool = await create_pool(services.database_url)
        try:
            async with pool.acquire() as connection:
                await migrate(connection)
                report = await seed_factory(
                    connection, load_factory(samples / "factory.yaml")
                )
            out.write(f"seeded   {report.summary()}\n")
            await ensure_topics(settings)
            worker = Worker(settings, pool)
            await worker.start()
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            producer = make_producer(settings)
            await producer.start()
            try:
                for path in sorted((samples / "events").glob("*.jsonl")):
                    before = dict(worker.counts)
                    published = await publish_records(
                        producer,
                        plan_records(
                            read_lines(path),
                            settings,
                            key_path=_KEY_PATHS.get(path.name),
                        ),
                    )
                    await wait_until_settled(worker, running, _SETTLE_TIMEOUT_S)
                    changes = {
                        verdict: count - before.get(verdict, 0)
                        for verdict, count in worker.counts.items()
                        if count - before.get(verdict, 0)
                    }
                    total = sum(published.published.values())
                    out.write(f"stage    {path.name}: {total} published, {changes}\n")
            finally:
                await producer.stop()
                stop.set()
                await running
                await worker.stop()

            async with pool.acquire() as connection:
                trace = await trace_unit(connection, DEMO_SN)
                rows = await connection.fetch(
                    "SELECT sn, status, current_step_no FROM unit ORDER BY sn"
                )
            out.write(f"\nTrace of {DEMO_SN}:\n")
            out.write(
                orjson.dumps(
                    {"ok": True, "data": trace}, option=orjson.OPT_INDENT_2
                ).decode()
            )
            out.write("\n\nUnits:\n")
            for row in rows:
                status, step = row["status"], row["current_step_no"]
                out.write(f"  {row['sn']}  {status:<11} step {step}\n")
            rejected = ", ".join(
                f"{code} x{count}"
                for (topic, code), count in sorted(worker.router.sent.items())
                if topic == settings.topics.dlq
            )
            out.write(f"\nDead letters: {rejected or 'none'}\n")
        finally:
            await pool.close()
    return 0
