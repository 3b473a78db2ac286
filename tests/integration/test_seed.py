"""Master data seeding against a real PostgreSQL server.

Each test gets its own database from the shared fixtures in conftest.py.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from ingest_worker.errors import MasterDataError
from ingest_worker.storage import seed
from ingest_worker.storage.database import connect
from ingest_worker.storage.seed import (
    MASTER_DATA_CHANNEL,
    SeedReport,
    SnRange,
    load_factory,
    parse_factory,
    seed_factory,
)

pytestmark = pytest.mark.integration

# The sample file ships inside the package, next to `storage/`.
SAMPLE_PATH = Path(seed.__file__).parents[1] / "samples" / "factory.yaml"
MASTER_TABLES = (
    "line",
    "station_group",
    "station",
    "data_spec",
    "route",
    "route_version",
    "route_step",
    "run",
    "unit",
)
SAMPLE_COUNTS = {
    "line": 1,
    "station_group": 4,
    "station": 6,
    "data_spec": 9,
    "route": 1,
    "route_version": 1,
    "route_step": 4,
    "run": 1,
    "unit": 10,
}


@pytest.fixture
async def connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


def sample_document() -> dict[str, Any]:
    return yaml.safe_load(SAMPLE_PATH.read_text(encoding="utf-8"))


def changed_document(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    document = copy.deepcopy(sample_document())
    change(document)
    return document


def first_version(document: dict[str, Any]) -> dict[str, Any]:
    return document["routes"][0]["versions"][0]


def step(document: dict[str, Any], step_no: int) -> dict[str, Any]:
    return next(s for s in first_version(document)["steps"] if s["stepNo"] == step_no)


async def table_counts(connection: asyncpg.Connection) -> dict[str, int]:
    return {
        table: await connection.fetchval(f"SELECT count(*) FROM {table}")
        for table in MASTER_TABLES
    }


async def snapshot(connection: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    return {
        table: [
            dict(row)
            for row in await connection.fetch(f"SELECT * FROM {table} ORDER BY id")
        ]
        for table in MASTER_TABLES
    }


async def seed_document(
    connection: asyncpg.Connection, document: dict[str, Any]
) -> SeedReport:
    return await seed_factory(connection, parse_factory(document))


def assert_all_unchanged(report: SeedReport) -> None:
    for kind, actions in report.counts.items():
        assert actions["inserted"] == 0, kind
        assert actions["updated"] == 0, kind


# ---------------------------------------------------------------------------
# Loading and validation, without a database
# ---------------------------------------------------------------------------


def test_sample_factory_loads_unchanged() -> None:
    factory = load_factory(SAMPLE_PATH)

    assert len(factory.lines) == 1
    assert len(factory.station_groups) == 4
    assert len(factory.stations) == 6
    assert len(factory.data_specs) == 9
    assert len(factory.routes) == 1
    assert len(factory.routes[0].versions) == 1
    assert len(factory.routes[0].versions[0].steps) == 4
    assert len(factory.runs) == 1
    assert factory.unit_count() == 10


def test_sample_step_fields_parsed() -> None:
    factory = load_factory(SAMPLE_PATH)
    steps = factory.routes[0].versions[0].steps

    assert [s.step_no for s in steps] == [10, 20, 30, 40]
    assert steps[0].requires_authorization is True
    assert steps[0].requires_fai is False
    assert steps[1].data_specs == []
    assert steps[2].station_type == "BATCH"
    raw_mapping = step(sample_document(), 40)["ingestMapping"]
    assert steps[3].ingest_mapping == raw_mapping


def test_requires_fai_parsed() -> None:
    document = changed_document(lambda d: step(d, 40).update(requiresFAI=True))

    steps = parse_factory(document).routes[0].versions[0].steps

    assert steps[3].requires_fai is True
    assert steps[2].requires_fai is False


def test_compiled_at_needs_offset() -> None:
    document = changed_document(
        lambda d: first_version(d).update(compiledAt="2026-11-30T08:00:00")
    )

    with pytest.raises(MasterDataError) as caught:
        parse_factory(document)
    assert "routes[0] ROUTE-MAINBOARD version 1: compiledAt: " in str(caught.value)


def test_load_factory_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(MasterDataError, match="cannot read the file") as caught:
        load_factory(path)
    assert str(path) in str(caught.value)


def test_load_factory_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("lines: [\n", encoding="utf-8")

    with pytest.raises(MasterDataError, match="invalid YAML"):
        load_factory(path)


def test_load_factory_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")

    with pytest.raises(MasterDataError, match="the file is empty"):
        load_factory(path)


def test_error_names_source() -> None:
    document = changed_document(lambda d: d["stations"][4].update(group="FCX"))

    with pytest.raises(MasterDataError) as caught:
        parse_factory(document, source="plant.yaml")
    assert str(caught.value).startswith("plant.yaml: stations[4] FCT-01: ")


def test_unknown_field_rejected() -> None:
    document = changed_document(lambda d: step(d, 30).update(stationTyp="BATCH"))

    with pytest.raises(MasterDataError) as caught:
        parse_factory(document)
    message = str(caught.value)
    assert (
        "routes[0] ROUTE-MAINBOARD version 1 step 30: stationTyp: unknown field"
        in message
    )


def test_invalid_enum_value_rejected() -> None:
    document = changed_document(lambda d: d["dataSpecs"][0].update(method="ROBOT"))

    with pytest.raises(MasterDataError) as caught:
        parse_factory(document)
    message = str(caught.value)
    assert "dataSpecs[0] PASTE_VOLUME_PCT: method: invalid value 'ROBOT'" in message
    assert "'AUTO' or 'MANUAL'" in message


def test_numeric_code_must_be_quoted() -> None:
    document = changed_document(lambda d: d["lines"][0].update(code=100))

    with pytest.raises(MasterDataError, match="quote it in YAML"):
        parse_factory(document)


def test_every_problem_listed() -> None:
    def break_twice(document: dict[str, Any]) -> None:
        document["stations"][0]["group"] = "NOPE"
        document["runs"][0]["route"] = "ROUTE-NOPE"

    with pytest.raises(MasterDataError) as caught:
        parse_factory(changed_document(break_twice))
    message = str(caught.value)
    assert "stations[0] SPI-A1: group 'NOPE'" in message
    assert "runs[0] RUN-2026-0001: route 'ROUTE-NOPE'" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            lambda d: d["stations"][2].update(line="SMT-B"),
            "stations[2] AOI-A2: line 'SMT-B' is not defined in lines; "
            "add it to lines or correct the line",
            id="station-line",
        ),
        pytest.param(
            lambda d: d["stations"][2].update(group="AOJ"),
            "stations[2] AOI-A2: group 'AOJ' is not defined in stationGroups",
            id="station-group",
        ),
        pytest.param(
            lambda d: d["stationGroups"][1].update(line="SMT-B"),
            "stationGroups[1] AOI: line 'SMT-B' is not defined in lines",
            id="group-line",
        ),
        pytest.param(
            lambda d: step(d, 20).update(stationGroup="AOJ"),
            "routes[0] ROUTE-MAINBOARD version 1 step 20: stationGroup 'AOJ' is not "
            "defined in stationGroups",
            id="step-station-group",
        ),
        pytest.param(
            lambda d: step(d, 20).update(allowedStations=["AOI-A1", "AOI-A9"]),
            "routes[0] ROUTE-MAINBOARD version 1 step 20: allowedStations: station "
            "'AOI-A9' is not defined in stations",
            id="step-allowed-station",
        ),
        pytest.param(
            lambda d: step(d, 30).update(dataSpecs=["WASH_TEMP_C", "WASH_PH"]),
            "routes[0] ROUTE-MAINBOARD version 1 step 30: dataSpecs: data spec "
            "'WASH_PH' is not defined in dataSpecs",
            id="step-data-spec",
        ),
        pytest.param(
            lambda d: d["runs"][0].update(route="ROUTE-OTHER"),
            "runs[0] RUN-2026-0001: route 'ROUTE-OTHER' is not defined in routes",
            id="run-route",
        ),
        pytest.param(
            lambda d: d["runs"][0].update(versionNo=2),
            "runs[0] RUN-2026-0001: route 'ROUTE-MAINBOARD' has no version 2 in "
            "routes; add the version or correct the versionNo",
            id="run-version",
        ),
        pytest.param(
            lambda d: d["units"][0].update(run="RUN-2026-0099"),
            "units[0] SN-2026-01001..SN-2026-01010: run 'RUN-2026-0099' is not "
            "defined in runs",
            id="unit-run",
        ),
        pytest.param(
            lambda d: d["units"][0].update(currentStepNo=15),
            "units[0] SN-2026-01001..SN-2026-01010: currentStepNo 15 is not a step of "
            "the route version of run 'RUN-2026-0001' (steps 10, 20, 30, 40)",
            id="unit-current-step",
        ),
    ],
)
def test_broken_reference_rejected(
    change: Callable[[dict[str, Any]], Any], expected: str
) -> None:
    with pytest.raises(MasterDataError) as caught:
        parse_factory(changed_document(change))
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            lambda d: d["stations"].append(dict(d["stations"][1])),
            "stations[6] AOI-A1: code 'AOI-A1' is already used by stations[1]",
            id="station",
        ),
        pytest.param(
            lambda d: d["dataSpecs"].append(dict(d["dataSpecs"][0])),
            "dataSpecs[9] PASTE_VOLUME_PCT: name 'PASTE_VOLUME_PCT' is already used",
            id="data-spec",
        ),
        pytest.param(
            lambda d: d["runs"].append(dict(d["runs"][0])),
            "runs[1] RUN-2026-0001: runNo 'RUN-2026-0001' is already used by runs[0]",
            id="run",
        ),
        pytest.param(
            lambda d: first_version(d)["steps"].append(dict(step(d, 20))),
            "routes[0] ROUTE-MAINBOARD version 1 step 20: stepNo 20 is listed twice",
            id="step",
        ),
        pytest.param(
            lambda d: d["routes"][0]["versions"].append(
                copy.deepcopy(first_version(d))
            ),
            "routes[0] ROUTE-MAINBOARD: versionNo 1 is listed twice",
            id="version",
        ),
        pytest.param(
            lambda d: d["units"].append(
                {"sn": "SN-2026-01004", "run": "RUN-2026-0001"}
            ),
            "units[1] SN-2026-01004: 1 serial number is already listed in units[0]",
            id="unit",
        ),
    ],
)
def test_duplicate_key_rejected(
    change: Callable[[dict[str, Any]], Any], expected: str
) -> None:
    with pytest.raises(MasterDataError) as caught:
        parse_factory(changed_document(change))
    assert expected in str(caught.value)


def test_bad_mapping_path_rejected() -> None:
    def break_items_path(document: dict[str, Any]) -> None:
        step(document, 40)["ingestMapping"]["measurements"]["itemsPath"] = (
            "payload.phases[*"
        )

    with pytest.raises(MasterDataError) as caught:
        parse_factory(changed_document(break_items_path))
    message = str(caught.value)
    assert (
        "routes[0] ROUTE-MAINBOARD version 1 step 40: "
        "ingestMapping.measurements.itemsPath: " in message
    )
    assert "payload.phases[*" in message


def test_unknown_mapping_field_rejected() -> None:
    document = changed_document(
        lambda d: step(d, 10)["ingestMapping"].update(snPth="payload.sn")
    )

    with pytest.raises(MasterDataError) as caught:
        parse_factory(document)
    assert "routes[0] ROUTE-MAINBOARD version 1 step 10: ingestMapping.snPth: " in str(
        caught.value
    )


def test_mapping_event_type_mismatch_rejected() -> None:
    def mismatch(document: dict[str, Any]) -> None:
        mapping = step(document, 20)["ingestMapping"]
        mapping["eventType"] = "TEST"
        mapping["testResultIdPath"] = "dedupeKey"

    with pytest.raises(MasterDataError) as caught:
        parse_factory(changed_document(mismatch))

    message = str(caught.value)
    assert "ROUTE-MAINBOARD version 1 step 20" in message
    assert "ingestMapping.eventType" in message
    assert "stationType AUTO" in message


def test_sn_range_expansion() -> None:
    sn_range = SnRange.model_validate(
        {"prefix": "MB-", "from": 8, "to": 11, "width": 3}
    )

    assert sn_range.serial_numbers() == ["MB-008", "MB-009", "MB-010", "MB-011"]
    assert sn_range.describe() == "MB-008..MB-011"


@pytest.mark.parametrize(
    ("sn_range", "expected"),
    [
        pytest.param(
            {"prefix": "SN-", "from": 20, "to": 10, "width": 5},
            "from 20 is greater than to 10",
            id="reversed",
        ),
        pytest.param(
            {"prefix": "SN-", "from": 1, "to": 1_000_001, "width": 7},
            "covers 1000001 units, more than the maximum of 1000000",
            id="too-many",
        ),
        pytest.param(
            {"prefix": "SN-", "from": 1, "to": 100_000, "width": 5},
            "to 100000 has more than width 5 digits",
            id="too-narrow",
        ),
        pytest.param(
            {"prefix": "SN-", "from": 1, "to": 10, "width": 5, "step": 2},
            "snRange.step: unknown field",
            id="unknown-field",
        ),
    ],
)
def test_invalid_sn_range_rejected(sn_range: dict[str, Any], expected: str) -> None:
    document = changed_document(lambda d: d["units"][0].update(snRange=sn_range))

    with pytest.raises(MasterDataError) as caught:
        parse_factory(document)
    message = str(caught.value)
    assert "units[0]" in message
    assert expected in message


def test_range_of_one_million_accepted() -> None:
    sn_range = SnRange.model_validate({"from": 1, "to": 1_000_000, "width": 7})

    assert sn_range.count == 1_000_000


def test_unit_needs_sn_or_range() -> None:
    document = changed_document(
        lambda d: d["units"].append({"run": "RUN-2026-0001", "status": "QUEUED"})
    )

    with pytest.raises(MasterDataError, match="give either sn or snRange"):
        parse_factory(document)


def test_content_hash_ignores_status_and_defaults() -> None:
    base = parse_factory(sample_document()).routes[0].versions[0]

    def retire_and_spell_defaults(document: dict[str, Any]) -> None:
        first_version(document)["status"] = "RETIRED"
        step(document, 20)["requiresFAI"] = False
        step(document, 20)["dataSpecs"] = []
        first_version(document)["steps"].reverse()

    same = parse_factory(changed_document(retire_and_spell_defaults))
    renamed = parse_factory(
        changed_document(lambda d: step(d, 20).update(operation="AOI"))
    )

    assert same.routes[0].versions[0].content_hash() == base.content_hash()
    assert renamed.routes[0].versions[0].content_hash() != base.content_hash()


def test_report_summary() -> None:
    report = SeedReport(
        {
            "lines": {"inserted": 1, "updated": 0, "unchanged": 0},
            "units": {"inserted": 0, "updated": 0, "unchanged": 10},
        }
    )

    assert report.summary() == (
        "lines: 1 inserted, 0 updated, 0 unchanged\n"
        "units: 0 inserted, 0 updated, 10 unchanged"
    )
    assert report.changed is True


# ---------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------


async def test_sample_factory_seeds(connection: asyncpg.Connection) -> None:
    report = await seed_factory(connection, load_factory(SAMPLE_PATH))

    assert await table_counts(connection) == SAMPLE_COUNTS
    assert report.counts["stations"] == {"inserted": 6, "updated": 0, "unchanged": 0}
    assert report.counts["dataSpecs"]["inserted"] == 9
    assert report.counts["routeVersions"]["inserted"] == 1
    assert report.counts["routeSteps"]["inserted"] == 4
    assert report.counts["runs"]["inserted"] == 1
    assert report.counts["units"] == {"inserted": 10, "updated": 0, "unchanged": 0}


async def test_sample_rows_stored(connection: asyncpg.Connection) -> None:
    factory = load_factory(SAMPLE_PATH)
    await seed_factory(connection, factory)

    version = await connection.fetchrow("SELECT * FROM route_version")
    assert version["status"] == "READY"
    assert version["content_hash"] == factory.routes[0].versions[0].content_hash()
    assert version["compiled_at"].isoformat() == "2026-11-30T08:00:00+00:00"

    fct = await connection.fetchrow("SELECT * FROM route_step WHERE step_no = 40")
    assert fct["station_type"] == "TEST"
    assert fct["station_group"] == "FCT"
    assert fct["allowed_stations"] is None
    assert fct["requires_authorization"] is True
    assert fct["data_specs"] == [
        "VCC_3V3",
        "VCC_5V0",
        "IDLE_CURRENT_A",
        "FIRMWARE_VERSION",
        "LED_OK",
    ]
    assert fct["ingest_mapping"] == step(sample_document(), 40)["ingestMapping"]

    spec = await connection.fetchrow(
        "SELECT * FROM data_spec WHERE name = 'IDLE_CURRENT_A'"
    )
    assert spec["spec"] == {"max": 0.25, "unit": "A"}
    assert spec["is_required"] is True
    assert spec["active"] is True

    station = await connection.fetchrow(
        """
        SELECT s.station_type, g.code AS group_code, l.code AS line_code
        FROM station s
        JOIN station_group g ON g.id = s.station_group_id
        JOIN line l ON l.id = s.line_id
        WHERE s.code = 'WASH-A1'
        """
    )
    assert tuple(station) == ("BATCH", "WASH", "SMT-A")

    run = await connection.fetchrow("SELECT * FROM run")
    assert run["run_no"] == "RUN-2026-0001"
    assert run["wo_no"] == "WO-MB-100-17"
    assert run["status"] == "AUTHORIZED"
    assert run["started_at"] is None


async def test_second_seed_unchanged(connection: asyncpg.Connection) -> None:
    factory = load_factory(SAMPLE_PATH)
    await seed_factory(connection, factory)
    before = await snapshot(connection)

    report = await seed_factory(connection, load_factory(SAMPLE_PATH))

    assert_all_unchanged(report)
    assert report.changed is False
    assert report.counts["units"]["unchanged"] == 10
    assert report.counts["routeSteps"]["unchanged"] == 4
    assert await snapshot(connection) == before


async def test_added_station_inserted_alone(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())
    document = changed_document(
        lambda d: d["stations"].append(
            {"code": "AOI-A3", "line": "SMT-A", "group": "AOI", "stationType": "AUTO"}
        )
    )

    report = await seed_document(connection, document)

    assert report.counts["stations"] == {"inserted": 1, "updated": 0, "unchanged": 6}
    for kind, actions in report.counts.items():
        if kind != "stations":
            assert actions["inserted"] == 0, kind
            assert actions["updated"] == 0, kind
    group = await connection.fetchval(
        """
        SELECT g.code FROM station s JOIN station_group g ON g.id = s.station_group_id
        WHERE s.code = 'AOI-A3'
        """
    )
    assert group == "AOI"


async def test_changed_station_updated(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())
    document = changed_document(lambda d: d["stations"][2].update(active=False))

    report = await seed_document(connection, document)

    assert report.counts["stations"] == {"inserted": 0, "updated": 1, "unchanged": 5}
    active = await connection.fetchval(
        "SELECT active FROM station WHERE code = 'AOI-A2'"
    )
    assert active is False


async def test_changed_data_spec_updated(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())
    document = changed_document(lambda d: d["dataSpecs"][0]["spec"].update(min=75))

    report = await seed_document(connection, document)

    assert report.counts["dataSpecs"] == {"inserted": 0, "updated": 1, "unchanged": 8}
    spec = await connection.fetchval(
        "SELECT spec FROM data_spec WHERE name = 'PASTE_VOLUME_PCT'"
    )
    assert spec == {"min": 75, "max": 130, "unit": "%"}


async def test_changed_route_version_rejected(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())
    before = await snapshot(connection)
    document = changed_document(
        lambda d: step(d, 20).update(operation="OPTICAL_INSPECTION")
    )

    with pytest.raises(MasterDataError) as caught:
        await seed_document(connection, document)

    message = str(caught.value)
    assert "routes[0] ROUTE-MAINBOARD version 1: the content differs" in message
    assert "publish the change under a new versionNo" in message
    assert await snapshot(connection) == before


async def test_changed_mapping_rejected(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())
    document = changed_document(
        lambda d: step(d, 40)["ingestMapping"]["result"].update(
            passValues=["PASS", "OK"]
        )
    )

    with pytest.raises(MasterDataError, match="ROUTE-MAINBOARD version 1"):
        await seed_document(connection, document)


async def test_route_version_status_moves_forward(
    connection: asyncpg.Connection,
) -> None:
    await seed_document(connection, sample_document())
    document = changed_document(lambda d: first_version(d).update(status="RETIRED"))

    report = await seed_document(connection, document)

    assert report.counts["routeVersions"] == {
        "inserted": 0,
        "updated": 1,
        "unchanged": 0,
    }
    status = await connection.fetchval("SELECT status FROM route_version")
    assert status == "RETIRED"


async def test_route_version_status_never_moves_back(
    connection: asyncpg.Connection,
) -> None:
    await seed_document(connection, sample_document())
    document = changed_document(lambda d: first_version(d).update(status="DRAFT"))

    with pytest.raises(MasterDataError) as caught:
        await seed_document(connection, document)

    assert "status cannot move back from READY to DRAFT" in str(caught.value)
    status = await connection.fetchval("SELECT status FROM route_version")
    assert status == "READY"


async def test_new_route_version_inserted(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())

    def publish_version_2(document: dict[str, Any]) -> None:
        version = copy.deepcopy(first_version(document))
        version["versionNo"] = 2
        version["steps"] = version["steps"][:2]
        document["routes"][0]["versions"].append(version)

    report = await seed_document(connection, changed_document(publish_version_2))

    assert report.counts["routeVersions"] == {
        "inserted": 1,
        "updated": 0,
        "unchanged": 1,
    }
    assert report.counts["routeSteps"] == {"inserted": 2, "updated": 0, "unchanged": 4}
    steps = await connection.fetchval(
        """
        SELECT count(*) FROM route_step s
        JOIN route_version v ON v.id = s.route_version_id WHERE v.version_no = 2
        """
    )
    assert steps == 2


async def test_advanced_unit_not_reset(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())
    await connection.execute(
        """
        UPDATE unit SET status = 'OUT_FAILED', current_step_no = 30,
                        version = version + 2
        WHERE sn = 'SN-2026-01003'
        """
    )
    await connection.execute(
        "UPDATE run SET status = 'IN_PROGRESS', started_at = now()"
    )

    report = await seed_document(connection, sample_document())

    assert_all_unchanged(report)
    unit = await connection.fetchrow(
        "SELECT status, current_step_no, version FROM unit WHERE sn = 'SN-2026-01003'"
    )
    assert tuple(unit) == ("OUT_FAILED", 30, 2)
    run = await connection.fetchrow("SELECT status, started_at FROM run")
    assert run["status"] == "IN_PROGRESS"
    assert run["started_at"] is not None


async def test_prep_run_promoted_to_authorized(connection: asyncpg.Connection) -> None:
    await seed_document(
        connection, changed_document(lambda d: d["runs"][0].update(status="PREP"))
    )
    assert await connection.fetchval("SELECT status FROM run") == "PREP"

    report = await seed_document(connection, sample_document())

    assert report.counts["runs"] == {"inserted": 0, "updated": 1, "unchanged": 0}
    assert await connection.fetchval("SELECT status FROM run") == "AUTHORIZED"


async def test_authorized_run_not_demoted(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())

    report = await seed_document(
        connection, changed_document(lambda d: d["runs"][0].update(status="PREP"))
    )

    assert report.counts["runs"]["unchanged"] == 1
    assert await connection.fetchval("SELECT status FROM run") == "AUTHORIZED"


async def test_run_work_order_updated(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())

    report = await seed_document(
        connection, changed_document(lambda d: d["runs"][0].update(woNo="WO-MB-100-18"))
    )

    assert report.counts["runs"] == {"inserted": 0, "updated": 1, "unchanged": 0}
    assert await connection.fetchval("SELECT wo_no FROM run") == "WO-MB-100-18"


async def test_run_on_other_version_rejected(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())

    def move_run_to_version_2(document: dict[str, Any]) -> None:
        version = copy.deepcopy(first_version(document))
        version["versionNo"] = 2
        document["routes"][0]["versions"].append(version)
        document["runs"][0]["versionNo"] = 2

    with pytest.raises(MasterDataError) as caught:
        await seed_document(connection, changed_document(move_run_to_version_2))

    message = str(caught.value)
    assert (
        "runs[0] RUN-2026-0001: the stored run uses route 'ROUTE-MAINBOARD' version 1"
        in message
    )
    assert "use a new runNo" in message
    assert await connection.fetchval("SELECT count(*) FROM route_version") == 1


async def test_unit_in_other_run_rejected(connection: asyncpg.Connection) -> None:
    def add_second_run(document: dict[str, Any]) -> None:
        second = dict(document["runs"][0], runNo="RUN-2026-0002")
        document["runs"].append(second)

    await seed_document(connection, changed_document(add_second_run))

    def move_unit(document: dict[str, Any]) -> None:
        add_second_run(document)
        document["units"][0]["snRange"]["to"] = 1009
        document["units"].append({"sn": "SN-2026-01010", "run": "RUN-2026-0002"})

    with pytest.raises(MasterDataError) as caught:
        await seed_document(connection, changed_document(move_unit))

    message = str(caught.value)
    assert "units[1] SN-2026-01010: unit 'SN-2026-01010' is stored in run" in message
    assert "'RUN-2026-0001'" in message
    assert "puts it in run 'RUN-2026-0002'" in message


async def test_failed_seed_writes_nothing(connection: asyncpg.Connection) -> None:
    await seed_document(connection, sample_document())
    before = await snapshot(connection)

    def change_everything(document: dict[str, Any]) -> None:
        document["lines"].append({"code": "SMT-B", "name": "SMT line B"})
        document["stations"][0]["active"] = False
        step(document, 10)["operation"] = "SPI"

    with pytest.raises(MasterDataError):
        await seed_document(connection, changed_document(change_everything))

    assert await snapshot(connection) == before


async def test_units_from_range_and_list(connection: asyncpg.Connection) -> None:
    def add_units(document: dict[str, Any]) -> None:
        document["units"] = [
            {
                "snRange": {"prefix": "MB-", "from": 98, "to": 102, "width": 4},
                "run": "RUN-2026-0001",
            },
            {
                "sn": "RMA-7",
                "run": "RUN-2026-0001",
                "status": "ON_HOLD",
                "currentStepNo": 40,
            },
        ]

    report = await seed_document(connection, changed_document(add_units))

    assert report.counts["units"] == {"inserted": 6, "updated": 0, "unchanged": 0}
    rows = await connection.fetch(
        "SELECT sn, status, current_step_no FROM unit ORDER BY sn"
    )
    assert [tuple(row) for row in rows] == [
        ("MB-0098", "QUEUED", 10),
        ("MB-0099", "QUEUED", 10),
        ("MB-0100", "QUEUED", 10),
        ("MB-0101", "QUEUED", 10),
        ("MB-0102", "QUEUED", 10),
        ("RMA-7", "ON_HOLD", 40),
    ]


async def test_extended_range_inserts_new_units(
    connection: asyncpg.Connection,
) -> None:
    await seed_document(connection, sample_document())

    report = await seed_document(
        connection, changed_document(lambda d: d["units"][0]["snRange"].update(to=1015))
    )

    assert report.counts["units"] == {"inserted": 5, "updated": 0, "unchanged": 10}
    assert await connection.fetchval("SELECT max(sn) FROM unit") == "SN-2026-01015"


async def test_large_range_seeds(connection: asyncpg.Connection) -> None:
    document = changed_document(
        lambda d: d["units"][0].update(
            snRange={"prefix": "LOT-", "from": 1, "to": 50_000, "width": 6}
        )
    )

    report = await seed_document(connection, document)

    assert report.counts["units"]["inserted"] == 50_000
    assert await connection.fetchval("SELECT count(*) FROM unit") == 50_000
    again = await seed_document(connection, document)
    assert again.counts["units"]["unchanged"] == 50_000


async def test_seed_notifies_workers(
    connection: asyncpg.Connection, database_url: str
) -> None:
    listener = await connect(database_url)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(
        MASTER_DATA_CHANNEL, lambda *args: received.put_nowait(args[2])
    )
    try:
        await seed_factory(connection, load_factory(SAMPLE_PATH))
        channel = await asyncio.wait_for(received.get(), timeout=5)
    finally:
        await listener.close()

    assert channel == "ingest_master_data"


async def test_seed_inside_caller_transaction(connection: asyncpg.Connection) -> None:
    transaction = connection.transaction()
    await transaction.start()
    await seed_factory(connection, load_factory(SAMPLE_PATH))
    await transaction.rollback()

    assert await connection.fetchval("SELECT count(*) FROM station") == 0
