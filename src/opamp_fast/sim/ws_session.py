"""One WebSocket session of one agent, from TCP connect to close: a raw ``trio`` stream and the
sans-IO ``wsproto`` (trio-websocket spends a nursery, two tasks and a memory channel per
connection, too much at tens of thousands of agents on the server's machine).

The agent waits for "next heartbeat, end of run or storm" and for server data in one
``receive_some`` under a ``move_on_at`` deadline: no timer task, and trio's socket receive is
cancel-safe, so no byte is lost when the deadline wins."""

from __future__ import annotations

import math

import trio
import wsproto
import wsproto.events as wse
import wsproto.utilities

from ..protocol import decode_ws_payload, encode_ws_frame, pb
from .agent import Agent
from .net import (
    NETWORK_ERRORS,
    RECV_BYTES,
    Closed,
    End,
    Storm,
    abort,
    open_stream,
    os_error_kind,
    retry_after,
)
from .run import Simulation


async def ws_connection(sim: Simulation, agent: Agent) -> None:
    """One WebSocket session, from TCP connect to close. Raises Closed/Storm/End."""
    stream = await open_stream(sim.target, sim.config.connect_timeout_s, sim.local_address())
    try:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        target = sim.target
        try:
            request = wse.Request(
                host=target.host_header, target=target.path, extra_headers=sim.headers
            )
            await stream.send_all(ws.send(request))
            with trio.fail_after(sim.config.connect_timeout_s):
                await _handshake(stream, ws)
            await _session(sim, agent, stream, ws)
        except trio.TooSlowError:
            raise Closed("handshake_timeout") from None
        except NETWORK_ERRORS as exc:
            raise Closed(os_error_kind("ws", exc)) from None
        except (wsproto.utilities.LocalProtocolError, wsproto.utilities.RemoteProtocolError):
            raise Closed("ws_protocol_error") from None
    finally:
        await abort(stream)


async def _handshake(stream: trio.SocketStream, ws: wsproto.WSConnection) -> None:
    while True:
        data = await stream.receive_some(RECV_BYTES)
        if not data:
            raise Closed("ws_handshake_eof")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, wse.AcceptConnection):
                return
            if isinstance(event, wse.RejectConnection):
                retry = retry_after(event.headers)
                raise Closed(f"ws_rejected_{event.status_code}", retry)


async def _session(
    sim: Simulation, agent: Agent, stream: trio.SocketStream, ws: wsproto.WSConnection
) -> None:
    stats = sim.stats
    now = trio.current_time()
    sent_at: float | None = None  # when the outstanding request left; None: nothing pending
    next_beat = math.inf
    online = False
    buffer: list[bytes] = []
    send_now = True  # the first message of every session: full state
    agent.full_state_due = True
    # Only sessions open at the storm instant take part (once per agent).
    storm_at = sim.storm_at if not agent.stormed and now < sim.storm_at else math.inf
    try:
        while True:
            if send_now and sent_at is None:
                payload = agent.next_message(stats)
                sent_at = trio.current_time()
                await stream.send_all(ws.send(wse.Message(data=encode_ws_frame(payload))))
                stats.messages_sent += 1
                send_now = False
            if sent_at is None:
                wake = min(next_beat, sim.end_at, storm_at)
            else:
                wake = min(sent_at + sim.config.response_timeout_s, sim.end_at, storm_at)
            data: bytes | None = None
            with trio.move_on_at(wake):
                data = await stream.receive_some(RECV_BYTES)
            now = trio.current_time()
            if data is None:  # a deadline passed
                if now >= sim.end_at:
                    await _goodbye(sim, agent, stream, ws, online, sent_at is not None)
                    raise End
                if now >= storm_at:
                    agent.stormed = True
                    stats.storm_dropped += online
                    raise Storm
                if sent_at is not None:
                    raise Closed("response_timeout")
                agent_beat = sim.heartbeat_s(agent)
                if online and sim.churns(agent_beat):
                    stats.churned += 1
                    raise Storm  # drop without a goodbye, reconnect at once
                next_beat = max(next_beat + agent_beat, now)
                send_now = True
                continue
            if not data:
                raise Closed("ws_eof")
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
                        raise Closed("decode_error") from None
                    if sent_at is not None:
                        stats.rtt(now - sent_at)
                        sent_at = None
                    if agent.handle(resp, stats, sim.config):
                        send_now = True
                    if not online:
                        online = True
                        next_beat = sim.went_online(agent, now)
                elif isinstance(event, wse.Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, wse.CloseConnection):
                    if ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        await stream.send_all(ws.send(event.response()))
                    raise Closed(f"server_close_{event.code}")
                elif isinstance(event, wse.TextMessage):
                    raise Closed("text_frame")
    finally:
        if online:
            stats.connected -= 1


async def _goodbye(
    sim: Simulation,
    agent: Agent,
    stream: trio.SocketStream,
    ws: wsproto.WSConnection,
    say_bye: bool,
    pending: bool,
) -> None:
    """The answer still in flight, agent_disconnect (answered), then a close handshake, all
    bounded in time."""
    with trio.move_on_after(sim.config.close_timeout_s) as scope:
        if pending:
            await _wait(sim, stream, ws, wse.BytesMessage)
        if say_bye:
            await stream.send_all(ws.send(wse.Message(data=encode_ws_frame(agent.goodbye()))))
            sim.stats.messages_sent += 1
            sim.stats.goodbyes_sent += 1
            await _wait(sim, stream, ws, wse.BytesMessage)
        await stream.send_all(ws.send(wse.CloseConnection(code=1000)))
        await _wait(sim, stream, ws, wse.CloseConnection)
    if scope.cancelled_caught:
        sim.stats.error("close_timeout")


async def _wait(
    sim: Simulation, stream: trio.SocketStream, ws: wsproto.WSConnection, kind: type
) -> None:
    while True:
        data = await stream.receive_some(RECV_BYTES)
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, wse.BytesMessage):
                sim.stats.messages_received += 1
            if isinstance(event, kind):
                return
