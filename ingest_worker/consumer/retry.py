"""Redeliver records from the retry topic when they are due.

The retry topic contains records whose failure master data may still fix. Each
carries `ingest.retry.due`. The consumer keeps fetching while records wait, so
a record that is not yet due does not delay the records behind it. Waiting
records are kept in memory, ordered by due time. A partition's offset is committed
up to its oldest record that is still waiting or in flight, so a restart
fetches every unsettled record again; one that was already handled is then a
duplicate by its dedupe key.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import OffsetAndMetadata

from ingest_worker.errors import WorkerStopping
from ingest_worker.failures.headers import RETRY_DUE, header_value
from ingest_worker.kafka import make_consumer
from ingest_worker.mapping import parse_rfc3339

if TYPE_CHECKING:
    from ingest_worker.consumer.batch import RecordOutcome
    from ingest_worker.consumer.worker import Worker

log = structlog.get_logger(__name__)

# Waiting records kept in memory before fetching pauses.
MAX_WAITING_RECORDS = 100_000


def due_time(record: ConsumerRecord[bytes, bytes]) -> float:
    """Return when the record is due, as epoch seconds; now if unknown."""
    text = header_value(record.headers or (), RETRY_DUE)
    if text is not None:
        try:
            return parse_rfc3339(text).timestamp()
        except ValueError:
            log.warning(
                "retry record has an invalid due time; delivering it now",
                due=text,
                partition=record.partition,
                offset=record.offset,
            )
    return time.time()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, retries: RetryConsumer) -> None:
        self._retries = retries

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self._retries.cycle_lock:
            self._retries.forget(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info(
            "retry partitions assigned",
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned),
        )


class RetryConsumer:
    """Reads the retry topic and judges each record again once it is due."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        settings = worker.settings
        self.topic = settings.topics.retry
        self.group_id = f"{settings.group_id}.retry"
        self.consumer = make_consumer(settings, group_id=self.group_id)
        self.cycle_lock = asyncio.Lock()
        self.counts: Counter[str] = Counter()
        self._order = itertools.count()
        self._waiting: list[tuple[float, int, ConsumerRecord[bytes, bytes]]] = []
        # Per partition: offsets fetched but not settled, and the next offset
        # after the newest fetched record.
        self._unsettled: dict[TopicPartition, set[int]] = {}
        self._fetched_to: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._paused = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))

    async def stop(self) -> None:
        await self.consumer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.run_cycle()

    async def run_cycle(self) -> None:
        settings = self._worker.settings
        timeout_ms = settings.poll_timeout_ms
        if self._waiting:
            until_due_ms = (self._waiting[0][0] - time.time()) * 1000
            timeout_ms = int(min(timeout_ms, max(0.0, until_due_ms)))
        self._pause_when_full()
        fetched = await self.consumer.getmany(
            timeout_ms=timeout_ms, max_records=settings.max_batch_records
        )
        async with self.cycle_lock:
            for tp, records in fetched.items():
                for record in records:
                    heapq.heappush(
                        self._waiting, (due_time(record), next(self._order), record)
                    )
                    self._unsettled.setdefault(tp, set()).add(record.offset)
                    self._fetched_to[tp] = record.offset + 1

            due = self._take_due(settings.max_batch_records)
            if not due:
                if fetched:
                    await self._commit([])
                return
            started = time.perf_counter()
            try:
                outcomes = await self._worker.process_until_done(due)
                await self._worker.settle(outcomes, self._commit)
            except WorkerStopping:
                # Not committed: the records are read again after a restart.
                return
            self._worker.metrics.batch_settled(outcomes, time.perf_counter() - started)
            verdicts = Counter(outcome.verdict for outcome in outcomes)
            self.counts.update(verdicts)
            self._worker.counts.update(verdicts)
            log.info("retry batch settled", records=len(due), **dict(verdicts))

    def _take_due(self, limit: int) -> list[ConsumerRecord[bytes, bytes]]:
        now = time.time()
        due: list[ConsumerRecord[bytes, bytes]] = []
        while self._waiting and self._waiting[0][0] <= now and len(due) < limit:
            due.append(heapq.heappop(self._waiting)[2])
        return due

    def _pause_when_full(self) -> None:
        assignment = self.consumer.assignment()
        full = len(self._waiting) >= MAX_WAITING_RECORDS
        if full and not self._paused:
            self.consumer.pause(*assignment)
            self._paused = True
            log.warning("retry fetching paused; too many records waiting")
        elif not full and self._paused:
            self.consumer.resume(*assignment)
            self._paused = False

    async def _commit(self, outcomes: list[RecordOutcome]) -> None:
        for outcome in outcomes:
            tp = TopicPartition(outcome.record.topic, outcome.record.partition)
            self._unsettled.get(tp, set()).discard(outcome.record.offset)
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, fetched_to in self._fetched_to.items():
            unsettled = self._unsettled.get(tp)
            target = min(unsettled) if unsettled else fetched_to
            if target > self._committed.get(tp, -1):
                offsets[tp] = OffsetAndMetadata(target, "")
        if offsets:
            await self.consumer.commit(offsets)
            for tp, meta in offsets.items():
                self._committed[tp] = meta.offset

    def forget(self, revoked: set[TopicPartition]) -> None:
        """Drop what is known of revoked partitions; their new owner reads them."""
        self._waiting = [item for item in self._waiting if _tp(item[2]) not in revoked]
        heapq.heapify(self._waiting)
        for tp in revoked:
            self._unsettled.pop(tp, None)
            self._fetched_to.pop(tp, None)
            self._committed.pop(tp, None)
        if revoked:
            log.info(
                "retry partitions revoked",
                partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked),
                at=datetime.now(UTC).isoformat(),
            )


def _tp(record: ConsumerRecord[bytes, bytes]) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)
