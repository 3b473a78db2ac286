"""Pydantic models of the stored ingestMapping and of the normalized event.

Field names are camelCase because they are the keys of the master data file and
of the normalized output. `parse_mapping` checks a stored mapping except for its
path syntax, which `compile_mapping` checks when it parses the paths.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)

from ingest_worker.errors import MappingDefinitionError
from ingest_worker.mapping.timestamps import format_utc

__all__ = [
    "BatchPolicy",
    "EventType",
    "IngestMappingModel",
    "Judge",
    "JudgeRule",
    "Measurement",
    "MeasurementsRule",
    "NormalizedEvent",
    "OccurredAtFormat",
    "ResultRule",
    "fold_match_value",
    "parse_mapping",
]

EventType = Literal["AUTO", "BATCH", "TEST"]
Judge = Literal["PASS", "FAIL"]
OccurredAtFormat = Literal["iso", "epoch_ms", "epoch_s"]
BatchPolicy = Literal["ALL_OR_NOTHING", "PARTIAL"]

# Strict mode accepts only the types as written, so that, for example, bytes
# are not decoded into a string and a tuple is not taken for a list.
_MAPPING_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True)

_MatchValues = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
_Path = Annotated[str, Field(min_length=1)]


class ResultRule(BaseModel):
    """Path of the overall result and the station values that mean PASS and FAIL."""

    model_config = _MAPPING_CONFIG

    path: _Path
    passValues: _MatchValues
    failValues: _MatchValues


class MeasurementsRule(BaseModel):
    """Path of the measurement items and the paths of their fields within each item."""

    model_config = _MAPPING_CONFIG

    itemsPath: _Path
    namePath: _Path
    valuePath: _Path
    unitPath: _Path | None = None
    judgePath: _Path | None = None


class JudgeRule(BaseModel):
    """Station judge values that mean PASS and FAIL for a measurement."""

    model_config = _MAPPING_CONFIG

    passValues: _MatchValues
    failValues: _MatchValues


class IngestMappingModel(BaseModel):
    """An ingestMapping as stored on a route step in master data."""

    model_config = _MAPPING_CONFIG

    eventType: EventType | None = None
    occurredAtPath: _Path | None = None
    occurredAtFormat: OccurredAtFormat = "iso"
    stationCodePath: _Path | None = None
    lineCodePath: _Path | None = None
    snPath: _Path | None = None
    snListPath: _Path | None = None
    carrierCodePath: _Path | None = None
    testResultIdPath: _Path | None = None
    result: ResultRule
    measurements: MeasurementsRule | None = None
    judge: JudgeRule | None = None
    dataSpecMap: dict[str, str] = Field(default_factory=dict)
    batchPolicy: BatchPolicy = "ALL_OR_NOTHING"


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measurement of an event, with the station's JSON value unchanged.

    A plain dataclass rather than a model: events carry up to 10,000 of them,
    and the compiler has checked every field before it builds one.
    """

    name: str
    specName: str
    value: Any = None
    unit: str | None = None
    judge: Judge | None = None


class NormalizedEvent(BaseModel):
    """The station-independent form of an event, produced by its mapping."""

    model_config = ConfigDict(extra="forbid")

    eventType: EventType
    occurredAt: datetime
    stationOccurredAt: datetime | None = None
    stationCode: str | None = None
    lineCode: str | None = None
    sn: str | None = None
    snList: list[str] = Field(default_factory=list)
    carrierCode: str | None = None
    result: Judge | None = None
    testResultId: str | None = None
    measurements: list[Measurement] = Field(default_factory=list)

    @field_validator("occurredAt", "stationOccurredAt")
    @classmethod
    def _require_utc(cls, moment: datetime | None) -> datetime | None:
        if moment is None:
            return None
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("must be timezone-aware")
        return moment.astimezone(UTC)

    @field_serializer("occurredAt", "stationOccurredAt", when_used="json")
    def _format_utc(self, moment: datetime | None) -> str | None:
        return None if moment is None else format_utc(moment)


# Mapping fields without which no event of the type can normalize, with the
# normalized field that each one fills.
_REQUIRED_MAPPING_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "AUTO": (("snPath", "sn"), ("stationCodePath", "stationCode")),
    "TEST": (
        ("snPath", "sn"),
        ("stationCodePath", "stationCode"),
        ("testResultIdPath", "testResultId"),
    ),
    "BATCH": (("carrierCodePath", "carrierCode"), ("snListPath", "snList")),
}
_MODEL_AT: dict[tuple[str | int, ...], type[BaseModel]] = {
    (): IngestMappingModel,
    ("result",): ResultRule,
    ("measurements",): MeasurementsRule,
    ("judge",): JudgeRule,
}
_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80


def fold_match_value(text: str) -> str:
    """Return the form in which result and judge values are compared."""
    return text.strip().casefold()


def parse_mapping(raw: Any) -> IngestMappingModel:
    """Validate a stored ingestMapping and return it as a model.

    Raises MappingDefinitionError naming the dotted field. Besides types, this
    rejects blank or overlapping pass and fail values, blank
    dataSpecMap entries, fields that need a missing companion field, and a
    mapping whose eventType lacks a path that every event of that type needs.
    """
    try:
        model = IngestMappingModel.model_validate(raw)
    except ValidationError as error:
        raise _definition_error(error) from None
    _check_match_values("result", model.result.passValues, model.result.failValues)
    if model.judge is not None:
        _check_match_values("judge", model.judge.passValues, model.judge.failValues)
    _check_companions(model)
    return model


def _check_match_values(field: str, passes: list[str], fails: list[str]) -> None:
    for values, name in ((passes, "passValues"), (fails, "failValues")):
        for index, value in enumerate(values):
            if not value.strip():
                raise MappingDefinitionError(
                    f"{field}.{name}[{index}]", "must not be blank"
                )
    folded_passes = {fold_match_value(value) for value in passes}
    overlap = [value for value in fails if fold_match_value(value) in folded_passes]
    if overlap:
        raise MappingDefinitionError(
            f"{field}.failValues",
            f"{', '.join(map(repr, overlap))} also in passValues, but a value must "
            "mean either PASS or FAIL (compared case-insensitively)",
        )


def _check_companions(model: IngestMappingModel) -> None:
    if "occurredAtFormat" in model.model_fields_set and model.occurredAtPath is None:
        raise MappingDefinitionError(
            "occurredAtFormat", "is set, but occurredAtPath is missing"
        )
    if model.judge is not None and (
        model.measurements is None or model.measurements.judgePath is None
    ):
        raise MappingDefinitionError(
            "judge", "is set, but measurements.judgePath is missing"
        )
    if model.dataSpecMap and model.measurements is None:
        raise MappingDefinitionError(
            "dataSpecMap", "is set, but measurements is missing"
        )
    for name, spec_name in model.dataSpecMap.items():
        if not name.strip():
            raise MappingDefinitionError(
                "dataSpecMap", "a measurement name must not be blank"
            )
        if not spec_name.strip():
            raise MappingDefinitionError(
                f"dataSpecMap.{name}", "the data spec name must not be blank"
            )
    if model.eventType is not None:
        for mapping_field, field in _REQUIRED_MAPPING_FIELDS[model.eventType]:
            if getattr(model, mapping_field) is None:
                raise MappingDefinitionError(
                    mapping_field,
                    f"is required for eventType {model.eventType} because the "
                    f"normalized event needs {field}",
                )


def _definition_error(error: ValidationError) -> MappingDefinitionError:
    """Turn the most useful pydantic error into a MappingDefinitionError."""
    # An unknown field is usually a misspelled known one, so it is reported first.
    details = sorted(error.errors(), key=lambda item: item["type"] != "extra_forbidden")
    first = details[0]
    field = ""
    for part in first["loc"]:
        field += f"[{part}]" if isinstance(part, int) else f".{part}"
    field = field.lstrip(".") or "ingestMapping"
    message = _plain_message(first)
    if len(details) > 1:
        message += f" ({len(details) - 1} more errors in this mapping)"
    return MappingDefinitionError(field, message)


def _plain_message(detail: Any) -> str:
    kind = detail["type"]
    value = detail.get("input")
    echoed = _repr.repr(value)
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        model = _MODEL_AT.get(tuple(detail["loc"][:-1]))
        if model is None:
            return "unknown field"
        return f"unknown field; allowed fields are {', '.join(model.model_fields)}"
    if kind == "literal_error":
        return f"invalid value {echoed}; expected {detail['ctx']['expected']}"
    if kind == "string_type":
        hint = "; quote it in YAML" if isinstance(value, bool | int | float) else ""
        return f"must be a string, got {type(value).__name__} {echoed}{hint}"
    if kind in ("model_type", "dict_type"):
        return f"must be an object, got {type(value).__name__} {echoed}"
    if kind == "list_type":
        return f"must be a list, got {type(value).__name__} {echoed}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return "must contain at least one value"
    return str(detail["msg"])
