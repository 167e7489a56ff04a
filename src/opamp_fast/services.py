"""``open_services``: every background service, owned by one task group, with explicit
readiness.

Services start in dependency order with ``await tg.start(service.run)`` (each calls
``task_status.started()`` when ready) and stop in reverse order when the block exits.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio

from . import __version__
from .auth import AgentTokenVerifier, agent_token_key
from .connection_settings.ca import AgentCA
from .connection_settings.service import ConnectionSettingsService
from .fleet.admission import Admission, LoopLag
from .fleet.cluster import Cluster
from .fleet.commands import Commands
from .fleet.events import EventHub, OnlineHistory, announce_drift, announce_forgotten
from .fleet.handler import FleetHandler
from .fleet.registry import Registry
from .observability.gcpolicy import GCPauseTimer, GrowthFreezer
from .observability.metrics import MetricsExporter
from .observability.metrics_share import WorkerMetricsShare, WorkerSlot
from .packages import PackageRegistry, build_package_registry
from .protocol import (
    DEFAULT_SERVER_CAPABILITIES,
    SERVER_ACCEPTS_CONNECTION_SETTINGS_REQUEST,
    SERVER_OFFERS_PACKAGES,
    ServerPolicy,
)
from .protocol.codec import PartBounds
from .redaction import ConfigRedactor, RedactionPolicy
from .remote_config.service import ConfigService
from .settings import Settings
from .storage import Database, queries
from .storage.audit_denials import DenialLog
from .storage.availability import AvailabilityMonitor
from .storage.batch_writer import BatchWriter
from .storage.lifecycle import AgentLifecycle, Forgotten
from .storage.retention import AuditRetention, HistoryRetention
from .transport import Limits, TransportStats
from .transport.budget import BufferBudget

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Services:
    """What request handlers may use. Built once per server; passed explicitly, never global."""

    settings: Settings
    db: Database
    shutdown: anyio.Event
    registry: Registry
    writer: BatchWriter
    fleet: FleetHandler
    opamp: Limits  # the OpAMP endpoint's handler, limits, timeouts and counters
    retention: HistoryRetention
    loop_lag: LoopLag
    cluster: Cluster
    # Prometheus exporter: one per server, with its own CollectorRegistry.
    metrics: MetricsExporter | None = None
    metrics_share: WorkerMetricsShare | None = None  # with --workers: everyone's /metrics
    # Fleet events for /api/events and the console.
    events: EventHub | None = None
    online_history: OnlineHistory | None = None
    # Remote configuration management: directory, pushes, rollout driver.
    configs: ConfigService | None = None
    # Agent packages: registry, offers, statuses.
    packages: PackageRegistry | None = None
    # Connection settings and agent certificates: offers, CSRs, rotations, statuses.
    connection_settings: ConnectionSettingsService | None = None
    # Refused REST requests, aggregated into the audit log (audit_denials).
    denials: DenialLog | None = None
    # Restarts and custom messages routed here, the group restart driver.
    commands: Commands | None = None
    # Forgetting agents (an operator's, expiry), audit retention, the fleet's availability.
    lifecycle: AgentLifecycle | None = None
    audit_retention: AuditRetention | None = None
    availability: AvailabilityMonitor | None = None
    started_at: float = field(default_factory=time.time)
    version: str = __version__


#: Descriptors kept free of agent connections: probes, the REST API, the database pools, logs.
FD_RESERVE = 256


def fd_limit() -> int:
    """This process's open-file limit (RLIMIT_NOFILE, soft)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def max_agent_connections(settings: Settings) -> int:
    """``max_connections``, capped so agents can never take the descriptors the rest needs."""
    return max(1, min(settings.max_connections, fd_limit() - FD_RESERVE))


def admission_of(
    settings: Settings, *, overloaded: Callable[[], bool], loop_lag: Callable[[], float]
) -> Admission:
    key = agent_token_key(settings)
    return Admission(
        agent_auth_token=settings.agent_auth_token,
        agent_tokens=AgentTokenVerifier(key) if key is not None else None,
        # With an agent CA, agents without a certificate are admitted: they may ask for one.
        require_client_cert=(
            settings.tls_client_ca_file is not None and settings.agent_ca_cert_file is None
        ),
        require_identity=settings.require_agent_identity,
        max_connections=max_agent_connections(settings),
        max_handshakes=settings.max_handshakes,
        max_loop_lag_s=settings.max_loop_lag_s,
        overloaded=overloaded,
        loop_lag=loop_lag,
    )


def opamp_limits(settings: Settings, handler: FleetHandler) -> Limits:
    return Limits(
        handler=handler,
        stats=TransportStats(),
        path=settings.opamp_path,
        max_message_bytes=settings.max_message_bytes,
        handshake_timeout_s=settings.handshake_timeout_s,
        message_timeout_s=settings.message_timeout_s,
        close_timeout_s=settings.close_timeout_s,
        keep_alive_timeout_s=max(75.0, 3.0 * settings.heartbeat_interval_s),
        ws_ping_interval_s=settings.ws_ping_interval_s,
        max_messages_per_s=settings.max_agent_messages_per_s,
        min_body_bytes_per_s=settings.min_body_bytes_per_s,
        budget=BufferBudget(settings.max_buffered_bytes),
        part_bounds=PartBounds(
            settings.max_description_bytes,
            settings.max_status_part_bytes,
            settings.max_custom_message_bytes,
        ),
    )


def server_policy(settings: Settings) -> ServerPolicy:
    capabilities = DEFAULT_SERVER_CAPABILITIES | SERVER_OFFERS_PACKAGES
    if settings.agent_ca_cert_file is not None:
        capabilities |= SERVER_ACCEPTS_CONNECTION_SETTINGS_REQUEST
    return ServerPolicy(
        capabilities=capabilities,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_message_bytes=settings.max_message_bytes,
        max_description_bytes=settings.max_description_bytes,
        max_description_attributes=settings.max_description_attributes,
        max_status_part_bytes=settings.max_status_part_bytes,
        max_custom_message_bytes=settings.max_custom_message_bytes,
    )


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, db: Database, shutdown: anyio.Event, *, worker: WorkerSlot | None = None
) -> AsyncIterator[Services]:
    """Start the writer (after crash repair) and the background services; on exit stop them,
    then drain the writer, in that order. Closing connections is the caller's (``server.serve``)."""
    services = build_services(settings, db, shutdown, worker=worker)
    writer = services.writer
    # the repair first: it reads how the previous run ended, which the start record clears
    repaired = await writer.repair_after_crash()
    if repaired:
        logger.info("closed %d connection(s) left open by a previous run", repaired)
    await _record_instance_start(services)
    async with anyio.create_task_group() as writer_group:
        await writer_group.start(writer.run)
        async with anyio.create_task_group() as group:
            for run in _background(services):
                await group.start(run)
            try:
                yield services
            finally:
                group.cancel_scope.cancel()
        logger.info("sweeper stopped; draining the database writer")
        writer.close()
    with anyio.CancelScope(shield=True):
        await _record_instance_stop(services)


def build_services(
    settings: Settings, db: Database, shutdown: anyio.Event, *, worker: WorkerSlot | None = None
) -> Services:
    """Every service of one server, built and wired, none started."""
    registry = Registry(
        timeout_s=settings.heartbeat_timeout_s,
        timeout_factor=settings.heartbeat_timeout_factor,
        tick_s=settings.heartbeat_tick_s,
        start_mono=time.monotonic(),
        retention_s=settings.offline_retention_s,
    )
    writer = BatchWriter(
        db,
        instance_id=settings.instance_id,
        flush_interval_s=settings.flush_interval_s,
        batch_max=settings.flush_batch_max,
        queue_max=settings.writer_queue_max,
        online_counts=lambda: (registry.online_ws, registry.online_http),
        seen_flush_interval_s=settings.last_seen_flush_s,
        drain_timeout_s=settings.drain_timeout_s,
        redactor=ConfigRedactor(RedactionPolicy.parse(settings.redact_keys)),
    )
    loop_lag = LoopLag(interval_s=settings.loop_lag_interval_s)
    events = EventHub(
        instance_id=settings.instance_id,
        replay_max=settings.events_replay_max,
        queue_max=settings.events_queue_max,
    )
    fleet = FleetHandler(
        registry=registry,
        sink=writer,
        policy=server_policy(settings),
        admission=admission_of(settings, overloaded=lambda: writer.overloaded, loop_lag=loop_lag),
        events=events,
    )
    services = Services(
        settings=settings,
        db=db,
        shutdown=shutdown,
        registry=registry,
        writer=writer,
        fleet=fleet,
        opamp=opamp_limits(settings, fleet),
        retention=HistoryRetention(db, retention_days=settings.history_retention_days),
        loop_lag=loop_lag,
        cluster=Cluster(
            db, fleet, instance_id=settings.instance_id, lease_s=settings.lease_s, events=events
        ),
        events=events,
        online_history=OnlineHistory(_online_sampler(db)),
        denials=DenialLog(db, window_s=settings.audit_denial_window_s),
        packages=build_package_registry(settings, db=db, registry=registry, fleet=fleet),
        configs=ConfigService(db, fleet, instance_id=settings.instance_id),
        connection_settings=ConnectionSettingsService(
            db,
            fleet,
            instance_id=settings.instance_id,
            ca=agent_ca(settings),
            flush_interval_s=settings.flush_interval_s,
        ),
        commands=Commands(db, fleet, instance_id=settings.instance_id),
        lifecycle=AgentLifecycle(
            db,
            retention_days=settings.forget_offline_after_days,
            instance_id=settings.instance_id,
        ),
        audit_retention=AuditRetention(db, retention_days=settings.audit_retention_days),
        availability=AvailabilityMonitor(db),
    )
    _wire(services)
    # Built before the writer starts, so its on_flush hook sees every flush.
    services.metrics = metrics_exporter(services)
    if worker is not None:
        services.metrics_share = WorkerMetricsShare(
            worker,
            services.metrics.generate,
            agent_series_max=settings.metrics_agent_series_max,
        )
    logger.info(
        "heartbeat wheel: %s implementation",
        "Cython" if registry.statistics().using_extension else "pure-Python",
    )
    return services


def agent_ca(settings: Settings) -> AgentCA | None:
    """The agent CA when configured (ConfigError when its files cannot serve)."""
    if settings.agent_ca_cert_file is None or settings.agent_ca_key_file is None:
        return None
    return AgentCA.load(
        settings.agent_ca_cert_file,
        settings.agent_ca_key_file,
        ttl_days=settings.agent_cert_ttl_days,
    )


def _wire(services: Services) -> None:
    """The hooks by which the services hear of each other (none imports another's room)."""
    writer, fleet, events = services.writer, services.fleet, services.events
    configs, packages, cluster = services.configs, services.packages, services.cluster
    connection = services.connection_settings
    assert events is not None and configs is not None and packages is not None
    assert connection is not None and services.commands is not None
    assert services.lifecycle is not None
    cluster.on_commands = services.commands.on_notice
    writer.event_outbox = events.take_outbox
    writer.on_refused = fleet.refuse_claims
    writer.on_drift = partial(announce_drift, events)
    writer.peers = lambda: cluster.peers
    cluster.on_packages = packages.notice
    cluster.on_configs = configs.on_notice
    cluster.on_certificates = connection.notice
    cluster.on_forget = partial(_forget_here, services)
    services.lifecycle.on_forgotten = partial(_after_forgetting, services)
    configs.also_assign = _each(packages.assign, connection.assign)
    configs.before_apply = _in_turn(packages.load_groups, connection.load)
    packages.group_of = configs.deciding_group
    connection.group_of = configs.deciding_group
    fleet.connection_settings = connection


def _each(*assigns: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """Every assign runs (no short cut); True when any changed something."""

    def assign(record: Any) -> bool:
        return any([a(record) for a in assigns])

    return assign


def _in_turn(*steps: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        for step in steps:
            await step()

    return run


def _forget_here(services: Services, uids: list[bytes], by: str) -> None:
    """Agents deleted from the database (here, or by another instance): gone from memory."""
    services.fleet.forget(uids)
    if services.configs is not None:
        for uid in uids:
            services.configs.forget(uid)
    if services.packages is not None:
        services.packages.forget(uids)
    if services.connection_settings is not None:
        services.connection_settings.forget(uids)
    if services.events is not None:
        announce_forgotten(services.events, uids, by)


async def _after_forgetting(services: Services, forgotten: Forgotten) -> None:
    """This instance deleted agents: it forgets them at once (its own notices do not come back
    to it), and reloads what went with them (a pin, labels, package offers)."""
    _forget_here(services, forgotten.uids, forgotten.by)
    if forgotten.directory_changed and services.configs is not None:
        await services.configs.refresh()
    if forgotten.offer_uids and services.packages is not None:
        await services.packages.refresh(forgotten.offer_uids)


def _background(services: Services) -> list[Callable[..., Coroutine[Any, Any, Any]]]:
    """The background services' ``run`` methods, in the order they start."""
    assert services.packages is not None and services.configs is not None
    assert services.online_history is not None and services.denials is not None
    assert services.commands is not None
    assert services.lifecycle is not None and services.audit_retention is not None
    assert services.availability is not None
    runs: list[Callable[..., Coroutine[Any, Any, Any]]] = [
        partial(services.fleet.run_sweeper, tick_s=services.settings.heartbeat_tick_s),
        GrowthFreezer(lambda: services.registry.online_count).run,
        *([GCPauseTimer(services.metrics.gc_pauses).run] if services.metrics else []),
        services.loop_lag.run,
        services.retention.run,
        services.cluster.run,
        services.packages.run,
        services.connection_settings.run,  # type: ignore[union-attr]
        services.configs.run,
        services.online_history.run,
        services.denials.run,
        services.commands.run,
        services.lifecycle.run,
        services.audit_retention.run,
        services.availability.run,
    ]
    if services.metrics_share is not None:
        runs.append(services.metrics_share.run)
    return runs


def _online_sampler(db: Database) -> Callable[[], Awaitable[int]]:
    async def sample() -> int:
        counts = await db.run(queries.fleet_counts)
        return counts.online

    return sample


async def _record_instance_start(services: Services) -> None:
    def _upsert(conn: object) -> None:
        conn.execute(  # type: ignore[attr-defined]
            """
            INSERT INTO server_instances
                (instance_id, version, started_at, last_heartbeat_at, lease_s)
            VALUES (%s, %s, now(), now(), %s)
            ON CONFLICT (instance_id) DO UPDATE
               SET version = EXCLUDED.version, started_at = now(), last_heartbeat_at = now(),
                   lease_s = EXCLUDED.lease_s, stopping_at = NULL, stopped_at = NULL,
                   lost_at = NULL, lost_by = NULL, online_ws = 0, online_http = 0
            """,
            (services.settings.instance_id, services.version, services.settings.lease_s),
        )

    await services.db.run(_upsert)


async def _record_instance_stop(services: Services) -> None:
    def _update(conn: object) -> None:
        conn.execute(  # type: ignore[attr-defined]
            "UPDATE server_instances SET stopped_at = now(), online_ws = 0, online_http = 0 "
            "WHERE instance_id = %s",
            (services.settings.instance_id,),
        )

    try:
        await services.db.run(_update)
    except Exception:
        logger.warning("could not record instance stop", exc_info=True)


def metrics_exporter(services: Services) -> MetricsExporter:
    """The Prometheus exporter of one server, reading its services' statistics."""
    settings = services.settings
    exporter = MetricsExporter(
        registry=services.registry,
        fleet=services.fleet,
        writer=services.writer,
        transport=services.opamp.stats,
        retention=services.retention,
        loop_lag=services.loop_lag,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        agent_series_max=settings.metrics_agent_series_max,
        writer_queue_max=settings.writer_queue_max,
        version=services.version,
    ).with_packages(services.packages)
    exporter.events = services.events
    exporter.commands = services.commands
    exporter.configs = services.configs
    exporter.budget = services.opamp.budget
    exporter.connection_settings = services.connection_settings
    exporter.lifecycle = services.lifecycle
    exporter.audit_retention = services.audit_retention
    exporter.availability = services.availability
    services.loop_lag.oversleep = exporter.loop_oversleep
    return exporter
