"""The HTTP server of `ingest-worker run`: health, readiness, metrics and trace.

Endpoints:

- `GET /healthz`: 200 while the process runs.
- `GET /readyz`: 200 when `SELECT 1` succeeds, the worker's last cycle
  succeeded and partitions are assigned, else 503 naming the failed checks.
- `GET /metrics`: Prometheus text, or OpenMetrics when the Accept header requests it.
- `GET /api/trace/units/{sn}?mode=run|latest`: the trace document of a unit. It
  requires `Authorization: Bearer <INGEST_HTTP_TOKEN>` when a token is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import orjson
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.exposition import choose_encoder

from ingest_worker.consumer.worker import Worker
from ingest_worker.errors import ConfigurationError
from ingest_worker.kafka import end_positions
from ingest_worker.service.metrics import WorkerMetrics
from ingest_worker.settings import Settings
from ingest_worker.storage.database import redact_url
from ingest_worker.trace.query import UnitNotFound, not_found_document, trace_unit

log = structlog.get_logger(__name__)

# Readiness waits this long for a pooled connection and `SELECT 1`.
READINESS_DATABASE_TIMEOUT_S = 2.0
# Each part of a metrics refresh (consumer lag, outbox backlog) gets this long.
# A part that times out keeps its previous values, so a scrape stays fast.
METRICS_REFRESH_TIMEOUT_S = 2.0
# A trace request gets this long for its connection and queries, then 503.
TRACE_TIMEOUT_S = 10.0
# In-flight requests get this long to finish when the server stops.
SHUTDOWN_TIMEOUT_S = 5.0

_OUTBOX_EXISTS_SQL = "SELECT to_regclass('outbox') IS NOT NULL"
_OUTBOX_COUNT_SQL = "SELECT count(*) FROM outbox"
_TRACE_MODES = ("run", "latest")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SETTINGS = web.AppKey("settings", Settings)
_POOL = web.AppKey("pool", asyncpg.Pool)
_WORKER = web.AppKey("worker", Worker)


def parse_http_addr(value: str) -> tuple[str, int]:
    """Split `host:port` or `[IPv6]:port` into host and port.

    Port 0 lets the system pick a free port. Raises ConfigurationError, which
    names INGEST_HTTP_ADDR, for any value that is not a valid address.
    """
    text = value.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise _address_error(
                value, "expected [IPv6 address]:port, such as [::1]:8080"
            )
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _address_error(
                value, f"{host!r} in brackets is not an IPv6 address"
            ) from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise _address_error(value, "expected host:port, such as 127.0.0.1:8080")
        if not host:
            raise _address_error(
                value,
                "the host is missing; write 0.0.0.0:PORT to listen on every "
                "interface, or 127.0.0.1:PORT for this machine only",
            )
        if ":" in host:
            raise _address_error(
                value, "write an IPv6 address in brackets, such as [::1]:8080"
            )
    if not port_text.isdigit() or int(port_text) > 65535:
        raise _address_error(
            value, f"port {port_text!r} is not a number from 0 to 65535"
        )
    return host, int(port_text)


def _address_error(value: str, reason: str) -> ConfigurationError:
    return ConfigurationError(f"invalid INGEST_HTTP_ADDR {value!r}: {reason}")


def create_app(
    settings: Settings, pool: asyncpg.Pool, worker: Worker
) -> web.Application:
    """Build the application. `pool` serves readiness, metrics and trace queries."""
    app = web.Application(middlewares=[_error_middleware])
    app[_SETTINGS] = settings
    app[_POOL] = pool
    app[_WORKER] = worker
    app[_GAUGES] = GaugeRefresher(worker.consumer, worker.metrics, pool)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/trace/units/{sn}", _trace)
    return app


async def start_http(
    settings: Settings, pool: asyncpg.Pool, worker: Worker
) -> web.AppRunner:
    """Listen on INGEST_HTTP_ADDR and return the runner to pass to `stop_http`.

    Raises ConfigurationError when the address is invalid, already in use or
    cannot be bound.
    """
    host, port = parse_http_addr(settings.http_addr)
    runner = web.AppRunner(
        create_app(settings, pool, worker),
        access_log_class=_DebugAccessLogger,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        if error.errno == errno.EADDRINUSE:
            reason = "the port is already in use"
        else:
            reason = error.strerror or str(error)
        raise ConfigurationError(
            f"cannot listen on INGEST_HTTP_ADDR {settings.http_addr!r}: {reason}; "
            "set it to a free host:port"
        ) from error
    log.info(
        "http server started",
        addresses=[_format_address(address) for address in runner.addresses],
        trace_token_required=settings.http_token is not None,
    )
    return runner


async def stop_http(runner: web.AppRunner) -> None:
    """Stop listening and wait up to SHUTDOWN_TIMEOUT_S for open requests."""
    await runner.cleanup()
    log.info("http server stopped")


@contextlib.asynccontextmanager
async def serve_http(
    settings: Settings, pool: asyncpg.Pool, worker: Worker
) -> AsyncIterator[web.AppRunner]:
    """Run the HTTP server for the duration of the block."""
    runner = await start_http(settings, pool, worker)
    try:
        yield runner
    finally:
        await stop_http(runner)


def _format_address(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _DebugAccessLogger(AbstractAccessLogger):
    """Access log at debug level, without headers, so tokens never reach it."""

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> None:
        log.debug(
            "http request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time * 1000, 1),
        )

    @property
    def enabled(self) -> bool:
        return logging.getLogger(__name__).isEnabledFor(logging.DEBUG)


def _json(
    document: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(document),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    document = {"ok": False, "error": {"code": code, "message": message}}
    return _json(document, status, headers)


@web.middleware
async def _error_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Log an unexpected handler error and return 500 without its details."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("http request failed", method=request.method, path=request.path)
        return _error(500, "INTERNAL_ERROR", "the request failed; see the worker log")


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    worker = request.app[_WORKER]
    failures: dict[str, str] = {}
    database_failure = await _check_database(request.app[_POOL])
    if database_failure is not None:
        failures["database"] = _redact(database_failure, request.app[_SETTINGS])
    if not worker.ready:
        failures["worker"] = (
            "the worker has not finished a cycle yet, or its last batch met a "
            "database or broker failure"
        )
    if not worker.consumer.assignment():
        failures["partitions"] = (
            f"no input partitions are assigned to this member of consumer group "
            f"{worker.settings.group_id!r} yet"
        )
    checks = {
        name: {"ok": False, "reason": failures[name]}
        if name in failures
        else {"ok": True}
        for name in ("database", "worker", "partitions")
    }
    if failures:
        return _json({"status": "not ready", "checks": checks}, 503)
    return _json({"status": "ready", "checks": checks})


async def _check_database(pool: asyncpg.Pool) -> str | None:
    """Return why `SELECT 1` failed or timed out, or None if it succeeded.

    The reason names the error class and the server's or system's message,
    which may name the host, port, user and database.
    """
    try:
        async with asyncio.timeout(READINESS_DATABASE_TIMEOUT_S):
            async with pool.acquire() as connection:
                await connection.fetchval("SELECT 1")
    except TimeoutError:
        return f"no answer to SELECT 1 within {READINESS_DATABASE_TIMEOUT_S:g} s"
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _redact(text: str, settings: Settings) -> str:
    """Replace the database URL and its password in `text` with `***`."""
    if settings.database_url is None:
        return text
    url = settings.database_url.get_secret_value()
    text = text.replace(url, redact_url(url))
    password = urlsplit(url).password
    if password:
        for form in {password, unquote(password)}:
            text = text.replace(form, "***")
    return text


async def _metrics(request: web.Request) -> web.Response:
    await request.app[_GAUGES].refresh()
    registry = request.app[_WORKER].metrics.registry
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(registry), headers={"Content-Type": content_type})


class GaugeRefresher:
    """Refresher of the consumer lag and outbox backlog gauges, run per scrape.

    Lag per assigned input partition is the end offset minus the committed
    offset (the beginning offset while nothing is committed, because the worker
    starts from the earliest record). It uses the worker's own consumer because
    the admin client's `list_consumer_group_offsets()` fails with a protocol
    decoding error against the embedded Tansu broker (aiokafka 0.14).
    Partitions no longer assigned lose their series.
    """

    def __init__(
        self, consumer: AIOKafkaConsumer, metrics: WorkerMetrics, pool: asyncpg.Pool
    ) -> None:
        self._consumer = consumer
        self._metrics = metrics
        self._pool = pool
        self._lock = asyncio.Lock()
        self._lag_series: set[TopicPartition] = set()
        # Names of the parts whose last refresh failed, to log a failure once
        # per outage instead of once per scrape.
        self._failing: set[str] = set()

    async def refresh(self) -> None:
        """Refresh both gauges, each within METRICS_REFRESH_TIMEOUT_S."""
        if self._lock.locked():
            # Another scrape is refreshing: wait for it and use its values, so
            # concurrent scrapes do not pile up requests on the broker and the
            # database.
            async with self._lock:
                return
        async with self._lock:
            await asyncio.gather(
                self._bounded("consumer lag", self._refresh_lag),
                self._bounded("outbox backlog", self._refresh_outbox),
            )

    async def _bounded(self, part: str, refresh: Callable[[], Awaitable[None]]) -> None:
        try:
            async with asyncio.timeout(METRICS_REFRESH_TIMEOUT_S):
                await refresh()
        except (
            TimeoutError,
            KafkaError,
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as error:
            if part not in self._failing:
                self._failing.add(part)
                log.warning(
                    "metrics refresh failed; the gauge keeps its previous value",
                    gauge=part,
                    error=repr(error),
                )
            return
        if part in self._failing:
            self._failing.discard(part)
            log.info("metrics refresh recovered", gauge=part)

    async def _refresh_lag(self) -> None:
        assignment = sorted(
            self._consumer.assignment(), key=lambda tp: (tp.topic, tp.partition)
        )
        lags: dict[TopicPartition, int] = {}
        if assignment:
            ends = await end_positions(self._consumer, list(assignment))
            committed = await asyncio.gather(
                *(self._consumer.committed(tp) for tp in assignment)
            )
            positions = dict(zip(assignment, committed, strict=True))
            uncommitted = [tp for tp, offset in positions.items() if offset is None]
            if uncommitted:
                positions.update(await self._consumer.beginning_offsets(uncommitted))
            for tp in assignment:
                lags[tp] = max(0, ends[tp] - positions[tp])
        for tp in self._lag_series - lags.keys():
            self._metrics.lag.remove(tp.topic, str(tp.partition))
        for tp, lag in lags.items():
            self._metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
        self._lag_series = set(lags)

    async def _refresh_outbox(self) -> None:
        async with self._pool.acquire() as connection:
            # Until the migration that creates the outbox has run, the
            # backlog stays 0.
            if not await connection.fetchval(_OUTBOX_EXISTS_SQL):
                return
            backlog = await connection.fetchval(_OUTBOX_COUNT_SQL)
        self._metrics.outbox_backlog.set(backlog)


_GAUGES = web.AppKey("gauges", GaugeRefresher)


async def _trace(request: web.Request) -> web.Response:
    settings = request.app[_SETTINGS]
    if settings.http_token is not None:
        denied = _check_bearer(request, settings.http_token.get_secret_value())
        if denied is not None:
            return denied
    sn = request.match_info["sn"]
    mode = request.query.get("mode", "run")
    if mode not in _TRACE_MODES:
        return _error(
            400, "INVALID_REQUEST", f"mode must be 'run' or 'latest', not {mode!r}"
        )
    try:
        async with (
            asyncio.timeout(TRACE_TIMEOUT_S),
            request.app[_POOL].acquire() as connection,
        ):
            data = await trace_unit(connection, sn, mode)  # type: ignore[arg-type]
    except UnitNotFound:
        return _json(not_found_document(sn), 404)
    except (TimeoutError, OSError, asyncpg.InterfaceError) as error:
        log.warning(
            "trace request failed: database unavailable",
            sn=sn,
            error=_redact(repr(error), request.app[_SETTINGS]),
        )
        return _error(
            503, "DATABASE_UNAVAILABLE", "the database did not answer; try again later"
        )
    return _json({"ok": True, "data": data})


def _check_bearer(request: web.Request, token: str) -> web.Response | None:
    """Return a 401 response unless the request carries the bearer token."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")

    if scheme.lower() != "bearer" or not presented.strip():
        return _error(
            401,
            "UNAUTHORIZED",
            "missing bearer token; send Authorization: Bearer <INGEST_HTTP_TOKEN>",
            {"WWW-Authenticate": 'Bearer realm="ingest-worker"'},
        )

    # Header values may carry undecodable bytes as surrogates, which
    # surrogateescape turns back into bytes instead of raising.
    try:
        presented_bytes = presented.strip().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        presented_bytes = b""

    # Comparing digests in constant time hides both the content and the
    # length of the expected token from response timing.
    matches = hmac.compare_digest(
        hashlib.sha256(presented_bytes).digest(),
        hashlib.sha256(token.encode("utf-8")).digest(),
    )
    if not matches:
        return _error(
            401,
            "UNAUTHORIZED",
            "invalid bearer token",
            {"WWW-Authenticate": 'Bearer realm="ingest-worker", error="invalid_token"'},
        )
    return None
