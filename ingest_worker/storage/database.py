"""Connections to PostgreSQL."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import asyncpg
import orjson

# SQLSTATE classes and codes that mean "try the same work again later".
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"}
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53")


class RawJson(bytes):
    """JSON text that is already serialized; stored in a jsonb column as it is."""


# The binary jsonb format is a version byte followed by the JSON text.
_JSONB_VERSION = b"\x01"


def _encode_jsonb(value: Any) -> bytes:
    if isinstance(value, RawJson):
        return _JSONB_VERSION + value
    return _JSONB_VERSION + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init_connection(connection: asyncpg.Connection) -> None:
    # jsonb values travel as Python objects both ways, encoded by orjson. The
    # binary format lets COPY write jsonb columns too.
    await connection.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


async def connect(database_url: str) -> asyncpg.Connection:
    """Open one connection with the JSON codecs the worker relies on."""
    connection = await asyncpg.connect(database_url)
    await _init_connection(connection)
    return connection


async def create_pool(
    database_url: str, *, max_size: int = 4, min_size: int = 1
) -> asyncpg.Pool:
    """Open a connection pool with the JSON codecs the worker relies on.

    With `min_size` 0 no connection is opened until one is acquired, so the
    pool can be created while the server is still unreachable.
    """
    pool = await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, init=_init_connection
    )
    assert pool is not None
    return pool


# Query parameters of a libpq URL that carry a secret.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """Return the URL with every password replaced by ***, for logs and messages.

    Passwords may stand in the user part or in the query string
    (`?password=...`). A value that does not parse as a URL is replaced whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if not parts.scheme:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, location = netloc.rpartition("@")
        user, has_password, _ = credentials.partition(":")
        netloc = f"{user}:***@{location}" if has_password else f"{user}@{location}"
    query = "&".join(
        f"{name}=***" if name.lower() in _SECRET_PARAMETERS else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def is_transient(error: BaseException) -> bool:
    """Tell whether a database error is worth retrying unchanged.

    Lost or refused connections, timeouts, serialization failures, deadlocks
    and a server shutting down or starting are transient.
    """
    if isinstance(error, OSError | TimeoutError | ConnectionError):
        return True
    if isinstance(error, asyncpg.exceptions.PostgresConnectionError):
        return True
    # When the server ends a connection between two statements, asyncpg may
    # refuse the next one with "cannot switch to state". The connection is
    # then discarded, and nothing it had open was committed.
    if isinstance(
        error, asyncpg.exceptions.InternalClientError
    ) and "cannot switch to state" in str(error):
        return True
    # asyncpg reports a closed connection as a plain InterfaceError; its data
    # and configuration subclasses are defects, not outages.
    if isinstance(error, asyncpg.exceptions.InterfaceError) and not isinstance(
        error,
        asyncpg.exceptions.DataError | asyncpg.exceptions.ClientConfigurationError,
    ):
        return True
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith(
            _TRANSIENT_SQLSTATE_CLASSES
        )
    return False
