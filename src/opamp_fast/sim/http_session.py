"""One plain-HTTP agent's keep-alive connection: ``h11`` over a raw ``trio`` stream, one POSTed
``AgentToServer`` and one ``ServerToAgent`` per poll, until it fails or the run ends."""

from __future__ import annotations

import h11
import trio

from ..protocol import pb
from .agent import Agent
from .net import RECV_BYTES, Closed, End, connection, retry_after
from .run import Simulation


async def http_connection(sim: Simulation, agent: Agent) -> None:
    """One keep-alive HTTP connection carrying polls until it fails or the run ends."""
    async with connection(
        sim.target,
        sim.config.connect_timeout_s,
        sim.local_address(),
        kind="http",
        timeout_kind="response_timeout",
        protocol_errors=(h11.ProtocolError,),
    ) as stream:
        await _polls(sim, agent, stream, h11.Connection(h11.CLIENT))


async def _polls(
    sim: Simulation, agent: Agent, stream: trio.SocketStream, conn: h11.Connection
) -> None:
    stats = sim.stats
    online = False
    send_now = True
    agent.full_state_due = agent.full_state_due or agent.seq == 0
    next_poll = trio.current_time()
    try:
        while True:
            now = trio.current_time()
            if now >= sim.end_at:
                if online:
                    with trio.move_on_after(sim.config.close_timeout_s):
                        sim.stats.goodbyes_sent += 1
                        await _exchange(sim, stream, conn, agent.goodbye())
                raise End
            if not send_now and now < next_poll:
                await trio.sleep_until(min(next_poll, sim.end_at))
                continue
            payload = agent.next_message(stats)
            with trio.fail_after(sim.config.response_timeout_s):
                resp, sent_at = await _exchange(sim, stream, conn, payload)
            now = trio.current_time()
            stats.rtt(now - sent_at)
            send_now = agent.handle(resp, stats, sim.config)
            if not online:
                online = True
                next_poll = sim.went_online(agent, now)
            elif not send_now:
                next_poll = max(next_poll + sim.heartbeat_s(agent), now)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                raise Closed("")  # the server ends keep-alive: reconnect, not an error
            conn.start_next_cycle()
    finally:
        if online:
            stats.connected -= 1


async def _exchange(
    sim: Simulation, stream: trio.SocketStream, conn: h11.Connection, payload: bytes
) -> tuple[pb.ServerToAgent, float]:
    target = sim.target
    headers = [
        (b"Host", target.host_header.encode()),
        (b"Content-Type", b"application/x-protobuf"),
        (b"Content-Length", str(len(payload)).encode()),
        *sim.headers,
    ]
    request = conn.send(h11.Request(method="POST", target=target.path, headers=headers))
    body = conn.send(h11.Data(data=payload))
    end = conn.send(h11.EndOfMessage())
    sent_at = trio.current_time()
    await stream.send_all(b"".join((request or b"", body or b"", end or b"")))
    sim.stats.messages_sent += 1
    status = 0
    retry: float | None = None
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECV_BYTES)
            conn.receive_data(data)
            if not data and conn.their_state is not h11.DONE:
                raise Closed("http_eof")
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            retry = retry_after(event.headers)
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise Closed("http_eof")
    sim.stats.messages_received += 1
    if status != 200:
        raise Closed(f"http_status_{status}", retry)
    try:
        return pb.ServerToAgent.FromString(b"".join(chunks)), sent_at
    except Exception:  # DecodeError
        raise Closed("decode_error") from None
