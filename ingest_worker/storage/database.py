"""Connections to PostgreSQL."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson


def _encode_json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(connection: asyncpg.Connection) -> None:
    # jsonb values travel as Python objects both ways, encoded by orjson.
    await connection.set_type_codec(
        "jsonb", encoder=_encode_json, decoder=orjson.loads, schema="pg_catalog"
    )


async def connect(database_url: str) -> asyncpg.Connection:
    """Open one connection with the JSON codecs the worker relies on."""
    connection = await asyncpg.connect(database_url)
    await _init_connection(connection)
    return connection


async def create_pool(database_url: str, *, max_size: int = 4) -> asyncpg.Pool:
    """Open a connection pool with the JSON codecs the worker relies on."""
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=max_size, init=_init_connection
    )
    assert pool is not None
    return pool


def redact_url(url: str) -> str:
    """Return the URL without its password, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{location}" if user else f"{scheme}://{location}"
