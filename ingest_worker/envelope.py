"""Decoding and validation of the envelope that every input record carries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from ingest_worker.errors import ErrorCode, RecordRejected
from ingest_worker.mapping.timestamps import parse_rfc3339
from ingest_worker.settings import Limits
from ingest_worker.strict_json import load_object

EventType = Literal["AUTO", "BATCH", "TEST"]


class EnvelopeModel(BaseModel):
    """The JSON object of an input record; unknown top-level fields are kept."""

    model_config = ConfigDict(extra="allow", strict=True)

    dedupeKey: StrictStr = Field(min_length=1, max_length=256)
    sourceSystem: StrictStr = Field(min_length=1, max_length=128)
    eventType: EventType
    occurredAt: StrictStr
    runNo: StrictStr | None = Field(default=None, min_length=1)
    sn: StrictStr | None = Field(default=None, min_length=1)
    snList: list[StrictStr] | None = None
    payload: dict[str, Any]
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded, valid envelope with its content hash."""

    document: dict[str, Any]
    dedupe_key: str
    source_system: str
    event_type: EventType
    occurred_at: datetime
    run_no: str | None
    sn: str | None
    sn_list: tuple[str, ...] | None
    content_hash: bytes


def _unreadable(message: str, **detail: Any) -> RecordRejected:
    return RecordRejected(ErrorCode.ENVELOPE_UNREADABLE, message, detail)


def _field_errors(error: ValidationError) -> dict[str, str]:
    """Map each invalid field to pydantic's reason and the value it received."""
    fields: dict[str, str] = {}
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "$"
        reason = item["msg"]
        if item["type"] != "missing":
            value = item.get("input")
            shown = orjson.dumps(value, default=str).decode()
            if len(shown) > 60:
                shown = shown[:57] + "..."
            length = ""
            if item["type"] in ("string_too_long", "string_too_short"):
                length = f", {len(value)} characters"
            reason = f"{reason} (got {shown}{length})"
        fields.setdefault(location, reason)
    return fields


def content_hash(
    event_type: str,
    occurred_at: datetime,
    run_no: str | None,
    sn: str | None,
    sn_list: Any,
    payload: Any,
) -> bytes:
    """Hash what makes two events with one dedupe key the same event.

    SHA-256 over canonical JSON (sorted keys, no whitespace) of the event type,
    the occurrence time in UTC, runNo, sn, snList and payload.
    """
    canonical = orjson.dumps(
        {
            "eventType": event_type,
            "occurredAt": occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "runNo": run_no,
            "sn": sn,
            "snList": sn_list,
            "payload": payload,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).digest()


def decode_envelope(value: bytes | None, limits: Limits) -> Envelope:
    """Decode and validate one record value, or raise RecordRejected."""
    if not value:
        raise _unreadable(
            "the record value is empty; a station must send a JSON envelope",
            size=0,
        )
    if len(value) > limits.max_value_bytes:
        raise _unreadable(
            f"the record value has {len(value)} bytes, over the limit of "
            f"{limits.max_value_bytes}; split the event or raise the size limit",
            size=len(value),
            maxBytes=limits.max_value_bytes,
        )
    document = load_object(value, limits.max_nesting_depth)

    try:
        model = EnvelopeModel.model_validate(document)
    except ValidationError as error:
        fields = _field_errors(error)
        listed = "; ".join(f"{name}: {reason}" for name, reason in fields.items())
        raise RecordRejected(
            ErrorCode.INGEST_PAYLOAD_INVALID,
            f"the envelope is invalid: {listed}",
            {"fields": fields},
        ) from None
    try:
        occurred_at = parse_rfc3339(model.occurredAt)
    except ValueError as error:
        raise RecordRejected(
            ErrorCode.INGEST_PAYLOAD_INVALID,
            f"the envelope is invalid: occurredAt: {error}",
            {"fields": {"occurredAt": str(error)}},
        ) from None
    if model.snList is not None and len(model.snList) > limits.max_sn_list:
        raise RecordRejected(
            ErrorCode.INGEST_PAYLOAD_INVALID,
            f"the envelope is invalid: snList has {len(model.snList)} entries, "
            f"over the limit of {limits.max_sn_list}",
            {"fields": {"snList": f"more than {limits.max_sn_list} entries"}},
        )

    digest = content_hash(
        model.eventType,
        occurred_at,
        model.runNo,
        model.sn,
        model.snList,
        model.payload,
    )
    return Envelope(
        document=document,
        dedupe_key=model.dedupeKey,
        source_system=model.sourceSystem,
        event_type=model.eventType,
        occurred_at=occurred_at,
        run_no=model.runNo,
        sn=model.sn,
        sn_list=tuple(model.snList) if model.snList is not None else None,
        content_hash=digest,
    )
