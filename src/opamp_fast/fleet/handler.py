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
* Duplicate uid (see ``_role``): a newer WebSocket takes over an older one (closed, 4000); a
  second takeover within one heartbeat interval, or a plain-HTTP request for a uid live on a
  WebSocket, is a duplicate: answered with ``agent_identification.new_instance_uid`` against a
  scratch state, so it never touches the owner's state, liveness or rows. Credentials bound to
  the uid (``admission``) prove the agent: it always takes over (a plain-HTTP agent's session
  included), and never speaks for another uid. A connection or session that proved the uid is
  never displaced by one that did not: that claim is answered as a duplicate, counted, and
  logged once per session.
* An agent that adopts a new uid on its WebSocket ends its old record ("instance uid changed")
  and the connection serves the new uid.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskStatus

from ..protocol import (
    AgentDisconnected,
    AgentState,
    CustomMessageReceived,
    Event,
    InstanceUidReassigned,
    MessageMerged,
    NotAccepted,
    ProtocolError,
    RemoteProtocolError,
    ServerPolicy,
    Session,
    StatusChanged,
    Transport,
    add_offers,
    build_push,
    check_bounds,
    format_instance_uid,
    normalize_instance_uid,
    pb,
    process_heartbeat,
    process_message,
    queue_custom_message,
    queue_restart,
)
from ..storage.rows import AgentSnapshot
from ..ticks import sleep_to_tick
from ..transport.handlers import ConnectingRequest, ConnectionResponse
from . import reasons
from .admission import Admission
from .events import (
    announce_changes,
    announce_connected,
    announce_custom_message,
    announce_disconnected,
)
from .registry import AgentRecord, AgentStatus, Registry, StatusTransition

if TYPE_CHECKING:
    from ..transport.handlers import Connection
    from .events import EventHub

logger = logging.getLogger(__name__)

#: Custom messages one session may hold for its next polls (plain HTTP; WebSocket agents get
#: theirs at once): beyond it a send is refused (``too_many_pending``).
MAX_PENDING_CUSTOM_MESSAGES = 16


class _Role(enum.Enum):
    OWNER = "owner"  # may speak for the agent (possibly taking it over from another socket)
    DUPLICATE = "duplicate"  # another live connection owns the uid: answered, never merged
    REFUSED = "refused"  # a connection that proved the uid owns it: answered as a duplicate


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

    def custom_message(
        self, uid: bytes, *, at: float, capability: str, type: str, data: bytes
    ) -> None: ...

    @property
    def overloaded(self) -> bool: ...


class SettingsHooks(Protocol):
    """Connection settings (``connection_settings.service``): certificate requests and the
    statuses agents report. Synchronous and O(1) on the event loop."""

    def check_request(
        self, uid: bytes, capabilities: int, request: pb.ConnectionSettingsRequest
    ) -> object | None:
        """A request worth handling, None to ignore it; raises RemoteProtocolError to refuse
        the message (before anything of it is merged)."""

    def submit(self, record: AgentRecord, request: Any) -> None: ...

    def on_status(self, uid: bytes, status: pb.ConnectionSettingsStatus) -> None: ...


def new_instance_uid() -> bytes:
    """A UUIDv7 (48-bit ms timestamp, version/variant bits, random): the spec's recommendation."""
    ms = time.time_ns() // 1_000_000
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return bytes(raw)


def _log_new_uid(event: InstanceUidReassigned, remote_addr: str, why: str) -> None:
    logger.info(
        "instance uid %s on %s %s: offered %s",
        event.old_uid.hex(),
        remote_addr,
        why,
        event.new_uid.hex(),
    )


class FleetHandler:
    """Implements ``AgentHandler`` for the whole fleet. Admission (credentials, capacity,
    shedding) is delegated to :class:`~opamp_fast.fleet.admission.Admission`."""

    def __init__(
        self,
        *,
        registry: Registry,
        sink: AgentSink,
        policy: ServerPolicy,
        admission: Admission | None = None,
        events: EventHub | None = None,
        wall_clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.sink = sink
        self.policy = policy
        self.admission = admission if admission is not None else Admission()
        self.events = events  # fleet events for /api/events; None: not announced
        self._wall = wall_clock
        self._mono = mono_clock
        self.heartbeats_total = 0
        self.duplicates_total = 0  # messages answered as a duplicate (never merged)
        # of which unproven claims on a uid held by a connection that proved it (``_role``)
        self.claims_refused_total = 0
        self.sweeper_lag_s = 0.0
        # Packages (``packages.registry``): a record new to this instance gets the
        # offer its agent should have; reported PackageStatuses go to their writer.
        self.on_new_record: Callable[[AgentRecord], None] | None = None
        self.on_package_statuses: Callable[[bytes, pb.PackageStatuses], None] | None = None
        self.package_offers_sent_total = 0  # messages that carried packages_available
        self.restarts_total = 0  # Restart commands sent or held for a poll
        self.custom_messages_sent_total = 0  # custom messages to agents, sent or held
        self.custom_messages_received_total = 0
        # Remote configuration (``config_service``): resolves the config an agent should
        # run when it comes online or its description changes; True when that changed.
        self.assigner: Callable[[AgentRecord], bool] | None = None
        # Connection settings: certificate requests, reported statuses.
        self.connection_settings: SettingsHooks | None = None

    @property
    def shutting_down(self) -> bool:
        return self.admission.shutting_down

    # -- accept / reject ------------------------------------------------------------------
    def on_connecting(self, request: ConnectingRequest) -> ConnectionResponse:
        return self.admission.decide(request)

    def on_connected(self, conn: Connection) -> None:
        admission = self.admission
        admission.open_connections += 1
        if conn.transport is Transport.WS:
            admission.handshakes += 1  # until its first message is answered (or it closes)

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
        check_bounds(msg, self.policy)  # before anything is created or changed for it
        identity = conn.identity
        if identity is not None and uid != identity:
            raise RemoteProtocolError(
                f"this connection's credentials are bound to instance uid "
                f"{format_instance_uid(identity)}, not {format_instance_uid(uid)}",
                kind="identity",
            )
        settings = self.connection_settings
        request = None
        if settings is not None and msg.HasField("connection_settings_request"):
            request = settings.check_request(uid, msg.capabilities, msg.connection_settings_request)
        wall = self._wall()
        mono = self._mono()
        bound: AgentRecord | None = conn.record
        if bound is not None and bound.uid != uid:
            # The agent adopted a new uid on this socket (after agent_identification): the old
            # record ends here, the connection serves the new uid from now on.
            if bound.connection is conn:
                t = self.registry.mark_offline(bound, wall=wall, reason=reasons.UID_CHANGED)
                if t is not None:
                    self._persist(bound, [t])
            conn.record = None
        record, created = self.registry.ensure(uid, msg.instance_uid)
        if created and self.on_new_record is not None:
            self.on_new_record(record)
        role, superseded = self._role(conn, record, mono)
        if role is not _Role.OWNER:
            return self._answer_duplicate(conn, record, msg, wall, refused=role is _Role.REFUSED)
        # A connection that proves the uid ends a session that did not (a new session starts).
        replacing = superseded is not None or (
            identity is not None and record.online and not record.proven
        )
        session = self._session(conn, record, fresh=replacing)
        reply = process_message(
            record.state,
            session,
            msg,
            policy=self.policy,
            now=wall,
            new_uid=new_instance_uid,
            allow_new_uid=identity is None,
        )
        disconnecting = msg.HasField("agent_disconnect")
        transitions = self._bind(conn, record, session, replacing, disconnecting, mono, wall)
        if conn.record is None and conn.transport is Transport.WS:
            self.admission.handshakes -= 1  # its first message is answered
            self.admission.pace.admitted()
        conn.record = record
        status_changed = self._apply_events(conn, record, reply.events, transitions, wall)
        went_online = self._persist(record, transitions, status_changed)
        self._after_merge(
            record, session, reply.response, status_changed, went_online, disconnecting
        )
        if request is not None and record.online:
            settings.submit(record, request)  # type: ignore[union-attr]
        if created and not record.online and record.state.remote_config is None:
            self.registry.forget(record)  # an unknown agent's goodbye: nothing to remember
        if superseded is not None:
            superseded.close(reasons.CLOSE_SUPERSEDED, reasons.SUPERSEDED)
        return reply.response

    def _bind(
        self,
        conn: Connection,
        record: AgentRecord,
        session: Session,
        replacing: bool,
        disconnecting: bool,
        mono: float,
        wall: float,
    ) -> list[StatusTransition]:
        """Liveness of a message its connection may speak for: end the session it replaces,
        bind the agent to this session (online) or refresh it. Returns the transitions."""
        transitions: list[StatusTransition] = []
        registry = self.registry
        if replacing:
            t = registry.mark_offline(record, wall=wall, reason=reasons.SUPERSEDED)
            if t is not None:
                transitions.append(t)
        if record.session is session and record.online:
            registry.refresh(record, mono=mono, wall=wall)
            return transitions
        if disconnecting and not record.online:
            return transitions
        t = registry.mark_online(
            record,
            session=session,
            connection=conn if conn.transport is Transport.WS else None,
            transport=conn.transport or Transport.HTTP,
            remote_addr=conn.remote_addr,
            heartbeat_interval_s=self._heartbeat_interval_s(record),
            mono=mono,
            wall=wall,
        )
        record.proven = conn.identity is not None
        if t is not None:
            transitions.append(t)
        return transitions

    def _heartbeat_interval_s(self, record: AgentRecord) -> int:
        """The interval the agent is offered (its connection settings', or the server's)."""
        offer = record.state.settings_offer
        return self.policy.heartbeat_interval_s if offer is None else offer.heartbeat_interval_s

    def _after_merge(
        self,
        record: AgentRecord,
        session: Session,
        response: pb.ServerToAgent,
        status_changed: frozenset[str],
        went_online: bool,
        disconnecting: bool,
    ) -> None:
        """What a merged message leads to beyond the core's reply: the config and packages due
        to an agent that came online or described itself anew (not in a goodbye), reported
        package statuses."""
        if self.assigner is not None and not disconnecting and record.online:
            if (went_online or "description" in status_changed) and self.assigner(record):
                if record.state.packages_available is None and response.HasField(
                    "packages_available"
                ):  # withdrawn while the agent was away: do not send the stale offer
                    response.ClearField("packages_available")
                    session.offered_packages_hash = None
                add_offers(response, record.state, session, policy=self.policy)
        settings = self.connection_settings
        if "connection_settings_status" in status_changed and settings is not None:
            reported = record.state.connection_settings_status
            if reported is not None:
                settings.on_status(record.uid, reported)
        if "package_statuses" in status_changed and self.on_package_statuses is not None:
            statuses = record.state.package_statuses
            if statuses is not None:
                self.on_package_statuses(record.uid, statuses)
        if response.HasField("packages_available"):
            self.package_offers_sent_total += 1

    def _role(
        self, conn: Connection, record: AgentRecord, mono: float
    ) -> tuple[_Role, Connection | None]:
        """Whether ``conn`` may speak for ``record``: as its owner, by taking it over from an
        older WebSocket (returned, to be closed), or not at all (a duplicate, or a refused
        claim).

        Credentials bound to the uid prove the newcomer is that agent: it always takes over.
        A connection that proved the uid is never displaced by one that did not: such a claim
        is refused (here, or by another instance holding it that way, see ``refuse_claims``).
        Otherwise a newer WebSocket takes over an older one for the same uid: the older is most
        likely half-open after a network blip. A second takeover within one heartbeat interval
        means two live agents share the uid (a cloned VM): the newcomer is a duplicate. A
        plain-HTTP request for a uid that is live on a WebSocket is a duplicate unless its
        credentials prove it.
        """
        proven = conn.identity is not None  # on_message refused any other uid already
        if not proven and (
            (record.online and record.proven) or mono < record.proven_elsewhere_until
        ):
            return _Role.REFUSED, None
        owner = record.connection
        if owner is None or owner is conn or owner.closed:
            return _Role.OWNER, None
        if conn.transport is not Transport.WS and not proven:
            return _Role.DUPLICATE, None
        if not proven and mono - record.last_takeover_mono < self.policy.heartbeat_interval_s:
            return _Role.DUPLICATE, None
        record.last_takeover_mono = mono
        return _Role.OWNER, owner

    def _session(self, conn: Connection, record: AgentRecord, *, fresh: bool) -> Session:
        if conn.transport is Transport.WS:
            assert conn.session is not None
            return conn.session
        if (
            not fresh
            and record.online
            and record.transport is Transport.HTTP
            and record.session is not None
        ):
            return record.session  # an HTTP agent's session spans its polls
        return Session(Transport.HTTP)

    def _answer_duplicate(
        self,
        conn: Connection,
        record: AgentRecord,
        msg: pb.AgentToServer,
        wall: float,
        *,
        refused: bool,
    ) -> pb.ServerToAgent:
        """Another live connection owns this uid: answer with a new uid to adopt, and let the
        message touch nothing of the owner's (state, liveness, rows). ``refused``: the owner
        proved the uid and this connection did not; counted, and logged once per session."""
        self.duplicates_total += 1
        scratch = AgentState(record.uid, record.state.wire_uid)
        session = conn.session if conn.transport is Transport.WS else None
        reply = process_message(
            scratch,
            session or Session(Transport.HTTP),
            msg,
            policy=self.policy,
            now=wall,
            new_uid=new_instance_uid,
            duplicate=True,
        )
        if refused:
            self._count_refusal(record, conn.remote_addr, "answered with a new uid")
            return reply.response
        for event in reply.events:
            if isinstance(event, InstanceUidReassigned):
                _log_new_uid(event, conn.remote_addr, "is a duplicate")
        return reply.response

    def _count_refusal(self, record: AgentRecord, remote_addr: str, outcome: str) -> None:
        """An unproven claim on a uid held with proof: counted; logged once per session."""
        self.claims_refused_total += 1
        record.refused_claims += 1
        if record.refused_claims == 1:
            logger.warning(
                "instance uid %s is held by a connection that proved its identity: refused an "
                "unproven claim from %s (%s; further claims are counted in "
                "opamp_fast_identity_claims_refused_total, not logged)",
                format_instance_uid(record.uid),
                remote_addr,
                outcome,
            )

    def _apply_events(
        self,
        conn: Connection,
        record: AgentRecord,
        events: tuple[Event, ...],
        transitions: list[StatusTransition],
        wall: float,
    ) -> frozenset[str]:
        """Liveness and persistence effects of the core's events; the status parts changed."""
        status_changed: frozenset[str] = frozenset()
        for event in events:
            if isinstance(event, MessageMerged):
                self.sink.seen(record.uid, wall)
                if not event.changed:
                    self.heartbeats_total += 1
            elif isinstance(event, StatusChanged):
                status_changed = status_changed | event.changed
            elif isinstance(event, AgentDisconnected) and record.connection in (conn, None):
                t = self.registry.mark_offline(record, wall=wall, reason=event.reason)
                if t is not None:
                    transitions.append(t)
            elif isinstance(event, InstanceUidReassigned):
                _log_new_uid(event, conn.remote_addr, "asked for a new one")
            elif isinstance(event, CustomMessageReceived):
                self._received(event)
            # AgentConnected is not used: liveness is decided from the registry's view, which
            # also knows about plain-HTTP sessions that span polls.
        return status_changed

    def _received(self, event: CustomMessageReceived) -> None:
        """A custom message from an agent: stored (coalesced by the writer) and announced."""
        self.custom_messages_received_total += 1
        uid, at = event.instance_uid, event.at
        self.sink.custom_message(
            uid, at=at, capability=event.capability, type=event.type, data=event.data
        )
        if self.events is not None:
            announce_custom_message(self.events, uid, at, event.capability, event.type, event.data)

    def on_connection_close(self, conn: Connection) -> None:
        admission = self.admission
        admission.open_connections -= 1
        if conn.transport is not Transport.WS:
            return  # an HTTP agent lives across polls; only timeouts or agent_disconnect end it
        record: AgentRecord | None = conn.record
        if record is None:
            admission.handshakes -= 1  # closed before its first message was answered
            return
        if record.connection is not conn:
            return
        t = self.registry.mark_offline(record, wall=self._wall(), reason=reasons.CONNECTION_CLOSED)
        if t is not None:
            self._persist(record, [t])

    # -- server-side actions --------------------------------------------------------------
    def assign_remote_config(self, uid: bytes, files: dict[str, tuple[bytes, str]]) -> bytes:
        """Set the config an agent should run (known or not yet seen) and push it at once to a
        WebSocket agent; a plain-HTTP agent gets it in its next poll response. Returns the hash."""
        record, created = self.registry.ensure(uid, uid)
        if created and self.on_new_record is not None:
            self.on_new_record(record)
        config_hash = record.state.set_remote_config(files)
        self.push(record)
        return config_hash

    def push(self, record: AgentRecord) -> bool:
        """Send whatever is pending for a WebSocket agent now (e.g. a new remote config).

        Plain-HTTP agents get it on their next poll; returns False for them (or when offline).
        """
        conn = record.connection
        session = record.session
        if conn is None or session is None or not conn.can_push:
            return False
        sent = False
        # A command goes alone and custom messages one per message: push until nothing is left.
        while (message := build_push(record.state, session, policy=self.policy)) is not None:
            if message.HasField("packages_available"):
                self.package_offers_sent_total += 1
            if not conn.send(message):
                break
            sent = True
        return sent

    # -- commands: a restart, custom messages ---------------------------------------------
    def restart(self, uid: bytes) -> bool:
        """Send the agent a Restart command if this instance holds it: pushed at once over
        WebSocket, held for its next poll over plain HTTP (nothing is kept for an agent that is
        offline). Its session's end within ``reasons.RESTART_WINDOW_S`` is then recorded as
        "restart requested". False when the agent is not online here.

        Raises:
            NotAccepted: the agent does not report AcceptsRestartCommand.
        """
        record = self.registry.get(uid)
        if record is None or not record.online or record.session is None:
            return False
        queue_restart(record.state, record.session)
        record.restart_requested_at = self._wall()
        self.restarts_total += 1
        self.push(record)
        return True

    def restart_many(self, uids: list[bytes]) -> list[bytes]:
        """:meth:`restart` for each agent held here that accepts it; those it was sent to."""
        done = []
        for uid in uids:
            try:
                if self.restart(uid):
                    done.append(uid)
            except NotAccepted:
                continue
        return done

    def send_custom_message(self, uid: bytes, message: pb.CustomMessage) -> str | None:
        """Send a ``CustomMessage`` to the agent if this instance holds it: ``"sent"`` (pushed
        over its WebSocket) or ``"queued"`` (for the next polls of a plain-HTTP agent, one per
        reply); None when the agent is not online here.

        Raises:
            NotAccepted: the agent did not declare the message's custom capability, or
            ``MAX_PENDING_CUSTOM_MESSAGES`` already wait for it.
        """
        record = self.registry.get(uid)
        if record is None or not record.online or record.session is None:
            return None
        queue_custom_message(
            record.state, record.session, message, max_pending=MAX_PENDING_CUSTOM_MESSAGES
        )
        self.custom_messages_sent_total += 1
        return "sent" if self.push(record) else "queued"

    def sweep(self, mono: float) -> list[StatusTransition]:
        """Advance the wheel; expired agents go offline (persisted) and their WebSockets get a
        close (4001), whose handshake the transport bounds. Returns the transitions."""
        wall = self._wall()
        transitions = self.registry.sweep(mono=mono, wall=wall)
        self.registry.forget_offline(wall=wall)
        for t in transitions:
            self.sink.disconnected(t.record.uid, at=t.at, reason=t.reason or "")
            if self.events is not None:
                announce_disconnected(self.events, t.record.uid, t.at, t.reason or "")
            if t.connection is not None:
                t.connection.close(reasons.CLOSE_TIMEOUT, reasons.HEARTBEAT_TIMEOUT)
        return transitions

    async def run_sweeper(
        self, *, tick_s: float, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """One task advances the wheel every tick: no timer per agent."""
        task_status.started()
        while True:
            self.sweeper_lag_s = await sleep_to_tick(tick_s)
            self.sweep(self._mono())

    def close_all(self, *, reason: str = reasons.SERVER_SHUTDOWN, accepting: bool = False) -> int:
        """Mark every online agent offline with ``reason`` (so history rows close with it, not
        with "connection closed") and close their WebSockets (1001). Unless ``accepting``
        (shutdown), new connections are refused from now on. Returns the WebSockets closed."""
        if not accepting:
            self.admission.shutting_down = True
        records = list(self.registry.online_records())
        return self._end(records, reason, reasons.CLOSE_GOING_AWAY, "server shutting down")

    def release(self, uids: list[bytes], *, reason: str) -> int:
        """Agents that connected to another instance: end them here (their old sockets are most
        likely half-open). The rows are the other instance's now: our writer's offline transition
        does not apply to them (see ``batch_writer._APPLIES``). Returns how many were online."""
        records = [r for r in map(self.registry.get, uids) if r is not None and r.online]
        self._end(records, reason, reasons.CLOSE_SUPERSEDED, reason)
        return len(records)

    def refuse_claims(self, uids: list[bytes]) -> int:
        """Sessions here that did not prove their uid, refused by the database because another
        instance holds the agent with a session that did (``batch_writer._FOREIGN``; their rows
        were left alone): end them (close 4003), and for one agent timeout answer further
        unproven claims for these uids as refused, without waiting for the database again.
        Returns how many sessions ended."""
        until = self._mono() + self.registry.agent_timeout_s(self.policy.heartbeat_interval_s)
        ending = []
        for record in map(self.registry.get, uids):
            if record is None or record.proven:
                continue  # a proven session here: the other instance's writer tells us
            record.proven_elsewhere_until = until
            if record.online:
                self._count_refusal(record, record.remote_addr, "its session ended")
                ending.append(record)
        return self._end(ending, reasons.PROVEN_ELSEWHERE, reasons.CLOSE_REFUSED, "uid refused")

    def disconnect(self, uids: list[bytes], *, reason: str = reasons.OPERATOR) -> int:
        """An operator's disconnect: end these agents' sessions here and close their sockets.
        Returns how many were online here."""
        records = [r for r in map(self.registry.get, uids) if r is not None and r.online]
        self._end(records, reason, reasons.CLOSE_ROUTED, reason)
        return len(records)

    def forget(self, uids: list[bytes]) -> int:
        """Agents deleted from the database (an operator, or expiry): drop them from memory, so
        that one coming back is a new agent, asked for its full state. One online here (it came
        back before the deletion reached this instance) is written again whole, which brings
        its row back. Returns how many were dropped."""
        dropped = 0
        for record in map(self.registry.get, uids):
            if record is None:
                continue
            if record.online:
                self.sink.status(record.uid, snapshot_of(record))
                continue
            self.registry.forget(record)
            dropped += 1
        return dropped

    def _end(self, records: list[AgentRecord], reason: str, code: int, close_reason: str) -> int:
        wall = self._wall()
        closing = 0
        for record in records:
            t = self.registry.mark_offline(record, wall=wall, reason=reason)
            if t is None:
                continue
            self.sink.disconnected(record.uid, at=wall, reason=reason)
            if self.events is not None:
                announce_disconnected(self.events, record.uid, wall, reason)
            if t.connection is not None:
                t.connection.close(code, close_reason)
                closing += 1
        return closing

    def _persist(
        self,
        record: AgentRecord,
        transitions: list[StatusTransition],
        changed: frozenset[str] = frozenset(),
    ) -> bool:
        """Hand one message's effects to the writer and the event hub: transitions in order,
        then the status parts in ``changed`` (their snapshot rides on a connect when there is
        one). Returns whether the agent came online."""
        online_at = None
        for t in transitions:
            if t.new is AgentStatus.ONLINE:
                online_at = t.at
        snapshot = snapshot_of(record) if changed or online_at is not None else None
        sink = self.sink
        for t in transitions:
            if t.new is AgentStatus.ONLINE:
                sink.connected(
                    record.uid,
                    at=t.at,
                    remote_addr=record.remote_addr,
                    transport=(record.transport or Transport.WS).value,
                    snapshot=snapshot,
                )
            else:
                sink.disconnected(record.uid, at=t.at, reason=t.reason or "")
        if snapshot is not None and online_at is None:  # changed, no connect to ride on
            sink.status(record.uid, snapshot)
        hub = self.events
        if hub is not None:  # fleet events: transitions first, then status parts
            for t in transitions:
                if t.new is AgentStatus.ONLINE:
                    announce_connected(hub, record, t.at)
                else:
                    announce_disconnected(hub, record.uid, t.at, t.reason or "")
            if changed and online_at is None:
                announce_changes(hub, record, changed)
        return online_at is not None


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
        proven=record.proven,
        custom_capabilities=state.custom_capabilities,
        available_components=state.available_components,
    )
