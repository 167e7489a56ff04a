"""Server settings: one frozen object built from ``OPAMP_FAST_*`` variables, then CLI flags.

Every option is declared once in :data:`OPTIONS` (name, type, default, help); the environment
reader, the CLI parser and the README's table all come from that list, so they cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .redaction import DEFAULT_SECRET_WORDS, RedactionPolicy

ENV_PREFIX = "OPAMP_FAST_"
MIB = 1024 * 1024
BACKENDS = ("asyncio", "trio")
DEFAULT_CUSTOM_MESSAGE_BYTES = 64 * 1024
_STATE_BOUNDS = ("max_description_bytes", "max_description_attributes", "max_status_part_bytes")


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("opamp-fast", appauthor=False)) / "postgres"


def default_instance_id() -> str:
    return socket.gethostname()


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # Settings attribute; env var is OPAMP_FAST_<NAME>; flag is --<name-with-dashes>
    kind: type
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated, immutable server configuration. Pass it explicitly; never read env at import."""

    host: str = "127.0.0.1"
    port: int = 4320
    opamp_path: str = "/v1/opamp"
    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    instance_id: str = field(default_factory=default_instance_id)
    lease_s: float = 30.0
    max_message_bytes: int = 64 * MIB
    heartbeat_interval_s: int = 30
    heartbeat_timeout_s: float = 60.0
    heartbeat_timeout_factor: float = 2.0
    heartbeat_tick_s: float = 1.0
    offline_retention_s: float = 3600.0
    history_retention_days: float = 30.0
    forget_offline_after_days: float = 7.0
    audit_retention_days: float = 365.0
    max_description_bytes: int = 64 * 1024
    max_description_attributes: int = 1024
    max_status_part_bytes: int = MIB
    max_custom_message_bytes: int = DEFAULT_CUSTOM_MESSAGE_BYTES
    ws_ping_interval_s: float = 0.0
    tcp_keepalive_s: float = 30.0
    handshake_timeout_s: float = 10.0
    message_timeout_s: float = 30.0
    close_timeout_s: float = 5.0
    agent_auth_token: str | None = None
    agent_token_secret: str | None = None
    require_agent_identity: bool = False
    redact_keys: str = ",".join(DEFAULT_SECRET_WORDS)
    flush_interval_s: float = 1.0
    last_seen_flush_s: float = 5.0
    flush_batch_max: int = 50_000
    writer_queue_max: int = 100_000
    db_pool_size: int = 4
    graceful_timeout_s: float = 10.0
    drain_timeout_s: float = 10.0
    backlog: int = 4096
    max_connections: int = 200_000
    max_handshakes: int = 512
    max_agent_messages_per_s: float = 20.0
    max_buffered_bytes: int = 256 * MIB
    min_body_bytes_per_s: int = 32 * 1024
    max_loop_lag_s: float = 0.5
    loop_lag_interval_s: float = 0.25
    api_jwt_secret: str | None = None
    api_jwt_public_key_file: Path | None = None
    api_jwt_algorithm: str = "HS256"
    api_jwt_issuer: str | None = None
    api_jwt_audience: str | None = None
    api_max_page_size: int = 1000
    metrics_agent_series_max: int = 10_000
    events_replay_max: int = 10_000
    events_queue_max: int = 1_000
    events_keepalive_s: float = 15.0
    audit_denial_window_s: float = 60.0
    public_url: str | None = None
    package_store: str | None = None
    package_max_bytes: int = 1024 * MIB
    package_url_ttl_s: int = 86400
    package_url_secret: str | None = None
    package_s3_endpoint_url: str | None = None
    package_s3_region: str | None = None
    package_s3_access_key_id: str | None = None
    package_s3_secret_access_key: str | None = None
    backend: str = "asyncio"
    workers: str = "1"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    agent_ca_cert_file: Path | None = None
    agent_ca_key_file: Path | None = None
    agent_cert_ttl_days: int = 90
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in _PATHS:  # accept str from programmatic callers
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        for validate in _VALIDATORS:
            validate(self)

    @classmethod
    def from_sources(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Environment first (``OPAMP_FAST_*``), then explicit overrides (CLI flags) on top."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw = environ.get(opt.env)
            if raw is not None and raw != "":
                values[opt.name] = parse_value(opt, raw, source=opt.env)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        try:
            return cls(**values)
        except TypeError as exc:  # an unknown override name is a programming error upstream
            raise ConfigError(str(exc)) from None

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log: secrets and database passwords masked."""
        out: dict[str, Any] = {}
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if opt.secret and value is not None:
                value = "***"
            elif opt.name == "database_url" and value:
                value = redact_url(value)
            out[opt.name] = value
        return out

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _help(name: str) -> str:
    return _HELP[name]


_HELP = {
    "host": "address to listen on (use 0.0.0.0 to accept agents from other machines)",
    "port": "TCP port for OpAMP, REST, metrics and health endpoints",
    "opamp_path": "URL path of the OpAMP endpoint (WebSocket and plain HTTP)",
    "database_url": "Postgres URL; unset starts an embedded Postgres in --data-dir",
    "data_dir": "data directory of the embedded Postgres (used only without a database URL)",
    "instance_id": "stable id of this server instance, recorded on connection history rows",
    "lease_s": "an instance that has not renewed its lease for this long is declared lost by "
    "another: its agents are marked offline and its history rows closed, seconds",
    "max_message_bytes": "largest OpAMP message accepted or sent, after decompression",
    "heartbeat_interval_s": "heartbeat (and HTTP poll) interval offered to agents, seconds",
    "heartbeat_timeout_s": "silence after which an agent is marked offline, seconds (raised to "
    "--heartbeat-timeout-factor x --heartbeat-interval-s when that is longer)",
    "heartbeat_timeout_factor": "an agent's timeout is at least this many heartbeat intervals "
    "(2 x 30 s = the 60 s default timeout)",
    "offline_retention_s": "how long an offline agent's merged state stays in memory (its rows "
    "stay in Postgres; an agent back later is asked for its full state), seconds",
    "history_retention_days": "closed connection-history rows older than this are deleted, in "
    "small batches that never block the writer (0 keeps them forever), days",
    "forget_offline_after_days": "agents offline for longer than this are forgotten (deleted "
    "with their labels, pin and package status; their history stays until history retention), "
    "in small batches (0 keeps them forever; a group's forget_offline_after can forget its "
    "short-lived members sooner), days",
    "audit_retention_days": "audit-log rows older than this are deleted, in small batches, "
    "as the only role the append-only trigger lets delete (0 keeps them forever; at least "
    "1), days",
    "max_description_bytes": "largest AgentDescription the server keeps per agent (a larger one "
    "is refused with a BadRequest error), bytes",
    "max_description_attributes": "most attributes an AgentDescription may carry",
    "max_status_part_bytes": "largest other status part (health, effective config, package "
    "statuses...) the server keeps per agent, bytes",
    "max_custom_message_bytes": "largest CustomMessage accepted from an agent (a larger one is "
    "refused with a BadRequest error) or from POST /api/agents/{id}/custom-messages (413), bytes",
    "heartbeat_tick_s": "resolution of the heartbeat timing wheel, seconds",
    "ws_ping_interval_s": "WebSocket ping interval, seconds; a peer that misses a pong for a "
    "whole interval is dropped (0 disables)",
    "tcp_keepalive_s": "idle seconds before TCP keepalive probes find half-open sockets "
    "(3 probes, 1/3 of this apart; 0 disables)",
    "handshake_timeout_s": "time allowed for a request head, on any path and on any request of a "
    "keep-alive connection (and a TLS handshake), from its first byte, seconds",
    "message_timeout_s": "time allowed for a request body, a WebSocket message once begun, the "
    "first OpAMP message after an upgrade, and a peer that stops reading, seconds",
    "close_timeout_s": "time allowed for the WebSocket close handshake, seconds",
    "backend": "event loop: asyncio (with uvloop, the fast path) or trio",
    "workers": "server processes sharing the port (SO_REUSEPORT), each an instance "
    "<instance-id>/<k>, supervised; 'auto': one per CPU, more if --max-connections needs them "
    "under the open-file limit",
    "tls_cert_file": "PEM certificate chain: serve wss:// and https:// on the port",
    "tls_key_file": "PEM private key of --tls-cert-file",
    "tls_client_ca_file": "PEM CA bundle: OpAMP agents must present a client certificate signed "
    "by it (probes and the REST API need none); with --agent-ca-cert-file, agents without one are "
    "admitted too, so that they can ask for one",
    "agent_ca_cert_file": "PEM CA certificate that signs agent client certificates from the CSRs "
    "agents send (OpAMP connection_settings_request) and for rotations; with --agent-ca-key-file "
    "(unset: CSRs are ignored). Set --tls-client-ca-file to it too and the certificates prove "
    "the agents' uids",
    "agent_ca_key_file": "PEM private key of --agent-ca-cert-file (read once at start, never "
    "logged or sent)",
    "agent_cert_ttl_days": "lifetime of the agent client certificates the server issues (never "
    "beyond the CA's own expiry), days",
    "agent_token_secret": "HMAC secret of per-agent tokens ('opamp-fast agent-token'; unset: "
    "derived from the REST API's HS* secret)",
    "require_agent_identity": "refuse agents whose credentials are not bound to their instance "
    "uid (a per-agent token, or a client certificate whose CN is the uid)",
    "agent_auth_token": "bearer token agents must present on the OpAMP endpoint (unset: no auth)",
    "redact_keys": "comma-separated words: a value in an agent's reported effective config whose "
    "key contains one (ignoring case, '-', '_', '.'; a name of a path such as key_file is not "
    "one) is stored and shown redacted; bearer and "
    "basic credentials, URL passwords and PEM private keys always are (docs/api.md)",
    "flush_interval_s": "how often coalesced agent state is written to Postgres, seconds",
    "last_seen_flush_s": "each agent's last_seen_at is written to Postgres once per this "
    "interval, a slice of the fleet with every flush (Postgres' last_seen_at is at most this much "
    "behind; the heartbeat timeout and the metrics go by memory), seconds",
    "flush_batch_max": "flush early when this many agents have pending changes",
    "writer_queue_max": "connection-history rows waiting for the database beyond which new "
    "agents get 503 (memory stays bounded through a long database outage)",
    "db_pool_size": "database connections (each used from a worker thread)",
    "graceful_timeout_s": "time allowed for connections to close on shutdown, seconds",
    "drain_timeout_s": "time allowed for the final write to Postgres on shutdown, after the "
    "connections have closed; rows it leaves open are closed with 'server shutdown' by the next "
    "start or another instance, seconds",
    "backlog": "listen backlog (reconnect storms need thousands)",
    "max_connections": "concurrent OpAMP connections accepted before answering 503 (capped "
    "below the open-file limit)",
    "max_handshakes": "WebSocket agents connected but not yet answered, beyond which new "
    "upgrades get 503 + Retry-After (a reconnect storm is admitted in waves); a WebSocket silent "
    "for 1 s after its upgrade gives its slot up to a newcomer",
    "max_agent_messages_per_s": "messages one connection may send per second, with bursts of "
    "10 seconds' worth; beyond it a WebSocket is closed (1008) and an HTTP request gets 429 "
    "(an agent sends one per heartbeat; 0 disables)",
    "max_buffered_bytes": "bytes the process holds for partial input of all connections together "
    "(request heads, bodies, WebSocket messages being received); beyond it the largest holders "
    "get 503 or a WebSocket close 1013",
    "min_body_bytes_per_s": "a REST request body (package uploads) may take --message-timeout-s "
    "plus one second per this many bytes received; a slower trickle gets 408 (0: the body must "
    "complete within --message-timeout-s)",
    "loop_lag_interval_s": "how often the event loop's lag is sampled (admission, and the "
    "opamp_fast_loop_oversleep_seconds histogram; 0.001 resolves a round trip's tail at a cost "
    "of a wake-up per sample), seconds",
    "max_loop_lag_s": "event-loop lag beyond which new WebSocket agents get 503 + Retry-After, "
    "so connected agents keep their latency, seconds",
    "log_level": "log level",
    "api_jwt_secret": "HS* secret for REST API bearer tokens (unset: a random secret persisted "
    "next to the data directory, shared with 'opamp-fast token')",
    "api_jwt_public_key_file": "PEM public key file for RS256/ES256 REST API tokens",
    "api_jwt_algorithm": "the one JWT algorithm accepted by the REST API",
    "api_jwt_issuer": "required 'iss' claim of REST API tokens (unset: not checked)",
    "api_jwt_audience": "required 'aud' claim of REST API tokens (unset: not checked)",
    "api_max_page_size": "largest page (limit) a REST list accepts",
    "metrics_agent_series_max": "export agent_last_seen_seconds per agent only while the fleet "
    "has at most this many agents (0 disables)",
    "public_url": "URL agents reach this server at, for download links in package offers "
    "(unset: http(s)://<host>:<port>, the machine's hostname when listening on all addresses)",
    "package_store": "where package files are kept: a directory, or s3://bucket/prefix (any "
    "S3-compatible store); unset: 'packages' next to the data directory",
    "package_max_bytes": "largest package file accepted by POST /api/packages (413 beyond), bytes",
    "package_url_ttl_s": "lifetime of the signed (or S3 presigned) download URLs in package "
    "offers, seconds",
    "package_url_secret": "HMAC key of signed download URLs, shared by all instances (unset: "
    "derived from the agent-token key)",
    "package_s3_endpoint_url": "S3 endpoint for --package-store s3://... (unset: AWS_ENDPOINT_URL "
    "or AWS)",
    "package_s3_region": "S3 region (unset: AWS_REGION / AWS_DEFAULT_REGION)",
    "package_s3_access_key_id": "S3 access key (unset: AWS_ACCESS_KEY_ID, profiles, roles)",
    "package_s3_secret_access_key": "S3 secret key (unset: AWS_SECRET_ACCESS_KEY, profiles, roles)",
    "events_replay_max": "fleet events kept for resuming /api/events with Last-Event-ID; an "
    "older position gets a resync event",
    "events_queue_max": "events waiting for one /api/events subscriber beyond which it is "
    "dropped with a resync hint (a slow client never slows agents)",
    "events_keepalive_s": "idle seconds between keep-alive comments on /api/events",
    "audit_denial_window_s": "refused REST requests (403) of one principal and action are "
    "audited as one row at the first refusal and one row counting the repeats per window of "
    "this many seconds",
}
_SECRETS = {
    "agent_auth_token",
    "api_jwt_secret",
    "agent_token_secret",
    "package_url_secret",
    "package_s3_secret_access_key",
}
_CHOICES = {
    "backend": BACKENDS,
    "log_level": ("debug", "info", "warning", "error"),
    "api_jwt_algorithm": ("HS256", "HS384", "HS512", "RS256", "ES256"),
}


def _option_kind(f: dataclasses.Field[Any]) -> type:
    annotation = str(f.type)
    for name, kind in (("int", int), ("float", float), ("Path", Path), ("bool", bool)):
        if annotation.startswith(name):
            return kind
    return str


OPTIONS: tuple[Option, ...] = tuple(
    Option(
        f.name,
        _option_kind(f),
        _help(f.name),
        secret=f.name in _SECRETS,
        choices=_CHOICES.get(f.name, ()),
    )
    for f in dataclasses.fields(Settings)
)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_value(opt: Option, raw: str, *, source: str) -> Any:
    """Convert one textual value (env var or flag) to the option's type, or raise ConfigError."""
    raw = raw.strip()
    if opt.kind is bool:
        word = raw.lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ConfigError(f"{source}: {raw!r} is not a boolean (true/false, yes/no, 1/0)")
    parser: Callable[[str], Any] = opt.kind
    try:
        value = parser(raw)
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(opt.kind, "a value")
        raise ConfigError(f"{source}: {raw!r} is not {kind}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {raw!r} is not a finite number")
    return value


# -- validation: one small function per concern -------------------------------------------
_PATHS = (
    "data_dir",
    "api_jwt_public_key_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "agent_ca_cert_file",
    "agent_ca_key_file",
)

#: Plain lower bounds: name -> (lowest value allowed, what the error says).
_AT_LEAST: dict[str, tuple[float, str]] = {
    "max_message_bytes": (1024, "must be at least 1024"),
    "heartbeat_interval_s": (1, "must be at least 1 second"),
    "lease_s": (1, "must be at least 1 second"),
    "offline_retention_s": (0, "must be >= 0"),
    "forget_offline_after_days": (0, "must be >= 0 (0 keeps agents forever)"),
    "max_description_bytes": (1, "must be >= 1"),
    "max_description_attributes": (1, "must be >= 1"),
    "max_status_part_bytes": (1, "must be >= 1"),
    "max_custom_message_bytes": (1, "must be >= 1"),
    "heartbeat_timeout_factor": (1.0, "must be at least 1"),
    "ws_ping_interval_s": (0, "must be >= 0 (0 disables pings)"),
    "tcp_keepalive_s": (0, "must be >= 0 (0 disables TCP keepalive)"),
    "flush_batch_max": (1, "must be >= 1"),
    "writer_queue_max": (1, "must be >= 1"),
    "db_pool_size": (1, "must be >= 1"),
    "graceful_timeout_s": (0, "must be >= 0"),
    "drain_timeout_s": (0, "must be >= 0"),
    "backlog": (1, "must be >= 1"),
    "max_connections": (1, "must be >= 1"),
    "max_handshakes": (1, "must be >= 1"),
    "max_agent_messages_per_s": (0, "must be >= 0"),
    "min_body_bytes_per_s": (0, "must be >= 0"),
    "api_max_page_size": (1, "must be >= 1"),
    "metrics_agent_series_max": (0, "must be >= 0 (0 disables per-agent series)"),
    "package_max_bytes": (1, "must be >= 1"),
}
#: Durations that must be positive and finite.
_POSITIVE = (
    "heartbeat_tick_s",
    "handshake_timeout_s",
    "message_timeout_s",
    "close_timeout_s",
    "flush_interval_s",
    "last_seen_flush_s",
    "max_loop_lag_s",
    "loop_lag_interval_s",
    "events_keepalive_s",
)
#: Closed ranges: name -> (lowest, highest, what the error says).
_WITHIN: dict[str, tuple[float, float, str]] = {
    "events_replay_max": (1, 1_000_000, "must be between 1 and 1000000"),
    "events_queue_max": (1, 1_000_000, "must be between 1 and 1000000"),
    "package_url_ttl_s": (60, 7 * 86400, "must be between 60 seconds and 7 days"),
    "agent_cert_ttl_days": (1, 3650, "must be between 1 and 3650 days"),
}
#: Choices: name -> the values allowed.
_ONE_OF: dict[str, tuple[str, ...]] = {
    "api_jwt_algorithm": ("HS256", "HS384", "HS512", "RS256", "ES256"),
    "backend": BACKENDS,
    "log_level": ("debug", "info", "warning", "error"),
}


def _check_bounds(s: Settings) -> None:
    for name, (lowest, why) in _AT_LEAST.items():
        _check(getattr(s, name) >= lowest, name, getattr(s, name), why)
    for name in _POSITIVE:
        _positive(name, getattr(s, name))
    for name, (lowest, highest, why) in _WITHIN.items():
        value = getattr(s, name)
        _check(lowest <= value <= highest, name, value, why)
    for name, allowed in _ONE_OF.items():
        _check(getattr(s, name) in allowed, name, getattr(s, name), f"must be one of {allowed}")
    audit = s.audit_retention_days
    _check(
        audit == 0 or 1 <= audit,
        "audit_retention_days",
        audit,
        "must be 0 (keep forever) or at least 1 (the database refuses to delete a younger row)",
    )
    window = s.audit_denial_window_s
    _check(
        0 < window <= 86400,
        "audit_denial_window_s",
        window,
        "must be more than 0 and at most 86400",
    )


def _check_listener(s: Settings) -> None:
    _check(1 <= s.port <= 65535, "port", s.port, "must be between 1 and 65535")
    _check(s.host != "", "host", s.host, "must not be empty")
    _check(
        s.opamp_path.startswith("/") and " " not in s.opamp_path,
        "opamp_path",
        s.opamp_path,
        "must be an absolute URL path such as /v1/opamp",
    )
    _check(s.instance_id != "", "instance_id", s.instance_id, "must not be empty")
    if s.database_url is not None:
        _check_database_url(s.database_url)


def _check_relations(s: Settings) -> None:
    """Settings that bound each other."""
    _check(
        s.heartbeat_timeout_s >= s.heartbeat_tick_s,
        "heartbeat_timeout_s",
        s.heartbeat_timeout_s,
        "must be at least one tick (heartbeat_tick_s)",
    )
    _check(
        s.max_buffered_bytes >= s.max_message_bytes,
        "max_buffered_bytes",
        s.max_buffered_bytes,
        "must be >= max_message_bytes (one whole message must fit)",
    )


def _check_urls(s: Settings) -> None:
    if s.public_url is not None:
        parts = urlsplit(s.public_url)
        _check(
            parts.scheme in ("http", "https") and bool(parts.netloc),
            "public_url",
            s.public_url,
            "must be an http:// or https:// URL such as https://opamp.example.com",
        )
    if s.package_store is not None and "://" in s.package_store:
        _check(
            s.package_store.split("://", 1)[0] in ("s3", "file"),
            "package_store",
            s.package_store,
            "must be a directory, file:///path or s3://bucket/prefix",
        )


def _check_tls(s: Settings) -> None:
    _check(
        (s.tls_cert_file is None) == (s.tls_key_file is None),
        "tls_cert_file",
        s.tls_cert_file,
        "and tls_key_file must be given together",
    )
    _check(
        s.tls_client_ca_file is None or s.tls_cert_file is not None,
        "tls_client_ca_file",
        s.tls_client_ca_file,
        "needs tls_cert_file and tls_key_file (client certificates need TLS)",
    )
    _check(
        (s.agent_ca_cert_file is None) == (s.agent_ca_key_file is None),
        "agent_ca_cert_file",
        s.agent_ca_cert_file,
        "and agent_ca_key_file must be given together",
    )


def _check_redaction(s: Settings) -> None:
    _check_words("redact_keys", s.redact_keys)


_VALIDATORS: tuple[Callable[[Settings], None], ...] = (
    _check_listener,
    _check_bounds,
    _check_relations,
    _check_urls,
    _check_tls,
    _check_redaction,
)


def _check(ok: bool, name: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {value!r} {why}")


def _check_words(name: str, value: str) -> None:
    try:
        RedactionPolicy.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _positive(name: str, value: float) -> None:
    _check(value > 0 and math.isfinite(value), name, value, "must be a positive number")


def _check_database_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError(
            f"database_url: {redact_url(url)!r} must start with postgresql:// or postgres://"
        )
    if not (parts.hostname or "host=" in parts.query):
        raise ConfigError(f"database_url: {redact_url(url)!r} names no host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"database_url: {redact_url(url)!r} has a malformed port") from None


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
