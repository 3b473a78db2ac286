"""Settings of the worker, read from the environment.

Every default lives here. Names carry their unit (`_s`, `_ms`, `_bytes`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from ingest_worker.errors import ConfigurationError, ErrorCode

EventType = Literal["AUTO", "BATCH", "TEST"]

DEFERRABLE_CODES = (
    ErrorCode.RUN_NOT_FOUND,
    ErrorCode.UNIT_RUN_NOT_FOUND,
    ErrorCode.UNIT_NOT_FOUND,
    ErrorCode.STATION_NOT_FOUND,
    ErrorCode.RUN_IN_PREP,
    ErrorCode.RUN_NOT_AUTHORIZED,
    ErrorCode.STEP_NOT_REACHED,
    ErrorCode.INGEST_CONFLICT,
)


class Topics(BaseModel):
    """Topic names; each input topic is bound to one event type."""

    model_config = ConfigDict(frozen=True)

    auto: str = "mes.ingest.auto"
    batch: str = "mes.ingest.batch"
    test: str = "mes.ingest.test"
    retry: str = "mes.ingest.retry"
    dlq: str = "mes.ingest.dlq"
    normalized: str = "mes.ingest.normalized"

    def input_topics(self) -> dict[str, EventType]:
        return {self.auto: "AUTO", self.batch: "BATCH", self.test: "TEST"}

    def topic_for(self, event_type: EventType) -> str:
        return {"AUTO": self.auto, "BATCH": self.batch, "TEST": self.test}[event_type]

    def all_topics(self) -> list[str]:
        return [self.auto, self.batch, self.test, self.retry, self.dlq, self.normalized]


class Limits(BaseModel):
    """Envelope limits of the contract; records beyond them are rejected."""

    model_config = ConfigDict(frozen=True)

    max_value_bytes: int = Field(default=1024 * 1024, gt=0)
    max_nesting_depth: int = Field(default=64, gt=0)
    max_measurements: int = Field(default=10_000, gt=0)
    max_sn_list: int = Field(default=1_000, gt=0)


class KafkaSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    enable_idempotence: bool = True

    def client_options(self) -> dict[str, object]:
        """Return the connection options shared by producers, consumers, admin."""
        if not self.bootstrap_servers:
            raise ConfigurationError(
                "KAFKA_BOOTSTRAP_SERVERS is not set; set it to host:port of the "
                "broker, or use `ingest-worker dev` for an embedded one"
            )
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile or self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            # Without a CA file the system's trusted certificates apply.
            options["ssl_context"] = ssl.create_default_context(
                cafile=self.ssl_cafile or None
            )
        return options


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    database_url: SecretStr | None = None
    kafka: KafkaSettings = KafkaSettings()
    group_id: str = "mes-ingest-worker"
    topics: Topics = Topics()
    limits: Limits = Limits()
    retry_delays_s: tuple[Annotated[float, Field(ge=0)], ...] = (10.0, 60.0, 300.0)
    deferrable_codes: frozenset[ErrorCode] = frozenset(DEFERRABLE_CODES)
    max_replays: int = 5
    http_addr: str = "127.0.0.1:8080"
    http_token: SecretStr | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = None
    # Records fetched per poll, over all assigned partitions.
    max_batch_records: int = Field(default=500, gt=0)
    poll_timeout_ms: int = Field(default=500, gt=0)
    # A member silent this long leaves the group. Some brokers (Tansu among
    # them) also wait about half of it before the first assignment.
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    # Attempts of one batch transaction when a unit changed under it.
    conflict_attempts: int = Field(default=3, gt=0)
    db_pool_size: int = Field(default=4, gt=0)

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigurationError(
                "DATABASE_URL is not set; set it to a postgresql:// URL, or use "
                "`ingest-worker dev` for an embedded database"
            )
        return self.database_url.get_secret_value()


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from environment variables (or a given mapping)."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    kafka: dict[str, object] = {}
    topics: dict[str, object] = {}

    def take(name: str, target: dict[str, object], key: str) -> None:
        value = env.get(name)
        if value not in (None, ""):
            target[key] = value

    take("DATABASE_URL", raw, "database_url")
    take("KAFKA_BOOTSTRAP_SERVERS", kafka, "bootstrap_servers")
    take("KAFKA_SECURITY_PROTOCOL", kafka, "security_protocol")
    take("KAFKA_SASL_MECHANISM", kafka, "sasl_mechanism")
    take("KAFKA_SASL_USERNAME", kafka, "sasl_username")
    take("KAFKA_SASL_PASSWORD", kafka, "sasl_password")
    take("KAFKA_SSL_CAFILE", kafka, "ssl_cafile")
    take("KAFKA_ENABLE_IDEMPOTENCE", kafka, "enable_idempotence")
    take("INGEST_GROUP_ID", raw, "group_id")
    for suffix in ("AUTO", "BATCH", "TEST", "RETRY", "DLQ", "NORMALIZED"):
        take(f"INGEST_TOPIC_{suffix}", topics, suffix.lower())
    take("INGEST_MAX_REPLAYS", raw, "max_replays")
    take("INGEST_HTTP_ADDR", raw, "http_addr")
    take("INGEST_HTTP_TOKEN", raw, "http_token")
    take("LOG_LEVEL", raw, "log_level")
    take("LOG_FORMAT", raw, "log_format")
    take("INGEST_MAX_BATCH_RECORDS", raw, "max_batch_records")
    take("INGEST_SESSION_TIMEOUT_MS", raw, "session_timeout_ms")
    if env.get("INGEST_RETRY_DELAYS_S") is not None:
        # An empty schedule sends deferrable failures straight to dead letters.
        raw["retry_delays_s"] = tuple(_split(env["INGEST_RETRY_DELAYS_S"]))
    if env.get("INGEST_DEFERRABLE_CODES") is not None:
        raw["deferrable_codes"] = frozenset(_split(env["INGEST_DEFERRABLE_CODES"]))
    raw["kafka"] = kafka
    raw["topics"] = topics
    try:
        return Settings.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from error
