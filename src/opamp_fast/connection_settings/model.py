"""Connection settings as operators write them: checks, masking, precedence, the offer's parts.

Pure: no I/O, no clock. A group (and an agent, as an override) carries

* ``telemetry``: where the agent sends its own ``metrics``, ``traces`` and ``logs``
  (``{endpoint, headers, tls_ca_pem}``; OpAMP's ``own_metrics``, ``own_traces``, ``own_logs``);
* ``opamp``: the OpAMP connection itself (``{endpoint, headers, heartbeat_interval_seconds}``).
  A new ``endpoint`` moves agents to another server, so it must be given twice
  (``confirm_endpoint``).

Header values are secrets (API keys, bearer tokens): stored as given, offered to agents, and
shown to operators (the API, the audit log) as ``<redacted>``. A ``PUT`` may send
``<redacted>`` back for a header the stored settings have, to keep its value.

Precedence: an agent's override replaces, part by part (each signal, ``opamp``), what the group
deciding the agent carries (see :meth:`ConnectionSettings.merged`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509

from ..protocol import SettingsParts, pb

__all__ = [
    "MASK",
    "SIGNALS",
    "ConnectionSettings",
    "OpampSettings",
    "SettingsInputError",
    "Telemetry",
    "build_parts",
    "parse_settings",
]

SIGNALS: Final = ("metrics", "traces", "logs")
MASK: Final = "<redacted>"
MAX_HEADERS: Final = 32
MAX_HEADER_NAME_CHARS: Final = 256
MAX_HEADER_VALUE_CHARS: Final = 4096
MAX_URL_CHARS: Final = 2048
MAX_CA_PEM_CHARS: Final = 64 * 1024
MAX_HEARTBEAT_S: Final = 86400
HEADER_NAME_PATTERN: Final = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
HEADER_VALUE_PATTERN: Final = r"^[\t\x20-\x7e]*$"
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
_HEADER_VALUE = re.compile(HEADER_VALUE_PATTERN)
_TELEMETRY_SCHEMES: Final = ("http", "https")
_OPAMP_SCHEMES: Final = ("ws", "wss", "http", "https")
_OWN_FIELD: Final = {"metrics": "own_metrics", "traces": "own_traces", "logs": "own_logs"}

Headers = tuple[tuple[str, str], ...]


class SettingsInputError(ValueError):
    """Operator input that cannot be accepted (HTTP 400); ``code`` names the rule."""

    def __init__(self, message: str, code: str = "invalid_body") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class Telemetry:
    endpoint: str
    headers: Headers = field(default=(), repr=False)  # secrets: never in a repr
    tls_ca_pem: str | None = None


@dataclass(frozen=True, slots=True)
class OpampSettings:
    endpoint: str | None = None
    headers: Headers = field(default=(), repr=False)  # secrets: never in a repr
    heartbeat_interval_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """One group's (or one agent's) settings; empty parts are absent."""

    telemetry: tuple[tuple[str, Telemetry], ...] = ()  # (signal, settings), in SIGNALS order
    opamp: OpampSettings | None = None

    @property
    def empty(self) -> bool:
        return not self.telemetry and self.opamp is None

    def signal(self, name: str) -> Telemetry | None:
        return dict(self.telemetry).get(name)

    def merged(self, override: ConnectionSettings | None) -> ConnectionSettings:
        """These settings with ``override``'s parts (each signal, ``opamp``) taking their place."""
        if override is None or override.empty:
            return self
        signals = dict(self.telemetry) | dict(override.telemetry)
        return ConnectionSettings(
            tuple((s, signals[s]) for s in SIGNALS if s in signals),
            override.opamp if override.opamp is not None else self.opamp,
        )

    def to_json(self, *, masked: bool) -> dict[str, Any]:
        """The stored form (``masked=False``: header values as given) or the shown one."""
        telemetry: dict[str, Any] = {}
        for name, t in self.telemetry:
            telemetry[name] = {"endpoint": t.endpoint, "headers": _headers_json(t.headers, masked)}
            if t.tls_ca_pem is not None:
                telemetry[name]["tls_ca_pem"] = t.tls_ca_pem
        opamp: dict[str, Any] | None = None
        if self.opamp is not None:
            o = self.opamp
            opamp = {"endpoint": o.endpoint, "headers": _headers_json(o.headers, masked)}
            opamp["heartbeat_interval_seconds"] = o.heartbeat_interval_seconds
        return {"telemetry": telemetry, "opamp": opamp}

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> ConnectionSettings:
        """From the stored form (written by :meth:`to_json`, trusted)."""
        if not value:
            return cls()
        telemetry = value.get("telemetry") or {}
        signals = tuple(
            (
                s,
                Telemetry(
                    telemetry[s]["endpoint"],
                    tuple(telemetry[s].get("headers", {}).items()),
                    telemetry[s].get("tls_ca_pem"),
                ),
            )
            for s in SIGNALS
            if s in telemetry
        )
        o = value.get("opamp")
        opamp = None
        if o is not None:
            opamp = OpampSettings(
                o.get("endpoint"),
                tuple((o.get("headers") or {}).items()),
                o.get("heartbeat_interval_seconds"),
            )
        return cls(signals, opamp)


def _headers_json(headers: Headers, masked: bool) -> dict[str, str]:
    return {k: MASK if masked else v for k, v in headers}


# ----------------------------------------------------------------------------- input


def parse_settings(body: Any, *, stored: ConnectionSettings | None = None) -> ConnectionSettings:
    """``{"telemetry": {...}, "opamp": {...}}`` as sent to the API, checked; ``stored`` gives the
    values of headers sent back masked. Raises SettingsInputError."""
    if not isinstance(body, dict):
        raise SettingsInputError("body: must be an object with 'telemetry' and/or 'opamp'")
    _only(body, {"telemetry", "opamp"}, "body")
    stored = stored or ConnectionSettings()
    telemetry = body.get("telemetry")
    if telemetry is None:
        telemetry = {}
    if not isinstance(telemetry, dict):
        raise SettingsInputError("telemetry: must be an object of metrics, traces, logs")
    _only(telemetry, set(SIGNALS), "telemetry")
    signals = []
    for name in SIGNALS:
        item = telemetry.get(name)
        if item is not None:
            kept = stored.signal(name)
            signals.append((name, _telemetry(item, f"telemetry.{name}", kept)))
    opamp = body.get("opamp")
    return ConnectionSettings(
        tuple(signals), None if opamp is None else _opamp(opamp, stored.opamp)
    )


def _telemetry(value: Any, what: str, stored: Telemetry | None) -> Telemetry:
    if not isinstance(value, dict):
        raise SettingsInputError(f"{what}: must be an object with 'endpoint'")
    _only(value, {"endpoint", "headers", "tls_ca_pem"}, what)
    endpoint = _url(value.get("endpoint"), f"{what}.endpoint", _TELEMETRY_SCHEMES)
    headers = _headers(value.get("headers"), f"{what}.headers", stored.headers if stored else ())
    ca = value.get("tls_ca_pem")
    if ca is not None:
        ca = _ca_pem(ca, f"{what}.tls_ca_pem")
    return Telemetry(endpoint, headers, ca)


def _opamp(value: Any, stored: OpampSettings | None) -> OpampSettings:
    if not isinstance(value, dict):
        raise SettingsInputError("opamp: must be an object or null")
    _only(value, {"endpoint", "confirm_endpoint", "headers", "heartbeat_interval_seconds"}, "opamp")
    endpoint = value.get("endpoint")
    confirm = value.get("confirm_endpoint")
    if endpoint is not None:
        endpoint = _url(endpoint, "opamp.endpoint", _OPAMP_SCHEMES)
        if confirm != endpoint:
            raise SettingsInputError(
                "opamp.confirm_endpoint: must repeat opamp.endpoint exactly (moving agents to "
                "another server is confirmed by giving the endpoint twice)",
                "endpoint_not_confirmed",
            )
    elif confirm is not None:
        raise SettingsInputError("opamp.confirm_endpoint: given without opamp.endpoint")
    heartbeat = value.get("heartbeat_interval_seconds")
    if heartbeat is not None:
        heartbeat = _integer(heartbeat, "opamp.heartbeat_interval_seconds", 1, MAX_HEARTBEAT_S)
    headers = _headers(value.get("headers"), "opamp.headers", stored.headers if stored else ())
    return OpampSettings(endpoint, headers, heartbeat)


def _only(value: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SettingsInputError(f"{what}: unknown key {unknown[0]!r} (allowed: {sorted(allowed)})")


def _integer(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SettingsInputError(f"{what}: must be an integer from {lo} to {hi}")
    return value


def _url(value: Any, what: str, schemes: tuple[str, ...]) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        raise SettingsInputError(f"{what}: must be a URL of at most {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise SettingsInputError(f"{what}: must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise SettingsInputError(f"{what}: {value[:80]!r} is not a URL") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise SettingsInputError(
            f"{what}: must be an absolute {'/'.join(schemes)} URL with a host, got {value[:80]!r}"
        )
    return value


def _headers(value: Any, what: str, stored: Headers) -> Headers:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise SettingsInputError(f"{what}: must be an object of header name -> value")
    if len(value) > MAX_HEADERS:
        raise SettingsInputError(f"{what}: at most {MAX_HEADERS} headers")
    kept = {k.lower(): v for k, v in stored}
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, item in value.items():
        if len(name) > MAX_HEADER_NAME_CHARS or not _HEADER_NAME.fullmatch(name):
            raise SettingsInputError(f"{what}: {name[:60]!r} is not a header name")
        if name.lower() in seen:
            raise SettingsInputError(f"{what}: header {name!r} given twice")
        seen.add(name.lower())
        if item == MASK:
            if name.lower() not in kept:
                raise SettingsInputError(
                    f"{what}[{name!r}]: {MASK} keeps a stored value, and none is stored",
                    "masked_header",
                )
            item = kept[name.lower()]
        elif (
            not isinstance(item, str)
            or len(item) > MAX_HEADER_VALUE_CHARS
            or not _HEADER_VALUE.fullmatch(item)
        ):
            raise SettingsInputError(
                f"{what}[{name!r}]: must be printable ASCII text of at most "
                f"{MAX_HEADER_VALUE_CHARS} characters"
            )
        out.append((name, item))
    return tuple(out)


def _ca_pem(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_CA_PEM_CHARS:
        raise SettingsInputError(
            f"{what}: must be PEM text of at most {MAX_CA_PEM_CHARS} characters"
        )
    try:
        x509.load_pem_x509_certificates(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise SettingsInputError(f"{what}: must hold PEM certificates") from None
    return value


# ----------------------------------------------------------------------------- the offer


def build_parts(settings: ConnectionSettings, default_heartbeat_s: int) -> SettingsParts:
    """The protobuf parts of an offer (see ``protocol.SettingsOffer``): the OpAMP connection
    always, with a heartbeat interval (the settings' or the server's)."""
    o = settings.opamp or OpampSettings()
    opamp = pb.OpAMPConnectionSettings(
        heartbeat_interval_seconds=o.heartbeat_interval_seconds or default_heartbeat_s
    )
    if o.endpoint:
        opamp.destination_endpoint = o.endpoint
    _add_headers(opamp, o.headers)
    own: dict[str, pb.TelemetryConnectionSettings] = {}
    for name, t in settings.telemetry:
        part = pb.TelemetryConnectionSettings(destination_endpoint=t.endpoint)
        _add_headers(part, t.headers)
        if t.tls_ca_pem:
            part.tls.ca_pem_contents = t.tls_ca_pem
        own[_OWN_FIELD[name]] = part
    return SettingsParts(opamp, **own)


def _add_headers(
    part: pb.OpAMPConnectionSettings | pb.TelemetryConnectionSettings, headers: Headers
) -> None:
    for key, value in headers:
        header = part.headers.headers.add()
        header.key = key
        header.value = value
