"""OpenHTF test records published as TEST envelopes.

The sample records in samples/openhtf were written by the JSON output callback
of OpenHTF 1.6.3, and samples/events/40-fct-openhtf.jsonl contains the envelope
expected for each of them.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest_worker.embedded import free_port
from ingest_worker.envelope import Envelope, decode_envelope
from ingest_worker.errors import ConfigurationError, RecordRejected
from ingest_worker.openhtf import (
    OutputToKafka,
    PublishError,
    envelope_from_record,
    iter_record_files,
)
from ingest_worker.settings import Limits, Settings, load_settings
from tests.integration.support import SAMPLES, read_topic

pytestmark = pytest.mark.integration

RECORD_DIR = SAMPLES / "openhtf"
ENVELOPE_FILE = SAMPLES / "events" / "40-fct-openhtf.jsonl"
CLI = Path(sys.executable).parent / "ingest-worker"
STATION_ID = "FCT-IT-01"


def sample_envelopes() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in ENVELOPE_FILE.read_bytes().splitlines()]


def sample_record() -> dict[str, Any]:
    return orjson.loads(sorted(RECORD_DIR.glob("*.json"))[0].read_bytes())


def millis_to_datetime(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


# Records on disk


def test_sample_records_become_sample_envelopes() -> None:
    paths = sorted(RECORD_DIR.glob("*.json"))
    expected = sample_envelopes()
    assert len(paths) == 5
    assert len(expected) == 5

    for path, envelope in zip(paths, expected, strict=True):
        record = orjson.loads(path.read_bytes())
        assert envelope_from_record(record) == envelope, path.name


def test_iter_record_files_reads_samples() -> None:
    items = list(iter_record_files(RECORD_DIR))

    names = [item[0] for item in items if isinstance(item, tuple)]
    envelopes = [item[1] for item in items if isinstance(item, tuple)]
    assert names == sorted(path.name for path in RECORD_DIR.glob("*.json"))
    assert envelopes == sample_envelopes()


def test_sample_envelopes_pass_decoder() -> None:
    for envelope in sample_envelopes():
        decoded = decode_envelope(orjson.dumps(envelope), Limits())
        assert decoded.event_type == "TEST"
        assert decoded.sn == envelope["payload"]["dut_id"]
        end_time = millis_to_datetime(envelope["payload"]["end_time_millis"])
        assert decoded.occurred_at == end_time


def test_envelope_station_id_falls_back() -> None:
    record = sample_record()
    del record["metadata"]["config"]["station_id"]
    record["station_id"] = "FCT-FALLBACK"

    assert envelope_from_record(record)["sourceSystem"] == "FCT-FALLBACK"

    del record["metadata"]["config"]
    assert envelope_from_record(record)["sourceSystem"] == "FCT-FALLBACK"


def test_envelope_config_station_id_wins() -> None:
    record = sample_record()
    record["metadata"]["config"]["station_id"] = "FCT-CONFIG"
    record["station_id"] = "host-name"

    assert envelope_from_record(record)["sourceSystem"] == "FCT-CONFIG"


def test_envelope_time_keeps_milliseconds() -> None:
    record = sample_record()
    record["end_time_millis"] = 1_796_397_348_007

    assert envelope_from_record(record)["occurredAt"] == "2026-12-04T15:15:48.007Z"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("dut_id"), "dut_id"),
        (lambda r: r.update(dut_id=""), "dut_id"),
        (lambda r: r.update(dut_id=17), "dut_id"),
        (lambda r: r.pop("start_time_millis"), "start_time_millis"),
        (lambda r: r.update(start_time_millis="1796397348491"), "start_time_millis"),
        (lambda r: r.update(end_time_millis=None), "end_time_millis"),
        (lambda r: r.update(end_time_millis=True), "end_time_millis"),
        (lambda r: r.update(end_time_millis=-1), "end_time_millis"),
        (lambda r: r.update(end_time_millis=10**20), "end_time_millis"),
        (lambda r: r.pop("outcome"), "outcome"),
        (lambda r: r.update(phases={}), "phases"),
        (
            lambda r: (r["metadata"]["config"].pop("station_id"), r.pop("station_id")),
            "station_id",
        ),
        (
            lambda r: (
                r["metadata"]["config"].pop("station_id"),
                r.update(station_id=""),
            ),
            "station_id",
        ),
    ],
)
def test_envelope_invalid_record_rejected(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    record = sample_record()
    change(record)

    with pytest.raises(ValueError, match=message):
        envelope_from_record(record)


def test_envelope_non_object_rejected() -> None:
    with pytest.raises(ValueError, match="got a JSON array"):
        envelope_from_record([])  # type: ignore[arg-type]


def test_sample_records_unchanged_by_envelope() -> None:
    record = sample_record()
    before = copy.deepcopy(record)

    envelope_from_record(record)

    assert record == before


def test_iter_record_files_reports_bad_files(tmp_path: Path) -> None:
    shutil.copy(sorted(RECORD_DIR.glob("*.json"))[0], tmp_path / "b-good.json")
    (tmp_path / "a-junk.json").write_text('{"hello": "world"}')
    (tmp_path / "c-broken.json").write_text('{"dut_id": ')
    (tmp_path / "d-list.json").write_text("[1, 2]")
    (tmp_path / "notes.txt").write_text("not a record, and not *.json")
    (tmp_path / "e-folder.json").mkdir()

    items = list(iter_record_files(tmp_path))

    assert len(items) == 4
    assert isinstance(items[0], str)
    assert items[0].startswith("a-junk.json: not an OpenHTF test record")
    assert isinstance(items[1], tuple)
    assert items[1][0] == "b-good.json"
    assert items[1][1] == sample_envelopes()[0]
    assert isinstance(items[2], str)
    assert items[2].startswith("c-broken.json: not valid JSON")
    assert isinstance(items[3], str)
    assert items[3].startswith("d-list.json: not an OpenHTF test record")


def test_module_imports_without_openhtf() -> None:
    code = "import sys, ingest_worker.openhtf; print('openhtf' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "False"


# The output callback with a real OpenHTF test run


def test_output_needs_bootstrap_servers() -> None:
    with pytest.raises(ConfigurationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        OutputToKafka(load_settings({}))


def build_openhtf_test(voltage: float, firmware: str) -> Any:
    """Define a small functional test with a numeric and a text measurement."""
    openhtf = pytest.importorskip("openhtf")
    from openhtf.util import units

    @openhtf.measures(
        openhtf.Measurement("vcc_3v3").in_range(3.2, 3.4).with_units(units.VOLT),
        openhtf.Measurement("firmware_version").equals("1.4.2"),
    )
    def measure_board(test: Any) -> None:
        test.measurements.vcc_3v3 = voltage
        test.measurements.firmware_version = firmware

    return openhtf.Test(
        measure_board,
        test_name="FCT_IT",
        test_description="Functional test of the OpenHTF output callback",
    )


def execute_at_station(test: Any, serial: str) -> None:
    """Run the test with the station id set only for this run."""
    from openhtf.util.configuration import CONF

    execute = CONF.save_and_restore(test.execute, station_id=STATION_ID)
    execute(test_start=lambda: serial)


def use_broker_from_environment(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    assert settings.kafka.bootstrap_servers is not None
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("KAFKA_ENABLE_IDEMPOTENCE", "false")
    monkeypatch.setenv("INGEST_TOPIC_TEST", settings.topics.test)


async def records_for(settings: Settings, serial: str) -> list[Envelope]:
    records = await read_topic(settings, settings.topics.test)
    return [
        decode_envelope(record.value, Limits())
        for record in records
        if record.key == serial.encode()
    ]


async def test_openhtf_run_publishes_record(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("openhtf")
    from openhtf.output.callbacks import json_factory

    use_broker_from_environment(monkeypatch, settings)
    serial = "SN-IT-0001"
    test = build_openhtf_test(voltage=3.31, firmware="1.4.2")
    # What a test engineer adds: one line.
    test.add_output_callbacks(OutputToKafka())
    # OpenHTF's own JSON output of the same run, to compare the payload with.
    test.add_output_callbacks(
        json_factory.OutputToJSON(str(tmp_path / "{dut_id}.{start_time_millis}.json"))
    )

    # OpenHTF blocks until the test and its output callbacks finished.
    await asyncio.to_thread(execute_at_station, test, serial)

    written = await asyncio.to_thread(lambda: list(tmp_path.glob(f"{serial}.*.json")))
    assert len(written) == 1
    on_disk = orjson.loads(written[0].read_bytes())
    published = await records_for(settings, serial)
    assert len(published) == 1
    envelope = published[0]
    payload = envelope.document["payload"]
    assert payload == on_disk
    assert envelope.document == envelope_from_record(on_disk)
    assert envelope.event_type == "TEST"
    assert envelope.sn == serial
    assert envelope.source_system == STATION_ID
    assert envelope.dedupe_key == f"{serial}.{payload['start_time_millis']}"
    assert envelope.occurred_at == millis_to_datetime(payload["end_time_millis"])
    assert payload["outcome"] == "PASS"

    measurements = payload["phases"][-1]["measurements"]
    assert measurements["vcc_3v3"]["measured_value"] == 3.31
    assert measurements["vcc_3v3"]["validators"] == ["3.2 <= x <= 3.4"]
    assert measurements["vcc_3v3"]["units"]["suffix"] == "V"
    assert measurements["vcc_3v3"]["outcome"] == "PASS"
    assert measurements["firmware_version"]["measured_value"] == "1.4.2"
    assert measurements["firmware_version"]["outcome"] == "PASS"


async def test_openhtf_failed_run_in_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openhtf")
    use_broker_from_environment(monkeypatch, settings)
    serial = "SN-IT-0002"
    test = build_openhtf_test(voltage=3.05, firmware="1.3.9")
    test.add_output_callbacks(OutputToKafka())

    # Run in this thread, whose event loop is running, as in a notebook. The
    # callback must then publish from a thread of its own.
    execute_at_station(test, serial)

    published = await records_for(settings, serial)
    assert len(published) == 1
    payload = published[0].document["payload"]
    assert payload["outcome"] == "FAIL"
    measurements = payload["phases"][-1]["measurements"]
    assert measurements["vcc_3v3"]["outcome"] == "FAIL"
    assert measurements["firmware_version"]["outcome"] == "FAIL"


async def test_output_arguments_override_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openhtf")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    serial = "SN-IT-0003"
    test = build_openhtf_test(voltage=3.3, firmware="1.4.2")
    assert settings.kafka.bootstrap_servers is not None
    test.add_output_callbacks(
        OutputToKafka(
            load_settings({"KAFKA_ENABLE_IDEMPOTENCE": "false"}),
            bootstrap_servers=settings.kafka.bootstrap_servers,
            topic=settings.topics.test,
        )
    )

    await asyncio.to_thread(execute_at_station, test, serial)

    published = await records_for(settings, serial)
    assert len(published) == 1
    assert published[0].sn == serial


async def test_output_unreachable_broker_raises() -> None:
    pytest.importorskip("openhtf")
    captured: list[Any] = []
    test = build_openhtf_test(voltage=3.3, firmware="1.4.2")
    test.add_output_callbacks(captured.append)
    await asyncio.to_thread(execute_at_station, test, "SN-IT-0004")
    assert len(captured) == 1
    output = OutputToKafka(
        load_settings({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}),
        timeout_s=10,
    )

    with pytest.raises(PublishError, match="SN-IT-0004"):
        await asyncio.to_thread(output, captured[0])


async def test_output_too_large_record_rejected() -> None:
    pytest.importorskip("openhtf")
    captured: list[Any] = []
    test = build_openhtf_test(voltage=3.3, firmware="1.4.2")
    test.add_output_callbacks(captured.append)
    await asyncio.to_thread(execute_at_station, test, "SN-IT-0005")
    environ = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    small = load_settings(environ).model_copy(
        update={"limits": Limits(max_value_bytes=1024)}
    )
    output = OutputToKafka(small)

    # The size check runs before the producer connects to the unused port.
    with pytest.raises(RecordRejected, match="over the limit of 1024"):
        await asyncio.to_thread(output, captured[0])


# The publish command


def cli_environment(settings: Settings) -> dict[str, str]:
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KAFKA_", "INGEST_", "DATABASE_URL"))
    }
    assert settings.kafka.bootstrap_servers is not None
    environ["KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers
    environ["KAFKA_ENABLE_IDEMPOTENCE"] = "false"
    environ["INGEST_TOPIC_TEST"] = settings.topics.test
    environ["LOG_FORMAT"] = "console"
    return environ


async def run_cli(
    settings: Settings, *arguments: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(CLI), *arguments],
        env=cli_environment(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_publishes_records_reports_junk(
    settings: Settings, tmp_path: Path
) -> None:
    for path in RECORD_DIR.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "junk.json").write_text('{"station": "FCT-01", "result": "PASS"}')

    result = await run_cli(settings, "publish", "--openhtf", str(tmp_path))

    assert result.returncode == 1, result.stderr
    assert f"5 records published to {settings.topics.test}" in result.stdout
    assert "skipped junk.json: not an OpenHTF test record" in result.stderr
    records = await read_topic(settings, settings.topics.test)
    expected = {envelope["sn"]: envelope for envelope in sample_envelopes()}
    assert len(records) == 5
    for record in records:
        assert record.key is not None
        serial = record.key.decode()
        assert orjson.loads(record.value) == expected[serial]
    assert sorted(record.key for record in records) == sorted(
        serial.encode() for serial in expected
    )


async def test_cli_clean_folder_exits_zero(settings: Settings) -> None:
    result = await run_cli(settings, "publish", "--openhtf", str(RECORD_DIR))

    assert result.returncode == 0, result.stderr
    assert f"5 records published to {settings.topics.test}" in result.stdout
    assert len(await read_topic(settings, settings.topics.test)) == 5


async def test_cli_missing_folder_exits_two(settings: Settings, tmp_path: Path) -> None:
    result = await run_cli(settings, "publish", "--openhtf", str(tmp_path / "missing"))

    assert result.returncode == 2
    assert "does not exist" in result.stderr


async def test_cli_empty_folder_exits_one(settings: Settings, tmp_path: Path) -> None:
    result = await run_cli(settings, "publish", "--openhtf", str(tmp_path))

    assert result.returncode == 1
    assert "no *.json files found" in result.stderr


async def test_cli_file_and_folder_exclusive(
    settings: Settings, tmp_path: Path
) -> None:
    result = await run_cli(
        settings, "publish", str(ENVELOPE_FILE), "--openhtf", str(tmp_path)
    )

    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr
