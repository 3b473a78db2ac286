"""The worker: fetch a batch, judge and store it, settle every record, commit.

Each cycle:

1. Fetch up to `max_batch_records` records from the assigned input partitions.
2. Judge and write them in one database transaction (`BatchProcessor`). A
   database fault keeps the records in memory and retries them after a backoff,
   so nothing is skipped.
3. Send the rejected records to the retry topic (deferrable codes with
   attempts left) or the dead-letter topic, and wait for the broker to
   acknowledge every one.
4. Commit the offsets after the last record of each partition. Only now is the
   batch settled: a crash before this point redelivers the records, which the
   dedupe keys turn into duplicates without effect.

A rebalance waits for the cycle in flight, so revoked partitions are committed
up to what was settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from ingest_worker.consumer.batch import (
    BatchProcessor,
    RecordOutcome,
    merge_in_time_order,
)
from ingest_worker.consumer.retry import RetryConsumer
from ingest_worker.errors import InfrastructureError, WorkerStopping
from ingest_worker.failures.router import FailureRouter
from ingest_worker.kafka import end_positions, make_consumer, make_producer
from ingest_worker.outbox.relay import OutboxRelay
from ingest_worker.service.metrics import WorkerMetrics
from ingest_worker.settings import Settings

log = structlog.get_logger(__name__)

_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Waits until the cycle in flight has committed what it settled.
        async with self._worker.cycle_lock:
            self._worker.forget_prefetched(set(revoked))
            log.info("partitions revoked", partitions=_names(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", partitions=_names(assigned))
        self._worker.assigned.set()


def _names(partitions: Any) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def tune_garbage_collector() -> None:
    """Keep the objects of start-up out of later garbage collections.

    The first-generation threshold stays at its default: raising it let
    cyclic garbage raise peak memory with the length of a run (mixed
    benchmark, 20,000 units: 100 MiB at the default, 236 MiB at 50,000)
    without a lasting gain in speed.
    """
    gc.collect()
    gc.freeze()


class Worker:
    """Consumes the input topics, and the retry topic when due, until stopped."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.pool = pool
        self.processor = BatchProcessor(pool, settings)
        self.consumer: AIOKafkaConsumer = make_consumer(settings)
        self.producer: AIOKafkaProducer = make_producer(settings)
        self.cycle_lock = asyncio.Lock()
        self.assigned = asyncio.Event()
        self.ready = False
        self.router = FailureRouter(self.producer, settings, self.metrics)
        self.counts: Counter[str] = Counter()
        self._prefetched: list[ConsumerRecord[bytes, bytes]] = []
        self._stop = asyncio.Event()
        self.retries = RetryConsumer(self)
        self.relay = OutboxRelay(pool, self.producer, settings)

    async def start(self) -> None:
        """Connect to the broker; raise InfrastructureError if it is unreachable.

        A failed start stops the clients it started, so it may be tried again
        on a new Worker.
        """
        tune_garbage_collector()
        try:
            await self.producer.start()
            await self.consumer.start()
            topics = list(self.settings.topics.input_topics())
            self.consumer.subscribe(topics, listener=_Rebalance(self))
            await self.retries.start()
        except KafkaError as error:
            await self.retries.stop()
            await self.consumer.stop()
            await self.producer.stop()
            raise InfrastructureError(
                f"cannot reach the broker at {self.settings.kafka.bootstrap_servers}: "
                f"{type(error).__name__}"
            ) from error
        log.info("worker started", topics=topics, group_id=self.settings.group_id)

    async def stop(self) -> None:
        await self.retries.stop()
        await self.consumer.stop()
        await self.producer.stop()
        log.info("worker stopped", **dict(self.counts))

    async def run(self, stop: asyncio.Event) -> None:
        """Run cycles until `stop` is set; the cycles in flight finish first.

        The retry consumer and the outbox relay run beside the input consumer;
        an error in any of them stops all and is raised here.
        """
        self._stop = stop
        helpers = [
            asyncio.create_task(self.retries.run(stop), name="retry-consumer"),
            asyncio.create_task(self.relay.run(stop), name="outbox-relay"),
        ]
        try:
            while not stop.is_set():
                for task in helpers:
                    if task.done():
                        task.result()
                await self.run_cycle()
        finally:
            for task in helpers:
                if not stop.is_set():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def run_cycle(self) -> int:
        """Fetch, process and settle one batch; return the number of records.

        While the batch waits on the database, the records the consumer has
        already buffered are taken and decoded, so the next cycle starts with
        them. Records taken that way but not yet processed when the worker
        stops are not committed, so the next owner of their partitions reads
        them again.
        """
        if not self._prefetched:
            self._prefetched = await self._fetch(self.settings.poll_timeout_ms)
        # The records wait in `_prefetched` until the lock is held, so a
        # revocation that runs first drops those of the partitions it takes.
        async with self.cycle_lock:
            records = self._prefetched
            self._prefetched = []
            if not records:
                self._set_ready(True)
                return 0
            started = time.perf_counter()
            processing = asyncio.create_task(self.process_until_done(records))
            ahead: asyncio.Task[None] | None = None
            try:
                try:
                    # Let the batch take its decoded records and reach the
                    # database before the next batch is decoded.
                    await asyncio.sleep(0)
                    self._prefetched = await self._fetch(0)
                    await self.processor.decode_ahead(self._prefetched)
                    ahead = asyncio.create_task(
                        self.processor.judge_ahead(self._prefetched)
                    )
                finally:
                    try:
                        outcomes = await processing
                    finally:
                        await self._finish_ahead(ahead, processing)
                written = time.perf_counter()
                await self.settle(outcomes, self._commit)
            except WorkerStopping:
                log.info(
                    "stopped while the database or broker was away; the batch "
                    "is not committed and will be read again",
                    records=len(records),
                )
                return 0
            duration_s = time.perf_counter() - started
            self.metrics.batch_settled(outcomes, duration_s)
            verdicts = Counter(outcome.verdict for outcome in outcomes)
            self.counts.update(verdicts)
            log.info(
                "batch settled",
                records=len(records),
                duration_ms=round(duration_s * 1000, 1),
                settle_ms=round((time.perf_counter() - written) * 1000, 1),
                **dict(verdicts),
            )
        return len(records)

    async def _finish_ahead(
        self, ahead: asyncio.Task[None] | None, processing: asyncio.Task[Any]
    ) -> None:
        """Wait for the next batch's judging unless the worker stops or failed.

        A stop cancels the judging at once, even while it waits on the
        database. A cancellation of the cycle itself still propagates.
        """
        if ahead is None:
            return
        try:
            failed = (
                not processing.done()
                or processing.cancelled()
                or processing.exception() is not None
            )
            if not failed and not self._stop.is_set():
                stopping = asyncio.create_task(self._stop.wait())
                try:
                    await asyncio.wait(
                        {ahead, stopping}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    stopping.cancel()
        finally:
            if not ahead.done():
                ahead.cancel()
                # asyncio.wait neither raises the judging's cancellation nor
                # hides one aimed at this cycle.
                await asyncio.wait({ahead})

    async def process_until_done(
        self, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[RecordOutcome]:
        delay = _BACKOFF_FIRST_S
        while True:
            try:
                outcomes = await self.processor.process(records)
            except InfrastructureError as error:
                self._set_ready(False)
                pause = random.uniform(delay / 2, delay)
                log.warning(
                    "database unavailable; retrying the batch",
                    error=str(error),
                    records=len(records),
                    retry_in_s=round(pause, 2),
                )
                await self.pause_unless_stopped(pause)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                continue
            self._set_ready(True)
            return outcomes

    async def settle(
        self,
        outcomes: list[RecordOutcome],
        commit: Callable[[list[RecordOutcome]], Awaitable[None]],
    ) -> None:
        """Send the failures, then commit; retry both while the broker is away."""
        rejected = [outcome for outcome in outcomes if outcome.verdict == "rejected"]
        delay = _BACKOFF_FIRST_S
        while True:
            try:
                await self._send_failures(rejected)
                rejected = []
                await commit(outcomes)
                return
            except (CommitFailedError, IllegalStateError) as error:
                # The partitions moved to another member, which reads these
                # records again; the dedupe keys make that harmless.
                log.warning("offset commit lost to a rebalance", error=repr(error))
                return
            except KafkaError as error:
                self._set_ready(False)
                pause = random.uniform(delay / 2, delay)
                log.warning(
                    "broker unavailable; retrying the settlement",
                    error=repr(error),
                    retry_in_s=round(pause, 2),
                )
                await self.pause_unless_stopped(pause)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _send_failures(self, rejected: list[RecordOutcome]) -> None:
        failures = []
        for outcome in rejected:
            assert outcome.error is not None
            ids: dict[str, object] = {}
            if outcome.envelope is not None:
                ids = {
                    "source_system": outcome.envelope.source_system,
                    "dedupe_key": outcome.envelope.dedupe_key,
                }
            failures.append((outcome.record, outcome.error, ids))
        await self.router.send(failures)

    async def _commit(self, outcomes: list[RecordOutcome]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for outcome in outcomes:
            record = outcome.record
            tp = TopicPartition(record.topic, record.partition)
            next_offset = record.offset + 1
            if tp not in offsets or offsets[tp].offset < next_offset:
                offsets[tp] = OffsetAndMetadata(next_offset, "")
        await self.consumer.commit(offsets)

    async def _fetch(self, timeout_ms: int) -> list[ConsumerRecord[bytes, bytes]]:
        fetched = await self.consumer.getmany(
            timeout_ms=timeout_ms, max_records=self.settings.max_batch_records
        )
        return merge_in_time_order(fetched)

    def forget_prefetched(self, revoked: set[TopicPartition]) -> None:
        """Drop fetched records of partitions that moved to another member."""
        self._prefetched = [
            record
            for record in self._prefetched
            if TopicPartition(record.topic, record.partition) not in revoked
        ]
        self.processor.forget_ahead()

    async def pause_unless_stopped(self, seconds: float) -> None:
        """Wait before a retry; raise WorkerStopping if a stop comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        if self._stop.is_set():
            raise WorkerStopping

    def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.metrics.ready.set(1 if ready else 0)

    async def lag(self) -> int:
        """Return the records not yet committed on the assigned partitions."""
        assignment = self.consumer.assignment()
        if not assignment:
            return 0
        ends = await end_positions(self.consumer, list(assignment))
        total = 0
        for tp in assignment:
            committed = await self.consumer.committed(tp)
            total += max(0, ends[tp] - (committed or 0))
        return total


async def wait_until_settled(
    worker: Worker, running: asyncio.Task[None], timeout_s: float
) -> None:
    """Wait until every record on the assigned partitions is committed."""
    deadline = time.monotonic() + timeout_s
    await asyncio.wait_for(worker.assigned.wait(), timeout_s)
    while await worker.lag() > 0:
        if running.done():
            running.result()  # raises the worker's error
            raise RuntimeError("the worker stopped before the records settled")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not settle within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)
