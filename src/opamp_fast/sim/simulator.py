"""An OpAMP agent simulator: tens of thousands of agents from one trio process.

Why it exists: the product's scale bars (``docs/performance.md``) are measured against agents that
behave like real ones, not against a tight request loop. Each simulated agent

* connects over WebSocket or plain HTTP (``ws_fraction``), from one of several loopback source
  addresses (``source_addrs``: one address has only ~28k ephemeral ports);
* sends its full state first (an ``AgentDescription`` with the attributes a Collector reports,
  health, effective config), then heartbeats at the interval the server offers in
  ``connection_settings.opamp.heartbeat_interval_seconds`` (agents with capability 0x100), or at
  ``heartbeat_s``;
* honours ``ReportFullState``, applies a pushed or polled remote config and reports it APPLIED,
  adopts a new instance uid when the server assigns one;
* reconnects with exponential backoff and full jitter after a failure or a server close;
* ends gracefully: ``agent_disconnect``, then a WebSocket close.

Why it is built this way (lean, because the simulator shares two cores with the server):

* One trio task per agent and nothing else: no per-agent nursery, no timer task. The agent waits
  for "next heartbeat, end of run or storm" and for server data in one ``receive_some`` under a
  ``move_on_at`` deadline (trio's socket receive is cancel-safe, no byte is lost).
* WebSocket: a raw ``trio.open_tcp_stream`` and the sans-IO ``wsproto`` (trio-websocket spends a
  nursery, two tasks and a memory channel per connection). HTTP: ``h11`` over a keep-alive stream.
* Round-trip latencies go into :class:`LatencyHistogram`, fixed log buckets: bounded memory
  whatever the message count, about 1 % error on percentiles.
* Only loopback targets are accepted: this tool opens thousands of connections and must never be
  pointed at somebody else's server by accident.

Entry points: :func:`run_simulation` (async, returns the summary dict), :func:`add_arguments` and
:func:`run_from_args` (the ``opamp-fast simulate`` subcommand and ``loadtest/simulate.py``).
"""

from __future__ import annotations

import argparse
import errno
import gc
import ipaddress
import json
import math
import os
import random
import resource
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import h11
import trio
import wsproto
import wsproto.events as wse
import wsproto.utilities

from ..protocol import (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS,
    AGENT_ACCEPTS_REMOTE_CONFIG,
    AGENT_REPORTS_EFFECTIVE_CONFIG,
    AGENT_REPORTS_HEALTH,
    AGENT_REPORTS_HEARTBEAT,
    AGENT_REPORTS_REMOTE_CONFIG,
    AGENT_REPORTS_STATUS,
    REMOTE_CONFIG_APPLIED,
    SERVER_FLAG_REPORT_FULL_STATE,
    decode_ws_payload,
    encode_ws_frame,
    pb,
)

__all__ = [
    "DEFAULT_CAPABILITIES",
    "LatencyHistogram",
    "SimConfig",
    "SimulatorError",
    "add_arguments",
    "full_state",
    "parse_source_addrs",
    "run_from_args",
    "run_simulation",
]

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
_RECV_BYTES: Final = 65536
_FD_RESERVE: Final = 64  # epoll, stdio, psutil, the odd DNS socket
_SERVICES: Final = (
    "checkout", "cart", "payments", "frontend", "search", "inventory", "shipping", "email",
    "recommendation", "ads", "currency", "quote", "fraud-detection", "accounting", "gateway",
)  # fmt: skip
_EFFECTIVE_CONFIG: Final = (
    b"receivers:\n  otlp:\n    protocols:\n      grpc: {}\n      http: {}\n"
    b"processors:\n  batch: {}\n  memory_limiter:\n    limit_mib: 512\n"
    b"exporters:\n  otlp:\n    endpoint: collector.internal:4317\n"
    b"service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n"
    b"      processors: [memory_limiter, batch]\n      exporters: [otlp]\n"
)


class SimulatorError(Exception):
    """A configuration the simulator refuses (bad target, limits), reported as one line."""


# -- configuration -----------------------------------------------------------------------------


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
        _target(self.url)  # raises on a bad or non-loopback URL
        for addr in self.source_addrs:
            if not _is_loopback(addr):
                raise SimulatorError(f"source address {addr} is not a loopback address")


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    path: str
    host_header: str


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws"):
        raise SimulatorError(f"--url {url!r}: use http://HOST:PORT/PATH or ws://HOST:PORT/PATH")
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM) if host else []
    except socket.gaierror as exc:
        raise SimulatorError(f"--url {url!r}: cannot resolve {host!r}: {exc.strerror}") from None
    addrs = {str(info[4][0]) for info in infos}
    if not addrs or not all(_is_loopback(a) for a in addrs):
        raise SimulatorError(
            f"--url {url!r}: the simulator only targets loopback servers (127.0.0.0/8, ::1); "
            f"{host!r} resolves to {sorted(addrs) or 'nothing'}"
        )
    port = parts.port or 4320
    return _Target(host, port, parts.path or "/v1/opamp", f"{parts.hostname}:{port}")


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
        if not _is_loopback(addr):
            raise SimulatorError(f"--source-addrs: {addr} is not a loopback address")
    return tuple(out)


# -- measurements ------------------------------------------------------------------------------


class LatencyHistogram:
    """Counts in log-spaced buckets 2 % wide from 1 us to about an hour.

    Memory is fixed (~1,100 ints) however many samples arrive, so 100k agents for an hour cost the
    same as ten; a percentile is the upper edge of its bucket (at most 2 % high), capped by the
    exact maximum.
    """

    __slots__ = ("count", "counts", "max_s", "total_s")

    MIN_S: Final = 1e-6
    GROWTH: Final = 1.02
    _INV_LOG: Final = 1.0 / math.log(1.02)
    BUCKETS: Final = int(math.log(3600.0 / 1e-6) / math.log(1.02)) + 2

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        if seconds <= self.MIN_S:
            index = 0
        else:
            index = min(int(math.log(seconds / self.MIN_S) * self._INV_LOG) + 1, self.BUCKETS - 1)
        self.counts[index] += 1
        self.count += 1
        self.total_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def merge(self, other: LatencyHistogram) -> None:
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in seconds; 0.0 without samples."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.MIN_S * self.GROWTH**i, self.max_s)
        return self.max_s

    def summary_ms(self) -> dict[str, float | int]:
        def ms(s: float) -> float:
            return round(s * 1000.0, 3)

        return {
            "count": self.count,
            "mean": ms(self.total_s / self.count) if self.count else 0.0,
            "p50": ms(self.percentile(50)),
            "p95": ms(self.percentile(95)),
            "p99": ms(self.percentile(99)),
            "max": ms(self.max_s),
        }


class _Stats:
    """Counters shared by all agent tasks (one trio thread: plain ints, no locks)."""

    def __init__(self) -> None:
        self.connected = 0
        self.connected_max = 0
        self.started = 0
        self.sessions_opened = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.heartbeats_sent = 0
        self.goodbyes_sent = 0
        self.config_reports_sent = 0
        self.full_states_sent = 0
        self.full_state_requests = 0
        self.remote_configs_applied = 0
        self.uid_reassignments = 0
        self.reconnects = 0
        self.storm_dropped = 0
        self.churned = 0
        self.errors: Counter[str] = Counter()
        self.latency = LatencyHistogram()  # whole run
        self.window = LatencyHistogram()  # since the last progress line
        self.steady = LatencyHistogram()  # after the whole fleet connected
        self.steady_on = False

    def rtt(self, seconds: float) -> None:
        self.latency.record(seconds)
        self.window.record(seconds)
        if self.steady_on:
            self.steady.record(seconds)

    def online(self) -> None:
        self.connected += 1
        self.sessions_opened += 1
        if self.connected > self.connected_max:
            self.connected_max = self.connected

    def error(self, kind: str) -> None:
        self.errors[kind] += 1


class _ProcessSampler:
    """RSS and CPU of a process (the server) via psutil; absent when no pid is given."""

    def __init__(self, pid: int) -> None:
        try:
            import psutil  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise SimulatorError(
                "--server-pid needs psutil: pip install -e '.[loadtest]'"
            ) from None
        try:
            self._proc: Any = psutil.Process(pid)
            self._cpu0 = self.cpu_seconds()
        except psutil.Error as exc:
            raise SimulatorError(f"--server-pid {pid}: {exc}") from None
        self._error = psutil.Error
        self.pid = pid
        self.rss_start = self.rss()
        self.rss_max = self.rss_start
        self._last_t = time.monotonic()
        self._last_cpu = self._cpu0

    def cpu_seconds(self) -> float:
        times = self._proc.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def sample(self) -> tuple[int, float] | None:
        """(rss bytes, CPU % of one core since the last sample), or None once it is gone."""
        try:
            rss, cpu = self.rss(), self.cpu_seconds()
        except self._error:
            return None
        now = time.monotonic()
        percent = 100.0 * (cpu - self._last_cpu) / max(now - self._last_t, 1e-9)
        self._last_t, self._last_cpu = now, cpu
        self.rss_max = max(self.rss_max, rss)
        return rss, percent


# -- one simulated agent -------------------------------------------------------------------------


class _Closed(Exception):
    """This connection is over; ``kind`` is the error counter to bump ("" for none)."""

    def __init__(self, kind: str, retry_after_s: float | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retry_after_s = retry_after_s


class _Storm(Exception):
    """The storm instant: drop the connection without a goodbye, reconnect at once."""


class _End(Exception):
    """The run is over (graceful goodbye already attempted)."""


_NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class _Agent:
    """Identity and protocol state of one agent; survives reconnects."""

    __slots__ = (
        "attempts", "caps", "config_hash", "effective_body", "full_state_due", "index",
        "interval_s", "report_due", "seq", "service", "stormed", "uid", "ws",
    )  # fmt: skip

    def __init__(self, index: int, uid: bytes, ws: bool, caps: int, service: str) -> None:
        self.index = index
        self.uid = uid
        self.ws = ws
        self.caps = caps
        self.service = service
        self.seq = 0
        self.interval_s = 0.0
        self.full_state_due = True
        self.report_due = False  # a remote config was applied: report APPLIED next
        self.config_hash = b""
        self.effective_body = _EFFECTIVE_CONFIG
        self.attempts = 0  # consecutive failed connection attempts (backoff exponent)
        self.stormed = False  # each agent takes part in the storm once

    def _base(self) -> pb.AgentToServer:
        msg = pb.AgentToServer(instance_uid=self.uid, sequence_num=self.seq, capabilities=self.caps)
        self.seq += 1
        return msg

    def heartbeat(self) -> bytes:
        data: bytes = self._base().SerializeToString()
        return data

    def full_state(self) -> bytes:
        msg = self._base()
        desc = msg.agent_description
        uid_text = _uuid_text(self.uid)
        for key, value in (
            ("service.name", self.service),
            ("service.namespace", "shop"),
            ("service.instance.id", uid_text),
            ("service.version", "0.114.0"),
        ):
            kv = desc.identifying_attributes.add()
            kv.key = key
            kv.value.string_value = value
        for key, value in (
            ("host.name", f"node-{self.index // 40:05d}.cluster.local"),
            ("host.arch", "amd64"),
            ("os.type", "linux"),
            ("os.description", "Ubuntu 22.04.4 LTS"),
            ("process.runtime.name", "go"),
            ("deployment.environment", "production"),
        ):
            kv = desc.non_identifying_attributes.add()
            kv.key = key
            kv.value.string_value = value
        msg.health.healthy = True
        msg.health.status = "StatusOK"
        msg.health.start_time_unix_nano = 1_700_000_000_000_000_000 + self.index
        if self.caps & AGENT_REPORTS_EFFECTIVE_CONFIG:
            self._effective(msg)
        if self.config_hash:
            self._applied(msg)
        self.full_state_due = self.report_due = False
        data: bytes = msg.SerializeToString()
        return data

    def goodbye(self) -> bytes:
        msg = self._base()
        msg.agent_disconnect.SetInParent()
        data: bytes = msg.SerializeToString()
        return data

    def _effective(self, msg: pb.AgentToServer) -> None:
        entry = msg.effective_config.config_map.config_map[""]
        entry.body = self.effective_body
        entry.content_type = "text/yaml"

    def _applied(self, msg: pb.AgentToServer) -> None:
        msg.remote_config_status.last_remote_config_hash = self.config_hash
        msg.remote_config_status.status = REMOTE_CONFIG_APPLIED  # type: ignore[assignment]

    def config_report(self) -> bytes:
        """After applying a remote config: APPLIED status and the new effective config."""
        msg = self._base()
        self._applied(msg)
        if self.caps & AGENT_REPORTS_EFFECTIVE_CONFIG:
            self._effective(msg)
        self.report_due = False
        data: bytes = msg.SerializeToString()
        return data

    def handle(self, resp: pb.ServerToAgent, sim: _Simulation) -> bool:
        """Apply a ServerToAgent; True when the agent must send a message right away."""
        stats = sim.stats
        send_now = False
        if resp.HasField("error_response"):
            err = resp.error_response
            retry = (
                err.retry_info.retry_after_nanoseconds / 1e9 if err.HasField("retry_info") else None
            )
            raise _Closed(f"error_response_{err.type}", retry)
        if resp.flags & SERVER_FLAG_REPORT_FULL_STATE:
            stats.full_state_requests += 1
            self.full_state_due = send_now = True
        if resp.HasField("agent_identification") and resp.agent_identification.new_instance_uid:
            self.uid = resp.agent_identification.new_instance_uid
            stats.uid_reassignments += 1
            self.full_state_due = send_now = True
        if (
            resp.HasField("connection_settings")
            and self.caps & AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS
            and not sim.config.override_heartbeat
        ):
            offered = resp.connection_settings.opamp.heartbeat_interval_seconds
            if offered:
                self.interval_s = float(offered)
        if resp.HasField("remote_config") and self.caps & AGENT_ACCEPTS_REMOTE_CONFIG:
            remote = resp.remote_config
            if remote.config_hash and remote.config_hash != self.config_hash:
                self.config_hash = remote.config_hash
                bodies = [f.body for _, f in sorted(remote.config.config_map.items())]
                self.effective_body = b"".join(bodies) or _EFFECTIVE_CONFIG
                stats.remote_configs_applied += 1
                self.report_due = send_now = True
        return send_now

    def next_message(self, stats: _Stats) -> bytes:
        """The full state when due, else a pending config report, else a heartbeat."""
        if self.full_state_due:
            stats.full_states_sent += 1
            return self.full_state()
        if self.report_due:
            stats.config_reports_sent += 1
            return self.config_report()
        stats.heartbeats_sent += 1
        return self.heartbeat()

    def first_interval(self, sim: _Simulation) -> float:
        """Delay to the first heartbeat of a session. Spread uniformly over one interval by
        default so a fleet that connected within seconds doesn't beat in lockstep forever."""
        interval = self.interval_s or sim.config.heartbeat_s
        return interval * sim.rng.random() if sim.config.spread_heartbeats else interval


def _uuid_text(uid: bytes) -> str:
    h = uid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}" if len(h) == 32 else h


# -- the simulation -----------------------------------------------------------------------------


def full_state(index: int, uid: bytes, *, capabilities: int = DEFAULT_CAPABILITIES) -> bytes:
    """The first message simulated agent ``index`` sends (a full state: description of ten
    attributes, health, effective config), encoded: benchmarks feed a server the same."""
    service = _SERVICES[index % len(_SERVICES)]
    return _Agent(index, uid, True, capabilities, service).full_state()


class _Simulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.target = _target(config.url)
        self.stats = _Stats()
        self.rng = random.Random(config.seed)
        self.start = 0.0
        self.end_at = math.inf
        self.storm_at = math.inf
        self.storm_recovered_at: float | None = None
        self.storm_connected_before = 0
        self.steady_at: float | None = None
        self.launched_all = False
        self._source_index = 0
        self.headers: list[tuple[bytes, bytes]] = []
        if config.auth_token:
            self.headers.append((b"Authorization", f"Bearer {config.auth_token}".encode()))
        self.sampler = _ProcessSampler(config.server_pid) if config.server_pid else None
        self.timeline: list[dict[str, Any]] = []
        self.server_cpu_at_steady: float | None = None
        self.received_at_steady = 0
        self.sim_cpu_at_steady = 0.0
        self.rss_at_steady: int | None = None
        self.steady_sim_cpu = 0.0
        self.steady_server_cpu: float | None = None
        self.steady_rss: int | None = None
        self.received_at_end = 0

    def local_address(self) -> str | None:
        addrs = self.config.source_addrs
        if not addrs:
            return None
        self._source_index = (self._source_index + 1) % len(addrs)
        return addrs[self._source_index]

    def backoff_s(self, agent: _Agent, retry_after_s: float | None) -> float:
        """Exponential backoff with full jitter (AWS style), or the server's Retry-After."""
        if retry_after_s is not None and retry_after_s > 0:
            jitter = 0.5 + 0.5 * self.rng.random()
            return float(min(retry_after_s, self.config.backoff_max_s) * jitter)
        exponent = min(agent.attempts, 30)
        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2.0**exponent)
        return cap * self.rng.random()

    def churns(self, interval_s: float) -> bool:
        """Whether an agent drops its connection at this heartbeat: ``churn_per_min`` of the
        WebSocket fleet a minute, spread over the heartbeats of that minute."""
        rate = self.config.churn_per_min
        return rate > 0 and self.rng.random() < rate * interval_s / 60.0

    # -- per agent ----------------------------------------------------------------------------
    async def run_agent(self, agent: _Agent) -> None:
        stats = self.stats
        stats.started += 1
        first_attempt = True
        while trio.current_time() < self.end_at:
            if not first_attempt:
                stats.reconnects += 1
            first_attempt = False
            retry_after: float | None = None
            try:
                if agent.ws:
                    await self._ws_connection(agent)
                else:
                    await self._http_connection(agent)
            except _End:
                return
            except _Storm:
                agent.attempts = 0
                continue  # reconnect at once: that is the storm
            except _Closed as closed:
                if closed.kind:
                    stats.error(closed.kind)
                retry_after = closed.retry_after_s
            delay = self.backoff_s(agent, retry_after)
            agent.attempts += 1
            if trio.current_time() + delay >= self.end_at:
                return
            await trio.sleep(delay)

    def went_online(self, agent: _Agent, now: float) -> None:
        """A session got its first response: count it; note when a storm has fully recovered."""
        agent.attempts = 0
        stats = self.stats
        stats.online()
        if (
            now >= self.storm_at
            and self.storm_recovered_at is None
            and stats.connected >= self.storm_connected_before
        ):
            self.storm_recovered_at = now

    async def _open_stream(self) -> trio.SocketStream:
        target = self.target
        try:
            with trio.fail_after(self.config.connect_timeout_s):
                return await trio.open_tcp_stream(
                    target.host, target.port, local_address=self.local_address()
                )
        except trio.TooSlowError:
            raise _Closed("connect_timeout") from None
        except OSError as exc:
            raise _Closed(_os_error_kind("connect", exc)) from None

    async def _ws_connection(self, agent: _Agent) -> None:
        """One WebSocket session, from TCP connect to close. Raises _Closed/_Storm/_End."""
        stream = await self._open_stream()
        try:
            ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            target = self.target
            try:
                request = wse.Request(
                    host=target.host_header, target=target.path, extra_headers=self.headers
                )
                await stream.send_all(ws.send(request))
                with trio.fail_after(self.config.connect_timeout_s):
                    await self._ws_handshake(stream, ws)
                await self._ws_session(agent, stream, ws)
            except trio.TooSlowError:
                raise _Closed("handshake_timeout") from None
            except _NETWORK_ERRORS as exc:
                raise _Closed(_os_error_kind("ws", exc)) from None
            except (wsproto.utilities.LocalProtocolError, wsproto.utilities.RemoteProtocolError):
                raise _Closed("ws_protocol_error") from None
        finally:
            await _abort(stream)

    async def _ws_handshake(self, stream: trio.SocketStream, ws: wsproto.WSConnection) -> None:
        while True:
            data = await stream.receive_some(_RECV_BYTES)
            if not data:
                raise _Closed("ws_handshake_eof")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wse.AcceptConnection):
                    return
                if isinstance(event, wse.RejectConnection):
                    retry = _retry_after(event.headers)
                    raise _Closed(f"ws_rejected_{event.status_code}", retry)

    async def _ws_session(
        self, agent: _Agent, stream: trio.SocketStream, ws: wsproto.WSConnection
    ) -> None:
        stats = self.stats
        now = trio.current_time()
        sent_at: float | None = None  # when the outstanding request left; None: nothing pending
        next_beat = math.inf
        online = False
        buffer: list[bytes] = []
        send_now = True  # the first message of every session: full state
        agent.full_state_due = True
        # Only sessions open at the storm instant take part (once per agent).
        storm_at = self.storm_at if not agent.stormed and now < self.storm_at else math.inf
        try:
            while True:
                if send_now and sent_at is None:
                    payload = agent.next_message(stats)
                    sent_at = trio.current_time()
                    await stream.send_all(ws.send(wse.Message(data=encode_ws_frame(payload))))
                    stats.messages_sent += 1
                    send_now = False
                if sent_at is None:
                    wake = min(next_beat, self.end_at, storm_at)
                else:
                    wake = min(sent_at + self.config.response_timeout_s, self.end_at, storm_at)
                data: bytes | None = None
                with trio.move_on_at(wake):
                    data = await stream.receive_some(_RECV_BYTES)
                now = trio.current_time()
                if data is None:  # a deadline passed
                    if now >= self.end_at:
                        await self._ws_goodbye(agent, stream, ws, online, sent_at is not None)
                        raise _End
                    if now >= storm_at:
                        agent.stormed = True
                        stats.storm_dropped += online
                        raise _Storm
                    if sent_at is not None:
                        raise _Closed("response_timeout")
                    agent_beat = agent.interval_s or self.config.heartbeat_s
                    if online and self.churns(agent_beat):
                        stats.churned += 1
                        raise _Storm  # drop without a goodbye, reconnect at once
                    next_beat = max(next_beat + agent_beat, now)
                    send_now = True
                    continue
                if not data:
                    raise _Closed("ws_eof")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, wse.BytesMessage):
                        buffer.append(bytes(event.data))
                        if not event.message_finished:
                            continue
                        frame = b"".join(buffer)
                        buffer.clear()
                        stats.messages_received += 1
                        try:
                            resp = pb.ServerToAgent.FromString(decode_ws_payload(frame))
                        except Exception:  # DecodeError, RemoteProtocolError: count and drop
                            raise _Closed("decode_error") from None
                        if sent_at is not None:
                            stats.rtt(now - sent_at)
                            sent_at = None
                        if agent.handle(resp, self):
                            send_now = True
                        if not online:
                            online = True
                            self.went_online(agent, now)
                            next_beat = now + agent.first_interval(self)
                    elif isinstance(event, wse.Ping):
                        await stream.send_all(ws.send(event.response()))
                    elif isinstance(event, wse.CloseConnection):
                        if ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                            await stream.send_all(ws.send(event.response()))
                        raise _Closed(f"server_close_{event.code}")
                    elif isinstance(event, wse.TextMessage):
                        raise _Closed("text_frame")
        finally:
            if online:
                stats.connected -= 1

    async def _ws_goodbye(
        self,
        agent: _Agent,
        stream: trio.SocketStream,
        ws: wsproto.WSConnection,
        say_bye: bool,
        pending: bool,
    ) -> None:
        """The answer still in flight, agent_disconnect (answered), then a close handshake, all
        bounded in time."""
        with trio.move_on_after(self.config.close_timeout_s) as scope:
            if pending:
                await self._ws_wait(stream, ws, wse.BytesMessage)
            if say_bye:
                await stream.send_all(ws.send(wse.Message(data=encode_ws_frame(agent.goodbye()))))
                self.stats.messages_sent += 1
                self.stats.goodbyes_sent += 1
                await self._ws_wait(stream, ws, wse.BytesMessage)
            await stream.send_all(ws.send(wse.CloseConnection(code=1000)))
            await self._ws_wait(stream, ws, wse.CloseConnection)
        if scope.cancelled_caught:
            self.stats.error("close_timeout")

    async def _ws_wait(
        self, stream: trio.SocketStream, ws: wsproto.WSConnection, kind: type
    ) -> None:
        while True:
            data = await stream.receive_some(_RECV_BYTES)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wse.BytesMessage):
                    self.stats.messages_received += 1
                if isinstance(event, kind):
                    return

    # -- plain HTTP -----------------------------------------------------------------------------
    async def _http_connection(self, agent: _Agent) -> None:
        """One keep-alive HTTP connection carrying polls until it fails or the run ends."""
        stream = await self._open_stream()
        try:
            conn = h11.Connection(h11.CLIENT)
            try:
                await self._http_polls(agent, stream, conn)
            except trio.TooSlowError:
                raise _Closed("response_timeout") from None
            except _NETWORK_ERRORS as exc:
                raise _Closed(_os_error_kind("http", exc)) from None
            except h11.ProtocolError:
                raise _Closed("http_protocol_error") from None
        finally:
            await _abort(stream)

    async def _http_polls(
        self, agent: _Agent, stream: trio.SocketStream, conn: h11.Connection
    ) -> None:
        stats = self.stats
        online = False
        send_now = True
        agent.full_state_due = agent.full_state_due or agent.seq == 0
        next_poll = trio.current_time()
        try:
            while True:
                now = trio.current_time()
                if now >= self.end_at:
                    if online:
                        with trio.move_on_after(self.config.close_timeout_s):
                            self.stats.goodbyes_sent += 1
                            await self._http_exchange(agent, stream, conn, agent.goodbye())
                    raise _End
                if not send_now and now < next_poll:
                    await trio.sleep_until(min(next_poll, self.end_at))
                    continue
                payload = agent.next_message(stats)
                with trio.fail_after(self.config.response_timeout_s):
                    resp, sent_at = await self._http_exchange(agent, stream, conn, payload)
                now = trio.current_time()
                stats.rtt(now - sent_at)
                send_now = agent.handle(resp, self)
                if not online:
                    online = True
                    self.went_online(agent, now)
                    next_poll = now + agent.first_interval(self)
                elif not send_now:
                    next_poll = max(next_poll + (agent.interval_s or self.config.heartbeat_s), now)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    raise _Closed("")  # the server ends keep-alive: reconnect, not an error
                conn.start_next_cycle()
        finally:
            if online:
                stats.connected -= 1

    async def _http_exchange(
        self, agent: _Agent, stream: trio.SocketStream, conn: h11.Connection, payload: bytes
    ) -> tuple[pb.ServerToAgent, float]:
        target = self.target
        headers = [
            (b"Host", target.host_header.encode()),
            (b"Content-Type", b"application/x-protobuf"),
            (b"Content-Length", str(len(payload)).encode()),
            *self.headers,
        ]
        request = conn.send(h11.Request(method="POST", target=target.path, headers=headers))
        body = conn.send(h11.Data(data=payload))
        end = conn.send(h11.EndOfMessage())
        sent_at = trio.current_time()
        await stream.send_all(b"".join((request or b"", body or b"", end or b"")))
        self.stats.messages_sent += 1
        status = 0
        retry: float | None = None
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(_RECV_BYTES)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    raise _Closed("http_eof")
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                retry = _retry_after(event.headers)
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise _Closed("http_eof")
        self.stats.messages_received += 1
        if status != 200:
            raise _Closed(f"http_status_{status}", retry)
        try:
            return pb.ServerToAgent.FromString(b"".join(chunks)), sent_at
        except Exception:  # DecodeError
            raise _Closed("decode_error") from None

    # -- driver ---------------------------------------------------------------------------------
    def make_agents(self) -> list[_Agent]:
        config = self.config
        rng = self.rng
        n_ws = round(config.agents * config.ws_fraction)
        agents = []
        for i in range(config.agents):
            uid = bytearray(rng.randbytes(16))
            uid[6] = 0x40 | (uid[6] & 0x0F)  # UUIDv4 layout: readable ids in the REST API
            uid[8] = 0x80 | (uid[8] & 0x3F)
            # Interleave transports so WS and HTTP agents ramp up together.
            ws = (i * n_ws) // config.agents != ((i + 1) * n_ws) // config.agents
            service = _SERVICES[i % len(_SERVICES)]
            agents.append(_Agent(i, bytes(uid), ws, config.capabilities, service))
        return agents

    async def launch(self, nursery: trio.Nursery, agents: list[_Agent]) -> None:
        """Start agent i at ``start + ramp_s * i / N`` plus jitter, in 10 ms batches (no sleeping
        task per agent while waiting)."""
        config = self.config
        slot = config.ramp_s / config.agents
        starts = sorted(
            (self.start + slot * (i + self.rng.random()), i) for i in range(config.agents)
        )
        pos = 0
        while pos < len(starts):
            now = trio.current_time()
            while pos < len(starts) and starts[pos][0] <= now:
                nursery.start_soon(self.run_agent, agents[starts[pos][1]])
                pos += 1
            if pos < len(starts):
                await trio.sleep_until(max(starts[pos][0], now + 0.01))
        self.launched_all = True

    async def monitor(self) -> None:
        """Once a second: a progress line, a timeline sample, steady-state and storm marks."""
        stats = self.stats
        config = self.config
        last_sent = last_recv = 0
        next_at = self.start + 1.0
        while True:
            await trio.sleep_until(next_at)
            next_at += 1.0
            now = trio.current_time()
            t = now - self.start
            sample: dict[str, Any] = {
                "t": round(t, 1),
                "connected": stats.connected,
                "sent_per_s": stats.messages_sent - last_sent,
                "received_per_s": stats.messages_received - last_recv,
                "p50_ms": round(stats.window.percentile(50) * 1000, 3),
                "p99_ms": round(stats.window.percentile(99) * 1000, 3),
                "max_ms": round(stats.window.max_s * 1000, 3),
                "errors": sum(stats.errors.values()),
                "reconnects": stats.reconnects,
            }
            last_sent, last_recv = stats.messages_sent, stats.messages_received
            stats.window = LatencyHistogram()
            if self.sampler is not None:
                measured = self.sampler.sample()
                if measured is not None:
                    sample["server_rss_mb"] = round(measured[0] / 2**20, 1)
                    sample["server_cpu_pct"] = round(measured[1], 1)
            if (
                self.steady_at is None
                and self.launched_all
                and now < self.storm_at
                and (stats.connected >= config.agents or t >= config.ramp_s + 10.0)
            ):
                self._mark_steady(now)
            if now < self.storm_at:
                self.storm_connected_before = stats.connected
            self.timeline.append(sample)
            if config.progress:
                extra = ""
                if "server_rss_mb" in sample:
                    extra = (
                        f" server_rss_mb={sample['server_rss_mb']}"
                        f" server_cpu_pct={sample['server_cpu_pct']}"
                    )
                sys.stderr.write(
                    f"[simulate] t={t:.0f}s connected={stats.connected}/{config.agents}"
                    f" sent_per_s={sample['sent_per_s']} p50_ms={sample['p50_ms']}"
                    f" p99_ms={sample['p99_ms']} errors={sample['errors']}"
                    f" reconnects={stats.reconnects}{extra}\n"
                )
                sys.stderr.flush()

    def _mark_steady(self, now: float) -> None:
        self.steady_at = now
        self.stats.steady_on = True
        self.received_at_steady = self.stats.messages_received
        self.sim_cpu_at_steady = _own_cpu_seconds()
        if self.sampler is not None:
            try:
                self.server_cpu_at_steady = self.sampler.cpu_seconds()
                self.rss_at_steady = self.sampler.rss()
            except self.sampler._error:
                self.server_cpu_at_steady = None

    def summary(self, steady_end: float, connected_at_end: int) -> dict[str, Any]:
        stats = self.stats
        config = self.config
        out: dict[str, Any] = {
            "agents_target": config.agents,
            "agents_connected": connected_at_end,
            "agents_connected_max": stats.connected_max,
            "ws_agents": round(config.agents * config.ws_fraction),
            "http_agents": config.agents - round(config.agents * config.ws_fraction),
            "messages_sent": stats.messages_sent,
            "messages_received": stats.messages_received,
            "heartbeats_sent": stats.heartbeats_sent,
            "goodbyes_sent": stats.goodbyes_sent,
            "config_reports_sent": stats.config_reports_sent,
            "full_states_sent": stats.full_states_sent,
            "full_state_requests": stats.full_state_requests,
            "remote_configs_applied": stats.remote_configs_applied,
            "uid_reassignments": stats.uid_reassignments,
            "sessions_opened": stats.sessions_opened,
            "reconnects": stats.reconnects,
            "churned": stats.churned,
            "errors": dict(sorted(stats.errors.items())),
            "errors_total": sum(stats.errors.values()),
            "latency_ms": stats.latency.summary_ms(),
        }
        steady: dict[str, Any] | None = None
        if self.steady_at is not None:
            duration = max(steady_end - self.steady_at, 1e-9)
            messages = self.received_at_end - self.received_at_steady
            steady = {
                "started_at_s": round(self.steady_at - self.start, 1),
                "duration_s": round(duration, 1),
                "messages": messages,
                "messages_per_s": round(messages / duration, 1),
                "latency_ms": stats.steady.summary_ms(),
                "simulator_cpu_percent": round(
                    100 * (self.steady_sim_cpu - self.sim_cpu_at_steady) / duration, 1
                ),
            }
            if self.server_cpu_at_steady is not None and self.steady_server_cpu is not None:
                cpu = self.steady_server_cpu - self.server_cpu_at_steady
                steady["server_cpu_percent"] = round(100 * cpu / duration, 1)
                steady["server_cpu_us_per_message"] = round(1e6 * cpu / max(messages, 1), 1)
        out["steady"] = steady
        if self.sampler is not None:
            server: dict[str, Any] = {
                "pid": self.sampler.pid,
                "rss_start_bytes": self.sampler.rss_start,
                "rss_max_bytes": self.sampler.rss_max,
                "rss_steady_bytes": self.rss_at_steady,
                "rss_at_end_of_hold_bytes": self.steady_rss,
            }
            if self.steady_rss is not None and connected_at_end:
                server["rss_per_agent_bytes"] = round(
                    (self.steady_rss - self.sampler.rss_start) / connected_at_end
                )
            cpu_samples = [s["server_cpu_pct"] for s in self.timeline if "server_cpu_pct" in s]
            if cpu_samples:
                server["cpu_percent_avg"] = round(sum(cpu_samples) / len(cpu_samples), 1)
                server["cpu_percent_max"] = round(max(cpu_samples), 1)
            out["server"] = server
        if self.storm_at < math.inf:
            out["storm"] = {
                "at_s": round(self.storm_at - self.start, 1),
                "dropped": stats.storm_dropped,
                "connected_before": self.storm_connected_before,
                "recovered_after_s": (
                    None
                    if self.storm_recovered_at is None
                    else round(self.storm_recovered_at - self.storm_at, 2)
                ),
            }
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["simulator"] = {
            "pid": os.getpid(),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "max_rss_bytes": usage.ru_maxrss * 1024,
        }
        out["config"] = {k: v for k, v in asdict(config).items() if k != "auth_token"}
        out["timeline"] = self.timeline
        return out

    def end_of_hold(self) -> int:
        """Snapshot the steady-state figures just before the fleet says goodbye."""
        self.steady_sim_cpu = _own_cpu_seconds()
        self.received_at_end = self.stats.messages_received
        self.stats.steady_on = False
        if self.sampler is not None:
            try:
                self.steady_server_cpu = self.sampler.cpu_seconds()
                self.steady_rss = self.sampler.rss()
            except self.sampler._error:
                pass
        return self.stats.connected


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _os_error_kind(prefix: str, exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{prefix}_{errno.errorcode.get(exc.errno, str(exc.errno)).lower()}"
    return f"{prefix}_{type(exc).__name__.lower()}"


def _retry_after(headers: Sequence[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            try:
                return float(value.decode("ascii"))
            except ValueError:
                return None
    return None


async def _abort(stream: trio.SocketStream) -> None:
    """Close the socket now, whatever state it is in (never blocks, never raises)."""
    with trio.CancelScope(shield=True):
        try:
            await trio.aclose_forcefully(stream)
        except _NETWORK_ERRORS:
            pass


def raise_fd_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; refuse runs that cannot fit.

    Every agent holds one socket, so a fleet larger than the hard limit would fail mid-run with
    EMFILE; better to say so up front (raising the hard limit needs CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and needed + _FD_RESERVE > soft:
        raise SimulatorError(
            f"{needed} agents need about {needed + _FD_RESERVE} file descriptors but "
            f"RLIMIT_NOFILE is {soft} (hard {hard}); raise the hard limit or run several "
            "simulator processes"
        )
    return int(soft)


async def run_simulation(
    config: SimConfig, *, clock: Callable[[], float] = trio.current_time
) -> dict[str, Any]:
    """Run the fleet for ``config.duration_s`` and return the summary (see module docs).

    Resource handling: every socket is closed before this returns; agents still connected at
    the end say goodbye (bounded by ``close_timeout_s``), then everything is cancelled after a
    further grace of ``close_timeout_s + 5`` seconds.
    """
    raise_fd_limit(config.agents)
    sim = _Simulation(config)
    agents = sim.make_agents()
    sim.start = clock()
    sim.end_at = sim.start + config.duration_s
    if config.storm_at_s is not None:
        sim.storm_at = sim.start + config.storm_at_s
    connected_at_end = 0
    async with trio.open_nursery() as outer:
        outer.start_soon(sim.monitor)

        async def mark_end() -> None:
            nonlocal connected_at_end
            await trio.sleep_until(sim.end_at - 0.001)
            connected_at_end = sim.end_of_hold()

        with trio.move_on_at(sim.end_at + config.close_timeout_s + 5.0):
            async with trio.open_nursery() as fleet:
                fleet.start_soon(mark_end)
                await sim.launch(fleet, agents)
        outer.cancel_scope.cancel()
    end = sim.end_at if sim.steady_at is not None else clock()
    return sim.summary(end, connected_at_end)


# -- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``opamp-fast simulate`` (also ``python loadtest/simulate.py``)."""
    defaults = SimConfig()
    add = parser.add_argument
    add("--url", default=defaults.url, help="server OpAMP URL, loopback only [%(default)s]")
    add("--agents", type=int, default=defaults.agents, help=f"fleet size (max {MAX_AGENTS})")
    add("--duration-s", type=float, required=True, help=f"run time (max {MAX_DURATION_S:.0f})")
    add("--ramp-s", type=float, default=defaults.ramp_s, help="spread agent starts over this")
    add("--ws-fraction", type=float, default=defaults.ws_fraction, help="share of WS agents")
    add(
        "--heartbeat-s",
        type=float,
        default=defaults.heartbeat_s,
        help="heartbeat interval when the server offers none [%(default)s]",
    )
    add(
        "--override-heartbeat",
        action="store_true",
        help="use --heartbeat-s even when the server offers an interval",
    )
    add(
        "--no-spread",
        dest="spread_heartbeats",
        action="store_false",
        help="first heartbeat one full interval after connect (default: uniformly spread)",
    )
    add(
        "--capabilities",
        type=lambda s: int(s, 0),
        default=defaults.capabilities,
        help=f"agent capabilities bitmask [0x{defaults.capabilities:x}]",
    )
    add("--source-addrs", default="", help="loopback source addresses, e.g. 127.0.0.2-127.0.0.20")
    add("--server-pid", type=int, default=None, help="sample this process's RSS and CPU")
    add("--storm-at-s", type=float, default=None, help="drop all WS connections at T, reconnect")
    add("--churn-per-min", type=float, default=0.0, help="share of WS agents reconnecting a minute")
    add(
        "--auth-token",
        default=os.environ.get("OPAMP_FAST_AGENT_AUTH_TOKEN"),
        help="bearer token for the OpAMP endpoint [env OPAMP_FAST_AGENT_AUTH_TOKEN]",
    )
    add("--response-timeout-s", type=float, default=defaults.response_timeout_s)
    add("--connect-timeout-s", type=float, default=defaults.connect_timeout_s)
    add("--backoff-initial-s", type=float, default=defaults.backoff_initial_s)
    add("--backoff-max-s", type=float, default=defaults.backoff_max_s)
    add(
        "--close-timeout-s",
        type=float,
        default=defaults.close_timeout_s,
        help="bound on the goodbye + close handshake at the end [%(default)s]",
    )
    add("--seed", type=int, default=defaults.seed, help="agent ids and jitter")
    add("--quiet", action="store_true", help="no progress lines on stderr")
    add("--out", default=None, help="write the JSON summary here instead of stdout")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        url=args.url,
        agents=args.agents,
        duration_s=args.duration_s,
        ramp_s=min(args.ramp_s, args.duration_s),
        ws_fraction=args.ws_fraction,
        heartbeat_s=args.heartbeat_s,
        override_heartbeat=args.override_heartbeat,
        spread_heartbeats=args.spread_heartbeats,
        capabilities=args.capabilities,
        source_addrs=parse_source_addrs(args.source_addrs),
        server_pid=args.server_pid,
        storm_at_s=args.storm_at_s,
        churn_per_min=args.churn_per_min,
        auth_token=args.auth_token or None,
        connect_timeout_s=args.connect_timeout_s,
        response_timeout_s=args.response_timeout_s,
        backoff_initial_s=args.backoff_initial_s,
        backoff_max_s=args.backoff_max_s,
        close_timeout_s=args.close_timeout_s,
        seed=args.seed,
        progress=not args.quiet,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run a simulation from parsed flags: 0 on success, 2 for a refused configuration."""
    try:
        config = config_from_args(args)
        _quiet_gc()
        summary = trio.run(run_simulation, config)
    except SimulatorError as exc:
        sys.stderr.write(f"opamp-fast simulate: error: {exc}\n")
        return 2
    text = json.dumps(summary, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


def _quiet_gc() -> None:
    """Keep the cyclic GC from pausing the whole fleet (process entry points only).

    With 10k+ agents the simulator holds hundreds of thousands of tracked objects (sockets,
    wsproto state, tasks); a full collection walks all of them and stalls every agent at once,
    which would show up as server latency. Start-up objects are frozen and the thresholds raised
    so full collections become rare; the garbage the agents make is mostly acyclic.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="opamp-fast simulate", description="Simulate a fleet of OpAMP agents (loopback only)."
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
