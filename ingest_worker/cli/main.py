"""Parse the command line and run one command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import orjson
import structlog
from aiokafka.errors import KafkaError

from ingest_worker.cli.dlq import add_dlq_parser
from ingest_worker.errors import (
    ConfigurationError,
    IngestWorkerError,
)
from ingest_worker.logs import configure_logging
from ingest_worker.settings import Settings, load_settings
from ingest_worker.storage.database import connect, create_pool, redact_url

if TYPE_CHECKING:
    from ingest_worker.publish import OutgoingRecord

log = structlog.get_logger(__name__)


# Wrong address, credentials, database name or URL syntax, as asyncpg reports
# them when connecting.
_CONNECT_ERRORS = (
    OSError,
    ValueError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def _connection_error(url: str, error: BaseException) -> ConfigurationError:
    # asyncpg's messages name the user and database but not the password.
    return ConfigurationError(
        f"cannot connect to the database at {redact_url(url)}: "
        f"{type(error).__name__}: {error}; check DATABASE_URL"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest-worker",
        description="Ingest MES station events from Kafka into PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="apply the database migrations")

    seed = commands.add_parser("seed", help="load master data from a YAML file")
    seed.add_argument("file", type=Path, help="factory YAML file")

    commands.add_parser("run", help="consume the input topics until stopped")

    trace = commands.add_parser("trace", help="print what happened to a serial")
    trace.add_argument("sn", help="unit serial number")
    trace.add_argument(
        "--mode",
        choices=["run", "latest"],
        default="run",
        help="steps of the run's frozen route version (run) or the newest READY "
        "one (latest)",
    )

    publish = commands.add_parser(
        "publish",
        help="publish envelopes from a JSON-lines file, or OpenHTF test records",
    )
    source = publish.add_mutually_exclusive_group(required=True)
    source.add_argument("file", type=Path, nargs="?", help="one envelope per line")
    source.add_argument(
        "--openhtf",
        type=Path,
        metavar="DIR",
        help="publish the OpenHTF JSON test records (*.json) directly in DIR "
        "as TEST envelopes",
    )
    publish.add_argument(
        "--topic", help="send every line to this topic, readable or not"
    )
    publish.add_argument(
        "--key-path",
        help="mapping path of the record key inside each envelope, such as "
        "payload.basket (default: sn for unit events, carrierCode for BATCH)",
    )

    topics = commands.add_parser("topics", help="manage the topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    ensure = topic_commands.add_parser("ensure", help="create missing topics")
    ensure.add_argument("--partitions", type=int, default=3, help="for new topics")
    ensure.add_argument(
        "--replication-factor", type=int, default=1, help="for new topics"
    )

    add_dlq_parser(commands)

    commands.add_parser(
        "dev", help="start the embedded broker and database until Ctrl-C"
    )
    commands.add_parser("demo", help="run the sample line end to end and print a trace")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        return asyncio.run(_dispatch(arguments, settings))
    except ConfigurationError as error:
        print(f"ingest-worker: {error}", file=sys.stderr)
        return 2
    except IngestWorkerError as error:
        print(f"ingest-worker: {error}", file=sys.stderr)
        return 1
    except KafkaError as error:
        servers = settings.kafka.bootstrap_servers
        print(
            f"ingest-worker: the broker at {servers} failed or is unreachable: "
            f"{type(error).__name__}: {error}; check KAFKA_BOOTSTRAP_SERVERS",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError:
        # The reader of the output went away, as `trace SN | head` does.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


async def _dispatch(arguments: argparse.Namespace, settings: Settings) -> int:
    command = arguments.command
    if command == "migrate":
        return await migrate_command(settings)
    if command == "seed":
        return await seed_command(settings, arguments.file)
    if command == "run":
        return await run_command(settings)
    if command == "trace":
        return await trace_command(settings, arguments.sn, arguments.mode)
    if command == "publish":
        if arguments.openhtf is not None:
            return await publish_openhtf_command(
                settings, arguments.openhtf, arguments.topic, arguments.key_path
            )
        return await publish_command(
            settings, arguments.file, arguments.topic, arguments.key_path
        )
    if command == "topics":
        return await topics_command(
            settings, arguments.partitions, arguments.replication_factor
        )
    if command == "dlq":
        from ingest_worker.cli.dlq import dlq_command

        return await dlq_command(settings, arguments)
    if command == "dev":
        from ingest_worker.cli.dev import dev_command

        return await dev_command()
    if command == "demo":
        from ingest_worker.cli.demo import demo_command

        return await demo_command()
    raise AssertionError(command)


@contextlib.asynccontextmanager
async def _connection(settings: Settings) -> AsyncIterator[object]:
    url = settings.require_database_url()
    try:
        connection = await connect(url)
    except _CONNECT_ERRORS as error:
        raise _connection_error(url, error) from error
    try:
        yield connection
    finally:
        await connection.close()


async def migrate_command(settings: Settings) -> int:
    from ingest_worker.storage.migrations import migrate

    async with _connection(settings) as connection:
        applied = await migrate(connection)  # type: ignore[arg-type]
    print(f"{len(applied)} migrations applied")
    return 0


async def seed_command(settings: Settings, path: Path) -> int:
    from ingest_worker.storage.seed import load_factory, seed_factory

    factory = load_factory(path)
    async with _connection(settings) as connection:
        report = await seed_factory(connection, factory)  # type: ignore[arg-type]
    print(report.summary())
    return 0


async def trace_command(settings: Settings, sn: str, mode: str) -> int:
    from ingest_worker.trace.query import UnitNotFound, not_found_document, trace_unit

    async with _connection(settings) as connection:
        try:
            data = await trace_unit(connection, sn, mode)  # type: ignore[arg-type]
        except UnitNotFound:
            _print_json(not_found_document(sn))
            return 1
    _print_json({"ok": True, "data": data})
    return 0


def _print_json(document: object) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")


async def publish_command(
    settings: Settings, path: Path, topic: str | None, key_path: str | None
) -> int:
    from ingest_worker.publish import plan_records, read_lines

    if not await asyncio.to_thread(path.is_file):
        raise ConfigurationError(f"file {path} does not exist")
    records = plan_records(read_lines(path), settings, topic=topic, key_path=key_path)
    return await _publish_and_report(settings, records)


async def publish_openhtf_command(
    settings: Settings, directory: Path, topic: str | None, key_path: str | None
) -> int:
    from ingest_worker.openhtf import iter_record_files
    from ingest_worker.publish import plan_envelopes

    if not await asyncio.to_thread(directory.is_dir):
        raise ConfigurationError(f"directory {directory} does not exist")
    if not await asyncio.to_thread(lambda: any(directory.glob("*.json"))):
        print(f"no *.json files found in {directory}", file=sys.stderr)
        return 1
    records = plan_envelopes(
        iter_record_files(directory), settings, topic=topic, key_path=key_path
    )
    return await _publish_and_report(settings, records)


async def _publish_and_report(
    settings: Settings, records: Iterable[OutgoingRecord | str]
) -> int:
    from ingest_worker.kafka import make_producer
    from ingest_worker.publish import publish_records

    producer = make_producer(settings)
    try:
        await producer.start()
        report = await publish_records(producer, records)
    finally:
        await producer.stop()
    for name, count in sorted(report.published.items()):
        print(f"{count} records published to {name}")
    if report.unkeyed:
        print(
            f"{report.unkeyed} records published without a key, so their order "
            "is kept only within a partition; pass --key-path, such as "
            "payload.basket for a washer's carrier code",
            file=sys.stderr,
        )
    for problem in report.skipped:
        print(f"skipped {problem}", file=sys.stderr)
    return 1 if report.skipped else 0


async def topics_command(settings: Settings, partitions: int, replicas: int) -> int:
    from ingest_worker.kafka import ensure_topics

    created = await ensure_topics(settings, partitions, replicas)
    print(f"created {len(created)} topics: {', '.join(created) or 'none'}")
    return 0


async def run_command(settings: Settings) -> int:
    from ingest_worker.consumer.worker import Worker
    from ingest_worker.service.http import parse_http_addr, start_http, stop_http

    # A mistyped address fails here, before any connection is opened.
    parse_http_addr(settings.http_addr)
    pool = await _open_pool(settings)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        worker = Worker(settings, pool)
        # Served from the start, so probes see a live process that is not
        # ready while the database or the broker is still unreachable.
        http = await start_http(settings, pool, worker)
        try:
            if not await _wait_for_database(settings, pool, stop):
                return 0
            await _require_migrated(pool)
            if not await _wait_for_broker(settings, stop):
                return 0
            await worker.start()
            await worker.run(stop)
        finally:
            # Also closes the clients of a worker that never started.
            await worker.stop()
            await stop_http(http)
    finally:
        await pool.close()
    return 0


async def _pause_before_retry(
    stop: asyncio.Event,
    delay_s: float,
    event: str,
    error: BaseException,
    **ids: object,
) -> float:
    """Log the failure and wait a jittered pause or until stopped.

    Returns the next, doubled delay, at most 30 s.
    """
    pause = random.uniform(delay_s / 2, delay_s)
    log.warning(
        event,
        error=f"{type(error).__name__}: {error}",
        retry_in_s=round(pause, 2),
        **ids,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), pause)
    return min(delay_s * 2, 30.0)


async def _wait_for_database(
    settings: Settings, pool: asyncpg.Pool, stop: asyncio.Event
) -> bool:
    """Wait with backoff until the database responds; False if a stop came first.

    Only an outage is waited out. Wrong credentials or a wrong database name
    raise ConfigurationError at once, because waiting would not fix them.
    """
    from ingest_worker.storage.database import is_transient

    url = settings.require_database_url()
    delay_s = 0.5
    while not stop.is_set():
        try:
            async with pool.acquire() as connection:
                await connection.fetchval("SELECT 1")
            return True
        except _CONNECT_ERRORS as error:
            if not is_transient(error):
                raise _connection_error(url, error) from error
            delay_s = await _pause_before_retry(
                stop,
                delay_s,
                "database unreachable; retrying",
                error,
                database=redact_url(url),
            )
    return False


async def _wait_for_broker(settings: Settings, stop: asyncio.Event) -> bool:
    """Wait with backoff until the broker responds; False if a stop came first."""
    from aiokafka import AIOKafkaClient

    delay_s = 0.5
    while not stop.is_set():
        client = AIOKafkaClient(**settings.kafka.client_options())
        try:
            await client.bootstrap()
            return True
        except KafkaError as error:
            delay_s = await _pause_before_retry(
                stop,
                delay_s,
                "broker unreachable; retrying",
                error,
                bootstrap_servers=settings.kafka.bootstrap_servers,
            )
        finally:
            await client.close()
    return False


async def _open_pool(settings: Settings) -> asyncpg.Pool:
    url = settings.require_database_url()
    try:
        # No connection yet: run waits for an unreachable database itself.
        return await create_pool(url, max_size=settings.db_pool_size, min_size=0)
    except _CONNECT_ERRORS as error:
        raise _connection_error(url, error) from error


async def _require_migrated(pool: asyncpg.Pool) -> None:
    """Raise ConfigurationError unless every migration of this build is applied."""
    from ingest_worker.storage.migrations import pending_migrations

    async with pool.acquire() as connection:
        missing = await pending_migrations(connection)
    if missing:
        names = ", ".join(f"{m.version:03d}_{m.name}" for m in missing)
        raise ConfigurationError(
            f"the database schema is not migrated (missing {names}); "
            "run `ingest-worker migrate` first"
        )
