"""What a run simulates (:class:`SimConfig`), and the checks that keep it bounded and on this
machine: this tool opens thousands of connections and must never be pointed at somebody else's
server by accident, so only loopback targets and source addresses are accepted."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from ..protocol import (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS,
    AGENT_ACCEPTS_REMOTE_CONFIG,
    AGENT_REPORTS_EFFECTIVE_CONFIG,
    AGENT_REPORTS_HEALTH,
    AGENT_REPORTS_HEARTBEAT,
    AGENT_REPORTS_REMOTE_CONFIG,
    AGENT_REPORTS_STATUS,
)

#: ReportsStatus | AcceptsRemoteConfig | ReportsEffectiveConfig | AcceptsOpAMPConnectionSettings
#: | ReportsHealth | ReportsRemoteConfig | ReportsHeartbeat = 0x3907: a Collector's set (0x3007,
#: as the official Python client sends) plus connection settings and health.
DEFAULT_CAPABILITIES: Final = (
    AGENT_REPORTS_STATUS
    | AGENT_ACCEPTS_REMOTE_CONFIG
    | AGENT_REPORTS_EFFECTIVE_CONFIG
    | AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS
    | AGENT_REPORTS_HEALTH
    | AGENT_REPORTS_REMOTE_CONFIG
    | AGENT_REPORTS_HEARTBEAT
)
MAX_AGENTS: Final = 200_000
MAX_DURATION_S: Final = 3600.0


class SimulatorError(Exception):
    """A configuration the simulator refuses (bad target, limits), reported as one line."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate. Validated in ``__post_init__``; times in seconds."""

    url: str = "http://127.0.0.1:4320/v1/opamp"
    agents: int = 100
    duration_s: float = 60.0
    ramp_s: float = 10.0
    ws_fraction: float = 1.0
    heartbeat_s: float = 30.0  # used when the server offers no interval (or override_heartbeat)
    override_heartbeat: bool = False
    spread_heartbeats: bool = True
    capabilities: int = DEFAULT_CAPABILITIES
    source_addrs: tuple[str, ...] = ()
    server_pid: int | None = None
    storm_at_s: float | None = None  # drop every WebSocket at this time and reconnect at once
    churn_per_min: float = 0.0  # share of WebSocket agents dropping and reconnecting a minute
    auth_token: str | None = None
    connect_timeout_s: float = 10.0
    response_timeout_s: float = 30.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    close_timeout_s: float = 30.0  # a whole fleet saying goodbye at once takes a while
    seed: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.agents <= MAX_AGENTS:
            raise SimulatorError(f"--agents must be between 1 and {MAX_AGENTS}")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise SimulatorError(f"--duration-s must be > 0 and <= {MAX_DURATION_S:.0f}")
        if not 0 <= self.ramp_s <= self.duration_s:
            raise SimulatorError("--ramp-s must be between 0 and --duration-s")
        if not 0.0 <= self.ws_fraction <= 1.0:
            raise SimulatorError("--ws-fraction must be between 0 and 1")
        if not self.heartbeat_s >= 0.05:
            raise SimulatorError("--heartbeat-s must be at least 0.05")
        if self.storm_at_s is not None and not 0 < self.storm_at_s < self.duration_s:
            raise SimulatorError("--storm-at-s must fall inside the run (0 < T < --duration-s)")
        if not 0.0 <= self.churn_per_min <= 1.0:
            raise SimulatorError("--churn-per-min must be between 0 and 1")
        for name in ("connect_timeout_s", "response_timeout_s", "backoff_initial_s"):
            if not getattr(self, name) > 0:
                raise SimulatorError(f"--{name.replace('_', '-')} must be positive")
        if self.backoff_max_s < self.backoff_initial_s:
            raise SimulatorError("--backoff-max-s must be >= --backoff-initial-s")
        resolve_target(self.url)  # raises on a bad or non-loopback URL
        for addr in self.source_addrs:
            if not is_loopback(addr):
                raise SimulatorError(f"source address {addr} is not a loopback address")


@dataclass(frozen=True, slots=True)
class Target:
    """Where the agents connect, resolved once per run."""

    host: str
    port: int
    path: str
    host_header: str


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws"):
        raise SimulatorError(f"--url {url!r}: use http://HOST:PORT/PATH or ws://HOST:PORT/PATH")
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM) if host else []
    except socket.gaierror as exc:
        raise SimulatorError(f"--url {url!r}: cannot resolve {host!r}: {exc.strerror}") from None
    addrs = {str(info[4][0]) for info in infos}
    if not addrs or not all(is_loopback(a) for a in addrs):
        raise SimulatorError(
            f"--url {url!r}: the simulator only targets loopback servers (127.0.0.0/8, ::1); "
            f"{host!r} resolves to {sorted(addrs) or 'nothing'}"
        )
    port = parts.port or 4320
    return Target(host, port, parts.path or "/v1/opamp", f"{parts.hostname}:{port}")


def parse_source_addrs(text: str) -> tuple[str, ...]:
    """``127.0.0.2-127.0.0.20`` (an inclusive IPv4 range) or a comma list, loopback only."""
    out: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        first, sep, last = item.partition("-")
        try:
            lo = ipaddress.IPv4Address(first.strip())
            hi = ipaddress.IPv4Address(last.strip()) if sep else lo
        except ValueError:
            raise SimulatorError(
                f"--source-addrs: {item!r} is not an IPv4 address or range"
            ) from None
        if hi < lo or int(hi) - int(lo) > 65535:
            raise SimulatorError(f"--source-addrs: bad range {item!r}")
        out.extend(str(ipaddress.IPv4Address(i)) for i in range(int(lo), int(hi) + 1))
    for addr in out:
        if not is_loopback(addr):
            raise SimulatorError(f"--source-addrs: {addr} is not a loopback address")
    return tuple(out)
