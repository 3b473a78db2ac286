"""Outbox rows: a normalized event as the record the relay publishes."""

from __future__ import annotations

from typing import Any

OUTBOX_COLUMNS = ("ingest_event_id", "record_key", "value", "headers")


def outbox_row(
    document: dict[str, Any], value: bytes
) -> tuple[int, str | None, bytes, list[list[str]]]:
    """Return the outbox columns of a normalized event serialized as `value`."""
    carrier_event = document["eventType"] == "BATCH"
    key = document["carrierCode"] if carrier_event else document["sn"]
    headers = [
        ["ingest.event.type", document["eventType"]],
        ["ingest.source.system", document["sourceSystem"]],
        ["ingest.dedupe.key", document["dedupeKey"]],
    ]
    return int(document["eventId"]), key, value, headers
