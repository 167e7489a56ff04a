"""``GET /api/events`` against live servers, a real Postgres and real agents: event
contents, filters, resume with Last-Event-ID, replay overflow, slow subscribers, auth, and
events from another instance."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from opamp_fast.api import events as api_events
from opamp_fast.auth import load_key_material, mint_token
from opamp_fast.protocol import format_instance_uid
from tests.helpers.agents import HTTPAgent, open_ws_agent, wait_for
from tests.integration.test_metrics import scrape, value
from tests.integration.test_rest_api import run_sql

pytestmark = pytest.mark.postgres


@dataclass
class SSE:
    event: str
    data: dict[str, Any]
    id: str | None
    comments: list[str] = field(default_factory=list)


class Stream:
    """A real SSE client over httpx: parses frames as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []
        self.ended = False

    async def next(self, timeout: float = 5.0) -> SSE:
        fields: dict[str, str] = {}
        data: list[str] = []
        with anyio.fail_after(timeout):
            async for line in self._lines:
                if line == "":
                    if data:
                        return SSE(fields.get("event", "message"), json.loads("\n".join(data)),
                                   fields.get("id"))  # fmt: skip
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value
        self.ended = True
        raise EOFError("stream ended")

    async def until(self, predicate: Any, timeout: float = 5.0) -> SSE:
        with anyio.fail_after(timeout):
            while True:
                event = await self.next(timeout)
                if predicate(event):
                    return event


def token(running: Any, ttl_s: int = 600) -> str:
    return mint_token(load_key_material(running.services.settings), subject="ops", ttl_s=ttl_s)


@asynccontextmanager
async def events(
    running: Any, query: str = "", headers: dict[str, str] | None = None, ttl_s: int = 600
) -> AsyncIterator[Stream]:
    hdrs = {"Authorization": f"Bearer {token(running, ttl_s)}", **(headers or {})}
    async with (
        httpx.AsyncClient(base_url=running.url, timeout=httpx.Timeout(10, read=30)) as client,
        client.stream("GET", "/api/events" + query, headers=hdrs) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


def hub_of(running: Any) -> Any:
    return running.services.events


async def subscribed(running: Any, count: int = 1) -> None:
    await wait_for(lambda: hub_of(running).statistics().subscribers >= count)


async def test_401_without_token_and_400_on_bad_parameters(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.get("/api/events")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": f"Bearer {token(server)}"}
        bad = [
            "?type=agent.exploded",
            "?type=agent.connected,nope",
            "?agent=not-a-uuid",
            "?label=nocolon",
            "?label=%00:x",
            "?last_event_id=garbage",
            "?agent=" + "&agent=".join(["0" * 32] * 101),
        ]
        for query in bad:
            r = await client.get("/api/events" + query, headers=auth)
            assert r.status_code == 400, (query, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json"
            assert r.json()["error"]["code"] in ("invalid_parameter", "invalid_agent_id"), query
        r = await client.get("/api/events", headers={**auth, "Last-Event-ID": "x" * 500})
        assert r.status_code == 400
    assert hub_of(server).statistics().subscribers == 0


async def test_connect_status_and_disconnect_events(server: Any) -> None:
    async with events(server) as stream:
        await subscribed(server)
        async with open_ws_agent(server.url) as agent:
            await agent.full_state("checkout")
            agent_id = format_instance_uid(agent.uid)
            connected = await stream.until(lambda e: e.event == "agent.connected")
            assert connected.data["agent"] == agent_id
            assert connected.data["type"] == "agent.connected"
            assert connected.data["instance"] == "test-instance"
            assert connected.data["data"]["name"] == "checkout"
            assert connected.data["data"]["transport"] == "ws"
            assert connected.data["at"].endswith("Z")
            stream_id, _, seq = connected.id.rpartition("-")  # type: ignore[union-attr]
            assert int(seq) == connected.data["seq"] and stream_id == hub_of(server).stream
            health = agent.message()
            health.health.healthy = False
            health.health.last_error = "exporter down: https://svc:hunter2@otlp.example.com"
            await agent.request(health)
            changed = await stream.until(lambda e: e.event == "agent.health")
            assert changed.data["data"]["healthy"] is False
            assert changed.data["data"]["last_error"] == (
                "exporter down: https://svc:<redacted>@otlp.example.com"
            )
            assert changed.data["seq"] > connected.data["seq"]
        gone = await stream.until(lambda e: e.event == "agent.disconnected")
        assert gone.data["agent"] == agent_id
        assert gone.data["data"]["reason"] == "connection closed"
        async with httpx.AsyncClient(base_url=server.url) as client:  # plain HTTP agent too
            http_agent = HTTPAgent(client)
            await http_agent.full_state("poller")
            polled = await stream.until(lambda e: e.event == "agent.connected")
            assert polled.data["data"]["transport"] == "http"
            assert polled.data["agent"] == format_instance_uid(http_agent.uid)
        # The same story in /metrics: 4 events numbered here, each queued to the one
        # subscriber, none forwarded (no other instance is live).
        samples = await scrape(server.url)
        assert value(samples, "opamp_fast_events_total", origin="local") >= 4
        assert value(samples, "opamp_fast_events_total", origin="peer") == 0
        assert value(samples, "opamp_fast_events_subscribers") == 1
        delivered = value(samples, "opamp_fast_events_delivered_total")
        assert delivered == value(samples, "opamp_fast_events_total", origin="local")
        assert value(samples, "opamp_fast_events_forwarded_total") == 0
        assert value(samples, "opamp_fast_events_dropped_subscribers_total") == 0


async def test_filters_by_type_agent_and_label(server: Any, database_url: str) -> None:
    async with open_ws_agent(server.url) as labelled, open_ws_agent(server.url) as other:
        await labelled.full_state("labelled")
        await other.full_state("other")
        await server.services.writer.flush()
        labelled_id = format_instance_uid(labelled.uid)
        await run_sql(
            database_url,
            lambda c: c.execute(
                'UPDATE agents SET labels = \'{"env": "prod"}\' WHERE uid_text = %s',
                (labelled_id,),
            ),
        )
        by_agent = events(server, f"?agent={labelled.uid.hex()}&type=agent.health")
        by_label = events(server, "?label=env:prod")
        by_type = events(server, "?type=agent.description")
        async with by_agent as s_agent, by_label as s_label, by_type as s_type:
            await subscribed(server, 3)
            for agent, name in ((other, "other-2"), (labelled, "labelled-2")):
                msg = agent.message()
                msg.health.healthy = True
                msg.health.status = name
                await agent.request(msg)
                await agent.full_state(name)  # a new description
            first = await s_agent.next()
            assert (first.event, first.data["agent"]) == ("agent.health", labelled_id)
            assert first.data["data"]["status"] == "labelled-2"
            first = await s_label.next()
            assert (first.event, first.data["agent"]) == ("agent.health", labelled_id)
            second = await s_label.next()
            assert (second.event, second.data["agent"]) == ("agent.description", labelled_id)
            descriptions = [await s_type.next(), await s_type.next()]
            assert [e.data["data"]["name"] for e in descriptions] == ["other-2", "labelled-2"]
            assert {e.event for e in descriptions} == {"agent.description"}


async def test_a_label_filter_takes_in_agents_labelled_after_the_stream_opened(
    server: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_events, "LABEL_REFRESH_S", 0.2)
    async with open_ws_agent(server.url) as first, open_ws_agent(server.url) as later:
        await first.full_state("first")
        await later.full_state("later")
        await server.services.writer.flush()
        ids = {a: format_instance_uid(a.uid) for a in (first, later)}

        async def label(agent: Any) -> None:
            await run_sql(
                database_url,
                lambda c: c.execute(
                    'UPDATE agents SET labels = \'{"env": "prod"}\' WHERE uid_text = %s',
                    (ids[agent],),
                ),
            )

        await label(first)
        async with events(server, "?label=env:prod&type=agent.description") as stream:
            await subscribed(server)
            await label(later)  # labelled after the stream opened: in after the next refresh
            await anyio.sleep(0.6)
            await later.full_state("later-2")
            got = await stream.next()
            assert (got.data["agent"], got.data["data"]["name"]) == (ids[later], "later-2")


async def test_resume_with_last_event_id_has_no_gaps(server: Any) -> None:
    hub = hub_of(server)
    async with events(server) as stream:
        await subscribed(server)
        hub.publish("config.changed", None, {"id": "c1", "action": "created"})
        seen = await stream.next()
    assert seen.data["data"]["id"] == "c1"
    await wait_for(lambda: hub.statistics().subscribers == 0)
    missed = [hub.publish("config.changed", None, {"id": f"m{i}"}) for i in range(5)]
    async with open_ws_agent(server.url) as agent:  # and a real one, while nobody listens
        await agent.full_state("while-away")
        await wait_for(lambda: hub.statistics().last_seq >= missed[-1].seq + 1)
        async with events(server, headers={"Last-Event-ID": seen.id or ""}) as resumed:
            replayed = [await resumed.next() for _ in range(6)]
            assert [e.data["seq"] for e in replayed] == list(
                range(seen.data["seq"] + 1, seen.data["seq"] + 7)
            )
            assert [e.data["data"].get("id") for e in replayed[:5]] == [f"m{i}" for i in range(5)]
            assert replayed[5].event == "agent.connected"
            live = hub.publish("config.changed", None, {"id": "live"})
            after = await resumed.next()
            assert after.data["seq"] == live.seq  # then live, still without a gap
    # The query parameter works too (for clients that cannot set headers).
    async with events(server, f"?last_event_id={replayed[-1].id}") as again:
        first = await again.next()
        assert first.data["seq"] == replayed[-1].data["seq"] + 1


async def test_replay_overflow_and_foreign_ids_get_resync(
    start_server: Any, make_settings: Any
) -> None:
    running = await start_server(make_settings(events_replay_max=5, events_keepalive_s=0.2))
    hub = hub_of(running)
    first = hub.publish("config.changed", None, {"id": "first"})
    last_id = f"{hub.stream}-{first.seq}"
    for i in range(10):
        hub.publish("config.changed", None, {"id": str(i)})
    async with events(running, headers={"Last-Event-ID": last_id}) as stream:
        resync = await stream.next()
        assert resync.event == "resync"
        assert "replay buffer" in resync.data["reason"]
        assert resync.id == hub.last_id  # resuming from here is gap-free
        live = hub.publish("config.changed", None, {"id": "after"})
        assert (await stream.next()).data["seq"] == live.seq
        with anyio.fail_after(5):  # idle: keep-alive comments
            while "keep-alive" not in stream.comments:
                with pytest.raises(TimeoutError):
                    await stream.next(timeout=0.5)
    for foreign in (f"ffffffff-{first.seq}", f"{hub.stream}-999999"):  # restart / other instance
        async with events(running, headers={"Last-Event-ID": foreign}) as stream:
            resync = await stream.next()
            assert resync.event == "resync" and "unknown event id" in resync.data["reason"]


async def test_slow_subscriber_is_dropped_and_agents_are_unaffected(
    start_server: Any, make_settings: Any
) -> None:
    running = await start_server(make_settings(events_queue_max=10))
    hub = hub_of(running)
    async with events(running) as slow, events(running, "?type=agent.connected") as fast:
        await subscribed(running, 2)
        # A burst in one loop iteration (as a reconnect storm looks): the stream task cannot
        # drain in between, so the unfiltered subscriber's queue overflows.
        for i in range(50):
            hub.publish("config.changed", None, {"id": str(i)})
        stats = hub.statistics()
        assert stats.dropped_subscribers_total == 1
        assert stats.subscribers == 1  # the filtered one never queued these
        received = []
        with anyio.fail_after(5):
            while True:
                event = await slow.next()
                received.append(event)
                if event.event == "resync":
                    break
        assert "slow consumer" in received[-1].data["reason"]
        assert len(received) <= 11  # what was written before the queue filled, then the hint
        with pytest.raises(EOFError):
            await slow.next()
        async with open_ws_agent(running.url) as agent:  # agents are served meanwhile
            await agent.full_state("after-drop")
            await agent.heartbeat()
            event = await fast.next()
            assert event.data["agent"] == format_instance_uid(agent.uid)


async def test_stream_ends_when_the_token_expires(server: Any) -> None:
    async with events(server, ttl_s=2) as stream:
        ended = await stream.until(lambda e: e.event == "auth_expired", timeout=6)
        assert ended.data == {"type": "auth_expired"}
        with pytest.raises(EOFError):
            await stream.next()


@pytest.mark.slow
async def test_events_are_fleet_wide_across_instances(
    start_server: Any, make_settings: Any, database_url: str
) -> None:
    servers = []
    for name in ("a", "b"):
        running = await start_server(make_settings(instance_id=name, lease_s=2.0))
        with anyio.fail_after(10):
            await running.services.cluster.listening.wait()
        servers.append(running)
    a, b = servers
    async with events(a) as on_a, events(b) as on_b:
        await subscribed(a)
        await subscribed(b)
        notices_on_a = a.services.cluster.notices_total
        async with open_ws_agent(a.url) as agent:
            await agent.full_state("roamer")
            agent_id = format_instance_uid(agent.uid)
            local = await on_a.until(lambda e: e.event == "agent.connected")
            remote = await on_b.until(lambda e: e.event == "agent.connected")
            assert local.data["agent"] == remote.data["agent"] == agent_id
            assert remote.data["instance"] == "a" and remote.data["data"]["name"] == "roamer"
            assert remote.id and remote.id.startswith(hub_of(b).stream + "-")  # b's numbering
        gone = await on_b.until(lambda e: e.event == "agent.disconnected")
        assert gone.data["agent"] == agent_id and gone.data["instance"] == "a"
        # a's own events came back to a on the fleet channel too: its listener dropped them
        # unparsed, so a's event loop saw no notice at all.
        assert a.services.cluster.notices_total == notices_on_a
        # An instance that stops renewing its lease is reaped by a survivor: both streams say so.
        await run_sql(
            database_url,
            lambda c: c.execute(
                "INSERT INTO server_instances (instance_id, version, started_at, "
                "last_heartbeat_at, lease_s) VALUES ('ghost', 'test', now() - interval '1 hour', "
                "now() - interval '1 hour', 2)"
            ),
        )
        for stream in (on_a, on_b):
            lost = await stream.until(lambda e: e.event == "instance.lost", timeout=15)
            assert lost.data["data"]["instance"] == "ghost"
            assert lost.data["data"]["by"] in ("a", "b")


@pytest.mark.slow
async def test_an_instance_alone_forwards_nothing_until_a_peer_joins(
    start_server: Any, make_settings: Any
) -> None:
    """Alone, an instance neither encodes nor NOTIFYs its events; a newcomer's hello turns
    forwarding on at once (both ways), and the survivor turns it off when the peer stops."""
    solo = await start_server(make_settings(instance_id="solo", lease_s=9.0))
    hub = hub_of(solo)
    await wait_for(lambda: solo.services.cluster.peers == 0 and not hub.forwarding)
    async with open_ws_agent(solo.url) as agent:
        await agent.full_state("alone")
    await wait_for(lambda: solo.services.registry.online_count == 0)
    stats = hub.statistics()
    assert stats.published_total >= 2 and stats.forwarded_total == 0
    assert hub.take_outbox() == []

    peer = await start_server(make_settings(instance_id="peer", lease_s=9.0))
    with anyio.fail_after(10):
        await peer.services.cluster.listening.wait()
    # The hello arrives long before solo's next renewal (every 3 s) would count the peer.
    await wait_for(lambda: hub.forwarding, timeout=1.0)
    await wait_for(lambda: hub_of(peer).forwarding)
    async with events(peer) as on_peer:
        await subscribed(peer)
        async with open_ws_agent(solo.url) as agent:
            await agent.full_state("seen-by-peer")
            forwarded = await on_peer.until(lambda e: e.event == "agent.connected")
            assert forwarded.data["instance"] == "solo"
            assert forwarded.data["data"]["name"] == "seen-by-peer"
    assert hub.statistics().forwarded_total >= 1

    peer.services.shutdown.set()  # a graceful stop: its row says stopped
    await wait_for(lambda: not hub.forwarding, timeout=5.0)
    assert solo.services.cluster.peers == 0
