"""Protobuf -> JSON converters used by the batch writer (no database)."""

from __future__ import annotations

import hashlib

import msgspec

from opamp_fast._proto.opamp.v1 import anyvalue_pb2 as av
from opamp_fast._proto.opamp.v1 import opamp_pb2 as pb
from opamp_fast.redaction import RedactionPolicy
from opamp_fast.storage.rows import (
    AgentSnapshot,
    any_value_to_json,
    capabilities_to_bigint,
    effective_config_hash,
)


def kv(key: str, **value: object) -> av.KeyValue:
    return av.KeyValue(key=key, value=av.AnyValue(**value))


def test_any_value_decodes_to_plain_values() -> None:
    nested = av.AnyValue(
        kvlist_value=av.KeyValueList(
            values=[
                kv("s", string_value="a\x00b"),
                kv("i", int_value=-(2**63)),
                kv("b", bool_value=True),
                kv("d", double_value=float("nan")),
                kv("raw", bytes_value=b"\x00\xff"),
                kv("unset"),
                av.KeyValue(
                    key="list",
                    value=av.AnyValue(
                        array_value=av.ArrayValue(values=[av.AnyValue(double_value=1.5)])
                    ),
                ),
            ]
        )
    )
    value = any_value_to_json(nested)
    assert value == {
        "s": "a\ufffdb",
        "i": -(2**63),
        "b": True,
        "d": "nan",
        "raw": {"base64": "AP8="},
        "unset": None,
        "list": [1.5],
    }
    msgspec.json.encode(value)  # always serialisable (no NaN, no NUL)


def test_snapshot_from_messages() -> None:
    description = pb.AgentDescription(
        identifying_attributes=[kv("service.name", string_value="otelcol")],
        non_identifying_attributes=[kv("os.type", string_value="linux")],
    )
    health = pb.ComponentHealth(
        healthy=False,
        last_error="boom",
        component_health_map={"pipeline:traces": pb.ComponentHealth(healthy=True)},
        attributes=[kv("k", int_value=1)],
    )
    snap = AgentSnapshot.from_messages(
        capabilities=0x2001,
        description=description,
        health=health,
        remote_config_status=pb.RemoteConfigStatus(
            last_remote_config_hash=b"\xab\xcd", status=3, error_message="bad yaml"
        ),
        transport="ws",
    ).row()
    assert snap.agent_name == "otelcol"
    assert snap.description == {
        "identifying_attributes": {"service.name": "otelcol"},
        "non_identifying_attributes": {"os.type": "linux"},
    }
    assert snap.health is not None
    assert snap.health["last_error"] == "boom"
    assert snap.health["attributes"] == {"k": 1}
    assert snap.health["component_health_map"] == {
        "pipeline:traces": {
            "healthy": True,
            "start_time_unix_nano": 0,
            "last_error": "",
            "status": "",
            "status_time_unix_nano": 0,
        }
    }
    assert snap.effective_config is None
    assert snap.remote_config_status == {
        "last_remote_config_hash": "abcd",
        "status": "FAILED",
        "error_message": "bad yaml",
    }


def test_credentials_in_reported_errors_are_redacted() -> None:
    """What an agent says went wrong often quotes the URL or header it failed with."""
    failed_url = 'Post "https://svc:hunter2@otlp.example.com/v1/traces": dial tcp: refused'
    health = pb.ComponentHealth(
        healthy=False,
        last_error="exporter\x00 failed: Authorization: Bearer abcdefgh12345678",
        component_health_map={
            "exporter:otlphttp": pb.ComponentHealth(last_error=failed_url, status="StatusOK")
        },
    )
    snap = AgentSnapshot.from_messages(
        health=health,
        remote_config_status=pb.RemoteConfigStatus(
            status=3, error_message="cannot read -----BEGIN PRIVATE KEY-----\nMIIEv\n"
        ),
        transport="ws",
    ).row()
    assert snap.health is not None and snap.remote_config_status is not None
    assert snap.health["last_error"] == "exporter\ufffd failed: Authorization: Bearer <redacted>"
    child = snap.health["component_health_map"]["exporter:otlphttp"]
    assert child["last_error"] == (
        'Post "https://svc:<redacted>@otlp.example.com/v1/traces": dial tcp: refused'
    )
    assert child["status"] == "StatusOK"
    assert snap.remote_config_status["error_message"] == (
        "cannot read -----BEGIN PRIVATE KEY-----<redacted>"
    )


def test_effective_configs_are_redacted_and_hashed() -> None:
    body = b"exporters:\n  otlp:\n    headers:\n      api-key: s3cret\n"
    config = pb.EffectiveConfig(
        config_map=pb.AgentConfigMap(
            config_map={
                "c.yaml": pb.AgentConfigFile(body=body, content_type="text/yaml"),
                "odd\x00name": pb.AgentConfigFile(body=b"\xff"),
            }
        )
    )
    shown = AgentSnapshot.from_messages(effective_config=config).row().effective_config
    assert shown is not None
    files = shown["config_map"]
    assert files["c.yaml"]["body"] == body.decode().replace("s3cret", "<redacted>")
    assert files["c.yaml"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert files["odd\ufffdname"]["withheld"] == "binary (not UTF-8 text)"
    assert shown["sha256"] == effective_config_hash(config).hex()
    assert shown["redaction"] == RedactionPolicy().fingerprint
    assert (
        AgentSnapshot.from_messages(effective_config=config).row(effective=False).effective_config
        is None
    )
    msgspec.json.encode(shown)


def test_capabilities_fit_bigint() -> None:
    assert capabilities_to_bigint(5) == 5
    assert capabilities_to_bigint(2**64 - 1) == -1
    assert capabilities_to_bigint(2**63) == -(2**63)
