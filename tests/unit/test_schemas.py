"""Tests of the JSON Schemas under schemas/ and of the normalized event model."""

from __future__ import annotations

import copy
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from ingest_worker.envelope import EnvelopeModel, decode_envelope
from ingest_worker.errors import RecordRejected
from ingest_worker.mapping import IngestMappingModel, Measurement, compile_mapping
from ingest_worker.rules import state
from ingest_worker.rules.decide import decide
from ingest_worker.schemas import (
    NORMALIZED_SCHEMA_NAME,
    SCHEMAS,
    NormalizedEventV1,
    check_schemas,
    main,
    render_schema,
    render_schema_text,
)
from ingest_worker.settings import Limits
from ingest_worker.storage import writer
from ingest_worker.storage.seed import load_factory

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas"
SAMPLES = ROOT / "ingest_worker" / "samples"


def validator_for(file_name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / file_name).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(file_name: str, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '$'}: {error.message}"
        for error in validator_for(file_name).iter_errors(document)
    ]


def sample_envelopes() -> list[tuple[str, dict[str, Any]]]:
    """Return (file:line, envelope) for every line of the sample event files."""
    envelopes = []
    for path in sorted((SAMPLES / "events").glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if line.strip():
                envelopes.append((f"{path.name}:{number}", json.loads(line)))
    return envelopes


def factory_mappings() -> list[tuple[str, dict[str, Any]]]:
    document = yaml.safe_load((SAMPLES / "factory.yaml").read_text(encoding="utf-8"))
    mappings = []
    for route in document["routes"]:
        for version in route["versions"]:
            for step in version["steps"]:
                if step.get("ingestMapping") is not None:
                    label = (
                        f"{route['code']} v{version['versionNo']} step {step['stepNo']}"
                    )
                    mappings.append((label, step["ingestMapping"]))
    return mappings


# ---------------------------------------------------------------------------
# The committed files and the generator
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", sorted(SCHEMAS))
def test_committed_schema_matches_model(file_name: str) -> None:
    path = SCHEMA_DIR / file_name
    assert path.is_file(), f"{path} is missing; run `python -m ingest_worker.schemas`"
    assert path.read_text(encoding="utf-8") == render_schema_text(file_name), (
        f"{path} differs from its model; run `python -m ingest_worker.schemas`"
    )


def test_schema_directory_has_no_stray_files() -> None:
    present = {path.name for path in SCHEMA_DIR.glob("*.json")}
    assert present == set(SCHEMAS)


@pytest.mark.parametrize("file_name", sorted(SCHEMAS))
def test_schema_is_valid_draft_2020_12(file_name: str) -> None:
    schema = render_schema(file_name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("urn:mes-ingest:schema:")
    assert schema["title"]
    assert schema["description"]


def test_schema_ids_are_unique() -> None:
    ids = [render_schema(file_name)["$id"] for file_name in SCHEMAS]
    assert len(set(ids)) == len(ids)


def test_check_reports_each_drifted_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--output", str(tmp_path)]) == 0
    assert main(["--check", "--output", str(tmp_path)]) == 0

    (tmp_path / "envelope.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "normalized-event.schema.json").unlink()
    capsys.readouterr()
    assert main(["--check", "--output", str(tmp_path)]) == 1
    errors = capsys.readouterr().err
    assert "envelope.schema.json" in errors
    assert "normalized-event.schema.json" in errors
    assert "ingest-mapping.schema.json" not in errors


def test_write_leaves_current_files_alone(tmp_path: Path) -> None:
    main(["--output", str(tmp_path)])
    before = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    assert main(["--output", str(tmp_path)]) == 0
    after = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    assert after == before
    assert check_schemas(tmp_path) == []


def test_check_passes_on_committed_files() -> None:
    assert check_schemas(SCHEMA_DIR) == []


# ---------------------------------------------------------------------------
# Envelope
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "envelope",
    [pytest.param(envelope, id=label) for label, envelope in sample_envelopes()],
)
def test_sample_envelope_matches_schema(envelope: dict[str, Any]) -> None:
    assert schema_errors("envelope.schema.json", envelope) == []
    EnvelopeModel.model_validate(envelope)


def test_sample_envelopes_cover_every_event_type() -> None:
    types = {envelope["eventType"] for _, envelope in sample_envelopes()}
    assert types == {"AUTO", "BATCH", "TEST"}


VALID_ENVELOPE: dict[str, Any] = {
    "dedupeKey": "SPI-A1-1",
    "sourceSystem": "SPI-A1",
    "eventType": "AUTO",
    "occurredAt": "2026-12-04T06:00:00.000Z",
    "payload": {"board": {"barcode": "SN-1"}},
    "vendorField": "kept",
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dedupeKey", ""),
        ("dedupeKey", "k" * 257),
        ("sourceSystem", ""),
        ("sourceSystem", 7),
        ("eventType", "MANUAL"),
        ("occurredAt", 1796364000000),
        ("runNo", ""),
        ("sn", 1001),
        ("snList", "SN-1"),
        ("snList", [1, 2]),
        ("payload", [1, 2]),
        ("payload", None),
        ("meta", "text"),
    ],
)
def test_invalid_envelope_rejected_by_schema_and_model(field: str, value: Any) -> None:
    envelope = {**VALID_ENVELOPE, field: value}
    assert schema_errors("envelope.schema.json", envelope) != []
    with pytest.raises(ValidationError):
        EnvelopeModel.model_validate(envelope)


@pytest.mark.parametrize(
    "field", ["dedupeKey", "sourceSystem", "eventType", "occurredAt", "payload"]
)
def test_envelope_without_required_field_rejected(field: str) -> None:
    envelope = {key: value for key, value in VALID_ENVELOPE.items() if key != field}
    assert schema_errors("envelope.schema.json", envelope) != []
    with pytest.raises(ValidationError):
        EnvelopeModel.model_validate(envelope)


def test_envelope_with_unknown_field_accepted() -> None:
    assert schema_errors("envelope.schema.json", VALID_ENVELOPE) == []
    EnvelopeModel.model_validate(VALID_ENVELOPE)


# ---------------------------------------------------------------------------
# ingestMapping
# ---------------------------------------------------------------------------


def test_factory_has_four_mappings() -> None:
    assert len(factory_mappings()) == 4


@pytest.mark.parametrize(
    "mapping",
    [pytest.param(mapping, id=label) for label, mapping in factory_mappings()],
)
def test_factory_mapping_matches_schema(mapping: dict[str, Any]) -> None:
    assert schema_errors("ingest-mapping.schema.json", mapping) == []
    IngestMappingModel.model_validate(mapping)


def _mapping_with(change: dict[str, Any], path: tuple[str, ...] = ()) -> Any:
    mapping = copy.deepcopy(dict(factory_mappings())["ROUTE-MAINBOARD v1 step 40"])
    target = mapping
    for key in path:
        target = target[key]
    target.update(change)
    return mapping


@pytest.mark.parametrize(
    "mapping",
    [
        pytest.param(_mapping_with({"snpath": "payload.sn"}), id="misspelled field"),
        pytest.param(_mapping_with({"eventType": "MANUAL"}), id="unknown eventType"),
        pytest.param(_mapping_with({"occurredAtFormat": "rfc"}), id="unknown format"),
        pytest.param(_mapping_with({"snPath": ""}), id="empty path"),
        pytest.param(_mapping_with({"batchPolicy": "SOME"}), id="unknown policy"),
        pytest.param(_mapping_with({"dataSpecMap": {"a": 1}}), id="spec name number"),
        pytest.param(
            _mapping_with({"passValues": []}, ("result",)), id="no pass values"
        ),
        pytest.param(
            _mapping_with({"extra": "x"}, ("measurements",)), id="unknown item field"
        ),
        pytest.param(
            {k: v for k, v in _mapping_with({}).items() if k != "result"},
            id="missing result",
        ),
    ],
)
def test_invalid_mapping_rejected_by_schema_and_model(mapping: Any) -> None:
    assert schema_errors("ingest-mapping.schema.json", mapping) != []
    with pytest.raises(ValidationError):
        IngestMappingModel.model_validate(mapping)


# ---------------------------------------------------------------------------
# Normalized event, built by the real rules and writer from the samples
# ---------------------------------------------------------------------------


def _shop_floor() -> state.ShopFloor:
    """Build in memory the shop floor that seeding factory.yaml would store."""
    factory = load_factory(SAMPLES / "factory.yaml")
    floor = state.ShopFloor()

    for station_id, station in enumerate(factory.stations, start=1):
        floor.stations[station.code] = state.Station(
            id=station_id,
            code=station.code,
            station_type=station.station_type,
            group_code=station.group,
            line_code=station.line,
            active=station.active,
        )

    for spec_id, spec in enumerate(factory.data_specs, start=1):
        floor.data_specs[spec.name] = state.DataSpec(
            id=spec_id,
            name=spec.name,
            data_type=spec.data_type,
            trigger_type=spec.trigger_type,
            method=spec.method,
            is_required=spec.is_required,
            spec=spec.spec,
            active=spec.active,
        )

    version_ids = itertools.count(1)
    versions: dict[tuple[str, int], int] = {}
    for route in factory.routes:
        for version in route.versions:
            version_id = next(version_ids)
            versions[(route.code, version.version_no)] = version_id
            floor.route_versions[version_id] = state.RouteVersion(
                id=version_id,
                route_code=route.code,
                version_no=version.version_no,
                status=version.status,
                steps=tuple(
                    state.Step(
                        step_no=step.step_no,
                        operation=step.operation,
                        station_type=step.station_type,
                        station_group=step.station_group,
                        allowed_stations=(
                            tuple(step.allowed_stations)
                            if step.allowed_stations
                            else None
                        ),
                        requires_fai=step.requires_fai,
                        requires_authorization=step.requires_authorization,
                        data_specs=tuple(step.data_specs),
                        mapping=(
                            compile_mapping(step.ingest_mapping)
                            if step.ingest_mapping is not None
                            else None
                        ),
                    )
                    for step in sorted(version.steps, key=lambda step: step.step_no)
                ),
            )

    for run_id, run in enumerate(factory.runs, start=1):
        floor.add_run(
            state.Run(
                id=run_id,
                run_no=run.run_no,
                status=run.status,
                route_version_id=versions[(run.route, run.version_no)],
                started_at=run.started_at,
            )
        )

    unit_ids = itertools.count(1)
    for entry in factory.units:
        for sn in entry.serial_numbers():
            floor.units[sn] = state.Unit(
                id=next(unit_ids),
                sn=sn,
                run_id=floor.runs_by_no[entry.run].id,
                status=entry.status,
                current_step_no=entry.current_step_no,
                version=0,
            )
    return floor


def _normalized_documents() -> list[dict[str, Any]]:
    """Judge every sample envelope in order and build its normalized document.

    The links come from the writer's own row builder, with ids counted here
    in place of the database sequences.
    """
    floor = _shop_floor()
    limits = Limits()
    event_ids = itertools.count(1)
    track_ids = itertools.count(100)
    carrier_track_ids = itertools.count(500)
    received_at = datetime(2026, 12, 4, 16, 0, 0, 123456, tzinfo=UTC)
    documents = []
    for _, envelope_document in sample_envelopes():
        envelope = decode_envelope(json.dumps(envelope_document).encode(), limits)
        try:
            accepted = decide(envelope, floor, limits, {})
        except RecordRejected:
            continue
        carrier_ids = {accepted.normalized.carrierCode or "": 7}
        event_id = next(event_ids)
        links = writer._build_rows(
            accepted,
            event_id,
            track_ids,
            carrier_track_ids,
            carrier_ids,
            writer._Rows(),
        )
        documents.append(
            writer.normalized_document(accepted, event_id, received_at, links)
        )
    return documents


@pytest.fixture(scope="module")
def normalized_documents() -> list[dict[str, Any]]:
    return _normalized_documents()


def test_samples_give_documents_of_every_type(
    normalized_documents: list[dict[str, Any]],
) -> None:
    types = {document["eventType"] for document in normalized_documents}
    assert types == {"AUTO", "BATCH", "TEST"}
    results = {document["result"] for document in normalized_documents}
    assert results == {"PASS", "FAIL"}


def test_writer_document_matches_schema(
    normalized_documents: list[dict[str, Any]],
) -> None:
    for document in normalized_documents:
        errors = schema_errors("normalized-event.schema.json", document)
        assert errors == [], f"{document['dedupeKey']}: {errors}"


def test_writer_document_round_trips_through_model(
    normalized_documents: list[dict[str, Any]],
) -> None:
    for document in normalized_documents:
        event = NormalizedEventV1.model_validate(document)
        assert event.to_document() == document, document["dedupeKey"]


def test_writer_uses_the_schema_name() -> None:
    assert writer.NORMALIZED_SCHEMA == NORMALIZED_SCHEMA_NAME


def test_model_accepts_mapping_measurements(
    normalized_documents: list[dict[str, Any]],
) -> None:
    document = next(d for d in normalized_documents if d["eventType"] == "TEST")
    measurements = [Measurement(**item) for item in document["measurements"]]
    assert measurements
    event = NormalizedEventV1.model_validate({**document, "measurements": measurements})
    assert event.to_document() == document


def test_model_writes_times_in_utc_millis(
    normalized_documents: list[dict[str, Any]],
) -> None:
    document = _document_of(
        normalized_documents,
        "AUTO",
        occurredAt="2026-12-04T07:00:00.1234+01:00",
        receivedAt="2026-12-04T06:00:01Z",
    )
    # The schema states the one format that to_document writes, while the
    # model reads any RFC 3339 time with an offset.
    assert schema_errors("normalized-event.schema.json", document) != []
    written = NormalizedEventV1.model_validate(document).to_document()
    assert written["occurredAt"] == "2026-12-04T06:00:00.123Z"
    assert written["receivedAt"] == "2026-12-04T06:00:01.000Z"
    assert schema_errors("normalized-event.schema.json", written) == []


def test_model_rejects_time_without_offset(
    normalized_documents: list[dict[str, Any]],
) -> None:
    document = _document_of(
        normalized_documents, "AUTO", occurredAt="2026-12-04T06:00:00.000"
    )
    assert schema_errors("normalized-event.schema.json", document) != []
    with pytest.raises(ValidationError):
        NormalizedEventV1.model_validate(document)


def _document_of(
    documents: list[dict[str, Any]], event_type: str, **changes: Any
) -> dict[str, Any]:
    document = next(d for d in documents if d["eventType"] == event_type)
    changed = copy.deepcopy(document)
    changed.update(changes)
    return changed


# Each case breaks one rule of the normalized event, and both the schema and
# the model must reject it.
INVALID_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("wrong schema name", "AUTO", {"schema": "mes.ingest.normalized/v2"}),
    ("eventId not decimal", "AUTO", {"eventId": "e-1"}),
    ("unknown event type", "AUTO", {"eventType": "MANUAL"}),
    ("time not a time", "AUTO", {"occurredAt": "yesterday"}),
    ("time a numeric string", "AUTO", {"occurredAt": "1796364000000"}),
    ("station time a number", "AUTO", {"stationOccurredAt": 1796364000000}),
    ("result not judged", "AUTO", {"result": "ERROR"}),
    ("result missing", "AUTO", {"result": None}),
    ("unknown unit status", "AUTO", {"unitStatus": "LOST"}),
    ("unit event without sn", "AUTO", {"sn": None}),
    ("unit event without station", "TEST", {"stationCode": None}),
    ("test event without result id", "TEST", {"testResultId": None}),
    ("unit event with status object", "AUTO", {"unitStatus": {"SN-1": "QUEUED"}}),
    (
        "unit event with carrier links",
        "AUTO",
        {
            "links": {
                "carrierId": "1",
                "carrierTrackId": "2",
                "unitTracks": {},
                "carrierDataValueCount": 0,
            }
        },
    ),
    (
        "unknown link",
        "AUTO",
        {
            "links": {
                "trackId": "1",
                "dataValueCount": 0,
                "rowCount": 1,
            }
        },
    ),
    ("batch event without carrier", "BATCH", {"carrierCode": None}),
    ("batch event without units", "BATCH", {"snList": []}),
    ("batch event with one status", "BATCH", {"unitStatus": "QUEUED"}),
    ("batch event with no statuses", "BATCH", {"unitStatus": {}}),
    (
        "batch event with unit links",
        "BATCH",
        {
            "links": {
                "trackId": "1",
                "dataValueCount": 0,
            }
        },
    ),
    ("unknown field", "AUTO", {"station": "SPI-A1"}),
]


@pytest.mark.parametrize(
    ("event_type", "changes"),
    [case[1:] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
def test_invalid_document_rejected_by_schema_and_model(
    normalized_documents: list[dict[str, Any]],
    event_type: str,
    changes: dict[str, Any],
) -> None:
    document = _document_of(normalized_documents, event_type, **changes)
    assert schema_errors("normalized-event.schema.json", document) != []
    with pytest.raises(ValidationError):
        NormalizedEventV1.model_validate(document)


@pytest.mark.parametrize(
    "field", ["schema", "eventId", "stationOccurredAt", "measurements", "links"]
)
def test_document_without_field_rejected(
    normalized_documents: list[dict[str, Any]], field: str
) -> None:
    document = _document_of(normalized_documents, "AUTO")
    del document[field]
    assert schema_errors("normalized-event.schema.json", document) != []
    with pytest.raises(ValidationError):
        NormalizedEventV1.model_validate(document)


def test_batch_status_of_unlisted_unit_rejected_by_model(
    normalized_documents: list[dict[str, Any]],
) -> None:
    document = _document_of(normalized_documents, "BATCH")
    document["unitStatus"] = {**document["unitStatus"], "SN-OTHER": "QUEUED"}
    with pytest.raises(ValidationError, match="not in snList"):
        NormalizedEventV1.model_validate(document)


def test_partial_batch_links_accepted(
    normalized_documents: list[dict[str, Any]],
) -> None:
    document = _document_of(normalized_documents, "BATCH")
    document["links"]["rejectedUnits"] = {
        "SN-2026-01009": {"code": "UNIT_ON_HOLD", "message": "unit is on hold"}
    }
    assert schema_errors("normalized-event.schema.json", document) == []
    assert NormalizedEventV1.model_validate(document).to_document() == document
