"""The dlq list, show and replay commands over the real broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from ingest_worker.cli.dlq import ProgressLine
from ingest_worker.cli.main import main
from ingest_worker.errors import ErrorCode, RecordRejected
from ingest_worker.failures.dlq import (
    DeadLetter,
    ScanProgress,
    Selection,
    describe_record,
    replay_dead_letters,
    replay_group_id,
    select_dead_letters,
    summarize_dead_letters,
)
from ingest_worker.failures.headers import REPLAY_COUNT, failure_headers
from ingest_worker.kafka import make_consumer, make_producer
from ingest_worker.mapping import parse_rfc3339
from ingest_worker.settings import Settings
from tests.integration.support import (
    INGEST_WORKER,
    cli_environment,
    headers_of,
    read_topic,
)

pytestmark = pytest.mark.integration


def at(text: str) -> datetime:
    return parse_rfc3339(f"2026-12-04T{text}Z")


def envelope(source_system: str, dedupe_key: str) -> bytes:
    return orjson.dumps(
        {
            "dedupeKey": dedupe_key,
            "sourceSystem": source_system,
            "eventType": "AUTO",
            "occurredAt": "2026-12-04T05:59:00.000+01:00",
            "sn": "SN-2026-01001",
            "payload": {"result": "PASS"},
        }
    )


def consumer_record(
    *,
    topic: str = "mes.ingest.auto",
    timestamp_ms: int = int(at("06:00:00").timestamp() * 1000),
    key: bytes | None = None,
    value: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> ConsumerRecord[bytes, bytes]:
    """Build a record as a consumer returns it, at partition 1, offset 42."""
    return ConsumerRecord(
        topic=topic,
        partition=1,
        offset=42,
        timestamp=timestamp_ms,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers or [],
    )


@dataclass
class Letter:
    """A dead letter to produce: the original record and why it failed."""

    label: str
    code: ErrorCode
    failed_at: datetime
    value: bytes | None
    key: bytes | None = b"SN-2026-01001"
    origin: str = "auto"
    replay_count: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def dead_letter_headers(settings: Settings, letter: Letter) -> list[tuple[str, bytes]]:
    """Build the headers that the worker adds when it dead-letters a record."""
    origin_topic = getattr(settings.topics, letter.origin)
    original = [("trace-id", letter.label.encode()), *letter.headers]
    if letter.replay_count:
        original.append((REPLAY_COUNT, str(letter.replay_count).encode()))
    record = consumer_record(
        topic=origin_topic,
        timestamp_ms=int(letter.failed_at.timestamp() * 1000) - 1000,
        key=letter.key,
        value=letter.value,
        headers=original,
    )
    error = RecordRejected(letter.code, f"{letter.code} for {letter.label}", {})
    return failure_headers(record, error, failed_at=letter.failed_at)


async def produce_dead_letters(settings: Settings, letters: Sequence[Letter]) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for letter in letters:
            await producer.send_and_wait(
                settings.topics.dlq,
                letter.value,
                key=letter.key,
                headers=dead_letter_headers(settings, letter),
            )
    finally:
        await producer.stop()


def label_of(headers: Sequence[tuple[str, bytes]]) -> str:
    return dict(headers)["trace-id"].decode()


async def selected_labels(
    settings: Settings, selection: Selection, limit: int | None = None
) -> list[str]:
    letters = select_dead_letters(settings, selection, limit=limit)
    async with contextlib.aclosing(letters):
        return sorted([label_of(letter.record.headers) async for letter in letters])


async def committed_replay_offsets(settings: Settings) -> dict[int, int | None]:
    consumer = make_consumer(settings, replay_group_id(settings))
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(settings.topics.dlq)
        if not partitions:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(settings.topics.dlq) or set()
        return {
            partition: await consumer.committed(
                TopicPartition(settings.topics.dlq, partition)
            )
            for partition in sorted(partitions)
        }
    finally:
        await consumer.stop()


async def dlq_end_offsets(settings: Settings) -> dict[int, int]:
    consumer = make_consumer(settings, replay_group_id(settings))
    await consumer.start()
    try:
        partitions = [
            TopicPartition(settings.topics.dlq, partition) for partition in range(3)
        ]
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def origin_labels(settings: Settings, topic: str) -> list[str]:
    return sorted(
        label_of(record.headers) for record in await read_topic(settings, topic)
    )


async def run_cli(settings: Settings, *arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        INGEST_WORKER,
        "dlq",
        *arguments,
        env=cli_environment(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


# A mix of codes, source systems and failure times. The trace-id header is the
# label that the checks use. "unreadable" has a value that is not JSON.
MIXED = [
    Letter(
        "spi-1", ErrorCode.STATION_NOT_FOUND, at("06:00:00"), envelope("SPI-01", "dk-1")
    ),
    Letter(
        "spi-2",
        ErrorCode.STATION_NOT_FOUND,
        at("06:10:00"),
        envelope("SPI-01", "dk-2"),
        key=b"SN-2",
    ),
    Letter(
        "aoi-3",
        ErrorCode.STATION_NOT_FOUND,
        at("06:05:00"),
        envelope("AOI-01", "dk-3"),
        key=b"SN-3",
    ),
    Letter(
        "spi-4",
        ErrorCode.RUN_NOT_FOUND,
        at("06:20:00"),
        envelope("SPI-01", "dk-4"),
        key=b"SN-4",
    ),
    Letter(
        "unreadable",
        ErrorCode.ENVELOPE_UNREADABLE,
        at("06:30:00"),
        b"\xff\xfe not json",
        key=None,
    ),
    Letter(
        "aoi-1",
        ErrorCode.DEDUPE_KEY_CONFLICT,
        at("06:15:00"),
        envelope("AOI-01", "dk-1"),
        key=b"SN-6",
    ),
]


async def test_list_groups_by_code_and_source(settings: Settings) -> None:
    await produce_dead_letters(settings, MIXED)

    rows = await summarize_dead_letters(settings, Selection())

    summary = [
        (
            row.code,
            row.source_system,
            row.count,
            row.first_failed_at,
            row.last_failed_at,
        )
        for row in rows
    ]
    assert summary == [
        ("DEDUPE_KEY_CONFLICT", "AOI-01", 1, at("06:15:00"), at("06:15:00")),
        ("ENVELOPE_UNREADABLE", None, 1, at("06:30:00"), at("06:30:00")),
        ("RUN_NOT_FOUND", "SPI-01", 1, at("06:20:00"), at("06:20:00")),
        ("STATION_NOT_FOUND", "AOI-01", 1, at("06:05:00"), at("06:05:00")),
        ("STATION_NOT_FOUND", "SPI-01", 2, at("06:00:00"), at("06:10:00")),
    ]
    filtered = await summarize_dead_letters(
        settings, Selection(codes=frozenset({"STATION_NOT_FOUND"}))
    )
    assert [row.count for row in filtered] == [1, 2]


async def test_filters_select_records(settings: Settings) -> None:
    await produce_dead_letters(settings, MIXED)
    snf = "STATION_NOT_FOUND"
    cases = [
        (Selection(), ["aoi-1", "aoi-3", "spi-1", "spi-2", "spi-4", "unreadable"]),
        (Selection(codes=frozenset({snf})), ["aoi-3", "spi-1", "spi-2"]),
        (
            Selection(codes=frozenset({snf, "RUN_NOT_FOUND"})),
            ["aoi-3", "spi-1", "spi-2", "spi-4"],
        ),
        (Selection(codes=frozenset({"UNIT_SCRAPPED"})), []),
        (Selection(source_system="SPI-01"), ["spi-1", "spi-2", "spi-4"]),
        (Selection(source_system="AOI-01"), ["aoi-1", "aoi-3"]),
        (Selection(dedupe_key="dk-1"), ["aoi-1", "spi-1"]),
        (Selection(dedupe_key="dk-1", source_system="AOI-01"), ["aoi-1"]),
        (Selection(codes=frozenset({snf}), source_system="AOI-01"), ["aoi-3"]),
        # since is inclusive and until exclusive.
        (Selection(since=at("06:10:00")), ["aoi-1", "spi-2", "spi-4", "unreadable"]),
        (Selection(until=at("06:10:00")), ["aoi-3", "spi-1"]),
        (
            Selection(since=at("06:05:00"), until=at("06:20:00")),
            ["aoi-1", "aoi-3", "spi-2"],
        ),
        # The same instant written with another offset.
        (
            Selection(since=parse_rfc3339("2026-12-04T08:10:00+02:00")),
            ["aoi-1", "spi-2", "spi-4", "unreadable"],
        ),
    ]
    for selection, expected in cases:
        assert await selected_labels(settings, selection) == expected, selection

    limited = await selected_labels(settings, Selection(source_system="SPI-01"), 2)
    assert len(limited) == 2
    assert set(limited) <= {"spi-1", "spi-2", "spi-4"}


async def test_dead_letter_without_failed_at(settings: Settings) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topics.dlq,
            envelope("SPI-01", "dk-9"),
            key=b"SN-9",
            headers=[("trace-id", b"bare"), ("ingest.error.code", b"RUN_NOT_FOUND")],
        )
    finally:
        await producer.stop()

    assert await selected_labels(settings, Selection()) == ["bare"]
    assert await selected_labels(settings, Selection(since=at("00:00:00"))) == []
    assert await selected_labels(settings, Selection(until=at("23:00:00"))) == []
    rows = await summarize_dead_letters(settings, Selection())
    assert len(rows) == 1
    assert rows[0].count == 1
    assert rows[0].first_failed_at is None
    assert rows[0].last_failed_at is None

    report = await replay_dead_letters(settings, Selection())

    assert report.replayed == 0
    assert report.skipped_invalid == 1


async def test_show_encodes_each_form(settings: Settings) -> None:
    letters = [
        Letter(
            "json", ErrorCode.RUN_NOT_FOUND, at("06:00:00"), envelope("SPI-01", "dk-1")
        ),
        Letter(
            "text",
            ErrorCode.ENVELOPE_UNREADABLE,
            at("06:01:00"),
            b"not json at all",
            key=b"SN-2",
        ),
        Letter(
            "binary",
            ErrorCode.ENVELOPE_UNREADABLE,
            at("06:02:00"),
            b"\xff\x00\x81",
            key=b"\xfe\x01",
            headers=[("binary", b"\xff\x00"), ("binary", b"second")],
        ),
    ]
    await produce_dead_letters(settings, letters)

    code, stdout, stderr = await run_cli(settings, "show")

    assert code == 0, stderr
    by_label = {}
    for line in stdout.splitlines():
        document = orjson.loads(line)
        labels = [h["value"] for h in document["headers"] if h["name"] == "trace-id"]
        by_label[labels[0]] = document
    assert sorted(by_label) == ["binary", "json", "text"]

    as_json = by_label["json"]
    assert as_json["topic"] == settings.topics.dlq
    assert as_json["partition"] in (0, 1, 2)
    assert isinstance(as_json["offset"], int)
    assert as_json["key"] == "SN-2026-01001"
    assert as_json["keyEncoding"] == "text"
    assert as_json["valueEncoding"] == "json"
    assert as_json["value"] == orjson.loads(envelope("SPI-01", "dk-1"))
    headers = {h["name"]: h["value"] for h in as_json["headers"]}
    assert headers["ingest.error.code"] == "RUN_NOT_FOUND"
    assert headers["ingest.failed.at"] == "2026-12-04T06:00:00.000Z"
    assert headers["ingest.origin.topic"] == settings.topics.auto
    assert headers["ingest.replay.count"] == "0"

    assert by_label["text"]["valueEncoding"] == "text"
    assert by_label["text"]["value"] == "not json at all"

    binary = by_label["binary"]
    assert binary["valueEncoding"] == "base64"
    assert base64.b64decode(binary["value"]) == b"\xff\x00\x81"
    assert binary["keyEncoding"] == "base64"
    assert base64.b64decode(binary["key"]) == b"\xfe\x01"
    repeated = [h for h in binary["headers"] if h["name"] == "binary"]
    assert repeated == [
        {
            "name": "binary",
            "value": base64.b64encode(b"\xff\x00").decode(),
            "encoding": "base64",
        },
        {"name": "binary", "value": "second", "encoding": "text"},
    ]

    code, stdout, stderr = await run_cli(settings, "show", "--code", "RUN_NOT_FOUND")
    assert code == 0, stderr
    assert len(stdout.splitlines()) == 1


def test_describe_record_without_key_or_value() -> None:
    record = consumer_record(key=None, value=None, headers=[("empty", b"")])

    document = describe_record(record)

    assert document["key"] is None
    assert document["keyEncoding"] is None
    assert document["value"] is None
    assert document["valueEncoding"] is None
    assert document["headers"] == [{"name": "empty", "value": "", "encoding": "text"}]
    assert document["timestamp"] == "2026-12-04T06:00:00.000Z"


async def test_replay_keeps_missing_value(settings: Settings) -> None:
    letter = Letter("no-value", ErrorCode.ENVELOPE_UNREADABLE, at("06:00:00"), None)
    await produce_dead_letters(settings, [letter])

    report = await replay_dead_letters(settings, Selection())

    assert report.replayed == 1
    [replayed] = await read_topic(settings, settings.topics.auto)
    assert replayed.value is None
    assert replayed.key == b"SN-2026-01001"


async def test_replay_publishes_to_origin(settings: Settings) -> None:
    letters = [
        Letter(
            "auto-1",
            ErrorCode.STATION_NOT_FOUND,
            at("06:00:00"),
            envelope("SPI-01", "dk-1"),
            headers=[("binary", b"\xff\x00"), ("content-type", b"application/json")],
        ),
        Letter(
            "test-1",
            ErrorCode.STATION_NOT_FOUND,
            at("06:01:00"),
            b"\xff\xfe unreadable",
            key=None,
            origin="test",
        ),
        Letter(
            "auto-2",
            ErrorCode.RUN_NOT_FOUND,
            at("06:02:00"),
            envelope("SPI-01", "dk-2"),
        ),
    ]
    await produce_dead_letters(settings, letters)
    selection = Selection(codes=frozenset({"STATION_NOT_FOUND"}))

    report = await replay_dead_letters(settings, selection)

    assert report.replayed == 1 + 1
    assert report.not_selected == 1
    assert report.skipped == 0
    assert report.read == 3
    assert report.replayed_by_topic == {
        settings.topics.auto: 1,
        settings.topics.test: 1,
    }

    [auto] = await read_topic(settings, settings.topics.auto)
    assert auto.key == b"SN-2026-01001"
    assert auto.value == envelope("SPI-01", "dk-1")
    assert list(auto.headers) == [
        ("trace-id", b"auto-1"),
        ("binary", b"\xff\x00"),
        ("content-type", b"application/json"),
        ("ingest.replay.count", b"1"),
    ]
    [test] = await read_topic(settings, settings.topics.test)
    assert test.key is None
    assert test.value == b"\xff\xfe unreadable"
    assert headers_of(test) == {"trace-id": "test-1", "ingest.replay.count": "1"}

    ends = await dlq_end_offsets(settings)
    committed = await committed_replay_offsets(settings)
    for partition, end in ends.items():
        if end > 0:
            assert committed[partition] == end, partition

    again = await replay_dead_letters(settings, Selection())
    assert again.read == 0
    assert again.replayed == 0


async def test_replay_skips_max_replays_unless_forced(settings: Settings) -> None:
    assert settings.max_replays == 5
    letters = [
        Letter(
            "fifth",
            ErrorCode.STATION_NOT_FOUND,
            at("06:00:00"),
            envelope("SPI-01", "dk-1"),
            replay_count=4,
        ),
        Letter(
            "sixth",
            ErrorCode.STATION_NOT_FOUND,
            at("06:01:00"),
            envelope("SPI-01", "dk-2"),
            replay_count=5,
        ),
    ]
    await produce_dead_letters(settings, letters)

    report = await replay_dead_letters(settings, Selection())

    assert report.replayed == 1
    assert report.skipped_max_replays == 1
    [replayed] = await read_topic(settings, settings.topics.auto)
    assert headers_of(replayed)["trace-id"] == "fifth"
    assert headers_of(replayed)["ingest.replay.count"] == "5"

    forced = await replay_dead_letters(
        settings, Selection(), force=True, from_beginning=True
    )

    assert forced.replayed == 2
    assert forced.skipped_max_replays == 0
    counts = sorted(
        (headers_of(record)["trace-id"], headers_of(record)["ingest.replay.count"])
        for record in await read_topic(settings, settings.topics.auto)
    )
    assert counts == [("fifth", "5"), ("fifth", "5"), ("sixth", "6")]


async def test_replay_skips_unknown_origin(settings: Settings) -> None:
    letters = [
        Letter(
            "normalized",
            ErrorCode.STATION_NOT_FOUND,
            at("06:00:00"),
            envelope("SPI-01", "dk-1"),
            origin="normalized",
        ),
        Letter(
            "auto",
            ErrorCode.STATION_NOT_FOUND,
            at("06:01:00"),
            envelope("SPI-01", "dk-2"),
        ),
    ]
    await produce_dead_letters(settings, letters)

    report = await replay_dead_letters(settings, Selection())

    assert report.replayed == 1
    assert report.skipped_invalid == 1
    assert await read_topic(settings, settings.topics.normalized) == []


async def test_dry_run_publishes_and_commits_nothing(settings: Settings) -> None:
    await produce_dead_letters(settings, MIXED)
    planned: list[tuple[str, str]] = []

    report = await replay_dead_letters(
        settings,
        Selection(source_system="SPI-01"),
        dry_run=True,
        on_replay=lambda letter, topic: planned.append(
            (label_of(letter.record.headers), topic)
        ),
    )

    assert report.dry_run
    assert report.replayed == 3
    assert report.not_selected == 3
    assert sorted(planned) == [
        ("spi-1", settings.topics.auto),
        ("spi-2", settings.topics.auto),
        ("spi-4", settings.topics.auto),
    ]
    assert await read_topic(settings, settings.topics.auto) == []
    committed = await committed_replay_offsets(settings)
    assert set(committed.values()) == {None}

    real = await replay_dead_letters(settings, Selection(source_system="SPI-01"))
    assert real.replayed == 3


async def test_limit_then_resume(settings: Settings) -> None:
    await produce_dead_letters(settings, MIXED)
    selection = Selection(codes=frozenset({"STATION_NOT_FOUND", "RUN_NOT_FOUND"}))

    first = await replay_dead_letters(settings, selection, limit=2)

    assert first.replayed == 2
    after_first = await origin_labels(settings, settings.topics.auto)
    assert len(after_first) == 2

    second = await replay_dead_letters(settings, selection)

    assert second.replayed == 2
    assert first.read + second.read == len(MIXED)
    assert first.not_selected + second.not_selected == 2
    assert await origin_labels(settings, settings.topics.auto) == [
        "aoi-3",
        "spi-1",
        "spi-2",
        "spi-4",
    ]
    third = await replay_dead_letters(settings, selection)
    assert third.read == 0


async def test_stop_event_commits_and_resumes(settings: Settings) -> None:
    await produce_dead_letters(settings, MIXED)
    stop = asyncio.Event()

    first = await replay_dead_letters(
        settings, Selection(), on_replay=lambda _letter, _topic: stop.set(), stop=stop
    )

    assert first.stopped
    assert first.replayed == 1
    second = await replay_dead_letters(settings, Selection())
    assert not second.stopped
    assert second.replayed == len(MIXED) - 1
    labels = await origin_labels(settings, settings.topics.auto)
    assert labels == sorted(letter.label for letter in MIXED)


async def test_from_beginning_replays_again(settings: Settings) -> None:
    await produce_dead_letters(settings, MIXED[:3])
    first = await replay_dead_letters(settings, Selection())
    assert first.replayed == 3

    resumed = await replay_dead_letters(settings, Selection())
    assert resumed.replayed == 0

    again = await replay_dead_letters(settings, Selection(), from_beginning=True)

    assert again.replayed == 3
    records = await read_topic(settings, settings.topics.auto)
    assert len(records) == 6
    assert {headers_of(record)["ingest.replay.count"] for record in records} == {"1"}


async def test_cli_list_table_and_json(settings: Settings) -> None:
    await produce_dead_letters(settings, MIXED)

    code, stdout, stderr = await run_cli(settings, "list")

    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].split() == [
        "CODE",
        "SOURCE",
        "SYSTEM",
        "COUNT",
        "FIRST",
        "FAILED",
        "AT",
        "LAST",
        "FAILED",
        "AT",
    ]
    assert lines[-1].split() == [
        "STATION_NOT_FOUND",
        "SPI-01",
        "2",
        "2026-12-04T06:00:00.000Z",
        "2026-12-04T06:10:00.000Z",
    ]
    assert lines[2].split()[:3] == ["ENVELOPE_UNREADABLE", "-", "1"]
    assert len(lines) == 6

    code, stdout, stderr = await run_cli(
        settings,
        "list",
        "--json",
        "--code",
        "STATION_NOT_FOUND",
        "--since",
        "2026-12-04T07:01:00+01:00",
    )

    assert code == 0, stderr
    assert orjson.loads(stdout) == {
        "total": 2,
        "groups": [
            {
                "code": "STATION_NOT_FOUND",
                "sourceSystem": "AOI-01",
                "count": 1,
                "firstFailedAt": "2026-12-04T06:05:00.000Z",
                "lastFailedAt": "2026-12-04T06:05:00.000Z",
            },
            {
                "code": "STATION_NOT_FOUND",
                "sourceSystem": "SPI-01",
                "count": 1,
                "firstFailedAt": "2026-12-04T06:10:00.000Z",
                "lastFailedAt": "2026-12-04T06:10:00.000Z",
            },
        ],
    }


async def test_cli_replay_dry_run_then_real(settings: Settings) -> None:
    await produce_dead_letters(settings, MIXED)
    filters = ["--code", "STATION_NOT_FOUND", "--source-system", "SPI-01"]

    code, stdout, stderr = await run_cli(settings, "replay", "--dry-run", *filters)

    assert code == 0, stderr
    planned = [
        orjson.loads(line) for line in stdout.splitlines() if line.startswith("{")
    ]
    assert sorted(line["dedupeKey"] for line in planned) == ["dk-1", "dk-2"]
    assert {line["replayTo"] for line in planned} == {settings.topics.auto}
    assert {line["replayCount"] for line in planned} == {1}
    assert "2 records would be replayed" in stdout
    assert "dry run: nothing was published or committed" in stdout
    assert await read_topic(settings, settings.topics.auto) == []

    code, stdout, stderr = await run_cli(settings, "replay", *filters)

    assert code == 0, stderr
    assert "2 records replayed" in stdout
    assert f"  2 to {settings.topics.auto}" in stdout
    assert "0 records skipped: replayed 5 times already" in stdout
    assert "4 records not selected by the filters" in stdout
    assert await origin_labels(settings, settings.topics.auto) == ["spi-1", "spi-2"]

    code, stdout, stderr = await run_cli(settings, "replay", *filters)

    assert code == 0, stderr
    assert "0 records replayed" in stdout
    assert "0 records not selected" in stdout


def test_cli_rejects_invalid_filters(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dlq", "list", "--since", "2026-12-04T06:00:00"])
    assert exit_info.value.code == 2
    assert "the UTC offset is missing" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["dlq", "replay", "--limit", "0"])
    assert exit_info.value.code == 2
    assert "invalid limit '0'" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_only_on_terminal() -> None:
    terminal = _Terminal()
    line = ProgressLine(terminal, replay=True)
    line.update(ScanProgress(total=10, read=10, replayed=7, skipped=1))
    assert terminal.getvalue() == "\rread 10/10, replayed 7, skipped 1"
    line.update(ScanProgress(total=10, read=10, replayed=7, finished=True))
    assert terminal.getvalue().endswith("\r" + " " * 33 + "\r")

    listing = _Terminal()
    ProgressLine(listing).update(ScanProgress(total=4, read=4, selected=2))
    assert listing.getvalue() == "\rread 4/4, selected 2"

    pipe = io.StringIO()
    silent = ProgressLine(pipe, replay=True)
    silent.update(ScanProgress(total=10, read=10))
    silent.clear()
    assert pipe.getvalue() == ""


def test_dead_letter_reads_envelope_fields() -> None:
    record = consumer_record(
        value=b"[1, 2]",
        headers=[("ingest.failed.at", b"not a time"), ("ingest.replay.count", b"x")],
    )

    letter = DeadLetter.from_record(record)

    assert letter.source_system is None
    assert letter.dedupe_key is None
    assert letter.failed_at is None
    assert letter.replay_count == 0
    assert letter.code is None
    assert letter.origin_topic is None


async def test_list_counts_records_sent_in_one_batch(settings: Settings) -> None:
    # One record alone, then five in one producer batch: the embedded broker
    # reports the end of such a batch too early, and none may be missed.
    moment = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
    letters = [
        Letter(
            f"batch-{index}",
            ErrorCode.STATION_NOT_FOUND,
            moment,
            b"{}",
            key=b"one-partition",
        )
        for index in range(6)
    ]
    await produce_dead_letters(settings, letters[:1])
    producer = make_producer(settings)
    await producer.start()
    try:
        sent = [
            await producer.send(
                settings.topics.dlq,
                letter.value,
                key=b"one-partition",
                headers=dead_letter_headers(settings, letter),
            )
            for letter in letters[1:]
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()

    labels = await selected_labels(settings, Selection())
    assert sorted(labels) == sorted(letter.label for letter in letters)
