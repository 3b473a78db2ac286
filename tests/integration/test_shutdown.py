"""Graceful shutdown of `ingest-worker run` on SIGTERM and SIGINT.

A real worker process consumes a steady stream of SPI events and gets a signal
while the stream is still being published. It must finish or hand back what it
fetched, commit, and exit 0. A second worker in the same consumer group then
stores the rest: every event ends up stored exactly once.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ingest_worker.embedded import free_port
from ingest_worker.kafka import make_producer
from ingest_worker.settings import Settings
from tests.integration.support import (
    SAMPLES,
    fetch_all,
    read_topic,
    running_worker,
    sample_factory,
    seed_sample,
)

pytestmark = pytest.mark.integration

WORKER_COMMAND = Path(sys.executable).parent / "ingest-worker"
SPI_FILE = SAMPLES / "events" / "10-spi.jsonl"
FIRST_SN_NUMBER = 1001
EVENT_COUNT = 2000
# The stream is published in chunks with a pause between them, so that it
# lasts a few seconds and the signal arrives while it still runs.
CHUNK_SIZE = 25
CHUNK_PAUSE_S = 0.05
# The signal is sent once the worker has stored this many events.
STORED_BEFORE_SIGNAL = 200
START_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 15.0


def factory_with_units(count: int) -> dict[str, Any]:
    document = sample_factory()
    document["units"][0]["snRange"]["to"] = FIRST_SN_NUMBER + count - 1
    return document


def stream_envelopes(count: int) -> list[tuple[bytes, bytes]]:
    """Return (key, value) pairs: one SPI event for each of `count` units."""
    template = orjson.loads(SPI_FILE.read_bytes().splitlines()[0])
    records = []
    for index in range(count):
        sn = f"SN-2026-{FIRST_SN_NUMBER + index:05d}"
        envelope = copy.deepcopy(template)
        envelope["dedupeKey"] = f"SPI-A1-STREAM-{index:05d}"
        envelope["sn"] = sn
        envelope["payload"]["board"]["barcode"] = sn
        records.append((sn.encode(), orjson.dumps(envelope)))
    return records


def worker_environment(settings: Settings, http_port: int) -> dict[str, str]:
    # Settings of the surrounding shell must not leak into the worker.
    prefixes = ("INGEST_", "KAFKA_", "DATABASE_URL", "LOG_")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(prefixes)
    }
    assert settings.kafka.bootstrap_servers is not None
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "DATABASE_URL": settings.require_database_url(),
            "INGEST_GROUP_ID": settings.group_id,
            "INGEST_SESSION_TIMEOUT_MS": "3000",
            "INGEST_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "LOG_FORMAT": "json",
        }
    )
    topics = settings.topics
    for suffix, name in {
        "AUTO": topics.auto,
        "BATCH": topics.batch,
        "TEST": topics.test,
        "RETRY": topics.retry,
        "DLQ": topics.dlq,
        "NORMALIZED": topics.normalized,
    }.items():
        env[f"INGEST_TOPIC_{suffix}"] = name
    return env


async def wait_until_ready(
    process: asyncio.subprocess.Process, http_port: int, log_path: Path
) -> None:
    """Poll /readyz of the worker process until it returns 200."""
    url = f"http://127.0.0.1:{http_port}/readyz"
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while True:
            if process.returncode is not None:
                pytest.fail(
                    f"the worker exited with status {process.returncode} before it "
                    f"was ready:\n{log_text(log_path)}"
                )
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the worker was not ready within {START_TIMEOUT_S:.0f} s:\n"
                    f"{log_text(log_path)}"
                )
            await asyncio.sleep(0.1)


class StreamPublisher:
    """Publisher of records in paced chunks, counting the acknowledged ones."""

    def __init__(self, settings: Settings, records: list[tuple[bytes, bytes]]):
        self._settings = settings
        self._records = records
        self.acknowledged = 0

    async def run(self) -> None:
        producer = make_producer(self._settings)
        await producer.start()
        try:
            topic = self._settings.topics.auto
            for start in range(0, len(self._records), CHUNK_SIZE):
                chunk = self._records[start : start + CHUNK_SIZE]
                pending = [
                    await producer.send(topic, value, key=key) for key, value in chunk
                ]
                await asyncio.gather(*pending)
                self.acknowledged += len(chunk)
                await asyncio.sleep(CHUNK_PAUSE_S)
        finally:
            await producer.stop()


async def count_events(database_url: str) -> int:
    rows = await fetch_all(database_url, "SELECT count(*) FROM ingest_event")
    return int(rows[0][0])


def log_text(log_path: Path) -> str:
    return log_path.read_text(encoding="utf-8", errors="replace")


def read_log(log_path: Path) -> list[dict[str, Any]]:
    """Parse the JSON lines of the worker log, skipping any other line."""
    entries = []
    for line in log_text(log_path).splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=lambda signum: signum.name
)
async def test_signal_mid_stream_loses_nothing(
    settings: Settings, tmp_path: Path, signum: signal.Signals
) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url, factory_with_units(EVENT_COUNT))
    records = stream_envelopes(EVENT_COUNT)
    http_port = free_port()
    log_path = tmp_path / "worker.log"

    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            str(WORKER_COMMAND),
            "run",
            env=worker_environment(settings, http_port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    publisher = StreamPublisher(settings, records)
    publishing: asyncio.Task[None] | None = None
    try:
        await wait_until_ready(process, http_port, log_path)
        publishing = asyncio.create_task(publisher.run())
        while await count_events(database_url) < STORED_BEFORE_SIGNAL:
            assert not publishing.done(), "the stream ended before the signal"
            await asyncio.sleep(0.05)
        published_at_signal = publisher.acknowledged
        process.send_signal(signum)
        signalled_at = time.monotonic()
        exit_status = await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
        exit_s = time.monotonic() - signalled_at
        published_at_exit = publisher.acknowledged
        stored_by_first = await count_events(database_url)
        await publishing

        # A second worker in the same group takes over what is left.
        async with running_worker(settings) as running:
            await running.settle()
            counts = dict(running.worker.counts)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if publishing is not None and not publishing.done():
            publishing.cancel()

    log_entries = read_log(log_path)
    events = [entry.get("event") for entry in log_entries]
    assert exit_status == 0, log_text(log_path)
    assert exit_s < EXIT_TIMEOUT_S
    assert "worker stopped" in events, log_text(log_path)
    errors = [entry for entry in log_entries if entry.get("level") == "error"]
    assert errors == []
    # The signal and the exit both came while the stream was still running.
    assert published_at_signal < EVENT_COUNT
    assert published_at_exit < EVENT_COUNT
    assert STORED_BEFORE_SIGNAL <= stored_by_first < EVENT_COUNT

    assert await count_events(database_url) == EVENT_COUNT
    distinct = await fetch_all(
        database_url,
        "SELECT count(DISTINCT (source_system, dedupe_key)) FROM ingest_event",
    )
    assert distinct[0][0] == EVENT_COUNT
    # The first worker committed everything it stored, so nothing comes back
    # to the second one as a duplicate.
    assert counts.get("duplicate", 0) == 0
    assert counts.get("stored", 0) == EVENT_COUNT - stored_by_first
    assert await read_topic(settings, settings.topics.dlq) == []
    assert await read_topic(settings, settings.topics.retry) == []
