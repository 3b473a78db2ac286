"""Select, summarize and replay the records on the dead-letter topic.

Every command reads the topic up to the end offsets taken when it starts, so
records dead-lettered while it runs are left to the next run. `list` and `show`
read from the beginning without a consumer group. `replay` stores its progress
as the committed offsets of its own consumer group. It uses the group only to
store offsets, because it assigns the partitions itself and never joins it.

NOTE: nothing stops two replays from running at once. Both would read from the
same committed offsets and publish the same records twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.structs import OffsetAndMetadata

from ingest_worker.errors import ConfigurationError
from ingest_worker.failures.headers import (
    CODE,
    FAILED_AT,
    ORIGIN_TOPIC,
    PREFIX,
    REPLAY_COUNT,
    Headers,
    header_value,
    int_header,
)
from ingest_worker.kafka import make_consumer, make_producer
from ingest_worker.mapping import format_utc, parse_rfc3339
from ingest_worker.settings import Settings
from ingest_worker.strict_json import exact_object

log = structlog.get_logger(__name__)

# Records handled between two commits of the replay progress. A replay that
# stops on an error replays at most this many records again on the next run.
COMMIT_INTERVAL_RECORDS = 500
# How long reading waits for a partition's first fetch to learn its real end.
_END_CHECK_TIMEOUT_S = 10.0
_FETCH_TIMEOUT_MS = 500
# Records that cannot be replayed are logged one by one up to this count.
_MAX_INVALID_WARNINGS = 10

ProgressCallback = Callable[["ScanProgress"], None]


def replay_group_id(settings: Settings) -> str:
    """Return the consumer group that stores the replay progress."""
    return f"{settings.group_id}.dlq-replay"


@dataclass(frozen=True)
class DeadLetter:
    """A record of the dead-letter topic with the fields that the filters read.

    `source_system` and `dedupe_key` come from the envelope and are None when
    the value is not a JSON object or lacks them. `failed_at` is None when the
    `ingest.failed.at` header is missing or not an RFC 3339 timestamp.
    """

    record: ConsumerRecord[bytes, bytes]
    code: str | None
    source_system: str | None
    dedupe_key: str | None
    failed_at: datetime | None
    replay_count: int
    origin_topic: str | None

    @classmethod
    def from_record(cls, record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        headers = list(record.headers or ())
        source_system, dedupe_key = _envelope_identity(record.value)
        return cls(
            record=record,
            code=header_value(headers, CODE),
            source_system=source_system,
            dedupe_key=dedupe_key,
            failed_at=_parse_failed_at(header_value(headers, FAILED_AT)),
            replay_count=int_header(headers, REPLAY_COUNT, 0),
            origin_topic=header_value(headers, ORIGIN_TOPIC),
        )


def _envelope_identity(value: bytes | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    document = exact_object(value)
    if document is None:
        return None, None
    source_system = document.get("sourceSystem")
    dedupe_key = document.get("dedupeKey")
    return (
        source_system if isinstance(source_system, str) else None,
        dedupe_key if isinstance(dedupe_key, str) else None,
    )


def _parse_failed_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Selection:
    """Filters of the dlq commands.

    A record is selected when it matches every filter that is set. `since` is
    inclusive and `until` exclusive. Both compare with `ingest.failed.at`, so a
    record without a readable failure time matches neither of them.
    """

    codes: frozenset[str] = frozenset()
    source_system: str | None = None
    dedupe_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.codes and letter.code not in self.codes:
            return False
        if self.source_system is not None and letter.source_system != (
            self.source_system
        ):
            return False
        if self.dedupe_key is not None and letter.dedupe_key != self.dedupe_key:
            return False
        if self.since is not None and (
            letter.failed_at is None or letter.failed_at < self.since
        ):
            return False
        return self.until is None or (
            letter.failed_at is not None and letter.failed_at < self.until
        )


@dataclass
class ScanProgress:
    """Counts of a scan over the dead-letter topic, for a progress display."""

    total: int = 0
    read: int = 0
    selected: int = 0
    replayed: int = 0
    skipped: int = 0
    # Set in the last report of a replay run, before its closing log line.
    finished: bool = False


# Reading the topic


def _consumer_without_group(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **settings.kafka.client_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=settings.limits.max_value_bytes + 64 * 1024,
        fetch_max_bytes=max(52_428_800, settings.limits.max_value_bytes * 2),
    )


async def _assign_topic(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise ConfigurationError(
            f"dead-letter topic {topic} not found; check INGEST_TOPIC_DLQ or "
            "create the topics with `ingest-worker topics ensure`"
        )
    assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
    consumer.assign(assigned)
    return assigned


@dataclass(frozen=True)
class _OffsetRange:
    starts: dict[TopicPartition, int]
    ends: dict[TopicPartition, int]

    @property
    def total(self) -> int:
        return sum(max(0, self.ends[tp] - self.starts[tp]) for tp in self.ends)


async def _seek_range(
    consumer: AIOKafkaConsumer, topic: str, *, resume: bool
) -> _OffsetRange:
    """Assign every partition of the topic and seek to where reading starts.

    With `resume`, reading starts at the committed offset of the consumer's
    group, or at the beginning of a partition without one.
    """
    assigned = await _assign_topic(consumer, topic)
    beginnings = await consumer.beginning_offsets(assigned)
    ends = await consumer.end_offsets(assigned)
    starts: dict[TopicPartition, int] = {}
    for tp in assigned:
        start = beginnings[tp]
        committed = await consumer.committed(tp) if resume else None
        if committed is not None:
            if committed > ends[tp]:
                log.warning(
                    "committed replay offset is beyond the end of the partition, "
                    "so the partition is not read",
                    hint="if the topic was recreated, use --from-beginning",
                    topic=tp.topic,
                    partition=tp.partition,
                    committed=committed,
                    end=ends[tp],
                )
            start = max(start, committed)
        consumer.seek(tp, start)
        starts[tp] = start
    return _OffsetRange(starts, ends)


async def _read_range(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
) -> AsyncGenerator[ConsumerRecord[bytes, bytes], None]:
    """Yield the records from the current positions up to the end offsets.

    The end offsets are widened once per partition, after its first fetch, to
    the fetch's high watermark, because some brokers report too small an end
    offset (see `end_positions`). Records produced after that stay unread.
    """
    unchecked = set(ends)
    deadline = asyncio.get_running_loop().time() + _END_CHECK_TIMEOUT_S
    while True:
        behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
        if asyncio.get_running_loop().time() > deadline:
            unchecked.clear()
        behind += [tp for tp in unchecked if tp not in behind]
        if not behind:
            return
        fetched = await consumer.getmany(*behind, timeout_ms=_FETCH_TIMEOUT_MS)
        for tp in list(unchecked):
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = max(ends[tp], highwater)
                unchecked.discard(tp)
        for tp in sorted(fetched):
            for record in fetched[tp]:
                # A fetch may return records produced after the run started.
                if record.offset < ends[tp]:
                    yield record


# list and show


async def select_dead_letters(
    settings: Settings,
    selection: Selection,
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
) -> AsyncGenerator[DeadLetter, None]:
    """Yield the selected dead letters, read from the beginning of the topic.

    Stops after `limit` selected records when a limit is given. Use it inside
    `contextlib.aclosing` so that the consumer stops when the loop breaks.
    """
    consumer = _consumer_without_group(settings)
    await consumer.start()
    try:
        offsets = await _seek_range(consumer, settings.topics.dlq, resume=False)
        counts = ScanProgress(total=offsets.total)
        records = _read_range(consumer, offsets.ends)
        async with contextlib.aclosing(records):
            async for record in records:
                counts.read += 1
                letter = DeadLetter.from_record(record)
                selected = selection.matches(letter)
                if selected:
                    counts.selected += 1
                if progress is not None:
                    progress(counts)
                if selected:
                    yield letter
                    if limit is not None and counts.selected >= limit:
                        return
    finally:
        await consumer.stop()


@dataclass
class SummaryRow:
    """Dead letters of one error code and source system."""

    code: str | None
    source_system: str | None
    count: int = 0
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None

    def add(self, failed_at: datetime | None) -> None:
        self.count += 1
        if failed_at is None:
            return
        if self.first_failed_at is None or failed_at < self.first_failed_at:
            self.first_failed_at = failed_at
        if self.last_failed_at is None or failed_at > self.last_failed_at:
            self.last_failed_at = failed_at

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "sourceSystem": self.source_system,
            "count": self.count,
            "firstFailedAt": _format_optional(self.first_failed_at),
            "lastFailedAt": _format_optional(self.last_failed_at),
        }


def _format_optional(moment: datetime | None) -> str | None:
    return format_utc(moment) if moment is not None else None


def summarize(letters: Iterable[DeadLetter]) -> list[SummaryRow]:
    """Group dead letters by code and source system, sorted by both.

    A missing code or source system is a group of its own and sorts last.
    """
    rows: dict[tuple[str | None, str | None], SummaryRow] = {}
    for letter in letters:
        group = (letter.code, letter.source_system)
        if group not in rows:
            rows[group] = SummaryRow(letter.code, letter.source_system)
        rows[group].add(letter.failed_at)
    return sorted(
        rows.values(),
        key=lambda row: (
            row.code is None,
            row.code or "",
            row.source_system is None,
            row.source_system or "",
        ),
    )


async def summarize_dead_letters(
    settings: Settings,
    selection: Selection,
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[SummaryRow]:
    """Read the selected dead letters and summarize them by code and source."""
    letters = select_dead_letters(settings, selection, limit=limit, progress=progress)
    async with contextlib.aclosing(letters):
        return summarize([letter async for letter in letters])


def _encode_bytes(data: bytes | None) -> tuple[str | None, str | None]:
    """Return bytes as (text, "text") when UTF-8, else as (base64, "base64")."""
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def describe_record(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """Return a JSON-ready view of a record with every header.

    Keys and header values are text, or base64 when they are not UTF-8, and
    `keyEncoding` or `encoding` names the form. The value is the parsed JSON
    when it parses, else text or base64, and `valueEncoding` names the form.
    """
    key, key_encoding = _encode_bytes(record.key)
    headers = []
    for name, raw in record.headers or ():
        text, encoding = _encode_bytes(raw)
        headers.append({"name": name, "value": text, "encoding": encoding})
    value: Any
    value_encoding: str | None
    # A value that is no unambiguous JSON object, such as one with a repeated
    # key, is shown as its text, exactly as stored.
    document = exact_object(record.value) if record.value is not None else None
    if document is not None:
        value, value_encoding = document, "json"
    else:
        value, value_encoding = _encode_bytes(record.value)
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": format_utc(datetime.fromtimestamp(record.timestamp / 1000, UTC)),
        "key": key,
        "keyEncoding": key_encoding,
        "headers": headers,
        "value": value,
        "valueEncoding": value_encoding,
    }


# replay


def replay_headers(headers: Sequence[tuple[str, bytes]], replay_count: int) -> Headers:
    """Return the original headers of a dead letter with the replay count raised.

    Every other `ingest.*` header is dropped, so the worker treats the replayed
    record as a new delivery: first attempt, no earlier error.
    """
    kept = [(name, value) for name, value in headers if not name.startswith(PREFIX)]
    return [*kept, (REPLAY_COUNT, str(replay_count + 1).encode())]


@dataclass
class ReplayReport:
    """Outcome of a replay run."""

    total: int = 0
    read: int = 0
    replayed: int = 0
    skipped_max_replays: int = 0
    # Records that cannot be replayed: the origin header is missing or names a
    # topic that is not an input topic, or the record has neither key nor value.
    skipped_invalid: int = 0
    not_selected: int = 0
    replayed_by_topic: dict[str, int] = field(default_factory=dict)
    # True when the stop event ended the run before the end offsets.
    stopped: bool = False
    dry_run: bool = False

    @property
    def skipped(self) -> int:
        return self.skipped_max_replays + self.skipped_invalid

    def progress(self) -> ScanProgress:
        return ScanProgress(
            total=self.total,
            read=self.read,
            selected=self.replayed + self.skipped,
            replayed=self.replayed,
            skipped=self.skipped,
        )


async def replay_dead_letters(
    settings: Settings,
    selection: Selection,
    *,
    limit: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    from_beginning: bool = False,
    progress: ProgressCallback | None = None,
    on_replay: Callable[[DeadLetter, str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> ReplayReport:
    """Publish the selected dead letters back to their origin topics.

    Reading starts at the committed offsets of the replay group, or at offset 0
    with `from_beginning`. The offsets are committed after the publishes that
    they cover are acknowledged: every `COMMIT_INTERVAL_RECORDS` records, at
    the end offsets taken at the start, after the `limit`-th replayed record,
    and when `stop` is set. Records that are not selected or are skipped are
    committed too, so the next run starts after them.

    A record whose `ingest.replay.count` reached `settings.max_replays` is
    skipped unless `force` is set. `on_replay` receives each record and its
    origin topic when the record is sent, or in a dry run when it would be. A
    dry run publishes and commits nothing. A broker error is raised as it is.
    The offsets committed before it stand, so the next run publishes at most
    `COMMIT_INTERVAL_RECORDS` records again.
    """
    input_topics = set(settings.topics.input_topics())
    # With `force`, no replay count is too high.
    max_replays = None if force else settings.max_replays
    report = ReplayReport(dry_run=dry_run)
    consumer = make_consumer(settings, replay_group_id(settings))
    producer = None if dry_run else make_producer(settings)
    await consumer.start()
    try:
        if producer is not None:
            await producer.start()
        offsets = await _seek_range(
            consumer, settings.topics.dlq, resume=not from_beginning
        )
        report.total = offsets.total
        log.info(
            "dead-letter replay started",
            topic=settings.topics.dlq,
            group_id=replay_group_id(settings),
            records=report.total,
            from_beginning=from_beginning,
            dry_run=dry_run,
        )
        committer = _ReplayCommitter(consumer, enabled=not dry_run)
        records = _read_range(consumer, offsets.ends)
        async with contextlib.aclosing(records):
            async for record in records:
                letter = DeadLetter.from_record(record)
                origin = _replay_target(
                    letter, selection, input_topics, max_replays, report
                )
                if origin is not None:
                    if producer is not None:
                        committer.pending.append(
                            await _publish(producer, letter, origin)
                        )
                    report.replayed += 1
                    report.replayed_by_topic[origin] = (
                        report.replayed_by_topic.get(origin, 0) + 1
                    )
                    if on_replay is not None:
                        on_replay(letter, origin)
                report.read += 1
                committer.handled(record)
                if progress is not None:
                    progress(report.progress())
                if limit is not None and report.replayed >= limit:
                    break
                if stop is not None and stop.is_set():
                    report.stopped = True
                    break
                if committer.uncommitted >= COMMIT_INTERVAL_RECORDS:
                    await committer.commit()
        await committer.commit()
        if progress is not None:
            final = report.progress()
            final.finished = True
            progress(final)
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
    log.info(
        "dead-letter replay finished",
        read=report.read,
        replayed=report.replayed,
        skipped_max_replays=report.skipped_max_replays,
        skipped_invalid=report.skipped_invalid,
        not_selected=report.not_selected,
        stopped=report.stopped,
        dry_run=dry_run,
    )
    return report


async def _publish(
    producer: AIOKafkaProducer, letter: DeadLetter, origin: str
) -> asyncio.Future[Any]:
    """Send a dead letter to its origin topic and return the delivery future."""
    record = letter.record
    return await producer.send(
        origin,
        value=record.value,
        key=record.key,
        headers=replay_headers(record.headers or (), letter.replay_count),
    )


def _replay_target(
    letter: DeadLetter,
    selection: Selection,
    input_topics: set[str],
    max_replays: int | None,
    report: ReplayReport,
) -> str | None:
    """Return the topic to replay a dead letter to, or None after counting why not."""
    if not selection.matches(letter):
        report.not_selected += 1
        return None
    record = letter.record
    problem = None
    if letter.origin_topic not in input_topics:
        problem = "its origin topic is not an input topic"
    elif record.key is None and record.value is None:
        # Kafka clients, aiokafka among them, reject a record without both.
        problem = "it has neither key nor value"
    if problem is not None:
        report.skipped_invalid += 1
        if report.skipped_invalid <= _MAX_INVALID_WARNINGS:
            log.warning(
                "dead letter skipped",
                reason=problem,
                origin_topic=letter.origin_topic,
                input_topics=sorted(input_topics),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        return None
    if max_replays is not None and letter.replay_count >= max_replays:
        report.skipped_max_replays += 1
        return None
    return letter.origin_topic


class _ReplayCommitter:
    """Offset commits that wait until the publishes they cover are acknowledged."""

    def __init__(self, consumer: AIOKafkaConsumer, *, enabled: bool) -> None:
        self._consumer = consumer
        self._enabled = enabled
        self._next_offsets: dict[TopicPartition, int] = {}
        self.pending: list[asyncio.Future[Any]] = []
        self.uncommitted = 0

    def handled(self, record: ConsumerRecord[bytes, bytes]) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self._next_offsets[tp] = record.offset + 1
        self.uncommitted += 1

    async def commit(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, []
            await asyncio.gather(*pending)
        if not self._enabled or not self._next_offsets:
            return
        await self._consumer.commit(
            {
                tp: OffsetAndMetadata(offset, "")
                for tp, offset in self._next_offsets.items()
            }
        )
        self._next_offsets.clear()
        self.uncommitted = 0
