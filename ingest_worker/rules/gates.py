"""Execution gates for unit and carrier events (contract steps 7 and 8)."""

from __future__ import annotations

from ingest_worker.errors import ErrorCode, RecordRejected
from ingest_worker.rules.state import (
    CLOSED_RUN_STATUSES,
    OPEN_RUN_STATUSES,
    RouteVersion,
    Run,
    ShopFloor,
    Station,
    Step,
    Unit,
)

UNIT_STATUS_CODES = {
    "DONE": ErrorCode.UNIT_ALREADY_DONE,
    "OUT_FAILED": ErrorCode.UNIT_OUT_FAILED,
    "SCRAPPED": ErrorCode.UNIT_SCRAPPED,
    "ON_HOLD": ErrorCode.UNIT_ON_HOLD,
}
# Carrier events also reject units still in a station.
BATCH_UNIT_STATUS_CODES = {"IN_STATION": ErrorCode.UNIT_IN_STATION, **UNIT_STATUS_CODES}


def find_station(code: str | None, floor: ShopFloor) -> Station:
    """Return the event's station, which must exist and be active."""
    station = floor.stations.get(code or "")
    if station is None or not station.active:
        state = "is inactive" if station is not None else "does not exist"
        raise RecordRejected(
            ErrorCode.STATION_NOT_FOUND,
            f"station {code!r} {state}; add it to the master data with `seed`",
            {"stationCode": code},
        )
    return station


def check_station_fits(station: Station, step: Step, version: RouteVersion) -> None:
    """The station must meet the constraints of the event's step."""
    if step.accepts_station(station):
        return
    raise RecordRejected(
        ErrorCode.STATION_MISMATCH,
        f"station {station.code} ({station.station_type}, group "
        f"{station.group_code}) meets no {step.station_type} step of route "
        f"{version.route_code}: step {step.step_no} wants {_constraints(step)}",
        {
            "stationCode": station.code,
            "stepNo": step.step_no,
            "stationGroup": step.station_group,
            "allowedStations": list(step.allowed_stations or ()),
        },
    )


def _constraints(step: Step) -> str:
    parts = [f"type {step.station_type}"]
    if step.station_group:
        parts.append(f"group {step.station_group}")
    if step.allowed_stations:
        parts.append(f"one of {', '.join(step.allowed_stations)}")
    return ", ".join(parts)


def check_unit_status(unit: Unit, codes: dict[str, ErrorCode]) -> None:
    code = codes.get(unit.status)
    if code is not None:
        raise RecordRejected(
            code,
            f"unit {unit.sn} is {unit.status} and takes no more results",
            {"sn": unit.sn, "status": unit.status},
        )


def check_step_position(unit: Unit, step: Step, version: RouteVersion) -> None:
    """The event's step must be the unit's current step."""
    if unit.current_step_no == step.step_no:
        return
    order = [candidate.step_no for candidate in version.steps]
    current = unit.current_step_no
    detail = {"sn": unit.sn, "stepNo": step.step_no, "currentStepNo": current}
    if (
        current is not None
        and current in order
        and (order.index(step.step_no) > order.index(current))
    ):
        raise RecordRejected(
            ErrorCode.STEP_NOT_REACHED,
            f"unit {unit.sn} is at step {current}, before step {step.step_no} of "
            "this event; results of the earlier steps may still be on their way",
            detail,
        )
    raise RecordRejected(
        ErrorCode.STEP_MISMATCH,
        f"unit {unit.sn} is at step {current}, past step {step.step_no} of this "
        "event; the result arrived for a step the unit already left",
        detail,
    )


def check_run_status(run: Run, step: Step, *, carrier_event: bool = False) -> None:
    """Closed and PREP runs take no results; some steps need authorization.

    A closed run is reported before authorization, because RUN_CLOSED is final
    while RUN_NOT_AUTHORIZED is retried. A PREP run is RUN_NOT_AUTHORIZED for a
    step that requires authorization and RUN_IN_PREP for any other step.
    Carrier events need an authorized or running run, whatever the step requires.
    """
    detail = {"runNo": run.run_no, "status": run.status, "stepNo": step.step_no}
    if run.status in CLOSED_RUN_STATUSES:
        raise RecordRejected(
            ErrorCode.RUN_CLOSED,
            f"run {run.run_no} is {run.status} and takes no more results",
            detail,
        )
    needs_authorization = step.requires_authorization or carrier_event
    if needs_authorization and run.status not in OPEN_RUN_STATUSES:
        raise RecordRejected(
            ErrorCode.RUN_NOT_AUTHORIZED,
            f"run {run.run_no} is {run.status}; step {step.step_no} needs it "
            "AUTHORIZED or IN_PROGRESS",
            detail,
        )
    if run.status == "PREP":
        raise RecordRejected(
            ErrorCode.RUN_IN_PREP,
            f"run {run.run_no} is still in PREP; authorize the run first",
            detail,
        )
