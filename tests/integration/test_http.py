"""The HTTP endpoints of `ingest-worker run` over the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from ingest_worker.consumer.worker import Worker
from ingest_worker.embedded import free_port
from ingest_worker.errors import ConfigurationError
from ingest_worker.outbox.relay import _RELAY_LOCK_ID
from ingest_worker.service.http import parse_http_addr, serve_http, start_http
from ingest_worker.settings import Settings
from ingest_worker.storage.database import connect, create_pool
from ingest_worker.trace.query import not_found_document, trace_unit
from tests.integration.support import (
    SAMPLES,
    fetch_all,
    publish_file,
    publish_raw,
    running_worker,
    seed_sample,
    wait_for,
)

pytestmark = pytest.mark.integration

SPI_FILE = SAMPLES / "events" / "10-spi.jsonl"
KNOWN_SN = "SN-2026-01001"
TOKEN = "test-token-7f3a"


@contextlib.asynccontextmanager
async def http_server(
    settings: Settings, pool: asyncpg.Pool, worker: Worker
) -> AsyncIterator[str]:
    """Serve the app on a free port that the system picks; yield the base URL."""
    local = settings.model_copy(update={"http_addr": "127.0.0.1:0"})
    async with serve_http(local, pool, worker) as runner:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def database_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.require_database_url())
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def idle_worker(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Worker]:
    """A worker that is never started, for endpoints that do not need one."""
    worker = Worker(settings, pool)
    try:
        yield worker
    finally:
        await worker.stop()


async def get(
    base_url: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url + path, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


def metric_samples(text: str) -> dict[str, list[Any]]:
    """Group the samples of a Prometheus text page by sample name."""
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9000", ("::1", 9000)),
        (" 0.0.0.0:65535 ", ("0.0.0.0", 65535)),
    ],
)
def test_parse_http_addr_valid(value: str, expected: tuple[str, int]) -> None:
    assert parse_http_addr(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "8080",
        ":8080",
        "127.0.0.1:",
        "127.0.0.1:http",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "::1:8080",
        "[::1]8080",
        "[::1",
        "[localhost]:8080",
    ],
)
def test_parse_http_addr_invalid(value: str) -> None:
    with pytest.raises(ConfigurationError, match="INGEST_HTTP_ADDR"):
        parse_http_addr(value)


async def test_port_in_use_is_configuration_error(settings: Settings) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = settings.model_copy(update={"http_addr": f"127.0.0.1:{port}"})
        async with (
            database_pool(settings) as pool,
            idle_worker(settings, pool) as worker,
        ):
            with pytest.raises(ConfigurationError, match="already in use"):
                await start_http(busy, pool, worker)


async def test_healthz_and_readyz_follow_assignment(settings: Settings) -> None:
    async with database_pool(settings) as pool:
        worker = Worker(settings, pool)
        async with http_server(settings, pool, worker) as base_url:
            status, _, body = await get(base_url, "/healthz")
            assert status == 200
            assert orjson.loads(body) == {"status": "ok"}

            status, headers, body = await get(base_url, "/readyz")
            assert status == 503
            assert headers["Content-Type"].startswith("application/json")
            document = orjson.loads(body)
            assert document["status"] == "not ready"
            assert document["checks"]["database"] == {"ok": True}
            assert document["checks"]["worker"]["ok"] is False
            assert document["checks"]["worker"]["reason"]
            assert document["checks"]["partitions"]["ok"] is False
            assert settings.group_id in document["checks"]["partitions"]["reason"]

            await worker.start()
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            try:

                async def ready() -> bool:
                    return (await get(base_url, "/readyz"))[0] == 200

                await wait_for(ready)
                status, _, body = await get(base_url, "/readyz")
                assert worker.consumer.assignment()
            finally:
                stop.set()
                await asyncio.wait_for(running, 30)
                await worker.stop()

            assert status == 200
            assert orjson.loads(body) == {
                "status": "ready",
                "checks": {
                    "database": {"ok": True},
                    "worker": {"ok": True},
                    "partitions": {"ok": True},
                },
            }
            # The healthz endpoint stays up while the worker is stopped.
            assert (await get(base_url, "/healthz"))[0] == 200


async def test_readyz_fails_on_closed_database(settings: Settings) -> None:
    password = "closed-port-password"
    closed_url = f"postgresql://ingest:{password}@127.0.0.1:{free_port()}/ingest"
    closed = settings.model_copy(update={"database_url": SecretStr(closed_url)})
    # min_size=0 so that creating the pool does not connect yet.
    closed_pool = await asyncpg.create_pool(closed_url, min_size=0, max_size=1)
    try:
        async with (
            running_worker(settings) as running,
            http_server(closed, closed_pool, running.worker) as base_url,
        ):

            async def worker_ready() -> bool:
                return running.worker.ready and bool(
                    running.worker.consumer.assignment()
                )

            await wait_for(worker_ready)

            status, _, body = await get(base_url, "/readyz")
            # Metrics still render while the outbox count cannot be read.
            metrics_status, _, metrics_body = await get(base_url, "/metrics")
    finally:
        await closed_pool.close()

    assert status == 503
    document = orjson.loads(body)
    assert document["status"] == "not ready"
    assert document["checks"]["database"]["ok"] is False
    assert document["checks"]["database"]["reason"]
    assert document["checks"]["worker"] == {"ok": True}
    assert document["checks"]["partitions"] == {"ok": True}
    assert password.encode() not in body
    assert closed_url.encode() not in body
    assert metrics_status == 200
    assert b"ingest_events_stored_total" in metrics_body


async def test_metrics_after_sample_file(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    relay_blocker = await connect(database_url)
    try:
        # Holding the relay's advisory lock keeps the outbox rows in place, so
        # the backlog gauge has something to count.
        await relay_blocker.execute("SELECT pg_advisory_lock($1)", _RELAY_LOCK_ID)
        async with (
            database_pool(settings) as pool,
            running_worker(settings) as running,
            http_server(settings, pool, running.worker) as base_url,
        ):
            assert await publish_file(settings, SPI_FILE) == 10
            await publish_raw(settings, settings.topics.auto, [b"not json"])
            await running.settle()
            await publish_file(settings, SPI_FILE)
            await running.settle()
            status, headers, body = await get(base_url, "/metrics")
            backlog_rows = await fetch_all(database_url, "SELECT count(*) FROM outbox")

            await relay_blocker.execute("SELECT pg_advisory_unlock($1)", _RELAY_LOCK_ID)

            async def outbox_empty() -> bool:
                rows = await fetch_all(database_url, "SELECT count(*) FROM outbox")
                return rows[0][0] == 0

            await wait_for(outbox_empty)
            drained = metric_samples((await get(base_url, "/metrics"))[2].decode())
    finally:
        await relay_blocker.close()

    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    samples = metric_samples(body.decode())
    assert [sample.value for sample in samples["ingest_events_stored_total"]] == [10]
    assert [sample.value for sample in samples["ingest_duplicates_total"]] == [10]
    dead_letters = {
        sample.labels["code"]: sample.value
        for sample in samples["ingest_dead_letters_total"]
    }
    assert dead_letters == {"ENVELOPE_UNREADABLE": 1}

    lag = {
        (sample.labels["topic"], sample.labels["partition"]): sample.value
        for sample in samples["ingest_consumer_lag"]
    }
    expected_partitions = {
        (topic, str(partition))
        for topic in settings.topics.input_topics()
        for partition in range(3)
    }
    assert set(lag) == expected_partitions
    assert set(lag.values()) == {0}

    assert backlog_rows[0][0] == 10
    assert [sample.value for sample in samples["ingest_outbox_backlog"]] == [10]
    assert [sample.value for sample in drained["ingest_outbox_backlog"]] == [0]


async def test_metrics_lag_counts_unsettled_records(settings: Settings) -> None:
    async with database_pool(settings) as pool:
        worker = Worker(settings, pool)
        await worker.start()
        try:
            await asyncio.wait_for(_poll_until_assigned(worker), 30)
            await publish_raw(settings, settings.topics.auto, [b"x"] * 4, key=b"k")
            async with http_server(settings, pool, worker) as base_url:
                body = (await get(base_url, "/metrics"))[2].decode()
        finally:
            await worker.stop()

    lag = metric_samples(body)["ingest_consumer_lag"]
    assert len(lag) == 9
    assert sum(sample.value for sample in lag) == 4
    auto = [sample for sample in lag if sample.labels["topic"] == settings.topics.auto]
    assert sorted(sample.value for sample in auto) == [0, 0, 4]


async def _poll_until_assigned(worker: Worker) -> None:
    """Poll the stopped worker's consumer until the group assigns partitions.

    Nothing is published yet, so the polls fetch no records.
    """
    while not worker.consumer.assignment():
        await worker.consumer.getmany(timeout_ms=100, max_records=1)


async def test_trace_api_matches_trace_unit(settings: Settings) -> None:
    database_url = settings.require_database_url()
    await seed_sample(database_url)
    async with (
        database_pool(settings) as pool,
        running_worker(settings) as running,
        http_server(settings, pool, running.worker) as base_url,
    ):
        await publish_file(settings, SPI_FILE)
        await running.settle()
        responses = {
            mode: await get(base_url, f"/api/trace/units/{KNOWN_SN}?mode={mode}")
            for mode in ("run", "latest")
        }
        default = await get(base_url, f"/api/trace/units/{KNOWN_SN}")
        unknown = await get(base_url, "/api/trace/units/SN-NOT-THERE")
        bad_mode = await get(base_url, f"/api/trace/units/{KNOWN_SN}?mode=newest")
        connection = await connect(database_url)
        try:
            expected = {
                mode: await trace_unit(connection, KNOWN_SN, mode)  # type: ignore[arg-type]
                for mode in ("run", "latest")
            }
        finally:
            await connection.close()

    for mode in ("run", "latest"):
        status, headers, body = responses[mode]
        assert status == 200, mode
        assert headers["Content-Type"].startswith("application/json")
        # Round-trip through JSON so that both sides have the same types.
        assert orjson.loads(body) == {
            "ok": True,
            "data": orjson.loads(orjson.dumps(expected[mode])),
        }
    assert len(orjson.loads(responses["run"][2])["data"]["ingestEvents"]) == 1
    assert default[0] == 200
    assert orjson.loads(default[2]) == orjson.loads(responses["run"][2])

    assert unknown[0] == 404
    assert orjson.loads(unknown[2]) == not_found_document("SN-NOT-THERE")

    assert bad_mode[0] == 400
    error = orjson.loads(bad_mode[2])
    assert error["ok"] is False
    assert error["error"]["code"] == "INVALID_REQUEST"
    assert "newest" in error["error"]["message"]


async def test_trace_api_requires_token(settings: Settings) -> None:
    await seed_sample(settings.require_database_url())
    guarded = settings.model_copy(update={"http_token": SecretStr(TOKEN)})
    path = f"/api/trace/units/{KNOWN_SN}"
    async with (
        database_pool(settings) as pool,
        idle_worker(settings, pool) as worker,
        http_server(guarded, pool, worker) as base_url,
    ):
        missing = await get(base_url, path)
        wrong = await get(base_url, path, {"Authorization": f"Bearer {TOKEN}x"})
        other_scheme = await get(base_url, path, {"Authorization": f"Basic {TOKEN}"})
        right = await get(base_url, path, {"Authorization": f"Bearer {TOKEN}"})
        lower_case = await get(base_url, path, {"Authorization": f"bearer {TOKEN}"})
        unknown = await get(
            base_url,
            "/api/trace/units/SN-NOT-THERE",
            {"Authorization": f"Bearer {TOKEN}"},
        )
        open_paths = {
            open_path: (await get(base_url, open_path))[0]
            for open_path in ("/healthz", "/readyz", "/metrics")
        }

    for name, (status, headers, body) in {
        "missing": missing,
        "wrong": wrong,
        "other scheme": other_scheme,
    }.items():
        assert status == 401, name
        assert headers["WWW-Authenticate"].startswith("Bearer"), name
        assert orjson.loads(body)["error"]["code"] == "UNAUTHORIZED", name
        assert TOKEN.encode() not in body, name
    assert 'error="invalid_token"' in wrong[1]["WWW-Authenticate"]

    assert right[0] == 200
    assert orjson.loads(right[2])["data"]["unit"]["sn"] == KNOWN_SN
    assert lower_case[0] == 200
    assert unknown[0] == 404
    for open_path, status in open_paths.items():
        assert status != 401, open_path
