"""Numbered SQL migrations, each applied once, in order, under a lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Any 64-bit number fixed for this purpose; every worker and command uses it.
_MIGRATION_LOCK_ID = 0x1D6E57_3161
_FILE_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Read the numbered SQL files shipped with the package, in order."""
    found: list[Migration] = []
    for entry in resources.files("ingest_worker").joinpath("sql").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(
            Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8"))
        )
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migration files share a number: {versions}")
    return found


async def migrate(connection: asyncpg.Connection) -> list[Migration]:
    """Apply the migrations not yet recorded and return them.

    A session-level advisory lock serializes concurrent callers, so two workers
    starting together apply each file once. Each file runs in its own
    transaction together with its record in `schema_migration`.
    """
    applied_now: list[Migration] = []
    await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
    try:
        await connection.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migration (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await connection.fetch("SELECT version FROM schema_migration")
        done = {row["version"] for row in rows}
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migration (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info(
                "migration applied", version=migration.version, name=migration.name
            )
            applied_now.append(migration)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
    return applied_now


async def pending_migrations(connection: asyncpg.Connection) -> list[Migration]:
    """Return the migrations of this build that the database has not applied."""
    applied: set[int] = set()
    if await connection.fetchval("SELECT to_regclass('schema_migration')"):
        rows = await connection.fetch("SELECT version FROM schema_migration")
        applied = {row["version"] for row in rows}
    return [m for m in load_migrations() if m.version not in applied]
