"""Execution semantics end to end over the real broker and database.

Covers the sample line's expected end state, the trace document, BATCH events
with the PARTIAL policy, carrier loads, and concurrent writers that move the
same unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import ConsumerRecord

from ingest_worker.cli.main import trace_command
from ingest_worker.consumer import batch as batch_module
from ingest_worker.consumer.batch import BatchProcessor, RecordOutcome
from ingest_worker.errors import InfrastructureError
from ingest_worker.settings import Settings
from ingest_worker.storage.database import connect, create_pool
from ingest_worker.storage.floor import FloorLoader
from ingest_worker.trace.query import trace_unit
from tests.integration.support import (
    EVENT_FILES,
    SAMPLES,
    fetch_all,
    headers_of,
    publish_file,
    publish_raw,
    read_topic,
    running_worker,
    seed_sample,
)

pytestmark = pytest.mark.integration

EVENTS = SAMPLES / "events"
SERIALS = [f"SN-2026-{number:05d}" for number in range(1001, 1011)]
RUN_NO = "RUN-2026-0001"
UTC_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

FCT_SPECS = {"VCC_3V3", "VCC_5V0", "IDLE_CURRENT_A", "FIRMWARE_VERSION", "LED_OK"}
SPI_SPECS = {"PASTE_VOLUME_PCT", "PASTE_HEIGHT_UM"}
WASH_SPECS = {"WASH_TEMP_C", "WASH_TIME_S"}

TRACE_KEYS = {
    "unit": {"sn", "status", "runNo", "currentStepNo"},
    "run": {"runNo", "status", "startedAt"},
    "route": {"code", "sourceSystem", "sourceKey"},
    "routeVersion": {"id", "versionNo", "compiledAt"},
}
TRACE_ITEM_KEYS = {
    "steps": {
        "stepNo",
        "operation",
        "stationType",
        "stationGroup",
        "allowedStations",
        "requiresFAI",
        "requiresAuthorization",
        "dataSpecs",
    },
    "tracks": {"id", "stepNo", "stationCode", "source", "inAt", "outAt", "result"},
    "dataValues": {"trackId", "stepNo", "name", "value", "unit", "judge"},
    "ingestEvents": {
        "id",
        "eventType",
        "sourceSystem",
        "dedupeKey",
        "occurredAt",
        "receivedAt",
        "stationCode",
        "lineCode",
        "carrierCode",
        "sn",
        "snList",
        "result",
        "testResultId",
        "measurementSummary",
        "links",
    },
    "carrierTracks": {
        "id",
        "carrierCode",
        "stepNo",
        "stationCode",
        "inAt",
        "outAt",
        "result",
    },
    "carrierLoads": {"id", "carrierCode", "loadedAt", "unloadedAt"},
    "carrierDataValues": {
        "carrierTrackId",
        "stepNo",
        "name",
        "value",
        "unit",
        "judge",
    },
}


def sample_factory() -> dict[str, Any]:
    """Return the sample factory as a document that a test may change."""
    loaded = yaml.safe_load((SAMPLES / "factory.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def sample_envelopes(name: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (EVENTS / name).read_bytes().splitlines()]


def factory_steps(factory: dict[str, Any]) -> list[dict[str, Any]]:
    steps = factory["routes"][0]["versions"][0]["steps"]
    assert isinstance(steps, list)
    return steps


def wash_step(factory: dict[str, Any]) -> dict[str, Any]:
    return next(step for step in factory_steps(factory) if step["stepNo"] == 30)


def unit_entries(
    step_no: int, changes: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Return unit entries of every sample serial at one step, some changed."""
    entries = []
    for sn in SERIALS:
        entry = {"sn": sn, "run": RUN_NO, "status": "QUEUED", "currentStepNo": step_no}
        entry.update((changes or {}).get(sn, {}))
        entries.append(entry)
    return entries


def wash_envelope(
    dedupe_key: str, basket: str, serials: list[str], occurred_at: str
) -> dict[str, Any]:
    """Return a washer cycle in the form of the sample washer."""
    envelope = copy.deepcopy(sample_envelopes("30-wash.jsonl")[0])
    envelope["dedupeKey"] = dedupe_key
    envelope["occurredAt"] = occurred_at
    envelope["snList"] = serials
    payload = envelope["payload"]
    payload.update(basket=basket, boards=serials, cycleEnd=occurred_at)
    return envelope


def consumer_record(
    settings: Settings, envelope: dict[str, Any], offset: int
) -> ConsumerRecord[bytes, bytes]:
    """Return the record that a worker fetches for the envelope."""
    value = orjson.dumps(envelope)
    topic = settings.topics.topic_for(envelope["eventType"])
    return ConsumerRecord(topic, 0, offset, 0, 0, None, value, None, 0, len(value), [])


_offsets = itertools.count()


async def process(
    processor: BatchProcessor, settings: Settings, envelopes: list[dict[str, Any]]
) -> list[RecordOutcome]:
    records = [
        consumer_record(settings, envelope, next(_offsets)) for envelope in envelopes
    ]
    return await processor.process(records)


async def unit_states(database_url: str) -> dict[str, tuple[str, int, int]]:
    rows = await fetch_all(
        database_url, "SELECT sn, status, current_step_no, version FROM unit"
    )
    return {
        row["sn"]: (row["status"], row["current_step_no"], row["version"])
        for row in rows
    }


async def row_counts(database_url: str) -> dict[str, int]:
    tables = [
        "ingest_event",
        "track",
        "data_value",
        "carrier",
        "carrier_track",
        "carrier_load",
    ]
    counts = {}
    for table in tables:
        rows = await fetch_all(database_url, f"SELECT count(*) AS n FROM {table}")
        counts[table] = int(rows[0]["n"])
    return counts


async def data_value_names(database_url: str) -> dict[tuple[str, int], set[str]]:
    """Return the unit data value names by serial and step."""
    rows = await fetch_all(
        database_url,
        """
        SELECT u.sn, d.step_no, d.name
        FROM data_value d JOIN track t ON t.id = d.track_id
        JOIN unit u ON u.id = t.unit_id
        """,
    )
    names: dict[tuple[str, int], set[str]] = {}
    for row in rows:
        names.setdefault((row["sn"], row["step_no"]), set()).add(row["name"])
    return names


async def trace_of(database_url: str, sn: str, mode: str = "run") -> dict[str, Any]:
    connection = await connect(database_url)
    try:
        return await trace_unit(connection, sn, mode)  # type: ignore[arg-type]
    finally:
        await connection.close()


async def open_loads(database_url: str) -> dict[str, set[str]]:
    """Return the serials loaded on each carrier now."""
    rows = await fetch_all(
        database_url,
        """
        SELECT c.code, u.sn FROM carrier_load l
        JOIN carrier c ON c.id = l.carrier_id JOIN unit u ON u.id = l.unit_id
        WHERE l.unloaded_at IS NULL
        """,
    )
    loads: dict[str, set[str]] = {}
    for row in rows:
        loads.setdefault(row["code"], set()).add(row["sn"])
    return loads


# The sample line of the samples README.


async def test_sample_line_end_state(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    stage_steps = {"10-spi.jsonl": 20, "20-aoi.jsonl": 30, "30-wash.jsonl": 40}

    async with running_worker(settings) as running:
        for path in EVENT_FILES:
            await publish_file(settings, path)
            await running.settle()
            if path.name not in stage_steps:
                continue
            states = await unit_states(database_url)
            for sn in SERIALS:
                assert states[sn][:2] == ("QUEUED", stage_steps[path.name]), sn
        first_pass = dict(running.worker.counts)
        end_state = await unit_states(database_url)
        end_counts = await row_counts(database_url)

        for path in EVENT_FILES:
            await publish_file(settings, path)
            await running.settle()
        second_pass = dict(running.worker.counts)

    expected = {sn: ("QUEUED", 40) for sn in SERIALS}
    expected.update({sn: ("DONE", 40) for sn in SERIALS[:3]})
    expected["SN-2026-01007"] = ("OUT_FAILED", 40)
    assert {sn: state[:2] for sn, state in end_state.items()} == expected
    # One move per accepted event: SPI, AOI, wash and, where stored, FCT.
    for sn in SERIALS:
        moves = 4 if expected[sn][0] != "QUEUED" else 3
        assert end_state[sn][2] == moves, sn

    run = await fetch_all(database_url, "SELECT status, started_at FROM run")
    assert run[0]["status"] == "IN_PROGRESS"
    assert run[0]["started_at"].isoformat() == "2026-12-04T06:00:00+00:00"

    names = await data_value_names(database_url)
    for sn in SERIALS:
        assert names[(sn, 10)] == SPI_SPECS, sn
        tested = sn in ("SN-2026-01001", "SN-2026-01002", "SN-2026-01003")
        if tested or sn == "SN-2026-01007":
            assert names[(sn, 40)] == FCT_SPECS, sn
        else:
            assert (sn, 40) not in names, sn
    failed = await fetch_all(
        database_url,
        """
        SELECT d.value, d.judge FROM data_value d JOIN track t ON t.id = d.track_id
        JOIN unit u ON u.id = t.unit_id
        WHERE u.sn = 'SN-2026-01007' AND d.name = 'IDLE_CURRENT_A'
        """,
    )
    assert [(row["value"], row["judge"]) for row in failed] == [(0.31, "FAIL")]

    for sn in SERIALS:
        trace = await trace_of(database_url, sn)
        carrier_tracks = trace["carrierTracks"]
        assert [track["stepNo"] for track in carrier_tracks] == [30], sn
        basket = "BASKET-07" if sn <= "SN-2026-01005" else "BASKET-08"
        assert carrier_tracks[0]["carrierCode"] == basket
        values = trace["carrierDataValues"]
        assert {value["name"] for value in values} == WASH_SPECS, sn
        assert len(values) == 2, sn

    dead = await read_topic(settings, settings.topics.dlq)
    assert len(dead) == 2, "the ERROR record, once per publication"
    for record in dead:
        assert record.key == b"SN-2026-01009"
        assert headers_of(record)["ingest.error.code"] == "INGEST_PAYLOAD_INVALID"
        assert "'ERROR'" in headers_of(record)["ingest.error.message"]

    assert first_pass == {"stored": 26, "rejected": 1}
    assert second_pass == {"stored": 26, "rejected": 2, "duplicate": 26}
    assert await unit_states(database_url) == end_state
    assert await row_counts(database_url) == end_counts
    assert end_counts["carrier_track"] == 2


# The trace document.


def assert_utc_millis(value: Any, where: str) -> None:
    assert isinstance(value, str), where
    assert UTC_MILLIS.match(value), f"{where}: {value}"


def assert_trace_shape(data: dict[str, Any]) -> None:
    """Check the keys, id types and time formats of a trace document."""
    assert set(data) == set(TRACE_KEYS) | set(TRACE_ITEM_KEYS)
    for name, keys in TRACE_KEYS.items():
        assert set(data[name]) == keys, name
    for name, keys in TRACE_ITEM_KEYS.items():
        assert isinstance(data[name], list), name
        for item in data[name]:
            assert set(item) == keys, name

    assert isinstance(data["routeVersion"]["id"], str)
    assert_utc_millis(data["routeVersion"]["compiledAt"], "compiledAt")
    assert_utc_millis(data["run"]["startedAt"], "startedAt")
    id_fields = {
        "tracks": ["id"],
        "dataValues": ["trackId"],
        "ingestEvents": ["id"],
        "carrierTracks": ["id"],
        "carrierLoads": ["id"],
        "carrierDataValues": ["carrierTrackId"],
    }
    for name, fields in id_fields.items():
        for item in data[name]:
            for field in fields:
                assert isinstance(item[field], str), f"{name}.{field}"
    time_fields = {
        "tracks": ["inAt", "outAt"],
        "ingestEvents": ["occurredAt", "receivedAt"],
        "carrierTracks": ["inAt", "outAt"],
        "carrierLoads": ["loadedAt"],
    }
    for name, fields in time_fields.items():
        for item in data[name]:
            for field in fields:
                assert_utc_millis(item[field], f"{name}.{field}")
    for load in data["carrierLoads"]:
        if load["unloadedAt"] is not None:
            assert_utc_millis(load["unloadedAt"], "carrierLoads.unloadedAt")
    for event in data["ingestEvents"]:
        for key, value in event["links"].items():
            if key.endswith("Id"):
                assert isinstance(value, str), f"links.{key}"


def assert_time_order(data: dict[str, Any]) -> None:
    """Check that every list of the trace is in time order."""
    for name, field in [
        ("tracks", "inAt"),
        ("ingestEvents", "occurredAt"),
        ("carrierTracks", "inAt"),
        ("carrierLoads", "loadedAt"),
    ]:
        times = [item[field] for item in data[name]]
        assert times == sorted(times), name
    track_times = {track["id"]: track["inAt"] for track in data["tracks"]}
    value_times = [track_times[value["trackId"]] for value in data["dataValues"]]
    assert value_times == sorted(value_times)


async def seed_with_newer_versions(database_url: str) -> None:
    """Seed the sample factory plus a READY version 2 and a DRAFT version 3."""
    factory = sample_factory()
    versions = factory["routes"][0]["versions"]
    ready = copy.deepcopy(versions[0])
    ready.update(versionNo=2, status="READY", compiledAt="2026-12-05T08:00:00Z")
    ready["steps"].append({"stepNo": 50, "operation": "PACKING", "stationType": "AUTO"})
    draft = copy.deepcopy(ready)
    draft.update(versionNo=3, status="DRAFT", compiledAt="2026-12-06T08:00:00Z")
    draft["steps"].append(
        {"stepNo": 60, "operation": "SHIPPING", "stationType": "AUTO"}
    )
    versions.extend([ready, draft])
    await seed_sample(database_url, factory)


async def test_trace_document(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = settings.require_database_url()
    await seed_with_newer_versions(database_url)
    # The AOI station's clock runs early for SN-2026-01004: its AOI result is
    # stamped before its SPI result, and the trace must list it first.
    aoi = sample_envelopes("20-aoi.jsonl")
    aoi[3]["occurredAt"] = "2026-12-04T06:01:00.000Z"
    pool = await create_pool(database_url)
    try:
        processor = BatchProcessor(pool, settings)
        for envelopes in [
            sample_envelopes("10-spi.jsonl"),
            aoi,
            sample_envelopes("30-wash.jsonl"),
        ]:
            outcomes = await process(processor, settings, envelopes)
            assert {outcome.verdict for outcome in outcomes} == {"stored"}
        outcomes = await process(
            processor, settings, sample_envelopes("40-fct-openhtf.jsonl")
        )
        verdicts = [outcome.verdict for outcome in outcomes]
        assert verdicts == ["stored", "stored", "stored", "stored", "rejected"]
    finally:
        await pool.close()

    capsys.readouterr()  # drop the log lines written while processing
    assert await trace_command(settings, "SN-2026-01001", "run") == 0
    document = orjson.loads(capsys.readouterr().out)
    assert document["ok"] is True
    data = document["data"]
    assert_trace_shape(data)
    assert_time_order(data)

    assert data["unit"] == {
        "sn": "SN-2026-01001",
        "status": "DONE",
        "runNo": RUN_NO,
        "currentStepNo": 40,
    }
    assert data["run"] == {
        "runNo": RUN_NO,
        "status": "IN_PROGRESS",
        "startedAt": "2026-12-04T06:00:00.000Z",
    }
    assert data["route"] == {
        "code": "ROUTE-MAINBOARD",
        "sourceSystem": "ERP",
        "sourceKey": "ERP:MB-100:0001",
    }
    assert data["routeVersion"]["versionNo"] == 1
    assert data["routeVersion"]["compiledAt"] == "2026-11-30T08:00:00.000Z"
    assert [step["stepNo"] for step in data["steps"]] == [10, 20, 30, 40]
    assert data["steps"][0] == {
        "stepNo": 10,
        "operation": "SOLDER_PASTE_INSPECTION",
        "stationType": "AUTO",
        "stationGroup": "SPI",
        "allowedStations": [],
        "requiresFAI": False,
        "requiresAuthorization": True,
        "dataSpecs": ["PASTE_VOLUME_PCT", "PASTE_HEIGHT_UM"],
    }

    tracks = data["tracks"]
    assert [(t["stepNo"], t["source"], t["result"]) for t in tracks] == [
        (10, "AUTO", "PASS"),
        (20, "AUTO", "PASS"),
        (30, "BATCH", "PASS"),
        (40, "TEST", "PASS"),
    ]
    assert [t["stationCode"] for t in tracks] == [
        "SPI-A1",
        "AOI-A1",
        "WASH-A1",
        "FCT-01",
    ]
    assert tracks[0]["inAt"] == tracks[0]["outAt"] == "2026-12-04T06:00:00.000Z"
    assert tracks[3]["inAt"] == "2026-12-04T15:15:48.494Z"

    values = {value["name"]: value for value in data["dataValues"]}
    assert set(values) == SPI_SPECS | FCT_SPECS
    assert values["PASTE_VOLUME_PCT"]["value"] == 99.5
    assert values["PASTE_VOLUME_PCT"]["unit"] == "%"
    # SPI reports no judge, so the data spec's limits (70 to 130) judge it.
    assert values["PASTE_VOLUME_PCT"]["judge"] == "PASS"
    assert values["PASTE_VOLUME_PCT"]["trackId"] == tracks[0]["id"]
    assert values["FIRMWARE_VERSION"]["value"] == "1.4.2"
    assert values["LED_OK"]["value"] is True
    assert values["VCC_3V3"]["trackId"] == tracks[3]["id"]

    events = data["ingestEvents"]
    assert [event["eventType"] for event in events] == ["AUTO", "AUTO", "BATCH", "TEST"]
    spi, aoi_event, wash, fct = events
    assert spi["links"] == {"trackId": tracks[0]["id"], "dataValueCount": 2}
    assert spi["measurementSummary"] == {
        "count": 3,
        "stored": 2,
        "pass": 2,
        "fail": 0,
        "unmatched": ["offset_x_um"],
    }
    assert spi["lineCode"] == "SMT-A"
    assert aoi_event["links"] == {"trackId": tracks[1]["id"], "dataValueCount": 0}
    assert wash["carrierCode"] == "BASKET-07"
    assert wash["snList"] == SERIALS[:5]
    assert wash["sn"] is None
    assert wash["links"]["carrierTrackId"] == data["carrierTracks"][0]["id"]
    assert wash["links"]["unitTracks"]["SN-2026-01001"] == tracks[2]["id"]
    assert len(wash["links"]["unitTracks"]) == 5
    assert wash["links"]["carrierDataValueCount"] == 2
    assert isinstance(wash["links"]["carrierId"], str)
    assert wash["measurementSummary"]["unmatched"] == ["conductivity"]
    assert fct["testResultId"] == "SN-2026-01001.1796397348491"
    assert fct["sourceSystem"] == "FCT-01"
    assert fct["measurementSummary"]["stored"] == 5

    assert data["carrierTracks"] == [
        {
            "id": wash["links"]["carrierTrackId"],
            "carrierCode": "BASKET-07",
            "stepNo": 30,
            "stationCode": "WASH-A1",
            "inAt": "2026-12-04T06:40:00.000Z",
            "outAt": "2026-12-04T06:40:00.000Z",
            "result": "PASS",
        }
    ]
    assert [
        (load["carrierCode"], load["unloadedAt"]) for load in data["carrierLoads"]
    ] == [("BASKET-07", None)]
    carrier_values = {value["name"]: value for value in data["carrierDataValues"]}
    assert carrier_values["WASH_TEMP_C"]["value"] == 55.9
    assert carrier_values["WASH_TEMP_C"]["judge"] == "PASS"
    assert carrier_values["WASH_TIME_S"]["value"] == 600

    early = await trace_of(database_url, "SN-2026-01004")
    assert_time_order(early)
    assert [track["stepNo"] for track in early["tracks"]] == [20, 10, 30]
    assert [event["eventType"] for event in early["ingestEvents"]] == [
        "AUTO",
        "AUTO",
        "BATCH",
    ]
    assert early["ingestEvents"][0]["sourceSystem"] == "AOI-A2"

    latest = await trace_of(database_url, "SN-2026-01001", "latest")
    assert_trace_shape(latest)
    assert latest["routeVersion"]["versionNo"] == 2
    assert latest["routeVersion"]["compiledAt"] == "2026-12-05T08:00:00.000Z"
    assert [step["stepNo"] for step in latest["steps"]] == [10, 20, 30, 40, 50]
    assert latest["tracks"] == data["tracks"]

    assert await trace_command(settings, "SN-UNKNOWN", "run") == 1
    missing = orjson.loads(capsys.readouterr().out)
    assert set(missing) == {"ok", "error"}
    assert missing["ok"] is False
    assert set(missing["error"]) == {"code", "message"}
    assert missing["error"]["code"] == "UNIT_NOT_FOUND"
    assert "SN-UNKNOWN" in missing["error"]["message"]


# BATCH events with the PARTIAL policy.


async def test_partial_batch_through_worker(settings: Settings) -> None:
    database_url = settings.require_database_url()
    factory = sample_factory()
    wash_step(factory)["ingestMapping"]["batchPolicy"] = "PARTIAL"
    factory["units"] = unit_entries(
        30,
        {
            "SN-2026-01009": {"status": "ON_HOLD"},
            "SN-2026-01010": {"currentStepNo": 20},
        },
    )
    await seed_sample(database_url, factory)
    # Nothing passes: SN-2026-01009 is on hold and SN-2026-01003 has left the
    # wash step with the first basket.
    none_pass = wash_envelope(
        "WASH-A1-cycle-814",
        "BASKET-09",
        ["SN-2026-01009", "SN-2026-01003"],
        "2026-12-04T07:30:00.000Z",
    )

    async with running_worker(settings) as running:
        await publish_file(settings, EVENTS / "30-wash.jsonl")
        await running.settle()
        await publish_raw(
            settings, settings.topics.batch, [orjson.dumps(none_pass)], key=b"BASKET-09"
        )
        await running.settle()
        counts = dict(running.worker.counts)

    assert counts == {"stored": 2, "rejected": 1}
    states = await unit_states(database_url)
    for sn in SERIALS[:8]:
        assert states[sn] == ("QUEUED", 40, 1), sn
    assert states["SN-2026-01009"] == ("ON_HOLD", 30, 0)
    assert states["SN-2026-01010"] == ("QUEUED", 20, 0)

    rows = await fetch_all(
        database_url,
        "SELECT id, links, normalized FROM ingest_event WHERE carrier_code = $1",
        "BASKET-08",
    )
    assert len(rows) == 1
    links = rows[0]["links"]
    rejected = {sn: entry["code"] for sn, entry in links["rejectedUnits"].items()}
    assert rejected == {
        "SN-2026-01009": "UNIT_ON_HOLD",
        "SN-2026-01010": "STEP_NOT_REACHED",
    }
    for entry in links["rejectedUnits"].values():
        assert entry["message"]
    assert sorted(links["unitTracks"]) == SERIALS[5:8]
    assert rows[0]["normalized"]["unitStatus"] == {sn: "QUEUED" for sn in SERIALS[5:8]}
    tracks = await fetch_all(
        database_url,
        "SELECT u.sn FROM track t JOIN unit u ON u.id = t.unit_id "
        "WHERE t.ingest_event_id = $1",
        rows[0]["id"],
    )
    assert sorted(row["sn"] for row in tracks) == SERIALS[5:8]
    loads = await open_loads(database_url)
    assert loads == {"BASKET-07": set(SERIALS[:5]), "BASKET-08": set(SERIALS[5:8])}

    dead = await read_topic(settings, settings.topics.dlq)
    assert len(dead) == 1
    assert dead[0].value == orjson.dumps(none_pass)
    headers = headers_of(dead[0])
    assert headers["ingest.error.code"] == "UNIT_ON_HOLD"
    assert orjson.loads(headers["ingest.error.detail"]) == {
        "sn": "SN-2026-01009",
        "status": "ON_HOLD",
    }
    assert await row_counts(database_url) == {
        "ingest_event": 2,
        "track": 8,
        "data_value": 4,
        "carrier": 2,
        "carrier_track": 2,
        "carrier_load": 8,
    }


# Carrier loads.


async def test_carrier_loads_follow_events(settings: Settings) -> None:
    database_url = settings.require_database_url()
    factory = sample_factory()
    # A drying step after washing; it uses the washer's mapping and takes any
    # BATCH station.
    drying = copy.deepcopy(wash_step(factory))
    drying.update(stepNo=35, operation="DRY", dataSpecs=[])
    del drying["stationGroup"]
    factory_steps(factory).insert(3, drying)
    factory["units"] = unit_entries(30)
    await seed_sample(database_url, factory)

    first_five, first_three, next_two = SERIALS[:5], SERIALS[:3], SERIALS[5:7]
    # The drying cycle names its run and lists its boards only in the payload,
    # so only the mapping tells which units it covers and where they are.
    drying_cycle = wash_envelope(
        "cycle-2", "BASKET-07", first_three, "2026-12-04T07:10:00Z"
    )
    del drying_cycle["snList"]
    drying_cycle["runNo"] = RUN_NO
    stages = [
        # (envelope, open loads afterwards)
        (
            wash_envelope("cycle-1", "BASKET-07", first_five, "2026-12-04T07:00:00Z"),
            {"BASKET-07": set(first_five)},
        ),
        (drying_cycle, {"BASKET-07": set(first_three)}),
        (
            wash_envelope("cycle-3", "BASKET-07", next_two, "2026-12-04T07:20:00Z"),
            {"BASKET-07": set(next_two)},
        ),
        (
            wash_envelope("cycle-4", "BASKET-09", next_two, "2026-12-04T07:30:00Z"),
            {"BASKET-09": set(next_two)},
        ),
    ]
    async with running_worker(settings) as running:
        for number, (envelope, expected) in enumerate(stages, start=1):
            await publish_raw(
                settings,
                settings.topics.batch,
                [orjson.dumps(envelope)],
                key=envelope["payload"]["basket"].encode(),
            )
            await running.settle()
            assert await open_loads(database_url) == expected, f"after cycle {number}"
        counts = dict(running.worker.counts)

    assert counts == {"stored": 4}
    rows = await fetch_all(
        database_url,
        """
        SELECT c.code, u.sn, l.loaded_at, l.unloaded_at FROM carrier_load l
        JOIN carrier c ON c.id = l.carrier_id JOIN unit u ON u.id = l.unit_id
        ORDER BY l.id
        """,
    )
    history = {
        (row["code"], row["sn"]): (
            row["loaded_at"].strftime("%H:%M"),
            row["unloaded_at"].strftime("%H:%M") if row["unloaded_at"] else None,
        )
        for row in rows
    }
    # A unit listed again keeps its open load, so no load row is written twice.
    assert len(rows) == len(history) == 9
    for sn in first_three:
        assert history[("BASKET-07", sn)] == ("07:00", "07:20")
    for sn in SERIALS[3:5]:
        assert history[("BASKET-07", sn)] == ("07:00", "07:10")
    for sn in next_two:
        assert history[("BASKET-07", sn)] == ("07:20", "07:30")
        assert history[("BASKET-09", sn)] == ("07:30", None)

    states = await unit_states(database_url)
    for sn in first_three:
        assert states[sn] == ("QUEUED", 40, 2)
    for sn in SERIALS[3:5]:
        assert states[sn] == ("QUEUED", 35, 1)
    for sn in next_two:
        assert states[sn] == ("QUEUED", 40, 2)

    trace = await trace_of(database_url, "SN-2026-01004")
    assert [
        (load["carrierCode"], load["loadedAt"], load["unloadedAt"])
        for load in trace["carrierLoads"]
    ] == [("BASKET-07", "2026-12-04T07:00:00.000Z", "2026-12-04T07:10:00.000Z")]
    assert [track["stepNo"] for track in trace["carrierTracks"]] == [30]


# Concurrent writers.


class _MeetingLoader(FloorLoader):
    """Waits after its first load until the other processor has loaded too.

    Both transactions then judge the same unit state before either writes.
    """

    barrier: asyncio.Barrier
    loads = 0

    def __init__(self) -> None:
        super().__init__()
        self._met = False

    async def load(self, connection: Any, work: Any, **options: Any) -> Any:
        floor = await super().load(connection, work, **options)
        type(self).loads += 1
        if not self._met:
            self._met = True
            await asyncio.wait_for(self.barrier.wait(), 10)
        return floor


@pytest.fixture
def meeting_loader(monkeypatch: pytest.MonkeyPatch) -> type[_MeetingLoader]:
    loader = type("MeetingLoader", (_MeetingLoader,), {"barrier": asyncio.Barrier(2)})
    monkeypatch.setattr(batch_module, "FloorLoader", loader)
    return loader


async def test_concurrent_moves_of_one_unit(
    settings: Settings, meeting_loader: type[_MeetingLoader]
) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    spi = sample_envelopes("10-spi.jsonl")
    first = spi[0]
    # The same board inspected again a minute later, under a new dedupe key.
    again = copy.deepcopy(first)
    again["dedupeKey"] = "SPI-A1-reinspection-1"
    again["occurredAt"] = again["payload"]["inspectedAt"] = "2026-12-04T06:01:00.000Z"
    other = spi[1]

    pool_a = await create_pool(database_url)
    pool_b = await create_pool(database_url)
    try:
        outcomes_a, outcomes_b = await asyncio.gather(
            process(BatchProcessor(pool_a, settings), settings, [first]),
            process(BatchProcessor(pool_b, settings), settings, [again, other]),
        )
    finally:
        await pool_a.close()
        await pool_b.close()

    # Both batches judged SN-2026-01001 at step 10. One move won, and the other
    # batch was judged again and found the unit already past step 10.
    assert meeting_loader.loads == 3
    contested = [outcomes_a[0], outcomes_b[0]]
    assert sorted(outcome.verdict for outcome in contested) == ["rejected", "stored"]
    loser = next(outcome for outcome in contested if outcome.verdict == "rejected")
    assert loser.error is not None
    assert loser.error.code == "STEP_MISMATCH"
    assert outcomes_b[1].verdict == "stored"

    states = await unit_states(database_url)
    assert states["SN-2026-01001"] == ("QUEUED", 20, 1)
    assert states["SN-2026-01002"] == ("QUEUED", 20, 1)
    tracks = await fetch_all(
        database_url,
        "SELECT u.sn, t.ingest_event_id FROM track t JOIN unit u ON u.id = t.unit_id",
    )
    assert sorted(row["sn"] for row in tracks) == ["SN-2026-01001", "SN-2026-01002"]
    events = await fetch_all(database_url, "SELECT id FROM ingest_event")
    assert sorted(row["ingest_event_id"] for row in tracks) == sorted(
        row["id"] for row in events
    )
    assert (await row_counts(database_url))["data_value"] == 4


async def test_concurrent_same_event_stored_once(
    settings: Settings, meeting_loader: type[_MeetingLoader]
) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    envelope = sample_envelopes("10-spi.jsonl")[2]

    pool_a = await create_pool(database_url)
    pool_b = await create_pool(database_url)
    try:
        outcomes = await asyncio.gather(
            process(BatchProcessor(pool_a, settings), settings, [envelope]),
            process(BatchProcessor(pool_b, settings), settings, [envelope]),
        )
    finally:
        await pool_a.close()
        await pool_b.close()

    assert meeting_loader.loads == 3
    verdicts = sorted(outcome[0].verdict for outcome in outcomes)
    assert verdicts == ["duplicate", "stored"]
    states = await unit_states(database_url)
    assert states["SN-2026-01003"] == ("QUEUED", 20, 1)
    counts = await row_counts(database_url)
    assert (counts["ingest_event"], counts["track"]) == (1, 1)


async def test_unit_changing_meanwhile_is_conflict(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    settings = settings.model_copy(update={"conflict_attempts": 2})
    loads = 0

    class ChangingLoader(FloorLoader):
        """Lets another writer change SN-2026-01001 after every load."""

        async def load(self, connection: Any, work: Any, **options: Any) -> Any:
            nonlocal loads
            floor = await super().load(connection, work, **options)
            loads += 1
            writer = await connect(database_url)
            try:
                await writer.execute(
                    "UPDATE unit SET version = version + 1 WHERE sn = $1",
                    "SN-2026-01001",
                )
            finally:
                await writer.close()
            return floor

    monkeypatch.setattr(batch_module, "FloorLoader", ChangingLoader)
    spi = sample_envelopes("10-spi.jsonl")
    pool = await create_pool(database_url)
    try:
        outcomes = await process(BatchProcessor(pool, settings), settings, spi[:2])
    finally:
        await pool.close()

    # Two attempts raced the other writer, and a third judging rejected the
    # contested event while it stored the rest.
    assert loads == settings.conflict_attempts + 1
    contested, uncontested = outcomes
    assert contested.verdict == "rejected"
    assert contested.error is not None
    assert contested.error.code == "INGEST_CONFLICT"
    assert contested.error.detail == {"units": ["SN-2026-01001"]}
    assert uncontested.verdict == "stored"

    states = await unit_states(database_url)
    assert states["SN-2026-01001"] == ("QUEUED", 10, loads)
    assert states["SN-2026-01002"] == ("QUEUED", 20, 1)
    tracks = await fetch_all(
        database_url,
        "SELECT u.sn FROM track t JOIN unit u ON u.id = t.unit_id",
    )
    assert [row["sn"] for row in tracks] == ["SN-2026-01002"]
    counts = await row_counts(database_url)
    assert counts["ingest_event"] == 1


class _CountingLoader(FloorLoader):
    """Counts floor loads, one per judging of a batch."""

    loads = 0

    async def load(self, connection: Any, work: Any, **options: Any) -> Any:
        type(self).loads += 1
        return await super().load(connection, work, **options)


@pytest.fixture
def counting_loader(monkeypatch: pytest.MonkeyPatch) -> type[_CountingLoader]:
    loader = type("CountingLoader", (_CountingLoader,), {"loads": 0})
    monkeypatch.setattr(batch_module, "FloorLoader", loader)
    return loader


Between = Callable[[BatchProcessor], Awaitable[list[RecordOutcome]]]


async def write_between(
    settings: Settings,
    ahead: list[dict[str, Any]],
    between: Between,
    later: list[dict[str, Any]] | None = None,
) -> tuple[list[RecordOutcome], list[RecordOutcome]]:
    """Judge `ahead` early, run `between`, then process the records of `ahead`.

    With `later`, records of those envelopes are processed instead.
    """
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    pool = await create_pool(database_url)
    try:
        processor = BatchProcessor(pool, settings)
        early = [
            consumer_record(settings, envelope, next(_offsets)) for envelope in ahead
        ]
        await processor.judge_ahead(early)
        first = await between(processor)
        if later is None:
            second = await processor.process(early)
        else:
            second = await process(processor, settings, later)
    finally:
        await pool.close()
    return first, second


def processing(settings: Settings, envelopes: list[dict[str, Any]]) -> Between:
    """Return a step that processes the envelopes as one batch."""

    async def step(processor: BatchProcessor) -> list[RecordOutcome]:
        return await process(processor, settings, envelopes)

    return step


async def bump_version(settings: Settings, sn: str, step_no: int | None = None) -> None:
    """Change a unit as another worker would, optionally moving it to a step."""
    writer = await connect(settings.require_database_url())
    try:
        await writer.execute(
            "UPDATE unit SET version = version + 1, "
            "current_step_no = coalesce($2, current_step_no) WHERE sn = $1",
            sn,
            step_no,
        )
    finally:
        await writer.close()


async def test_judged_ahead_kept_when_disjoint(
    settings: Settings, counting_loader: type[_CountingLoader]
) -> None:
    spi = sample_envelopes("10-spi.jsonl")
    first, second = await write_between(
        settings, [spi[1]], processing(settings, [spi[0]])
    )

    # The second batch touches another unit, so its early verdict is kept.
    assert counting_loader.loads == 2
    assert [outcome.verdict for outcome in first + second] == ["stored", "stored"]
    assert second[0].document is not None
    database_url = settings.require_database_url()
    states = await unit_states(database_url)
    assert states["SN-2026-01001"] == ("QUEUED", 20, 1)
    assert states["SN-2026-01002"] == ("QUEUED", 20, 1)
    counts = await row_counts(database_url)
    assert (counts["ingest_event"], counts["track"], counts["data_value"]) == (2, 2, 4)
    outbox = await fetch_all(database_url, "SELECT ingest_event_id FROM outbox")
    events = await fetch_all(database_url, "SELECT id FROM ingest_event")
    assert sorted(row["ingest_event_id"] for row in outbox) == sorted(
        row["id"] for row in events
    )


async def test_judged_ahead_redone_after_unit_moved(
    settings: Settings, counting_loader: type[_CountingLoader]
) -> None:
    spi = sample_envelopes("10-spi.jsonl")
    aoi = sample_envelopes("20-aoi.jsonl")
    # Judged early, the inspection of SN-2026-01001 finds it still at 10.
    first, second = await write_between(
        settings, [aoi[0], spi[1]], processing(settings, [spi[0]])
    )

    # The first batch moved the unit that the early verdicts read, so the
    # second batch was judged again and found it at step 20.
    assert counting_loader.loads == 3
    assert first[0].verdict == "stored"
    assert [outcome.verdict for outcome in second] == ["stored", "stored"]
    states = await unit_states(settings.require_database_url())
    assert states["SN-2026-01001"] == ("QUEUED", 30, 2)
    assert states["SN-2026-01002"] == ("QUEUED", 20, 1)


async def test_judged_ahead_redone_after_same_key(
    settings: Settings, counting_loader: type[_CountingLoader]
) -> None:
    spi = sample_envelopes("10-spi.jsonl")
    first, second = await write_between(
        settings, [spi[0]], processing(settings, [spi[0]])
    )

    assert counting_loader.loads == 3
    assert first[0].verdict == "stored"
    assert second[0].verdict == "duplicate"
    counts = await row_counts(settings.require_database_url())
    assert (counts["ingest_event"], counts["track"]) == (1, 1)


@pytest.mark.parametrize("attempts", [1, 3])
async def test_judged_ahead_races_other_writer(
    settings: Settings, counting_loader: type[_CountingLoader], attempts: int
) -> None:
    database_url = settings.require_database_url()
    # The early write is no attempt, so even a single one stores the event.
    settings = settings.model_copy(update={"conflict_attempts": attempts})

    async def other_worker_moves(processor: BatchProcessor) -> list[RecordOutcome]:
        await bump_version(settings, "SN-2026-01001")
        return []

    spi = sample_envelopes("10-spi.jsonl")
    _, outcomes = await write_between(settings, [spi[0]], other_worker_moves)

    # The conditional move caught the change, and the batch was judged again.
    assert counting_loader.loads == 2
    assert outcomes[0].verdict == "stored"
    states = await unit_states(database_url)
    assert states["SN-2026-01001"] == ("QUEUED", 20, 2)
    counts = await row_counts(database_url)
    assert (counts["ingest_event"], counts["track"]) == (1, 1)
    outbox = await fetch_all(database_url, "SELECT count(*) AS n FROM outbox")
    assert outbox[0]["n"] == 1


async def test_judged_ahead_unused_for_other_records(
    settings: Settings, counting_loader: type[_CountingLoader]
) -> None:
    async def nothing(processor: BatchProcessor) -> list[RecordOutcome]:
        return []

    spi = sample_envelopes("10-spi.jsonl")
    # After a rebalance, the worker processes other records than it judged.
    _, outcomes = await write_between(settings, spi[:2], nothing, later=[spi[1]])

    assert counting_loader.loads == 2
    assert outcomes[0].verdict == "stored"
    states = await unit_states(settings.require_database_url())
    assert states["SN-2026-01001"] == ("QUEUED", 10, 0)
    assert states["SN-2026-01002"] == ("QUEUED", 20, 1)


async def test_partial_unit_moved_meanwhile_included(settings: Settings) -> None:
    database_url = settings.require_database_url()
    factory = sample_factory()
    wash_step(factory)["ingestMapping"]["batchPolicy"] = "PARTIAL"
    factory["units"] = unit_entries(30, {"SN-2026-01010": {"currentStepNo": 20}})
    await seed_sample(database_url, factory)
    washed = ["SN-2026-01008", "SN-2026-01009", "SN-2026-01010"]
    wash = wash_envelope(
        "WASH-A1-cycle-900", "BASKET-08", washed, "2026-12-04T07:00:00.000Z"
    )
    pool = await create_pool(database_url)
    try:
        processor = BatchProcessor(pool, settings)
        early = [consumer_record(settings, wash, next(_offsets))]
        # Judged now, the wash leaves SN-2026-01010 out: it is still at 20.
        await processor.judge_ahead(early)
        await bump_version(settings, "SN-2026-01010", step_no=30)
        outcomes = await processor.process(early)
    finally:
        await pool.close()

    # The left-out unit changed, so the wash was judged again and took it in.
    accepted = outcomes[0].accepted
    assert accepted is not None
    assert accepted.rejected_units == {}
    states = await unit_states(database_url)
    assert {sn: states[sn][1] for sn in washed} == dict.fromkeys(washed, 40)


class _CommitLostPool:
    """A pool whose next release raises, as when a COMMIT reply is lost."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.fail_next = False

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as connection:
            yield connection
        if self.fail_next:
            self.fail_next = False
            raise ConnectionResetError("connection lost after COMMIT")


async def test_judged_ahead_redone_after_lost_commit(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    spi = sample_envelopes("10-spi.jsonl")
    aoi = sample_envelopes("20-aoi.jsonl")
    pool = await create_pool(database_url)
    lossy = _CommitLostPool(pool)
    try:
        processor = BatchProcessor(lossy, settings)  # type: ignore[arg-type]
        early = [consumer_record(settings, aoi[0], next(_offsets))]
        await processor.judge_ahead(early)
        lossy.fail_next = True
        between = [consumer_record(settings, spi[0], next(_offsets))]
        with pytest.raises(InfrastructureError):
            await processor.process(between)
        again = await processor.process(between)
        outcomes = await processor.process(early)
    finally:
        await pool.close()

    # The commit went through though its reply was lost, so the inspection
    # judged before it is judged again and finds the unit at step 20.
    assert again[0].verdict == "duplicate"
    assert outcomes[0].verdict == "stored"
    states = await unit_states(database_url)
    assert states["SN-2026-01001"] == ("QUEUED", 30, 2)


class _HeldWrites:
    """Test double that holds each batch write until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()
        write = batch_module.write_batch

        async def held(*args: Any) -> Any:
            self.waiting.set()
            await self.release.wait()
            return await write(*args)

        monkeypatch.setattr(batch_module, "write_batch", held)


@pytest.mark.parametrize("reply_lost", [False, True])
async def test_judged_ahead_on_verdicts_being_written(
    settings: Settings,
    counting_loader: type[_CountingLoader],
    monkeypatch: pytest.MonkeyPatch,
    reply_lost: bool,
) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    spi = sample_envelopes("10-spi.jsonl")
    aoi = sample_envelopes("20-aoi.jsonl")
    writes = _HeldWrites(monkeypatch)
    pool = await create_pool(database_url)
    lossy = _CommitLostPool(pool)
    try:
        processor = BatchProcessor(lossy, settings)  # type: ignore[arg-type]
        first = [consumer_record(settings, spi[0], next(_offsets))]
        # The inspection of SN-2026-01001 and a copy of its paste record.
        later = [
            consumer_record(settings, aoi[0], next(_offsets)),
            consumer_record(settings, spi[0], next(_offsets)),
        ]
        writing = asyncio.create_task(processor.process(first))
        # As in the worker, the next batch is judged while the first is
        # written, before it commits.
        await writes.waiting.wait()
        await processor.judge_ahead(later)
        lossy.fail_next = reply_lost
        writes.release.set()
        if reply_lost:
            with pytest.raises(InfrastructureError):
                await writing
        else:
            assert (await writing)[0].verdict == "stored"
        outcomes = await processor.process(later)
    finally:
        await pool.close()

    # The next batch assumed the first one's verdicts. They count only if
    # their commit was confirmed; otherwise the next batch is judged again.
    assert counting_loader.loads == (3 if reply_lost else 2)
    assert [outcome.verdict for outcome in outcomes] == ["stored", "duplicate"]
    states = await unit_states(database_url)
    assert states["SN-2026-01001"] == ("QUEUED", 30, 2)
