"""Helpers for tests that run the worker against the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from ingest_worker.consumer.worker import Worker, wait_until_settled
from ingest_worker.kafka import make_producer
from ingest_worker.publish import plan_records, publish_records, read_lines
from ingest_worker.settings import Settings
from ingest_worker.storage.database import connect, create_pool
from ingest_worker.storage.seed import load_factory, parse_factory, seed_factory

SAMPLES = Path(str(resources.files("ingest_worker").joinpath("samples")))
EVENT_FILES = sorted((SAMPLES / "events").glob("*.jsonl"))
KEY_PATHS = {"30-wash.jsonl": "payload.basket"}
SETTLE_TIMEOUT_S = 30.0
# The command of the environment that runs the tests.
INGEST_WORKER = str(Path(sys.executable).parent / "ingest-worker")


async def seed_sample(
    database_url: str, document: dict[str, Any] | None = None
) -> None:
    """Seed the sample factory, or the given factory document."""
    factory = (
        parse_factory(document)
        if document is not None
        else load_factory(SAMPLES / "factory.yaml")
    )
    connection = await connect(database_url)
    try:
        await seed_factory(connection, factory)
    finally:
        await connection.close()


async def publish_file(settings: Settings, path: Path) -> int:
    producer = make_producer(settings)
    await producer.start()
    try:
        report = await publish_records(
            producer,
            plan_records(read_lines(path), settings, key_path=KEY_PATHS.get(path.name)),
        )
    finally:
        await producer.stop()
    assert not report.skipped, report.skipped
    return sum(report.published.values())


async def publish_raw(
    settings: Settings,
    topic: str,
    values: Sequence[bytes | None],
    *,
    key: bytes | None = b"key",
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Send values as they are, valid or not."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


@dataclass
class RunningWorker:
    worker: Worker
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        await wait_until_settled(self.worker, self.task, timeout_s)


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, worker_class: type[Worker] = Worker
) -> AsyncIterator[RunningWorker]:
    """Run a worker in the background; stop it cleanly on exit."""
    pool = await create_pool(settings.require_database_url())
    worker = worker_class(settings, pool)
    await worker.start()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield RunningWorker(worker, task, stop)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await worker.stop()
        await pool.close()


async def read_topic(
    settings: Settings, topic: str
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read every record on a topic from the start, without a consumer group."""
    consumer = AIOKafkaConsumer(
        **settings.kafka.client_options(), enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while True:
            behind = [tp for tp in assigned if await consumer.position(tp) < ends[tp]]
            if not behind:
                return records
            fetched = await consumer.getmany(*behind, timeout_ms=500)
            for batch in fetched.values():
                records.extend(batch)
    finally:
        await consumer.stop()


async def fetch_all(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await connect(database_url)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {key: value.decode() for key, value in record.headers}


async def wait_for(check: Any, timeout_s: float = SETTLE_TIMEOUT_S) -> Any:
    """Poll an async check until it returns a true value; return that value."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


def sample_factory() -> dict[str, Any]:
    """Return the sample factory as a document that a test may change."""
    import yaml

    return yaml.safe_load((SAMPLES / "factory.yaml").read_text(encoding="utf-8"))


def cli_environment(settings: Settings) -> dict[str, str]:
    """Return the environment that points a command at the test's servers."""
    topics = settings.topics
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka.bootstrap_servers),
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "INGEST_GROUP_ID": settings.group_id,
        "INGEST_TOPIC_AUTO": topics.auto,
        "INGEST_TOPIC_BATCH": topics.batch,
        "INGEST_TOPIC_TEST": topics.test,
        "INGEST_TOPIC_RETRY": topics.retry,
        "INGEST_TOPIC_DLQ": topics.dlq,
        "INGEST_TOPIC_NORMALIZED": topics.normalized,
        "INGEST_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "LOG_FORMAT": "json",
    }
    if settings.database_url is not None:
        environment["DATABASE_URL"] = settings.database_url.get_secret_value()
    return environment


def spi_values(count: int, tag: str) -> list[bytes]:
    """Return `count` sample SPI envelopes for serials SN-2026-01001 onwards."""
    lines = (SAMPLES / "events" / "10-spi.jsonl").read_bytes().splitlines()
    template = orjson.loads(lines[0])
    values = []
    for index in range(count):
        sn = f"SN-2026-{1001 + index:05d}"
        template["dedupeKey"] = f"SPI-A1-{tag}-{index}"
        template["sn"] = sn
        template["payload"]["board"]["barcode"] = sn
        values.append(orjson.dumps(template))
    return values
