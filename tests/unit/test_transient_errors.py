"""Which failures count as a server being away: those are retried, not raised."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError

from ingest_worker.outbox.relay import _retriable
from ingest_worker.storage.database import is_transient


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "refused"),
        FileNotFoundError(2, "no socket"),
        TimeoutError(),
        asyncpg.exceptions.CannotConnectNowError("shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating"),
        asyncpg.exceptions.SerializationError("could not serialize"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock"),
        asyncpg.exceptions.ConnectionDoesNotExistError("closed"),
        asyncpg.exceptions.InterfaceError(
            "cannot call Transaction.__aexit__(): the underlying connection is closed"
        ),
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
    ],
)
def test_outage_errors_are_transient(error: BaseException) -> None:
    assert is_transient(error)
    assert _retriable(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        asyncpg.exceptions.DataError("invalid input"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.UndefinedTableError("no table"),
        asyncpg.exceptions.InternalClientError("unexpected message"),
    ],
)
def test_defects_are_not_transient(error: BaseException) -> None:
    assert not is_transient(error)
    assert not _retriable(error)


def test_broker_errors_retried_by_relay() -> None:
    assert _retriable(KafkaConnectionError())
