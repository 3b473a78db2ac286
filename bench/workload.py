"""Factories and station events of the benchmark scenarios.

Every event is a pure function of its scenario and index, so the worker, the
raw-limit writer and the naive worker all see the same events. Each function
that builds an envelope returns it as a dict. The publisher serializes it with
orjson, and the raw-limit writer stores that serialization as the raw event.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest_worker.storage.seed import MAX_UNITS_PER_RANGE

RUN_NO = "RUN-BENCH-0001"
ROUTE_CODE = "ROUTE-BENCH"
# Serial numbers: prefix plus a zero-padded number of this width.
SN_WIDTH = 8
THROUGHPUT_PREFIX = "BT-"
LATENCY_PREFIX = "BL-"
# Units named by each carrier event.
UNITS_PER_CARRIER = 10
# Baskets that the washer reuses in turn.
CARRIER_COUNT = 100
# Each stage sends one duplicate per DUPLICATE_EVERY events and one invalid
# record per INVALID_EVERY events.
DUPLICATE_EVERY = 20
INVALID_EVERY = 50

_BASE_TIME = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
_TEST_STATIONS = ("ICT-01", "ICT-02", "ICT-03", "ICT-04")
_AUTO_STATIONS = ("SPI-01", "SPI-02")
_WASHER = "WASH-01"
# The ten measurements of a TEST event: name, data spec, unit, min, max.
TEST_MEASUREMENTS = tuple(
    (f"v{index:02d}", f"ICT_V{index:02d}", "V", 1.0 * index, 1.0 * index + 0.5)
    for index in range(1, 11)
)
_AUTO_MEASUREMENTS = (
    ("volume_pct", "SPI_VOLUME_PCT", "%", 70.0, 130.0),
    ("height_um", "SPI_HEIGHT_UM", "um", 90.0, 160.0),
)
_WASH_MEASUREMENTS = (
    ("temperature", "WASH_TEMP_C", "C", 50.0, 65.0),
    ("duration", "WASH_TIME_S", "s", 300.0, 900.0),
)


def serial_number(prefix: str, number: int) -> str:
    return f"{prefix}{number:0{SN_WIDTH}d}"


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _unit_ranges(prefix: str, count: int, step_no: int) -> list[dict[str, Any]]:
    """Return snRange entries for `count` units, split at the seed's range limit."""
    entries = []
    first = 1
    while first <= count:
        last = min(count, first + MAX_UNITS_PER_RANGE - 1)
        entries.append(
            {
                "snRange": {
                    "prefix": prefix,
                    "from": first,
                    "to": last,
                    "width": SN_WIDTH,
                },
                "run": RUN_NO,
                "status": "QUEUED",
                "currentStepNo": step_no,
            }
        )
        first = last + 1
    return entries


def _number_spec(
    name: str, unit: str, low: float, high: float, trigger: str, required: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "dataType": "NUMBER",
        "triggerType": trigger,
        "method": "AUTO",
        "isRequired": required,
        "spec": {"min": low, "max": high, "unit": unit},
    }


def _ict_step(step_no: int) -> dict[str, Any]:
    return {
        "stepNo": step_no,
        "operation": "IN_CIRCUIT_TEST",
        "stationType": "TEST",
        "stationGroup": "ICT",
        "requiresAuthorization": True,
        "dataSpecs": [spec for _, spec, _, _, _ in TEST_MEASUREMENTS],
        "ingestMapping": {
            "eventType": "TEST",
            "occurredAtPath": "payload.finishedAt",
            "stationCodePath": "payload.station",
            "snPath": "payload.serial",
            "testResultIdPath": "payload.testId",
            "result": {
                "path": "payload.outcome",
                "passValues": ["PASS"],
                "failValues": ["FAIL"],
            },
            "measurements": {
                "itemsPath": "payload.results[*]",
                "namePath": "name",
                "valuePath": "value",
                "unitPath": "unit",
                "judgePath": "verdict",
            },
            "dataSpecMap": {name: spec for name, spec, _, _, _ in TEST_MEASUREMENTS},
        },
    }


def _auto_step(step_no: int) -> dict[str, Any]:
    return {
        "stepNo": step_no,
        "operation": "SOLDER_PASTE_INSPECTION",
        "stationType": "AUTO",
        "stationGroup": "SPI",
        "requiresAuthorization": True,
        "dataSpecs": [spec for _, spec, _, _, _ in _AUTO_MEASUREMENTS],
        "ingestMapping": {
            "eventType": "AUTO",
            "occurredAtPath": "payload.inspectedAt",
            "stationCodePath": "payload.machine",
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
            },
            "dataSpecMap": {name: spec for name, spec, _, _, _ in _AUTO_MEASUREMENTS},
        },
    }


def _batch_step(step_no: int) -> dict[str, Any]:
    return {
        "stepNo": step_no,
        "operation": "WASH",
        "stationType": "BATCH",
        "stationGroup": "WASH",
        "requiresAuthorization": True,
        "dataSpecs": [spec for _, spec, _, _, _ in _WASH_MEASUREMENTS],
        "ingestMapping": {
            "eventType": "BATCH",
            "occurredAtPath": "payload.cycleEnd",
            "stationCodePath": "payload.washer",
            "carrierCodePath": "payload.basket",
            "snListPath": "payload.boards[*]",
            "result": {
                "path": "payload.status",
                "passValues": ["OK"],
                "failValues": ["NOK"],
            },
            "measurements": {
                "itemsPath": "payload.parameters[*]",
                "namePath": "name",
                "valuePath": "value",
                "unitPath": "unit",
            },
            "dataSpecMap": {name: spec for name, spec, _, _, _ in _WASH_MEASUREMENTS},
        },
    }


def _factory(
    steps: list[dict[str, Any]],
    stations: list[dict[str, Any]],
    specs: list[dict[str, Any]],
    units: list[dict[str, Any]],
) -> dict[str, Any]:
    groups = sorted({station["group"] for station in stations})
    return {
        "lines": [{"code": "BENCH-L1", "name": "benchmark line"}],
        "stationGroups": [{"code": group, "line": "BENCH-L1"} for group in groups],
        "stations": stations,
        "dataSpecs": specs,
        "routes": [
            {
                "code": ROUTE_CODE,
                "sourceSystem": "BENCH",
                "sourceKey": "BENCH:1",
                "versions": [
                    {
                        "versionNo": 1,
                        "status": "READY",
                        "compiledAt": "2026-12-01T00:00:00Z",
                        "steps": steps,
                    }
                ],
            }
        ],
        "runs": [
            {
                "runNo": RUN_NO,
                "woNo": "WO-BENCH-1",
                "route": ROUTE_CODE,
                "versionNo": 1,
                "status": "AUTHORIZED",
            }
        ],
        "units": units,
    }


def _ict_stations() -> list[dict[str, Any]]:
    return [
        {"code": code, "line": "BENCH-L1", "group": "ICT", "stationType": "TEST"}
        for code in _TEST_STATIONS
    ]


def _ict_specs() -> list[dict[str, Any]]:
    return [
        _number_spec(spec, unit, low, high, "EACH_UNIT", index < 5)
        for index, (_, spec, unit, low, high) in enumerate(TEST_MEASUREMENTS)
    ]


def ict_factory(units: int, latency_units: int) -> dict[str, Any]:
    """Return the factory of the `test` and `latency` scenarios.

    One AUTHORIZED run on a route with one TEST step that binds ten NUMBER
    data specs with limits. The units of the throughput phase and of the
    latency phase have different serial prefixes.
    """
    unit_entries = _unit_ranges(THROUGHPUT_PREFIX, units, 10)
    unit_entries += _unit_ranges(LATENCY_PREFIX, latency_units, 10)
    return _factory([_ict_step(10)], _ict_stations(), _ict_specs(), unit_entries)


def mixed_factory(units: int) -> dict[str, Any]:
    """Return the factory of the `mixed` scenario: 10 AUTO, 20 BATCH, 30 TEST."""
    stations = [
        {"code": code, "line": "BENCH-L1", "group": "SPI", "stationType": "AUTO"}
        for code in _AUTO_STATIONS
    ]
    stations.append(
        {"code": _WASHER, "line": "BENCH-L1", "group": "WASH", "stationType": "BATCH"}
    )
    stations += _ict_stations()
    specs = [
        _number_spec(spec, unit, low, high, "EACH_UNIT", True)
        for _, spec, unit, low, high in _AUTO_MEASUREMENTS
    ]
    specs += [
        _number_spec(spec, unit, low, high, "EACH_CARRIER", True)
        for _, spec, unit, low, high in _WASH_MEASUREMENTS
    ]
    specs += _ict_specs()
    steps = [_auto_step(10), _batch_step(20), _ict_step(30)]
    return _factory(steps, stations, specs, _unit_ranges(THROUGHPUT_PREFIX, units, 10))


def _value(index: int, salt: int, low: float, high: float) -> float:
    """Return a deterministic value inside [low, high] for measurement `salt`."""
    fraction = ((index * 7919 + salt * 104729) % 1000) / 1000.0
    return round(low + (high - low) * fraction, 4)


def ict_envelope(prefix: str, number: int, moment: datetime) -> dict[str, Any]:
    """Return the TEST envelope of unit `number`: ten measurements, about 1.1 KB."""
    sn = serial_number(prefix, number)
    station = _TEST_STATIONS[number % len(_TEST_STATIONS)]
    finished = format_time(moment)
    results = [
        {
            "name": name,
            "value": _value(number, salt, low, high),
            "unit": unit,
            "verdict": "PASS",
            "low": low,
            "high": high,
        }
        for salt, (name, _, unit, low, high) in enumerate(TEST_MEASUREMENTS)
    ]
    return {
        "dedupeKey": f"{station}:{sn}:1",
        "sourceSystem": station,
        "eventType": "TEST",
        "occurredAt": finished,
        "sn": sn,
        "payload": {
            "station": station,
            "serial": sn,
            "outcome": "PASS",
            "testId": f"{station}-{number:010d}",
            "program": "ICT-MB100-r7",
            "startedAt": format_time(moment - timedelta(seconds=12)),
            "finishedAt": finished,
            "results": results,
        },
    }


def auto_envelope(number: int, moment: datetime) -> dict[str, Any]:
    """Return the AUTO envelope of unit `number` at solder paste inspection."""
    sn = serial_number(THROUGHPUT_PREFIX, number)
    machine = _AUTO_STATIONS[number % len(_AUTO_STATIONS)]
    inspected = format_time(moment)
    return {
        "dedupeKey": f"{machine}:{sn}:1",
        "sourceSystem": machine,
        "eventType": "AUTO",
        "occurredAt": inspected,
        "sn": sn,
        "payload": {
            "machine": machine,
            "program": "MB-100_TOP_r3",
            "inspectedAt": inspected,
            "board": {"barcode": sn, "judgement": "GOOD", "padCount": 1184},
            "stats": [
                {"name": name, "value": _value(number, salt, low, high), "unit": unit}
                for salt, (name, _, unit, low, high) in enumerate(_AUTO_MEASUREMENTS)
            ],
        },
    }


def carrier_code(cycle: int) -> str:
    return f"BASKET-{cycle % CARRIER_COUNT:03d}"


def batch_envelope(cycle: int, units: int, moment: datetime) -> dict[str, Any]:
    """Return the BATCH envelope of wash cycle `cycle` (0-based) of `units` units."""
    first = cycle * UNITS_PER_CARRIER + 1
    last = min(units, first + UNITS_PER_CARRIER - 1)
    boards = [serial_number(THROUGHPUT_PREFIX, n) for n in range(first, last + 1)]
    basket = carrier_code(cycle)
    end = format_time(moment)
    return {
        "dedupeKey": f"{_WASHER}:cycle:{cycle:08d}",
        "sourceSystem": _WASHER,
        "eventType": "BATCH",
        "occurredAt": end,
        "snList": boards,
        "payload": {
            "washer": _WASHER,
            "basket": basket,
            "program": "WASH-STD-55C",
            "cycleStart": format_time(moment - timedelta(minutes=10)),
            "cycleEnd": end,
            "boards": boards,
            "status": "OK",
            "parameters": [
                {"name": name, "value": _value(cycle, salt, low, high), "unit": unit}
                for salt, (name, _, unit, low, high) in enumerate(_WASH_MEASUREMENTS)
            ],
        },
    }


def carrier_cycles(units: int) -> int:
    return (units + UNITS_PER_CARRIER - 1) // UNITS_PER_CARRIER


def invalid_variant(envelope: dict[str, Any]) -> dict[str, Any]:
    """Return a copy with a new dedupe key and a result that is neither pass nor fail.

    The worker rejects it with INGEST_PAYLOAD_INVALID, which is permanent, so
    it goes to the dead-letter topic and changes no unit.
    """
    payload = dict(envelope["payload"])
    event_type = envelope["eventType"]
    if event_type == "AUTO":
        payload["board"] = {**payload["board"], "judgement": "ERROR"}
    elif event_type == "BATCH":
        payload["status"] = "ERROR"
    else:
        payload["outcome"] = "ERROR"
    return {**envelope, "dedupeKey": envelope["dedupeKey"] + ":bad", "payload": payload}


@dataclass(frozen=True, slots=True)
class StationRecord:
    """One record to publish: its key and envelope, and whether the worker stores it."""

    key: str
    envelope: dict[str, Any]
    stored: bool


def ict_events(
    prefix: str, count: int, start: datetime = _BASE_TIME
) -> Iterator[dict[str, Any]]:
    """Yield the TEST envelopes of units 1..count, 10 ms apart."""
    for number in range(1, count + 1):
        yield ict_envelope(prefix, number, start + timedelta(milliseconds=10 * number))


def _stage_originals(stage: str, units: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (record key, envelope) of each event of a stage, in occurrence order.

    Stage times are hours apart so that each stage occurs after the one before.
    """
    if stage == "AUTO":
        for number in range(1, units + 1):
            moment = _BASE_TIME + timedelta(milliseconds=10 * number)
            envelope = auto_envelope(number, moment)
            yield envelope["sn"], envelope
    elif stage == "BATCH":
        start = _BASE_TIME + timedelta(hours=6)
        for cycle in range(carrier_cycles(units)):
            envelope = batch_envelope(cycle, units, start + timedelta(seconds=cycle))
            yield envelope["payload"]["basket"], envelope
    elif stage == "TEST":
        start = _BASE_TIME + timedelta(hours=12)
        for envelope in ict_events(THROUGHPUT_PREFIX, units, start):
            yield envelope["sn"], envelope
    else:
        raise ValueError(f"unknown stage {stage!r}; expected AUTO, BATCH or TEST")


def stage_events(stage: str, units: int) -> int:
    """Return the number of distinct events of a stage of the `mixed` scenario."""
    return carrier_cycles(units) if stage == "BATCH" else units


def stage_records(stage: str, units: int) -> int:
    """Return the number of records that `mixed_stage` yields."""
    events = stage_events(stage, units)
    return events + events // INVALID_EVERY + events // DUPLICATE_EVERY


def mixed_stage(stage: str, units: int) -> Iterator[StationRecord]:
    """Yield the records of one stage of the `mixed` scenario in publish order.

    Every DUPLICATE_EVERY-th event is sent a second time, unchanged, 1 to 200
    records later. Every INVALID_EVERY-th event gets an extra invalid variant
    right after it. The extra records wait in a heap keyed by the position of
    the original they follow, so memory stays small at any stage size.
    """
    pending: list[tuple[float, int, StationRecord]] = []
    sequence = itertools.count()
    for index, (key, envelope) in enumerate(_stage_originals(stage, units)):
        while pending and pending[0][0] < index:
            yield heapq.heappop(pending)[2]
        yield StationRecord(key, envelope, True)
        if index % INVALID_EVERY == INVALID_EVERY - 1:
            bad = StationRecord(key, invalid_variant(envelope), False)
            heapq.heappush(pending, (index + 0.5, next(sequence), bad))
        if index % DUPLICATE_EVERY == DUPLICATE_EVERY - 1:
            later = 1 + (index * 7919) % 200
            copy = StationRecord(key, envelope, False)
            heapq.heappush(pending, (index + later, next(sequence), copy))
    while pending:
        yield heapq.heappop(pending)[2]
