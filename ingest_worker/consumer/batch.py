"""Judge and store one fetched batch of records in one database transaction."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
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
from ingest_worker.rules.state import ShopFloor, Unit
from ingest_worker.settings import Settings
from ingest_worker.storage.database import is_transient
from ingest_worker.storage.floor import FloorLoader
from ingest_worker.storage.writer import (
    BatchPlan,
    BatchRace,
    Origin,
    plan_batch,
    store_plan,
    write_batch,
)

log = structlog.get_logger(__name__)

# Records decoded or judged between two yields to the event loop when working
# ahead of the batch being written.
_AHEAD_CHUNK = 10
# Batches remembered as written, to check a batch judged ahead against them.
_WRITTEN_KEPT = 64

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


@dataclass(frozen=True, slots=True)
class _Written:
    """What one written batch changed that judging depends on."""

    sequence: int
    # The judging whose verdicts were written.
    judging: int
    units: frozenset[str]
    keys: frozenset[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class _Verdicts:
    """The state one judging leaves behind if its batch commits as judged."""

    judging: int
    # Moved units in their state after the batch, before its write.
    units: dict[str, Unit]
    # Content hashes of the dedupe keys the batch stores.
    keys: dict[tuple[str, str], bytes]

    @classmethod
    def of(cls, judging: int, outcomes: list[RecordOutcome]) -> _Verdicts:
        units: dict[str, Unit] = {}
        keys: dict[tuple[str, str], bytes] = {}
        for outcome in outcomes:
            if outcome.accepted is None:
                continue
            envelope = outcome.accepted.envelope
            keys[(envelope.source_system, envelope.dedupe_key)] = envelope.content_hash
            for move in outcome.accepted.moves:
                units[move.unit.sn] = move.unit
        return cls(judging, units, keys)


@dataclass(slots=True)
class _Ahead:
    """A batch judged while the batch before it was being written."""

    work: list[_Work]
    # Batches written up to this sequence number were visible to the reads.
    seen: int = 0
    # This judging, and the one whose verdicts it assumed committed, if any.
    judging: int = 0
    assumed: int | None = None
    # None when judging failed. The work is then judged when processed.
    outcomes: list[RecordOutcome] | None = None
    # The units the verdicts read, and the dedupe keys of the records.
    units: frozenset[str] = frozenset()
    keys: frozenset[tuple[str, str]] = frozenset()
    # The rows of the stored verdicts, when they could be built ahead.
    plan: BatchPlan | None = None


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
        self._judged_ahead: _Ahead | None = None
        # One batch at a time reads the floor and is judged. Writes overlap.
        self._judging = asyncio.Lock()
        self._written: deque[_Written] = deque(maxlen=_WRITTEN_KEPT)
        self._sequence = 0
        self._judgings = itertools.count(1)
        # The latest verdicts on their way to the database, and the judgings
        # whose verdicts committed.
        self._latest: _Verdicts | None = None
        self._committed: deque[int] = deque(maxlen=_WRITTEN_KEPT)

    async def process(
        self, records: Iterable[ConsumerRecord[bytes, bytes]]
    ) -> list[RecordOutcome]:
        """Return one outcome per record, in the order given.

        Raises InfrastructureError when the database cannot be used; nothing is
        written then, and the caller retries the same records. Any other error
        is a defect: the batch is written again one record at a time, so only
        the records that trip it are rejected with INGEST_INTERNAL_ERROR.
        """
        records = list(records)
        work, judged = self._take_ahead(records)
        if work is None:
            work = [self._decoded_work(record) for record in records]
        try:
            return await self._process_guarded(work, judged)
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

    async def _process_guarded(
        self, work: list[_Work], judged: _Ahead | None = None
    ) -> list[RecordOutcome]:
        """Process the work; sort every failure into transient or defect."""
        try:
            return await self._process_work(work, judged)
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

    async def _process_work(
        self, work: list[_Work], judged: _Ahead | None
    ) -> list[RecordOutcome]:
        if judged is not None:
            # Writing early verdicts is not one of the attempts. After a race
            # there, the records are judged as if they had just been fetched.
            try:
                return await self._write_judged(judged)
            except BatchRace as race:
                log.info("batch judged ahead raced another writer", reason=str(race))
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
        for start in range(0, len(records), _AHEAD_CHUNK):
            for record in records[start : start + _AHEAD_CHUNK]:
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

    async def judge_ahead(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Read and judge records that the next `process` call will take.

        It runs while the batch before them is written, so the worker's work
        on one batch overlaps the database's work on the other. Judging waits
        for its turn, and the reads happen outside any transaction, as a
        second worker's would. `process` keeps the verdicts unless a batch
        written since the reads changed a unit or a dedupe key that they
        depend on. In that case, or if anything here fails, `process` judges
        the records again.
        """
        self._judged_ahead = None
        if not records:
            return
        work = [self._decoded_work(record) for record in records]
        ahead = _Ahead(work)
        try:
            async with self._pool.acquire() as connection:
                async with self._judging:
                    ahead.seen = self._sequence
                    ahead.judging = next(self._judgings)
                    latest = self._latest
                    ahead.assumed = latest.judging if latest else None
                    outcomes, floor = await self._read_and_judge(
                        connection, work, set(), pace=True, assume=latest
                    )
                stored = [
                    (outcome.accepted, _origin(outcome.record))
                    for outcome in outcomes
                    if outcome.accepted
                ]
                if stored:
                    ahead.plan = await plan_batch(
                        connection, stored, datetime.now(UTC), ahead=True
                    )
        except Exception as error:
            log.info(
                "judging ahead failed; the records are judged when processed",
                error=repr(error),
                first=_position(records[0]),
                records=len(records),
            )
        else:
            ahead.outcomes = outcomes
            ahead.units = frozenset(floor.units)
            ahead.keys = frozenset(
                (item.envelope.source_system, item.envelope.dedupe_key)
                for item in work
                if item.envelope is not None
            )
        self._judged_ahead = ahead

    def forget_ahead(self) -> None:
        """Drop the records decoded and judged ahead, as after a revocation."""
        self._ahead = {}
        self._judged_ahead = None

    def _take_ahead(
        self, records: list[ConsumerRecord[bytes, bytes]]
    ) -> tuple[list[_Work] | None, _Ahead | None]:
        """Return the work done ahead for these records, and the verdicts if valid."""
        ahead = self._judged_ahead
        if ahead is None or len(ahead.work) != len(records):
            return None, None
        if any(
            item.record is not record
            for item, record in zip(ahead.work, records, strict=True)
        ):
            # Records of another caller, such as the retry consumer.
            return None, None
        self._judged_ahead = None
        if ahead.outcomes is None:
            return ahead.work, None
        if ahead.assumed is not None and ahead.assumed not in self._committed:
            log.debug("a batch judged ahead is judged again", reason="assumed")
            return ahead.work, None
        if self._written and self._written[0].sequence > ahead.seen + 1:
            # More batches were written since than are remembered.
            return ahead.work, None
        for written in self._written:
            if (
                written.sequence > ahead.seen
                and written.judging != ahead.assumed
                and (
                    not written.units.isdisjoint(ahead.units)
                    or not written.keys.isdisjoint(ahead.keys)
                )
            ):
                log.debug("a batch judged ahead is judged again", reason="overlap")
                return ahead.work, None
        return ahead.work, ahead

    async def _attempt(
        self, work: list[_Work], conflicted: set[int]
    ) -> list[RecordOutcome]:
        verdicts: _Verdicts | None = None
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                async with self._judging:
                    outcomes, _ = await self._read_and_judge(
                        connection, work, conflicted
                    )
                    verdicts = _Verdicts.of(next(self._judgings), outcomes)
                    self._latest = verdicts
                documents = await self._write(connection, outcomes)
        finally:
            if verdicts is not None:
                self._note_written(verdicts)
        self._committed.append(verdicts.judging)
        _attach(outcomes, documents)
        return outcomes

    async def _write_judged(self, ahead: _Ahead) -> list[RecordOutcome]:
        outcomes = ahead.outcomes
        assert outcomes is not None
        # A batch judged ahead from now on may assume these verdicts.
        verdicts = _Verdicts.of(ahead.judging, outcomes)
        self._latest = verdicts
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                if ahead.plan is not None:
                    documents = await store_plan(connection, ahead.plan)
                else:
                    documents = await self._write(connection, outcomes)
        finally:
            self._note_written(verdicts)
        self._committed.append(ahead.judging)
        _attach(outcomes, documents)
        return outcomes

    async def _read_and_judge(
        self,
        connection: asyncpg.Connection,
        work: list[_Work],
        conflicted: set[int],
        pace: bool = False,
        assume: _Verdicts | None = None,
    ) -> tuple[list[RecordOutcome], ShopFloor]:
        """Judge the work against the current floor state in the database.

        With `pace`, the event loop gets a turn every few records, so a batch
        being written meanwhile sends its statements without waiting. With
        `assume`, those verdicts count as committed where the reads do not
        show them yet.
        """
        decoded = [item for item in work if item.envelope is not None]
        for item in decoded:
            item.memo.clear()
        known = await self._known_hashes(connection, decoded)
        floor = await self._loader.load(
            connection,
            [(item.envelope, item.memo) for item in decoded],
            pace=pace,
        )
        if assume is not None:
            _assume(assume, known, floor)
        outcomes: list[RecordOutcome] = []
        for start in range(0, len(work), _AHEAD_CHUNK):
            outcomes.extend(
                self._judge(item, known, floor, conflicted)
                for item in work[start : start + _AHEAD_CHUNK]
            )
            if pace:
                await asyncio.sleep(0)
        return outcomes, floor

    @staticmethod
    async def _write(
        connection: asyncpg.Connection, outcomes: list[RecordOutcome]
    ) -> list[dict[str, Any]]:
        return await write_batch(
            connection,
            [
                (outcome.accepted, _origin(outcome.record))
                for outcome in outcomes
                if outcome.accepted
            ],
            datetime.now(UTC),
        )

    def _note_written(self, verdicts: _Verdicts) -> None:
        """Note the units and dedupe keys a write may have changed.

        Called whether the commit succeeded, failed or was left unknown by a
        lost connection, so verdicts judged ahead are never checked against
        less than what was written.
        """
        if not verdicts.keys:
            return
        self._sequence += 1
        self._written.append(
            _Written(
                self._sequence,
                verdicts.judging,
                frozenset(verdicts.units),
                frozenset(verdicts.keys),
            )
        )

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
        contested = [move.unit for move in accepted.moves] + accepted.left_out
        if any(unit.id in conflicted for unit in contested):
            error = RecordRejected(
                ErrorCode.INGEST_CONFLICT,
                "other events kept changing the units of this event while it was "
                f"written ({self._settings.conflict_attempts} attempts); it is "
                "retried later",
                {"units": [unit.sn for unit in contested]},
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


def _assume(
    verdicts: _Verdicts, known: dict[tuple[str, str], bytes], floor: ShopFloor
) -> None:
    """Apply verdicts on their way to the database to what was read.

    A unit read at the version those verdicts saw gets the state they leave
    it in. A unit read at any other version was already written, by them or
    by another worker, and stays as read.
    """
    for key, content_hash in verdicts.keys.items():
        known.setdefault(key, content_hash)
    for sn, after in verdicts.units.items():
        unit = floor.units.get(sn)
        if unit is not None and unit.version == after.version:
            floor.units[sn] = Unit(
                id=after.id,
                sn=sn,
                run_id=after.run_id,
                status=after.status,
                current_step_no=after.current_step_no,
                version=after.version + after.moves,
            )


def _attach(outcomes: list[RecordOutcome], documents: list[dict[str, Any]]) -> None:
    """Attach the stored documents to the outcomes of the stored records."""
    stored = [outcome for outcome in outcomes if outcome.accepted]
    for outcome, document in zip(stored, documents, strict=True):
        outcome.document = document


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
