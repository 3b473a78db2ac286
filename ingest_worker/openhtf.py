"""Publish OpenHTF test records as TEST envelopes.

A test adds one output callback to publish each finished test record:

    test.add_output_callbacks(OutputToKafka())

Records that OpenHTF's JSON output callback (`OutputToJSON`) already wrote to
disk are published with `ingest-worker publish --openhtf DIR`.

The payload of each envelope is the record in the JSON form that `OutputToJSON`
writes. OpenHTF belongs to the optional `openhtf` extra, so this module imports
it only inside the functions that convert a live `TestRecord`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog
from aiokafka.errors import KafkaError

from ingest_worker.envelope import decode_envelope
from ingest_worker.errors import ConfigurationError, IngestWorkerError
from ingest_worker.kafka import make_producer
from ingest_worker.settings import Settings, load_settings

if TYPE_CHECKING:
    from openhtf.core.test_record import TestRecord

log = structlog.get_logger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_T = TypeVar("_T")

DEFAULT_PUBLISH_TIMEOUT_S = 30.0


class PublishError(IngestWorkerError):
    """A test record could not be published to the broker."""


def envelope_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """Wrap the JSON form of an OpenHTF test record in a TEST envelope.

    The dedupe key `{dut_id}.{start_time_millis}` names one run of a test on
    one unit, so a record published twice is ingested once. Raises ValueError
    when the record lacks a field that the envelope needs.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got a JSON {_json_type(record)}")
    if not isinstance(record.get("outcome"), str):
        raise ValueError("outcome is missing or not a string")
    if not isinstance(record.get("phases"), list):
        raise ValueError("phases is missing or not a list")

    dut_id = record.get("dut_id")
    if not isinstance(dut_id, str) or not dut_id:
        raise ValueError(
            f"dut_id is {dut_id!r}, but the envelope needs the unit serial as the "
            "DUT ID"
        )
    start_time_millis = _millis(record, "start_time_millis")
    end_time_millis = _millis(record, "end_time_millis")

    return {
        "dedupeKey": f"{dut_id}.{start_time_millis}",
        "sourceSystem": _station_id(record),
        "eventType": "TEST",
        "occurredAt": _format_millis(end_time_millis),
        "sn": dut_id,
        "payload": record,
    }


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _millis(record: dict[str, Any], name: str) -> int:
    value = record.get(name)
    # bool is a subclass of int, but true or false is no timestamp.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"{name} is {value!r}, not milliseconds since the epoch; only "
            "finished test records can be published"
        )
    return value


def _station_id(record: dict[str, Any]) -> str:
    """Return the station id of the test's configuration, else the record's."""
    metadata = record.get("metadata")
    config = metadata.get("config") if isinstance(metadata, dict) else None
    if isinstance(config, dict) and isinstance(config.get("station_id"), str):
        station_id = config["station_id"]
    else:
        station_id = record.get("station_id")
    if not isinstance(station_id, str) or not station_id:
        raise ValueError(
            f"station_id is {station_id!r} in metadata.config and in the record; "
            "set OpenHTF's station_id configuration value"
        )
    return station_id


def _format_millis(millis: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC with milliseconds and a Z."""
    try:
        moment = _EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        raise ValueError(f"end_time_millis {millis} is out of range") from None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iter_record_files(
    directory: Path,
) -> Iterator[tuple[str, dict[str, Any]] | str]:
    """Read the *.json files directly in a folder as OpenHTF test records.

    Yields (file name, envelope) for each record, in file name order, or a
    message naming the file when it cannot be read or is not a test record.
    """
    for path in sorted(directory.glob("*.json")):
        if not path.is_file():
            continue
        try:
            content = path.read_bytes()
        except OSError as error:
            yield f"{path.name}: cannot be read ({error.strerror})"
            continue
        try:
            record = orjson.loads(content)
        except orjson.JSONDecodeError as error:
            yield f"{path.name}: not valid JSON ({error})"
            continue
        try:
            envelope = envelope_from_record(record)
        except ValueError as error:
            yield f"{path.name}: not an OpenHTF test record ({error})"
            continue
        yield path.name, envelope


def convert_test_record(record: TestRecord, inline_attachments: bool = True) -> Any:
    """Convert a TestRecord to the JSON value that `OutputToJSON` writes.

    The record goes through OpenHTF's own conversion and JSON encoder
    (openhtf.output.callbacks.json_factory, as in OpenHTF 1.6.3), so NaN and
    infinity become strings and attachments become base64 text. The text is
    parsed with orjson like the worker parses it, so integers beyond 64 bits
    become floats here too.
    """
    from openhtf.output.callbacks import json_factory

    converted = json_factory.convert_test_record_to_json(
        record, inline_attachments=inline_attachments
    )
    text = "".join(json_factory.stream_json(converted))
    return orjson.loads(text)


class OutputToKafka:
    """OpenHTF output callback that publishes each test record as a TEST envelope.

    Add it with `test.add_output_callbacks(OutputToKafka())`. The Kafka
    connection and the topic come from the environment (KAFKA_BOOTSTRAP_SERVERS,
    INGEST_TOPIC_TEST and the rest read by `load_settings`) unless given here.
    Each call starts a producer, waits until the broker acknowledged the record
    and stops the producer. It raises on failure, and OpenHTF then logs the
    error and runs the next output callback.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        bootstrap_servers: str | None = None,
        topic: str | None = None,
        inline_attachments: bool = True,
        timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
    ) -> None:
        if settings is None:
            settings = load_settings()
        if bootstrap_servers is not None:
            kafka = settings.kafka.model_copy(
                update={"bootstrap_servers": bootstrap_servers}
            )
            settings = settings.model_copy(update={"kafka": kafka})
        if timeout_s <= 0:
            raise ConfigurationError(f"timeout_s is {timeout_s}; it must be positive")
        # Raises ConfigurationError while the test is set up when no broker is
        # configured, instead of after the first unit was tested.
        settings.kafka.client_options()
        self.settings = settings
        self.topic = topic or settings.topics.test
        self.inline_attachments = inline_attachments
        self.timeout_s = timeout_s

    def __call__(self, record: TestRecord) -> None:
        converted = convert_test_record(record, self.inline_attachments)
        envelope = envelope_from_record(converted)
        value = orjson.dumps(envelope)
        # The worker's own decoder raises here, with the worker's message, for
        # a record the worker would dead-letter (too large, nested too deeply,
        # or containing a NUL character).
        decode_envelope(value, self.settings.limits)
        _run_blocking(self._send(value, envelope["sn"], envelope["dedupeKey"]))
        log.info(
            "test record published",
            dedupe_key=envelope["dedupeKey"],
            topic=self.topic,
        )

    async def _send(self, value: bytes, sn: str, dedupe_key: str) -> None:
        producer = make_producer(self.settings)
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    await producer.start()
                    await producer.send_and_wait(self.topic, value, key=sn.encode())
                finally:
                    await producer.stop()
        except TimeoutError:
            raise PublishError(
                f"publishing test record {dedupe_key} to {self.topic} timed out "
                f"after {self.timeout_s} s; check that the broker at "
                f"{self.settings.kafka.bootstrap_servers} is reachable"
            ) from None
        except (KafkaError, OSError) as error:
            raise PublishError(
                f"publishing test record {dedupe_key} to {self.topic} at "
                f"{self.settings.kafka.bootstrap_servers} failed: {error!r}"
            ) from error


def _run_blocking(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from synchronous code.

    OpenHTF runs output callbacks in the thread that called `Test.execute`.
    When that thread already runs an event loop, the coroutine runs on a new
    loop in a helper thread, because asyncio allows one loop per thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()
