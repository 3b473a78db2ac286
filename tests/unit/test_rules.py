"""Tests of the execution rules: run resolution, step choice, gates and moves.

Every test builds its shop floor in memory. The route has five steps:
10 SPI (AUTO), 20 in-circuit test (TEST), 30 wash (BATCH), 40 functional test
(TEST) and 50 packing (AUTO, no authorization needed). Both TEST steps and both
AUTO steps are candidates for events of their type, so the tests also show how
the rules pick the event's step among them.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_worker.envelope import Envelope, decode_envelope
from ingest_worker.errors import ErrorCode, RecordRejected
from ingest_worker.mapping import compile_mapping
from ingest_worker.rules.decide import Accepted, decide
from ingest_worker.rules.state import (
    DataSpec,
    RouteVersion,
    Run,
    ShopFloor,
    Station,
    Step,
    Unit,
)
from ingest_worker.settings import Limits

LIMITS = Limits()
OCCURRED_AT = "2026-12-04T06:00:00.000Z"
STARTED_AT = datetime(2026, 12, 1, 8, tzinfo=UTC)

AUTO_MAPPING: dict[str, Any] = {
    "eventType": "AUTO",
    "stationCodePath": "payload.station",
    "snPath": "payload.board",
    "result": {"path": "payload.result", "passValues": ["OK"], "failValues": ["NG"]},
    "measurements": {
        "itemsPath": "payload.values[*]",
        "namePath": "name",
        "valuePath": "value",
        "judgePath": "judge",
    },
    "dataSpecMap": {"volume": "VOLUME", "height": "HEIGHT"},
}
ICT_MAPPING: dict[str, Any] = {
    "eventType": "TEST",
    "stationCodePath": "payload.tester",
    "snPath": "payload.serial",
    "testResultIdPath": "payload.ictId",
    "result": {"path": "payload.verdict", "passValues": ["P"], "failValues": ["F"]},
}
FCT_MAPPING: dict[str, Any] = {
    "eventType": "TEST",
    "stationCodePath": "payload.station_id",
    "snPath": "payload.dut_id",
    "testResultIdPath": "dedupeKey",
    "result": {
        "path": "payload.outcome",
        "passValues": ["PASS"],
        "failValues": ["FAIL"],
    },
    "measurements": {
        "itemsPath": "payload.measurements.*",
        "namePath": "name",
        "valuePath": "measured_value",
        "unitPath": "units",
        "judgePath": "outcome",
    },
    "judge": {"passValues": ["PASS"], "failValues": ["FAIL"]},
    "dataSpecMap": {
        "vcc_3v3": "VCC",
        "firmware_version": "FIRMWARE",
        "led_ok": "LED",
        "config": "CONFIG",
    },
}
WASH_MAPPING: dict[str, Any] = {
    "eventType": "BATCH",
    "stationCodePath": "payload.washer",
    "carrierCodePath": "payload.basket",
    "snListPath": "payload.boards[*]",
    "result": {"path": "payload.status", "passValues": ["OK"], "failValues": ["NOK"]},
    "measurements": {
        "itemsPath": "payload.parameters[*]",
        "namePath": "name",
        "valuePath": "value",
        "unitPath": "unit",
    },
    "dataSpecMap": {"temperature": "WASH_TEMP"},
}


def make_step(
    step_no: int,
    station_type: str,
    mapping: dict[str, Any] | None,
    *,
    group: str | None = None,
    allowed: tuple[str, ...] | None = None,
    specs: tuple[str, ...] = (),
    requires_authorization: bool = True,
) -> Step:
    return Step(
        step_no=step_no,
        operation=f"OP_{step_no}",
        station_type=station_type,  # type: ignore[arg-type]
        station_group=group,
        allowed_stations=allowed,
        requires_fai=False,
        requires_authorization=requires_authorization,
        data_specs=specs,
        mapping=compile_mapping(mapping) if mapping is not None else None,
    )


SPI_STEP = make_step(10, "AUTO", AUTO_MAPPING, group="SPI", specs=("VOLUME", "HEIGHT"))
ICT_STEP = make_step(20, "TEST", ICT_MAPPING, group="ICT")
WASH_STEP = make_step(30, "BATCH", WASH_MAPPING, group="WASH", specs=("WASH_TEMP",))
FCT_STEP = make_step(
    40, "TEST", FCT_MAPPING, group="FCT", specs=("VCC", "FIRMWARE", "LED", "CONFIG")
)
PACK_STEP = make_step(
    50, "AUTO", AUTO_MAPPING, group="PACK", requires_authorization=False
)
STEPS = (SPI_STEP, ICT_STEP, WASH_STEP, FCT_STEP, PACK_STEP)


def make_version(
    *steps: Step, version_id: int = 1, status: str = "READY"
) -> RouteVersion:
    return RouteVersion(
        id=version_id,
        route_code="ROUTE-MB",
        version_no=version_id,
        status=status,
        steps=tuple(sorted(steps, key=lambda step: step.step_no)),
    )


def number_spec(
    spec_id: int,
    name: str,
    *,
    required: bool,
    trigger: str = "EACH_UNIT",
    **limits: Any,
) -> DataSpec:
    return DataSpec(spec_id, name, "NUMBER", trigger, "AUTO", required, dict(limits))


def make_floor() -> ShopFloor:
    """Return a fresh shop floor: RUN-1 AUTHORIZED with SN-1..SN-6 at step 10."""
    floor = ShopFloor()
    floor.route_versions = {
        1: make_version(*STEPS),
        2: make_version(*STEPS, version_id=2, status="DRAFT"),
    }
    for run in (
        Run(1, "RUN-1", "AUTHORIZED", 1, None),
        Run(2, "RUN-2", "IN_PROGRESS", 1, STARTED_AT),
        Run(3, "RUN-DRAFT", "AUTHORIZED", 2, None),
        Run(4, "RUN-LOST", "AUTHORIZED", 99, None),
    ):
        floor.add_run(run)

    for number in range(1, 7):
        floor.units[f"SN-{number}"] = Unit(number, f"SN-{number}", 1, "QUEUED", 10, 0)
    floor.units["SN-9"] = Unit(9, "SN-9", 2, "QUEUED", 10, 0)
    floor.units["SN-D"] = Unit(10, "SN-D", 3, "QUEUED", 10, 0)
    floor.units["SN-L"] = Unit(11, "SN-L", 4, "QUEUED", 10, 0)

    for station_id, (code, station_type, group) in enumerate(
        [
            ("SPI-1", "AUTO", "SPI"),
            ("AOI-1", "AUTO", "AOI"),
            ("ICT-1", "TEST", "ICT"),
            ("FCT-1", "TEST", "FCT"),
            ("FCT-2", "TEST", "FCT"),
            ("WASH-1", "BATCH", "WASH"),
            ("PACK-1", "AUTO", "PACK"),
        ],
        start=1,
    ):
        floor.stations[code] = Station(station_id, code, station_type, group, "SMT-A")
    floor.stations["SPI-OLD"] = Station(99, "SPI-OLD", "AUTO", "SPI", "SMT-A", False)

    for spec in (
        number_spec(1, "VOLUME", required=True, min=70, max=130),
        number_spec(2, "HEIGHT", required=False),
        number_spec(3, "WASH_TEMP", required=True, trigger="EACH_CARRIER", min=50),
        number_spec(4, "VCC", required=True, min=3.2, max=3.4),
        DataSpec(5, "FIRMWARE", "TEXT", "EACH_UNIT", "AUTO", False, {}),
        DataSpec(6, "LED", "BOOLEAN", "EACH_UNIT", "AUTO", False, {}),
        DataSpec(7, "CONFIG", "JSON", "EACH_UNIT", "AUTO", False, {}),
    ):
        floor.data_specs[spec.name] = spec
    return floor


_dedupe_numbers = itertools.count()


def make_envelope(event_type: str, payload: dict[str, Any], **fields: Any) -> Envelope:
    document = {
        "dedupeKey": f"key-{next(_dedupe_numbers)}",
        "sourceSystem": "station",
        "eventType": event_type,
        "occurredAt": OCCURRED_AT,
        "payload": payload,
        **fields,
    }
    return decode_envelope(orjson.dumps(document), LIMITS)


def spi_event(
    sn: str = "SN-1",
    *,
    station: str = "SPI-1",
    result: str = "OK",
    values: list[dict[str, Any]] | None = None,
    hint: bool = True,
    **fields: Any,
) -> Envelope:
    if values is None:
        values = [
            {"name": "volume", "value": 99.5},
            {"name": "height", "value": 120},
            {"name": "offset_x", "value": -2.0},
        ]
    payload = {"station": station, "board": sn, "result": result, "values": values}
    if hint:
        fields.setdefault("sn", sn)
    return make_envelope("AUTO", payload, **fields)


def ict_event(
    sn: str = "SN-1", *, station: str = "ICT-1", verdict: str = "P", **fields: Any
) -> Envelope:
    payload = {
        "tester": station,
        "serial": sn,
        "ictId": f"ICT-{sn}",
        "verdict": verdict,
    }
    fields.setdefault("sn", sn)
    return make_envelope("TEST", payload, **fields)


def fct_measurements(**overrides: Any) -> dict[str, Any]:
    """Return OpenHTF-style measurements keyed by name.

    An override of None removes that measurement.
    """
    measurements: dict[str, Any] = {
        "vcc_3v3": {"name": "vcc_3v3", "measured_value": 3.31, "units": "V"},
        "firmware_version": {"name": "firmware_version", "measured_value": "1.4.2"},
        "led_ok": {"name": "led_ok", "measured_value": True, "outcome": "PASS"},
    }
    for name, value in overrides.items():
        if value is None:
            measurements.pop(name, None)
        else:
            measurements[name] = {"name": name, **value}
    return measurements


def fct_event(
    sn: str = "SN-1",
    *,
    station: str = "FCT-1",
    outcome: str = "PASS",
    measurements: dict[str, Any] | None = None,
    hint: bool = True,
    **fields: Any,
) -> Envelope:
    payload = {
        "dut_id": sn,
        "station_id": station,
        "outcome": outcome,
        "measurements": fct_measurements() if measurements is None else measurements,
    }
    if hint:
        fields.setdefault("sn", sn)
    return make_envelope("TEST", payload, **fields)


def wash_event(
    boards: list[str],
    *,
    basket: str = "BASKET-1",
    station: str | None = "WASH-1",
    status: str = "OK",
    parameters: list[dict[str, Any]] | None = None,
    hint: bool = True,
    **fields: Any,
) -> Envelope:
    if parameters is None:
        parameters = [
            {"name": "temperature", "value": 55.5, "unit": "C"},
            {"name": "conductivity", "value": 1.02},
        ]
    payload: dict[str, Any] = {
        "basket": basket,
        "boards": boards,
        "status": status,
        "parameters": parameters,
    }
    if station is not None:
        payload["washer"] = station
    if hint:
        fields.setdefault("snList", boards)
    return make_envelope("BATCH", payload, **fields)


def place(
    floor: ShopFloor, sn: str, step_no: int | None, status: str = "QUEUED"
) -> None:
    floor.units[sn].current_step_no = step_no
    floor.units[sn].status = status


def accept(envelope: Envelope, floor: ShopFloor) -> Accepted:
    return decide(envelope, floor, LIMITS, {})


def reject(envelope: Envelope, floor: ShopFloor) -> RecordRejected:
    with pytest.raises(RecordRejected) as caught:
        decide(envelope, floor, LIMITS, {})
    return caught.value


def snapshot(floor: ShopFloor) -> list[tuple[Any, ...]]:
    """Return the state of the floor that judging an event may change."""
    units = [
        (unit.sn, unit.status, unit.current_step_no, unit.version, unit.moves)
        for unit in floor.units.values()
    ]
    runs = [
        (run.run_no, run.status, run.started_at, run.started_in_batch)
        for run in floor.runs_by_id.values()
    ]
    return sorted(units) + sorted(runs, key=str)


# Run resolution and the route version.


def test_run_from_run_no() -> None:
    floor = make_floor()
    accepted = accept(spi_event("SN-1", hint=False, runNo="RUN-1"), floor)
    assert accepted.run.run_no == "RUN-1"


def test_unknown_run_no() -> None:
    error = reject(spi_event("SN-1", runNo="RUN-404"), make_floor())
    assert error.code == ErrorCode.RUN_NOT_FOUND
    assert error.detail == {"runNo": "RUN-404"}


def test_run_no_wins_over_sn() -> None:
    # SN-404 does not exist, but runNo is present, so the run resolves and the
    # unit gate reports the unknown unit instead.
    error = reject(spi_event("SN-404", runNo="RUN-1"), make_floor())
    assert error.code == ErrorCode.UNIT_NOT_FOUND


def test_unknown_sn_hint() -> None:
    error = reject(spi_event("SN-404"), make_floor())
    assert error.code == ErrorCode.UNIT_RUN_NOT_FOUND
    assert error.detail == {"sn": "SN-404"}


def test_payload_sn_resolves_run() -> None:
    payload = {"station": "SPI-1", "board": "SN-1", "result": "OK", "sn": "SN-1"}
    payload["values"] = [{"name": "volume", "value": 99}]
    accepted = accept(make_envelope("AUTO", payload), make_floor())
    assert accepted.run.run_no == "RUN-1"


def test_envelope_sn_before_payload_sn() -> None:
    floor = make_floor()
    payload = {"station": "SPI-1", "board": "SN-1", "result": "OK", "sn": "SN-404"}
    payload["values"] = [{"name": "volume", "value": 99}]
    accepted = accept(make_envelope("AUTO", payload, sn="SN-1"), floor)
    assert accepted.run.run_no == "RUN-1"

    payload["sn"] = "SN-1"
    error = reject(make_envelope("AUTO", payload, sn="SN-404"), make_floor())
    assert error.code == ErrorCode.UNIT_RUN_NOT_FOUND
    assert error.detail == {"sn": "SN-404"}


def test_unknown_sn_list_unit() -> None:
    error = reject(wash_event(["SN-1", "SN-404", "SN-405"]), make_floor())
    assert error.code == ErrorCode.UNIT_RUN_NOT_FOUND
    assert error.detail == {"missing": ["SN-404", "SN-405"]}


def test_payload_sn_list_resolves_run() -> None:
    floor = make_floor()
    for sn in ("SN-1", "SN-2"):
        place(floor, sn, 30)
    envelope = wash_event(["SN-1", "SN-2"], hint=False)
    envelope.document["payload"]["snList"] = ["SN-1", "SN-2"]
    accepted = accept(envelope, floor)
    assert accepted.run.run_no == "RUN-1"


def test_sn_list_of_two_runs() -> None:
    error = reject(wash_event(["SN-1", "SN-9"]), make_floor())
    assert error.code == ErrorCode.RUN_MISMATCH
    assert error.detail == {"runs": ["RUN-1", "RUN-2"]}


def test_no_run_hint() -> None:
    error = reject(spi_event("SN-1", hint=False), make_floor())
    assert error.code == ErrorCode.UNIT_RUN_NOT_FOUND
    assert "runNo" in error.message


def test_draft_route_version_is_not_ready() -> None:
    error = reject(spi_event("SN-D"), make_floor())
    assert error.code == ErrorCode.ROUTE_VERSION_NOT_READY
    assert error.detail["runNo"] == "RUN-DRAFT"


def test_missing_route_version_is_not_ready() -> None:
    error = reject(spi_event("SN-L"), make_floor())
    assert error.code == ErrorCode.ROUTE_VERSION_NOT_READY
    assert error.detail["routeVersionId"] == "99"


def test_retired_version_takes_events() -> None:
    floor = make_floor()
    floor.route_versions[1] = make_version(*STEPS, status="RETIRED")
    assert accept(spi_event("SN-1"), floor).step.step_no == 10


# Step choice and normalization.


def test_no_step_of_event_type() -> None:
    floor = make_floor()
    floor.route_versions[1] = make_version(SPI_STEP, ICT_STEP, FCT_STEP)
    error = reject(wash_event(["SN-1"]), floor)
    assert error.code == ErrorCode.INGEST_MAPPING_MISSING
    assert error.detail["eventType"] == "BATCH"


def test_step_without_mapping() -> None:
    floor = make_floor()
    floor.route_versions[1] = make_version(
        make_step(10, "AUTO", None, group="SPI"), ICT_STEP
    )
    error = reject(spi_event("SN-1"), floor)
    assert error.code == ErrorCode.INGEST_MAPPING_MISSING


def test_mapping_of_other_type() -> None:
    # An AUTO mapping placed on a TEST step does not make the step a candidate.
    floor = make_floor()
    floor.route_versions[1] = make_version(
        SPI_STEP, make_step(20, "TEST", AUTO_MAPPING, group="ICT")
    )
    error = reject(ict_event("SN-1"), floor)
    assert error.code == ErrorCode.INGEST_MAPPING_MISSING
    assert error.detail["eventType"] == "TEST"


def test_missing_fields_are_payload_invalid() -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    envelope = fct_event("SN-1")
    del envelope.document["payload"]["station_id"]
    error = reject(envelope, floor)
    assert error.code == ErrorCode.INGEST_PAYLOAD_INVALID
    assert list(error.detail["fields"]) == ["stationCode"]


def test_missing_test_result_id() -> None:
    floor = make_floor()
    place(floor, "SN-1", 20)
    envelope = ict_event("SN-1")
    del envelope.document["payload"]["ictId"]
    error = reject(envelope, floor)
    assert error.code == ErrorCode.INGEST_PAYLOAD_INVALID
    assert "testResultId" in error.detail["fields"]


def test_batch_without_boards() -> None:
    floor = make_floor()
    envelope = wash_event([], runNo="RUN-1", hint=False)
    error = reject(envelope, floor)
    assert error.code == ErrorCode.INGEST_PAYLOAD_INVALID
    assert "snList" in error.detail["fields"]


def test_error_outcome_is_never_a_pass() -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    before = snapshot(floor)
    error = reject(fct_event("SN-1", outcome="ERROR"), floor)
    assert error.code == ErrorCode.INGEST_PAYLOAD_INVALID
    assert "result" in error.detail["fields"]
    assert "'ERROR'" in error.detail["fields"]["result"]
    assert snapshot(floor) == before


def test_too_many_measurements() -> None:
    floor = make_floor()
    values = [{"name": f"m{index}", "value": index} for index in range(4)]
    with pytest.raises(RecordRejected) as caught:
        decide(spi_event("SN-1", values=values), floor, Limits(max_measurements=3), {})
    assert caught.value.code == ErrorCode.INGEST_PAYLOAD_INVALID
    assert "measurements" in caught.value.detail["fields"]


def test_current_step_tried_first() -> None:
    # Steps 20 and 40 share one mapping and have no station constraints, so
    # both normalize the event and both fit its station. The unit is at 40.
    shared_ict = make_step(20, "TEST", FCT_MAPPING)
    shared_fct = make_step(40, "TEST", FCT_MAPPING, specs=("VCC",))
    floor = make_floor()
    floor.route_versions[1] = make_version(SPI_STEP, shared_ict, shared_fct)
    place(floor, "SN-1", 40)
    assert accept(fct_event("SN-1"), floor).step.step_no == 40

    place(floor, "SN-2", 20)
    assert accept(fct_event("SN-2"), floor).step.step_no == 20


def test_current_step_from_mapped_sn() -> None:
    # With runNo and no sn in the envelope, only the mapping names the unit.
    # Its current step must still be tried first.
    shared_ict = make_step(20, "TEST", FCT_MAPPING)
    shared_fct = make_step(40, "TEST", FCT_MAPPING, specs=("VCC",))
    floor = make_floor()
    floor.route_versions[1] = make_version(SPI_STEP, shared_ict, shared_fct)
    place(floor, "SN-1", 40)
    accepted = accept(fct_event("SN-1", hint=False, runNo="RUN-1"), floor)
    assert accepted.step.step_no == 40
    assert floor.units["SN-1"].status == "DONE"


def test_other_candidates_in_step_order() -> None:
    # The unit is at step 10. Of the TEST candidates 20 and 40, both with one
    # shared mapping and no constraints, 20 comes first.
    shared_ict = make_step(20, "TEST", FCT_MAPPING)
    shared_fct = make_step(40, "TEST", FCT_MAPPING)
    floor = make_floor()
    floor.route_versions[1] = make_version(SPI_STEP, shared_fct, shared_ict)
    error = reject(fct_event("SN-1"), floor)
    assert error.code == ErrorCode.STEP_NOT_REACHED
    assert error.detail["stepNo"] == 20


def test_in_circuit_and_functional_mappings() -> None:
    floor = make_floor()
    place(floor, "SN-1", 20)
    accepted = accept(ict_event("SN-1"), floor)
    assert accepted.step.step_no == 20
    assert floor.units["SN-1"].current_step_no == 30

    place(floor, "SN-2", 40)
    accepted = accept(fct_event("SN-2"), floor)
    assert accepted.step.step_no == 40


def test_functional_result_before_its_step() -> None:
    # The unit is still at the in-circuit step. The functional test result
    # normalizes only with the functional mapping, so it is early, not wrong.
    floor = make_floor()
    place(floor, "SN-1", 20)
    error = reject(fct_event("SN-1"), floor)
    assert error.code == ErrorCode.STEP_NOT_REACHED
    assert error.detail == {"sn": "SN-1", "stepNo": 40, "currentStepNo": 20}


def test_in_circuit_result_after_its_step() -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    error = reject(ict_event("SN-1"), floor)
    assert error.code == ErrorCode.STEP_MISMATCH
    assert error.detail == {"sn": "SN-1", "stepNo": 20, "currentStepNo": 40}


def test_station_picks_among_candidates() -> None:
    # Steps 10 and 50 share the AUTO mapping, so the station group decides.
    floor = make_floor()
    place(floor, "SN-1", 50)
    accepted = accept(spi_event("SN-1", station="PACK-1"), floor)
    assert accepted.step.step_no == 50
    assert floor.units["SN-1"].status == "DONE"

    error = reject(spi_event("SN-2", station="PACK-1"), floor)
    assert error.code == ErrorCode.STEP_NOT_REACHED
    assert error.detail["stepNo"] == 50


def test_no_candidate_normalizes_reports_first() -> None:
    # The unit is at 40, so the functional mapping is tried first and its
    # errors are the ones reported.
    floor = make_floor()
    place(floor, "SN-1", 40)
    envelope = make_envelope("TEST", {"nothing": True}, sn="SN-1")
    error = reject(envelope, floor)
    assert error.code == ErrorCode.INGEST_PAYLOAD_INVALID
    assert "payload.dut_id" in error.detail["fields"]["sn"]

    place(floor, "SN-1", 20)
    error = reject(envelope, floor)
    assert "payload.serial" in error.detail["fields"]["sn"]


def test_station_of_no_candidate_is_mismatch() -> None:
    floor = make_floor()
    error = reject(spi_event("SN-1", station="AOI-1"), floor)
    assert error.code == ErrorCode.STATION_MISMATCH
    assert error.detail["stationCode"] == "AOI-1"
    assert error.detail["stepNo"] == 10


def test_station_outside_allowed_is_mismatch() -> None:
    floor = make_floor()
    only_fct_2 = make_step(40, "TEST", FCT_MAPPING, group="FCT", allowed=("FCT-2",))
    floor.route_versions[1] = make_version(SPI_STEP, only_fct_2)
    place(floor, "SN-1", 40)
    error = reject(fct_event("SN-1", station="FCT-1"), floor)
    assert error.code == ErrorCode.STATION_MISMATCH
    assert error.detail["allowedStations"] == ["FCT-2"]
    assert accept(fct_event("SN-1", station="FCT-2"), floor).step.step_no == 40


def test_station_of_other_type_is_mismatch() -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    error = reject(fct_event("SN-1", station="SPI-1"), floor)
    assert error.code == ErrorCode.STATION_MISMATCH


# Gates for AUTO and TEST events.


def test_unknown_station() -> None:
    error = reject(spi_event("SN-1", station="SPI-404"), make_floor())
    assert error.code == ErrorCode.STATION_NOT_FOUND
    assert error.detail == {"stationCode": "SPI-404"}


def test_inactive_station() -> None:
    error = reject(spi_event("SN-1", station="SPI-OLD"), make_floor())
    assert error.code == ErrorCode.STATION_NOT_FOUND


def test_unknown_unit() -> None:
    error = reject(spi_event("SN-404", hint=False, runNo="RUN-1"), make_floor())
    assert error.code == ErrorCode.UNIT_NOT_FOUND
    assert error.detail == {"sn": "SN-404", "runNo": "RUN-1"}


def test_unit_of_other_run() -> None:
    error = reject(spi_event("SN-9", runNo="RUN-1"), make_floor())
    assert error.code == ErrorCode.UNIT_RUN_MISMATCH
    assert error.detail == {"sn": "SN-9", "runNo": "RUN-1", "unitRunNo": "RUN-2"}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("DONE", ErrorCode.UNIT_ALREADY_DONE),
        ("OUT_FAILED", ErrorCode.UNIT_OUT_FAILED),
        ("SCRAPPED", ErrorCode.UNIT_SCRAPPED),
        ("ON_HOLD", ErrorCode.UNIT_ON_HOLD),
    ],
)
def test_closed_unit_status(status: str, code: ErrorCode) -> None:
    floor = make_floor()
    place(floor, "SN-1", 10, status)
    error = reject(spi_event("SN-1"), floor)
    assert error.code == code
    assert error.detail == {"sn": "SN-1", "status": status}


def test_unit_in_station_takes_unit_events() -> None:
    floor = make_floor()
    place(floor, "SN-1", 10, "IN_STATION")
    accept(spi_event("SN-1"), floor)
    assert floor.units["SN-1"].status == "QUEUED"


def test_step_not_reached_vs_mismatch() -> None:
    floor = make_floor()
    place(floor, "SN-1", 20)
    error = reject(spi_event("SN-1"), floor)
    assert error.code == ErrorCode.STEP_MISMATCH
    assert error.detail == {"sn": "SN-1", "stepNo": 10, "currentStepNo": 20}

    place(floor, "SN-1", 10)
    error = reject(fct_event("SN-1"), floor)
    assert error.code == ErrorCode.STEP_NOT_REACHED
    assert error.detail == {"sn": "SN-1", "stepNo": 40, "currentStepNo": 10}


def test_unit_without_step_is_mismatch() -> None:
    floor = make_floor()
    place(floor, "SN-1", None)
    assert reject(spi_event("SN-1"), floor).code == ErrorCode.STEP_MISMATCH


@pytest.mark.parametrize(
    ("run_status", "step_no", "code"),
    [
        # Step 10 requires authorization, step 50 does not.
        ("PREP", 10, ErrorCode.RUN_NOT_AUTHORIZED),
        ("PREP", 50, ErrorCode.RUN_IN_PREP),
        ("COMPLETED", 10, ErrorCode.RUN_CLOSED),
        ("CLOSED_REWORK", 50, ErrorCode.RUN_CLOSED),
        ("SCRAPPED", 10, ErrorCode.RUN_CLOSED),
        ("SCRAPPED", 50, ErrorCode.RUN_CLOSED),
    ],
)
def test_run_status_gate(run_status: str, step_no: int, code: ErrorCode) -> None:
    floor = make_floor()
    floor.runs_by_no["RUN-1"].status = run_status
    place(floor, "SN-1", step_no)
    station = "SPI-1" if step_no == 10 else "PACK-1"
    error = reject(spi_event("SN-1", station=station), floor)
    assert error.code == code
    assert error.detail["runNo"] == "RUN-1"
    assert error.detail["stepNo"] == step_no


@pytest.mark.parametrize("run_status", ["AUTHORIZED", "IN_PROGRESS"])
def test_open_run_takes_events(run_status: str) -> None:
    floor = make_floor()
    floor.runs_by_no["RUN-1"].status = run_status
    accept(spi_event("SN-1"), floor)
    assert floor.runs_by_no["RUN-1"].status == "IN_PROGRESS"


def test_missing_data_spec() -> None:
    floor = make_floor()
    del floor.data_specs["HEIGHT"]
    error = reject(spi_event("SN-1"), floor)
    assert error.code == ErrorCode.DATA_SPEC_NOT_FOUND
    assert error.detail == {"stepNo": 10, "dataSpecs": ["HEIGHT"]}


def test_inactive_data_spec() -> None:
    floor = make_floor()
    floor.data_specs["VOLUME"] = dataclasses.replace(
        floor.data_specs["VOLUME"], active=False
    )
    error = reject(spi_event("SN-1"), floor)
    assert error.code == ErrorCode.DATA_SPEC_NOT_FOUND
    assert error.detail["dataSpecs"] == ["VOLUME"]


# The faults of a functional test event, in gate order. Faults of one group
# exclude each other.
GATE_FAULTS = [
    ("station_unknown", "station", ErrorCode.STATION_NOT_FOUND),
    ("unit_unknown", "unit", ErrorCode.UNIT_NOT_FOUND),
    ("unit_other_run", "unit", ErrorCode.UNIT_RUN_MISMATCH),
    ("unit_on_hold", "status", ErrorCode.UNIT_ON_HOLD),
    ("station_mismatch", "station", ErrorCode.STATION_MISMATCH),
    ("step_ahead", "step", ErrorCode.STEP_NOT_REACHED),
    ("step_behind", "step", ErrorCode.STEP_MISMATCH),
    ("run_prep", "run", ErrorCode.RUN_NOT_AUTHORIZED),
    ("run_closed", "run", ErrorCode.RUN_CLOSED),
    ("spec_missing", "spec", ErrorCode.DATA_SPEC_NOT_FOUND),
    ("value_invalid", "value", ErrorCode.DATA_VALUE_INVALID),
    ("required_missing", "required", ErrorCode.REQUIRED_DATA_MISSING),
]
GATE_PAIRS = [
    (earlier, later, code)
    for (earlier, group, code), (later, other_group, _) in itertools.combinations(
        GATE_FAULTS, 2
    )
    if group != other_group
]


def broken_fct_event(floor: ShopFloor, faults: set[str]) -> Envelope:
    """Break the named gates for a functional test event of SN-1 at step 40."""
    sn = "SN-1"
    if "unit_unknown" in faults:
        sn = "SN-404"
    if "unit_other_run" in faults:
        sn = "SN-9"
    if sn in floor.units:
        place(floor, sn, 40)
    if "unit_on_hold" in faults and sn in floor.units:
        place(floor, sn, 40, "ON_HOLD")
    if "step_behind" in faults and sn in floor.units:
        floor.units[sn].current_step_no = 50
    if "step_ahead" in faults and sn in floor.units:
        floor.units[sn].current_step_no = 30
    if "run_closed" in faults:
        floor.runs_by_no["RUN-1"].status = "COMPLETED"
    if "run_prep" in faults:
        floor.runs_by_no["RUN-1"].status = "PREP"
    if "spec_missing" in faults:
        del floor.data_specs["CONFIG"]
    station = "FCT-1"
    if "station_unknown" in faults:
        station = "FCT-404"
    if "station_mismatch" in faults:
        station = "ICT-1"
    measurements = fct_measurements()
    if "value_invalid" in faults:
        measurements = fct_measurements(led_ok={"measured_value": "maybe"})
    if "required_missing" in faults:
        measurements.pop("vcc_3v3")
    return fct_event(
        sn, station=station, measurements=measurements, hint=False, runNo="RUN-1"
    )


def test_fault_free_event_accepted() -> None:
    floor = make_floor()
    accept(broken_fct_event(floor, set()), floor)


@pytest.mark.parametrize(("fault", "code"), [(f, c) for f, _, c in GATE_FAULTS])
def test_single_gate_fault(fault: str, code: ErrorCode) -> None:
    floor = make_floor()
    assert reject(broken_fct_event(floor, {fault}), floor).code == code


@pytest.mark.parametrize(("earlier", "later", "code"), GATE_PAIRS)
def test_gate_order(earlier: str, later: str, code: ErrorCode) -> None:
    floor = make_floor()
    envelope = broken_fct_event(floor, {earlier, later})
    before = snapshot(floor)
    assert reject(envelope, floor).code == code
    assert snapshot(floor) == before


# Data values.


def test_data_values_typed_by_data_type() -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    measurements = fct_measurements(
        vcc_3v3={"measured_value": "3.30", "units": "V"},
        firmware_version={"measured_value": 142},
        led_ok={"measured_value": "true"},
        config={"measured_value": {"fixture": "F7", "slots": [1, 2]}},
    )
    accepted = accept(fct_event("SN-1", measurements=measurements), floor)
    values = {value.spec.name: value for value in accepted.data_values}
    assert sorted(values) == ["CONFIG", "FIRMWARE", "LED", "VCC"]
    assert values["VCC"].value == 3.3
    assert values["VCC"].unit == "V"
    assert values["FIRMWARE"].value == "142"
    assert values["LED"].value is True
    assert values["CONFIG"].value == {"fixture": "F7", "slots": [1, 2]}


@pytest.mark.parametrize(
    ("vcc", "judge"),
    [
        ({"measured_value": 3.31}, "PASS"),
        ({"measured_value": 3.2}, "PASS"),
        ({"measured_value": 3.5}, "FAIL"),
        ({"measured_value": "3.1"}, "FAIL"),
        # The station's own judge wins over the limits.
        ({"measured_value": 3.5, "outcome": "PASS"}, "PASS"),
        ({"measured_value": 3.3, "outcome": "FAIL"}, "FAIL"),
    ],
)
def test_judge_from_limits(vcc: dict[str, Any], judge: str) -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    measurements = fct_measurements(vcc_3v3=vcc)
    accepted = accept(fct_event("SN-1", measurements=measurements), floor)
    values = {value.spec.name: value for value in accepted.data_values}
    assert values["VCC"].judge == judge


def test_no_limits_no_judge() -> None:
    floor = make_floor()
    accepted = accept(spi_event("SN-1"), floor)
    values = {value.spec.name: value for value in accepted.data_values}
    assert values["HEIGHT"].judge is None
    assert values["VOLUME"].judge == "PASS"


def test_unmatched_measurement_kept_not_stored() -> None:
    floor = make_floor()
    accepted = accept(spi_event("SN-1"), floor)
    assert [value.spec.name for value in accepted.data_values] == ["VOLUME", "HEIGHT"]
    names = [measurement.name for measurement in accepted.normalized.measurements]
    assert names == ["volume", "height", "offset_x"]
    assert accepted.summary == {
        "count": 3,
        "stored": 2,
        "pass": 1,
        "fail": 0,
        "unmatched": ["offset_x"],
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"vcc_3v3": {"measured_value": "3.3 V"}},
        {"vcc_3v3": {"measured_value": True}},
        {"vcc_3v3": {"measured_value": "nan"}},
        {"led_ok": {"measured_value": "maybe"}},
        {"led_ok": {"measured_value": 2}},
        {"firmware_version": {"measured_value": {"major": 1}}},
    ],
)
def test_value_not_converting_is_invalid(bad: dict[str, Any]) -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    before = snapshot(floor)
    measurements = fct_measurements(**bad)
    error = reject(fct_event("SN-1", measurements=measurements), floor)
    assert error.code == ErrorCode.DATA_VALUE_INVALID
    assert list(error.detail["measurements"]) == list(bad)
    assert snapshot(floor) == before


def test_manual_spec_is_method_mismatch() -> None:
    floor = make_floor()
    floor.data_specs["HEIGHT"] = dataclasses.replace(
        floor.data_specs["HEIGHT"], method="MANUAL"
    )
    error = reject(spi_event("SN-1"), floor)
    assert error.code == ErrorCode.DATA_SPEC_METHOD_MISMATCH
    assert error.detail == {"measurement": "height", "dataSpec": "HEIGHT"}


def test_pass_without_required_is_missing() -> None:
    floor = make_floor()
    error = reject(spi_event("SN-1", values=[{"name": "height", "value": 99}]), floor)
    assert error.code == ErrorCode.REQUIRED_DATA_MISSING
    assert error.detail == {"stepNo": 10, "dataSpecs": ["VOLUME"]}


def test_unset_required_value_is_missing() -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    measurements = fct_measurements(vcc_3v3={"measured_value": None})
    error = reject(fct_event("SN-1", measurements=measurements), floor)
    assert error.code == ErrorCode.REQUIRED_DATA_MISSING
    assert error.detail["dataSpecs"] == ["VCC"]


def test_fail_without_required_is_stored() -> None:
    floor = make_floor()
    accepted = accept(spi_event("SN-1", result="NG", values=[]), floor)
    assert accepted.data_values == []
    assert floor.units["SN-1"].status == "OUT_FAILED"


# Moves of units and runs, in memory.


def test_pass_queues_next_step() -> None:
    floor = make_floor()
    accepted = accept(spi_event("SN-1"), floor)
    unit = floor.units["SN-1"]
    assert (unit.status, unit.current_step_no, unit.moves) == ("QUEUED", 20, 1)
    assert unit.version == 0
    assert len(accepted.moves) == 1
    assert accepted.moves[0].step_no == 10


def test_fail_is_out_failed_at_step() -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    accept(fct_event("SN-1", outcome="FAIL"), floor)
    unit = floor.units["SN-1"]
    assert (unit.status, unit.current_step_no) == ("OUT_FAILED", 40)


def test_pass_at_last_step_is_done() -> None:
    floor = make_floor()
    place(floor, "SN-1", 50)
    accept(spi_event("SN-1", station="PACK-1"), floor)
    unit = floor.units["SN-1"]
    assert (unit.status, unit.current_step_no) == ("DONE", 50)


def test_authorized_run_starts() -> None:
    floor = make_floor()
    first = accept(spi_event("SN-1", occurredAt="2026-12-04T07:00:00+01:00"), floor)
    run = floor.runs_by_no["RUN-1"]
    assert run.status == "IN_PROGRESS"
    assert run.started_at == datetime(2026, 12, 4, 6, tzinfo=UTC)
    assert first.starts_run

    second = accept(spi_event("SN-2", occurredAt="2026-12-04T06:10:00Z"), floor)
    assert not second.starts_run
    assert run.started_at == datetime(2026, 12, 4, 6, tzinfo=UTC)


def test_earlier_event_of_batch_starts_run() -> None:
    floor = make_floor()
    accept(spi_event("SN-1", occurredAt="2026-12-04T06:10:00Z"), floor)
    accept(spi_event("SN-2", occurredAt="2026-12-04T05:50:00Z"), floor)
    assert floor.runs_by_no["RUN-1"].started_at == datetime(
        2026, 12, 4, 5, 50, tzinfo=UTC
    )


def test_running_run_keeps_start() -> None:
    floor = make_floor()
    accepted = accept(spi_event("SN-9"), floor)
    assert not accepted.starts_run
    assert floor.runs_by_no["RUN-2"].started_at == STARTED_AT


def test_unit_walks_whole_route() -> None:
    floor = make_floor()
    accept(spi_event("SN-1"), floor)
    accept(ict_event("SN-1"), floor)
    accept(wash_event(["SN-1"]), floor)
    accept(fct_event("SN-1"), floor)
    accept(spi_event("SN-1", station="PACK-1"), floor)
    unit = floor.units["SN-1"]
    assert (unit.status, unit.current_step_no, unit.moves) == ("DONE", 50, 5)
    assert reject(spi_event("SN-1", station="PACK-1"), floor).code == (
        ErrorCode.UNIT_ALREADY_DONE
    )


# Gates for BATCH events.


def at_wash(floor: ShopFloor, *serials: str) -> None:
    for sn in serials:
        place(floor, sn, 30)


def partial_floor() -> ShopFloor:
    floor = make_floor()
    partial = make_step(
        30,
        "BATCH",
        {**WASH_MAPPING, "batchPolicy": "PARTIAL"},
        group="WASH",
        specs=("WASH_TEMP",),
    )
    floor.route_versions[1] = make_version(
        SPI_STEP, ICT_STEP, partial, FCT_STEP, PACK_STEP
    )
    return floor


def test_batch_moves_every_unit() -> None:
    floor = make_floor()
    at_wash(floor, "SN-1", "SN-2", "SN-3")
    accepted = accept(wash_event(["SN-1", "SN-2", "SN-3"]), floor)
    assert [move.unit.sn for move in accepted.moves] == ["SN-1", "SN-2", "SN-3"]
    for sn in ("SN-1", "SN-2", "SN-3"):
        assert (floor.units[sn].status, floor.units[sn].current_step_no) == (
            "QUEUED",
            40,
        )
    assert [value.spec.name for value in accepted.data_values] == ["WASH_TEMP"]
    assert accepted.rejected_units == {}
    assert floor.runs_by_no["RUN-1"].status == "IN_PROGRESS"


def test_batch_fail_is_out_failed() -> None:
    floor = make_floor()
    at_wash(floor, "SN-1", "SN-2")
    accept(wash_event(["SN-1", "SN-2"], status="NOK"), floor)
    assert floor.units["SN-1"].status == "OUT_FAILED"
    assert floor.units["SN-2"].current_step_no == 30


@pytest.mark.parametrize("run_status", ["PREP", "AUTHORIZED", "IN_PROGRESS"])
def test_batch_needs_authorized_run(run_status: str) -> None:
    # The wash step of this route needs no authorization of its own.
    floor = make_floor()
    wash = make_step(
        30, "BATCH", WASH_MAPPING, specs=("WASH_TEMP",), requires_authorization=False
    )
    floor.route_versions[1] = make_version(SPI_STEP, wash, FCT_STEP)
    floor.runs_by_no["RUN-1"].status = run_status
    at_wash(floor, "SN-1")
    if run_status == "PREP":
        error = reject(wash_event(["SN-1"]), floor)
        assert error.code == ErrorCode.RUN_NOT_AUTHORIZED
    else:
        accept(wash_event(["SN-1"]), floor)


def test_batch_closed_run_is_closed() -> None:
    floor = make_floor()
    floor.runs_by_no["RUN-1"].status = "COMPLETED"
    at_wash(floor, "SN-1")
    assert reject(wash_event(["SN-1"]), floor).code == ErrorCode.RUN_CLOSED


def test_batch_unknown_units_named() -> None:
    floor = make_floor()
    at_wash(floor, "SN-1")
    envelope = wash_event(["SN-1", "SN-404", "SN-405"], hint=False, runNo="RUN-1")
    error = reject(envelope, floor)
    assert error.code == ErrorCode.UNIT_NOT_FOUND
    assert error.detail["units"] == ["SN-404", "SN-405"]
    assert "SN-404, SN-405" in error.message


def test_batch_unit_of_other_run() -> None:
    floor = make_floor()
    at_wash(floor, "SN-1", "SN-9")
    envelope = wash_event(["SN-1", "SN-9"], hint=False, runNo="RUN-1")
    error = reject(envelope, floor)
    assert error.code == ErrorCode.RUN_MISMATCH
    assert error.detail == {"sn": "SN-9"}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("IN_STATION", ErrorCode.UNIT_IN_STATION),
        ("DONE", ErrorCode.UNIT_ALREADY_DONE),
        ("OUT_FAILED", ErrorCode.UNIT_OUT_FAILED),
        ("SCRAPPED", ErrorCode.UNIT_SCRAPPED),
        ("ON_HOLD", ErrorCode.UNIT_ON_HOLD),
    ],
)
def test_batch_unit_status(status: str, code: ErrorCode) -> None:
    floor = make_floor()
    at_wash(floor, "SN-1", "SN-2")
    place(floor, "SN-2", 30, status)
    before = snapshot(floor)
    error = reject(wash_event(["SN-1", "SN-2"]), floor)
    assert error.code == code
    assert error.detail == {"sn": "SN-2", "status": status}
    assert snapshot(floor) == before


def test_batch_units_at_different_steps() -> None:
    floor = make_floor()
    at_wash(floor, "SN-1")
    place(floor, "SN-2", 20)
    error = reject(wash_event(["SN-1", "SN-2"]), floor)
    assert error.code == ErrorCode.STEP_MISMATCH
    assert error.detail["steps"] == {"SN-1": 30, "SN-2": 20}


def test_batch_units_before_their_step() -> None:
    floor = make_floor()
    place(floor, "SN-1", 20)
    place(floor, "SN-2", 20)
    error = reject(wash_event(["SN-1", "SN-2"]), floor)
    assert error.code == ErrorCode.STEP_NOT_REACHED
    assert error.detail["units"] == ["SN-1", "SN-2"]


def test_batch_units_past_their_step() -> None:
    floor = make_floor()
    place(floor, "SN-1", 40)
    error = reject(wash_event(["SN-1"]), floor)
    assert error.code == ErrorCode.STEP_MISMATCH
    assert error.detail == {"sn": "SN-1", "stepNo": 30, "currentStepNo": 40}


def test_batch_common_step_tried_first() -> None:
    # Two BATCH steps share one mapping and have no station constraints.
    floor = make_floor()
    wash = make_step(30, "BATCH", WASH_MAPPING)
    bake = make_step(35, "BATCH", WASH_MAPPING)
    floor.route_versions[1] = make_version(SPI_STEP, wash, bake, FCT_STEP)
    for sn in ("SN-1", "SN-2"):
        place(floor, sn, 35)
    assert accept(wash_event(["SN-1", "SN-2"]), floor).step.step_no == 35
    assert floor.units["SN-1"].current_step_no == 40


def test_batch_station_checked() -> None:
    floor = make_floor()
    at_wash(floor, "SN-1")
    error = reject(wash_event(["SN-1"], station="WASH-404"), floor)
    assert error.code == ErrorCode.STATION_NOT_FOUND
    error = reject(wash_event(["SN-1"], station="SPI-1"), floor)
    assert error.code == ErrorCode.STATION_MISMATCH


def test_batch_station_required_by_step() -> None:
    floor = make_floor()
    at_wash(floor, "SN-1")
    error = reject(wash_event(["SN-1"], station=None), floor)
    assert error.code == ErrorCode.INGEST_PAYLOAD_INVALID
    assert error.detail == {"fields": {"stationCode": "missing"}}


def test_batch_without_station_constraints() -> None:
    floor = make_floor()
    wash = make_step(30, "BATCH", WASH_MAPPING, specs=("WASH_TEMP",))
    floor.route_versions[1] = make_version(SPI_STEP, wash, FCT_STEP)
    at_wash(floor, "SN-1")
    accepted = accept(wash_event(["SN-1"], station=None), floor)
    assert accepted.station is None


def test_batch_required_spec_per_carrier() -> None:
    floor = make_floor()
    floor.data_specs["WASH_TEMP"] = dataclasses.replace(
        floor.data_specs["WASH_TEMP"], trigger_type="EACH_UNIT"
    )
    at_wash(floor, "SN-1")
    error = reject(wash_event(["SN-1"]), floor)
    assert error.code == ErrorCode.DATA_SPEC_TRIGGER_MISMATCH
    assert error.detail == {"stepNo": 30, "dataSpecs": ["WASH_TEMP"]}


def test_batch_pass_without_required_data() -> None:
    floor = make_floor()
    at_wash(floor, "SN-1")
    error = reject(wash_event(["SN-1"], parameters=[]), floor)
    assert error.code == ErrorCode.REQUIRED_DATA_MISSING


def test_batch_gate_order() -> None:
    # Run status before unit gates, unit existence before unit status, unit
    # status before the common step, units before the station.
    floor = make_floor()
    floor.runs_by_no["RUN-1"].status = "PREP"
    place(floor, "SN-1", 30, "ON_HOLD")
    envelope = wash_event(["SN-1"], station="WASH-404")
    assert reject(envelope, floor).code == ErrorCode.RUN_NOT_AUTHORIZED

    floor = make_floor()
    place(floor, "SN-1", 30, "ON_HOLD")
    place(floor, "SN-2", 20, "IN_STATION")
    envelope = wash_event(["SN-1", "SN-2", "SN-404"], hint=False, runNo="RUN-1")
    assert reject(envelope, floor).code == ErrorCode.UNIT_NOT_FOUND

    floor = make_floor()
    place(floor, "SN-1", 40, "ON_HOLD")
    place(floor, "SN-2", 20, "IN_STATION")
    error = reject(wash_event(["SN-1", "SN-2"]), floor)
    assert error.code == ErrorCode.UNIT_IN_STATION

    floor = make_floor()
    place(floor, "SN-1", 40)
    place(floor, "SN-2", 20)
    error = reject(wash_event(["SN-1", "SN-2"], station="WASH-404"), floor)
    assert error.code == ErrorCode.STEP_MISMATCH


def test_partial_records_rejected_units() -> None:
    floor = partial_floor()
    at_wash(floor, "SN-1", "SN-2", "SN-3")
    place(floor, "SN-2", 30, "ON_HOLD")
    place(floor, "SN-3", 20)
    envelope = wash_event(["SN-1", "SN-2", "SN-3", "SN-404"], hint=False, runNo="RUN-1")
    accepted = accept(envelope, floor)
    assert [move.unit.sn for move in accepted.moves] == ["SN-1"]
    codes = {sn: entry["code"] for sn, entry in accepted.rejected_units.items()}
    assert codes == {
        "SN-2": "UNIT_ON_HOLD",
        "SN-3": "STEP_NOT_REACHED",
        "SN-404": "UNIT_NOT_FOUND",
    }
    assert floor.units["SN-1"].current_step_no == 40
    assert (floor.units["SN-2"].status, floor.units["SN-2"].moves) == ("ON_HOLD", 0)
    assert floor.units["SN-3"].current_step_no == 20


def test_partial_fails_when_none_pass() -> None:
    floor = partial_floor()
    place(floor, "SN-1", 30, "ON_HOLD")
    place(floor, "SN-2", 40)
    before = snapshot(floor)
    error = reject(wash_event(["SN-1", "SN-2"]), floor)
    assert error.code == ErrorCode.UNIT_ON_HOLD
    assert snapshot(floor) == before


def test_partial_event_gates_reject_all() -> None:
    floor = partial_floor()
    at_wash(floor, "SN-1", "SN-2")
    assert reject(wash_event(["SN-1", "SN-2"], station="SPI-1"), floor).code == (
        ErrorCode.STATION_MISMATCH
    )
    assert reject(wash_event(["SN-1"], parameters=[]), floor).code == (
        ErrorCode.REQUIRED_DATA_MISSING
    )


def test_all_or_nothing_is_default() -> None:
    floor = make_floor()
    at_wash(floor, "SN-1", "SN-2")
    place(floor, "SN-2", 30, "ON_HOLD")
    before = snapshot(floor)
    assert reject(wash_event(["SN-1", "SN-2"]), floor).code == ErrorCode.UNIT_ON_HOLD
    assert snapshot(floor) == before


# Properties over many floors.

UNIT_STATUSES = ["QUEUED", "IN_STATION", "DONE", "OUT_FAILED", "SCRAPPED", "ON_HOLD"]
RUN_STATUSES = [
    "PREP",
    "AUTHORIZED",
    "IN_PROGRESS",
    "COMPLETED",
    "CLOSED_REWORK",
    "SCRAPPED",
]
STEP_NUMBERS = [10, 20, 30, 40, 50]
UNIT_STATUS_CODES = {
    "DONE": ErrorCode.UNIT_ALREADY_DONE,
    "OUT_FAILED": ErrorCode.UNIT_OUT_FAILED,
    "SCRAPPED": ErrorCode.UNIT_SCRAPPED,
    "ON_HOLD": ErrorCode.UNIT_ON_HOLD,
}
BATCH_STATUS_CODES = {"IN_STATION": ErrorCode.UNIT_IN_STATION, **UNIT_STATUS_CODES}


def run_status_code(status: str, requires_authorization: bool) -> ErrorCode | None:
    if status in ("COMPLETED", "CLOSED_REWORK", "SCRAPPED"):
        return ErrorCode.RUN_CLOSED
    if status == "PREP":
        if requires_authorization:
            return ErrorCode.RUN_NOT_AUTHORIZED
        return ErrorCode.RUN_IN_PREP
    return None


def position_code(current: int, event_step: int) -> ErrorCode | None:
    if current == event_step:
        return None
    if current < event_step:
        return ErrorCode.STEP_NOT_REACHED
    return ErrorCode.STEP_MISMATCH


def expected_unit_code(
    station: str,
    sn: str,
    status: str,
    step_no: int,
    run_status: str,
    outcome: str,
    vcc: Any,
) -> ErrorCode | None:
    """Return the first code that a functional test event fails, in gate order."""
    checks = [
        ErrorCode.STATION_NOT_FOUND if station == "FCT-404" else None,
        ErrorCode.UNIT_NOT_FOUND if sn == "SN-404" else None,
        ErrorCode.UNIT_RUN_MISMATCH if sn == "SN-9" else None,
        UNIT_STATUS_CODES.get(status),
        ErrorCode.STATION_MISMATCH if station == "PACK-1" else None,
        position_code(step_no, 40),
        run_status_code(run_status, requires_authorization=True),
        ErrorCode.DATA_VALUE_INVALID if vcc == "high" else None,
        ErrorCode.REQUIRED_DATA_MISSING if vcc is None and outcome == "PASS" else None,
    ]
    return next((code for code in checks if code is not None), None)


@settings(max_examples=300, deadline=None)
@given(
    station=st.sampled_from(["FCT-1", "FCT-404", "PACK-1"]),
    sn=st.sampled_from(["SN-1", "SN-404", "SN-9"]),
    status=st.sampled_from(UNIT_STATUSES),
    step_no=st.sampled_from(STEP_NUMBERS),
    run_status=st.sampled_from(RUN_STATUSES),
    outcome=st.sampled_from(["PASS", "FAIL"]),
    vcc=st.sampled_from([3.3, 3.9, "high", None]),
)
def test_unit_verdict_is_one_code(
    station: str,
    sn: str,
    status: str,
    step_no: int,
    run_status: str,
    outcome: str,
    vcc: Any,
) -> None:
    floor = make_floor()
    floor.runs_by_no["RUN-1"].status = run_status
    if sn in floor.units:
        place(floor, sn, step_no, status)
    measurements = fct_measurements(
        vcc_3v3=None if vcc is None else {"measured_value": vcc}
    )
    envelope = fct_event(
        sn,
        station=station,
        outcome=outcome,
        measurements=measurements,
        hint=False,
        runNo="RUN-1",
    )
    expected = expected_unit_code(
        station, sn, status, step_no, run_status, outcome, vcc
    )
    before = snapshot(floor)

    if expected is not None:
        assert reject(envelope, floor).code == expected
        assert snapshot(floor) == before
        return
    accepted = accept(envelope, floor)
    unit = floor.units[sn]
    assert accepted.step.step_no == 40
    assert unit.moves == 1
    if outcome == "PASS":
        assert (unit.status, unit.current_step_no) == ("QUEUED", 50)
    else:
        assert (unit.status, unit.current_step_no) == ("OUT_FAILED", 40)
    assert floor.runs_by_no["RUN-1"].status == "IN_PROGRESS"
    judges = {value.spec.name: value.judge for value in accepted.data_values}
    if vcc is None:
        assert "VCC" not in judges
    else:
        assert judges["VCC"] == ("PASS" if vcc == 3.3 else "FAIL")


def expected_unit_failure(floor: ShopFloor, sn: str) -> ErrorCode | None:
    unit = floor.units.get(sn)
    if unit is None:
        return ErrorCode.UNIT_NOT_FOUND
    if unit.run_id != 1:
        return ErrorCode.RUN_MISMATCH
    return BATCH_STATUS_CODES.get(unit.status) or position_code(
        unit.current_step_no or 0, 30
    )


def expected_carrier_code(
    floor: ShopFloor, serials: list[str], policy: str
) -> ErrorCode | None:
    """Return the first code that a wash event fails, in gate order."""
    run_code = run_status_code(floor.runs_by_no["RUN-1"].status, True)
    if run_code is not None:
        return run_code
    failures = {sn: expected_unit_failure(floor, sn) for sn in serials}
    failing = {code for code in failures.values() if code is not None}
    failing_units = [sn for sn, code in failures.items() if code is not None]
    if not failing_units:
        return None
    if policy == "PARTIAL" and len(failing_units) < len(serials):
        return None
    order = [
        ErrorCode.UNIT_NOT_FOUND,
        ErrorCode.RUN_MISMATCH,
        *BATCH_STATUS_CODES.values(),
    ]
    for code in order:
        if code in failing:
            return code
    steps = {floor.units[sn].current_step_no for sn in serials}
    if policy == "ALL_OR_NOTHING" and len(steps) > 1:
        return ErrorCode.STEP_MISMATCH
    for code in (ErrorCode.STEP_NOT_REACHED, ErrorCode.STEP_MISMATCH):
        if code in failing:
            return code
    raise AssertionError("unreachable")


carrier_units = st.lists(
    st.tuples(
        st.sampled_from(["SN-1", "SN-2", "SN-3", "SN-4", "SN-9", "SN-404"]),
        st.sampled_from(UNIT_STATUSES),
        st.sampled_from([20, 30, 30, 40]),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda entry: entry[0],
)


@settings(max_examples=300, deadline=None)
@given(
    units=carrier_units,
    run_status=st.sampled_from(RUN_STATUSES),
    policy=st.sampled_from(["ALL_OR_NOTHING", "PARTIAL"]),
)
def test_carrier_verdict_is_one_code(
    units: list[tuple[str, str, int]], run_status: str, policy: str
) -> None:
    floor = partial_floor() if policy == "PARTIAL" else make_floor()
    floor.runs_by_no["RUN-1"].status = run_status
    for sn, status, step_no in units:
        if sn in floor.units:
            place(floor, sn, step_no, status)
    serials = [sn for sn, _, _ in units]
    envelope = wash_event(serials, hint=False, runNo="RUN-1")
    expected = expected_carrier_code(floor, serials, policy)
    before = snapshot(floor)

    if expected is not None:
        assert reject(envelope, floor).code == expected
        assert snapshot(floor) == before
        return
    failures = {sn: expected_unit_failure(floor, sn) for sn in serials}
    accepted = accept(envelope, floor)
    moved = [move.unit.sn for move in accepted.moves]
    assert moved == [sn for sn in serials if failures[sn] is None]
    recorded = {sn: entry["code"] for sn, entry in accepted.rejected_units.items()}
    assert recorded == {sn: str(code) for sn, code in failures.items() if code}
    for sn in moved:
        assert (floor.units[sn].status, floor.units[sn].current_step_no) == (
            "QUEUED",
            40,
        )
        assert floor.units[sn].moves == 1
