"""The metrics collector against a real Registry (and real TransportStats / BatchWriter) fed by
known transitions; values are read back through the text exposition, as Prometheus reads them."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from opamp_fast.fleet.registry import (
    CONNECTION_DURATION_BOUNDS_S,
    AgentRecord,
    BucketCounts,
    Registry,
)
from opamp_fast.observability.metrics import (
    METRICS,
    STALE_AFTER_INTERVALS,
    MetricsExporter,
    agent_id,
)
from opamp_fast.protocol import Session, Transport
from opamp_fast.storage.batch_writer import BatchWriter
from opamp_fast.transport.stats import TransportStats

ROOT = Path(__file__).resolve().parents[2]
WALL0 = 1_700_000_000.0
INTERVAL = 30


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(exporter: MetricsExporter) -> Samples:
    text = exporter.generate().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


class Clock:
    def __init__(self, now: float = WALL0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_registry() -> Registry:
    return Registry(timeout_s=60.0, timeout_factor=2.5, tick_s=1.0, start_mono=0.0)


def go_online(
    registry: Registry, uid: bytes, *, at: float, transport: Transport = Transport.WS
) -> AgentRecord:
    """``at`` is seconds after WALL0; mono and wall advance together."""
    record, _ = registry.ensure(uid, uid)
    registry.mark_online(
        record,
        session=Session(transport),
        connection=None,
        transport=transport,
        remote_addr="127.0.0.1:1",
        heartbeat_interval_s=INTERVAL,
        mono=at,
        wall=WALL0 + at,
    )
    return record


def exporter_for(registry: Registry, clock: Clock | None = None, **kw: Any) -> MetricsExporter:
    kw.setdefault("agent_series_max", 10_000)
    return MetricsExporter(
        registry=registry,
        heartbeat_interval_s=INTERVAL,
        clock=clock or Clock(),
        process_metrics=False,
        **kw,
    )


def test_fleet_metrics_follow_known_transitions() -> None:
    registry = make_registry()
    a = go_online(registry, b"a" * 16, at=0)  # stays online (WS)
    go_online(registry, b"b" * 16, at=0, transport=Transport.HTTP)  # times out
    c = go_online(registry, b"c" * 16, at=10)  # closes after 90 s
    registry.mark_offline(c, wall=WALL0 + 100, reason="connection closed")
    go_online(registry, b"c" * 16, at=120)  # ... and comes back
    registry.refresh(a, mono=60, wall=WALL0 + 60)
    registry.refresh(registry.get(b"c" * 16), mono=140, wall=WALL0 + 140)  # type: ignore[arg-type]
    # b's deadline: 0 + max(60, 2.5 x 30) = 75 s
    expired = registry.sweep(mono=80, wall=WALL0 + 80)
    assert [t.record.uid for t in expired] == [b"b" * 16]

    samples = scrape(exporter_for(registry, Clock(WALL0 + 150)))

    assert value(samples, "agents_by_status", status="online") == 2
    assert value(samples, "agents_by_status", status="offline") == 1
    assert series(samples, "agent_status_changes_total") == {
        frozenset({("from", "new"), ("to", "online")}): 3,
        frozenset({("from", "online"), ("to", "offline")}): 2,
        frozenset({("from", "offline"), ("to", "online")}): 1,
    }
    assert value(samples, "opamp_fast_agent_heartbeat_timeouts_total") == 1
    assert value(samples, "opamp_fast_agents_online", transport="ws") == 2
    assert value(samples, "opamp_fast_agents_online", transport="http") == 0
    # Two connections ended: c after 90 s (le=300), b at its deadline, after 75 s (le=300).
    buckets = series(samples, "agent_connection_duration_seconds_bucket")
    assert buckets[frozenset({("le", "60.0")})] == 0
    assert buckets[frozenset({("le", "300.0")})] == 2
    assert buckets[frozenset({("le", "604800.0")})] == 2
    assert buckets[frozenset({("le", "+Inf")})] == 2
    assert len(buckets) == len(CONNECTION_DURATION_BOUNDS_S) + 1
    assert value(samples, "agent_connection_duration_seconds_count") == 2
    assert value(samples, "agent_connection_duration_seconds_sum") == 165
    # Last seen per agent, as UNIX seconds, labelled with the canonical UUID text.
    assert series(samples, "agent_last_seen_seconds") == {
        frozenset({("agent_id", agent_id(b"a" * 16))}): WALL0 + 60,
        frozenset({("agent_id", agent_id(b"b" * 16))}): WALL0 + 0,
        frozenset({("agent_id", agent_id(b"c" * 16))}): WALL0 + 140,
    }
    assert value(samples, "opamp_fast_agent_series_suppressed") == 0


def test_status_changes_start_at_zero() -> None:
    """Every known transition is exported before it first happens, so alerts see a series."""
    samples = scrape(exporter_for(make_registry()))
    assert set(series(samples, "agent_status_changes_total").values()) == {0}
    assert len(series(samples, "agent_status_changes_total")) == 3
    assert value(samples, "agents_by_status", status="online") == 0
    assert value(samples, "agents_stale") == 0
    assert value(samples, "agent_connection_duration_seconds_count") == 0


def test_stale_means_online_and_silent_for_more_than_one_and_a_half_intervals() -> None:
    registry = make_registry()
    clock = Clock(WALL0 + 1000)
    limit = STALE_AFTER_INTERVALS * INTERVAL  # 45 s
    fresh = go_online(registry, os.urandom(16), at=0)
    on_edge = go_online(registry, os.urandom(16), at=0)
    late = go_online(registry, os.urandom(16), at=0)
    gone = go_online(registry, os.urandom(16), at=0)
    registry.refresh(fresh, mono=990, wall=clock.now - 10)
    registry.refresh(on_edge, mono=955, wall=clock.now - limit)  # exactly 45 s: not yet
    registry.refresh(late, mono=954, wall=clock.now - limit - 1)
    registry.refresh(gone, mono=900, wall=clock.now - 100)
    registry.mark_offline(gone, wall=clock.now - 99, reason="connection closed")
    exporter = exporter_for(registry, clock)

    assert value(scrape(exporter), "agents_stale") == 1
    clock.now += 1  # on_edge is now 46 s silent
    assert value(scrape(exporter), "agents_stale") == 2


def test_per_agent_series_disappear_above_the_cap() -> None:
    registry = make_registry()
    exporter = exporter_for(registry, agent_series_max=2)
    go_online(registry, b"1" * 16, at=0)
    go_online(registry, b"2" * 16, at=1)
    samples = scrape(exporter)
    assert len(series(samples, "agent_last_seen_seconds")) == 2
    assert value(samples, "opamp_fast_agent_series_suppressed") == 0

    third = go_online(registry, b"3" * 16, at=2)
    samples = scrape(exporter)
    assert series(samples, "agent_last_seen_seconds") == {}
    assert value(samples, "opamp_fast_agent_series_suppressed") == 1
    assert value(samples, "agents_by_status", status="online") == 3  # aggregates unaffected

    registry.mark_offline(third, wall=WALL0 + 3, reason="connection closed")
    registry.forget(third)  # back at the cap: the series return
    samples = scrape(exporter)
    assert len(series(samples, "agent_last_seen_seconds")) == 2
    assert value(samples, "opamp_fast_agent_series_suppressed") == 0


def test_cap_zero_disables_per_agent_series() -> None:
    registry = make_registry()
    go_online(registry, os.urandom(16), at=0)
    samples = scrape(exporter_for(registry, agent_series_max=0))
    assert series(samples, "agent_last_seen_seconds") == {}
    assert value(samples, "opamp_fast_agent_series_suppressed") == 1


def test_agent_never_heard_from_has_no_last_seen_sample() -> None:
    registry = make_registry()
    registry.ensure(b"q" * 16, b"q" * 16)  # e.g. a config assigned before the agent connects
    samples = scrape(exporter_for(registry))
    assert series(samples, "agent_last_seen_seconds") == {}
    assert value(samples, "agents_by_status", status="offline") == 1


def test_transport_and_fleet_counters() -> None:
    from opamp_fast.fleet.handler import FleetHandler
    from opamp_fast.protocol import ServerPolicy

    registry = make_registry()
    stats = TransportStats()
    policy = ServerPolicy(heartbeat_interval_s=INTERVAL)
    fleet = FleetHandler(registry=registry, sink=None, policy=policy)  # type: ignore[arg-type]
    stats.ws_in, stats.ws_bytes_in = 2, 150
    stats.http_in, stats.http_bytes_in = 1, 7
    stats.http_out, stats.http_bytes_out = 1, 9
    stats.ws_open = 1
    stats.protocol_error(Transport.WS, "decode")
    stats.protocol_error(Transport.HTTP, "too_large")
    stats.protocol_error(Transport.HTTP, "too_large")
    stats.rejected(Transport.HTTP, 401)
    stats.rejected(Transport.WS, 503)
    fleet.heartbeats_total = 41
    fleet.sweeper_lag_s = 0.25
    samples = scrape(exporter_for(registry, transport=stats, fleet=fleet))

    assert value(samples, "opamp_fast_received_messages_total", transport="ws") == 2
    assert value(samples, "opamp_fast_received_messages_total", transport="http") == 1
    assert value(samples, "opamp_fast_sent_messages_total", transport="ws") == 0
    assert value(samples, "opamp_fast_sent_messages_total", transport="http") == 1
    assert value(samples, "opamp_fast_received_bytes_total", transport="ws") == 150
    assert value(samples, "opamp_fast_sent_bytes_total", transport="http") == 9
    assert value(samples, "opamp_fast_open_connections", transport="ws") == 1
    assert value(samples, "opamp_fast_open_connections", transport="http") == 0
    assert series(samples, "opamp_fast_protocol_errors_total") == {
        frozenset({("transport", "ws"), ("kind", "decode")}): 1,
        frozenset({("transport", "http"), ("kind", "too_large")}): 2,
    }
    assert series(samples, "opamp_fast_rejected_connections_total") == {
        frozenset({("transport", "http"), ("status", "401")}): 1,
        frozenset({("transport", "ws"), ("status", "503")}): 1,
    }
    assert value(samples, "agent_heartbeats_total") == 41
    assert value(samples, "opamp_fast_sweeper_lag_seconds") == 0.25


def test_custom_messages_routed_here_and_not_sent_are_counted() -> None:
    """A notice of a custom message for an agent held here, while the service that reads such
    messages back is not running (starting, stopping): not sent, and counted."""
    from opamp_fast.fleet.commands import Commands
    from opamp_fast.storage import command_queries as cmq

    commands = Commands(db=None, fleet=None, instance_id="here")  # type: ignore[arg-type]
    exporter = exporter_for(make_registry())
    exporter.commands = commands
    dropped = "opamp_fast_routed_custom_messages_dropped_total"
    assert value(scrape(exporter), dropped) == 0
    commands.on_notice({"kind": cmq.CUSTOM_MESSAGE_NOTICE, "id": 7})
    commands.on_notice({"kind": cmq.CUSTOM_MESSAGE_NOTICE, "id": "x"})  # malformed: not a drop
    assert value(scrape(exporter), dropped) == 1
    assert commands.routed_dropped_total == 1


class FakeDatabase:
    """Stands in for Postgres under the writer: ``run`` answers (rows, CPU seconds) or raises."""

    def __init__(self) -> None:
        self.rows = 7
        self.fail = False

    async def run(self, fn: Callable[..., Any]) -> tuple[int, float]:
        await anyio.lowlevel.checkpoint()
        if self.fail:
            raise psycopg.OperationalError("database is down")
        return self.rows, 0.002

    run_writer = run


async def test_writer_metrics_and_flush_histograms() -> None:
    db = FakeDatabase()
    writer = BatchWriter(
        db,  # type: ignore[arg-type]
        instance_id="test",
        flush_interval_s=0.01,
        queue_max=64,
        retry_initial_s=0.01,
        retry_max_s=0.02,
        drain_timeout_s=0.2,
    )
    clock = Clock(WALL0)
    exporter = exporter_for(make_registry(), clock, writer=writer, writer_queue_max=64)
    async with anyio.create_task_group() as nursery:
        await nursery.start(writer.run)
        writer.connected(b"w" * 16, at=WALL0, remote_addr="x", transport="ws")
        await writer.flush()
        db.rows = 20_000
        writer.connected(b"v" * 16, at=WALL0, remote_addr="x", transport="ws")
        await writer.flush()
        samples = scrape(exporter)
        assert value(samples, "opamp_fast_writer_flushes_total") == 2
        assert value(samples, "opamp_fast_writer_rows_written_total") == 20_007
        assert value(samples, "opamp_fast_writer_flush_rows_count") == 2
        assert value(samples, "opamp_fast_writer_flush_rows_bucket", le="10.0") == 1
        assert value(samples, "opamp_fast_writer_flush_rows_bucket", le="10000.0") == 1
        assert value(samples, "opamp_fast_writer_flush_rows_bucket", le="50000.0") == 2
        assert value(samples, "opamp_fast_writer_flush_rows_sum") == 20_007
        assert value(samples, "opamp_fast_writer_flush_duration_seconds_count") == 2
        assert value(samples, "opamp_fast_writer_flush_cpu_seconds_bucket", le="0.002") == 2
        assert value(samples, "opamp_fast_writer_pending_agents") == 0
        assert value(samples, "opamp_fast_writer_queue_capacity") == 64
        assert value(samples, "opamp_fast_db_errors_total") == 0
        assert value(samples, "opamp_fast_db_backlog_seconds") == 0

        db.fail = True
        writer.connected(b"u" * 16, at=WALL0, remote_addr="x", transport="ws")
        with anyio.fail_after(5):
            while writer.statistics().db_errors_total < 1:
                await anyio.sleep(0.005)
        backlog_since = writer.statistics().backlog_since
        assert backlog_since is not None
        clock.now = backlog_since + 12.5
        samples = scrape(exporter)
        assert value(samples, "opamp_fast_db_errors_total") >= 1
        assert value(samples, "opamp_fast_db_backlog_seconds") == 12.5
        assert value(samples, "opamp_fast_writer_pending_agents") == 1
        assert value(samples, "opamp_fast_writer_pending_sessions") == 1
        assert value(samples, "opamp_fast_writer_flushes_total") == 2  # failures are not flushes
        db.fail = False
        writer.close()


def test_bucket_counts_are_le_buckets() -> None:
    buckets = BucketCounts((1.0, 10.0))
    for v in (0.5, 1.0, 1.5, 10.0, 11.0):
        buckets.observe(v)
    assert buckets.counts == [2, 2, 1]
    assert buckets.sum == 24.0
    with pytest.raises(ValueError):
        BucketCounts((2.0, 1.0))


def test_registries_are_injected_never_the_global_default() -> None:
    one, two = make_registry(), make_registry()
    go_online(one, os.urandom(16), at=0)
    first, second = exporter_for(one), exporter_for(two)
    assert first.registry is not second.registry
    assert first.registry is not REGISTRY
    assert value(scrape(first), "agents_by_status", status="online") == 1
    assert value(scrape(second), "agents_by_status", status="online") == 0
    assert REGISTRY.get_sample_value("agents_by_status", {"status": "online"}) is None
    given = CollectorRegistry()
    assert exporter_for(one, collector_registry=given).registry is given


def test_a_second_collector_with_the_same_names_is_refused() -> None:
    given = CollectorRegistry()
    exporter_for(make_registry(), collector_registry=given)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        exporter_for(make_registry(), collector_registry=given)


def test_process_metrics_and_info_series() -> None:
    exporter = MetricsExporter(
        registry=make_registry(), heartbeat_interval_s=INTERVAL, agent_series_max=1, version="9.9"
    )
    samples = scrape(exporter)
    assert value(samples, "process_resident_memory_bytes") > 0
    (labels,) = series(samples, "opamp_fast_heartbeat_wheel_info")
    assert dict(labels)["implementation"] in ("cython", "python")
    assert value(samples, "opamp_fast_build_info", version="9.9") == 1


async def test_scrape_in_a_worker_thread_snapshots_on_the_loop() -> None:
    """``render`` formats in a thread, but the registry is only ever read on the loop thread."""
    loop_thread = threading.get_ident()
    registry = make_registry()
    go_online(registry, os.urandom(16), at=0)
    exporter = exporter_for(registry)
    threads: list[int] = []
    real_snapshot = exporter.snapshot

    def snapshot() -> Any:
        threads.append(threading.get_ident())
        return real_snapshot()

    exporter.snapshot = snapshot  # type: ignore[method-assign]
    body = await exporter.render()
    assert b'agents_by_status{status="online"} 1.0' in body
    assert threads == [loop_thread]


def test_every_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for name in METRICS:
        assert f"`{name}" in doc, name


def _referenced_metrics(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:opamp_fast_|agents?_|process_)[a-z0-9_]+)", expr))
    names.discard("agent_id")  # a label, not a metric
    return {n for n in names if not n.endswith(("_bucket", "_sum", "_count"))} | {
        n.rsplit("_", 1)[0] for n in names if n.endswith(("_bucket", "_sum", "_count"))
    }


def _exported_families() -> set[str]:
    registry = make_registry()
    go_online(registry, os.urandom(16), at=0)
    exporter = MetricsExporter(registry=registry, heartbeat_interval_s=INTERVAL, agent_series_max=9)
    names = set()
    for family in exporter.registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        names.update(s.name for s in family.samples)
    return names


def test_alert_rules_and_dashboard_use_only_exported_metrics() -> None:
    yaml = pytest.importorskip("yaml")  # PyYAML: via openapi-spec-validator in the test extra
    exported = _exported_families()
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "opamp-fast-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 10
    used = set().union(*(_referenced_metrics(e) for e in exprs))
    assert used - exported == set()
    for seed in ("agents_by_status", "agent_status_changes_total", "agents_stale"):
        assert seed in used
