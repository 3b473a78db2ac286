"""Outbox rows: a normalized event as the record the relay publishes."""

from __future__ import annotations

from typing import Any

import orjson


def outbox_row(document: dict[str, Any]) -> tuple[int, str | None, bytes, str]:
    """Return the outbox columns for one normalized event document."""
    key = (
        document["carrierCode"] if document["eventType"] == "BATCH" else document["sn"]
    )
    headers = [
        ["ingest.event.type", document["eventType"]],
        ["ingest.source.system", document["sourceSystem"]],
        ["ingest.dedupe.key", document["dedupeKey"]],
    ]
    return (
        int(document["eventId"]),
        key,
        orjson.dumps(document),
        orjson.dumps(headers).decode(),
    )
