"""Plain data handed to the batch writer, and converters from OpAMP protobuf to JSON-able values.

Why this exists: the writer stores agent status sub-messages as ``jsonb`` so the REST API can
serve them without protobuf. The handler takes an :class:`AgentSnapshot` (references to the
agent's immutable merged messages) when the status *changes* (rare next to heartbeats); the
writer coalesces snapshots per agent and converts only the last one, in its worker thread.

The converters are hand-written rather than ``json_format.MessageToDict``: they are several times
faster, decode ``AnyValue`` to plain Python values (not ``{"stringValue": ...}``), and make every
string safe for Postgres, which rejects NUL characters in ``text`` and ``\\u0000`` in ``jsonb``.

Conventions of the JSON shapes:
- attributes (``repeated KeyValue``) become an object ``{key: value}`` (a later duplicate key wins);
- ``bytes`` become ``{"base64": "..."}`` (AnyValue);
- effective config files are shown redacted (``redaction.ConfigRedactor``): the body with its
  secrets replaced, or withheld, with the sha256 and size of what the agent reported; the whole
  config gets the hash OpAMP uses for remote configs (``remote_config_hash``);
- hashes become lowercase hex strings; enums their short name (``"APPLIED"``);
- times stay as the protocol's integer UNIX nanoseconds.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from ..protocol import remote_config_hash
from ..redaction import ConfigRedactor, redact_error_text, without_nul

if TYPE_CHECKING:
    from .._proto.opamp.v1 import anyvalue_pb2, opamp_pb2

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None
JSONObject: TypeAlias = dict[str, JSON]

SERVICE_NAME_KEY = "service.name"


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """The JSON-able agent-row fields of one snapshot. ``None``: not reported."""

    agent_name: str | None
    description: JSONObject | None
    health: JSONObject | None
    effective_config: JSONObject | None
    remote_config_status: JSONObject | None
    custom_capabilities: list[str] | None = None


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """The agent's full merged state (status compression applied) at one moment, for the writer.

    It holds the protobuf messages themselves, not their JSON: the protocol state replaces a
    sub-message wholesale when it changes and never mutates a stored one, so keeping references
    is safe and costs nothing on the event loop. The conversion (:meth:`row`) runs in the
    writer's worker thread at flush time, only for the last snapshot of each agent in a batch.
    A snapshot replaces the previous one as a whole (last one wins).
    """

    capabilities: int = 0
    description: opamp_pb2.AgentDescription | None = None
    health: opamp_pb2.ComponentHealth | None = None
    effective_config: opamp_pb2.EffectiveConfig | None = None
    remote_config_status: opamp_pb2.RemoteConfigStatus | None = None
    transport: str | None = None
    proven: bool = False  # the session that reported it proved the uid (bound credentials)
    custom_capabilities: opamp_pb2.CustomCapabilities | None = None
    available_components: opamp_pb2.AvailableComponents | None = None

    @classmethod
    def from_messages(
        cls,
        *,
        capabilities: int = 0,
        description: opamp_pb2.AgentDescription | None = None,
        health: opamp_pb2.ComponentHealth | None = None,
        effective_config: opamp_pb2.EffectiveConfig | None = None,
        remote_config_status: opamp_pb2.RemoteConfigStatus | None = None,
        transport: str | None = None,
        proven: bool = False,
        custom_capabilities: opamp_pb2.CustomCapabilities | None = None,
        available_components: opamp_pb2.AvailableComponents | None = None,
    ) -> AgentSnapshot:
        """A snapshot of these messages (``None`` for a message not reported); the caller
        must not mutate them afterwards."""
        return cls(
            capabilities,
            description,
            health,
            effective_config,
            remote_config_status,
            transport,
            proven,
            custom_capabilities,
            available_components,
        )

    def row(self, redactor: ConfigRedactor | None = None, *, effective: bool = True) -> SnapshotRow:
        """Convert to the stored JSON shapes (costly for big descriptions and configs: off the
        loop). ``effective=False`` leaves the effective config out (None: the stored one is
        already this one)."""
        description = self.description
        return SnapshotRow(
            agent_name=agent_name(description) if description is not None else None,
            description=description_to_json(description) if description is not None else None,
            health=health_to_json(self.health) if self.health is not None else None,
            effective_config=(
                effective_config_to_json(self.effective_config, redactor or _DEFAULT_REDACTOR)
                if self.effective_config is not None and effective
                else None
            ),
            remote_config_status=(
                remote_config_status_to_json(self.remote_config_status)
                if self.remote_config_status is not None
                else None
            ),
            custom_capabilities=(
                [without_nul(c) for c in self.custom_capabilities.capabilities]
                if self.custom_capabilities is not None
                else None
            ),
        )


def _float(value: float) -> JSON:
    # JSON (and jsonb) has no NaN/Infinity: keep the information as a string.
    return value if math.isfinite(value) else str(value)


def any_value_to_json(value: anyvalue_pb2.AnyValue) -> JSON:
    """An OTLP/OpAMP ``AnyValue`` as a plain Python value (``None`` when unset)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return without_nul(value.string_value)
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        return _float(value.double_value)
    if kind == "array_value":
        return [any_value_to_json(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return key_values_to_json(value.kvlist_value.values)
    if kind == "bytes_value":
        return {"base64": base64.b64encode(value.bytes_value).decode("ascii")}
    return None


def key_values_to_json(items: Iterable[anyvalue_pb2.KeyValue]) -> JSONObject:
    """``repeated KeyValue`` as ``{key: value}``."""
    return {without_nul(kv.key): any_value_to_json(kv.value) for kv in items}


def description_to_json(description: opamp_pb2.AgentDescription) -> JSONObject:
    return {
        "identifying_attributes": key_values_to_json(description.identifying_attributes),
        "non_identifying_attributes": key_values_to_json(description.non_identifying_attributes),
    }


def agent_name(description: opamp_pb2.AgentDescription) -> str | None:
    """``service.name`` from the identifying attributes (the name the API searches), if a string."""
    name: str | None = None
    for kv in description.identifying_attributes:
        if kv.key == SERVICE_NAME_KEY and kv.value.WhichOneof("value") == "string_value":
            name = without_nul(kv.value.string_value)
    return name


def health_to_json(health: opamp_pb2.ComponentHealth) -> JSONObject:
    """``ComponentHealth`` (recursively: ``component_health_map``)."""
    out: JSONObject = {
        "healthy": health.healthy,
        "start_time_unix_nano": health.start_time_unix_nano,
        "last_error": redact_error_text(health.last_error),
        "status": redact_error_text(health.status),
        "status_time_unix_nano": health.status_time_unix_nano,
    }
    if health.attributes:
        out["attributes"] = key_values_to_json(health.attributes)
    if health.component_health_map:
        out["component_health_map"] = {
            without_nul(name): health_to_json(child)
            for name, child in health.component_health_map.items()
        }
    return out


_DEFAULT_REDACTOR = ConfigRedactor()


def effective_config_hash(config: opamp_pb2.EffectiveConfig) -> bytes:
    """The hash of what the agent reported, computed as OpAMP's remote config hash."""
    files = config.config_map.config_map
    return remote_config_hash({name: (f.body, f.content_type) for name, f in files.items()})


def effective_config_to_json(
    config: opamp_pb2.EffectiveConfig, redactor: ConfigRedactor
) -> JSONObject:
    """The reported files, redacted (see ``redaction``), each with the sha256 of its body; the
    whole with :func:`effective_config_hash` and the redaction policy's fingerprint."""
    files = config.config_map.config_map
    return {
        "config_map": {
            without_nul(name): redactor.file_json(f.body, f.content_type)
            for name, f in files.items()
        },
        "sha256": effective_config_hash(config).hex(),
        "redaction": redactor.fingerprint,
    }


_REMOTE_CONFIG_STATUSES = {0: "UNSET", 1: "APPLIED", 2: "APPLYING", 3: "FAILED"}


def remote_config_status_to_json(status: opamp_pb2.RemoteConfigStatus) -> JSONObject:
    code = int(status.status)
    return {
        "last_remote_config_hash": status.last_remote_config_hash.hex(),
        "status": _REMOTE_CONFIG_STATUSES.get(code, str(code)),
        "error_message": redact_error_text(status.error_message),
    }


def capabilities_to_bigint(capabilities: int) -> int:
    """The uint64 capability bits as the signed 64-bit value a ``bigint`` column holds."""
    capabilities &= 0xFFFF_FFFF_FFFF_FFFF
    return capabilities - (1 << 64) if capabilities >= 1 << 63 else capabilities


# -- available components: stored once per distinct set (``component_sets``) -------------------
def component_set_digest(available: opamp_pb2.AvailableComponents) -> bytes:
    """Our own key of a reported set of components: the sha256 of its deterministic encoding
    (the hash the agent reports is its own claim; two agents with the same build share a key)."""
    return hashlib.sha256(available.SerializeToString(deterministic=True)).digest()


def component_details_to_json(details: opamp_pb2.ComponentDetails) -> JSONObject:
    """``ComponentDetails``: its metadata as ``{key: value}``, its sub-components by name."""
    out: JSONObject = {}
    if details.metadata:
        out["metadata"] = key_values_to_json(details.metadata)
    if details.sub_component_map:
        out["sub_component_map"] = {
            without_nul(name): component_details_to_json(child)
            for name, child in sorted(details.sub_component_map.items())
        }
    return out


def available_components_to_json(available: opamp_pb2.AvailableComponents) -> JSONObject:
    """``{"hash": <the agent's, hex>, "components": {"receivers": {...}, ...}}``: a collector
    names its component kinds at the top and each component type under its kind."""
    return {
        "hash": available.hash.hex(),
        "components": {
            without_nul(name): component_details_to_json(details)
            for name, details in sorted(available.components.items())
        },
    }
