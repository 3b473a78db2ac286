"""Load the shop-floor state that one fetched batch needs, in few round trips."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import asyncpg
import structlog

from ingest_worker.envelope import Envelope
from ingest_worker.errors import RecordRejected
from ingest_worker.mapping import NormalizedEvent, compile_mapping
from ingest_worker.rules.resolution import (
    NormalizeMemo,
    hint_sn,
    hint_sn_list,
    normalize_with,
    resolve_run,
)
from ingest_worker.rules.state import (
    DataSpec,
    RouteVersion,
    Run,
    ShopFloor,
    Station,
    Step,
    Unit,
)

log = structlog.get_logger(__name__)

# Envelopes normalized between two turns of the event loop when pacing.
_PACE_CHUNK = 10

_UNITS_SQL = """
SELECT u.id, u.sn, u.run_id, u.status, u.current_step_no, u.version,
       r.run_no, r.status AS run_status, r.route_version_id, r.started_at
FROM unit u JOIN run r ON r.id = u.run_id
WHERE u.sn = ANY($1::text[])
"""

_RUNS_SQL = """
SELECT id, run_no, status, route_version_id, started_at
FROM run WHERE run_no = ANY($1::text[])
"""

_STATIONS_SQL = """
SELECT s.id, s.code, s.station_type, s.active, g.code AS group_code,
       l.code AS line_code
FROM station s
LEFT JOIN station_group g ON g.id = s.station_group_id
LEFT JOIN line l ON l.id = s.line_id
WHERE s.code = ANY($1::text[])
"""

_SPECS_SQL = """
SELECT id, name, data_type, trigger_type, method, is_required, spec, active
FROM data_spec WHERE name = ANY($1::text[])
"""

_VERSION_SQL = """
SELECT v.id, v.version_no, v.status, r.code AS route_code
FROM route_version v JOIN route r ON r.id = v.route_id
WHERE v.id = ANY($1::bigint[])
"""

_STEPS_SQL = """
SELECT route_version_id, step_no, operation, station_type, station_group,
       allowed_stations, requires_fai, requires_authorization, data_specs,
       ingest_mapping
FROM route_step WHERE route_version_id = ANY($1::bigint[])
ORDER BY route_version_id, step_no
"""


class RouteVersionCache:
    """Compiled route versions by id.

    Route versions are frozen once READY, so a compiled version is kept for the
    life of the process. A version not yet READY is loaded again each time.
    """

    def __init__(self) -> None:
        self._versions: dict[int, RouteVersion] = {}

    async def get_many(
        self, connection: asyncpg.Connection, ids: Iterable[int]
    ) -> dict[int, RouteVersion]:
        wanted = set(ids)
        missing = [vid for vid in wanted if vid not in self._versions]
        found = {vid: self._versions[vid] for vid in wanted if vid in self._versions}
        if missing:
            for version in await _load_versions(connection, missing):
                found[version.id] = version
                if version.status in ("READY", "RETIRED"):
                    self._versions[version.id] = version
        return found


async def _load_versions(
    connection: asyncpg.Connection, ids: list[int]
) -> list[RouteVersion]:
    headers = await connection.fetch(_VERSION_SQL, ids)
    steps_by_version: dict[int, list[Step]] = {}
    for row in await connection.fetch(_STEPS_SQL, ids):
        raw_mapping = row["ingest_mapping"]
        # The seed validated every mapping. A mapping edited in the database by
        # hand may still fail here; its batch then takes the defect path.
        mapping = compile_mapping(raw_mapping) if raw_mapping is not None else None
        steps_by_version.setdefault(row["route_version_id"], []).append(
            Step(
                step_no=row["step_no"],
                operation=row["operation"],
                station_type=row["station_type"],
                station_group=row["station_group"],
                allowed_stations=(
                    tuple(row["allowed_stations"]) if row["allowed_stations"] else None
                ),
                requires_fai=row["requires_fai"],
                requires_authorization=row["requires_authorization"],
                data_specs=tuple(row["data_specs"] or ()),
                mapping=mapping,
            )
        )
    versions = [
        RouteVersion(
            id=row["id"],
            route_code=row["route_code"],
            version_no=row["version_no"],
            status=row["status"],
            steps=tuple(steps_by_version.get(row["id"], [])),
        )
        for row in headers
    ]
    log.debug("route versions loaded", ids=[version.id for version in versions])
    return versions


def _run_from(row: asyncpg.Record, prefix: str = "") -> Run:
    return Run(
        id=row["run_id"] if prefix else row["id"],
        run_no=row["run_no"],
        status=row[f"{prefix}status"],
        route_version_id=row["route_version_id"],
        started_at=row["started_at"],
    )


class FloorLoader:
    """Read what the rules need for a batch of envelopes."""

    def __init__(self) -> None:
        self.route_versions = RouteVersionCache()

    async def load(
        self,
        connection: asyncpg.Connection,
        work: list[tuple[Envelope, NormalizeMemo]],
        pace: bool = False,
    ) -> ShopFloor:
        """Load runs, units, route versions, stations and data specs.

        Each envelope's memo receives its normalized forms, which the rules
        reuse instead of normalizing again. With `pace`, the event loop gets a
        turn every few envelopes while they are normalized.
        """
        floor = ShopFloor()
        envelopes = [env for env, _ in work]
        run_nos = {env.run_no for env in envelopes if env.run_no is not None}
        serials: set[str] = set()
        for env in envelopes:
            sn = hint_sn(env)
            if sn is not None:
                serials.add(sn)
            serials.update(hint_sn_list(env) or ())

        if run_nos:
            for row in await connection.fetch(_RUNS_SQL, list(run_nos)):
                floor.add_run(_run_from(row))
        await self._load_units(connection, floor, serials)
        floor.route_versions = await self.route_versions.get_many(
            connection, floor.runs_by_id.keys()
        )

        # The mappings tell which units and stations the events name; normalize
        # with every candidate step, since any of them may become the event's.
        stations: set[str] = set()
        more_serials: set[str] = set()
        specs: set[str] = set()
        for version in floor.route_versions.values():
            for step in version.steps:
                specs.update(step.data_specs)
        for start in range(0, len(work), _PACE_CHUNK):
            chunk = work[start : start + _PACE_CHUNK]
            for normalized in _candidate_normalizations(chunk, floor):
                if normalized.stationCode:
                    stations.add(normalized.stationCode)
                if normalized.sn:
                    more_serials.add(normalized.sn)
                more_serials.update(normalized.snList)
            if pace:
                await asyncio.sleep(0)
        await self._load_units(connection, floor, more_serials - floor.units.keys())
        missing_versions = floor.runs_by_id.keys() - floor.route_versions.keys()
        if missing_versions:
            floor.route_versions.update(
                await self.route_versions.get_many(connection, missing_versions)
            )
        if stations:
            for row in await connection.fetch(_STATIONS_SQL, list(stations)):
                floor.stations[row["code"]] = Station(
                    id=row["id"],
                    code=row["code"],
                    station_type=row["station_type"],
                    group_code=row["group_code"],
                    line_code=row["line_code"],
                    active=row["active"],
                )
        if specs:
            for row in await connection.fetch(_SPECS_SQL, list(specs)):
                floor.data_specs[row["name"]] = DataSpec(
                    id=row["id"],
                    name=row["name"],
                    data_type=row["data_type"],
                    trigger_type=row["trigger_type"],
                    method=row["method"],
                    is_required=row["is_required"],
                    spec=row["spec"] or {},
                    active=row["active"],
                )
        return floor

    async def _load_units(
        self, connection: asyncpg.Connection, floor: ShopFloor, serials: set[str]
    ) -> None:
        if not serials:
            return
        for row in await connection.fetch(_UNITS_SQL, list(serials)):
            floor.units[row["sn"]] = Unit(
                id=row["id"],
                sn=row["sn"],
                run_id=row["run_id"],
                status=row["status"],
                current_step_no=row["current_step_no"],
                version=row["version"],
            )
            if row["run_id"] not in floor.runs_by_id:
                floor.add_run(_run_from(row, prefix="run_"))


def _candidate_normalizations(
    work: list[tuple[Envelope, NormalizeMemo]], floor: ShopFloor
) -> Iterable[NormalizedEvent]:
    """Yield each envelope's normalized form under every candidate step."""
    for env, memo in work:
        try:
            run = resolve_run(env, floor)
        except RecordRejected:
            continue  # the rules report it when the event is judged
        version = floor.route_versions.get(run.route_version_id)
        if version is None:
            continue
        for step in version.candidates(env.event_type):
            outcome = normalize_with(step, env, memo)
            if not isinstance(outcome, RecordRejected):
                yield outcome
