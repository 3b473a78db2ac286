"""Build the trace of a unit: its run, route, steps, tracks, data and events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import asyncpg

from ingest_worker.mapping import format_utc

TraceMode = Literal["run", "latest"]

_UNIT_SQL = """
SELECT u.id, u.sn, u.status, u.current_step_no, r.id AS run_id, r.run_no,
       r.status AS run_status, r.started_at, r.route_version_id,
       v.route_id
FROM unit u
JOIN run r ON r.id = u.run_id
JOIN route_version v ON v.id = r.route_version_id
WHERE u.sn = $1
"""

_ROUTE_SQL = "SELECT code, source_system, source_key FROM route WHERE id = $1"

_LATEST_VERSION_SQL = """
SELECT id FROM route_version
WHERE route_id = $1 AND status = 'READY'
ORDER BY version_no DESC LIMIT 1
"""

_VERSION_SQL = "SELECT id, version_no, compiled_at FROM route_version WHERE id = $1"

_STEPS_SQL = """
SELECT step_no, operation, station_type, station_group, allowed_stations,
       requires_fai, requires_authorization, data_specs
FROM route_step WHERE route_version_id = $1 ORDER BY step_no
"""

_TRACKS_SQL = """
SELECT id, step_no, station_code, source, in_at, out_at, result
FROM track WHERE unit_id = $1 ORDER BY in_at, id
"""

_VALUES_SQL = """
SELECT d.track_id, d.step_no, d.name, d.value, d.unit, d.judge
FROM data_value d JOIN track t ON t.id = d.track_id
WHERE t.unit_id = $1 ORDER BY t.in_at, d.id
"""

_EVENTS_SQL = """
SELECT id, event_type, source_system, dedupe_key, occurred_at, received_at,
       station_code, line_code, carrier_code, sn, sn_list, result, test_result_id,
       measurement_summary, links
FROM ingest_event
WHERE sn = $1 OR sn_list @> ARRAY[$1]::text[]
ORDER BY occurred_at, id
"""

_CARRIER_TRACKS_SQL = """
SELECT DISTINCT ct.id, c.code AS carrier_code, ct.step_no, ct.station_code,
       ct.in_at, ct.out_at, ct.result
FROM track t
JOIN carrier_track ct ON ct.id = t.carrier_track_id
JOIN carrier c ON c.id = ct.carrier_id
WHERE t.unit_id = $1
ORDER BY ct.in_at, ct.id
"""

_CARRIER_LOADS_SQL = """
SELECT l.id, c.code AS carrier_code, l.loaded_at, l.unloaded_at
FROM carrier_load l JOIN carrier c ON c.id = l.carrier_id
WHERE l.unit_id = $1 ORDER BY l.loaded_at, l.id
"""

_CARRIER_VALUES_SQL = """
SELECT d.carrier_track_id, d.step_no, d.name, d.value, d.unit, d.judge
FROM data_value d
JOIN carrier_track ct ON ct.id = d.carrier_track_id
WHERE d.carrier_track_id IN (
    SELECT carrier_track_id FROM track
    WHERE unit_id = $1 AND carrier_track_id IS NOT NULL)
ORDER BY ct.in_at, d.id
"""


class UnitNotFound(LookupError):
    def __init__(self, sn: str) -> None:
        super().__init__(f"unit {sn!r} does not exist")
        self.sn = sn


def _time(value: datetime | None) -> str | None:
    return format_utc(value) if value is not None else None


async def trace_unit(
    connection: asyncpg.Connection, sn: str, mode: TraceMode = "run"
) -> dict[str, Any]:
    """Return the trace document of one serial; raise UnitNotFound if unknown."""
    unit = await connection.fetchrow(_UNIT_SQL, sn)
    if unit is None:
        raise UnitNotFound(sn)
    route = await connection.fetchrow(_ROUTE_SQL, unit["route_id"])
    version_id = unit["route_version_id"]
    if mode == "latest":
        latest = await connection.fetchval(_LATEST_VERSION_SQL, unit["route_id"])
        version_id = latest if latest is not None else version_id
    version = await connection.fetchrow(_VERSION_SQL, version_id)
    steps = await connection.fetch(_STEPS_SQL, version_id)
    unit_id = unit["id"]

    return {
        "unit": {
            "sn": unit["sn"],
            "status": unit["status"],
            "runNo": unit["run_no"],
            "currentStepNo": unit["current_step_no"],
        },
        "run": {
            "runNo": unit["run_no"],
            "status": unit["run_status"],
            "startedAt": _time(unit["started_at"]),
        },
        "route": {
            "code": route["code"],
            "sourceSystem": route["source_system"],
            "sourceKey": route["source_key"],
        },
        "routeVersion": {
            "id": str(version["id"]),
            "versionNo": version["version_no"],
            "compiledAt": _time(version["compiled_at"]),
        },
        "steps": [
            {
                "stepNo": row["step_no"],
                "operation": row["operation"],
                "stationType": row["station_type"],
                "stationGroup": row["station_group"],
                "allowedStations": list(row["allowed_stations"] or []),
                "requiresFAI": row["requires_fai"],
                "requiresAuthorization": row["requires_authorization"],
                "dataSpecs": list(row["data_specs"] or []),
            }
            for row in steps
        ],
        "tracks": [
            {
                "id": str(row["id"]),
                "stepNo": row["step_no"],
                "stationCode": row["station_code"],
                "source": row["source"],
                "inAt": _time(row["in_at"]),
                "outAt": _time(row["out_at"]),
                "result": row["result"],
            }
            for row in await connection.fetch(_TRACKS_SQL, unit_id)
        ],
        "dataValues": [
            {
                "trackId": str(row["track_id"]),
                "stepNo": row["step_no"],
                "name": row["name"],
                "value": row["value"],
                "unit": row["unit"],
                "judge": row["judge"],
            }
            for row in await connection.fetch(_VALUES_SQL, unit_id)
        ],
        "ingestEvents": [
            {
                "id": str(row["id"]),
                "eventType": row["event_type"],
                "sourceSystem": row["source_system"],
                "dedupeKey": row["dedupe_key"],
                "occurredAt": _time(row["occurred_at"]),
                "receivedAt": _time(row["received_at"]),
                "stationCode": row["station_code"],
                "lineCode": row["line_code"],
                "carrierCode": row["carrier_code"],
                "sn": row["sn"],
                "snList": list(row["sn_list"] or []),
                "result": row["result"],
                "testResultId": row["test_result_id"],
                "measurementSummary": row["measurement_summary"],
                "links": row["links"],
            }
            for row in await connection.fetch(_EVENTS_SQL, sn)
        ],
        "carrierTracks": [
            {
                "id": str(row["id"]),
                "carrierCode": row["carrier_code"],
                "stepNo": row["step_no"],
                "stationCode": row["station_code"],
                "inAt": _time(row["in_at"]),
                "outAt": _time(row["out_at"]),
                "result": row["result"],
            }
            for row in await connection.fetch(_CARRIER_TRACKS_SQL, unit_id)
        ],
        "carrierLoads": [
            {
                "id": str(row["id"]),
                "carrierCode": row["carrier_code"],
                "loadedAt": _time(row["loaded_at"]),
                "unloadedAt": _time(row["unloaded_at"]),
            }
            for row in await connection.fetch(_CARRIER_LOADS_SQL, unit_id)
        ],
        "carrierDataValues": [
            {
                "carrierTrackId": str(row["carrier_track_id"]),
                "stepNo": row["step_no"],
                "name": row["name"],
                "value": row["value"],
                "unit": row["unit"],
                "judge": row["judge"],
            }
            for row in await connection.fetch(_CARRIER_VALUES_SQL, unit_id)
        ],
    }


def not_found_document(sn: str) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {
            "code": "UNIT_NOT_FOUND",
            "message": f"unit {sn!r} does not exist; check the serial number",
        },
    }
