"""The server's OpAMP logic: the ``AgentHandler`` that ties core, registry and persistence.

Per message: decode (transport) -> registry lookup -> sans-IO core -> liveness bookkeeping ->
coalesced persistence calls. Every callback is synchronous and never blocks: ``seen`` is a dict
write and status changes are merged into the batch writer's pending batch; admission control
refuses new connections while the writer is overloaded (database away too long).

The heartbeat fast path (``on_heartbeat``): a WebSocket heartbeat of the agent bound to the
connection, with nothing to change or offer (``protocol.process_heartbeat``), costs a registry
refresh, a ``seen`` and a cached reply; anything else takes the full ``on_message``.

Liveness policy (one transition each, see ``registry``):
* WebSocket: the first message binds the agent to the connection; socket close -> offline
  ("connection closed"); ``agent_disconnect`` -> offline at once.
* Plain HTTP: the first poll while offline opens a session; later polls refresh it; offline on
  ``agent_disconnect`` or heartbeat timeout (k x the poll interval).
* Duplicate uid on two live WebSockets: the newer connection takes over (the older one is most
  likely half-open after a network blip) and the older is closed. A second takeover within one
  heartbeat interval means two live agents share the uid (cloned VM): the newcomer is answered
  with ``agent_identification.new_instance_uid`` instead.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.abc import TaskStatus

from .handlers import ACCEPT, ConnectingRequest, ConnectionResponse
from .protocol import (
    AgentDisconnected,
    InstanceUidReassigned,
    MessageMerged,
    ProtocolError,
    ServerPolicy,
    Session,
    StatusChanged,
    Transport,
    build_push,
    normalize_instance_uid,
    pb,
    process_heartbeat,
    process_message,
)
from .registry import AgentRecord, AgentStatus, Registry, StatusTransition
from .storage.rows import AgentSnapshot

if TYPE_CHECKING:
    from .handlers import Connection

logger = logging.getLogger(__name__)

CLOSE_SUPERSEDED = 4000  # application close code: a newer connection took over this agent
CLOSE_TIMEOUT = 4001  # application close code: no message within the heartbeat timeout
CLOSE_GOING_AWAY = 1001


class AgentSink(Protocol):
    """Where agent changes go (the batch writer). Synchronous and O(1): never blocks."""

    def connected(
        self,
        uid: bytes,
        *,
        at: float,
        remote_addr: str,
        transport: str,
        snapshot: AgentSnapshot | None = None,
    ) -> None: ...

    def disconnected(self, uid: bytes, *, at: float, reason: str) -> None: ...

    def status(self, uid: bytes, snapshot: AgentSnapshot) -> None: ...

    def seen(self, uid: bytes, at: float) -> None: ...

    @property
    def overloaded(self) -> bool: ...


def new_instance_uid() -> bytes:
    """A UUIDv7 (48-bit ms timestamp, version/variant bits, random): the spec's recommendation."""
    ms = time.time_ns() // 1_000_000
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return bytes(raw)


class FleetHandler:
    """Implements ``AgentHandler`` for the whole fleet."""

    def __init__(
        self,
        *,
        registry: Registry,
        sink: AgentSink,
        policy: ServerPolicy,
        agent_auth_token: str | None = None,
        require_client_cert: bool = False,
        max_connections: int = 200_000,
        wall_clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.sink = sink
        self.policy = policy
        self.max_connections = max_connections
        self._expected_auth = f"Bearer {agent_auth_token}" if agent_auth_token else None
        self.require_client_cert = require_client_cert
        self._wall = wall_clock
        self._mono = mono_clock
        self._open_connections = 0
        self.heartbeats_total = 0
        self.shutting_down = False
        self.sweeper_lag_s = 0.0

    # -- accept / reject ------------------------------------------------------------------
    def on_connecting(self, request: ConnectingRequest) -> ConnectionResponse:
        if self.shutting_down:
            return ConnectionResponse.reject(503, "server shutting down", (("retry-after", "30"),))
        if self.require_client_cert and not request.tls_peer_cert:
            # TLS verified any certificate presented; agents must present one.
            return ConnectionResponse.reject(401, "a TLS client certificate is required")
        if self._expected_auth is not None:
            given = request.headers.get("authorization", "")
            if not _constant_time_equal(given, self._expected_auth):
                return ConnectionResponse.reject(
                    401, "missing or invalid agent credentials", (("www-authenticate", "Bearer"),)
                )
        if self._open_connections >= self.max_connections:
            # Admission control: shed with 503 + Retry-After (clients that honour it back off;
            # the spec recommends at least 30 s). Counts WebSockets and in-flight HTTP polls.
            return ConnectionResponse.reject(503, "server at capacity", (("retry-after", "30"),))
        if self.sink.overloaded:
            # The database has been away long enough that connection history waiting for it
            # reached its bound: keep serving connected agents, refuse newcomers until it drains.
            return ConnectionResponse.reject(
                503, "database backlog, try again later", (("retry-after", "30"),)
            )
        return ACCEPT

    def on_connected(self, conn: Connection) -> None:
        self._open_connections += 1

    def on_read_message_error(self, conn: Connection, error: ProtocolError) -> None:
        logger.debug("bad message from %s: %s", conn.remote_addr, error)

    # -- messages -------------------------------------------------------------------------
    def on_heartbeat(self, conn: Connection, uid: bytes, seq: int, caps: int) -> bytes | None:
        record: AgentRecord | None = conn.record
        if (
            record is None
            or record.connection is not conn
            or record.state.wire_uid != uid
            or not process_heartbeat(record.state, conn.session, seq, caps)  # type: ignore[arg-type]
        ):
            return None
        wall = self._wall()
        self.registry.refresh(record, mono=self._mono(), wall=wall)
        self.sink.seen(record.uid, wall)
        self.heartbeats_total += 1
        return record.ack

    def on_message(self, conn: Connection, msg: pb.AgentToServer) -> pb.ServerToAgent:
        uid = normalize_instance_uid(msg.instance_uid)
        wall = self._wall()
        mono = self._mono()
        registry = self.registry
        record, _ = registry.ensure(uid, msg.instance_uid)

        duplicate = False
        superseded: Connection | None = None
        if conn.transport is Transport.WS:
            session = conn.session
            assert session is not None
            owner = record.connection
            if conn.record is not record and owner is not None and owner is not conn:
                if (
                    not owner.closed
                    and mono - record.last_takeover_mono < self.policy.heartbeat_interval_s
                ):
                    duplicate = True  # two live agents with one uid: ask the newcomer to change
                else:
                    record.last_takeover_mono = mono
                    superseded = owner
        elif record.online and record.transport is Transport.HTTP and record.session is not None:
            session = record.session
        else:
            session = Session(Transport.HTTP)

        disconnecting = msg.HasField("agent_disconnect")
        reply = process_message(
            record.state,
            session,
            msg,
            policy=self.policy,
            now=wall,
            new_uid=new_instance_uid,
            duplicate=duplicate,
        )

        transitions: list[StatusTransition] = []
        if not duplicate:
            if superseded is not None:
                t = registry.mark_offline(
                    record, wall=wall, reason="superseded by a new connection"
                )
                if t is not None:
                    transitions.append(t)
            if record.session is not session or not record.online:
                if not (disconnecting and not record.online):
                    t = registry.mark_online(
                        record,
                        session=session,
                        connection=conn if conn.transport is Transport.WS else None,
                        transport=conn.transport or Transport.HTTP,
                        remote_addr=conn.remote_addr,
                        heartbeat_interval_s=self.policy.heartbeat_interval_s,
                        mono=mono,
                        wall=wall,
                    )
                    if t is not None:
                        transitions.append(t)
            else:
                registry.refresh(record, mono=mono, wall=wall)
            conn.record = record

        status_changed = False
        for event in reply.events:
            if isinstance(event, MessageMerged):
                self.sink.seen(uid, wall)
                if not event.changed:
                    self.heartbeats_total += 1
            elif isinstance(event, StatusChanged):
                status_changed = True
            elif isinstance(event, AgentDisconnected) and record.connection in (conn, None):
                t = registry.mark_offline(record, wall=wall, reason=event.reason)
                if t is not None:
                    transitions.append(t)
            elif isinstance(event, InstanceUidReassigned):
                logger.info(
                    "duplicate instance uid %s on %s: offered %s",
                    event.old_uid.hex(),
                    conn.remote_addr,
                    event.new_uid.hex(),
                )
            # AgentConnected is not used: liveness is decided above from the registry's view,
            # which also knows about plain-HTTP sessions that span polls.

        self._persist(record, transitions, status_changed)
        if superseded is not None:
            superseded.close(CLOSE_SUPERSEDED, "superseded by a newer connection")
        return reply.response

    def on_connection_close(self, conn: Connection) -> None:
        self._open_connections -= 1
        if conn.transport is not Transport.WS:
            return  # an HTTP agent lives across polls; only timeouts or agent_disconnect end it
        record: AgentRecord | None = conn.record
        if record is None or record.connection is not conn:
            return
        t = self.registry.mark_offline(record, wall=self._wall(), reason="connection closed")
        if t is not None:
            self._persist(record, [t], False)

    # -- server-side actions --------------------------------------------------------------
    def assign_remote_config(self, uid: bytes, files: dict[str, tuple[bytes, str]]) -> bytes:
        """Set the config an agent should run (known or not yet seen) and push it at once to a
        WebSocket agent; a plain-HTTP agent gets it in its next poll response. Returns the hash."""
        record, _ = self.registry.ensure(uid, uid)
        config_hash = record.state.set_remote_config(files)
        self.push(record)
        return config_hash

    def push(self, record: AgentRecord) -> bool:
        """Send whatever is pending for a WebSocket agent now (e.g. a new remote config).

        Plain-HTTP agents get it on their next poll; returns False for them (or when offline).
        """
        conn = record.connection
        if conn is None or record.session is None or not conn.can_push:
            return False
        message = build_push(record.state, record.session, policy=self.policy)
        if message is None:
            return False
        return conn.send(message)

    def sweep(self, mono: float) -> list[StatusTransition]:
        """Advance the wheel; expired agents go offline (persisted) and their WebSockets get a
        close (4001), whose handshake the transport bounds. Returns the transitions."""
        transitions = self.registry.sweep(mono=mono, wall=self._wall())
        for t in transitions:
            self.sink.disconnected(t.record.uid, at=t.at, reason=t.reason or "")
            if t.connection is not None:
                t.connection.close(CLOSE_TIMEOUT, "heartbeat timeout")
        return transitions

    async def run_sweeper(
        self, *, tick_s: float, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """One task advances the wheel every tick: no timer per agent."""
        task_status.started()
        next_tick = self._mono() + tick_s
        while True:
            await anyio.sleep(max(0.0, next_tick - self._mono()))
            now = self._mono()
            self.sweeper_lag_s = max(0.0, now - next_tick)
            next_tick = max(next_tick + tick_s, now)
            self.sweep(now)

    def close_all(self, *, reason: str = "server shutdown") -> int:
        """Shutdown: refuse new connections, mark every online agent offline with ``reason``
        (so history rows close with it, not with "connection closed"), close WebSockets (1001).
        Returns the number of WebSockets asked to close."""
        self.shutting_down = True
        wall = self._wall()
        closing = 0
        for record in self.registry.online_records():
            t = self.registry.mark_offline(record, wall=wall, reason=reason)
            if t is None:
                continue
            self.sink.disconnected(record.uid, at=wall, reason=reason)
            if t.connection is not None:
                t.connection.close(CLOSE_GOING_AWAY, "server shutting down")
                closing += 1
        return closing

    def _persist(
        self, record: AgentRecord, transitions: list[StatusTransition], status_changed: bool
    ) -> None:
        snapshot = None
        if status_changed or any(t.new is AgentStatus.ONLINE for t in transitions):
            snapshot = snapshot_of(record)
        for t in transitions:
            if t.new is AgentStatus.ONLINE:
                self.sink.connected(
                    record.uid,
                    at=t.at,
                    remote_addr=record.remote_addr,
                    transport=(record.transport or Transport.WS).value,
                    snapshot=snapshot,
                )
            else:
                self.sink.disconnected(record.uid, at=t.at, reason=t.reason or "")
        if (
            status_changed
            and snapshot is not None
            and not any(t.new is AgentStatus.ONLINE for t in transitions)
        ):
            self.sink.status(record.uid, snapshot)


def snapshot_of(record: AgentRecord) -> AgentSnapshot:
    """The agent-row fields for persistence: the full merged state, not a delta."""
    state = record.state
    return AgentSnapshot.from_messages(
        capabilities=state.capabilities,
        description=state.description,
        health=state.health,
        effective_config=state.effective_config,
        remote_config_status=state.remote_config_status,
        transport=record.transport.value if record.transport else None,
    )


def _constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
