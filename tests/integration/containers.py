"""PostgreSQL and Kafka in containers, for machines with a Docker engine.

Without a reachable engine every helper here skips the test that asked for it:
the embedded servers stand in, and nothing pretends to be a container.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

POSTGRES_IMAGE = "postgres:16-alpine"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"


def require_docker() -> None:
    """Skip the calling test unless a Docker engine responds."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as error:  # the client raises many types for "no engine"
        pytest.skip(f"no Docker engine is reachable: {type(error).__name__}")


@contextlib.contextmanager
def postgres_container() -> Iterator[str]:
    """Yield the URL of a PostgreSQL server in a container (user may create dbs)."""
    require_docker()
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
        yield container.get_connection_url()


@contextlib.contextmanager
def kafka_container() -> Iterator[str]:
    """Yield the bootstrap address of a single Kafka broker in a container."""
    require_docker()
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
        yield container.get_bootstrap_server()
