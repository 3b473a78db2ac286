"""Decoding and validation of the envelope that every input record carries."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from ingest_worker.errors import ErrorCode, RecordRejected
from ingest_worker.mapping.timestamps import parse_rfc3339
from ingest_worker.settings import Limits

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


def _check_structure(document: Any, max_depth: int, has_nul_escape: bool) -> None:
    """Reject nesting deeper than the limit and strings PostgreSQL cannot store.

    PostgreSQL text and jsonb reject the NUL character, so a record containing
    one could never be stored; it is rejected here with its location.
    """
    stack: list[tuple[Any, int, str]] = [(document, 1, "$")]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, dict | list) and depth > max_depth:
            raise _unreadable(
                f"JSON nesting exceeds the limit of {max_depth} levels at {where}; "
                "flatten the payload or raise the nesting limit",
                maxDepth=max_depth,
                path=where,
            )
        if isinstance(node, dict):
            for key, value in node.items():
                if has_nul_escape and "\x00" in key:
                    raise _nul_error(f"{where} key")
                stack.append((value, depth + 1, f"{where}.{key}"))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                stack.append((value, depth + 1, f"{where}[{index}]"))
        elif has_nul_escape and isinstance(node, str) and "\x00" in node:
            raise _nul_error(where)


def _nul_error(where: str) -> RecordRejected:
    return RecordRejected(
        ErrorCode.INGEST_PAYLOAD_INVALID,
        f"the string at {where} contains a NUL character (\\u0000), which "
        "PostgreSQL cannot store; remove it at the station",
        {"fields": {where: "contains \\u0000"}},
    )


class _Ambiguous(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        repeated = sorted({key for key, _ in pairs if key in seen or seen.add(key)})
        raise _Ambiguous(
            f"an object has the key {', '.join(map(repr, repeated))} more than "
            "once, so its value is ambiguous; send each key once"
        )
    return document


def _exact_int(text: str) -> int:
    number = int(text)
    if not -(2**63) <= number < 2**64:
        raise _Ambiguous(
            f"the integer {text[:40]} is outside the 64-bit range and cannot be "
            "stored exactly; send it as a string"
        )
    return number


def _reparse_exactly(value: bytes) -> dict[str, Any]:
    """Parse again, rejecting what a JSON parser would otherwise guess at.

    orjson has already checked the syntax and UTF-8, but it keeps the last of
    repeated keys and turns integers beyond 64 bits into floats. The standard
    library parser, with hooks, rejects both.
    """
    try:
        document: dict[str, Any] = json.loads(
            value, object_pairs_hook=_unique_keys, parse_int=_exact_int
        )
    except _Ambiguous as error:
        raise RecordRejected(
            ErrorCode.INGEST_PAYLOAD_INVALID,
            f"the envelope is invalid: {error}",
            {"fields": {"$": str(error)}},
        ) from None
    return document


def _field_errors(error: ValidationError) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "$"
        fields.setdefault(location, item["msg"])
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
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _unreadable(
            f"the record value is not valid UTF-8 (byte {error.start}: "
            f"{error.reason}); stations must send UTF-8 JSON",
            position=error.start,
        ) from None
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        raise _unreadable(
            f"the record value is not valid JSON: {error}",
            position=error.pos,
        ) from None
    if not isinstance(document, dict):
        raise _unreadable(
            f"the record value is a JSON {type(document).__name__}, not an object",
            jsonType=type(document).__name__,
        )
    _check_structure(document, limits.max_nesting_depth, b"\\u0000" in value)
    document = _reparse_exactly(value)

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
