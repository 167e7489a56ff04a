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
from .net import RECV_BYTES, Closed, End, Storm, connection, retry_after
from .run import Simulation


async def ws_connection(sim: Simulation, agent: Agent) -> None:
    """One WebSocket session, from TCP connect to close. Raises Closed/Storm/End."""
    target = sim.target
    async with connection(
        target,
        sim.config.connect_timeout_s,
        sim.local_address(),
        kind="ws",
        timeout_kind="handshake_timeout",  # the session itself waits with move_on_at
        protocol_errors=(
            wsproto.utilities.LocalProtocolError,
            wsproto.utilities.RemoteProtocolError,
        ),
    ) as stream:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        request = wse.Request(
            host=target.host_header, target=target.path, extra_headers=sim.headers
        )
        await stream.send_all(ws.send(request))
        with trio.fail_after(sim.config.connect_timeout_s):
            await _handshake(stream, ws)
        await _Session(sim, agent, stream, ws).run()


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


class _Session:
    """One WebSocket session's state between reads. It ends by raising Closed, Storm, or End
    once the goodbye is said."""

    __slots__ = (
        "agent", "buffer", "next_beat", "online", "send_now", "sent_at", "sim", "storm_at",
        "stream", "ws",
    )  # fmt: skip

    def __init__(
        self, sim: Simulation, agent: Agent, stream: trio.SocketStream, ws: wsproto.WSConnection
    ) -> None:
        self.sim = sim
        self.agent = agent
        self.stream = stream
        self.ws = ws
        # When the message awaiting its answer left; None while none does (one at a time).
        self.sent_at: float | None = None
        self.next_beat = math.inf
        self.online = False
        self.buffer: list[bytes] = []  # the fragments of a server message still arriving
        self.send_now = True  # the first message of every session: full state
        agent.full_state_due = True
        # Only sessions open at the storm instant take part (once per agent).
        now = trio.current_time()
        self.storm_at = sim.storm_at if not agent.stormed and now < sim.storm_at else math.inf

    async def run(self) -> None:
        try:
            while True:
                if self.send_now and self.sent_at is None:
                    await self._send()
                data: bytes | None = None
                with trio.move_on_at(self._wake_at()):
                    data = await self.stream.receive_some(RECV_BYTES)
                now = trio.current_time()
                if data is None:
                    await self._deadline(now)
                elif not data:
                    raise Closed("ws_eof")
                else:
                    self.ws.receive_data(data)
                    await self._events(now)
        finally:
            if self.online:
                self.sim.stats.connected -= 1

    async def _send(self) -> None:
        stats = self.sim.stats
        payload = self.agent.next_message(stats)
        self.sent_at = trio.current_time()
        await self.stream.send_all(self.ws.send(wse.Message(data=encode_ws_frame(payload))))
        stats.messages_sent += 1
        self.send_now = False

    def _wake_at(self) -> float:
        """The answer's timeout while a request is out, else the next heartbeat; the end of the
        run and the storm cut either short."""
        sim = self.sim
        if self.sent_at is None:
            return min(self.next_beat, sim.end_at, self.storm_at)
        return min(self.sent_at + sim.config.response_timeout_s, sim.end_at, self.storm_at)

    async def _deadline(self, now: float) -> None:
        """The deadline of :meth:`_wake_at` passed: end, storm, timeout or the next heartbeat."""
        sim, agent, stats = self.sim, self.agent, self.sim.stats
        if now >= sim.end_at:
            await self._goodbye()
            raise End
        if now >= self.storm_at:
            agent.stormed = True
            stats.storm_dropped += self.online
            raise Storm
        if self.sent_at is not None:
            raise Closed("response_timeout")
        agent_beat = sim.heartbeat_s(agent)
        if self.online and sim.churns(agent_beat):
            stats.churned += 1
            raise Storm  # drop without a goodbye, reconnect at once
        self.next_beat = max(self.next_beat + agent_beat, now)
        self.send_now = True

    async def _events(self, now: float) -> None:
        ws = self.ws
        for event in ws.events():
            if isinstance(event, wse.BytesMessage):
                self.buffer.append(bytes(event.data))
                if event.message_finished:
                    frame = b"".join(self.buffer)
                    self.buffer.clear()
                    self._answer(frame, now)
            elif isinstance(event, wse.Ping):
                await self.stream.send_all(ws.send(event.response()))
            elif isinstance(event, wse.CloseConnection):
                if ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                    await self.stream.send_all(ws.send(event.response()))
                raise Closed(f"server_close_{event.code}")
            elif isinstance(event, wse.TextMessage):
                raise Closed("text_frame")

    def _answer(self, frame: bytes, now: float) -> None:
        """A whole server message: the round trip ends, the agent reacts, and the first one of
        the session puts the agent online."""
        sim, stats = self.sim, self.sim.stats
        stats.messages_received += 1
        try:
            resp = pb.ServerToAgent.FromString(decode_ws_payload(frame))
        except Exception:  # DecodeError, RemoteProtocolError: count and drop
            raise Closed("decode_error") from None
        if self.sent_at is not None:
            stats.rtt(now - self.sent_at)
            self.sent_at = None
        if self.agent.handle(resp, stats, sim.config):
            self.send_now = True
        if not self.online:
            self.online = True
            self.next_beat = sim.went_online(self.agent, now)

    async def _goodbye(self) -> None:
        """The answer still in flight, agent_disconnect (answered), then a close handshake, all
        bounded in time."""
        stream, ws, stats = self.stream, self.ws, self.sim.stats
        with trio.move_on_after(self.sim.config.close_timeout_s) as scope:
            if self.sent_at is not None:
                await self._wait(wse.BytesMessage)
            if self.online:
                await stream.send_all(
                    ws.send(wse.Message(data=encode_ws_frame(self.agent.goodbye())))
                )
                stats.messages_sent += 1
                stats.goodbyes_sent += 1
                await self._wait(wse.BytesMessage)
            await stream.send_all(ws.send(wse.CloseConnection(code=1000)))
            await self._wait(wse.CloseConnection)
        if scope.cancelled_caught:
            stats.error("close_timeout")

    async def _wait(self, kind: type) -> None:
        """Read until an event of ``kind`` (or EOF), counting the answers that arrive."""
        while True:
            data = await self.stream.receive_some(RECV_BYTES)
            if not data:
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, wse.BytesMessage):
                    self.sim.stats.messages_received += 1
                if isinstance(event, kind):
                    return
