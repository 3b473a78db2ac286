"""The operator story: fix master data, replay the dead letter, trace it once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import yaml

from ingest_worker.settings import Settings
from tests.integration.support import (
    INGEST_WORKER,
    SAMPLES,
    cli_environment,
    headers_of,
    publish_raw,
    read_topic,
    running_worker,
    sample_factory,
    seed_sample,
    wait_for,
)

pytestmark = pytest.mark.integration


async def run_command(settings: Settings, *arguments: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        INGEST_WORKER,
        *arguments,
        env=cli_environment(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode() + stderr.decode()


async def test_replay_after_station_is_seeded(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"retry_delays_s": (0.1,)})
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    line = (SAMPLES / "events" / "10-spi.jsonl").read_bytes().splitlines()[0]
    event = orjson.loads(line)
    event["payload"]["machine"] = "SPI-A2"

    async with running_worker(settings) as running:
        await publish_raw(settings, settings.topics.auto, [orjson.dumps(event)])
        dead = await wait_for(lambda: read_topic(settings, settings.topics.dlq))
        assert headers_of(dead[0])["ingest.error.code"] == "STATION_NOT_FOUND"

        # The operator adds the station to the factory file and seeds it.
        factory = sample_factory()
        factory["stations"].append(
            {"code": "SPI-A2", "line": "SMT-A", "group": "SPI", "stationType": "AUTO"}
        )
        factory_file = tmp_path / "factory.yaml"
        factory_file.write_text(yaml.safe_dump(factory), encoding="utf-8")
        status, output = await run_command(settings, "seed", str(factory_file))
        assert status == 0, output

        status, output = await run_command(
            settings, "dlq", "replay", "--code", "STATION_NOT_FOUND"
        )
        assert status == 0, output
        assert "replayed" in output
        await running.settle()

        # A second replay finds nothing new: progress was committed.
        status, output = await run_command(
            settings, "dlq", "replay", "--code", "STATION_NOT_FOUND"
        )
        assert status == 0, output
        await running.settle()

    status, output = await run_command(settings, "trace", "SN-2026-01001")
    assert status == 0, output
    trace = orjson.loads(output[: output.rindex("}") + 1])
    events = trace["data"]["ingestEvents"]
    assert [e["dedupeKey"] for e in events] == [event["dedupeKey"]]
    assert events[0]["stationCode"] == "SPI-A2"
    assert trace["data"]["unit"]["currentStepNo"] == 20
    assert len(await read_topic(settings, settings.topics.dlq)) == 1


async def test_trace_unknown_serial_exit_status(settings: Settings) -> None:
    status, output = await run_command(settings, "trace", "SN-NOT-THERE")
    assert status == 1
    document = orjson.loads(output[: output.rindex("}") + 1])
    assert document["ok"] is False
    assert document["error"]["code"] == "UNIT_NOT_FOUND"
