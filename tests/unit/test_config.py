"""Settings: parsing, defaults, masking, and the README table generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_worker.core.config import Settings, markdown_table
from ingest_worker.core.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_without_environment() -> None:
    """An empty environment gives the documented defaults."""
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap_servers is None
    assert settings.raw_topic == "integration-events.raw"
    assert settings.api_port == 8080
    assert settings.stack_dir == Path(".local")


def test_values_are_parsed_to_their_types() -> None:
    """Numbers, paths and choices come out typed; empty strings count as unset."""
    settings = Settings.from_env(
        {
            "INGEST_API_PORT": "9000",
            "INGEST_MIGRATE_LOCK_TIMEOUT_S": "2.5",
            "INGEST_STACK_DIR": "/srv/stack",
            "INGEST_STACK_MODE": "local",
            "KAFKA_BOOTSTRAP_SERVERS": "",
        }
    )
    assert (settings.api_port, settings.migrate_lock_timeout_s) == (9000, 2.5)
    assert settings.stack_dir == Path("/srv/stack")
    assert settings.stack_mode == "local"
    assert settings.kafka_bootstrap_servers is None


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("INGEST_API_PORT", "eighty", "INGEST_API_PORT='eighty' is not a valid int"),
        ("INGEST_STACK_MODE", "cloud", "must be one of auto, local, docker"),
        ("INGEST_LOG_FORMAT", "xml", "must be one of json, console"),
    ],
)
def test_bad_values_name_the_variable(env: str, value: str, message: str) -> None:
    """A malformed value fails start-up with the variable's name in the message."""
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({env: value})


def test_secrets_are_masked() -> None:
    """Printing the settings never shows a token or a database password."""
    shown = Settings.from_env(
        {"INGEST_ADMIN_TOKEN": "s3cret", "DATABASE_URL": "postgresql://app:pw@db:5432/ingest"}
    ).masked()
    assert shown["admin_token"] == "****"
    assert shown["database_url"] == "postgresql://app:****@db:5432/ingest"
    assert "s3cret" not in str(shown)


def test_readme_configuration_table_matches_the_code() -> None:
    """The README's configuration table is exactly the one generated from Settings."""
    assert markdown_table() in README.read_text()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGEST_IDEMPOTENCY_TTL_S", "0"),
        ("INGEST_IDEMPOTENCY_TTL_S", "inf"),
        ("INGEST_IDEMPOTENCY_TTL_S", "1e300"),
        ("INGEST_MAX_AUTO_DEVICES", "-1"),
    ],
)
def test_limits_out_of_range_stop_the_start(name: str, value: str) -> None:
    """A claim lifetime outside (0, 10 years] or a negative device cap is a ConfigError."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
