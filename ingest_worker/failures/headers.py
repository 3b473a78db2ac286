"""The `ingest.*` headers that explain a dead-lettered or retried record."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
from aiokafka import ConsumerRecord

from ingest_worker.errors import RecordRejected
from ingest_worker.mapping import format_utc

PREFIX = "ingest."
CODE = "ingest.error.code"
MESSAGE = "ingest.error.message"
DETAIL = "ingest.error.detail"
ORIGIN_TOPIC = "ingest.origin.topic"
ORIGIN_PARTITION = "ingest.origin.partition"
ORIGIN_OFFSET = "ingest.origin.offset"
ORIGIN_TIMESTAMP = "ingest.origin.timestamp"
ATTEMPT = "ingest.attempt"
FAILED_AT = "ingest.failed.at"
REPLAY_COUNT = "ingest.replay.count"
RETRY_DUE = "ingest.retry.due"
# Set on a failed record whose value the broker would not take back.
VALUE_DROPPED = "ingest.value.dropped"
VALUE_SIZE = "ingest.value.size"
VALUE_SHA256 = "ingest.value.sha256"

Headers = list[tuple[str, bytes]]


def header_value(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """Return the last value of a header as text, or None."""
    found: str | None = None
    for key, value in headers:
        if key == name and value is not None:
            found = value.decode("utf-8", errors="replace")
    return found


def int_header(headers: Sequence[tuple[str, bytes]], name: str, default: int) -> int:
    value = header_value(headers, name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def failure_headers(
    record: ConsumerRecord[bytes, bytes],
    error: RecordRejected,
    *,
    retry_topic: str | None = None,
    failed_at: datetime | None = None,
) -> Headers:
    """Keep the record's own headers and add why and where it failed.

    Headers of an earlier failure are replaced and the replay count is kept. A
    record read from the retry topic keeps the origin it had. A replayed record,
    read from its origin topic again, gets its new position.

    `ingest.attempt` counts the deliveries that failed: 1 for a record read
    from an input topic, one more than before for a record read from the retry
    topic.
    """
    original = list(record.headers or ())
    origin_topic = header_value(original, ORIGIN_TOPIC)
    if origin_topic is not None and origin_topic != record.topic:
        origin_partition = header_value(original, ORIGIN_PARTITION) or ""
        origin_offset = header_value(original, ORIGIN_OFFSET) or ""
        origin_timestamp = header_value(original, ORIGIN_TIMESTAMP) or ""
    else:
        origin_topic = record.topic
        origin_partition = str(record.partition)
        origin_offset = str(record.offset)
        origin_timestamp = format_utc(
            datetime.fromtimestamp(record.timestamp / 1000, UTC)
        )
    attempt = int_header(original, ATTEMPT, 0) + 1 if record.topic == retry_topic else 1
    replay_count = int_header(original, REPLAY_COUNT, 0)
    kept = [(key, value) for key, value in original if not key.startswith(PREFIX)]
    moment = failed_at or datetime.now(UTC)
    added = {
        CODE: str(error.code),
        MESSAGE: error.message,
        DETAIL: orjson.dumps(error.detail, default=str).decode(),
        ORIGIN_TOPIC: origin_topic,
        ORIGIN_PARTITION: origin_partition,
        ORIGIN_OFFSET: origin_offset,
        ORIGIN_TIMESTAMP: origin_timestamp,
        ATTEMPT: str(attempt),
        FAILED_AT: format_utc(moment),
        REPLAY_COUNT: str(replay_count),
    }
    return kept + [(key, value.encode()) for key, value in added.items()]
