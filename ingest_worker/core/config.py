"""Typed settings, read once from the environment and passed explicitly."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ingest_worker.core.errors import ConfigError

StackMode = Literal["auto", "local", "docker"]
MAX_IDEMPOTENCY_TTL_S = 10 * 365 * 86400.0
LogFormat = Literal["json", "console"]
Validation = Literal["sync", "async"]
Switch = Literal["on", "off"]
TracingMode = Literal["off", "otlp"]
# A lone node, or the smallest quorum that outlives the loss of a node.
KAFKA_NODES = (1, 3)


def _setting(env: str, default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc, "secret": secret})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of every process; one field per environment variable."""

    kafka_bootstrap_servers: str | None = _setting(
        "KAFKA_BOOTSTRAP_SERVERS",
        None,
        "Kafka bootstrap address. Unset: `make run` and the tests start a local broker.",
    )
    database_url: str | None = _setting(
        "DATABASE_URL",
        None,
        "PostgreSQL connection URL. Unset: `make run` and the tests start a local server.",
        secret=True,
    )
    admin_token: str | None = _setting(
        "INGEST_ADMIN_TOKEN",
        None,
        "Bootstrap admin token. Unset: `make run` generates one and prints it.",
        secret=True,
    )
    api_host: str = _setting("INGEST_API_HOST", "127.0.0.1", "Address the API listens on.")
    api_port: int = _setting("INGEST_API_PORT", 8080, "Port the API listens on.")
    raw_topic: str = _setting(
        "INGEST_RAW_TOPIC", "integration-events.raw", "Topic the shim publishes raw events to."
    )
    accepted_topic: str = _setting(
        "INGEST_ACCEPTED_TOPIC",
        "integration-events.accepted",
        "Topic of accepted events (Avro).",
    )
    rejected_topic: str = _setting(
        "INGEST_REJECTED_TOPIC",
        "integration-events.rejected",
        "Topic of rejected events (JSON, with a reason).",
    )
    group_id: str = _setting("INGEST_GROUP_ID", "ingest-worker", "Consumer group of the workers.")
    max_body_bytes: int = _setting(
        "INGEST_MAX_BODY_BYTES", 1_048_576, "Largest ingest or management body (413 above)."
    )
    max_import_bytes: int = _setting(
        "INGEST_MAX_IMPORT_BYTES", 10_485_760, "Largest import body (413 above)."
    )
    rate_limit_per_s: float = _setting(
        "INGEST_RATE_LIMIT_PER_S",
        2000.0,
        "Requests per second per token (token bucket; 0 turns it off). 429 above.",
    )
    rate_limit_burst: float = _setting(
        "INGEST_RATE_LIMIT_BURST", 4000.0, "Bucket size: requests a token may send at once."
    )
    publish_timeout_s: float = _setting(
        "INGEST_PUBLISH_TIMEOUT_S",
        5.0,
        "Longest wait for Kafka's acknowledgement before answering 503.",
    )
    producer_linger_ms: int = _setting(
        "INGEST_PRODUCER_LINGER_MS", 1, "Producer batching delay (ms)."
    )
    auth_refresh_s: float = _setting(
        "INGEST_AUTH_REFRESH_S",
        5.0,
        "Longest time a revoked token keeps working if a change notification is lost.",
    )
    db_pool_max: int = _setting(
        "INGEST_DB_POOL_MAX",
        10,
        "PostgreSQL connections per API process, at most (a worker uses at most 4).",
    )
    worker_batch_max_records: int = _setting(
        "INGEST_WORKER_BATCH_MAX_RECORDS", 2000, "Most raw records the worker takes per batch."
    )
    worker_poll_timeout_ms: int = _setting(
        "INGEST_WORKER_POLL_TIMEOUT_MS",
        100,
        "Longest a poll waits for a record when none has come (ms); what has come is taken "
        "at once, up to the batch size.",
    )
    worker_http_port: int = _setting(
        "INGEST_WORKER_HTTP_PORT",
        8081,
        "Worker's `/healthz`, `/readyz` and `/metrics` port (0: off).",
    )
    worker_commit_interval_ms: int = _setting(
        "INGEST_WORKER_COMMIT_INTERVAL_MS",
        100,
        "Longest a worker's Kafka transaction stays open before it commits (ms): batches "
        "polled meanwhile share it, so many partitions cost one commit, not one each.",
    )
    worker_txn_max_records: int = _setting(
        "INGEST_WORKER_TXN_MAX_RECORDS",
        10000,
        "Most raw records one Kafka transaction takes before it commits, whatever the interval.",
    )
    transactional_id: str | None = _setting(
        "INGEST_TRANSACTIONAL_ID",
        None,
        "The worker's transactional id; unique per live process, stable per replica (a restart "
        "with the same id settles its predecessor's open transaction at once). Unset: "
        "`{prefix}-{group}-{hostname}-{pid}`.",
    )
    transactional_id_prefix: str = _setting(
        "INGEST_TRANSACTIONAL_ID_PREFIX",
        "ingest-worker",
        "Prefix of the default transactional id.",
    )
    kafka_timeout_s: float = _setting(
        "INGEST_KAFKA_TIMEOUT_S",
        10.0,
        "Worker's bound on one Kafka call (commit, abort, offsets); past it the work since the "
        "last commit is done again.",
    )
    catalog_max_age_s: float = _setting(
        "INGEST_CATALOG_MAX_AGE_S",
        30.0,
        "Longest a worker uses a cached event type if a change notification is lost.",
    )
    device_cache_size: int = _setting(
        "INGEST_DEVICE_CACHE_SIZE",
        100_000,
        "Most resolved devices a worker keeps in memory (those held longest go first; 0: none).",
    )
    backoff_max_s: float = _setting(
        "INGEST_BACKOFF_MAX_S", 10.0, "Longest pause between retries while a dependency is down."
    )
    idempotency_ttl_s: float = _setting(
        "INGEST_IDEMPOTENCY_TTL_S",
        86400.0,
        "How long an Idempotency-Key claim holds; older claims are dropped and the key is free.",
    )
    max_auto_devices: int = _setting(
        "INGEST_MAX_AUTO_DEVICES",
        0,
        "Most devices the worker auto-creates per integration (0: no limit); events that would "
        "create more are rejected `device_limit_reached`.",
    )
    migrate_lock_timeout_s: float = _setting(
        "INGEST_MIGRATE_LOCK_TIMEOUT_S",
        120.0,
        "How long `migrate` waits for another replica's migration lock before failing.",
    )
    api_validation: Validation = _setting(
        "INGEST_API_VALIDATION",
        "sync",
        "`sync`: the API answers at once what it can decide from its cached catalog (unknown "
        "event type, attributes, a device not in the integration, no way to resolve one), "
        "with the worker's codes; `async`: only the request shape, the worker decides the rest.",
    )
    event_store: Switch = _setting(
        "INGEST_EVENT_STORE",
        "on",
        "`on`: the worker stores every event (accepted and rejected) in PostgreSQL and the "
        "event endpoints read and change them; `off`: the stream only, and the event "
        "endpoints answer 501 `event_store_disabled`.",
    )
    event_retention_days: int = _setting(
        "INGEST_EVENT_RETENTION_DAYS",
        30,
        "Days a stored event is kept, counted from when it was received; older days of the "
        "store are dropped whole (one partition per day).",
    )
    tracing: TracingMode = _setting(
        "INGEST_TRACING",
        "off",
        "OpenTelemetry traces: `off`, or `otlp` (a span per request and per record, exported "
        "to `OTEL_EXPORTER_OTLP_ENDPOINT`; needs the `otel` extra).",
    )
    log_level: str = _setting("INGEST_LOG_LEVEL", "INFO", "Log level (DEBUG, INFO, WARNING...).")
    log_format: LogFormat = _setting(
        "INGEST_LOG_FORMAT", "json", "`json` (one object per line) or `console`."
    )
    stack_mode: StackMode = _setting(
        "INGEST_STACK_MODE",
        "auto",
        "Local stack when endpoints are unset: `auto` (Docker if it answers, else local "
        "processes), `local` or `docker`.",
    )
    stack_kafka_image: str | None = _setting(
        "INGEST_STACK_KAFKA_IMAGE",
        None,
        "Kafka image of the `docker` stack mode (default `apache/kafka:<the pom's version>`).",
    )
    stack_postgres_image: str = _setting(
        "INGEST_STACK_POSTGRES_IMAGE",
        "postgres:16-alpine",
        "PostgreSQL image of the `docker` stack mode.",
    )
    stack_dir: Path = _setting(
        "INGEST_STACK_DIR",
        Path(".local"),
        "Directory of the local stack: Kafka jars, data and logs.",
    )
    kafka_nodes: int = _setting(
        "INGEST_KAFKA_NODES",
        1,
        "Nodes of the local Kafka started when `KAFKA_BOOTSTRAP_SERVERS` is unset: 1, or 3 "
        "(local processes, also in `auto` mode, refused in `docker` mode; topics get 3 "
        "replicas, 2 in sync).",
    )

    def __post_init__(self) -> None:
        if not 0 < self.idempotency_ttl_s <= MAX_IDEMPOTENCY_TTL_S:
            raise ConfigError(
                f"INGEST_IDEMPOTENCY_TTL_S must be above 0 and at most {MAX_IDEMPOTENCY_TTL_S:.0f}"
            )
        if self.device_cache_size < 0:
            raise ConfigError("INGEST_DEVICE_CACHE_SIZE must be 0 (no cache) or more")
        if self.max_auto_devices < 0:
            raise ConfigError("INGEST_MAX_AUTO_DEVICES must be 0 (no limit) or more")
        if self.event_retention_days < 1:
            raise ConfigError("INGEST_EVENT_RETENTION_DAYS must be 1 or more")
        if self.worker_commit_interval_ms < 0 or self.worker_txn_max_records < 1:
            raise ConfigError(
                "INGEST_WORKER_COMMIT_INTERVAL_MS must be 0 or more and "
                "INGEST_WORKER_TXN_MAX_RECORDS at least 1"
            )
        if self.kafka_nodes not in KAFKA_NODES:
            raise ConfigError("INGEST_KAFKA_NODES must be 1 or 3")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse the settings from an environment mapping; raise ConfigError on bad values."""
        values = {
            f.name: _parse(f, environ[f.metadata["env"]])
            for f in dataclasses.fields(cls)
            if environ.get(f.metadata["env"], "") != ""
        }
        return cls(**values)

    def masked(self) -> dict[str, str]:
        """The settings as printable strings, secrets masked."""
        return {f.name: _display(f, getattr(self, f.name)) for f in dataclasses.fields(self)}


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    env = f.metadata["env"]
    kind = f.type if isinstance(f.type, str) else str(f.type)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError as exc:
        raise ConfigError(f"{env}={raw!r} is not a valid {kind}") from exc
    choices = _LITERALS.get(kind)
    if choices is not None and raw not in choices:
        raise ConfigError(f"{env}={raw!r} must be one of {', '.join(choices)}")
    return raw


_LITERALS: dict[str, tuple[str, ...]] = {
    "StackMode": get_args(StackMode),
    "LogFormat": get_args(LogFormat),
    "Validation": get_args(Validation),
    "Switch": get_args(Switch),
    "TracingMode": get_args(TracingMode),
}


def _display(f: dataclasses.Field[Any], value: Any) -> str:
    if value is None:
        return "(unset)"
    if f.metadata["secret"]:
        return _mask_url(str(value)) if "://" in str(value) else "****"
    return str(value)


def _mask_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:****@{host}"


def markdown_table() -> str:
    """The README's configuration table, generated from the Settings fields."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = "(unset)" if f.default is None else f"`{f.default}`"
        rows.append(f"| `{f.metadata['env']}` | {default} | {f.metadata['doc']} |")
    return "\n".join(rows)
