"""Send rejected records to the retry topic or the dead-letter topic."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord

from ingest_worker.errors import RecordRejected
from ingest_worker.failures.headers import (
    ATTEMPT,
    RETRY_DUE,
    Headers,
    failure_headers,
    int_header,
)
from ingest_worker.mapping import format_utc
from ingest_worker.service.metrics import WorkerMetrics
from ingest_worker.settings import Settings

log = structlog.get_logger(__name__)

# A rejected record, its error, and the ids to log with it.
Failure = tuple[ConsumerRecord[bytes, bytes], RecordRejected, dict[str, object]]


class FailureRouter:
    """Decide where each rejected record goes and send it there.

    A deferrable code (master data may still catch up) goes to the retry topic
    while scheduled attempts remain: the n-th failure waits the n-th entry of
    the retry schedule. Everything else, and a deferrable record after its last
    scheduled attempt, goes to the dead-letter topic.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: Settings,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._producer = producer
        self._settings = settings
        self._metrics = metrics
        self.sent: Counter[tuple[str, str]] = Counter()

    def destination(
        self,
        record: ConsumerRecord[bytes, bytes],
        error: RecordRejected,
        now: datetime,
    ) -> tuple[str, Headers]:
        topics = self._settings.topics
        headers = failure_headers(
            record, error, retry_topic=topics.retry, failed_at=now
        )
        attempt = int_header(headers, ATTEMPT, 1)
        delays = self._settings.retry_delays_s
        if error.code in self._settings.deferrable_codes and attempt <= len(delays):
            due = now + timedelta(seconds=delays[attempt - 1])
            headers.append((RETRY_DUE, format_utc(due).encode()))
            return topics.retry, headers
        return topics.dlq, headers

    async def send(
        self,
        failures: Sequence[
            tuple[ConsumerRecord[bytes, bytes], RecordRejected, dict[str, object]]
        ],
    ) -> None:
        """Send every failure and wait until the broker acknowledged each one.

        Each item is the record, its error and the ids to log with it.
        """
        if not failures:
            return
        now = datetime.now(UTC)
        pending = []
        routed: list[tuple[str, str]] = []
        for record, error, ids in failures:
            topic, headers = self.destination(record, error, now)
            retried = topic == self._settings.topics.retry
            log.warning(
                "record sent to retry" if retried else "record dead-lettered",
                code=str(error.code),
                error=error.message,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                to_topic=topic,
                **ids,
            )
            pending.append(
                await self._producer.send(
                    topic, value=record.value, key=record.key, headers=headers
                )
            )
            routed.append((topic, str(error.code)))
        await asyncio.gather(*pending)
        self.sent.update(routed)
        if self._metrics is not None:
            for topic, code in routed:
                self._metrics.failure_routed(topic == self._settings.topics.retry, code)
