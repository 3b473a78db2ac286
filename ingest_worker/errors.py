"""Errors of the ingest worker and their stable codes.

Every failure that a station or an operator can see carries one code from
`ErrorCode`. The tree of exception classes:

    IngestWorkerError              root of every error raised by this package
    ├── RecordRejected             one record cannot be ingested; has a code
    ├── MasterDataError            a master data file is invalid (seed)
    │   └── MappingDefinitionError an ingestMapping is invalid; names its field
    ├── ConfigurationError         a setting is missing or invalid
    ├── InfrastructureError        database or broker unreachable; retriable
    └── WorkerStopping             a stop came while the worker waited to retry
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable machine codes of rejected records."""

    ENVELOPE_UNREADABLE = "ENVELOPE_UNREADABLE"
    INGEST_PAYLOAD_INVALID = "INGEST_PAYLOAD_INVALID"
    EVENT_TYPE_MISMATCH = "EVENT_TYPE_MISMATCH"
    DEDUPE_KEY_CONFLICT = "DEDUPE_KEY_CONFLICT"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    UNIT_RUN_NOT_FOUND = "UNIT_RUN_NOT_FOUND"
    RUN_MISMATCH = "RUN_MISMATCH"
    ROUTE_VERSION_NOT_READY = "ROUTE_VERSION_NOT_READY"
    INGEST_MAPPING_MISSING = "INGEST_MAPPING_MISSING"
    STATION_NOT_FOUND = "STATION_NOT_FOUND"
    STATION_MISMATCH = "STATION_MISMATCH"
    UNIT_NOT_FOUND = "UNIT_NOT_FOUND"
    UNIT_RUN_MISMATCH = "UNIT_RUN_MISMATCH"
    UNIT_ALREADY_DONE = "UNIT_ALREADY_DONE"
    UNIT_OUT_FAILED = "UNIT_OUT_FAILED"
    UNIT_SCRAPPED = "UNIT_SCRAPPED"
    UNIT_ON_HOLD = "UNIT_ON_HOLD"
    UNIT_IN_STATION = "UNIT_IN_STATION"
    STEP_NOT_REACHED = "STEP_NOT_REACHED"
    STEP_MISMATCH = "STEP_MISMATCH"
    RUN_NOT_AUTHORIZED = "RUN_NOT_AUTHORIZED"
    RUN_IN_PREP = "RUN_IN_PREP"
    RUN_CLOSED = "RUN_CLOSED"
    DATA_SPEC_NOT_FOUND = "DATA_SPEC_NOT_FOUND"
    DATA_VALUE_INVALID = "DATA_VALUE_INVALID"
    DATA_SPEC_METHOD_MISMATCH = "DATA_SPEC_METHOD_MISMATCH"
    DATA_SPEC_TRIGGER_MISMATCH = "DATA_SPEC_TRIGGER_MISMATCH"
    REQUIRED_DATA_MISSING = "REQUIRED_DATA_MISSING"
    INGEST_CONFLICT = "INGEST_CONFLICT"
    # Not in the contract's list: a defect of the worker met this record. The
    # record is dead-lettered so that it can be replayed once the defect is
    # fixed, instead of stopping the partition.
    INGEST_INTERNAL_ERROR = "INGEST_INTERNAL_ERROR"


class IngestWorkerError(Exception):
    """Root of every error raised by this package."""


class RecordRejected(IngestWorkerError):
    """One record cannot be ingested.

    `detail` is JSON-serializable context for the dead-letter header. It
    contains the names and values that explain the code, not the payload.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class MasterDataError(IngestWorkerError):
    """A master data file is invalid; the message names the record and field."""


class MappingDefinitionError(MasterDataError):
    """An ingestMapping is invalid.

    `field` is the dotted location inside the mapping, such as
    `measurements.itemsPath`. The seed loader adds route and step to the message.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class ConfigurationError(IngestWorkerError):
    """A setting is missing or invalid."""


class InfrastructureError(IngestWorkerError):
    """The database or the broker cannot be reached; the work is retried."""


class WorkerStopping(IngestWorkerError):
    """A stop came while a batch waited for the database or the broker.

    The batch is left uncommitted, so its records are read again later.
    """
