"""Connection settings as operators write them (connection_settings.model): the checks, the
masking of header values, precedence, and the offer's parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opamp_fast.connection_settings.model import (
    MASK,
    ConnectionSettings,
    SettingsInputError,
    build_parts,
    parse_settings,
)
from tests.helpers.certs import make_ca

METRICS = "https://otlp.example:4318/v1/metrics"


def parse(body: Any, stored: ConnectionSettings | None = None) -> ConnectionSettings:
    return parse_settings(body, stored=stored)


def test_round_trip_and_masking() -> None:
    body = {
        "telemetry": {"metrics": {"endpoint": METRICS, "headers": {"Authorization": "Bearer k"}}},
        "opamp": {
            "endpoint": "wss://new.example/v1/opamp",
            "confirm_endpoint": "wss://new.example/v1/opamp",
            "headers": {"X-Token": "t"},
            "heartbeat_interval_seconds": 20,
        },
    }
    settings = parse(body)
    stored = settings.to_json(masked=False)
    assert ConnectionSettings.from_json(stored) == settings
    shown = settings.to_json(masked=True)
    assert shown["telemetry"]["metrics"]["headers"] == {"Authorization": MASK}
    assert shown["opamp"] == {
        "endpoint": "wss://new.example/v1/opamp",
        "headers": {"X-Token": MASK},
        "heartbeat_interval_seconds": 20,
    }
    assert "Bearer k" not in repr(settings) and "Bearer k" not in str(shown)


def test_a_masked_header_keeps_the_stored_value_and_needs_one() -> None:
    stored = parse({"telemetry": {"metrics": {"endpoint": METRICS, "headers": {"Api-Key": "s"}}}})
    again = parse(
        {"telemetry": {"metrics": {"endpoint": METRICS, "headers": {"api-key": MASK}}}}, stored
    )
    assert again.signal("metrics").headers == (("api-key", "s"),)  # type: ignore[union-attr]
    with pytest.raises(SettingsInputError) as refused:
        parse(
            {"telemetry": {"traces": {"endpoint": METRICS, "headers": {"Api-Key": MASK}}}}, stored
        )
    assert refused.value.code == "masked_header"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"opamp": {"endpoint": "wss://a/"}}, "endpoint_not_confirmed"),
        (
            {"opamp": {"endpoint": "wss://a/", "confirm_endpoint": "wss://b/"}},
            "endpoint_not_confirmed",
        ),
        ({"opamp": {"confirm_endpoint": "wss://a/"}}, "invalid_body"),
        ({"opamp": {"endpoint": "tcp://a/", "confirm_endpoint": "tcp://a/"}}, "invalid_body"),
        ({"opamp": {"heartbeat_interval_seconds": 0}}, "invalid_body"),
        ({"opamp": {"heartbeat_interval_seconds": 86401}}, "invalid_body"),
        ({"opamp": {"heartbeat_interval_seconds": "30"}}, "invalid_body"),
        ({"telemetry": {"profiles": {"endpoint": METRICS}}}, "invalid_body"),
        ({"telemetry": {"metrics": {}}}, "invalid_body"),
        ({"telemetry": {"metrics": {"endpoint": "https:///v1/metrics"}}}, "invalid_body"),
        ({"telemetry": {"metrics": {"endpoint": "https://a:99999/"}}}, "invalid_body"),
        ({"telemetry": {"metrics": {"endpoint": "https://a b/"}}}, "invalid_body"),
        ({"telemetry": {"metrics": {"endpoint": METRICS, "headers": {"": "x"}}}}, "invalid_body"),
        (
            {"telemetry": {"metrics": {"endpoint": METRICS, "headers": {"a": "b\n"}}}},
            "invalid_body",
        ),
        ({"telemetry": {"metrics": {"endpoint": METRICS, "headers": {"a": 1}}}}, "invalid_body"),
        (
            {"telemetry": {"metrics": {"endpoint": METRICS, "headers": {"A": "1", "a": "2"}}}},
            "invalid_body",
        ),
        ({"telemetry": {"metrics": {"endpoint": METRICS, "tls_ca_pem": "nope"}}}, "invalid_body"),
        ({"telemetry": {"metrics": {"endpoint": METRICS, "extra": 1}}}, "invalid_body"),
        ({"telemetry": []}, "invalid_body"),
        ([], "invalid_body"),
    ],
)
def test_bad_input_is_refused_with_a_reason(body: Any, code: str) -> None:
    with pytest.raises(SettingsInputError) as refused:
        parse(body)
    assert refused.value.code == code


def test_tls_ca_pem_must_hold_certificates(tmp_path: Path) -> None:
    ca_pem = make_ca(tmp_path).cert.read_text()
    settings = parse({"telemetry": {"logs": {"endpoint": METRICS, "tls_ca_pem": ca_pem}}})
    parts = build_parts(settings, 30)
    assert parts.own_logs is not None and parts.own_logs.tls.ca_pem_contents == ca_pem


def test_agent_override_replaces_parts_one_by_one() -> None:
    group = parse(
        {
            "telemetry": {
                "metrics": {"endpoint": "https://g/v1/metrics"},
                "logs": {"endpoint": "https://g/v1/logs"},
            },
            "opamp": {"heartbeat_interval_seconds": 15},
        }
    )
    mine = parse({"telemetry": {"metrics": {"endpoint": "https://a/v1/metrics"}}})
    merged = group.merged(mine)
    assert merged.signal("metrics").endpoint == "https://a/v1/metrics"  # type: ignore[union-attr]
    assert merged.signal("logs").endpoint == "https://g/v1/logs"  # type: ignore[union-attr]
    assert merged.opamp == group.opamp
    assert group.merged(None) is group and group.merged(ConnectionSettings()) is group


def test_parts_always_carry_a_heartbeat() -> None:
    parts = build_parts(
        parse({"opamp": {"endpoint": "wss://x/", "confirm_endpoint": "wss://x/"}}), 30
    )
    assert parts.opamp.heartbeat_interval_seconds == 30
    assert parts.opamp.destination_endpoint == "wss://x/"
    assert build_parts(ConnectionSettings(), 7).opamp.heartbeat_interval_seconds == 7
