"""``GET /metrics`` on a live server: real WebSocket and HTTP agents go through a known sequence
(connect, close, heartbeat timeout), then the scrape must show exactly those numbers."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from opamp_fast.observability.metrics import agent_id
from tests.helpers.agents import HTTPAgent, description, open_ws_agent, wait_for

pytestmark = pytest.mark.postgres

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


class Wire:
    """Counts what the agents put on and took off the wire, to compare with the server's."""

    def __init__(self) -> None:
        self.ws_in = self.ws_out = self.ws_bytes_in = self.ws_bytes_out = 0
        self.http_in = self.http_out = self.http_bytes_in = self.http_bytes_out = 0

    async def ws(self, agent: Any, msg: Any) -> Any:
        reply = await agent.request(msg)
        self.ws_in += 1
        self.ws_out += 1
        self.ws_bytes_in += 1 + len(msg.SerializeToString())  # 0x00 header + protobuf
        self.ws_bytes_out += 1 + len(reply.SerializeToString())
        return reply

    async def http(self, agent: HTTPAgent, msg: Any) -> None:
        response = await agent.post(msg)
        assert response.status_code == 200
        self.http_in += 1
        self.http_out += 1
        self.http_bytes_in += len(msg.SerializeToString())
        self.http_bytes_out += int(response.headers["content-length"])  # as sent (maybe gzip)


@pytest.fixture
async def fast_server(start_server: Any, make_settings: Any) -> Any:
    return await start_server(
        make_settings(
            heartbeat_interval_s=1,
            heartbeat_timeout_s=1.0,
            heartbeat_timeout_factor=1.0,
            heartbeat_tick_s=0.1,
        )
    )


async def test_scrape_shows_exactly_what_the_agents_did(fast_server: Any) -> None:
    registry = fast_server.services.registry
    wire = Wire()
    started = time.time()
    heartbeats = 0
    async with (
        open_ws_agent(fast_server.url) as a,
        httpx.AsyncClient(base_url=fast_server.url) as http,
    ):
        await wire.ws(a, a.message(agent_description=description("a")))

        # b: connects, sends one heartbeat, closes its WebSocket.
        async with open_ws_agent(fast_server.url) as b:
            await wire.ws(b, b.message(agent_description=description("b")))
            await wire.ws(b, b.message())
            heartbeats += 1
        await wait_for(lambda: not registry.get(b.uid).online)

        # c: one HTTP poll, then silence until its heartbeat timeout (1 s) takes it offline,
        # while a keeps heartbeating over its WebSocket.
        c = HTTPAgent(http)
        await wire.http(c, c.message(agent_description=description("c")))  # type: ignore[misc]
        with anyio.fail_after(5):
            while registry.get(c.uid).online:
                await wire.ws(a, a.message())
                heartbeats += 1
                await anyio.sleep(0.2)
        assert registry.get(c.uid).disconnect_reason == "heartbeat timeout"

        # One request that is not OpAMP at all.
        bad = await http.post("/v1/opamp", content=b"x", headers={"content-type": "text/plain"})
        assert bad.status_code == 415

        await fast_server.services.writer.flush()
        samples = await scrape(fast_server.url)

    assert value(samples, "agents_by_status", status="online") == 1
    assert value(samples, "agents_by_status", status="offline") == 2
    assert series(samples, "agent_status_changes_total") == {
        frozenset({("from", "new"), ("to", "online")}): 3,
        frozenset({("from", "online"), ("to", "offline")}): 2,
        frozenset({("from", "offline"), ("to", "online")}): 0,
    }
    assert value(samples, "agent_heartbeats_total") == heartbeats
    assert value(samples, "agents_stale") == 0
    assert value(samples, "opamp_fast_agent_heartbeat_timeouts_total") == 1
    assert value(samples, "opamp_fast_agents_online", transport="ws") == 1
    assert value(samples, "opamp_fast_agents_online", transport="http") == 0

    assert value(samples, "agent_connection_duration_seconds_count") == 2
    # c lasted exactly its timeout (1 s: it ends at its deadline, not when the sweep noticed
    # it), b less: both in the 1 s bucket
    assert value(samples, "agent_connection_duration_seconds_bucket", le="1.0") == 2
    assert value(samples, "agent_connection_duration_seconds_bucket", le="10.0") == 2
    assert 1.0 < value(samples, "agent_connection_duration_seconds_sum") <= 2.0

    last_seen = series(samples, "agent_last_seen_seconds")
    assert set(last_seen) == {frozenset({("agent_id", agent_id(x.uid))}) for x in (a, b, c)}
    assert all(started <= v <= time.time() for v in last_seen.values())
    assert value(samples, "opamp_fast_agent_series_suppressed") == 0

    assert value(samples, "opamp_fast_received_messages_total", transport="ws") == wire.ws_in
    assert value(samples, "opamp_fast_sent_messages_total", transport="ws") == wire.ws_out
    assert value(samples, "opamp_fast_received_bytes_total", transport="ws") == wire.ws_bytes_in
    assert value(samples, "opamp_fast_sent_bytes_total", transport="ws") == wire.ws_bytes_out
    assert value(samples, "opamp_fast_received_messages_total", transport="http") == wire.http_in
    assert value(samples, "opamp_fast_sent_messages_total", transport="http") == wire.http_out
    assert value(samples, "opamp_fast_received_bytes_total", transport="http") == (
        wire.http_bytes_in
    )
    assert value(samples, "opamp_fast_sent_bytes_total", transport="http") == wire.http_bytes_out
    assert series(samples, "opamp_fast_protocol_errors_total") == {
        frozenset({("transport", "http"), ("kind", "content_type")}): 1
    }
    assert series(samples, "opamp_fast_rejected_connections_total") == {}
    # a was still connected when scraped; the scrape itself is not an OpAMP connection.
    assert value(samples, "opamp_fast_open_connections", transport="ws") == 1
    assert value(samples, "opamp_fast_open_connections", transport="http") == 0

    # Persistence: everything was flushed before the scrape; histograms agree with the totals.
    flushes = value(samples, "opamp_fast_writer_flushes_total")
    assert flushes >= 1
    assert value(samples, "opamp_fast_writer_flush_rows_count") == flushes
    assert value(samples, "opamp_fast_writer_flush_duration_seconds_count") == flushes
    assert value(samples, "opamp_fast_writer_flush_rows_sum") == value(
        samples, "opamp_fast_writer_rows_written_total"
    )
    assert value(samples, "opamp_fast_writer_pending_agents") == 0
    assert value(samples, "opamp_fast_writer_pending_sessions") == 0
    assert value(samples, "opamp_fast_writer_queue_length") == 0
    assert value(samples, "opamp_fast_db_errors_total") == 0
    assert value(samples, "opamp_fast_db_backlog_seconds") == 0
    assert value(samples, "process_resident_memory_bytes") > 0


async def test_per_agent_series_disappear_above_the_cap(
    start_server: Any, make_settings: Any
) -> None:
    server = await start_server(make_settings(metrics_agent_series_max=2))
    async with httpx.AsyncClient(base_url=server.url) as http:
        agents = [HTTPAgent(http) for _ in range(3)]
        for agent in agents[:2]:
            await agent.full_state()
        samples = await scrape(server.url)
        assert len(series(samples, "agent_last_seen_seconds")) == 2
        assert value(samples, "opamp_fast_agent_series_suppressed") == 0

        await agents[2].full_state()
        samples = await scrape(server.url)
        assert series(samples, "agent_last_seen_seconds") == {}
        assert value(samples, "opamp_fast_agent_series_suppressed") == 1
        assert value(samples, "agents_by_status", status="online") == 3


async def test_two_servers_in_one_process_have_independent_metrics(
    start_server: Any, make_settings: Any, create_database: Any
) -> None:
    first = await start_server(make_settings())
    second = await start_server(make_settings(database_url=create_database(), instance_id="two"))
    assert first.services.metrics.registry is not second.services.metrics.registry
    async with open_ws_agent(first.url) as agent:
        await agent.full_state()
        one, two = await scrape(first.url), await scrape(second.url)
    assert value(one, "agents_by_status", status="online") == 1
    assert value(two, "agents_by_status", status="online") == 0
    assert value(one, "opamp_fast_received_messages_total", transport="ws") == 1
    assert value(two, "opamp_fast_received_messages_total", transport="ws") == 0
    # Nothing leaked into prometheus_client's process-global default registry.
    assert REGISTRY.get_sample_value("agents_by_status", {"status": "online"}) is None
    assert REGISTRY.get_sample_value("opamp_fast_agent_series_suppressed") is None
