"""Settings: defaults, environment, overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from opamp_fast.errors import ConfigError
from opamp_fast.settings import OPTIONS, Settings


def test_defaults_are_valid() -> None:
    settings = Settings.from_sources(environ={})
    assert settings.port == 4320
    assert settings.opamp_path == "/v1/opamp"
    assert settings.max_message_bytes == 64 * 1024 * 1024
    assert settings.heartbeat_interval_s == 30
    assert settings.heartbeat_timeout_s == 60.0
    assert settings.database_url is None


def test_environment_then_overrides() -> None:
    env = {
        "OPAMP_FAST_PORT": "5000",
        "OPAMP_FAST_HEARTBEAT_TICK_S": "0.5",
        "OPAMP_FAST_DATA_DIR": "/tmp/x",
        "OPAMP_FAST_HOST": "0.0.0.0",
    }
    settings = Settings.from_sources(environ=env, overrides={"port": 6000, "host": None})
    assert settings.port == 6000  # flag beats environment
    assert settings.host == "0.0.0.0"  # an unset flag (None) leaves the environment's value
    assert settings.heartbeat_tick_s == 0.5
    assert settings.data_dir == Path("/tmp/x")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OPAMP_FAST_PORT": "abc"}, "OPAMP_FAST_PORT: 'abc' is not an integer"),
        ({"OPAMP_FAST_PORT": "70000"}, "port: 70000 must be between 1 and 65535"),
        ({"OPAMP_FAST_HEARTBEAT_TICK_S": "nan"}, "is not a finite number"),
        ({"OPAMP_FAST_HEARTBEAT_TICK_S": "0"}, "heartbeat_tick_s: 0.0 must be a positive number"),
        ({"OPAMP_FAST_HEARTBEAT_TIMEOUT_S": "0.1"}, "must be at least one tick"),
        ({"OPAMP_FAST_DATABASE_URL": "mysql://h/db"}, "must start with postgresql://"),
        ({"OPAMP_FAST_DATABASE_URL": "postgresql://h:port/db"}, "malformed port"),
        ({"OPAMP_FAST_OPAMP_PATH": "v1/opamp"}, "must be an absolute URL path"),
        ({"OPAMP_FAST_LOG_LEVEL": "loud"}, "log_level: 'loud' must be one of"),
        ({"OPAMP_FAST_MAX_MESSAGE_BYTES": "10"}, "must be at least 1024"),
        ({"OPAMP_FAST_REDACT_KEYS": "token,,key"}, "redact_keys: '' is not a word"),
        ({"OPAMP_FAST_REDACT_KEYS": "pw"}, "redact_keys: 'pw' is not a word of at least 3"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        Settings.from_sources(environ=env)
    assert message in str(info.value)


def test_the_secret_words_come_from_the_environment() -> None:
    assert Settings().redact_keys.split(",")[:2] == ["password", "passwd"]
    env = {"OPAMP_FAST_REDACT_KEYS": "password, x-api-key"}
    assert Settings.from_sources(environ=env).redact_keys == "password, x-api-key"


def test_secrets_are_redacted() -> None:
    settings = Settings(
        agent_auth_token="s3cret", database_url="postgresql://user:pw@db.example:5432/opamp"
    )
    shown = repr(settings.redacted())
    assert "s3cret" not in shown
    assert ":pw@" not in shown
    assert "postgresql://user:***@db.example:5432/opamp" in shown


def test_every_option_has_help_and_env() -> None:
    names = {opt.name for opt in OPTIONS}
    assert names == set(Settings.__dataclass_fields__)
    for opt in OPTIONS:
        assert opt.help
        assert opt.env.startswith("OPAMP_FAST_")
