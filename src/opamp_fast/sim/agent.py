"""One simulated agent: its identity and protocol state (both survive reconnects), the messages
it sends and how it reacts to what the server sends. No sockets: the sessions carry the bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..protocol import (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS,
    AGENT_ACCEPTS_REMOTE_CONFIG,
    AGENT_REPORTS_EFFECTIVE_CONFIG,
    REMOTE_CONFIG_APPLIED,
    SERVER_FLAG_REPORT_FULL_STATE,
    pb,
)
from .config import DEFAULT_CAPABILITIES, SimConfig
from .measure import Stats
from .net import Closed

# What a fleet of Collectors in one shop looks like: services, and one effective config each.
SERVICES: Final = (
    "checkout", "cart", "payments", "frontend", "search", "inventory", "shipping", "email",
    "recommendation", "ads", "currency", "quote", "fraud-detection", "accounting", "gateway",
)  # fmt: skip
EFFECTIVE_CONFIG: Final = (
    b"receivers:\n  otlp:\n    protocols:\n      grpc: {}\n      http: {}\n"
    b"processors:\n  batch: {}\n  memory_limiter:\n    limit_mib: 512\n"
    b"exporters:\n  otlp:\n    endpoint: collector.internal:4317\n"
    b"service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n"
    b"      processors: [memory_limiter, batch]\n      exporters: [otlp]\n"
)


@dataclass(slots=True, eq=False)
class Agent:
    """Identity and protocol state of one agent; survives reconnects."""

    index: int
    uid: bytes
    ws: bool
    caps: int
    service: str
    seq: int = 0
    interval_s: float = 0.0  # the heartbeat interval the server offered (0: none yet)
    full_state_due: bool = True
    report_due: bool = False  # a remote config was applied: report APPLIED next
    config_hash: bytes = b""
    effective_body: bytes = EFFECTIVE_CONFIG
    attempts: int = 0  # consecutive failed connection attempts (backoff exponent)
    stormed: bool = False  # each agent takes part in the storm once

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
        uid_text = uuid_text(self.uid)
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

    def handle(self, resp: pb.ServerToAgent, stats: Stats, config: SimConfig) -> bool:
        """Apply a ServerToAgent; True when the agent must send a message right away."""
        send_now = False
        if resp.HasField("error_response"):
            err = resp.error_response
            retry = (
                err.retry_info.retry_after_nanoseconds / 1e9 if err.HasField("retry_info") else None
            )
            raise Closed(f"error_response_{err.type}", retry)
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
            and not config.override_heartbeat
        ):
            offered = resp.connection_settings.opamp.heartbeat_interval_seconds
            if offered:
                self.interval_s = float(offered)
        if resp.HasField("remote_config") and self.caps & AGENT_ACCEPTS_REMOTE_CONFIG:
            remote = resp.remote_config
            if remote.config_hash and remote.config_hash != self.config_hash:
                self.config_hash = remote.config_hash
                bodies = [f.body for _, f in sorted(remote.config.config_map.items())]
                self.effective_body = b"".join(bodies) or EFFECTIVE_CONFIG
                stats.remote_configs_applied += 1
                self.report_due = send_now = True
        return send_now

    def next_message(self, stats: Stats) -> bytes:
        """The full state when due, else a pending config report, else a heartbeat."""
        if self.full_state_due:
            stats.full_states_sent += 1
            return self.full_state()
        if self.report_due:
            stats.config_reports_sent += 1
            return self.config_report()
        stats.heartbeats_sent += 1
        return self.heartbeat()


def uuid_text(uid: bytes) -> str:
    h = uid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}" if len(h) == 32 else h


def full_state(index: int, uid: bytes, *, capabilities: int = DEFAULT_CAPABILITIES) -> bytes:
    """The first message simulated agent ``index`` sends (a full state: description of ten
    attributes, health, effective config), encoded: benchmarks feed a server the same."""
    service = SERVICES[index % len(SERVICES)]
    return Agent(index, uid, True, capabilities, service).full_state()
