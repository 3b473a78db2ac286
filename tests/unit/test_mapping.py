"""Tests of ingestMapping compilation and of event normalization."""

from __future__ import annotations

import copy
import functools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_worker.errors import ErrorCode, MappingDefinitionError, RecordRejected
from ingest_worker.mapping import (
    CompiledMapping,
    IngestMappingModel,
    Measurement,
    NormalizedEvent,
    compile_mapping,
    parse_rfc3339,
)

SAMPLES = Path(__file__).resolve().parents[2] / "ingest_worker" / "samples"
OCCURRED_AT = datetime(2026, 12, 4, 6, tzinfo=UTC)

AUTO_MAPPING: dict[str, Any] = {
    "eventType": "AUTO",
    "occurredAtPath": "payload.inspectedAt",
    "stationCodePath": "payload.machine",
    "lineCodePath": "payload.line",
    "snPath": "payload.board.barcode",
    "result": {
        "path": "payload.board.judgement",
        "passValues": ["GOOD"],
        "failValues": ["NG"],
    },
    "measurements": {
        "itemsPath": "payload.stats[*]",
        "namePath": "name",
        "valuePath": "value",
        "unitPath": "unit",
        "judgePath": "judge",
    },
    "dataSpecMap": {"volume_pct": "PASTE_VOLUME_PCT"},
}


def auto_envelope(**payload_changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "machine": "SPI-A1",
        "line": "SMT-A",
        "inspectedAt": "2026-12-04T07:00:00+01:00",
        "board": {"barcode": "SN-1", "judgement": "GOOD"},
        "stats": [
            {"name": "volume_pct", "value": 99.5, "unit": "%"},
            {"name": "offset_x_um", "value": -2.0, "unit": "um"},
        ],
    }
    payload.update(payload_changes)
    return {
        "dedupeKey": "K-1",
        "sourceSystem": "SPI-A1",
        "eventType": "AUTO",
        "occurredAt": "2026-12-04T06:00:00.000Z",
        "payload": payload,
    }


def mapping_with(**changes: Any) -> dict[str, Any]:
    mapping = copy.deepcopy(AUTO_MAPPING)
    for key, value in changes.items():
        if value is None:
            mapping.pop(key, None)
        else:
            mapping[key] = value
    return mapping


def normalize(
    mapping: dict[str, Any], envelope: dict[str, Any], event_type: str = "AUTO"
) -> NormalizedEvent:
    return compile_mapping(mapping).normalize(envelope, event_type, OCCURRED_AT)  # type: ignore[arg-type]


def rejection(
    mapping: dict[str, Any], envelope: dict[str, Any], event_type: str = "AUTO"
) -> RecordRejected:
    with pytest.raises(RecordRejected) as raised:
        normalize(mapping, envelope, event_type)
    assert raised.value.code == ErrorCode.INGEST_PAYLOAD_INVALID
    return raised.value


def definition_error(raw: Any) -> MappingDefinitionError:
    with pytest.raises(MappingDefinitionError) as raised:
        compile_mapping(raw)
    return raised.value


# --- compile_mapping --------------------------------------------------------


def test_compile_keeps_mapping_settings() -> None:
    compiled = compile_mapping(AUTO_MAPPING)
    assert isinstance(compiled, CompiledMapping)
    assert compiled.event_type == "AUTO"
    assert compiled.batch_policy == "ALL_OR_NOTHING"
    assert dict(compiled.data_spec_map) == {"volume_pct": "PASTE_VOLUME_PCT"}
    assert isinstance(compiled.definition, IngestMappingModel)


def test_compiled_mapping_is_immutable() -> None:
    compiled = compile_mapping(AUTO_MAPPING)
    with pytest.raises(AttributeError):
        compiled.event_type = "TEST"  # type: ignore[misc]
    with pytest.raises(TypeError):
        compiled.data_spec_map["x"] = "y"  # type: ignore[index]


def test_compile_accepts_minimal_mapping() -> None:
    compiled = compile_mapping(
        {"result": {"path": "payload.r", "passValues": ["OK"], "failValues": ["NG"]}}
    )
    assert compiled.event_type is None
    assert dict(compiled.data_spec_map) == {}


def test_compile_accepts_partial_batch_policy() -> None:
    mapping = mapping_with(batchPolicy="PARTIAL")
    assert compile_mapping(mapping).batch_policy == "PARTIAL"


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        (mapping_with(snpath="payload.sn"), "snpath", "unknown field"),
        (
            mapping_with(
                result={"path": "r", "passValues": ["A"], "failValues": ["B"], "x": 1}
            ),
            "result.x",
            "allowed fields are path, passValues, failValues",
        ),
        (
            mapping_with(
                measurements={
                    "itemsPath": "a[*]",
                    "namePath": "n",
                    "valuePath": "v",
                    "unitsPath": "u",
                }
            ),
            "measurements.unitsPath",
            "unknown field",
        ),
        (mapping_with(eventType="ICT"), "eventType", "'AUTO', 'BATCH' or 'TEST'"),
        (mapping_with(eventType="ICT"), "eventType", "'ICT'"),
        (mapping_with(occurredAtFormat="unix"), "occurredAtFormat", "'unix'"),
        (mapping_with(batchPolicy="SOME"), "batchPolicy", "'SOME'"),
        (mapping_with(result=None), "result", "is required"),
        (mapping_with(result="payload.r"), "result", "must be an object"),
        (mapping_with(snPath=5), "snPath", "got int 5; quote it in YAML"),
        (mapping_with(snPath=""), "snPath", "must not be empty"),
        (
            mapping_with(measurements={"namePath": "n", "valuePath": "v"}),
            "measurements.itemsPath",
            "is required",
        ),
        (
            mapping_with(measurements={"itemsPath": "a[*]", "valuePath": "v"}),
            "measurements.namePath",
            "is required",
        ),
        (
            mapping_with(measurements={"itemsPath": "a[*]", "namePath": "n"}),
            "measurements.valuePath",
            "is required",
        ),
        (mapping_with(dataSpecMap={"a": 1}), "dataSpecMap.a", "must be a string"),
        (mapping_with(dataSpecMap={"a": " "}), "dataSpecMap.a", "must not be blank"),
        (mapping_with(dataSpecMap={" ": "A"}), "dataSpecMap", "must not be blank"),
        (mapping_with(dataSpecMap=["a"]), "dataSpecMap", "must be an object"),
        ([], "ingestMapping", "must be an object, got list"),
        (None, "ingestMapping", "must be an object"),
    ],
)
def test_compile_rejects_invalid_definition(
    raw: Any, field: str, fragment: str
) -> None:
    error = definition_error(raw)
    assert error.field == field
    assert fragment in error.reason


@pytest.mark.parametrize(
    ("result", "field", "fragment"),
    [
        (
            {"path": "r", "passValues": [], "failValues": ["NG"]},
            "result.passValues",
            "at least one value",
        ),
        (
            {"path": "r", "passValues": ["OK"], "failValues": []},
            "result.failValues",
            "at least one value",
        ),
        (
            {"path": "r", "passValues": ["OK"], "failValues": ["NG", "ok "]},
            "result.failValues",
            "'ok ' also in passValues",
        ),
        (
            {"path": "r", "passValues": [True], "failValues": ["NG"]},
            "result.passValues[0]",
            "got bool True; quote it in YAML",
        ),
        (
            {"path": "r", "passValues": ["OK", " "], "failValues": ["NG"]},
            "result.passValues[1]",
            "must not be blank",
        ),
        (
            {"path": "r", "passValues": "OK", "failValues": ["NG"]},
            "result.passValues",
            "must be a list",
        ),
        (
            {"path": "r..x", "passValues": ["OK"], "failValues": ["NG"]},
            "result.path",
            "invalid path 'r..x' at position 2",
        ),
    ],
)
def test_compile_rejects_invalid_result(
    result: dict[str, Any], field: str, fragment: str
) -> None:
    error = definition_error(mapping_with(result=result))
    assert error.field == field
    assert fragment in error.reason


def test_compile_rejects_overlapping_judge_values() -> None:
    error = definition_error(
        mapping_with(judge={"passValues": ["PASS"], "failValues": ["pass"]})
    )
    assert error.field == "judge.failValues"
    assert "'pass' also in passValues" in error.reason


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("occurredAtPath", "payload.t["),
        ("stationCodePath", "payload..m"),
        ("lineCodePath", "payload.l*"),
        ("snPath", "payload[x]"),
    ],
)
def test_compile_rejects_bad_path_naming_field(field: str, path: str) -> None:
    error = definition_error(mapping_with(**{field: path}))
    assert error.field == field
    assert repr(path) in error.reason
    assert "position" in error.reason


@pytest.mark.parametrize(
    "item_field", ["itemsPath", "namePath", "valuePath", "unitPath", "judgePath"]
)
def test_compile_rejects_bad_measurement_path(item_field: str) -> None:
    measurements = dict(AUTO_MAPPING["measurements"])
    measurements[item_field] = "a[1.5]"
    error = definition_error(mapping_with(measurements=measurements))
    assert error.field == f"measurements.{item_field}"
    assert "'a[1.5]'" in error.reason


def test_compile_reports_unknown_field_before_others() -> None:
    error = definition_error(mapping_with(snpath="x", eventType="ICT"))
    assert error.field == "snpath"
    assert "1 more errors" in error.reason


def test_compile_message_names_field() -> None:
    error = definition_error(mapping_with(snpath="x"))
    assert str(error).startswith("snpath: unknown field")


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        (
            {"occurredAtPath": None, "occurredAtFormat": "iso"},
            "occurredAtFormat",
            "occurredAtPath is missing",
        ),
        (
            {"judge": {"passValues": ["P"], "failValues": ["F"]}, "measurements": None},
            "judge",
            "measurements.judgePath is missing",
        ),
        ({"measurements": None}, "dataSpecMap", "measurements is missing"),
        ({"snPath": None}, "snPath", "eventType AUTO"),
        ({"stationCodePath": None}, "stationCodePath", "needs stationCode"),
        ({"eventType": "TEST"}, "testResultIdPath", "eventType TEST"),
        ({"eventType": "BATCH"}, "carrierCodePath", "eventType BATCH"),
        (
            {"eventType": "BATCH", "carrierCodePath": "payload.basket"},
            "snListPath",
            "needs snList",
        ),
    ],
)
def test_compile_rejects_inconsistent_fields(
    changes: dict[str, Any], field: str, fragment: str
) -> None:
    error = definition_error(mapping_with(**changes))
    assert error.field == field
    assert fragment in error.reason


def test_compile_rejects_judge_without_judge_path() -> None:
    measurements = dict(AUTO_MAPPING["measurements"])
    del measurements["judgePath"]
    error = definition_error(
        mapping_with(
            measurements=measurements,
            judge={"passValues": ["P"], "failValues": ["F"]},
        )
    )
    assert error.field == "judge"


def test_compile_accepts_model_instance() -> None:
    model = IngestMappingModel.model_validate(AUTO_MAPPING)
    assert compile_mapping(model).event_type == "AUTO"


# --- scalar fields ----------------------------------------------------------


def test_normalize_auto_event() -> None:
    event = normalize(AUTO_MAPPING, auto_envelope())
    assert event.eventType == "AUTO"
    assert event.occurredAt == OCCURRED_AT
    assert event.stationOccurredAt == datetime(2026, 12, 4, 6, tzinfo=UTC)
    assert event.stationCode == "SPI-A1"
    assert event.lineCode == "SMT-A"
    assert event.sn == "SN-1"
    assert event.snList == []
    assert event.carrierCode is None
    assert event.result == "PASS"
    assert event.testResultId is None
    assert len(event.measurements) == 2


def test_normalize_reads_envelope_root_fields() -> None:
    mapping = mapping_with(eventType="TEST", snPath="sn", testResultIdPath="dedupeKey")
    envelope = auto_envelope()
    envelope["sn"] = "SN-ROOT"
    event = normalize(mapping, envelope, "TEST")
    assert event.sn == "SN-ROOT"
    assert event.testResultId == "K-1"


@pytest.mark.parametrize(
    ("barcode", "expected"),
    [
        (1001, "1001"),
        (1001.0, "1001"),
        (10.5, "10.5"),
        (1e-7, "1e-7"),
        (True, "true"),
        (False, "false"),
        ("SN-1", "SN-1"),
        (-3, "-3"),
    ],
)
def test_scalar_numbers_and_booleans_become_json_text(
    barcode: Any, expected: str
) -> None:
    event = normalize(
        AUTO_MAPPING, auto_envelope(board={"barcode": barcode, "judgement": "GOOD"})
    )
    assert event.sn == expected


def test_scalar_several_values_rejected() -> None:
    mapping = mapping_with(snPath="payload.stats[*].name")
    error = rejection(mapping, auto_envelope())
    reason = error.detail["fields"]["sn"]
    assert reason == "path payload.stats[*].name matched 2 values, expected one"
    assert "sn: path payload.stats[*].name matched 2 values" in error.message


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ({"a": 1}, 'value {"a":1} at payload.line is an object'),
        ([1, 2], "value [1,2] at payload.line is an array"),
    ],
)
def test_scalar_object_or_array_rejected(line: Any, fragment: str) -> None:
    error = rejection(AUTO_MAPPING, auto_envelope(line=line))
    assert fragment in error.detail["fields"]["lineCode"]


@pytest.mark.parametrize("line", [None, "", "   "])
def test_optional_scalar_null_or_blank_is_absent(line: Any) -> None:
    event = normalize(AUTO_MAPPING, auto_envelope(line=line))
    assert event.lineCode is None


def test_optional_scalar_missing_is_absent() -> None:
    envelope = auto_envelope()
    del envelope["payload"]["line"]
    assert normalize(AUTO_MAPPING, envelope).lineCode is None


def test_required_scalar_null_names_path() -> None:
    error = rejection(AUTO_MAPPING, auto_envelope(machine=None))
    assert error.detail["fields"] == {
        "stationCode": "path payload.machine matched null"
    }


def test_required_scalar_missing_names_path() -> None:
    envelope = auto_envelope(board={"judgement": "GOOD"})
    error = rejection(AUTO_MAPPING, envelope)
    assert error.detail["fields"] == {
        "sn": "path payload.board.barcode matched nothing"
    }
    assert error.message == (
        "event does not match the mapping: sn: path payload.board.barcode matched "
        "nothing"
    )


def test_long_values_are_truncated_in_messages() -> None:
    error = rejection(AUTO_MAPPING, auto_envelope(line={"text": "x" * 5000}))
    assert len(error.message) < 300
    assert "..." in error.message


# --- result -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("judgement", "expected"),
    [("GOOD", "PASS"), ("good", "PASS"), (" Good ", "PASS"), ("NG", "FAIL")],
)
def test_result_compared_case_insensitively(judgement: str, expected: str) -> None:
    envelope = auto_envelope(board={"barcode": "SN-1", "judgement": judgement})
    assert normalize(AUTO_MAPPING, envelope).result == expected


def test_result_number_compared_as_text() -> None:
    mapping = mapping_with(
        result={"path": "payload.code", "passValues": ["0"], "failValues": ["1", "2"]}
    )
    assert normalize(mapping, auto_envelope(code=0)).result == "PASS"
    assert normalize(mapping, auto_envelope(code=2)).result == "FAIL"


def test_result_unknown_value_rejected() -> None:
    mapping = mapping_with(
        result={
            "path": "payload.status",
            "passValues": ["OK"],
            "failValues": ["ABORTED", "NOK"],
        }
    )
    error = rejection(mapping, auto_envelope(status="ERROR"))
    assert error.detail["fields"]["result"] == (
        "value 'ERROR' at payload.status is neither a pass value (OK) nor a fail "
        "value (ABORTED, NOK)"
    )


def test_result_missing_is_required_for_every_type() -> None:
    envelope = auto_envelope(board={"barcode": "SN-1"})
    error = rejection(AUTO_MAPPING, envelope)
    reason = error.detail["fields"]["result"]
    assert reason == "path payload.board.judgement matched nothing"


# --- occurredAt -------------------------------------------------------------


def test_station_time_epoch_ms() -> None:
    mapping = mapping_with(occurredAtPath="payload.t", occurredAtFormat="epoch_ms")
    event = normalize(mapping, auto_envelope(t=1796397348494))
    assert event.stationOccurredAt == parse_rfc3339("2026-12-04T15:15:48.494Z")


def test_station_time_epoch_s_from_string() -> None:
    mapping = mapping_with(occurredAtPath="payload.t", occurredAtFormat="epoch_s")
    event = normalize(mapping, auto_envelope(t="1796397348"))
    assert event.stationOccurredAt == parse_rfc3339("2026-12-04T15:15:48Z")


def test_station_time_absent_is_none() -> None:
    envelope = auto_envelope()
    del envelope["payload"]["inspectedAt"]
    assert normalize(AUTO_MAPPING, envelope).stationOccurredAt is None


def test_station_time_without_offset_rejected() -> None:
    error = rejection(AUTO_MAPPING, auto_envelope(inspectedAt="2026-12-04T06:00:00"))
    reason = error.detail["fields"]["stationOccurredAt"]
    assert "'2026-12-04T06:00:00'" in reason
    assert "offset is missing" in reason
    assert "payload.inspectedAt" in reason


def test_station_time_number_with_iso_format_rejected() -> None:
    error = rejection(AUTO_MAPPING, auto_envelope(inspectedAt=1796397348494))
    reason = error.detail["fields"]["stationOccurredAt"]
    assert "value 1796397348494 at payload.inspectedAt is a number" in reason
    assert "epoch_ms" in reason


def test_station_time_bool_with_epoch_format_rejected() -> None:
    mapping = mapping_with(occurredAtPath="payload.t", occurredAtFormat="epoch_ms")
    error = rejection(mapping, auto_envelope(t=True))
    reason = error.detail["fields"]["stationOccurredAt"]
    assert "True" in reason
    assert "payload.t" in reason


def test_station_time_unparseable_epoch_rejected() -> None:
    mapping = mapping_with(occurredAtPath="payload.t", occurredAtFormat="epoch_s")
    error = rejection(mapping, auto_envelope(t="soon"))
    reason = error.detail["fields"]["stationOccurredAt"]
    assert "'soon'" in reason
    assert "payload.t" in reason
    assert "epoch_s" in reason


# --- snList and BATCH -------------------------------------------------------

BATCH_MAPPING: dict[str, Any] = {
    "eventType": "BATCH",
    "stationCodePath": "payload.washer",
    "carrierCodePath": "payload.basket",
    "snListPath": "payload.boards[*]",
    "result": {"path": "payload.status", "passValues": ["OK"], "failValues": ["NOK"]},
}


def batch_envelope(boards: Any) -> dict[str, Any]:
    payload = {"washer": "W", "basket": "B-1", "boards": boards, "status": "OK"}
    return {"dedupeKey": "W-1", "eventType": "BATCH", "payload": payload}


def test_batch_event_normalized() -> None:
    event = normalize(BATCH_MAPPING, batch_envelope(["A", "B", 7]), "BATCH")
    assert event.carrierCode == "B-1"
    assert event.snList == ["A", "B", "7"]
    assert event.sn is None


def test_sn_list_optional_for_auto() -> None:
    mapping = mapping_with(snListPath="payload.boards[*]")
    assert normalize(mapping, auto_envelope()).snList == []
    event = normalize(mapping, auto_envelope(boards=["SN-1", "SN-2"]))
    assert event.snList == ["SN-1", "SN-2"]


def test_sn_list_duplicates_rejected() -> None:
    envelope = batch_envelope(["A", "B", "A", "C", "B"])
    error = rejection(BATCH_MAPPING, envelope, "BATCH")
    assert error.detail["fields"]["snList"] == (
        "duplicate serial numbers at payload.boards[*]: 'A', 'B'"
    )


def test_sn_list_empty_rejected_for_batch() -> None:
    error = rejection(BATCH_MAPPING, batch_envelope([]), "BATCH")
    assert error.detail["fields"] == {
        "snList": "path payload.boards[*] matched nothing"
    }


def test_sn_list_whole_array_rejected() -> None:
    mapping = dict(BATCH_MAPPING, snListPath="payload.boards")
    error = rejection(mapping, batch_envelope(["A"]), "BATCH")
    reason = error.detail["fields"]["snList"]
    assert "is an array" in reason
    assert "[*]" in reason


@pytest.mark.parametrize("bad", [None, {"sn": "A"}, ""])
def test_sn_list_invalid_element_rejected(bad: Any) -> None:
    error = rejection(BATCH_MAPPING, batch_envelope(["A", bad]), "BATCH")
    reason = error.detail["fields"]["snList"]
    assert reason.startswith("value 1 at payload.boards[*] is")


def test_batch_requires_carrier_and_result() -> None:
    envelope = {"payload": {"boards": ["A"]}}
    error = rejection(BATCH_MAPPING, envelope, "BATCH")
    assert list(error.detail["fields"]) == ["carrierCode", "result"]


# --- required fields by event type ------------------------------------------


def test_all_field_errors_collected_in_one_rejection() -> None:
    envelope = auto_envelope(board={"judgement": "MAYBE"}, machine=None)
    error = rejection(AUTO_MAPPING, envelope)
    assert list(error.detail["fields"]) == ["stationCode", "sn", "result"]
    assert error.message == (
        "event does not match the mapping: "
        "stationCode: path payload.machine matched null; "
        "sn: path payload.board.barcode matched nothing; "
        "result: value 'MAYBE' at payload.board.judgement is neither a pass value "
        "(GOOD) nor a fail value (NG)"
    )


def test_test_event_requires_test_result_id() -> None:
    mapping = mapping_with(eventType=None, testResultIdPath="payload.runId")
    error = rejection(mapping, auto_envelope(), "TEST")
    assert error.detail["fields"] == {
        "testResultId": "path payload.runId matched nothing"
    }


def test_required_field_without_path_names_mapping_field() -> None:
    mapping = mapping_with(eventType=None)
    error = rejection(mapping, auto_envelope(), "TEST")
    assert error.detail["fields"] == {
        "testResultId": "required for TEST events, but the mapping has no "
        "testResultIdPath"
    }


def test_untyped_mapping_checks_fields_of_step_type() -> None:
    mapping = mapping_with(eventType=None)
    error = rejection(mapping, auto_envelope(), "BATCH")
    assert list(error.detail["fields"]) == ["snList", "carrierCode"]


def test_event_type_differing_from_mapping_raises() -> None:
    with pytest.raises(ValueError, match="eventType AUTO applied to TEST"):
        normalize(AUTO_MAPPING, auto_envelope(), "TEST")


def test_unknown_event_type_raises() -> None:
    with pytest.raises(ValueError, match="invalid event type 'OTHER'"):
        normalize(mapping_with(eventType=None), auto_envelope(), "OTHER")


# --- measurements -----------------------------------------------------------


def test_measurements_keep_values_and_map_spec_names() -> None:
    event = normalize(AUTO_MAPPING, auto_envelope())
    assert event.measurements == [
        Measurement(
            name="volume_pct", specName="PASTE_VOLUME_PCT", value=99.5, unit="%"
        ),
        Measurement(name="offset_x_um", specName="offset_x_um", value=-2.0, unit="um"),
    ]


@pytest.mark.parametrize(
    "value", [3.3, 7, "1.4.2", True, {"raw": [1, 2]}, [1, 2], None, ""]
)
def test_measurement_value_kept_unchanged(value: Any) -> None:
    envelope = auto_envelope(stats=[{"name": "m", "value": value}])
    event = normalize(AUTO_MAPPING, envelope)
    assert event.measurements[0].value == value
    assert type(event.measurements[0].value) is type(value)


def test_measurement_value_missing_is_none() -> None:
    event = normalize(AUTO_MAPPING, auto_envelope(stats=[{"name": "m"}]))
    assert event.measurements[0].value is None
    assert event.measurements[0].unit is None
    assert event.measurements[0].judge is None


def test_measurement_several_values_rejected() -> None:
    measurements = dict(AUTO_MAPPING["measurements"], valuePath="values[*]")
    mapping = mapping_with(measurements=measurements)
    envelope = auto_envelope(
        stats=[{"name": "m", "values": [1]}, {"name": "n", "values": [1, 2]}]
    )
    error = rejection(mapping, envelope)
    assert error.detail["fields"] == {
        "measurements[1].value": (
            "path 'values[*]' in the item matched 2 values, expected one"
        )
    }


def test_measurement_missing_name_names_item_index() -> None:
    stats = [{"name": "a", "value": 1}, {"value": 2}]
    error = rejection(AUTO_MAPPING, auto_envelope(stats=stats))
    assert error.detail["fields"] == {
        "measurements[1].name": "path 'name' in the item matched nothing"
    }
    assert "measurements[1].name: path 'name' in the item" in error.message


def test_measurement_item_not_object_named() -> None:
    error = rejection(AUTO_MAPPING, auto_envelope(stats=["volume"]))
    reason = error.detail["fields"]["measurements[0].name"]
    assert reason == (
        "path 'name' in the item matched nothing (the item is a string, not an object)"
    )


def test_measurement_name_object_rejected() -> None:
    error = rejection(AUTO_MAPPING, auto_envelope(stats=[{"name": {"x": 1}}]))
    reason = error.detail["fields"]["measurements[0].name"]
    assert (
        reason
        == "value {\"x\":1} at 'name' in the item is an object, expected a string, "
        "number or boolean"
    )


def test_measurement_numeric_name_and_unit_become_text() -> None:
    stats = [{"name": 42, "value": 1, "unit": 1.5}]
    event = normalize(AUTO_MAPPING, auto_envelope(stats=stats))
    assert event.measurements[0].name == "42"
    assert event.measurements[0].unit == "1.5"


def test_measurement_duplicate_names_rejected() -> None:
    stats = [{"name": "a"}, {"name": "b"}, {"name": "a"}, {"name": "b"}]
    error = rejection(AUTO_MAPPING, auto_envelope(stats=stats))
    assert error.detail["fields"] == {
        "measurements": "duplicate measurement names 'a', 'b'"
    }


def test_measurement_errors_are_capped() -> None:
    stats = [{"value": index} for index in range(100)]
    error = rejection(AUTO_MAPPING, auto_envelope(stats=stats))
    fields = error.detail["fields"]
    assert len(fields) == 21
    assert fields["measurements"] == "80 more item errors"


def test_no_measurement_items_gives_empty_list() -> None:
    envelope = auto_envelope()
    del envelope["payload"]["stats"]
    assert normalize(AUTO_MAPPING, envelope).measurements == []


@pytest.mark.parametrize(
    ("judge", "expected"),
    [
        ("PASS", "PASS"),
        ("fail", "FAIL"),
        (" Pass ", "PASS"),
        ("UNSET", None),
        ("OK", None),
        (None, None),
        (True, None),
    ],
)
def test_measurement_judge_without_judge_block(
    judge: Any, expected: str | None
) -> None:
    envelope = auto_envelope(stats=[{"name": "m", "value": 1, "judge": judge}])
    event = normalize(AUTO_MAPPING, envelope)
    assert event.measurements[0].judge == expected


@pytest.mark.parametrize(
    ("judge", "expected"),
    [
        ("ok", "PASS"),
        ("GOOD", "PASS"),
        ("ng", "FAIL"),
        ("PASS", None),
        ("UNSET", None),
        (1, "PASS"),
    ],
)
def test_measurement_judge_with_judge_block(judge: Any, expected: str | None) -> None:
    mapping = mapping_with(
        judge={"passValues": ["OK", "good", "1"], "failValues": ["NG"]}
    )
    envelope = auto_envelope(stats=[{"name": "m", "value": 1, "judge": judge}])
    event = normalize(mapping, envelope)
    assert event.measurements[0].judge == expected


def test_measurement_judge_object_rejected() -> None:
    envelope = auto_envelope(stats=[{"name": "m", "judge": ["PASS"]}])
    error = rejection(AUTO_MAPPING, envelope)
    assert "measurements[0].judge" in error.detail["fields"]


def test_many_measurements_normalized() -> None:
    stats = [{"name": f"m{index}", "value": index} for index in range(10_000)]
    event = normalize(AUTO_MAPPING, auto_envelope(stats=stats))
    assert len(event.measurements) == 10_000
    assert event.measurements[-1].value == 9_999


# --- normalized event -------------------------------------------------------


def test_normalized_event_json_uses_utc_milliseconds() -> None:
    event = normalize(AUTO_MAPPING, auto_envelope())
    dumped = json.loads(event.model_dump_json())
    assert dumped["occurredAt"] == "2026-12-04T06:00:00.000Z"
    assert dumped["stationOccurredAt"] == "2026-12-04T06:00:00.000Z"


def test_normalized_event_rejects_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        NormalizedEvent(eventType="AUTO", occurredAt=datetime(2026, 12, 4))


def test_normalize_does_not_change_envelope() -> None:
    envelope = auto_envelope()
    before = copy.deepcopy(envelope)
    normalize(AUTO_MAPPING, envelope)
    assert envelope == before


# --- real samples -----------------------------------------------------------


@functools.cache
def load_steps() -> dict[int, dict[str, Any]]:
    factory = yaml.safe_load((SAMPLES / "factory.yaml").read_text())
    steps = factory["routes"][0]["versions"][0]["steps"]
    return {step["stepNo"]: step for step in steps}


@functools.cache
def sample_mapping(step_no: int) -> CompiledMapping:
    return compile_mapping(load_steps()[step_no]["ingestMapping"])


def load_events(name: str) -> list[dict[str, Any]]:
    lines = (SAMPLES / "events" / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def normalize_sample(step_no: int, envelope: dict[str, Any]) -> NormalizedEvent:
    station_type = load_steps()[step_no]["stationType"]
    occurred_at = parse_rfc3339(envelope["occurredAt"])
    return sample_mapping(step_no).normalize(envelope, station_type, occurred_at)


def test_sample_mappings_compile() -> None:
    for step_no, step in load_steps().items():
        compiled = compile_mapping(step["ingestMapping"])
        assert compiled.event_type == step["stationType"], step_no


def test_sample_spi_events() -> None:
    events = load_events("10-spi.jsonl")
    assert len(events) == 10
    for envelope in events:
        event = normalize_sample(10, envelope)
        assert event.sn == envelope["sn"]
        assert event.stationCode == "SPI-A1"
        assert event.lineCode == "SMT-A"
        assert event.result == "PASS"
        assert len(event.measurements) == 3
        spec_names = [measurement.specName for measurement in event.measurements]
        assert spec_names == ["PASTE_VOLUME_PCT", "PASTE_HEIGHT_UM", "offset_x_um"]
    first = normalize_sample(10, events[0])
    assert first.measurements[0].value == 99.5
    assert first.measurements[0].unit == "%"
    assert first.stationOccurredAt == parse_rfc3339("2026-12-04T06:00:00Z")


def test_sample_aoi_events() -> None:
    for envelope in load_events("20-aoi.jsonl"):
        event = normalize_sample(20, envelope)
        units = envelope["payload"]["MessageBody"]["InspectedUnits"]
        assert event.sn == units[0]["UnitIdentifier"]
        assert event.sn == envelope["sn"]
        assert event.stationCode == envelope["sourceSystem"]
        assert event.result == "PASS"
        assert event.measurements == []


def test_sample_wash_events() -> None:
    first, second = load_events("30-wash.jsonl")
    event = normalize_sample(30, first)
    assert event.carrierCode == "BASKET-07"
    assert event.snList == [f"SN-2026-0100{index}" for index in range(1, 6)]
    assert event.stationCode == "WASH-A1"
    assert event.result == "PASS"
    assert [(m.name, m.specName) for m in event.measurements] == [
        ("temperature", "WASH_TEMP_C"),
        ("duration", "WASH_TIME_S"),
        ("conductivity", "conductivity"),
    ]
    assert normalize_sample(30, second).carrierCode == "BASKET-08"


def test_sample_fct_passing_events() -> None:
    events = {
        envelope["sn"]: envelope for envelope in load_events("40-fct-openhtf.jsonl")
    }
    for sn in ("SN-2026-01001", "SN-2026-01002", "SN-2026-01003"):
        event = normalize_sample(40, events[sn])
        assert event.result == "PASS"
        assert event.sn == sn
        assert event.stationCode == "FCT-01"
        assert event.testResultId == events[sn]["dedupeKey"]
        assert event.stationOccurredAt == parse_rfc3339(events[sn]["occurredAt"])
        by_name = {m.name: m for m in event.measurements}
        assert list(by_name) == [
            "vcc_3v3",
            "vcc_5v0",
            "idle_current",
            "firmware_version",
            "led_ok",
        ]
        assert [m.judge for m in event.measurements] == ["PASS"] * 5
        assert by_name["vcc_3v3"].unit == "V"
        assert by_name["idle_current"].unit == "A"
        assert by_name["idle_current"].specName == "IDLE_CURRENT_A"
        assert by_name["firmware_version"].unit is None
        assert by_name["firmware_version"].value == "1.4.2"
        assert by_name["led_ok"].value is True


def test_sample_fct_failing_event() -> None:
    events = {
        envelope["sn"]: envelope for envelope in load_events("40-fct-openhtf.jsonl")
    }
    event = normalize_sample(40, events["SN-2026-01007"])
    assert event.result == "FAIL"
    by_name = {m.name: m for m in event.measurements}
    assert by_name["idle_current"].judge == "FAIL"
    assert by_name["idle_current"].value == 0.31
    assert by_name["vcc_3v3"].judge == "PASS"


def test_sample_fct_error_outcome_rejected() -> None:
    events = {
        envelope["sn"]: envelope for envelope in load_events("40-fct-openhtf.jsonl")
    }
    with pytest.raises(RecordRejected) as raised:
        normalize_sample(40, events["SN-2026-01009"])
    error = raised.value
    assert error.code == ErrorCode.INGEST_PAYLOAD_INVALID
    assert list(error.detail["fields"]) == ["result"]
    assert "'ERROR'" in error.detail["fields"]["result"]
    assert "payload.outcome" in error.message


def test_sample_fct_unset_measurements_have_no_value() -> None:
    events = {
        envelope["sn"]: envelope for envelope in load_events("40-fct-openhtf.jsonl")
    }
    envelope = copy.deepcopy(events["SN-2026-01009"])
    envelope["payload"]["outcome"] = "FAIL"
    by_name = {m.name: m for m in normalize_sample(40, envelope).measurements}
    assert by_name["firmware_version"].value is None
    assert by_name["firmware_version"].judge is None
    assert by_name["led_ok"].value is None
    assert by_name["vcc_3v3"].value == 3.2883


def test_spi_mapping_on_aoi_event_names_sn() -> None:
    envelope = load_events("20-aoi.jsonl")[0]
    with pytest.raises(RecordRejected) as raised:
        normalize_sample(10, envelope)
    fields = raised.value.detail["fields"]
    assert fields["sn"] == "path payload.board.barcode matched nothing"
    assert "sn: path payload.board.barcode matched nothing" in raised.value.message


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["PASS", "FAIL", "GOOD", "ERROR", "", "2026-12-04T06:00:00Z"])
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["name", "value", "unit", "outcome", "measurements"])
            | st.text(max_size=4),
            children,
            max_size=4,
        )
    ),
    max_leaves=25,
)


SAMPLE_FILES = {
    10: "10-spi.jsonl",
    20: "20-aoi.jsonl",
    30: "30-wash.jsonl",
    40: "40-fct-openhtf.jsonl",
}


def locations(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """List the key and index chains of every value inside `value`."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend(locations(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(locations(child, (*prefix, index)))
    return found


@settings(max_examples=300)
@given(data=st.data(), step_no=st.sampled_from(sorted(SAMPLE_FILES)))
def test_property_mutated_sample_normalizes_or_rejects(
    data: st.DataObject, step_no: int
) -> None:
    envelope = copy.deepcopy(load_events(SAMPLE_FILES[step_no])[0])
    location = data.draw(st.sampled_from(locations(envelope["payload"])))
    replacement = data.draw(JSON_VALUES)
    if location:
        parent = envelope["payload"]
        for part in location[:-1]:
            parent = parent[part]
        parent[location[-1]] = replacement
    else:
        envelope["payload"] = replacement

    try:
        event = normalize_sample(step_no, envelope)
    except RecordRejected as error:
        assert error.code == ErrorCode.INGEST_PAYLOAD_INVALID
        assert error.detail["fields"]
        assert orjson.loads(orjson.dumps(error.detail)) == error.detail
    else:
        assert event.result in ("PASS", "FAIL")
