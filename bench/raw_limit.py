"""The raw write limit: the worker's rows for the same events, with nothing else.

For each batch of events this writes what the worker would write: ingest
events, carriers, carrier tracks and loads, tracks, data values, unit moves,
the run start and outbox rows. Inserts use COPY (asyncpg
`copy_records_to_table`), unit moves one `UPDATE ... FROM unnest`, and each
batch commits in one transaction. There is no Kafka, no decoding, no
validation and no lookups. Rows are built in Python before each transaction,
and only the transactions are timed, so the result is an upper bound for what
the worker could reach on this database.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from ingest_worker.envelope import content_hash
from ingest_worker.mapping import format_utc, parse_rfc3339

_NORMALIZED_SCHEMA = "mes.ingest.normalized/v1"

_EVENT_COLUMNS = (
    "id", "source_system", "dedupe_key", "event_type", "content_hash",
    "occurred_at", "received_at", "run_id", "route_version_id", "step_no",
    "station_code", "line_code", "carrier_code", "sn", "sn_list", "result",
    "test_result_id", "raw", "normalized", "measurement_summary", "links",
    "origin_topic", "origin_partition", "origin_offset",
)  # fmt: skip
_TRACK_COLUMNS = (
    "id", "unit_id", "ingest_event_id", "carrier_track_id", "step_no",
    "station_code", "source", "in_at", "out_at", "result",
)  # fmt: skip
_CARRIER_TRACK_COLUMNS = (
    "id", "carrier_id", "ingest_event_id", "run_id", "step_no", "station_code",
    "in_at", "out_at", "result",
)  # fmt: skip
_VALUE_COLUMNS = (
    "track_id", "carrier_track_id", "data_spec_id", "step_no", "name", "value",
    "unit", "judge",
)  # fmt: skip
_LOAD_COLUMNS = (
    "carrier_id", "unit_id", "loaded_at", "unloaded_at", "ingest_event_id",
)  # fmt: skip
_OUTBOX_COLUMNS = ("ingest_event_id", "record_key", "value", "headers")

_UNITS_SQL = """
UPDATE unit u
SET status = m.status, current_step_no = m.step_no, version = u.version + 1,
    updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::int[]) AS m(id, status, step_no)
WHERE u.id = m.id
"""

_RUN_SQL = """
UPDATE run SET status = 'IN_PROGRESS', started_at = $2
WHERE id = $1 AND status = 'AUTHORIZED'
"""

# Loads left open by earlier batches end when their carrier is used again.
_UNLOAD_SQL = """
UPDATE carrier_load l SET unloaded_at = m.at
FROM unnest($1::bigint[], $2::timestamptz[]) AS m(carrier_id, at)
WHERE l.carrier_id = m.carrier_id AND l.unloaded_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class Stage:
    """The step of one stage's events and the unit state they leave behind."""

    step_no: int
    # The unit status and current step after the event.
    to_status: str
    to_step_no: int
    # Mapping of measurement names to data spec names.
    spec_names: dict[str, str]


@dataclass
class _Master:
    run_id: int
    run_no: str
    route_version_id: int
    spec_ids: dict[str, int]
    limits: dict[str, tuple[float | None, float | None]]
    unit_ids: dict[str, int]
    line_codes: dict[str, str | None]
    carrier_ids: dict[str, int] = field(default_factory=dict)


@dataclass
class _Batch:
    carriers: list[tuple[int, str]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    carrier_tracks: list[tuple[Any, ...]] = field(default_factory=list)
    loads: list[list[Any]] = field(default_factory=list)
    unloads: list[tuple[int, datetime]] = field(default_factory=list)
    tracks: list[tuple[Any, ...]] = field(default_factory=list)
    values: list[tuple[Any, ...]] = field(default_factory=list)
    moves: dict[int, tuple[str, int]] = field(default_factory=dict)
    outbox: list[tuple[Any, ...]] = field(default_factory=list)
    run_start: datetime | None = None


@dataclass(frozen=True, slots=True)
class LimitResult:
    events: int
    transactions: int
    duration_s: float
    data_values: int

    @property
    def rate(self) -> float:
        return self.events / self.duration_s if self.duration_s > 0 else 0.0


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _load_master(connection: asyncpg.Connection) -> _Master:
    run = await connection.fetchrow("SELECT id, run_no, route_version_id FROM run")
    specs = await connection.fetch("SELECT id, name, spec::text FROM data_spec")
    limits = {}
    for row in specs:
        spec = orjson.loads(row["spec"])
        limits[row["name"]] = (spec.get("min"), spec.get("max"))
    units = await connection.fetch("SELECT sn, id FROM unit")
    stations = await connection.fetch(
        "SELECT s.code, l.code AS line_code FROM station s "
        "LEFT JOIN line l ON l.id = s.line_id"
    )
    return _Master(
        run_id=run["id"],
        run_no=run["run_no"],
        route_version_id=run["route_version_id"],
        spec_ids={row["name"]: row["id"] for row in specs},
        limits=limits,
        unit_ids={row["sn"]: row["id"] for row in units},
        line_codes={row["code"]: row["line_code"] for row in stations},
    )


async def _reserve(connection: asyncpg.Connection, sequence: str, count: int) -> int:
    """Reserve `count` ids of a sequence and return the first."""
    first = int(await connection.fetchval("SELECT nextval($1::regclass)", sequence))
    if count > 1:
        await connection.execute(
            "SELECT setval($1::regclass, $2)", sequence, first + count - 1
        )
    return first


def _judge(
    verdict: str | None, value: float, limits: tuple[float | None, float | None]
) -> str | None:
    if verdict in ("PASS", "FAIL"):
        return verdict
    low, high = limits
    if low is None and high is None:
        return None
    if (low is not None and value < low) or (high is not None and value > high):
        return "FAIL"
    return "PASS"


class _RowBuilder:
    """Builds the rows of one event at a time, as the worker's writer would."""

    def __init__(self, master: _Master, stage: Stage, received_at: datetime) -> None:
        self.master = master
        self.stage = stage
        self.received_at = received_at

    def measurements(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = []
        for item in items:
            spec_name = self.stage.spec_names.get(item["name"], item["name"])
            value = item["value"]
            limits = self.master.limits.get(spec_name, (None, None))
            found.append(
                {
                    "name": item["name"],
                    "specName": spec_name,
                    "value": value,
                    "unit": item.get("unit"),
                    "judge": _judge(item.get("verdict"), value, limits),
                }
            )
        return found

    def document(
        self,
        envelope: dict[str, Any],
        event_id: int,
        station: str,
        measurements: list[dict[str, Any]],
        unit_status: Any,
        links: dict[str, Any],
        carrier: str | None,
        test_result_id: str | None,
    ) -> dict[str, Any]:
        occurred = format_utc(parse_rfc3339(envelope["occurredAt"]))
        return {
            "schema": _NORMALIZED_SCHEMA,
            "eventId": str(event_id),
            "sourceSystem": envelope["sourceSystem"],
            "dedupeKey": envelope["dedupeKey"],
            "eventType": envelope["eventType"],
            "occurredAt": occurred,
            "stationOccurredAt": occurred,
            "receivedAt": format_utc(self.received_at),
            "runNo": self.master.run_no,
            "routeVersionId": str(self.master.route_version_id),
            "stepNo": self.stage.step_no,
            "stationCode": station,
            "lineCode": self.master.line_codes.get(station),
            "sn": envelope.get("sn"),
            "snList": list(envelope.get("snList") or []),
            "carrierCode": carrier,
            "result": "PASS",
            "testResultId": test_result_id,
            "measurements": measurements,
            "unitStatus": unit_status,
            "links": links,
        }

    def event_row(
        self,
        envelope: dict[str, Any],
        raw: bytes,
        event_id: int,
        document: dict[str, Any],
        measurements: list[dict[str, Any]],
        origin_offset: int,
    ) -> tuple[Any, ...]:
        occurred_at = parse_rfc3339(envelope["occurredAt"])
        digest = content_hash(
            envelope["eventType"],
            occurred_at,
            envelope.get("runNo"),
            envelope.get("sn"),
            envelope.get("snList"),
            envelope["payload"],
        )
        judged = [m["judge"] for m in measurements]
        summary = {
            "count": len(measurements),
            "stored": len(measurements),
            "pass": judged.count("PASS"),
            "fail": judged.count("FAIL"),
            "unmatched": [],
        }
        return (
            event_id,
            envelope["sourceSystem"],
            envelope["dedupeKey"],
            envelope["eventType"],
            digest,
            occurred_at,
            self.received_at,
            self.master.run_id,
            self.master.route_version_id,
            self.stage.step_no,
            document["stationCode"],
            document["lineCode"],
            document["carrierCode"],
            document["sn"],
            document["snList"],
            "PASS",
            document["testResultId"],
            raw.decode(),
            _json(document),
            _json(summary),
            _json(document["links"]),
            "raw-limit",
            0,
            origin_offset,
        )


def _unit_event(
    builder: _RowBuilder,
    batch: _Batch,
    envelope: dict[str, Any],
    raw: bytes,
    event_id: int,
    track_id: int,
    offset: int,
) -> None:
    payload = envelope["payload"]
    stage = builder.stage
    if envelope["eventType"] == "TEST":
        station, test_id, items = payload["station"], payload["testId"], "results"
    else:
        station, test_id, items = payload["machine"], None, "stats"
    measurements = builder.measurements(payload[items])
    moment = parse_rfc3339(envelope["occurredAt"])
    unit_id = builder.master.unit_ids[envelope["sn"]]

    links = {"trackId": str(track_id), "dataValueCount": len(measurements)}
    document = builder.document(
        envelope,
        event_id,
        station,
        measurements,
        stage.to_status,
        links,
        None,
        test_id,
    )
    batch.events.append(
        builder.event_row(envelope, raw, event_id, document, measurements, offset)
    )

    batch.tracks.append(
        (
            track_id,
            unit_id,
            event_id,
            None,
            stage.step_no,
            station,
            envelope["eventType"],
            moment,
            moment,
            "PASS",
        )
    )
    for m in measurements:
        batch.values.append(
            (
                track_id,
                None,
                builder.master.spec_ids[m["specName"]],
                stage.step_no,
                m["specName"],
                _json(m["value"]),
                m["unit"],
                m["judge"],
            )
        )

    batch.moves[unit_id] = (stage.to_status, stage.to_step_no)
    batch.outbox.append(_outbox_row(document, envelope["sn"]))


def _carrier_event(
    builder: _RowBuilder,
    batch: _Batch,
    envelope: dict[str, Any],
    raw: bytes,
    ids: tuple[int, int, int, list[int]],
    offset: int,
) -> list[list[Any]]:
    """Add the rows of a BATCH event to the batch and return its carrier loads."""
    event_id, carrier_id, carrier_track_id, track_ids = ids
    payload = envelope["payload"]
    stage = builder.stage
    master = builder.master
    code = payload["basket"]
    moment = parse_rfc3339(envelope["occurredAt"])
    measurements = builder.measurements(payload["parameters"])
    station = payload["washer"]

    unit_tracks = {}
    loads = []
    for sn, track_id in zip(payload["boards"], track_ids, strict=True):
        unit_id = master.unit_ids[sn]
        unit_tracks[sn] = str(track_id)
        batch.tracks.append(
            (
                track_id,
                unit_id,
                event_id,
                carrier_track_id,
                stage.step_no,
                station,
                "BATCH",
                moment,
                moment,
                "PASS",
            )
        )
        batch.moves[unit_id] = (stage.to_status, stage.to_step_no)
        loads.append([carrier_id, unit_id, moment, None, event_id])
    batch.loads.extend(loads)

    links = {
        "carrierId": str(carrier_id),
        "carrierTrackId": str(carrier_track_id),
        "unitTracks": unit_tracks,
        "carrierDataValueCount": len(measurements),
    }
    unit_status = {sn: stage.to_status for sn in payload["boards"]}
    document = builder.document(
        envelope, event_id, station, measurements, unit_status, links, code, None
    )
    batch.events.append(
        builder.event_row(envelope, raw, event_id, document, measurements, offset)
    )

    batch.carrier_tracks.append(
        (
            carrier_track_id,
            carrier_id,
            event_id,
            master.run_id,
            stage.step_no,
            station,
            moment,
            moment,
            "PASS",
        )
    )
    for m in measurements:
        batch.values.append(
            (
                None,
                carrier_track_id,
                master.spec_ids[m["specName"]],
                stage.step_no,
                m["specName"],
                _json(m["value"]),
                m["unit"],
                m["judge"],
            )
        )
    batch.outbox.append(_outbox_row(document, code))
    return loads


def _outbox_row(document: dict[str, Any], key: str) -> tuple[Any, ...]:
    headers = [
        ["ingest.event.type", document["eventType"]],
        ["ingest.source.system", document["sourceSystem"]],
        ["ingest.dedupe.key", document["dedupeKey"]],
    ]
    return (int(document["eventId"]), key, orjson.dumps(document), _json(headers))


async def _build_batch(
    connection: asyncpg.Connection,
    builder: _RowBuilder,
    envelopes: list[tuple[dict[str, Any], bytes]],
    loaded_carriers: set[str],
    first_offset: int,
) -> _Batch:
    """Reserve the batch's ids and build its rows.

    `loaded_carriers` names the carriers with loads still open from earlier
    batches. A carrier's loads end when its next event occurs: in this
    batch's rows when they were loaded in this batch, else with one UPDATE.
    """
    batch = _Batch()
    master = builder.master
    carrier_events = [e for e, _ in envelopes if e["eventType"] == "BATCH"]
    track_count = sum(
        len(e["payload"]["boards"]) if e["eventType"] == "BATCH" else 1
        for e, _ in envelopes
    )
    event_id = await _reserve(connection, "ingest_event_id_seq", len(envelopes))
    track_id = await _reserve(connection, "track_id_seq", track_count)
    carrier_track_id = 0
    if carrier_events:
        carrier_track_id = await _reserve(
            connection, "carrier_track_id_seq", len(carrier_events)
        )
    batch_loads: dict[str, list[list[Any]]] = {}
    for offset, (envelope, raw) in enumerate(envelopes, start=first_offset):
        if envelope["eventType"] != "BATCH":
            _unit_event(builder, batch, envelope, raw, event_id, track_id, offset)
            track_id += 1
            event_id += 1
            continue
        code = envelope["payload"]["basket"]
        moment = parse_rfc3339(envelope["occurredAt"])
        carrier_id = master.carrier_ids.get(code)
        if carrier_id is None:
            carrier_id = await _reserve(connection, "carrier_id_seq", 1)
            master.carrier_ids[code] = carrier_id
            batch.carriers.append((carrier_id, code))
        if code in batch_loads:
            for load in batch_loads[code]:
                load[3] = moment
        elif code in loaded_carriers:
            batch.unloads.append((carrier_id, moment))
        boards = len(envelope["payload"]["boards"])
        ids = (
            event_id,
            carrier_id,
            carrier_track_id,
            list(range(track_id, track_id + boards)),
        )
        batch_loads[code] = _carrier_event(builder, batch, envelope, raw, ids, offset)
        carrier_track_id += 1
        track_id += boards
        event_id += 1
    loaded_carriers.update(batch_loads)
    return batch


async def _write_batch(
    connection: asyncpg.Connection, batch: _Batch, run_id: int
) -> None:
    async with connection.transaction():
        if batch.carriers:
            await connection.copy_records_to_table(
                "carrier", records=batch.carriers, columns=("id", "code")
            )
        await connection.copy_records_to_table(
            "ingest_event", records=batch.events, columns=_EVENT_COLUMNS
        )
        ordered = sorted(batch.moves.items())
        await connection.execute(
            _UNITS_SQL,
            [unit_id for unit_id, _ in ordered],
            [status for _, (status, _) in ordered],
            [step_no for _, (_, step_no) in ordered],
        )
        if batch.run_start is not None:
            await connection.execute(_RUN_SQL, run_id, batch.run_start)
        if batch.carrier_tracks:
            await connection.copy_records_to_table(
                "carrier_track",
                records=batch.carrier_tracks,
                columns=_CARRIER_TRACK_COLUMNS,
            )
        if batch.unloads:
            await connection.execute(
                _UNLOAD_SQL,
                [carrier_id for carrier_id, _ in batch.unloads],
                [moment for _, moment in batch.unloads],
            )
        if batch.loads:
            await connection.copy_records_to_table(
                "carrier_load",
                records=[tuple(load) for load in batch.loads],
                columns=_LOAD_COLUMNS,
            )
        await connection.copy_records_to_table(
            "track", records=batch.tracks, columns=_TRACK_COLUMNS
        )
        if batch.values:
            await connection.copy_records_to_table(
                "data_value", records=batch.values, columns=_VALUE_COLUMNS
            )
        await connection.copy_records_to_table(
            "outbox", records=batch.outbox, columns=_OUTBOX_COLUMNS
        )


def _chunks(
    envelopes: Iterable[tuple[dict[str, Any], bytes]], size: int
) -> Iterator[list[tuple[dict[str, Any], bytes]]]:
    chunk: list[tuple[dict[str, Any], bytes]] = []
    for item in envelopes:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def write_limit(
    database_url: str,
    stages: Sequence[tuple[Stage, Iterable[tuple[dict[str, Any], bytes]]]],
    batch_size: int,
) -> list[LimitResult]:
    """Write every stage's events in batches and return one result per stage.

    Each stage's events are (envelope, raw record value) pairs in publish
    order, without the duplicates and invalid records that the worker
    rejects. The database must hold the seeded factory and nothing else.
    """
    # A plain connection: jsonb columns take the JSON text as it is.
    connection = await asyncpg.connect(database_url)
    results = []
    try:
        master = await _load_master(connection)
        loaded_carriers: set[str] = set()
        first_batch = True
        offset = 0
        for stage, envelopes in stages:
            received_at = datetime.now(UTC)
            builder = _RowBuilder(master, stage, received_at)
            events = transactions = values = 0
            duration = 0.0
            for chunk in _chunks(envelopes, batch_size):
                batch = await _build_batch(
                    connection, builder, chunk, loaded_carriers, offset
                )
                if first_batch:
                    batch.run_start = min(row[5] for row in batch.events)
                    first_batch = False
                started = time.perf_counter()
                await _write_batch(connection, batch, master.run_id)
                duration += time.perf_counter() - started
                events += len(chunk)
                values += len(batch.values)
                transactions += 1
                offset += len(chunk)
            results.append(LimitResult(events, transactions, duration, values))
    finally:
        await connection.close()
    return results
