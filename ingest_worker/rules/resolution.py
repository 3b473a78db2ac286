"""Run resolution and the choice of the event's step (contract steps 3 to 6)."""

from __future__ import annotations

from typing import Any

from ingest_worker.envelope import Envelope
from ingest_worker.errors import ErrorCode, RecordRejected
from ingest_worker.mapping import NormalizedEvent
from ingest_worker.rules.state import RouteVersion, Run, ShopFloor, Step

READY_ROUTE_STATUSES = frozenset({"READY", "RETIRED"})

# Normalization results of one envelope by step number. `normalize_with`
# fills it, so each mapping runs once per envelope and batch attempt.
NormalizeMemo = dict[int, NormalizedEvent | RecordRejected]


def hint_sn(envelope: Envelope) -> str | None:
    """Return the serial used for run resolution: envelope first, then payload."""
    if envelope.sn:
        return envelope.sn
    payload_sn = envelope.document["payload"].get("sn")
    return payload_sn if isinstance(payload_sn, str) and payload_sn else None


def hint_sn_list(envelope: Envelope) -> list[str] | None:
    """Return the serials used for run resolution: envelope first, then payload."""
    if envelope.sn_list:
        return list(envelope.sn_list)
    payload_list = envelope.document["payload"].get("snList")
    if isinstance(payload_list, list) and payload_list:
        return [sn for sn in payload_list if isinstance(sn, str)]
    return None


def resolve_run(envelope: Envelope, floor: ShopFloor) -> Run:
    """Find the event's run from runNo, else sn, else snList."""
    if envelope.run_no is not None:
        run = floor.runs_by_no.get(envelope.run_no)
        if run is None:
            raise RecordRejected(
                ErrorCode.RUN_NOT_FOUND,
                f"run {envelope.run_no!r} does not exist; register the run in the "
                "master data or correct runNo",
                {"runNo": envelope.run_no},
            )
        return run

    sn = hint_sn(envelope)
    if sn is not None:
        unit = floor.units.get(sn)
        if unit is None:
            raise RecordRejected(
                ErrorCode.UNIT_RUN_NOT_FOUND,
                f"unit {sn!r} does not exist, so its run is unknown; register the "
                "unit or send runNo",
                {"sn": sn},
            )
        return floor.runs_by_id[unit.run_id]

    sn_list = hint_sn_list(envelope)
    if sn_list:
        missing = [sn for sn in sn_list if sn not in floor.units]
        if missing:
            raise RecordRejected(
                ErrorCode.UNIT_RUN_NOT_FOUND,
                f"units {_list(missing)} do not exist, so the run is unknown; "
                "register the units or send runNo",
                {"missing": missing},
            )
        run_ids = {floor.units[sn].run_id for sn in sn_list}
        if len(run_ids) > 1:
            runs = sorted(floor.runs_by_id[run_id].run_no for run_id in run_ids)
            raise RecordRejected(
                ErrorCode.RUN_MISMATCH,
                f"the units of snList belong to several runs ({', '.join(runs)}); "
                "one event may cover units of one run only",
                {"runs": runs},
            )
        return floor.runs_by_id[run_ids.pop()]

    raise RecordRejected(
        ErrorCode.UNIT_RUN_NOT_FOUND,
        "the event names no run: send runNo, sn or snList in the envelope "
        "(or sn or snList in the payload)",
    )


def route_version_of(run: Run, floor: ShopFloor) -> RouteVersion:
    """Return the run's frozen route version, which must be ready."""
    version = floor.route_versions.get(run.route_version_id)
    if version is None or version.status not in READY_ROUTE_STATUSES:
        status = "missing" if version is None else version.status
        raise RecordRejected(
            ErrorCode.ROUTE_VERSION_NOT_READY,
            f"run {run.run_no!r} uses route version {run.route_version_id}, which "
            f"is {status}; release the route version before sending events",
            {"runNo": run.run_no, "routeVersionId": str(run.route_version_id)},
        )
    return version


def normalize_with(
    step: Step, envelope: Envelope, memo: NormalizeMemo
) -> NormalizedEvent | RecordRejected:
    """Normalize the envelope with the step's mapping, once per step."""
    found = memo.get(step.step_no)
    if found is None:
        assert step.mapping is not None
        try:
            found = step.mapping.normalize(
                envelope.document, step.station_type, envelope.occurred_at
            )
        except RecordRejected as error:
            found = error
        memo[step.step_no] = found
    return found


def ordered_candidates(
    version: RouteVersion, event_type: str, current_step_no: int | None
) -> list[Step]:
    """Return candidate steps, the unit's current step first, then step order."""
    candidates = version.candidates(event_type)
    if not candidates:
        return []
    first = [step for step in candidates if step.step_no == current_step_no]
    rest = [step for step in candidates if step.step_no != current_step_no]
    return first + rest


def current_step_hint(envelope: Envelope, floor: ShopFloor) -> int | None:
    """Return the current step of the units the envelope names, if they agree."""
    sn = hint_sn(envelope)
    serials = [sn] if sn is not None else (hint_sn_list(envelope) or [])
    steps = {floor.units[sn].current_step_no for sn in serials if sn in floor.units}
    return steps.pop() if len(steps) == 1 else None


def _mapped_current_step(
    envelope: Envelope, version: RouteVersion, floor: ShopFloor, memo: NormalizeMemo
) -> int | None:
    """Return the first candidate step that every unit named by its mapping is at.

    An envelope with runNo may name its units only in the payload, so the
    units' current step is known only after a mapping has normalized the event.
    """
    for step in version.candidates(envelope.event_type):
        outcome = normalize_with(step, envelope, memo)
        if isinstance(outcome, RecordRejected):
            continue
        serials = [outcome.sn] if outcome.sn else outcome.snList
        units = [floor.units[sn] for sn in serials if sn in floor.units]
        if units and all(unit.current_step_no == step.step_no for unit in units):
            return step.step_no
    return None


def choose_step(
    envelope: Envelope,
    version: RouteVersion,
    floor: ShopFloor,
    memo: NormalizeMemo,
) -> tuple[Step, NormalizedEvent]:
    """Pick the event's step and its normalized form.

    The units' current step is tried first, then the other candidates in step
    order. The units are those the envelope names, or else those a mapping
    yields. The first candidate whose mapping normalizes the event and whose
    station constraints the normalized station meets wins. When none meets the
    station constraints, the first candidate that normalizes is returned, and the
    station gate reports the mismatch. When none normalizes, the first
    candidate's errors are raised.
    """
    current = current_step_hint(envelope, floor)
    if current is None:
        current = _mapped_current_step(envelope, version, floor, memo)
    candidates = ordered_candidates(version, envelope.event_type, current)
    if not candidates:
        raise RecordRejected(
            ErrorCode.INGEST_MAPPING_MISSING,
            f"route {version.route_code} version {version.version_no} has no "
            f"{envelope.event_type} step with an ingestMapping; add a mapping to "
            "the step in the master data",
            {"routeVersionId": str(version.id), "eventType": envelope.event_type},
        )

    first_error: RecordRejected | None = None
    fallback: tuple[Step, NormalizedEvent] | None = None
    for step in candidates:
        outcome = normalize_with(step, envelope, memo)
        if isinstance(outcome, RecordRejected):
            first_error = first_error or outcome
            continue
        station = floor.stations.get(outcome.stationCode or "")
        if station is not None and step.accepts_station(station):
            return step, outcome
        fallback = fallback or (step, outcome)
    if fallback is not None:
        return fallback
    assert first_error is not None
    raise first_error


def _list(values: list[Any], limit: int = 10) -> str:
    shown = ", ".join(str(value) for value in values[:limit])
    more = len(values) - limit
    return f"{shown} and {more} more" if more > 0 else shown
