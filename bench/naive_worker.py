"""A naive worker for comparison: one database transaction per record.

It consumes the TEST topic with aiokafka and, for each record, decodes the
JSON, looks up the unit, inserts the event, the track, the data values (one
`executemany`) and the outbox row, moves the unit and commits. Offsets are
committed after each fetched batch. It checks nothing that the real worker
checks (no envelope validation, mapping, gates or duplicates), so it is a
lower bound for the cost of a straightforward design, not a full worker.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ingest_worker.mapping import parse_rfc3339
from ingest_worker.settings import Settings

_UNIT_SQL = """
SELECT u.id, r.id AS run_id, r.status AS run_status, r.route_version_id
FROM unit u JOIN run r ON r.id = u.run_id WHERE u.sn = $1
"""

_EVENT_SQL = """
INSERT INTO ingest_event (
    source_system, dedupe_key, event_type, content_hash, occurred_at,
    received_at, run_id, route_version_id, step_no, station_code, sn, result,
    test_result_id, raw, normalized, measurement_summary, links, origin_topic,
    origin_partition, origin_offset)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb,
        $15::jsonb, $16::jsonb, $17::jsonb, $18, $19, $20)
RETURNING id
"""

_TRACK_SQL = """
INSERT INTO track (unit_id, ingest_event_id, step_no, station_code, source,
                   in_at, out_at, result)
VALUES ($1, $2, $3, $4, 'TEST', $5, $5, $6)
RETURNING id
"""

_VALUE_SQL = """
INSERT INTO data_value (track_id, data_spec_id, step_no, name, value, unit, judge)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
"""

_MOVE_SQL = """
UPDATE unit SET status = 'DONE', version = version + 1, updated_at = now()
WHERE id = $1
"""

_RUN_SQL = """
UPDATE run SET status = 'IN_PROGRESS', started_at = $2
WHERE id = $1 AND status = 'AUTHORIZED'
"""

_OUTBOX_SQL = """
INSERT INTO outbox (ingest_event_id, record_key, value, headers)
VALUES ($1, $2, $3, $4::jsonb)
"""

_FETCH_TIMEOUT_MS = 1_000


@dataclass(frozen=True, slots=True)
class NaiveResult:
    events: int
    duration_s: float
    first_fetch: float
    last_commit: float

    @property
    def rate(self) -> float:
        return self.events / self.duration_s if self.duration_s > 0 else 0.0


async def _store(
    connection: asyncpg.Connection,
    value: bytes,
    origin: tuple[str, int, int],
    spec_ids: dict[str, int],
    spec_names: dict[str, str],
    step_no: int,
) -> None:
    envelope = orjson.loads(value)
    payload = envelope["payload"]
    occurred_at = parse_rfc3339(envelope["occurredAt"])
    async with connection.transaction():
        unit = await connection.fetchrow(_UNIT_SQL, payload["serial"])
        if unit["run_status"] == "AUTHORIZED":
            await connection.execute(_RUN_SQL, unit["run_id"], occurred_at)
        results = payload["results"]
        normalized = {
            "sn": payload["serial"],
            "stationCode": payload["station"],
            "result": payload["outcome"],
            "measurements": results,
        }
        event_id = await connection.fetchval(
            _EVENT_SQL,
            envelope["sourceSystem"],
            envelope["dedupeKey"],
            envelope["eventType"],
            hashlib.sha256(value).digest(),
            occurred_at,
            datetime.now(UTC),
            unit["run_id"],
            unit["route_version_id"],
            step_no,
            payload["station"],
            payload["serial"],
            payload["outcome"],
            payload["testId"],
            value.decode(),
            orjson.dumps(normalized).decode(),
            orjson.dumps({"count": len(results)}).decode(),
            "{}",
            *origin,
        )
        track_id = await connection.fetchval(
            _TRACK_SQL,
            unit["id"],
            event_id,
            step_no,
            payload["station"],
            occurred_at,
            payload["outcome"],
        )
        rows = []
        for item in results:
            spec = spec_names.get(item["name"], item["name"])
            rows.append(
                (
                    track_id,
                    spec_ids[spec],
                    step_no,
                    spec,
                    orjson.dumps(item["value"]).decode(),
                    item.get("unit"),
                    item.get("verdict"),
                )
            )
        await connection.executemany(_VALUE_SQL, rows)
        await connection.execute(_MOVE_SQL, unit["id"])
        await connection.execute(
            _OUTBOX_SQL,
            event_id,
            payload["serial"],
            orjson.dumps(normalized),
            '[["ingest.event.type", "TEST"]]',
        )


async def run_naive(
    settings: Settings,
    database_url: str,
    topic: str,
    group_id: str,
    limit: int,
    spec_names: dict[str, str],
    step_no: int,
    timeout_s: float,
) -> NaiveResult:
    """Store the first `limit` records of `topic`, timed from fetch to commit."""
    connection = await asyncpg.connect(database_url)
    consumer = AIOKafkaConsumer(
        topic,
        **settings.kafka.client_options(),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.session_timeout_ms // 6),
    )
    await consumer.start()
    try:
        spec_ids = {
            row["name"]: row["id"]
            for row in await connection.fetch("SELECT id, name FROM data_spec")
        }
        deadline = time.monotonic() + timeout_s
        done = 0
        first_fetch: float | None = None
        last_commit = 0.0
        while done < limit:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the naive worker stored {done} of {limit} records in "
                    f"{timeout_s:.0f} s"
                )
            fetched = await consumer.getmany(
                timeout_ms=_FETCH_TIMEOUT_MS, max_records=limit - done
            )
            if not fetched:
                continue
            if first_fetch is None:
                first_fetch = time.time()
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, records in fetched.items():
                for record in records:
                    origin = (record.topic, record.partition, record.offset)
                    await _store(
                        connection, record.value, origin, spec_ids, spec_names, step_no
                    )
                    done += 1
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "")
            await consumer.commit(offsets)
            last_commit = time.time()
    finally:
        await consumer.stop()
        await connection.close()
    assert first_fetch is not None
    return NaiveResult(done, last_commit - first_fetch, first_fetch, last_commit)
