"""Compilation of an ingestMapping and normalization of envelopes with it.

`compile_mapping` validates a stored mapping once, when master data is loaded,
and parses all of its paths. `CompiledMapping.normalize` then runs for every
record and turns an envelope into a `NormalizedEvent`, or raises one
`RecordRejected` that lists every field that does not match.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

import orjson

from ingest_worker.errors import ErrorCode, MappingDefinitionError, RecordRejected
from ingest_worker.mapping.model import (
    BatchPolicy,
    EventType,
    IngestMappingModel,
    Judge,
    Measurement,
    NormalizedEvent,
    OccurredAtFormat,
    fold_match_value,
    parse_mapping,
)
from ingest_worker.mapping.paths import CompiledPath, PathSyntaxError, compile_path
from ingest_worker.mapping.timestamps import parse_epoch, parse_rfc3339

__all__ = ["CompiledMapping", "compile_mapping"]

_MAX_ECHO = 80
# Item errors listed per event; the rest are counted, so that an event with
# 10,000 bad measurements still gets a dead-letter header of bounded size.
_MAX_ITEM_ERRORS = 20

_SCALAR_PATHS = (
    ("stationCode", "stationCodePath"),
    ("lineCode", "lineCodePath"),
    ("sn", "snPath"),
    ("carrierCode", "carrierCodePath"),
    ("testResultId", "testResultIdPath"),
)
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "AUTO": ("sn", "stationCode", "result"),
    "TEST": ("sn", "stationCode", "result", "testResultId"),
    "BATCH": ("carrierCode", "snList", "result"),
}
_MAPPING_FIELD_OF = {
    **dict(_SCALAR_PATHS),
    "snList": "snListPath",
    "result": "result.path",
}
# Field errors are listed in the order of the normalized event.
_FIELD_ORDER = {
    name: rank
    for rank, name in enumerate(
        [
            "stationOccurredAt",
            "stationCode",
            "lineCode",
            "sn",
            "snList",
            "carrierCode",
            "result",
            "testResultId",
            "measurements",
        ]
    )
}
_repr = reprlib.Repr()
_repr.maxstring = _MAX_ECHO
_repr.maxother = _MAX_ECHO


def _echo(value: Any) -> str:
    """Render a value for a message, cut to about 80 characters."""
    if isinstance(value, str):
        text = value if len(value) <= _MAX_ECHO else value[:_MAX_ECHO] + "..."
        return repr(text)
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return _repr.repr(value)
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _to_text(value: Any) -> str | None:
    """Return a string, number or boolean spelled as in JSON, or None for others."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than int-to-str conversion allows
            return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        # An integral float is spelled as an integer, so 1001.0 gives "1001".
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return orjson.dumps(value).decode()
    return None


@dataclass(frozen=True, slots=True)
class _MatchRule:
    """Case-insensitive match of a station value against pass and fail values."""

    pass_values: frozenset[str]
    fail_values: frozenset[str]
    pass_listing: str
    fail_listing: str

    @classmethod
    def build(cls, passes: list[str], fails: list[str]) -> _MatchRule:
        return cls(
            frozenset(fold_match_value(value) for value in passes),
            frozenset(fold_match_value(value) for value in fails),
            ", ".join(passes),
            ", ".join(fails),
        )

    def classify(self, text: str) -> Judge | None:
        folded = fold_match_value(text)
        if folded in self.pass_values:
            return "PASS"
        if folded in self.fail_values:
            return "FAIL"
        return None


@dataclass(frozen=True, slots=True)
class _MeasurementPaths:
    items: CompiledPath
    name: CompiledPath
    value: CompiledPath
    unit: CompiledPath | None
    judge: CompiledPath | None
    judge_rule: _MatchRule | None


class _Absent:
    """Marker for a field that resolved to nothing, with the reason as text."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(frozen=True, slots=True, eq=False)
class CompiledMapping:
    """An ingestMapping validated and parsed by `compile_mapping`."""

    definition: IngestMappingModel
    event_type: EventType | None
    batch_policy: BatchPolicy
    data_spec_map: Mapping[str, str]
    _scalar_paths: tuple[tuple[str, CompiledPath], ...]
    _occurred_at_path: CompiledPath | None
    _occurred_at_format: OccurredAtFormat
    _sn_list_path: CompiledPath | None
    _result_path: CompiledPath
    _result_rule: _MatchRule
    _measurements: _MeasurementPaths | None

    def normalize(
        self, envelope: dict[str, Any], event_type: EventType, occurred_at: datetime
    ) -> NormalizedEvent:
        """Apply the mapping to an envelope for a step of type `event_type`.

        Raises RecordRejected with code INGEST_PAYLOAD_INVALID listing every field
        that does not match, and ValueError when `event_type` differs from the
        mapping's own eventType.
        """
        if event_type not in _REQUIRED_FIELDS:
            raise ValueError(f"invalid event type {event_type!r}")
        if self.event_type is not None and self.event_type != event_type:
            raise ValueError(
                f"mapping for eventType {self.event_type} applied to {event_type}"
            )
        errors: dict[str, str] = {}
        found: dict[str, Any] = {}
        for field, path in self._scalar_paths:
            found[field] = _resolve_text(envelope, path, field, errors)
        found["stationOccurredAt"] = self._station_time(envelope, errors)
        found["snList"] = self._serials(envelope, errors)
        found["result"] = self._result(envelope, errors)
        found["measurements"] = self._measurement_list(envelope, errors)

        for field in _REQUIRED_FIELDS[event_type]:
            value = found.get(field)
            if field in errors:
                continue
            if isinstance(value, _Absent):
                errors[field] = value.reason
            elif not value:
                errors[field] = (
                    f"required for {event_type} events, but the mapping has no "
                    f"{_MAPPING_FIELD_OF[field]}"
                )
        if errors:
            raise _rejection(errors)
        present = {
            key: (None if isinstance(value, _Absent) else value)
            for key, value in found.items()
        }
        present["snList"] = present["snList"] or []
        return NormalizedEvent(eventType=event_type, occurredAt=occurred_at, **present)

    def _station_time(
        self, envelope: dict[str, Any], errors: dict[str, str]
    ) -> datetime | None:
        path = self._occurred_at_path
        if path is None:
            return None
        value = _resolve_one(envelope, path, "stationOccurredAt", errors)
        if value is None or isinstance(value, _Absent):
            return None
        fmt = self._occurred_at_format
        if fmt == "iso" and not isinstance(value, str):
            errors["stationOccurredAt"] = (
                f"value {_echo(value)} at {path.text} is {_json_type(value)}, but "
                "occurredAtFormat iso expects an RFC 3339 string; use epoch_ms or "
                "epoch_s for Unix times"
            )
            return None
        try:
            if fmt == "iso":
                return parse_rfc3339(value)
            return parse_epoch(value, "ms" if fmt == "epoch_ms" else "s")
        except ValueError as error:
            errors["stationOccurredAt"] = (
                f"{error} (path {path.text}, occurredAtFormat {fmt})"
            )
            return None

    def _serials(
        self, envelope: dict[str, Any], errors: dict[str, str]
    ) -> list[str] | _Absent:
        path = self._sn_list_path
        if path is None:
            return []
        values = path.resolve(envelope)
        if not values:
            return _Absent(f"path {path.text} matched nothing")
        serials: list[str] = []
        for position, value in enumerate(values):
            text = _to_text(value)
            if text is None or not text.strip():
                hint = ""
                if isinstance(value, list):
                    hint = "; end the path with [*] to take the array's elements"
                errors["snList"] = (
                    f"value {position} at {path.text} is {_json_type(value)} "
                    f"{_echo(value)}, expected a serial number{hint}"
                )
                return []
            serials.append(text)
        duplicates = _duplicates(serials)
        if duplicates:
            errors["snList"] = f"duplicate serial numbers at {path.text}: {duplicates}"
            return []
        return serials

    def _result(
        self, envelope: dict[str, Any], errors: dict[str, str]
    ) -> Judge | _Absent | None:
        path = self._result_path
        text = _resolve_text(envelope, path, "result", errors)
        if text is None or isinstance(text, _Absent):
            return text
        rule = self._result_rule
        judge = rule.classify(text)
        if judge is None:
            errors["result"] = (
                f"value {_echo(text)} at {path.text} is neither a pass value "
                f"({rule.pass_listing}) nor a fail value ({rule.fail_listing})"
            )
        return judge

    def _measurement_list(
        self, envelope: dict[str, Any], errors: dict[str, str]
    ) -> list[Measurement]:
        paths = self._measurements
        if paths is None:
            return []
        item_errors: dict[str, str] = {}
        measurements: list[Measurement] = []
        for index, item in enumerate(paths.items.resolve(envelope)):
            measurement = self._measurement(paths, item, index, item_errors)
            if measurement is not None:
                measurements.append(measurement)

        listed = list(item_errors.items())
        errors.update(listed[:_MAX_ITEM_ERRORS])
        summary: list[str] = []
        duplicates = _duplicates(measurement.name for measurement in measurements)
        if duplicates:
            summary.append(f"duplicate measurement names {duplicates}")
        if len(listed) > _MAX_ITEM_ERRORS:
            summary.append(f"{len(listed) - _MAX_ITEM_ERRORS} more item errors")
        if summary:
            errors["measurements"] = "; ".join(summary)
        return measurements

    def _measurement(
        self,
        paths: _MeasurementPaths,
        item: Any,
        index: int,
        errors: dict[str, str],
    ) -> Measurement | None:
        """Build the measurement of one item, or record its errors and return None."""
        fast = self._plain_measurement(paths, item)
        if fast is not None:
            return fast
        field = f"measurements[{index}]"
        name = _resolve_text(item, paths.name, f"{field}.name", errors, relative=True)
        if isinstance(name, _Absent):
            errors[f"{field}.name"] = name.reason + _item_hint(item)
            return None

        value = _resolve_one(item, paths.value, f"{field}.value", errors, relative=True)
        unit = judge_text = None
        if paths.unit is not None:
            unit = _resolve_text(
                item, paths.unit, f"{field}.unit", errors, relative=True
            )
        if paths.judge is not None:
            judge_text = _resolve_text(
                item, paths.judge, f"{field}.judge", errors, relative=True
            )
        if name is None:
            return None

        return Measurement(
            name=name,
            specName=self.data_spec_map.get(name, name),
            value=None if isinstance(value, _Absent) else value,
            unit=None if isinstance(unit, _Absent) else unit,
            judge=self._judge(judge_text),
        )

    def _plain_measurement(
        self, paths: _MeasurementPaths, item: Any
    ) -> Measurement | None:
        """Build the measurement of a well-formed item without error bookkeeping.

        Covers the usual item: a non-blank string name, at most one value, and
        unit and judge each absent, null or a non-blank string. Any other item
        returns None and takes the full path, which gives the same result for
        these items and explains every other one.
        """
        names = paths.name.resolve(item)
        if len(names) != 1:
            return None
        name = names[0]
        if type(name) is not str or not name.strip():
            return None
        values = paths.value.resolve(item)
        if len(values) > 1:
            return None
        unit = _plain_text(paths.unit, item)
        judge_text = _plain_text(paths.judge, item)
        if unit is _NOT_PLAIN or judge_text is _NOT_PLAIN:
            return None
        return Measurement(
            name=name,
            specName=self.data_spec_map.get(name, name),
            value=values[0] if values else None,
            unit=unit,
            judge=self._judge(judge_text),
        )

    def _judge(self, text: str | _Absent | None) -> Judge | None:
        if text is None or isinstance(text, _Absent):
            return None
        rule = self._measurements.judge_rule if self._measurements else None
        if rule is not None:
            return rule.classify(text)
        folded = fold_match_value(text)
        if folded == "pass":
            return "PASS"
        if folded == "fail":
            return "FAIL"
        return None


_NOT_PLAIN: Any = object()


def _plain_text(path: CompiledPath | None, item: Any) -> Any:
    """Return the optional text at `path`: None, a non-blank string or _NOT_PLAIN."""
    if path is None:
        return None
    values = path.resolve(item)
    if not values or (values[0] is None and len(values) == 1):
        return None
    if len(values) == 1 and type(values[0]) is str and values[0].strip():
        return values[0]
    return _NOT_PLAIN


def _duplicates(texts: Iterable[str]) -> str:
    """List the texts that occur more than once, at most 10 of them, or return ""."""
    texts = list(texts)
    if len(set(texts)) == len(texts):
        return ""
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for text in texts:
        if text in seen:
            repeated[text] = None
        seen.add(text)
    listing = ", ".join(_echo(text) for text in list(repeated)[:10])
    if len(repeated) > 10:
        listing += f" and {len(repeated) - 10} more"
    return listing


def _item_hint(item: Any) -> str:
    if isinstance(item, dict):
        return ""
    return f" (the item is {_json_type(item)}, not an object)"


def _shown(path: CompiledPath, relative: bool) -> str:
    return f"{path.text!r} in the item" if relative else path.text


def _resolve_one(
    document: Any,
    path: CompiledPath,
    field: str,
    errors: dict[str, str],
    *,
    relative: bool = False,
) -> Any:
    """Return the one value at `path`, an `_Absent`, or None after an error.

    `relative` marks a measurement item path, which messages name as such.
    """
    values = path.resolve(document)
    if not values:
        return _Absent(f"path {_shown(path, relative)} matched nothing")
    if len(values) > 1:
        errors[field] = (
            f"path {_shown(path, relative)} matched {len(values)} values, expected one"
        )
        return None
    if values[0] is None:
        return _Absent(f"path {_shown(path, relative)} matched null")
    return values[0]


def _resolve_text(
    document: Any,
    path: CompiledPath,
    field: str,
    errors: dict[str, str],
    *,
    relative: bool = False,
) -> str | _Absent | None:
    """Return the one value at `path` as text, an `_Absent`, or None after an error."""
    value = _resolve_one(document, path, field, errors, relative=relative)
    if value is None or isinstance(value, _Absent):
        return value
    text = _to_text(value)
    if text is None:
        errors[field] = (
            f"value {_echo(value)} at {_shown(path, relative)} is "
            f"{_json_type(value)}, expected a string, number or boolean"
        )
        return None
    if not text.strip():
        return _Absent(f"path {_shown(path, relative)} matched an empty string")
    return text


def _rejection(errors: dict[str, str]) -> RecordRejected:
    def rank(item: tuple[str, str]) -> int:
        field = item[0].partition("[")[0].partition(".")[0]
        return _FIELD_ORDER.get(field, len(_FIELD_ORDER))

    ordered = dict(sorted(errors.items(), key=rank))
    listing = "; ".join(f"{field}: {reason}" for field, reason in ordered.items())
    return RecordRejected(
        ErrorCode.INGEST_PAYLOAD_INVALID,
        f"event does not match the mapping: {listing}",
        detail={"fields": ordered},
    )


def compile_mapping(raw: Any) -> CompiledMapping:
    """Validate a stored ingestMapping with `parse_mapping` and parse its paths.

    Raises MappingDefinitionError naming the dotted field for an unknown field,
    a wrong type, an invalid path or value, or fields that contradict each other.
    """
    model = parse_mapping(raw)
    scalar_paths = []
    for field, mapping_field in _SCALAR_PATHS:
        compiled = _compile_optional(mapping_field, getattr(model, mapping_field))
        if compiled is not None:
            scalar_paths.append((field, compiled))
    measurement_paths = None
    if (rule := model.measurements) is not None:
        judge_rule = None
        if model.judge is not None:
            judge = model.judge
            judge_rule = _MatchRule.build(judge.passValues, judge.failValues)
        measurement_paths = _MeasurementPaths(
            items=_compile("measurements.itemsPath", rule.itemsPath),
            name=_compile("measurements.namePath", rule.namePath),
            value=_compile("measurements.valuePath", rule.valuePath),
            unit=_compile_optional("measurements.unitPath", rule.unitPath),
            judge=_compile_optional("measurements.judgePath", rule.judgePath),
            judge_rule=judge_rule,
        )
    result = model.result
    return CompiledMapping(
        definition=model,
        event_type=model.eventType,
        batch_policy=model.batchPolicy,
        data_spec_map=MappingProxyType(dict(model.dataSpecMap)),
        _scalar_paths=tuple(scalar_paths),
        _occurred_at_path=_compile_optional("occurredAtPath", model.occurredAtPath),
        _occurred_at_format=model.occurredAtFormat,
        _sn_list_path=_compile_optional("snListPath", model.snListPath),
        _result_path=_compile("result.path", result.path),
        _result_rule=_MatchRule.build(result.passValues, result.failValues),
        _measurements=measurement_paths,
    )


def _compile(field: str, text: str) -> CompiledPath:
    try:
        return compile_path(text)
    except PathSyntaxError as error:
        raise MappingDefinitionError(field, str(error)) from None


def _compile_optional(field: str, text: str | None) -> CompiledPath | None:
    return None if text is None else _compile(field, text)
