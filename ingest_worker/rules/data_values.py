"""Data values from measurements (contract step 9)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from ingest_worker.errors import ErrorCode, RecordRejected
from ingest_worker.mapping import Measurement
from ingest_worker.rules.state import DataSpec, ShopFloor, Step


@dataclass(frozen=True, slots=True)
class DataValue:
    """One data value to store, converted to its spec's data type."""

    spec: DataSpec
    value: Any
    unit: str | None
    judge: str | None


class _Invalid(Exception):
    pass


def _to_number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise _Invalid
        return value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _Invalid from None
        if not math.isfinite(number):
            raise _Invalid
        return int(number) if number.is_integer() and "." not in value else number
    raise _Invalid


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    raise _Invalid


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "pass"):
            return True
        if lowered in ("false", "0", "no", "fail"):
            return False
    raise _Invalid


_CONVERTERS = {
    "NUMBER": _to_number,
    "TEXT": _to_text,
    "BOOLEAN": _to_boolean,
    "JSON": lambda value: value,
}


def _judge_from_limits(spec: DataSpec, value: Any) -> str | None:
    low, high = spec.limits
    if spec.data_type != "NUMBER" or (low is None and high is None):
        return None
    if low is not None and value < low:
        return "FAIL"
    if high is not None and value > high:
        return "FAIL"
    return "PASS"


def bound_specs(step: Step, floor: ShopFloor) -> list[DataSpec]:
    """Return the step's data specs, each of which must exist and be active."""
    missing = [
        name
        for name in step.data_specs
        if name not in floor.data_specs or not floor.data_specs[name].active
    ]
    if missing:
        raise RecordRejected(
            ErrorCode.DATA_SPEC_NOT_FOUND,
            f"step {step.step_no} binds data specs that are missing or inactive: "
            f"{', '.join(missing)}; add or activate them in the master data",
            {"stepNo": step.step_no, "dataSpecs": missing},
        )
    return [floor.data_specs[name] for name in step.data_specs]


def build_data_values(
    step: Step,
    specs: list[DataSpec],
    measurements: list[Measurement],
    result: str,
    *,
    per_carrier: bool,
) -> list[DataValue]:
    """Convert the measurements that match the step's specs into data values.

    Measurements whose spec name is not bound to the step write nothing. An
    unset measurement (value null) writes nothing and counts as missing.
    """
    by_name = {spec.name: spec for spec in specs}
    if per_carrier:
        wrong = [
            spec.name
            for spec in specs
            if spec.is_required and spec.trigger_type != "EACH_CARRIER"
        ]
        if wrong:
            raise RecordRejected(
                ErrorCode.DATA_SPEC_TRIGGER_MISMATCH,
                f"step {step.step_no} is a BATCH step but its required data specs "
                f"{', '.join(wrong)} are not triggered EACH_CARRIER; change their "
                "triggerType or bind them to a unit step",
                {"stepNo": step.step_no, "dataSpecs": wrong},
            )

    values: list[DataValue] = []
    invalid: dict[str, str] = {}
    for measurement in measurements:
        spec = by_name.get(measurement.specName)
        if spec is None or measurement.value is None:
            continue
        if spec.method == "MANUAL":
            raise RecordRejected(
                ErrorCode.DATA_SPEC_METHOD_MISMATCH,
                f"measurement {measurement.name!r} maps to data spec {spec.name}, "
                "whose method is MANUAL and so takes no ingested values; map the "
                "measurement elsewhere or set the spec's method to AUTO",
                {"measurement": measurement.name, "dataSpec": spec.name},
            )
        try:
            value = _CONVERTERS[spec.data_type](measurement.value)
        except _Invalid:
            shown = orjson.dumps(measurement.value).decode()[:80]
            invalid[measurement.name] = f"{shown} is not a valid {spec.data_type}"
            continue
        judge = measurement.judge or _judge_from_limits(spec, value)
        values.append(DataValue(spec, value, measurement.unit, judge))
    if invalid:
        listed = "; ".join(f"{name}: {reason}" for name, reason in invalid.items())
        raise RecordRejected(
            ErrorCode.DATA_VALUE_INVALID,
            f"measurements do not convert to their data specs' types: {listed}",
            {"measurements": invalid},
        )

    if result == "PASS":
        present = {value.spec.name for value in values}
        missing = [
            spec.name for spec in specs if spec.is_required and spec.name not in present
        ]
        if missing:
            raise RecordRejected(
                ErrorCode.REQUIRED_DATA_MISSING,
                f"the event passes step {step.step_no} but lacks required data "
                f"{', '.join(missing)}; the station must report them, or the "
                "mapping's dataSpecMap must name them",
                {"stepNo": step.step_no, "dataSpecs": missing},
            )
    return values


def measurement_summary(
    measurements: list[Measurement], values: list[DataValue]
) -> dict[str, Any]:
    """Summarize an event's measurements for the trace."""
    stored = {value.spec.name for value in values}
    return {
        "count": len(measurements),
        "stored": len(values),
        "pass": sum(1 for value in values if value.judge == "PASS"),
        "fail": sum(1 for value in values if value.judge == "FAIL"),
        "unmatched": [m.name for m in measurements if m.specName not in stored],
    }
