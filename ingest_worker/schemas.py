"""JSON Schemas of the envelope, the ingestMapping and the normalized event.

Each schema is generated from its pydantic model and committed under `schemas/`
at the repository root, so that stations and downstream services can validate
without this package. `python -m ingest_worker.schemas` writes the files, and
`python -m ingest_worker.schemas --check` exits with status 1 when a committed
file differs from what its model generates.

`NormalizedEventV1` is the model of the value published on the normalized topic
and stored in `ingest_event.normalized`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
    with_config,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from typing_extensions import TypedDict

from ingest_worker.envelope import EnvelopeModel
from ingest_worker.errors import ErrorCode
from ingest_worker.mapping import (
    EventType,
    IngestMappingModel,
    Judge,
    format_utc,
    parse_rfc3339,
)
from ingest_worker.storage.seed import UnitStatus

__all__ = [
    "NORMALIZED_SCHEMA_NAME",
    "SCHEMAS",
    "CarrierLinks",
    "NormalizedEventV1",
    "NormalizedMeasurementV1",
    "RejectedUnit",
    "SchemaSource",
    "UnitLinks",
    "check_schemas",
    "main",
    "render_schema",
    "render_schema_text",
    "write_schemas",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# The value of the `schema` field of every normalized event of this version.
NORMALIZED_SCHEMA_NAME = "mes.ingest.normalized/v1"

# Timestamps of the normalized event: UTC, milliseconds, `Z`, as `format_utc`
# writes them.
UTC_MILLIS_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
)
_DECIMAL_ID_PATTERN = r"^[0-9]+$"


# ---------------------------------------------------------------------------
# The normalized event
# ---------------------------------------------------------------------------


def _parse_time(value: Any) -> Any:
    # Pydantic alone would also take Unix times and numeric strings.
    if isinstance(value, str):
        return parse_rfc3339(value)
    if isinstance(value, datetime):
        return value
    raise ValueError(
        f"must be an RFC 3339 timestamp string or a datetime, not "
        f"{type(value).__name__}"
    )


def _to_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


UtcTimestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_parse_time),
    AfterValidator(_to_utc),
    PlainSerializer(format_utc, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "pattern": UTC_MILLIS_PATTERN}
    ),
]
DecimalId = Annotated[str, Field(pattern=_DECIMAL_ID_PATTERN)]


@with_config(ConfigDict(extra="forbid"))
class RejectedUnit(TypedDict):
    """A carrier unit that the PARTIAL batch policy left out, with the gate's error."""

    code: ErrorCode
    message: str


@with_config(ConfigDict(extra="forbid"))
class UnitLinks(TypedDict):
    """Ids of the rows that an AUTO or TEST event wrote."""

    trackId: Annotated[DecimalId, Field(description="Id of the unit track.")]
    dataValueCount: Annotated[
        int, Field(ge=0, description="Data values stored on the unit track.")
    ]


@with_config(ConfigDict(extra="forbid"))
class CarrierLinks(TypedDict):
    """Ids of the rows that a BATCH event wrote."""

    carrierId: Annotated[DecimalId, Field(description="Id of the carrier.")]
    carrierTrackId: Annotated[DecimalId, Field(description="Id of the carrier track.")]
    unitTracks: Annotated[
        dict[str, DecimalId],
        Field(description="Unit track id of each moved unit, by serial number."),
    ]
    carrierDataValueCount: Annotated[
        int, Field(ge=0, description="Data values stored on the carrier track.")
    ]
    rejectedUnits: NotRequired[
        Annotated[
            dict[str, RejectedUnit],
            Field(
                description="Units left out under the PARTIAL batch policy, by "
                "serial number; present only when there are some."
            ),
        ]
    ]


class NormalizedMeasurementV1(BaseModel):
    """One measurement of a normalized event."""

    # from_attributes accepts a `mapping.Measurement` as well as a dict.
    model_config = ConfigDict(extra="forbid", from_attributes=True)

    name: str = Field(description="Measurement name as the station reported it.")
    specName: str = Field(
        description="Data spec name, from the mapping's dataSpecMap or the name."
    )
    value: Any = Field(description="The station's JSON value, unchanged.")
    unit: str | None = Field(description="Unit as the station reported it.")
    judge: Judge | None = Field(
        description="The station's judge normalized to PASS or FAIL, if it gave one."
    )


_UNIT_EVENT_LINKS = ("trackId", "dataValueCount")
_CARRIER_EVENT_LINKS = (
    "carrierId",
    "carrierTrackId",
    "unitTracks",
    "carrierDataValueCount",
)

# The rules that depend on eventType, as JSON Schema. `NormalizedEventV1`
# enforces the same rules in `_check_event_type_rules`.
_EVENT_TYPE_RULES: list[dict[str, Any]] = [
    {
        "if": {"properties": {"eventType": {"const": "BATCH"}}},
        "then": {
            "properties": {
                "carrierCode": {"type": "string"},
                "snList": {"minItems": 1},
                "unitStatus": {"type": "object", "minProperties": 1},
                "links": {"required": list(_CARRIER_EVENT_LINKS)},
            }
        },
        "else": {
            "properties": {
                "sn": {"type": "string"},
                "stationCode": {"type": "string"},
                "unitStatus": {"type": "string"},
                "links": {"required": list(_UNIT_EVENT_LINKS)},
            }
        },
    },
    {
        "if": {"properties": {"eventType": {"const": "TEST"}}},
        "then": {"properties": {"testResultId": {"type": "string"}}},
    },
]


def _add_event_type_rules(schema: dict[str, Any]) -> None:
    schema["allOf"] = _EVENT_TYPE_RULES


class NormalizedEventV1(BaseModel):
    """A stored event in its station-independent form, version 1.

    The same document is stored with the event and published on the normalized
    topic. Every field is present in every event, with null where a value does
    not apply. Build the JSON document with `to_document`.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_add_event_type_rules)

    # `schema` would shadow a BaseModel method, so the attribute is `schema_`.
    # It has no default because a field with a default would be optional in
    # the schema, while every document carries it.
    schema_: Literal["mes.ingest.normalized/v1"] = Field(
        alias="schema",
        description="Name and version of this document format.",
    )
    eventId: DecimalId = Field(
        description="Id of the stored event; consumers deduplicate by it."
    )
    sourceSystem: str = Field(
        min_length=1, max_length=128, description="sourceSystem of the envelope."
    )
    dedupeKey: str = Field(
        min_length=1, max_length=256, description="dedupeKey of the envelope."
    )
    eventType: EventType = Field(description="eventType of the envelope.")
    occurredAt: UtcTimestamp = Field(description="occurredAt of the envelope, in UTC.")
    stationOccurredAt: UtcTimestamp | None = Field(
        description="The station's own time from the mapping's occurredAtPath, in UTC."
    )
    receivedAt: UtcTimestamp = Field(
        description="When the worker stored the event, in UTC."
    )
    runNo: str = Field(description="The production run the event was booked to.")
    routeVersionId: DecimalId = Field(
        description="Id of the run's frozen route version."
    )
    stepNo: int = Field(description="Route step the event was booked to.")
    stationCode: str | None = Field(description="Code of the reporting station.")
    lineCode: str | None = Field(
        description="From the mapping's lineCodePath, else the station's line."
    )
    sn: str | None = Field(description="Serial number of the unit (AUTO, TEST).")
    snList: list[str] = Field(
        description="Serial numbers of the carrier's units (BATCH); may be empty "
        "for AUTO and TEST."
    )
    carrierCode: str | None = Field(description="Carrier or lot code (BATCH).")
    result: Judge = Field(description="Overall result of the event.")
    testResultId: str | None = Field(description="The test system's result id (TEST).")
    measurements: list[NormalizedMeasurementV1] = Field(
        description="Measurements in the order the mapping found them."
    )
    unitStatus: UnitStatus | dict[str, UnitStatus] = Field(
        description="Unit status after the event: a status for AUTO and TEST, "
        "an object of status by serial number for BATCH."
    )
    links: UnitLinks | CarrierLinks = Field(
        description="Ids of the rows the event wrote."
    )

    @model_validator(mode="after")
    def _check_event_type_rules(self) -> NormalizedEventV1:
        if self.eventType == "BATCH":
            self._check_carrier_event()
        else:
            self._check_unit_event()
        return self

    def _check_carrier_event(self) -> None:
        if self.carrierCode is None:
            raise ValueError("carrierCode is required for a BATCH event")
        if not self.snList:
            raise ValueError("snList must not be empty for a BATCH event")
        if not isinstance(self.unitStatus, dict) or not self.unitStatus:
            raise ValueError(
                "unitStatus must be a non-empty object of status by serial number "
                "for a BATCH event"
            )
        # JSON Schema cannot compare two fields, so this rule is not in the schema.
        unknown = sorted(set(self.unitStatus) - set(self.snList))
        if unknown:
            raise ValueError(f"unitStatus names units not in snList: {unknown}")
        missing = [name for name in _CARRIER_EVENT_LINKS if name not in self.links]
        if missing:
            raise ValueError(f"links of a BATCH event are missing {missing}")

    def _check_unit_event(self) -> None:
        if self.sn is None:
            raise ValueError(f"sn is required for an {self.eventType} event")
        if self.stationCode is None:
            raise ValueError(f"stationCode is required for an {self.eventType} event")
        if self.eventType == "TEST" and self.testResultId is None:
            raise ValueError("testResultId is required for a TEST event")
        if not isinstance(self.unitStatus, str):
            raise ValueError(
                f"unitStatus must be one status for an {self.eventType} event"
            )
        missing = [name for name in _UNIT_EVENT_LINKS if name not in self.links]
        if missing:
            raise ValueError(
                f"links of an {self.eventType} event are missing {missing}"
            )

    def to_document(self) -> dict[str, Any]:
        """Return the event as the JSON-compatible dict that is stored and sent."""
        return self.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


class _SchemaGenerator(GenerateJsonSchema):
    """Pydantic's generator without the titles it derives from field names."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


@dataclass(frozen=True)
class SchemaSource:
    """A model and the identity of the JSON Schema generated from it.

    `mode` is "validation" for documents the worker reads and "serialization"
    for documents it writes. `property_descriptions` adds descriptions, and
    `property_formats` adds `format` keywords, to top-level properties of a
    model that does not carry them itself.
    """

    model: type[BaseModel]
    schema_id: str
    title: str
    description: str
    mode: JsonSchemaMode
    property_descriptions: dict[str, str] = field(default_factory=dict)
    property_formats: dict[str, str] = field(default_factory=dict)


_ENVELOPE_DESCRIPTIONS = {
    "dedupeKey": "Unique per sourceSystem. A repeated key with the same content "
    "is a duplicate and has no effect; with other content it is rejected as "
    "DEDUPE_KEY_CONFLICT.",
    "sourceSystem": "The publishing station or system.",
    "eventType": "Must match the event type of the topic the record is sent to.",
    "occurredAt": "RFC 3339 timestamp with an offset; one without an offset "
    "is rejected.",
    "runNo": "The production run; when present, the run is taken from it.",
    "sn": "Serial number, a hint for finding the run.",
    "snList": "Serial numbers, a hint for finding the run of a carrier event.",
    "payload": "The raw station output, read by the step's ingestMapping.",
    "meta": "Optional data about the record, readable by the ingestMapping.",
}

_MAPPING_DESCRIPTIONS = {
    "eventType": "Must equal the station type of the route step.",
    "occurredAtPath": "Path of the station's own time.",
    "occurredAtFormat": "Format of the value at occurredAtPath.",
    "stationCodePath": "Path of the station code.",
    "lineCodePath": "Path of the line code.",
    "snPath": "Path of the unit serial number.",
    "snListPath": "Path of the serial numbers of a carrier's units.",
    "carrierCodePath": "Path of the carrier or lot code.",
    "testResultIdPath": "Path of the test system's result id.",
    "result": "The overall result; values are compared case-insensitively.",
    "measurements": "Where the measurements are; item paths are relative to each item.",
    "judge": "Station judge values that mean PASS and FAIL for measurements.",
    "dataSpecMap": "Data spec name by measurement name.",
    "batchPolicy": "ALL_OR_NOTHING rejects a carrier event when any unit fails "
    "a gate; PARTIAL books the units that pass.",
}

# URNs of the informal namespace "mes-ingest", which is not registered; they
# identify the schemas and are not meant to be resolved.
SCHEMAS: dict[str, SchemaSource] = {
    "envelope.schema.json": SchemaSource(
        model=EnvelopeModel,
        schema_id="urn:mes-ingest:schema:envelope:v1",
        title="MES ingest envelope",
        description=(
            "The JSON object in the value of every record on the input topics. "
            "Unknown top-level fields are kept with the raw event and otherwise "
            "ignored. The worker also enforces limits that this schema does not "
            "state because they are configurable: record value size (1 MiB), "
            "JSON nesting depth (64), measurements per event (10,000) and snList "
            "entries (1,000)."
        ),
        mode="validation",
        property_descriptions=_ENVELOPE_DESCRIPTIONS,
        property_formats={"occurredAt": "date-time"},
    ),
    "ingest-mapping.schema.json": SchemaSource(
        model=IngestMappingModel,
        schema_id="urn:mes-ingest:schema:ingest-mapping:v1",
        title="ingestMapping",
        description=(
            "How a route step turns an envelope into a normalized event. Paths "
            "start at the envelope root (payload.x, meta.x, sn). Loading master "
            "data also checks what this schema cannot: path syntax, pass and "
            "fail values that overlap, fields that need a companion field, and "
            "the paths that each eventType requires."
        ),
        mode="validation",
        property_descriptions=_MAPPING_DESCRIPTIONS,
    ),
    "normalized-event.schema.json": SchemaSource(
        model=NormalizedEventV1,
        schema_id="urn:mes-ingest:schema:normalized-event:v1",
        title="MES normalized event v1",
        description=(
            "The value of every record on the normalized topic, published at "
            "least once per stored event; consumers deduplicate by eventId. "
            "Every field is present, with null where it does not apply."
        ),
        mode="serialization",
    ),
}


def render_schema(file_name: str) -> dict[str, Any]:
    """Generate the JSON Schema of `SCHEMAS[file_name]` from its model.

    Raises KeyError for a file name not in `SCHEMAS`, and ValueError when an
    added description or format names a property that the model lacks.
    """
    source = SCHEMAS[file_name]
    body = source.model.model_json_schema(
        mode=source.mode, schema_generator=_SchemaGenerator
    )
    body.pop("title", None)
    body.pop("description", None)
    properties = body["properties"]
    for keyword, values in (
        ("description", source.property_descriptions),
        ("format", source.property_formats),
    ):
        for name, value in values.items():
            if name not in properties:
                raise ValueError(
                    f"{file_name}: {keyword} given for {name!r}, which "
                    f"{source.model.__name__} does not have"
                )
            properties[name][keyword] = value
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": source.schema_id,
        "title": source.title,
        "description": source.description,
        **body,
    }


def render_schema_text(file_name: str) -> str:
    """Return the schema file's content: indented JSON and a final newline."""
    text = json.dumps(render_schema(file_name), indent=2, ensure_ascii=False)
    return text + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema into `directory`; return the files whose content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed: list[Path] = []
    for file_name in SCHEMAS:
        path = directory / file_name
        text = render_schema_text(file_name)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.write_text(text, encoding="utf-8")
        changed.append(path)
    return changed


def check_schemas(directory: Path) -> list[Path]:
    """Return the schema files in `directory` that are missing or out of date."""
    drifted: list[Path] = []
    for file_name in SCHEMAS:
        path = directory / file_name
        if not path.is_file() or path.read_text(encoding="utf-8") != (
            render_schema_text(file_name)
        ):
            drifted.append(path)
    return drifted


def _default_directory() -> Path | None:
    """Return `schemas/` of the source checkout this module runs from, if any."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return root / "schemas"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Write the schema files, or with --check report the ones out of date."""
    parser = argparse.ArgumentParser(
        prog="python -m ingest_worker.schemas",
        description="Generate the JSON Schemas from the pydantic models.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit with status 1 if a file is missing or differs "
        "from its model",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="directory of the schema files (default: schemas/ at the root of "
        "the source checkout)",
    )
    arguments = parser.parse_args(argv)
    directory = arguments.output or _default_directory()
    if directory is None:
        parser.error(
            "no source checkout found next to the installed package; pass --output DIR"
        )

    if arguments.check:
        drifted = check_schemas(directory)
        for path in drifted:
            print(
                f"{path} is missing or out of date; run "
                "`python -m ingest_worker.schemas` to regenerate it",
                file=sys.stderr,
            )
        if drifted:
            return 1
        print(f"{len(SCHEMAS)} schemas in {directory} are up to date")
        return 0

    changed = write_schemas(directory)
    for path in changed:
        print(f"wrote {path}")
    print(f"{len(changed)} of {len(SCHEMAS)} schemas changed in {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
