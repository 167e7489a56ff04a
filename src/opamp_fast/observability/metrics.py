"""Prometheus metrics at ``GET /metrics``, read from the services' own counters at scrape time.

Why it looks like this (capability 5, house style "Logging, metrics, config"):

- **No global state.** Every :class:`MetricsExporter` owns an injected ``CollectorRegistry``
  (never prometheus_client's default ``REGISTRY``), and the ``/metrics`` route serves exactly the
  exporter held by its server's :class:`~opamp_fast.services.Services`. Two servers in one
  process therefore export independent numbers.
- **No metric work per message.** The hot path only bumps plain ``int`` attributes that already
  exist (``TransportStats``, ``FleetHandler.heartbeats_total``, the registry's transition
  counts and connection-duration buckets). :class:`FleetCollector` turns them into samples
  when Prometheus scrapes, so an idle scrape interval costs nothing.
- **Consistent reads, formatting off the loop.** The registry and the writer are not
  thread-safe, so :meth:`MetricsExporter.snapshot` copies what it needs *on the event loop*
  (a few dict copies, plus one list of record references); building the families and the text
  exposition -- 100k ``agent_last_seen_seconds`` lines when the cap is raised -- runs in a worker
  thread (:meth:`MetricsExporter.render`). When ``generate_latest`` is called from such a thread,
  the collector hops back to the loop with ``anyio.from_thread.run_sync`` to take its snapshot.
- **Bounded cardinality.** The only per-agent series, ``agent_last_seen_seconds{agent_id}``, is
  exported only while the number of known agents is at most ``metrics_agent_series_max``;
  beyond that it disappears as a whole and ``opamp_fast_agent_series_suppressed`` is 1.

Every exported name, type and label is listed in :data:`METRICS` and in ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from ..fleet.registry import AgentRecord, AgentStatus, BucketCounts, Registry, RegistryStatistics
from ..protocol import Transport

if TYPE_CHECKING:
    from ..connection_settings.service import ConnectionSettingsService, SettingsStatistics
    from ..fleet.commands import Commands
    from ..fleet.events import EventHub, EventHubStatistics
    from ..fleet.handler import FleetHandler
    from ..packages import PackageRegistry, PackageStatistics
    from ..remote_config.service import ConfigService, ConfigStatistics
    from ..storage.availability import AvailabilityMonitor, FleetFigures
    from ..storage.batch_writer import BatchWriter, WriterStatistics
    from ..storage.lifecycle import AgentLifecycle
    from ..storage.retention import AuditRetention, HistoryRetention
    from ..transport.budget import BufferBudget
    from ..transport.stats import TransportStats

logger = logging.getLogger(__name__)

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4  # "text/plain; version=0.0.4; charset=utf-8"

#: An online agent is *stale* once it has been silent for more than this many heartbeat
#: intervals: it missed the heartbeat it owed by at least half an interval (jitter and network
#: delay stay well below that), but has not yet reached its heartbeat timeout (by default
#: max(60 s, 2.5 intervals)), which would take it offline.
STALE_AFTER_INTERVALS: Final = 1.5

#: ``le`` bounds of ``opamp_fast_writer_flush_rows`` (rows written by one committed flush).
FLUSH_ROWS_BOUNDS: Final = (1.0, 10.0, 100.0, 1_000.0, 10_000.0, 50_000.0, 100_000.0, 500_000.0)
#: ``le`` bounds of the pause histograms: the event loop's oversleep, a collection, the CPU
#: time of a flush (what the writer's thread holds the interpreter lock for): 1 ms resolution
#: where a round trip's tail lives.
PAUSE_BOUNDS: Final = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25,
    0.5, 1.0,
)  # fmt: skip
#: ``le`` bounds of ``opamp_fast_writer_flush_duration_seconds`` (one committed flush).
FLUSH_SECONDS_BOUNDS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip

_TRANSPORTS: Final = (Transport.WS, Transport.HTTP)
#: Transitions exported at 0 before they first happen, so ``rate()`` and alerts see the series.
_KNOWN_CHANGES: Final = (("new", "online"), ("offline", "online"), ("online", "offline"))


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric: the text-format family name, its type, help and label names."""

    name: str
    kind: str  # "gauge" | "counter" | "histogram" | "info"
    help: str
    labels: tuple[str, ...] = ()


def _spec(name: str, kind: str, help: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, kind, help, labels)


#: Every metric this module exports (besides prometheus_client's ``process_*``), by name.
#: Counter names include ``_total``; histograms expose ``_bucket``/``_sum``/``_count``; info
#: metrics expose ``<name>_info``.
METRICS: Final[dict[str, MetricSpec]] = {
    s.name: s
    for s in (
        # -- the fleet (names kept from the seed's dashboards and queries) ------------------
        _spec("agents_by_status", "gauge", "Known agents by liveness status.", "status"),
        _spec(
            "agent_status_changes_total",
            "counter",
            "Agent liveness transitions; from is 'new' for an agent's first connection.",
            "from",
            "to",
        ),
        _spec(
            "agent_heartbeats_total",
            "counter",
            "Agent messages that changed no reported state (heartbeats).",
        ),
        _spec(
            "agents_stale",
            "gauge",
            f"Online agents silent for more than {STALE_AFTER_INTERVALS} heartbeat intervals.",
        ),
        _spec(
            "agent_last_seen_seconds",
            "gauge",
            "UNIX time of the last message from each known agent; exported only while the "
            "number of known agents is at most metrics_agent_series_max.",
            "agent_id",
        ),
        _spec(
            "agent_connection_duration_seconds",
            "histogram",
            "Duration of agent connections that ended (WebSocket lifetime, or first HTTP poll to "
            "timeout/disconnect).",
        ),
        # -- the server's own -------------------------------------------------------------
        _spec(
            "opamp_fast_agent_series_suppressed",
            "gauge",
            "1 when agent_last_seen_seconds is omitted (too many agents, or disabled), else 0.",
        ),
        _spec("opamp_fast_agents_online", "gauge", "Online agents by transport.", "transport"),
        _spec(
            "opamp_fast_agent_heartbeat_timeouts_total",
            "counter",
            "Agents taken offline because they were silent past their heartbeat timeout.",
        ),
        _spec(
            "opamp_fast_received_messages_total",
            "counter",
            "OpAMP messages received.",
            "transport",
        ),
        _spec("opamp_fast_sent_messages_total", "counter", "OpAMP messages sent.", "transport"),
        _spec(
            "opamp_fast_received_bytes_total",
            "counter",
            "OpAMP bytes received: WebSocket frames; HTTP bodies after decompression.",
            "transport",
        ),
        _spec(
            "opamp_fast_sent_bytes_total",
            "counter",
            "OpAMP bytes sent: WebSocket frames; HTTP bodies as sent (gzipped if accepted).",
            "transport",
        ),
        _spec(
            "opamp_fast_protocol_errors_total",
            "counter",
            "Undecodable or invalid OpAMP input (and oversized replies), by kind.",
            "transport",
            "kind",
        ),
        _spec(
            "opamp_fast_rejected_connections_total",
            "counter",
            "OpAMP connections refused before any protocol work, by HTTP status.",
            "transport",
            "status",
        ),
        _spec(
            "opamp_fast_open_connections",
            "gauge",
            "Open OpAMP connections (WebSockets; HTTP requests in flight).",
            "transport",
        ),
        _spec(
            "opamp_fast_history_deleted_total",
            "counter",
            "Closed connection-history rows deleted by retention (history_retention_days).",
        ),
        _spec(
            "opamp_fast_audit_deleted_total",
            "counter",
            "Audit-log rows deleted by retention (audit_retention_days), by this instance.",
        ),
        _spec(
            "opamp_fast_agents_forgotten_total",
            "counter",
            "Agents forgotten (deleted) by this instance: by an operator, or by expiry "
            "(forget_offline_after_days, a group's forget_offline_after).",
            "by",
        ),
        _spec(
            "opamp_fast_agents_flapping",
            "gauge",
            "Agents with at least 5 disconnects over the last hour, fleet-wide (from Postgres, "
            "every minute).",
        ),
        _spec(
            "opamp_fast_fleet_uptime_ratio",
            "gauge",
            "Mean uptime of the fleet's agents over the last hour, fleet-wide (from Postgres, "
            "every minute); absent until computed, or with no agent.",
        ),
        _spec(
            "opamp_fast_agents_drifted",
            "gauge",
            "Agents whose effective config drifted from the one they reported APPLIED, "
            "fleet-wide (from Postgres, every minute).",
        ),
        _spec(
            "opamp_fast_admission_shed_total",
            "counter",
            "Connections refused with 503 by admission control, by reason (capacity, database, "
            "handshakes, loop_lag, shutdown).",
            "reason",
        ),
        _spec(
            "opamp_fast_duplicate_messages_total",
            "counter",
            "Messages for a uid live on another connection, answered with a new uid and never "
            "merged.",
        ),
        _spec(
            "opamp_fast_identity_claims_refused_total",
            "counter",
            "Messages from connections without bound credentials claiming a uid held by a "
            "connection that proved it: refused (answered with a new uid, or the claimant closed).",
        ),
        _spec(
            "opamp_fast_loop_lag_seconds",
            "gauge",
            "How late the event loop runs (a decaying maximum; admission sheds new WebSockets "
            "above max_loop_lag_s).",
        ),
        _spec(
            "opamp_fast_tcp_open",
            "gauge",
            "Sockets open on the shared port: agents, REST clients, sockets yet to send a request.",
        ),
        _spec(
            "opamp_fast_tcp_refused_total",
            "counter",
            "Sockets closed at accept: no descriptor to spare and nothing idle to drop.",
        ),
        _spec(
            "opamp_fast_tcp_evicted_total",
            "counter",
            "Idle sockets (no request yet) dropped to make room when descriptors ran out.",
        ),
        _spec(
            "opamp_fast_handed_off_total",
            "counter",
            "Requests passed to the REST application (REST API, metrics, probes, docs).",
        ),
        _spec(
            "opamp_fast_upgrades_evicted_total",
            "counter",
            "WebSockets silent since their upgrade dropped to free a handshake slot for another.",
        ),
        _spec(
            "opamp_fast_buffered_bytes",
            "gauge",
            "Bytes held for partial input (request heads, bodies, WebSocket messages being "
            "received) across all connections; bounded by max_buffered_bytes.",
        ),
        _spec(
            "opamp_fast_buffer_shed_total",
            "counter",
            "Connections refused (503, or WebSocket close 1013) because they held the most when "
            "the buffered bytes went over max_buffered_bytes.",
        ),
        _spec(
            "opamp_fast_connection_timeouts_total",
            "counter",
            "Connections ended by a time bound, by phase (handshake, body, first_message, "
            "message, close, write_stall, ping, keep_alive).",
            "phase",
        ),
        _spec(
            "opamp_fast_writer_flush_rows",
            "histogram",
            "Rows written to Postgres by one committed flush.",
        ),
        _spec(
            "opamp_fast_writer_flush_duration_seconds",
            "histogram",
            "Wall time of one committed flush (one transaction).",
        ),
        _spec(
            "opamp_fast_writer_flush_cpu_seconds",
            "histogram",
            "CPU time of the writer's thread for one committed flush: about how long it held the "
            "interpreter lock the event loop needs too.",
        ),
        _spec(
            "opamp_fast_loop_oversleep_seconds",
            "histogram",
            "How late the event loop woke a task that slept for loop_lag_interval_s (sampled "
            "every interval): what a message arriving at that moment waited for.",
        ),
        _spec(
            "opamp_fast_gc_pause_seconds",
            "histogram",
            "Duration of each collection of the cyclic garbage collector (any generation).",
        ),
        _spec(
            "opamp_fast_writer_flushes_total", "counter", "Committed flushes of the batch writer."
        ),
        _spec(
            "opamp_fast_writer_rows_written_total",
            "counter",
            "Rows written to Postgres by committed flushes.",
        ),
        _spec(
            "opamp_fast_writer_pending_agents",
            "gauge",
            "Agents with changes not yet committed to Postgres (pending or in flight).",
        ),
        _spec(
            "opamp_fast_writer_pending_sessions",
            "gauge",
            "Connection-history opens/closes not yet committed to Postgres.",
        ),
        _spec(
            "opamp_fast_writer_queue_length",
            "gauge",
            "Events waiting in the channel between connections and the writer.",
        ),
        _spec(
            "opamp_fast_writer_queue_capacity",
            "gauge",
            "Bound of that channel (writer_queue_max); connections wait when it is full.",
        ),
        _spec("opamp_fast_db_errors_total", "counter", "Failed flush attempts (database errors)."),
        _spec(
            "opamp_fast_writer_busy_agents_total",
            "counter",
            "Agents a flush left for the next one: another instance's flush held their rows.",
        ),
        _spec(
            "opamp_fast_db_backlog_seconds",
            "gauge",
            "Seconds since database writes started failing; 0 when healthy.",
        ),
        _spec(
            "opamp_fast_sweeper_lag_seconds",
            "gauge",
            "How late the heartbeat sweeper's last tick ran (event-loop lag).",
        ),
        _spec(
            "opamp_fast_heartbeat_wheel",
            "info",
            "Timing wheel implementation in use (cython or python).",
            "implementation",
        ),
        _spec("opamp_fast_build", "info", "opamp-fast version.", "version"),
        # -- commands ------------------------------------------------------------
        _spec(
            "opamp_fast_restart_commands_total",
            "counter",
            "Restart commands this instance sent to agents (pushed, or held for their next poll).",
        ),
        _spec(
            "opamp_fast_custom_messages_total",
            "counter",
            "Custom messages this instance sent to agents or received from them, by direction.",
            "direction",
        ),
        _spec(
            "opamp_fast_group_restart_batches_total",
            "counter",
            "Batches of group restarts this instance sent.",
        ),
        _spec(
            "opamp_fast_routed_custom_messages_dropped_total",
            "counter",
            "Custom messages routed here for an agent this instance holds and not sent (the "
            "queue of routed messages full, or the service not running).",
        ),
        # -- packages ------------------------------------------------------------
        _spec(
            "opamp_fast_package_offers_sent_total",
            "counter",
            "OpAMP messages that carried packages_available (offers sent to agents).",
        ),
        _spec(
            "opamp_fast_package_agents_offered",
            "gauge",
            "Agents with a package offer (fleet-wide, as known to this instance).",
        ),
        _spec(
            "opamp_fast_package_installs_total",
            "counter",
            "Agent-reported package status transitions to installed or failed, by result.",
            "result",
        ),
        _spec(
            "opamp_fast_package_downloads_total",
            "counter",
            "Package downloads served by this instance (not those served by S3 directly).",
        ),
        _spec(
            "opamp_fast_package_download_bytes_total",
            "counter",
            "Package bytes sent by this instance.",
        ),
        # -- connection settings and agent certificates ---------------------------
        _spec(
            "opamp_fast_agent_certificates_issued_total",
            "counter",
            "Agent client certificates this instance signed (from CSRs and for rotations).",
        ),
        _spec(
            "opamp_fast_agent_certificates_redelivered_total",
            "counter",
            "CSRs answered with the agent's stored certificate (same key, far from expiry).",
        ),
        _spec(
            "opamp_fast_certificate_requests_refused_total",
            "counter",
            "Certificate requests refused, by reason (malformed, weak_key, other_uid, "
            "bad_signature, not_accepted, busy, database).",
            "reason",
        ),
        _spec(
            "opamp_fast_agent_certificates_expiring",
            "gauge",
            "Agent certificates still valid that expire within 14 days (fleet-wide, the same "
            "on every instance; -1 until first counted or without an agent CA).",
        ),
        # -- fleet events --------------------------------------------------------
        _spec(
            "opamp_fast_events_total",
            "counter",
            "Fleet events numbered by this instance: published here, or ingested from others.",
            "origin",
        ),
        _spec(
            "opamp_fast_events_delivered_total",
            "counter",
            "Event copies queued to /api/events subscribers.",
        ),
        _spec("opamp_fast_events_subscribers", "gauge", "Open /api/events streams."),
        _spec(
            "opamp_fast_events_dropped_subscribers_total",
            "counter",
            "Event streams ended because the subscriber fell a whole queue behind.",
        ),
        _spec(
            "opamp_fast_events_forwarded_total",
            "counter",
            "Events queued for the other instances (only while another instance is live).",
        ),
        _spec(
            "opamp_fast_events_forward_dropped_total",
            "counter",
            "Events not forwarded to the other instances (their queue full in an outage).",
        ),
        # -- remote configuration ------------------------------------------------
        _spec(
            "opamp_fast_remote_config_status",
            "gauge",
            "Online agents on this instance by the remote-config status they last reported.",
            "status",
        ),
        _spec(
            "opamp_fast_remote_config_pushes_total",
            "counter",
            "Remote configs pushed at once to WebSocket agents after an assignment changed.",
        ),
        _spec(
            "opamp_fast_rollout_agents",
            "gauge",
            "Agents of each group's latest rollout: eligible, admitted, applied, failed, pending.",
            "group",
            "kind",
        ),
        _spec(
            "opamp_fast_rollout_progress_ratio",
            "gauge",
            "Admitted / eligible agents of each group's latest rollout (1 when completed).",
            "group",
            "state",
        ),
    )
}


def agent_id(uid: bytes) -> str:
    """The canonical UUID text of a 16-byte instance uid (as in the ``agents.uid_text`` column)."""
    h = uid.hex()
    if len(h) != 32:
        return h
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Histogram:
    """A copied histogram: per-bucket counts (last is ``+Inf``), bounds and the sum."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @classmethod
    def of(cls, buckets: BucketCounts) -> Histogram:
        return cls(buckets.bounds, tuple(buckets.counts), buckets.sum)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs ending with ``+Inf``, as Prometheus expects."""
        out = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything one scrape exports, copied on the event loop at one instant.

    ``records`` is a list of references to the registry's records taken at the same instant;
    the collector reads only their scalar fields (``status``, ``last_seen``, the uid), each of
    which the loop replaces atomically, so reading them from a worker thread is safe.
    """

    at: float  # wall clock, UNIX seconds
    registry: RegistryStatistics
    connection_durations: Histogram
    heartbeats_total: int
    sweeper_lag_s: float
    writer: WriterStatistics | None
    flush_rows: Histogram
    flush_seconds: Histogram
    flush_cpu: Histogram
    loop_oversleep: Histogram
    gc_pauses: Histogram
    messages_in: dict[Transport, int]
    messages_out: dict[Transport, int]
    bytes_in: dict[Transport, int]
    bytes_out: dict[Transport, int]
    open_connections: dict[Transport, int]
    errors: dict[tuple[Transport, str], int]
    rejections: dict[tuple[Transport, int], int]
    sockets: dict[str, int]
    timeouts: dict[str, int]
    history_deleted: int
    shed: dict[str, int]
    duplicates: int
    claims_refused: int
    loop_lag_s: float
    records: list[AgentRecord]
    packages: PackageStatistics | None = None
    configs: ConfigStatistics | None = None
    events: EventHubStatistics | None = None
    connection_settings: SettingsStatistics | None = None
    # Restarts sent, custom messages sent and received, group restart batches sent, routed
    # custom messages dropped.
    commands: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    forgotten: dict[str, int] = field(default_factory=dict)
    audit_deleted: int = 0
    availability: FleetFigures | None = None


class MetricsExporter:
    """One server's metrics: an injected registry with :class:`FleetCollector` and process
    metrics, fed by the services passed in (never found through globals).

    Args:
        registry: the live agent registry (required: it is the fleet).
        fleet: supplies ``heartbeats_total`` and ``sweeper_lag_s``; ``None`` exports zeros.
        writer: the batch writer; its flushes feed the flush histograms through its
            ``on_flush`` hook, which this constructor sets. ``None`` exports zeros.
        transport: the OpAMP endpoint's :class:`TransportStats`; ``None`` exports zeros.
        heartbeat_interval_s: the interval offered to agents; ``agents_stale`` is measured in it.
        agent_series_max: the ``metrics_agent_series_max`` cap (0 disables per-agent series).
        writer_queue_max: exported as ``opamp_fast_writer_queue_capacity``.
        collector_registry: where to register; a fresh ``CollectorRegistry`` by default.
        clock: wall clock for ``agents_stale`` and the database backlog (tests inject one).
        process_metrics: register prometheus_client's ``ProcessCollector`` (``process_*``).
    """

    def __init__(
        self,
        *,
        registry: Registry,
        fleet: FleetHandler | None = None,
        writer: BatchWriter | None = None,
        transport: TransportStats | None = None,
        retention: HistoryRetention | None = None,
        loop_lag: Callable[[], float] | None = None,
        heartbeat_interval_s: float,
        agent_series_max: int,
        writer_queue_max: int = 0,
        version: str = "",
        collector_registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        process_metrics: bool = True,
    ) -> None:
        if heartbeat_interval_s <= 0 or agent_series_max < 0:
            raise ValueError("heartbeat_interval_s must be > 0 and agent_series_max >= 0")
        self.agents = registry
        self.fleet = fleet
        self.writer = writer
        self.transport = transport
        self.retention = retention
        self.loop_lag = loop_lag
        self.heartbeat_interval_s = heartbeat_interval_s
        self.agent_series_max = agent_series_max
        self.writer_queue_max = writer_queue_max
        self.version = version
        self.packages: PackageRegistry | None = None
        self.configs: ConfigService | None = None  # set once the service exists
        self.events: EventHub | None = None  # fleet events
        self.budget: BufferBudget | None = None  # bytes held for partial input
        self.connection_settings: ConnectionSettingsService | None = None
        self.commands: Commands | None = None  # group restarts, messages routed here
        # Forgetting agents, audit retention, the fleet's availability (set by the services).
        self.lifecycle: AgentLifecycle | None = None
        self.audit_retention: AuditRetention | None = None
        self.availability: AvailabilityMonitor | None = None
        self._clock = clock
        self.flush_rows = BucketCounts(FLUSH_ROWS_BOUNDS)
        self.flush_seconds = BucketCounts(FLUSH_SECONDS_BOUNDS)
        self.flush_cpu = BucketCounts(PAUSE_BOUNDS)
        #: Kept by their owners (the loop-lag sampler, the GC timer); read at scrape time.
        self.loop_oversleep = BucketCounts(PAUSE_BOUNDS)
        self.gc_pauses = BucketCounts(PAUSE_BOUNDS)
        if writer is not None:
            writer.on_flush = self._observe_flush
        # The loop this exporter serves: collect() called from any other thread hops back to it.
        self._loop_token = _current_token()
        # One scrape formats at a time; a second concurrent scrape waits instead of adding CPU.
        self._render_limiter = anyio.CapacityLimiter(1)
        self.registry = (
            collector_registry if collector_registry is not None else CollectorRegistry()
        )
        self.collector = FleetCollector(self)
        self.registry.register(self.collector)
        if process_metrics:
            ProcessCollector(registry=self.registry)

    def with_packages(self, packages: PackageRegistry | None) -> MetricsExporter:
        """Export the package registry's counters too."""
        self.packages = packages
        return self

    def _observe_flush(self, rows: int, seconds: float, cpu_s: float) -> None:
        self.flush_rows.observe(rows)
        self.flush_seconds.observe(seconds)
        self.flush_cpu.observe(cpu_s)

    # -- reading the services --------------------------------------------------------------
    def snapshot(self) -> MetricsSnapshot:
        """Copy every exported number. Must run on the event loop (or with no loop at all):
        it never awaits, so it sees the services between two of their mutations."""
        fleet = self.fleet
        stats = self.transport
        zero = dict.fromkeys(_TRANSPORTS, 0)
        return MetricsSnapshot(
            at=self._clock(),
            registry=self.agents.statistics(),
            connection_durations=Histogram.of(self.agents.connection_durations),
            heartbeats_total=fleet.heartbeats_total if fleet is not None else 0,
            sweeper_lag_s=fleet.sweeper_lag_s if fleet is not None else 0.0,
            writer=self.writer.statistics() if self.writer is not None else None,
            flush_rows=Histogram.of(self.flush_rows),
            flush_seconds=Histogram.of(self.flush_seconds),
            flush_cpu=Histogram.of(self.flush_cpu),
            loop_oversleep=Histogram.of(self.loop_oversleep),
            gc_pauses=Histogram.of(self.gc_pauses),
            messages_in=dict(stats.messages_in) if stats else zero,
            messages_out=dict(stats.messages_out) if stats else zero,
            bytes_in=dict(stats.bytes_in) if stats else zero,
            bytes_out=dict(stats.bytes_out) if stats else zero,
            open_connections=dict(stats.open) if stats else zero,
            errors=dict(stats.errors) if stats else {},
            rejections=dict(stats.rejections) if stats else {},
            sockets=(
                {
                    "open": stats.tcp_open,
                    "refused": stats.tcp_refused,
                    "evicted": stats.tcp_evicted,
                    "handed_off": stats.handed_off,
                    "upgrades_evicted": stats.upgrades_evicted,
                    "buffered_bytes": self.budget.total if self.budget else 0,
                    "buffer_shed": self.budget.shed_total if self.budget else 0,
                }
                if stats
                else {}
            ),
            timeouts=dict(stats.timeouts) if stats else {},
            history_deleted=self.retention.deleted_total if self.retention is not None else 0,
            shed=dict(fleet.admission.shed_total) if fleet is not None else {},
            duplicates=fleet.duplicates_total if fleet is not None else 0,
            claims_refused=fleet.claims_refused_total if fleet is not None else 0,
            loop_lag_s=self.loop_lag() if self.loop_lag is not None else 0.0,
            records=list(self.agents),
            packages=self.packages.statistics() if self.packages is not None else None,
            configs=self.configs.statistics() if self.configs is not None else None,
            events=self.events.statistics() if self.events is not None else None,
            connection_settings=(
                self.connection_settings.statistics()
                if self.connection_settings is not None
                else None
            ),
            commands=self._commands(),
            forgotten=dict(self.lifecycle.forgotten_total) if self.lifecycle else {},
            audit_deleted=self.audit_retention.deleted_total if self.audit_retention else 0,
            availability=self.availability.figures if self.availability else None,
        )

    def _commands(self) -> tuple[int, int, int, int, int]:
        fleet, commands = self.fleet, self.commands
        batches, dropped = (
            (commands.batches_total, commands.routed_dropped_total) if commands else (0, 0)
        )
        if fleet is None:
            return (0, 0, 0, batches, dropped)
        return (
            fleet.restarts_total,
            fleet.custom_messages_sent_total,
            fleet.custom_messages_received_total,
            batches,
            dropped,
        )

    def snapshot_on_loop(self) -> MetricsSnapshot:
        """:meth:`snapshot`, taken on the event loop whichever thread asks for it."""
        token = self._loop_token
        if token is None or _current_token() is not None:
            return self.snapshot()
        try:
            return anyio.from_thread.run_sync(self.snapshot, token=token)
        except RuntimeError:
            return self.snapshot()  # the loop has ended: nothing mutates the services any more

    # -- exposition --------------------------------------------------------------------------
    def generate(self) -> bytes:
        """The text exposition (format 0.0.4) of the whole registry; callable from any thread."""
        return generate_latest(self.registry)

    async def render(self) -> bytes:
        """Format a scrape in a worker thread so 100k per-agent lines never stall the loop."""
        return await anyio.to_thread.run_sync(self.generate, limiter=self._render_limiter)


def _current_token() -> anyio.lowlevel.EventLoopToken | None:
    """The running event loop's token, or None outside one (a worker thread, no loop)."""
    try:
        return anyio.lowlevel.current_token()
    except RuntimeError:
        return None


class FleetCollector(Collector):
    """Builds every family of :data:`METRICS` from one :class:`MetricsSnapshot` per scrape."""

    def __init__(self, exporter: MetricsExporter) -> None:
        self._exporter = exporter

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering a second collector with the same names fails loudly.
        return [_empty_family(spec) for spec in METRICS.values()]

    def collect(self) -> Iterable[Metric]:
        return list(self.families(self._exporter.snapshot_on_loop()))

    def families(self, snap: MetricsSnapshot) -> Iterator[Metric]:
        """Pure: the families of one snapshot (unit tests call it with hand-made snapshots)."""
        exporter = self._exporter
        f = _Families()
        _fleet_families(f, snap, exporter)
        _transport_families(f, snap)
        _writer_families(f, snap, exporter.writer_queue_max)
        _runtime_families(f, snap, exporter.version)
        _package_families(f, snap.packages)
        _config_families(f, snap.configs)
        _event_families(f, snap.events)
        _certificate_families(f, snap.connection_settings)
        _command_families(f, snap)
        _lifecycle_families(f, snap)
        return iter(f.families)


def _fleet_families(f: _Families, snap: MetricsSnapshot, exporter: MetricsExporter) -> None:
    """Agents by status, their changes, heartbeats, staleness, last-seen series, durations."""
    reg = snap.registry
    by_status = f.gauge("agents_by_status")
    by_status.add_metric([AgentStatus.ONLINE.value], reg.online)
    by_status.add_metric([AgentStatus.OFFLINE.value], reg.offline)

    changes = f.counter("agent_status_changes_total")
    for (src, dst), n in sorted({**dict.fromkeys(_KNOWN_CHANGES, 0), **reg.status_changes}.items()):
        changes.add_metric([src, dst], n)

    f.counter("agent_heartbeats_total").add_metric([], snap.heartbeats_total)

    stale_before = snap.at - STALE_AFTER_INTERVALS * exporter.heartbeat_interval_s
    records = snap.records
    online = AgentStatus.ONLINE
    stale = sum(1 for r in records if r.status is online and r.last_seen < stale_before)
    f.gauge("agents_stale").add_metric([], stale)

    cap = exporter.agent_series_max
    suppressed = cap == 0 or len(records) > cap
    if not suppressed:
        last_seen = f.gauge("agent_last_seen_seconds")
        add = last_seen.add_metric
        for r in records:
            seen = r.last_seen
            if seen > 0:  # known but never heard from (e.g. config assigned ahead): no sample
                add([agent_id(r.uid)], seen)
    f.gauge("opamp_fast_agent_series_suppressed").add_metric([], 1 if suppressed else 0)

    f.histogram("agent_connection_duration_seconds", snap.connection_durations)

    online_by = f.gauge("opamp_fast_agents_online")
    online_by.add_metric([Transport.WS.value], reg.online_ws)
    online_by.add_metric([Transport.HTTP.value], reg.online_http)
    f.counter("opamp_fast_agent_heartbeat_timeouts_total").add_metric([], reg.expired_total)


def _transport_families(f: _Families, snap: MetricsSnapshot) -> None:
    """Messages, bytes, connections, errors, refusals, sockets, timeouts and shedding."""
    for name, values in (
        ("opamp_fast_received_messages_total", snap.messages_in),
        ("opamp_fast_sent_messages_total", snap.messages_out),
        ("opamp_fast_received_bytes_total", snap.bytes_in),
        ("opamp_fast_sent_bytes_total", snap.bytes_out),
    ):
        family = f.counter(name)
        for transport in _TRANSPORTS:
            family.add_metric([transport.value], values.get(transport, 0))
    open_conns = f.gauge("opamp_fast_open_connections")
    for transport in _TRANSPORTS:
        open_conns.add_metric([transport.value], snap.open_connections.get(transport, 0))
    errors = f.counter("opamp_fast_protocol_errors_total")
    for (transport, kind), n in sorted(snap.errors.items(), key=_label_key):
        errors.add_metric([transport.value, kind], n)
    rejections = f.counter("opamp_fast_rejected_connections_total")
    for (transport, status), n in sorted(snap.rejections.items(), key=_label_key):
        rejections.add_metric([transport.value, str(status)], n)
    sockets = snap.sockets
    f.gauge("opamp_fast_tcp_open").add_metric([], sockets.get("open", 0))
    f.counter("opamp_fast_tcp_refused_total").add_metric([], sockets.get("refused", 0))
    f.counter("opamp_fast_tcp_evicted_total").add_metric([], sockets.get("evicted", 0))
    f.counter("opamp_fast_handed_off_total").add_metric([], sockets.get("handed_off", 0))
    f.counter("opamp_fast_upgrades_evicted_total").add_metric(
        [], sockets.get("upgrades_evicted", 0)
    )
    f.gauge("opamp_fast_buffered_bytes").add_metric([], sockets.get("buffered_bytes", 0))
    f.counter("opamp_fast_buffer_shed_total").add_metric([], sockets.get("buffer_shed", 0))
    timeouts = f.counter("opamp_fast_connection_timeouts_total")
    for phase, n in sorted(snap.timeouts.items()):
        timeouts.add_metric([phase], n)
    shed = f.counter("opamp_fast_admission_shed_total")
    for reason, n in sorted(snap.shed.items()):
        shed.add_metric([reason], n)
    f.counter("opamp_fast_duplicate_messages_total").add_metric([], snap.duplicates)
    f.counter("opamp_fast_identity_claims_refused_total").add_metric([], snap.claims_refused)
    f.gauge("opamp_fast_loop_lag_seconds").add_metric([], snap.loop_lag_s)
    f.counter("opamp_fast_history_deleted_total").add_metric([], snap.history_deleted)


def _writer_families(f: _Families, snap: MetricsSnapshot, queue_max: int) -> None:
    """The batch writer: flushes, rows, what is pending, database errors and backlog."""
    f.histogram("opamp_fast_writer_flush_rows", snap.flush_rows)
    f.histogram("opamp_fast_writer_flush_duration_seconds", snap.flush_seconds)
    f.histogram("opamp_fast_writer_flush_cpu_seconds", snap.flush_cpu)
    w = snap.writer
    f.counter("opamp_fast_writer_flushes_total").add_metric([], w.flushes_total if w else 0)
    f.counter("opamp_fast_writer_rows_written_total").add_metric(
        [], w.rows_written_total if w else 0
    )
    f.gauge("opamp_fast_writer_pending_agents").add_metric([], w.pending_agents if w else 0)
    f.gauge("opamp_fast_writer_pending_sessions").add_metric([], w.pending_sessions if w else 0)
    f.gauge("opamp_fast_writer_queue_length").add_metric([], w.queued if w else 0)
    f.gauge("opamp_fast_writer_queue_capacity").add_metric([], queue_max)
    f.counter("opamp_fast_db_errors_total").add_metric([], w.db_errors_total if w else 0)
    f.counter("opamp_fast_writer_busy_agents_total").add_metric([], w.busy_total if w else 0)
    backlog = 0.0
    if w is not None and w.backlog_since is not None:
        backlog = max(0.0, snap.at - w.backlog_since)
    f.gauge("opamp_fast_db_backlog_seconds").add_metric([], backlog)


def _runtime_families(f: _Families, snap: MetricsSnapshot, version: str) -> None:
    f.gauge("opamp_fast_sweeper_lag_seconds").add_metric([], snap.sweeper_lag_s)
    f.histogram("opamp_fast_loop_oversleep_seconds", snap.loop_oversleep)
    f.histogram("opamp_fast_gc_pause_seconds", snap.gc_pauses)
    f.info(
        "opamp_fast_heartbeat_wheel",
        {"implementation": "cython" if snap.registry.using_extension else "python"},
    )
    f.info("opamp_fast_build", {"version": version})


def _command_families(f: _Families, snap: MetricsSnapshot) -> None:
    restarts, sent, received, batches, dropped = snap.commands
    f.counter("opamp_fast_restart_commands_total").add_metric([], restarts)
    custom = f.counter("opamp_fast_custom_messages_total")
    custom.add_metric(["to_agent"], sent)
    custom.add_metric(["from_agent"], received)
    f.counter("opamp_fast_group_restart_batches_total").add_metric([], batches)
    f.counter("opamp_fast_routed_custom_messages_dropped_total").add_metric([], dropped)


def _package_families(f: _Families, p: PackageStatistics | None) -> None:
    """Package offers, installs and downloads."""
    f.counter("opamp_fast_package_offers_sent_total").add_metric(
        [], p.offers_sent_total if p else 0
    )
    f.gauge("opamp_fast_package_agents_offered").add_metric([], p.agents_offered if p else 0)
    installs = f.counter("opamp_fast_package_installs_total")
    installs.add_metric(["installed"], p.installed_total if p else 0)
    installs.add_metric(["failed"], p.failed_total if p else 0)
    f.counter("opamp_fast_package_downloads_total").add_metric([], p.downloads_total if p else 0)
    f.counter("opamp_fast_package_download_bytes_total").add_metric(
        [], p.download_bytes_total if p else 0
    )


_REFUSAL_REASONS = ("malformed", "weak_key", "other_uid", "bad_signature", "not_accepted")


def _certificate_families(f: _Families, c: SettingsStatistics | None) -> None:
    """Agent certificates issued, re-delivered, refused, expiring."""
    f.counter("opamp_fast_agent_certificates_issued_total").add_metric(
        [], c.issued_total if c else 0
    )
    f.counter("opamp_fast_agent_certificates_redelivered_total").add_metric(
        [], c.redelivered_total if c else 0
    )
    refused = f.counter("opamp_fast_certificate_requests_refused_total")
    counts = dict.fromkeys(_REFUSAL_REASONS, 0) | (c.refused_total if c else {})
    for reason, count in sorted(counts.items()):
        refused.add_metric([reason], count)
    expiring = c.expiring if c is not None and c.expiring is not None else -1
    f.gauge("opamp_fast_agent_certificates_expiring").add_metric([], expiring)


_RC_STATUSES = ("applied", "applying", "failed", "unset")
_ROLLOUT_KINDS = ("eligible", "admitted", "applied", "failed", "pending")


def _config_families(f: _Families, c: ConfigStatistics | None) -> None:
    """Remote-config status counts and rollout progress."""
    status = f.gauge("opamp_fast_remote_config_status")
    for name in _RC_STATUSES:
        status.add_metric([name], c.status_counts.get(name, 0) if c else 0)
    f.counter("opamp_fast_remote_config_pushes_total").add_metric([], c.pushes_total if c else 0)
    agents = f.gauge("opamp_fast_rollout_agents")
    progress = f.gauge("opamp_fast_rollout_progress_ratio")
    for group, rollout in sorted((c.rollouts if c else {}).items()):
        for kind in _ROLLOUT_KINDS:
            agents.add_metric([group, kind], rollout[kind])
        eligible = rollout["eligible"]
        ratio = (
            1.0
            if rollout["state"] == "completed" or not eligible
            else rollout["admitted"] / eligible
        )
        progress.add_metric([group, rollout["state"]], ratio)


def _event_families(f: _Families, e: EventHubStatistics | None) -> None:
    """The event hub's counters."""
    total = f.counter("opamp_fast_events_total")
    total.add_metric(["local"], e.published_total if e else 0)
    total.add_metric(["peer"], e.ingested_total if e else 0)
    f.counter("opamp_fast_events_delivered_total").add_metric([], e.delivered_total if e else 0)
    f.gauge("opamp_fast_events_subscribers").add_metric([], e.subscribers if e else 0)
    f.counter("opamp_fast_events_dropped_subscribers_total").add_metric(
        [], e.dropped_subscribers_total if e else 0
    )
    f.counter("opamp_fast_events_forwarded_total").add_metric([], e.forwarded_total if e else 0)
    f.counter("opamp_fast_events_forward_dropped_total").add_metric(
        [], e.outbox_dropped_total if e else 0
    )


def _lifecycle_families(f: _Families, snap: MetricsSnapshot) -> None:
    """Forgotten agents, audit retention, and the fleet's availability figures."""
    f.counter("opamp_fast_audit_deleted_total").add_metric([], snap.audit_deleted)
    forgotten = f.counter("opamp_fast_agents_forgotten_total")
    for by in ("operator", "expiry"):
        forgotten.add_metric([by], snap.forgotten.get(by, 0))
    figures = snap.availability
    f.gauge("opamp_fast_agents_flapping").add_metric([], figures.flapping if figures else 0)
    uptime = f.gauge("opamp_fast_fleet_uptime_ratio")
    if figures is not None and figures.uptime_ratio is not None:
        uptime.add_metric([], figures.uptime_ratio)
    f.gauge("opamp_fast_agents_drifted").add_metric([], figures.drifted if figures else 0)


class _Families:
    """Creates families from :data:`METRICS` (so names, help and labels live in one place)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def gauge(self, name: str) -> GaugeMetricFamily:
        spec = METRICS[name]
        family = GaugeMetricFamily(name, spec.help, labels=spec.labels)
        self.families.append(family)
        return family

    def counter(self, name: str) -> CounterMetricFamily:
        spec = METRICS[name]
        family = CounterMetricFamily(name, spec.help, labels=spec.labels)
        self.families.append(family)
        return family

    def histogram(self, name: str, hist: Histogram) -> None:
        spec = METRICS[name]
        family = HistogramMetricFamily(name, spec.help, labels=spec.labels)
        family.add_metric([], hist.cumulative(), hist.sum)
        self.families.append(family)

    def info(self, name: str, value: dict[str, str]) -> None:
        spec = METRICS[name]
        self.families.append(InfoMetricFamily(name, spec.help, value=value))


def _empty_family(spec: MetricSpec) -> Metric:
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    if spec.kind == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    if spec.kind == "info":
        return InfoMetricFamily(spec.name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def _label_key(item: tuple[tuple[Transport, object], int]) -> tuple[str, str]:
    (transport, detail), _ = item
    return transport.value, str(detail)
