"""Registry: liveness transitions, timeouts from the wheel, counters. No sockets, no database."""

from __future__ import annotations

import os

import pytest

from opamp_fast.fleet.registry import AgentStatus, Registry
from opamp_fast.protocol import Session, Transport


def make_registry(**kw: float) -> Registry:
    opts = {"timeout_s": 60.0, "timeout_factor": 2.5, "tick_s": 1.0, "start_mono": 0.0}
    opts.update(kw)
    return Registry(**opts)


def online(
    registry: Registry,
    uid: bytes,
    *,
    mono: float,
    interval: float = 30,
    transport: Transport = Transport.WS,
):
    record, _ = registry.ensure(uid, uid)
    return record, registry.mark_online(
        record,
        session=Session(transport),
        connection=None,
        transport=transport,
        remote_addr="127.0.0.1:1",
        heartbeat_interval_s=interval,
        mono=mono,
        wall=1000 + mono,
    )


def test_timeout_is_max_of_configured_and_factor_times_interval() -> None:
    registry = make_registry(timeout_s=60, timeout_factor=2.5)
    assert registry.agent_timeout_s(10) == 60
    assert registry.agent_timeout_s(30) == 75


def test_a_silent_agent_expires_on_the_tick_after_its_deadline_offline_as_of_it() -> None:
    registry = make_registry(timeout_s=5, timeout_factor=1, tick_s=1.0)
    record, transition = online(registry, os.urandom(16), mono=0.5, interval=1)
    assert transition is not None and transition.new is AgentStatus.ONLINE
    assert registry.sweep(mono=5.4, wall=1005.4) == []
    assert registry.sweep(mono=5.9, wall=1005.9) == []  # deadline 5.5 rounds up to tick 6
    expired = registry.sweep(mono=6.0, wall=1006.0)
    assert [t.record for t in expired] == [record]
    assert expired[0].reason == "heartbeat timeout"
    assert record.status is AgentStatus.OFFLINE
    # offline as of the deadline (last message at 1000.5 + 5 s), not of the sweep that noticed
    assert record.disconnected_at == expired[0].at == 1005.5


def test_refresh_pushes_deadline_out() -> None:
    registry = make_registry(timeout_s=5, timeout_factor=1)
    record, _ = online(registry, os.urandom(16), mono=0, interval=1)
    for t in range(1, 20):
        registry.refresh(record, mono=t, wall=1000 + t)
        assert registry.sweep(mono=t, wall=1000 + t) == []
    assert record.online
    assert record.last_seen == 1019


def test_each_transition_happens_once() -> None:
    registry = make_registry()
    record, first = online(registry, os.urandom(16), mono=0)
    assert first is not None
    _, again = online(registry, record.uid, mono=1)
    assert again is None  # already online: a refresh, not a transition
    assert registry.mark_offline(record, wall=5, reason="agent_disconnect") is not None
    assert registry.mark_offline(record, wall=6, reason="connection closed") is None
    assert record.disconnect_reason == "agent_disconnect"
    assert registry.sweep(mono=10_000, wall=10_000) == []  # cancelled in the wheel
    stats = registry.statistics()
    assert stats.status_changes == {("new", "online"): 1, ("online", "offline"): 1}
    assert (stats.online, stats.offline, stats.known) == (0, 1, 1)


def test_counters_by_transport() -> None:
    registry = make_registry()
    online(registry, os.urandom(16), mono=0, transport=Transport.WS)
    online(registry, os.urandom(16), mono=0, transport=Transport.HTTP)
    record, _ = online(registry, os.urandom(16), mono=0, transport=Transport.HTTP)
    stats = registry.statistics()
    assert (stats.online, stats.online_ws, stats.online_http) == (3, 1, 2)
    registry.mark_offline(record, wall=1, reason="agent_disconnect")
    assert registry.statistics().online_http == 1


def test_forget_reuses_handles_and_refuses_online_agents() -> None:
    registry = make_registry()
    record, _ = online(registry, os.urandom(16), mono=0)
    with pytest.raises(ValueError, match="online"):
        registry.forget(record)
    registry.mark_offline(record, wall=1, reason="agent_disconnect")
    handle = record.handle
    registry.forget(record)
    assert registry.get(record.uid) is None
    other, _ = registry.ensure(os.urandom(16), b"")
    assert other.handle == handle


def test_many_agents_expire_together() -> None:
    registry = make_registry(timeout_s=10, timeout_factor=1)
    records = [online(registry, os.urandom(16), mono=0, interval=1)[0] for _ in range(5000)]
    keep = records[::2]
    for record in keep:
        registry.refresh(record, mono=5, wall=1005)
    expired = registry.sweep(mono=11, wall=1011)
    assert {t.record.uid for t in expired} == {r.uid for r in records[1::2]}
    assert registry.online_count == len(keep)


def test_default_settings_time_agents_out_after_60_seconds() -> None:
    """The seed's monitor times agents out after 60 s: so do the defaults (30 s heartbeat)."""
    from opamp_fast.settings import Settings

    settings = Settings()
    registry = make_registry(
        timeout_s=settings.heartbeat_timeout_s, timeout_factor=settings.heartbeat_timeout_factor
    )
    assert registry.agent_timeout_s(settings.heartbeat_interval_s) == 60.0


def test_offline_agents_are_forgotten_after_retention() -> None:
    registry = make_registry(retention_s=100.0)
    gone, _ = online(registry, b"g" * 16, mono=0)
    back, _ = online(registry, b"b" * 16, mono=0)
    wanted, _ = online(registry, b"w" * 16, mono=0)
    wanted.state.set_remote_config({"x.yaml": (b"a: 1", "text/yaml")})
    for record in (gone, back, wanted):
        registry.mark_offline(record, wall=1000.0, reason="connection closed")
    online(registry, b"b" * 16, mono=50)  # came back before the retention ran out
    assert registry.forget_offline(wall=1099.0) == 0  # not yet
    assert registry.forget_offline(wall=1100.0) == 1
    assert registry.get(b"g" * 16) is None  # offline for the whole retention: forgotten
    assert registry.get(b"b" * 16) is back and back.online
    assert registry.get(b"w" * 16) is wanted  # the server still wants it to run a config
    assert registry.statistics().known == 2
    # An agent that went offline again later is kept until its own retention ends.
    registry.mark_offline(back, wall=1500.0, reason="connection closed")
    assert registry.forget_offline(wall=1550.0) == 0
    assert registry.forget_offline(wall=1600.0) == 1
    assert registry.forgotten_total == 2


@pytest.mark.parametrize(
    ("ending", "after_s", "recorded"),
    [
        ("connection closed", 5.0, "restart requested"),
        ("agent_disconnect", 119.0, "restart requested"),
        ("superseded by a new connection", 1.0, "restart requested"),
        ("heartbeat timeout", 60.0, "restart requested"),
        ("connection closed", 121.0, "connection closed"),  # outside the window
        ("disconnected by an operator", 1.0, "disconnected by an operator"),
        ("server shutdown", 1.0, "server shutdown"),
    ],
)
def test_a_session_ending_soon_after_a_restart_request_ends_with_restart_requested(
    ending: str, after_s: float, recorded: str
) -> None:
    registry = make_registry()
    record, _ = online(registry, os.urandom(16), mono=0.0)
    record.restart_requested_at = 2000.0
    transition = registry.mark_offline(record, wall=2000.0 + after_s, reason=ending)
    assert transition is not None and transition.reason == recorded
    assert record.disconnect_reason == recorded
    assert record.restart_requested_at == 0.0  # it explains one session's end, no more
    online(registry, record.uid, mono=1.0)
    later = registry.mark_offline(record, wall=2001.0 + after_s, reason=ending)
    assert later is not None and later.reason == ending
