"""Judge one decoded envelope against the shop floor: accept it or reject it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingest_worker.envelope import Envelope
from ingest_worker.errors import ErrorCode, RecordRejected
from ingest_worker.mapping import NormalizedEvent
from ingest_worker.rules import gates
from ingest_worker.rules.data_values import (
    DataValue,
    bound_specs,
    build_data_values,
    measurement_summary,
)
from ingest_worker.rules.resolution import (
    NormalizeMemo,
    choose_step,
    resolve_run,
    route_version_of,
)
from ingest_worker.rules.state import RouteVersion, Run, ShopFloor, Station, Step, Unit
from ingest_worker.settings import Limits


@dataclass(slots=True)
class UnitMove:
    """One unit track and the move it causes."""

    unit: Unit
    step_no: int
    to_status: str
    to_step_no: int | None


@dataclass(slots=True)
class Accepted:
    """An event that passed every gate, with everything it writes."""

    envelope: Envelope
    normalized: NormalizedEvent
    run: Run
    version: RouteVersion
    step: Step
    station: Station | None
    moves: list[UnitMove]
    data_values: list[DataValue]
    summary: dict[str, Any]
    starts_run: bool = False
    rejected_units: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Existing units a PARTIAL carrier event leaves out, as the gates saw them.
    left_out: list[Unit] = field(default_factory=list)


def decide(
    envelope: Envelope, floor: ShopFloor, limits: Limits, memo: NormalizeMemo
) -> Accepted:
    """Accept the event or raise RecordRejected with the first failing gate.

    On acceptance the units and the run in `floor` are moved in memory, so the
    next event of the same batch is judged against the state the database
    will hold after the batch commits.
    """
    run = resolve_run(envelope, floor)
    version = route_version_of(run, floor)
    step, normalized = choose_step(envelope, version, floor, memo)
    if len(normalized.measurements) > limits.max_measurements:
        raise RecordRejected(
            ErrorCode.INGEST_PAYLOAD_INVALID,
            f"the event has {len(normalized.measurements)} measurements, over the "
            f"limit of {limits.max_measurements}",
            {"fields": {"measurements": f"more than {limits.max_measurements}"}},
        )
    if envelope.event_type == "BATCH":
        accepted = _decide_carrier(envelope, normalized, run, version, step, floor)
    else:
        accepted = _decide_unit(envelope, normalized, run, version, step, floor)
    _apply(accepted)
    return accepted


def _decide_unit(
    envelope: Envelope,
    normalized: NormalizedEvent,
    run: Run,
    version: RouteVersion,
    step: Step,
    floor: ShopFloor,
) -> Accepted:
    station = gates.find_station(normalized.stationCode, floor)
    assert normalized.sn is not None and normalized.result is not None
    unit = floor.units.get(normalized.sn)
    if unit is None:
        raise RecordRejected(
            ErrorCode.UNIT_NOT_FOUND,
            f"unit {normalized.sn!r} does not exist; register it in run {run.run_no}",
            {"sn": normalized.sn, "runNo": run.run_no},
        )
    if unit.run_id != run.id:
        other = floor.runs_by_id[unit.run_id].run_no
        raise RecordRejected(
            ErrorCode.UNIT_RUN_MISMATCH,
            f"unit {unit.sn} belongs to run {other}, not to run {run.run_no}",
            {"sn": unit.sn, "runNo": run.run_no, "unitRunNo": other},
        )
    gates.check_unit_status(unit, gates.UNIT_STATUS_CODES)
    gates.check_station_fits(station, step, version)
    gates.check_step_position(unit, step, version)
    gates.check_run_status(run, step)
    specs = bound_specs(step, floor)
    values = build_data_values(
        step, specs, normalized.measurements, normalized.result, per_carrier=False
    )
    return Accepted(
        envelope=envelope,
        normalized=normalized,
        run=run,
        version=version,
        step=step,
        station=station,
        moves=[_move(unit, step, version, normalized.result)],
        data_values=values,
        summary=measurement_summary(normalized.measurements, values),
    )


def _decide_carrier(
    envelope: Envelope,
    normalized: NormalizedEvent,
    run: Run,
    version: RouteVersion,
    step: Step,
    floor: ShopFloor,
) -> Accepted:
    assert normalized.result is not None
    gates.check_run_status(run, step, carrier_event=True)
    policy = step.mapping.batch_policy if step.mapping else "ALL_OR_NOTHING"

    failures: dict[str, RecordRejected] = {}
    passing: list[Unit] = []
    for sn in normalized.snList:
        try:
            passing.append(_check_carrier_unit(sn, run, step, version, floor))
        except RecordRejected as error:
            failures[sn] = error
    if policy == "ALL_OR_NOTHING":
        # The units' common step is checked after their existence, run and
        # status, but before their position relative to the event's step.
        position_codes = (ErrorCode.STEP_NOT_REACHED, ErrorCode.STEP_MISMATCH)
        earlier = {
            sn: error
            for sn, error in failures.items()
            if error.code not in position_codes
        }
        if earlier:
            raise _first_gate_failure(earlier)
        _check_common_step([floor.units[sn] for sn in normalized.snList])
        if failures:
            raise _first_gate_failure(failures)
    elif not passing:
        raise _first_gate_failure(failures)

    station: Station | None = None
    if normalized.stationCode is not None:
        station = gates.find_station(normalized.stationCode, floor)
        gates.check_station_fits(station, step, version)
    elif step.station_group or step.allowed_stations:
        raise RecordRejected(
            ErrorCode.INGEST_PAYLOAD_INVALID,
            f"step {step.step_no} is bound to stations but the event names none; "
            "map stationCodePath for this step",
            {"fields": {"stationCode": "missing"}},
        )

    specs = bound_specs(step, floor)
    values = build_data_values(
        step, specs, normalized.measurements, normalized.result, per_carrier=True
    )
    return Accepted(
        envelope=envelope,
        normalized=normalized,
        run=run,
        version=version,
        step=step,
        station=station,
        moves=[_move(unit, step, version, normalized.result) for unit in passing],
        data_values=values,
        summary=measurement_summary(normalized.measurements, values),
        rejected_units={
            sn: {"code": str(error.code), "message": error.message}
            for sn, error in failures.items()
        },
        left_out=[floor.units[sn] for sn in failures if sn in floor.units],
    )


def _check_common_step(units: list[Unit]) -> None:
    steps = {unit.current_step_no for unit in units}
    if len(steps) > 1:
        raise RecordRejected(
            ErrorCode.STEP_MISMATCH,
            "the units of the carrier are at different steps "
            f"({', '.join(str(s) for s in sorted(steps, key=str))}); a carrier "
            "event needs all its units at one step",
            {"steps": {unit.sn: unit.current_step_no for unit in units}},
        )


def _check_carrier_unit(
    sn: str, run: Run, step: Step, version: RouteVersion, floor: ShopFloor
) -> Unit:
    unit = floor.units.get(sn)
    if unit is None:
        raise RecordRejected(
            ErrorCode.UNIT_NOT_FOUND,
            f"unit {sn!r} does not exist; register it in run {run.run_no}",
            {"sn": sn},
        )
    if unit.run_id != run.id:
        raise RecordRejected(
            ErrorCode.RUN_MISMATCH,
            f"unit {sn} belongs to run {floor.runs_by_id[unit.run_id].run_no}, "
            f"not to run {run.run_no}",
            {"sn": sn},
        )
    gates.check_unit_status(unit, gates.BATCH_UNIT_STATUS_CODES)
    gates.check_step_position(unit, step, version)
    return unit


# The order in which carrier gates run. A rejected carrier event reports the
# earliest gate that any of its units failed, and names every unit that failed it.
_CARRIER_GATE_ORDER = [
    ErrorCode.UNIT_NOT_FOUND,
    ErrorCode.RUN_MISMATCH,
    *gates.BATCH_UNIT_STATUS_CODES.values(),
    ErrorCode.STEP_NOT_REACHED,
    ErrorCode.STEP_MISMATCH,
]


def _first_gate_failure(failures: dict[str, RecordRejected]) -> RecordRejected:
    for code in _CARRIER_GATE_ORDER:
        serials = [sn for sn, error in failures.items() if error.code == code]
        if not serials:
            continue
        first = failures[serials[0]]
        if len(serials) == 1:
            return first
        shown = ", ".join(serials[:10])
        more = f" and {len(serials) - 10} more" if len(serials) > 10 else ""
        return RecordRejected(
            code,
            f"{len(serials)} units of the carrier fail with {code}: {shown}{more}; "
            f"first: {first.message}",
            {"units": serials, "first": first.detail},
        )
    return next(iter(failures.values()))


def _move(unit: Unit, step: Step, version: RouteVersion, result: str) -> UnitMove:
    if result == "FAIL":
        return UnitMove(unit, step.step_no, "OUT_FAILED", unit.current_step_no)
    following = version.next_step(step.step_no)
    if following is None:
        return UnitMove(unit, step.step_no, "DONE", unit.current_step_no)
    return UnitMove(unit, step.step_no, "QUEUED", following.step_no)


def _apply(accepted: Accepted) -> None:
    for move in accepted.moves:
        move.unit.status = move.to_status
        move.unit.current_step_no = move.to_step_no
        move.unit.moves += 1
    run = accepted.run
    occurred_at = accepted.envelope.occurred_at
    if run.status == "AUTHORIZED":
        run.status = "IN_PROGRESS"
        run.started_at = occurred_at
        run.started_in_batch = True
        accepted.starts_run = True
    elif run.started_in_batch and run.started_at and occurred_at < run.started_at:
        # Events of one batch are judged in arrival order, which across
        # partitions need not be the order they occurred in.
        run.started_at = occurred_at
