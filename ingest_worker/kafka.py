"""Kafka clients built from the settings."""

from __future__ import annotations

import contextlib

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ingest_worker.settings import Settings

_MAX_REQUEST_BYTES = 64 * 1024 * 1024


def make_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **settings.kafka.client_options(),
        acks="all",
        enable_idempotence=settings.kafka.enable_idempotence,
        linger_ms=5,
        # Failed records go back byte for byte, however large the input topic
        # let them be; the broker's own limit still applies.
        max_request_size=_MAX_REQUEST_BYTES,
    )


def make_consumer(settings: Settings, group_id: str | None = None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **settings.kafka.client_options(),
        group_id=group_id or settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        # How long the broker may hold a fetch while no record is ready. Kafka
        # returns as soon as one is, but a broker that always waits the full
        # time adds it to every record's latency, so the wait is kept short.
        fetch_max_wait_ms=100,
        heartbeat_interval_ms=max(100, settings.session_timeout_ms // 6),
        isolation_level="read_uncommitted",
        max_partition_fetch_bytes=settings.limits.max_value_bytes + 64 * 1024,
        fetch_max_bytes=max(52_428_800, settings.limits.max_value_bytes * 2),
    )


async def ensure_topics(
    settings: Settings, partitions: int = 3, replication_factor: int = 1
) -> list[str]:
    """Create the configured topics that do not exist yet; return the new ones."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            name for name in settings.topics.all_topics() if name not in existing
        ]
        if missing:
            # Another process may create them meanwhile.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name, partitions, replication_factor) for name in missing]
                )
        return missing
    finally:
        await admin.close()


async def end_positions(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Return the offset after the last record of each partition.

    NOTE: the embedded broker (Tansu 0.6.0) returns, for the end-offset
    request, the offset after the first record of the last record batch. That
    is too small after a batch of several records. The high watermark of the
    latest fetch response is right, so the larger of the two is taken.
    """
    ends = await consumer.end_offsets(partitions)
    positions: dict[TopicPartition, int] = {}
    for tp in partitions:
        highwater = consumer.highwater(tp)
        positions[tp] = max(ends[tp], highwater if highwater is not None else 0)
    return positions
