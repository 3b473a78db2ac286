"""Send rejected records to the retry topic or the dead-letter topic."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError

from ingest_worker.errors import RecordRejected
from ingest_worker.failures.headers import (
    ATTEMPT,
    RETRY_DUE,
    VALUE_DROPPED,
    VALUE_SHA256,
    VALUE_SIZE,
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

    async def send(self, failures: Sequence[Failure]) -> None:
        """Send every failure and wait until the broker acknowledged each one."""
        if not failures:
            return
        now = datetime.now(UTC)
        routed: list[tuple[str, str]] = []
        pending = []
        for record, error, ids in failures:
            topic, headers = self.destination(record, error, now)
            log.warning(
                "record sent to retry"
                if topic == self._settings.topics.retry
                else "record dead-lettered",
                code=str(error.code),
                error=error.message,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                to_topic=topic,
                **ids,
            )
            pending.append(self._send_one(topic, record, headers))
            routed.append((topic, str(error.code)))
        await asyncio.gather(*pending)
        self.sent.update(routed)
        if self._metrics is not None:
            for topic, code in routed:
                self._metrics.failure_routed(topic == self._settings.topics.retry, code)

    async def _send_one(
        self, topic: str, record: ConsumerRecord[bytes, bytes], headers: Headers
    ) -> None:
        try:
            await self._producer.send_and_wait(
                topic, value=record.value, key=record.key, headers=headers
            )
        except (MessageSizeTooLargeError, RecordTooLargeError) as error:
            # The broker rejects a record this large. Keeping it back would
            # stall the partition for good, so the record goes on without its
            # value, and its headers record the size and hash of what was dropped.
            value = record.value or b""
            log.error(
                "record too large for the failure topic; sending it without value",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                size=len(value),
                error=repr(error),
            )
            dropped = [
                *headers,
                (VALUE_DROPPED, b"true"),
                (VALUE_SIZE, str(len(value)).encode()),
                (VALUE_SHA256, hashlib.sha256(value).hexdigest().encode()),
            ]
            await self._producer.send_and_wait(
                topic, value=None, key=record.key, headers=dropped
            )
