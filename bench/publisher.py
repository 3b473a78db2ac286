"""Publish benchmark records: as fast as possible, or paced at a steady rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from ingest_worker.settings import Settings

# Futures awaited together; bounds the memory of records in flight.
_WINDOW = 5_000
PROGRESS_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class PublishResult:
    records: int
    bytes: int
    duration_s: float

    @property
    def rate(self) -> float:
        return self.records / self.duration_s if self.duration_s > 0 else 0.0


def _producer(settings: Settings, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **settings.kafka.client_options(),
        acks="all",
        enable_idempotence=settings.kafka.enable_idempotence,
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )


async def publish_bulk(
    settings: Settings,
    records: Iterable[Outgoing],
    total: int,
    progress: Callable[[str], None],
    label: str,
) -> PublishResult:
    """Send the records with batching and wait until the broker acknowledged all."""
    producer = _producer(settings, linger_ms=20)
    await producer.start()
    started = time.monotonic()
    next_report = started + PROGRESS_INTERVAL_S
    sent = size = 0
    pending: list[asyncio.Future[object]] = []
    try:
        for record in records:
            pending.append(
                await producer.send(record.topic, record.value, key=record.key)
            )
            sent += 1
            size += len(record.value)
            if len(pending) >= _WINDOW:
                await asyncio.gather(*pending)
                pending.clear()
                if time.monotonic() >= next_report:
                    progress(f"publishing {label}: {sent:,} of {total:,} records")
                    next_report = time.monotonic() + PROGRESS_INTERVAL_S
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return PublishResult(sent, size, time.monotonic() - started)


async def publish_paced(
    settings: Settings, records: list[Outgoing], rate: float
) -> PublishResult:
    """Send the records at `rate` records per second on a fixed schedule.

    Record i is sent at start + i / rate. After a stall the sender catches up
    in a burst, so the average rate stays `rate`. The producer does not
    linger, as a station sending one result at a time would not.
    """
    producer = _producer(settings, linger_ms=0)
    await producer.start()
    pending: list[asyncio.Future[object]] = []
    size = 0
    try:
        started = time.monotonic()
        for index, record in enumerate(records):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(
                await producer.send(record.topic, record.value, key=record.key)
            )
            size += len(record.value)
        # The achieved rate: records per second of sending, one interval per
        # record, so a perfect schedule gives exactly `rate`.
        duration = time.monotonic() - started + 1 / rate
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return PublishResult(len(records), size, duration)
