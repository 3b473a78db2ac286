"""Write a batch of accepted events in one transaction.

The steps, each safe because the whole batch commits or rolls back together:

1. Allocate the ids of events, tracks and carrier tracks in one query, so every
   row and every link can be built before anything is inserted.
2. Upsert the carriers that BATCH events name and learn their ids.

Steps 1 and 2 build a `BatchPlan` (`plan_batch`). They can also run ahead,
outside the transaction, when every carrier exists already. The remaining
steps store the plan (`store_plan`):

3. Insert the ingest events with ON CONFLICT DO NOTHING. A missing row means
   another worker stored that dedupe key after this batch was judged, so the
   batch is judged again (`BatchRace`).
4. Move the units with one conditional UPDATE on the version the gates saw,
   after locking the units that PARTIAL carrier events leave out at the
   version seen. A unit changed meanwhile means the batch is judged again
   (`BatchRace`).
5. Start runs still AUTHORIZED.
6. Insert carrier tracks, carrier loads, unit tracks and data values.
7. Insert the normalized events into the outbox, which the relay publishes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

from ingest_worker.mapping import format_utc
from ingest_worker.outbox.records import OUTBOX_COLUMNS, outbox_row
from ingest_worker.rules.decide import Accepted

NORMALIZED_SCHEMA = "mes.ingest.normalized/v1"

# Events planned between two turns of the event loop when planning ahead.
_PACE_EVENTS = 10


class BatchRace(Exception):
    """Another writer changed what this batch was judged on; judge it again."""

    def __init__(self, reason: str, unit_ids: set[int] | None = None) -> None:
        super().__init__(reason)
        self.unit_ids = unit_ids or set()


class Origin(NamedTuple):
    """The Kafka position of a record: topic, partition and offset."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class _Rows:
    events: list[tuple[Any, ...]] = field(default_factory=list)
    tracks: list[tuple[Any, ...]] = field(default_factory=list)
    carrier_tracks: list[tuple[Any, ...]] = field(default_factory=list)
    values: list[tuple[Any, ...]] = field(default_factory=list)
    loads: list[tuple[int, int, list[int], datetime]] = field(default_factory=list)


@dataclass(slots=True)
class BatchPlan:
    """The rows of a batch of accepted events, with their ids, ready to store."""

    accepted: list[tuple[Accepted, Origin]]
    rows: _Rows
    documents: list[dict[str, Any]]
    outbox: list[tuple[Any, ...]]


_CARRIER_IDS_SQL = "SELECT id, code FROM carrier WHERE code = ANY($1::text[])"

_ALLOCATE_SQL = """
SELECT array(SELECT nextval('ingest_event_id_seq') FROM generate_series(1, $1)),
       array(SELECT nextval('track_id_seq') FROM generate_series(1, $2)),
       array(SELECT nextval('carrier_track_id_seq') FROM generate_series(1, $3))
"""

_CARRIERS_SQL = """
INSERT INTO carrier (code) SELECT DISTINCT unnest($1::text[])
ON CONFLICT (code) DO UPDATE SET code = EXCLUDED.code
RETURNING id, code
"""

# JSON columns travel as text: asyncpg would read a list of lists as a
# two-dimensional array, and unnest would flatten a text[][] argument.
_EVENTS_SQL = """
INSERT INTO ingest_event (
    id, source_system, dedupe_key, event_type, content_hash, occurred_at,
    received_at, run_id, route_version_id, step_no, station_code, line_code,
    carrier_code, sn, sn_list, result, test_result_id, raw, normalized,
    measurement_summary, links, origin_topic, origin_partition, origin_offset)
SELECT e.id, e.source_system, e.dedupe_key, e.event_type, e.content_hash,
       e.occurred_at, e.received_at, e.run_id, e.route_version_id, e.step_no,
       e.station_code, e.line_code, e.carrier_code, e.sn,
       ARRAY(SELECT jsonb_array_elements_text(e.sn_list::jsonb)),
       e.result, e.test_result_id, e.raw::jsonb, e.normalized::jsonb,
       e.measurement_summary::jsonb, e.links::jsonb, e.origin_topic,
       e.origin_partition, e.origin_offset
FROM unnest(
    $1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[],
    $6::timestamptz[], $7::timestamptz[], $8::bigint[], $9::bigint[], $10::int[],
    $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
    $17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
    $22::text[], $23::int[], $24::bigint[])
    AS e(id, source_system, dedupe_key, event_type, content_hash, occurred_at,
         received_at, run_id, route_version_id, step_no, station_code, line_code,
         carrier_code, sn, sn_list, result, test_result_id, raw, normalized,
         measurement_summary, links, origin_topic, origin_partition, origin_offset)
ON CONFLICT (source_system, dedupe_key) DO NOTHING
RETURNING id
"""

_UNITS_SQL = """
UPDATE unit u
SET status = m.status, current_step_no = m.step_no,
    version = u.version + m.moves, updated_at = now()
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::int[], $5::int[])
    AS m(id, expected_version, status, step_no, moves)
WHERE u.id = m.id AND u.version = m.expected_version
RETURNING u.id
"""

# Units left out of a PARTIAL carrier event must still be as the gates saw
# them, and stay so until the batch commits. A share lock would deadlock two
# batches that both go on to move such a unit, so the lock is exclusive.
_LEFT_OUT_SQL = """
SELECT u.id
FROM unit u JOIN unnest($1::bigint[], $2::bigint[]) AS c(id, version)
    ON u.id = c.id AND u.version = c.version
ORDER BY u.id
FOR NO KEY UPDATE OF u
"""

_RUNS_SQL = """
UPDATE run r SET status = 'IN_PROGRESS', started_at = s.started_at
FROM unnest($1::bigint[], $2::timestamptz[]) AS s(id, started_at)
WHERE r.id = s.id AND r.status = 'AUTHORIZED'
"""


# Carrier loads of many events at once, in three statements. $1..$3 list one
# row per listed unit (carrier, unit, time), and $4..$5 add the carriers that
# events left empty. First, units no longer listed leave their carrier.
_UNLOAD_UNLISTED_SQL = """
UPDATE carrier_load o SET unloaded_at = k.moment
FROM (
    SELECT DISTINCT carrier_id, moment
    FROM unnest($1::bigint[], $3::timestamptz[]) AS l(carrier_id, moment)
    UNION ALL
    SELECT * FROM unnest($4::bigint[], $5::timestamptz[]) AS e(carrier_id, moment)
) AS k
WHERE o.carrier_id = k.carrier_id AND o.unloaded_at IS NULL
  AND (o.carrier_id, o.unit_id) NOT IN (
      SELECT * FROM unnest($1::bigint[], $2::bigint[]))
"""

# Then listed units leave any other carrier they are on.
_UNLOAD_MOVED_SQL = """
UPDATE carrier_load o SET unloaded_at = l.moment
FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[])
    AS l(carrier_id, unit_id, moment)
WHERE o.unit_id = l.unit_id AND o.unloaded_at IS NULL
  AND o.carrier_id <> l.carrier_id
"""

# Last, listed units not yet on their carrier are loaded.
_LOAD_ALL_SQL = """
INSERT INTO carrier_load (carrier_id, unit_id, loaded_at, ingest_event_id)
SELECT l.carrier_id, l.unit_id, l.moment, l.event_id
FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::bigint[])
    AS l(carrier_id, unit_id, moment, event_id)
WHERE NOT EXISTS (
    SELECT 1 FROM carrier_load o
    WHERE o.carrier_id = l.carrier_id AND o.unit_id = l.unit_id
      AND o.unloaded_at IS NULL)
"""

_CARRIER_TRACK_COLUMNS = (
    "id",
    "carrier_id",
    "ingest_event_id",
    "run_id",
    "step_no",
    "station_code",
    "in_at",
    "out_at",
    "result",
)
_TRACK_COLUMNS = (
    "id",
    "unit_id",
    "ingest_event_id",
    "carrier_track_id",
    "step_no",
    "station_code",
    "source",
    "in_at",
    "out_at",
    "result",
)
_VALUE_COLUMNS = (
    "track_id",
    "carrier_track_id",
    "data_spec_id",
    "step_no",
    "name",
    "value",
    "unit",
    "judge",
)


def normalized_document(
    accepted: Accepted, event_id: int, received_at: datetime, links: dict[str, Any]
) -> dict[str, Any]:
    """Build the normalized event that is stored and sent downstream."""
    normalized = accepted.normalized
    envelope = accepted.envelope
    line_code = normalized.lineCode or (
        accepted.station.line_code if accepted.station else None
    )
    if envelope.event_type == "BATCH":
        unit_status: Any = {move.unit.sn: move.to_status for move in accepted.moves}
    else:
        unit_status = accepted.moves[0].to_status
    return {
        "schema": NORMALIZED_SCHEMA,
        "eventId": str(event_id),
        "sourceSystem": envelope.source_system,
        "dedupeKey": envelope.dedupe_key,
        "eventType": envelope.event_type,
        "occurredAt": format_utc(envelope.occurred_at),
        "stationOccurredAt": (
            format_utc(normalized.stationOccurredAt)
            if normalized.stationOccurredAt
            else None
        ),
        "receivedAt": format_utc(received_at),
        "runNo": accepted.run.run_no,
        "routeVersionId": str(accepted.version.id),
        "stepNo": accepted.step.step_no,
        "stationCode": normalized.stationCode,
        "lineCode": line_code,
        "sn": normalized.sn,
        "snList": list(normalized.snList),
        "carrierCode": normalized.carrierCode,
        "result": normalized.result,
        "testResultId": normalized.testResultId,
        "measurements": [
            {
                "name": measurement.name,
                "specName": measurement.specName,
                "value": measurement.value,
                "unit": measurement.unit,
                "judge": measurement.judge,
            }
            for measurement in normalized.measurements
        ],
        "unitStatus": unit_status,
        "links": links,
    }


async def write_batch(
    connection: asyncpg.Connection,
    accepted: list[tuple[Accepted, Origin]],
    received_at: datetime,
) -> list[dict[str, Any]]:
    """Write the accepted events in the caller's transaction.

    Returns the normalized documents in commit order. Raises `BatchRace` when
    another writer got in between; the caller rolls back and judges again.
    """
    if not accepted:
        return []
    plan = await plan_batch(connection, accepted, received_at)
    assert plan is not None
    return await store_plan(connection, plan)


async def plan_batch(
    connection: asyncpg.Connection,
    accepted: list[tuple[Accepted, Origin]],
    received_at: datetime,
    *,
    ahead: bool = False,
) -> BatchPlan | None:
    """Allocate ids and build every row and normalized document of the batch.

    Inside the writing transaction, missing carriers are created. With
    `ahead`, nothing is written: the plan is None if a carrier is missing, and
    the event loop gets a turn every few events. Ids taken by a plan that is
    never stored are simply skipped.
    """
    carrier_events = [a for a, _ in accepted if a.envelope.event_type == "BATCH"]
    track_count = sum(len(a.moves) for a, _ in accepted)

    carrier_ids: dict[str, int] = {}
    if carrier_events:
        codes = list({a.normalized.carrierCode or "" for a in carrier_events})
        sql = _CARRIER_IDS_SQL if ahead else _CARRIERS_SQL
        for row in await connection.fetch(sql, codes):
            carrier_ids[row["code"]] = row["id"]
        if len(carrier_ids) != len(codes):
            return None
    event_ids, track_ids, carrier_track_ids = await connection.fetchrow(
        _ALLOCATE_SQL, len(accepted), track_count, len(carrier_events)
    )

    plan = BatchPlan(accepted, _Rows(), [], [])
    rows = plan.rows
    next_track = iter(track_ids)
    next_carrier_track = iter(carrier_track_ids)
    for count, ((item, origin), event_id) in enumerate(
        zip(accepted, event_ids, strict=True), start=1
    ):
        links = _build_rows(
            item, event_id, next_track, next_carrier_track, carrier_ids, rows
        )
        document = normalized_document(item, event_id, received_at, links)
        serialized = orjson.dumps(document)
        plan.documents.append(document)
        plan.outbox.append(outbox_row(document, serialized))
        envelope = item.envelope
        normalized = item.normalized
        rows.events.append(
            (
                event_id,
                envelope.source_system,
                envelope.dedupe_key,
                envelope.event_type,
                envelope.content_hash,
                envelope.occurred_at,
                received_at,
                item.run.id,
                item.version.id,
                item.step.step_no,
                normalized.stationCode,
                document["lineCode"],
                normalized.carrierCode,
                normalized.sn,
                _json(list(normalized.snList)),
                normalized.result,
                normalized.testResultId,
                _json(envelope.document),
                serialized.decode(),
                _json(item.summary),
                _json(links),
                origin.topic,
                origin.partition,
                origin.offset,
            )
        )
        if ahead and count % _PACE_EVENTS == 0:
            await asyncio.sleep(0)
    return plan


async def store_plan(
    connection: asyncpg.Connection, plan: BatchPlan
) -> list[dict[str, Any]]:
    """Insert the planned rows and move the units, in the caller's transaction."""
    rows = plan.rows
    accepted = plan.accepted

    # Step 3: the events; a conflict here means another worker stored one.
    stored = await connection.fetch(_EVENTS_SQL, *_columns(rows.events, 24))
    if len(stored) != len(rows.events):
        raise BatchRace("another writer stored an event of this batch first")

    # Step 4: unit moves, conditional on the version the gates saw.
    await _check_left_out(connection, accepted)
    await _move_units(connection, accepted)

    # Step 5: runs that start with this batch.
    starting = [(a.run.id, a.run.started_at) for a, _ in accepted if a.starts_run]
    if starting:
        await connection.execute(_RUNS_SQL, *_columns(starting, 2))

    # Step 6: everything that hangs off the events, with COPY.
    if rows.carrier_tracks:
        await _copy(
            connection, "carrier_track", rows.carrier_tracks, _CARRIER_TRACK_COLUMNS
        )
        await _move_carrier_loads(connection, rows.loads)
    if rows.tracks:
        await _copy(connection, "track", rows.tracks, _TRACK_COLUMNS)
    if rows.values:
        await _copy(connection, "data_value", rows.values, _VALUE_COLUMNS)

    # Step 7: the normalized events for downstream, in the same transaction.
    await _copy(connection, "outbox", plan.outbox, OUTBOX_COLUMNS)
    return plan.documents


def _build_rows(
    item: Accepted,
    event_id: int,
    next_track: Any,
    next_carrier_track: Any,
    carrier_ids: dict[str, int],
    rows: _Rows,
) -> dict[str, Any]:
    """Add the tracks and data values of one event; return the event's links."""
    envelope = item.envelope
    moment = envelope.occurred_at
    step_no = item.step.step_no
    station_code = item.normalized.stationCode
    result = item.normalized.result
    carrier_track_id: int | None = None
    links: dict[str, Any] = {}

    if envelope.event_type == "BATCH":
        carrier_id = carrier_ids[item.normalized.carrierCode or ""]
        carrier_track_id = next(next_carrier_track)
        rows.carrier_tracks.append(
            (
                carrier_track_id,
                carrier_id,
                event_id,
                item.run.id,
                step_no,
                station_code,
                moment,
                moment,
                result,
            )
        )
        rows.loads.append(
            (carrier_id, event_id, [move.unit.id for move in item.moves], moment)
        )
        links.update(
            carrierId=str(carrier_id),
            carrierTrackId=str(carrier_track_id),
            unitTracks={},
            carrierDataValueCount=len(item.data_values),
        )
        if item.rejected_units:
            links["rejectedUnits"] = item.rejected_units

    track_id: int | None = None
    for move in item.moves:
        track_id = next(next_track)
        rows.tracks.append(
            (
                track_id,
                move.unit.id,
                event_id,
                carrier_track_id,
                step_no,
                station_code,
                envelope.event_type,
                moment,
                moment,
                result,
            )
        )
        if carrier_track_id is not None:
            links["unitTracks"][move.unit.sn] = str(track_id)

    for value in item.data_values:
        owner_track = track_id if carrier_track_id is None else None
        rows.values.append(
            (
                owner_track,
                carrier_track_id,
                value.spec.id,
                step_no,
                value.spec.name,
                value.value,
                value.unit,
                value.judge,
            )
        )
    if carrier_track_id is None and track_id is not None:
        links.update(trackId=str(track_id), dataValueCount=len(item.data_values))
    return links


async def _check_left_out(
    connection: asyncpg.Connection, accepted: list[tuple[Accepted, Origin]]
) -> None:
    """Raise BatchRace if a unit left out of an event changed since judged."""
    units = {unit.id: unit for a, _ in accepted for unit in a.left_out}
    if not units:
        return
    # Before any move of this batch, the database still has the versions read.
    rows = await connection.fetch(
        _LEFT_OUT_SQL,
        list(units),
        [unit.version for unit in units.values()],
    )
    if len(rows) != len(units):
        stale = set(units) - {row["id"] for row in rows}
        raise BatchRace("units left out of an event changed meanwhile", stale)


async def _move_units(
    connection: asyncpg.Connection, accepted: list[tuple[Accepted, Origin]]
) -> None:
    # Moves of one unit within the batch were chained in memory. So one
    # conditional update per unit, to its final state, covers them all.
    units = {move.unit.id: move.unit for a, _ in accepted for move in a.moves}
    ordered = sorted(units.values(), key=lambda unit: unit.id)
    moved = await connection.fetch(
        _UNITS_SQL,
        [unit.id for unit in ordered],
        [unit.version for unit in ordered],
        [unit.status for unit in ordered],
        [unit.current_step_no for unit in ordered],
        [unit.moves for unit in ordered],
    )
    if len(moved) != len(ordered):
        stale = set(units) - {row["id"] for row in moved}
        raise BatchRace("units changed after the gates read them", stale)


async def _move_carrier_loads(
    connection: asyncpg.Connection,
    loads: list[tuple[int, int, list[int], datetime]],
) -> None:
    """Unload and load units as the batch's carrier events list them, in order.

    Events are put into rounds: an event goes one round after the last event
    that named its carrier or one of its units. Events of one round share no
    carrier and no unit, so their order cannot matter, and three statements move
    every load of a round at once.
    """
    rounds: list[list[tuple[int, int, list[int], datetime]]] = []
    carrier_round: dict[int, int] = {}
    unit_round: dict[int, int] = {}
    for load in loads:
        carrier_id, _, unit_ids, _ = load
        index = (
            max(
                [carrier_round.get(carrier_id, -1)]
                + [unit_round.get(unit_id, -1) for unit_id in unit_ids]
            )
            + 1
        )
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(load)
        carrier_round[carrier_id] = index
        for unit_id in unit_ids:
            unit_round[unit_id] = index
    for round_loads in rounds:
        listed = [
            (carrier_id, unit_id, moment, event_id)
            for carrier_id, event_id, unit_ids, moment in round_loads
            for unit_id in unit_ids
        ]
        emptied = [(c, m) for c, _, unit_ids, m in round_loads if not unit_ids]
        columns = _columns(listed, 4)
        await connection.execute(
            _UNLOAD_UNLISTED_SQL, *columns[:3], *_columns(emptied, 2)
        )
        await connection.execute(_UNLOAD_MOVED_SQL, *columns[:3])
        await connection.execute(_LOAD_ALL_SQL, *columns)


async def _copy(
    connection: asyncpg.Connection,
    table: str,
    rows: list[tuple[Any, ...]],
    columns: tuple[str, ...],
) -> None:
    await connection.copy_records_to_table(table, records=rows, columns=columns)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for index, value in enumerate(row):
            columns[index].append(value)
    return columns
