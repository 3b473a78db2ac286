"""Judge and store one fetched batch of records in one database transaction."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import structlog
from aiokafka import ConsumerRecord

from ingest_worker.envelope import Envelope, decode_envelope
from ingest_worker.errors import ErrorCode, InfrastructureError, RecordRejected
from ingest_worker.failures.headers import ORIGIN_TOPIC, header_value
from ingest_worker.rules.decide import Accepted, decide
from ingest_worker.rules.resolution import NormalizeMemo
from ingest_worker.rules.state import ShopFloor
from ingest_worker.settings import Settings
from ingest_worker.storage.database import is_transient
from ingest_worker.storage.floor import FloorLoader
from ingest_worker.storage.writer import BatchRace, Origin, write_batch

log = structlog.get_logger(__name__)

# Records decoded between two yields to the event loop when decoding ahead.
_DECODE_AHEAD_CHUNK = 25

Verdict = Literal["stored", "duplicate", "rejected"]

_EXISTING_SQL = """
SELECT e.source_system, e.dedupe_key, e.content_hash
FROM ingest_event e
JOIN unnest($1::text[], $2::text[]) AS k(source_system, dedupe_key)
  ON e.source_system = k.source_system AND e.dedupe_key = k.dedupe_key
"""


class _Defect(Exception):
    """Processing failed for a reason that retrying the same input won't fix."""


@dataclass(slots=True)
class RecordOutcome:
    """The verdict on one record, with its error or its stored event."""

    record: ConsumerRecord[bytes, bytes]
    verdict: Verdict
    error: RecordRejected | None = None
    envelope: Envelope | None = None
    accepted: Accepted | None = None
    # The normalized event as stored, once the batch is written.
    document: dict[str, Any] | None = None


@dataclass(slots=True)
class _Work:
    record: ConsumerRecord[bytes, bytes]
    envelope: Envelope | None
    error: RecordRejected | None
    memo: NormalizeMemo = field(default_factory=dict)


def merge_in_time_order(
    fetched: dict[Any, list[ConsumerRecord[bytes, bytes]]],
) -> list[ConsumerRecord[bytes, bytes]]:
    """Merge partitions by record timestamp, keeping each partition's order.

    A unit's events reach different topics; judging them in the order the line
    produced them spares needless STEP_NOT_REACHED retries.
    """
    streams = [records for records in fetched.values() if records]
    return list(heapq.merge(*streams, key=lambda record: record.timestamp))


class BatchProcessor:
    """Decode, judge and write fetched records; the caller settles the outcomes."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._loader = FloorLoader()
        self._topic_types = settings.topics.input_topics()
        self._ahead: dict[tuple[str, int, int], _Work] = {}

    async def process(
        self, records: Iterable[ConsumerRecord[bytes, bytes]]
    ) -> list[RecordOutcome]:
        """Return one outcome per record, in the order given.

        Raises InfrastructureError when the database cannot be used; nothing is
        written then, and the caller retries the same records. Any other error
        is a defect: the batch is written again one record at a time, so only
        the records that trip it are rejected with INGEST_INTERNAL_ERROR.
        """
        work = [self._decoded_work(record) for record in records]
        try:
            return await self._process_guarded(work)
        except _Defect:
            if len(work) == 1:
                return [_internal_error(work[0])]
        log.warning("batch hit a defect; writing its records one at a time")
        outcomes: list[RecordOutcome] = []
        for item in work:
            try:
                outcomes.extend(await self._process_guarded([item]))
            except _Defect:
                outcomes.append(_internal_error(item))
        return outcomes

    async def _process_guarded(self, work: list[_Work]) -> list[RecordOutcome]:
        """Process the work; sort every failure into transient or defect."""
        try:
            return await self._process_work(work)
        except InfrastructureError:
            raise
        except Exception as error:
            if is_transient(error):
                raise InfrastructureError(
                    f"database unavailable: {type(error).__name__}: {error}"
                ) from error
            log.exception(
                "records failed with an internal error",
                records=[
                    f"{item.record.topic}[{item.record.partition}]@{item.record.offset}"
                    for item in work[:20]
                ],
            )
            raise _Defect from error

    async def _process_work(self, work: list[_Work]) -> list[RecordOutcome]:
        conflicted: set[int] = set()
        attempts = self._settings.conflict_attempts
        for attempt in range(1, attempts + 2):
            try:
                return await self._attempt(work, conflicted)
            except BatchRace as race:
                log.info(
                    "batch raced another writer",
                    attempt=attempt,
                    reason=str(race),
                    units=sorted(race.unit_ids),
                )
                if attempt >= attempts:
                    # After the last attempt, events of the contested units are
                    # rejected with INGEST_CONFLICT; the rest is written.
                    conflicted |= race.unit_ids
        raise InfrastructureError(
            f"the batch kept racing other writers after {attempts} attempts"
        )

    async def decode_ahead(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Decode records now that a later `process` call will take.

        Decoding reads no database state, so it runs while an earlier batch
        waits on the database. It yields to the event loop every few records,
        so that batch's statements go out without waiting for the whole
        decode. Only the latest batch decoded ahead is kept.
        """
        ahead: dict[tuple[str, int, int], _Work] = {}
        for start in range(0, len(records), _DECODE_AHEAD_CHUNK):
            for record in records[start : start + _DECODE_AHEAD_CHUNK]:
                ahead[_position(record)] = self._decode(record)
            await asyncio.sleep(0)
        self._ahead = ahead

    def _decoded_work(self, record: ConsumerRecord[bytes, bytes]) -> _Work:
        work = self._ahead.pop(_position(record), None)
        if work is None or work.record is not record:
            return self._decode(record)
        work.memo.clear()
        return work

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> _Work:
        try:
            envelope = decode_envelope(record.value, self._settings.limits)
        except RecordRejected as error:
            return _Work(record, None, error)
        topic = record.topic
        if topic == self._settings.topics.retry:
            # A redelivered record is judged as if read from its input topic.
            topic = header_value(record.headers or (), ORIGIN_TOPIC) or topic
        expected = self._topic_types.get(topic)
        if expected is not None and envelope.event_type != expected:
            error = RecordRejected(
                ErrorCode.EVENT_TYPE_MISMATCH,
                f"topic {topic} takes {expected} events but the envelope "
                f"says {envelope.event_type}; publish it to the topic of its type",
                {"topic": topic, "eventType": envelope.event_type},
            )
            return _Work(record, None, error)
        return _Work(record, envelope, None)

    async def _attempt(
        self, work: list[_Work], conflicted: set[int]
    ) -> list[RecordOutcome]:
        decoded = [item for item in work if item.envelope is not None]
        for item in decoded:
            item.memo.clear()
        async with self._pool.acquire() as connection, connection.transaction():
            known = await self._known_hashes(connection, decoded)
            floor = await self._loader.load(
                connection, [(item.envelope, item.memo) for item in decoded]
            )
            outcomes = [self._judge(item, known, floor, conflicted) for item in work]
            stored = [outcome for outcome in outcomes if outcome.accepted]
            documents = await write_batch(
                connection,
                [(outcome.accepted, _origin(outcome.record)) for outcome in stored],
                datetime.now(UTC),
            )
        for outcome, document in zip(stored, documents, strict=True):
            outcome.document = document
        return outcomes

    def _judge(
        self,
        item: _Work,
        known: dict[tuple[str, str], bytes],
        floor: ShopFloor,
        conflicted: set[int],
    ) -> RecordOutcome:
        if item.envelope is None:
            return RecordOutcome(item.record, "rejected", item.error)
        envelope = item.envelope
        key = (envelope.source_system, envelope.dedupe_key)
        stored_hash = known.get(key)
        if stored_hash is not None:
            if stored_hash == envelope.content_hash:
                return RecordOutcome(item.record, "duplicate", envelope=envelope)
            error = RecordRejected(
                ErrorCode.DEDUPE_KEY_CONFLICT,
                f"dedupe key {envelope.dedupe_key!r} of source system "
                f"{envelope.source_system!r} was already used for an event with "
                "different content; the stored event stays as it is. Give a new "
                "event a new dedupe key",
                {
                    "sourceSystem": envelope.source_system,
                    "dedupeKey": envelope.dedupe_key,
                },
            )
            return RecordOutcome(item.record, "rejected", error, envelope)
        try:
            accepted = decide(envelope, floor, self._settings.limits, item.memo)
        except RecordRejected as error:
            return RecordOutcome(item.record, "rejected", error, envelope)
        except Exception:
            log.exception(
                "record failed with an internal error",
                topic=item.record.topic,
                partition=item.record.partition,
                offset=item.record.offset,
            )
            return _internal_error(item)
        if any(move.unit.id in conflicted for move in accepted.moves):
            error = RecordRejected(
                ErrorCode.INGEST_CONFLICT,
                "other events kept changing the units of this event while it was "
                f"written ({self._settings.conflict_attempts} attempts); it is "
                "retried later",
                {"units": [move.unit.sn for move in accepted.moves]},
            )
            return RecordOutcome(item.record, "rejected", error, envelope)
        known[key] = envelope.content_hash
        return RecordOutcome(item.record, "stored", None, envelope, accepted)

    @staticmethod
    async def _known_hashes(
        connection: asyncpg.Connection, decoded: list[_Work]
    ) -> dict[tuple[str, str], bytes]:
        keys = {
            (item.envelope.source_system, item.envelope.dedupe_key)
            for item in decoded
            if item.envelope is not None
        }
        if not keys:
            return {}
        sources, dedupe_keys = zip(*keys, strict=True)
        rows = await connection.fetch(_EXISTING_SQL, list(sources), list(dedupe_keys))
        return {
            (row["source_system"], row["dedupe_key"]): bytes(row["content_hash"])
            for row in rows
        }


def _internal_error(item: _Work) -> RecordOutcome:
    error = RecordRejected(
        ErrorCode.INGEST_INTERNAL_ERROR,
        "the worker failed on this record because of a defect; the worker log "
        "has the traceback. Replay the record once the worker is fixed",
        {},
    )
    return RecordOutcome(item.record, "rejected", error, item.envelope)


def _position(record: ConsumerRecord[bytes, bytes]) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


def _origin(record: ConsumerRecord[bytes, bytes]) -> Origin:
    return Origin(record.topic, record.partition, record.offset)
