"""`ingest-worker dlq list|show|replay`: inspect and replay dead letters."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from datetime import datetime
from typing import TextIO

import orjson
from aiokafka.errors import KafkaError

from ingest_worker.errors import ConfigurationError, ErrorCode, InfrastructureError
from ingest_worker.failures.dlq import (
    DeadLetter,
    ReplayReport,
    ScanProgress,
    Selection,
    SummaryRow,
    describe_record,
    replay_dead_letters,
    select_dead_letters,
    summarize_dead_letters,
)
from ingest_worker.mapping import format_utc, parse_rfc3339
from ingest_worker.settings import Settings

# Minimum time between two redraws of the progress line.
_PROGRESS_INTERVAL_S = 0.2


def add_dlq_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add the `dlq` command and its subcommands to the command parser."""
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument(
        "--code",
        action="append",
        default=[],
        help="select records with this ingest.error.code (repeat the option for "
        "several codes)",
    )
    filters.add_argument(
        "--source-system", help="select envelopes with this sourceSystem"
    )
    filters.add_argument("--dedupe-key", help="select envelopes with this dedupeKey")
    filters.add_argument(
        "--since",
        type=_timestamp,
        help="select records with ingest.failed.at at or after this RFC 3339 "
        "time, such as 2026-12-04T06:00:00Z",
    )
    filters.add_argument(
        "--until",
        type=_timestamp,
        help="select records with ingest.failed.at before this RFC 3339 time",
    )

    dlq = commands.add_parser("dlq", help="list, show and replay dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)

    summary = dlq_commands.add_parser(
        "list",
        parents=[filters],
        help="count the dead letters by error code and source system",
    )
    summary.add_argument(
        "--limit", type=_positive_int, help="summarize at most this many records"
    )
    summary.add_argument(
        "--json", action="store_true", help="print a JSON document, not a table"
    )

    show = dlq_commands.add_parser(
        "show", parents=[filters], help="print the dead letters as JSON lines"
    )
    show.add_argument(
        "--limit", type=_positive_int, help="print at most this many records"
    )

    replay = dlq_commands.add_parser(
        "replay",
        parents=[filters],
        help="publish dead letters back to their origin topic",
        description="Publish the selected dead letters back to their origin "
        "topic with ingest.replay.count raised by one. The progress is "
        "committed, so the next run continues after the last record handled, "
        "selected or not. Use --from-beginning to read the whole topic again, "
        "for example with other filters.",
    )
    replay.add_argument(
        "--limit",
        type=_positive_int,
        help="replay at most this many records. The next run continues after "
        "the last one",
    )
    replay.add_argument(
        "--force",
        action="store_true",
        help="also replay records that reached INGEST_MAX_REPLAYS",
    )
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be replayed without publishing or committing",
    )
    replay.add_argument(
        "--from-beginning",
        action="store_true",
        help="read from offset 0 instead of where the last replay stopped",
    )


def _timestamp(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(
            f"invalid limit {text!r}: expected a whole number of at least 1"
        )
    return number


async def dlq_command(settings: Settings, arguments: argparse.Namespace) -> int:
    """Run `dlq list`, `dlq show` or `dlq replay` and return the exit status."""
    selection = _selection(arguments)
    try:
        if arguments.dlq_command == "list":
            return await _list(settings, selection, arguments.limit, arguments.json)
        if arguments.dlq_command == "show":
            return await _show(settings, selection, arguments.limit)
        if arguments.dlq_command == "replay":
            return await _replay(settings, selection, arguments)
    except KafkaError as error:
        message = (
            f"dlq {arguments.dlq_command} failed on the broker at "
            f"{settings.kafka.bootstrap_servers}: {error}; check "
            "KAFKA_BOOTSTRAP_SERVERS"
        )
        if arguments.dlq_command == "replay" and not arguments.dry_run:
            message += ", then run it again to resume after the last committed record"
        raise InfrastructureError(message) from error
    raise AssertionError(arguments.dlq_command)


def _selection(arguments: argparse.Namespace) -> Selection:
    known = {str(code) for code in ErrorCode}
    for code in arguments.code:
        if code not in known:
            print(
                f"ingest-worker: warning: unknown error code {code}, so only dead "
                "letters with exactly this code are selected",
                file=sys.stderr,
            )
    if (
        arguments.since is not None
        and arguments.until is not None
        and arguments.since >= arguments.until
    ):
        raise ConfigurationError(
            f"--since {format_utc(arguments.since)} is not before --until "
            f"{format_utc(arguments.until)}; no record could match"
        )
    return Selection(
        codes=frozenset(arguments.code),
        source_system=arguments.source_system,
        dedupe_key=arguments.dedupe_key,
        since=arguments.since,
        until=arguments.until,
    )


async def _list(
    settings: Settings, selection: Selection, limit: int | None, as_json: bool
) -> int:
    progress = ProgressLine(sys.stderr)
    try:
        rows = await summarize_dead_letters(
            settings, selection, limit=limit, progress=progress.update
        )
    finally:
        progress.clear()
    if as_json:
        document = {
            "total": sum(row.count for row in rows),
            "groups": [row.to_json() for row in rows],
        }
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    elif rows:
        sys.stdout.write(format_summary_table(rows))
    else:
        print("no dead letters match the filters")
    return 0


def format_summary_table(rows: list[SummaryRow]) -> str:
    """Format summary rows as a plain table with aligned columns."""
    header = ("CODE", "SOURCE SYSTEM", "COUNT", "FIRST FAILED AT", "LAST FAILED AT")
    lines = [header]
    for row in rows:
        lines.append(
            (
                row.code or "-",
                row.source_system or "-",
                str(row.count),
                format_utc(row.first_failed_at) if row.first_failed_at else "-",
                format_utc(row.last_failed_at) if row.last_failed_at else "-",
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(5)]
    text = []
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        text.append("  ".join(cells).rstrip() + "\n")
    return "".join(text)


async def _show(settings: Settings, selection: Selection, limit: int | None) -> int:
    letters = select_dead_letters(settings, selection, limit=limit)
    async with contextlib.aclosing(letters):
        async for letter in letters:
            sys.stdout.write(orjson.dumps(describe_record(letter.record)).decode())
            sys.stdout.write("\n")
    return 0


async def _replay(
    settings: Settings, selection: Selection, arguments: argparse.Namespace
) -> int:
    dry_run: bool = arguments.dry_run
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    progress = ProgressLine(sys.stderr, replay=True)
    try:
        report = await replay_dead_letters(
            settings,
            selection,
            limit=arguments.limit,
            force=arguments.force,
            dry_run=dry_run,
            from_beginning=arguments.from_beginning,
            progress=progress.update,
            on_replay=_print_planned if dry_run else None,
            stop=stop,
        )
    finally:
        progress.clear()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    sys.stdout.write(format_replay_summary(report, settings.max_replays))
    return 130 if report.stopped else 0


def _print_planned(letter: DeadLetter, origin_topic: str) -> None:
    record = letter.record
    line = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "replayTo": origin_topic,
        "code": letter.code,
        "sourceSystem": letter.source_system,
        "dedupeKey": letter.dedupe_key,
        "replayCount": letter.replay_count + 1,
    }
    sys.stdout.write(orjson.dumps(line).decode())
    sys.stdout.write("\n")


def format_replay_summary(report: ReplayReport, max_replays: int) -> str:
    """Format the counts of a replay run as lines for the operator."""
    verb = "would be replayed" if report.dry_run else "replayed"
    lines = [f"{report.replayed} records {verb}"]
    for topic, count in sorted(report.replayed_by_topic.items()):
        lines.append(f"  {count} to {topic}")
    lines.append(
        f"{report.skipped_max_replays} records skipped: replayed {max_replays} "
        "times already (--force replays them)"
    )
    if report.skipped_invalid:
        lines.append(
            f"{report.skipped_invalid} records skipped: ingest.origin.topic is "
            "missing or not an input topic, or the record has neither key nor "
            "value (see the warnings)"
        )
    lines.append(f"{report.not_selected} records not selected by the filters")
    if report.dry_run:
        lines.append("dry run: nothing was published or committed")
    if report.stopped:
        lines.append("stopped before the end; run the command again to resume")
    return "".join(line + "\n" for line in lines)


class ProgressLine:
    """A progress line redrawn in place on a terminal.

    On a stream that is not a terminal, such as a pipe or a file, it writes
    nothing.
    """

    def __init__(self, stream: TextIO, *, replay: bool = False) -> None:
        self._stream = stream
        self._replay = replay
        self._enabled = stream.isatty()
        self._drawn_at = 0.0
        self._width = 0

    def update(self, counts: ScanProgress) -> None:
        if not self._enabled:
            return
        if counts.finished:
            self.clear()
            return
        now = time.monotonic()
        if now - self._drawn_at < _PROGRESS_INTERVAL_S and counts.read < counts.total:
            return
        self._drawn_at = now
        text = f"read {counts.read}/{counts.total}, "
        if self._replay:
            text += f"replayed {counts.replayed}, skipped {counts.skipped}"
        else:
            text += f"selected {counts.selected}"
        # Pad with spaces to cover the end of a longer earlier line.
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self._enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
