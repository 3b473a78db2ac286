"""Publish envelopes to the input topic of their event type."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import structlog
from aiokafka import AIOKafkaProducer

from ingest_worker.errors import ConfigurationError
from ingest_worker.mapping import CompiledPath, PathSyntaxError, compile_path
from ingest_worker.settings import Settings

log = structlog.get_logger(__name__)

# Paths tried for the record key when no key path is given: the unit serial
# for unit events, the carrier code for carrier events.
DEFAULT_KEY_PATHS = {
    "AUTO": ("sn", "payload.sn"),
    "TEST": ("sn", "payload.sn"),
    "BATCH": ("carrierCode", "meta.carrierCode", "payload.carrierCode"),
}


@dataclass
class PublishReport:
    published: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    # Records sent without a key because no key path matched.
    unkeyed: int = 0


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    key: bytes | None
    value: bytes


def _record_key(
    document: dict[str, object], paths: Iterable[CompiledPath]
) -> bytes | None:
    for path in paths:
        found = path.resolve(document)
        if len(found) == 1 and isinstance(found[0], str | int) and found[0] != "":
            return str(found[0]).encode()
    return None


def plan_records(
    lines: Iterable[tuple[str, bytes]],
    settings: Settings,
    *,
    topic: str | None = None,
    key_path: str | None = None,
) -> Iterator[OutgoingRecord | str]:
    """Turn JSON lines into records, or into a message for lines left out.

    With an explicit topic, every non-empty line is sent as it is, readable or
    not, so that malformed input can be fed to the worker on purpose.
    """
    try:
        custom_key = [compile_path(key_path)] if key_path else None
    except PathSyntaxError as error:
        raise ConfigurationError(f"invalid --key-path: {error}") from error
    for where, raw in lines:
        value = raw.strip()
        if not value:
            continue
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as error:
            document = None
            problem = f"{where}: not valid JSON ({error})"
        else:
            problem = f"{where}: not a JSON object with a known eventType"
        event_type = document.get("eventType") if isinstance(document, dict) else None
        if event_type not in DEFAULT_KEY_PATHS and topic is None:
            yield f"{problem}; pass --topic to send it anyway"
            continue
        key = None
        if isinstance(document, dict):
            paths = custom_key or [
                compile_path(path)
                for path in DEFAULT_KEY_PATHS.get(str(event_type), ())
            ]
            key = _record_key(document, paths)
        target = topic or settings.topics.topic_for(event_type)  # type: ignore[arg-type]
        yield OutgoingRecord(target, key, value)


def plan_envelopes(
    envelopes: Iterable[tuple[str, dict[str, object]] | str],
    settings: Settings,
    *,
    topic: str | None = None,
    key_path: str | None = None,
) -> Iterator[OutgoingRecord | str]:
    """Turn prepared (source, envelope) pairs into records like `plan_records`.

    A string in the input is a message about an input left out, and it is
    passed through to the report.
    """
    for item in envelopes:
        if isinstance(item, str):
            yield item
            continue
        where, envelope = item
        yield from plan_records(
            [(where, orjson.dumps(envelope))], settings, topic=topic, key_path=key_path
        )


def read_lines(path: Path) -> Iterator[tuple[str, bytes]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            yield f"{path.name}:{number}", line


async def publish_records(
    producer: AIOKafkaProducer, records: Iterable[OutgoingRecord | str]
) -> PublishReport:
    """Send the records and wait until the broker acknowledged each one."""
    report = PublishReport()
    pending = []
    for record in records:
        if isinstance(record, str):
            log.warning("line skipped", reason=record)
            report.skipped.append(record)
            continue
        pending.append(await producer.send(record.topic, record.value, key=record.key))
        report.published[record.topic] = report.published.get(record.topic, 0) + 1
        if record.key is None:
            report.unkeyed += 1
    for future in pending:
        await future
    return report
