"""The live agent registry: instance uid -> dense handle -> agent record, with a timing wheel.

Every agent the server has heard from since it started has an :class:`AgentRecord` holding its
merged protocol state (status compression needs the last value of every sub-message, also across
reconnects) and its liveness: online/offline, the owning connection, the deadline in the wheel.

All methods are synchronous and never await: a registry mutation is atomic with respect to other
tasks. Time comes in as arguments (``mono`` for deadlines, ``wall`` for stored timestamps), so the
registry is deterministic under test.

Transitions (each happens once; repeated or late ones return ``False`` and change nothing):
``mark_online`` offline -> online; ``mark_offline`` online -> offline (agent_disconnect, socket
close, heartbeat timeout, server shutdown), each with a reason and time.
"""

from __future__ import annotations

import enum
import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..native.heartbeat import USING_EXTENSION, TimingWheel
from ..protocol import AgentState, Session, Transport, pb
from . import reasons

if TYPE_CHECKING:
    from ..transport.handlers import Connection

logger = logging.getLogger(__name__)


# -- metrics support -------------------------------------------------------------
# Plain numbers only: ``metrics.py`` turns these into Prometheus samples at scrape time, so the
# registry never imports prometheus_client and a disconnect costs one bisect and two adds.

#: Upper bounds (``le``) of ``agent_connection_duration_seconds``: 1 s to one week.
CONNECTION_DURATION_BOUNDS_S: Final = (
    1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0,
    86400.0, 2 * 86400.0, 4 * 86400.0, 7 * 86400.0,
)  # fmt: skip


class BucketCounts:
    """A histogram as plain numbers: per-bucket (not cumulative) counts plus the sum.

    ``counts[i]`` counts observations ``<= bounds[i]`` and ``> bounds[i - 1]``; the last slot is
    the ``+Inf`` overflow. The exporter copies ``counts`` and ``sum`` on the event loop.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("bucket bounds must be strictly increasing")
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class AgentStatus(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


class AgentRecord:
    """One known agent. ``state`` is the sans-IO protocol state; the rest is liveness."""

    __slots__ = (
        "ack",
        "connected_at",
        "connection",
        "disconnect_reason",
        "disconnected_at",
        "handle",
        "last_seen",
        "last_takeover_mono",
        "proven",
        "proven_elsewhere_until",
        "refused_claims",
        "remote_addr",
        "restart_requested_at",
        "session",
        "state",
        "status",
        "timeout_s",
        "transport",
    )

    def __init__(self, handle: int, state: AgentState) -> None:
        self.handle = handle
        self.state = state
        # The encoded bare acknowledgement (``ServerToAgent{instance_uid}``): the whole reply to
        # a heartbeat on the fast path, built once per agent instead of once per message.
        self.ack: bytes = pb.ServerToAgent(instance_uid=state.wire_uid).SerializeToString()
        self.status = AgentStatus.OFFLINE
        self.session: Session | None = None
        self.connection: Connection | None = None  # the live WebSocket that owns this agent
        self.transport: Transport | None = None
        self.remote_addr = ""
        self.connected_at = 0.0
        self.disconnected_at: float | None = None
        self.disconnect_reason: str | None = None
        self.last_seen = 0.0
        self.timeout_s = 0.0
        self.last_takeover_mono = float("-inf")
        # Identity: whether the connection (or HTTP session) holding the agent proved the uid
        # with bound credentials; until when another instance is known to hold it that way
        # (monotonic seconds); unproven claims refused since its last session began.
        self.proven = False
        self.proven_elsewhere_until = float("-inf")
        self.refused_claims = 0
        # When a Restart command was sent to its current session (UNIX seconds; 0: none): the
        # session's end within ``reasons.RESTART_WINDOW_S`` is recorded as "restart requested".
        self.restart_requested_at = 0.0

    @property
    def uid(self) -> bytes:
        return self.state.instance_uid

    @property
    def online(self) -> bool:
        return self.status is AgentStatus.ONLINE


@dataclass(frozen=True, slots=True)
class StatusTransition:
    """An online/offline change, consumed by persistence and metrics."""

    record: AgentRecord
    new: AgentStatus
    at: float
    reason: str | None
    connection: Connection | None = None  # the WebSocket bound when the agent went offline


@dataclass(frozen=True, slots=True)
class RegistryStatistics:
    known: int
    online: int
    offline: int
    online_ws: int
    online_http: int
    scheduled: int
    expired_total: int
    status_changes: dict[tuple[str, str], int]
    using_extension: bool


class Registry:
    """uid -> record, with O(1) refresh and sweep cost proportional to what expires."""

    def __init__(
        self,
        *,
        timeout_s: float,
        timeout_factor: float,
        tick_s: float,
        start_mono: float,
        capacity: int = 1024,
        retention_s: float = 3600.0,
    ) -> None:
        self.timeout_s = timeout_s
        self.timeout_factor = timeout_factor
        self._wheel = TimingWheel(tick_s=tick_s, capacity=capacity, start=start_mono)
        self.retention_s = retention_s
        # (offline since, record), oldest first: offline agents are forgotten after retention_s.
        self._offline: deque[tuple[float, AgentRecord]] = deque()
        self.forgotten_total = 0
        self._by_uid: dict[bytes, AgentRecord] = {}
        self._by_handle: list[AgentRecord | None] = []
        self._free_handles: list[int] = []
        self._online = 0
        self._online_by_transport = {Transport.WS: 0, Transport.HTTP: 0}
        self._expired_total = 0
        # (from, to) -> count; "new" is the from-state of an agent's first connection.
        self._changes: dict[tuple[str, str], int] = {}
        # metrics: durations of connections that ended (online -> offline), seconds.
        self.connection_durations = BucketCounts(CONNECTION_DURATION_BOUNDS_S)

    # -- lookup ---------------------------------------------------------------------------
    def get(self, uid: bytes) -> AgentRecord | None:
        return self._by_uid.get(uid)

    def __len__(self) -> int:
        return len(self._by_uid)

    def __iter__(self) -> Iterator[AgentRecord]:
        return iter(list(self._by_uid.values()))

    def online_records(self) -> Iterator[AgentRecord]:
        return (r for r in list(self._by_uid.values()) if r.status is AgentStatus.ONLINE)

    def ensure(self, uid: bytes, wire_uid: bytes) -> tuple[AgentRecord, bool]:
        """``(record, created)``: the record for ``uid``, created when the server never saw it."""
        record = self._by_uid.get(uid)
        if record is not None:
            return record, False
        handle = self._free_handles.pop() if self._free_handles else len(self._by_handle)
        record = AgentRecord(handle, AgentState(uid, wire_uid))
        if handle == len(self._by_handle):
            self._by_handle.append(record)
        else:
            self._by_handle[handle] = record
        self._by_uid[uid] = record
        return record, True

    def forget(self, record: AgentRecord) -> None:
        """Drop an offline agent from memory (e.g. after its uid was reassigned)."""
        if record.status is AgentStatus.ONLINE:
            raise ValueError("cannot forget an online agent")
        if self._by_uid.get(record.uid) is record:
            del self._by_uid[record.uid]
            self._by_handle[record.handle] = None
            self._free_handles.append(record.handle)

    # -- liveness -------------------------------------------------------------------------
    def agent_timeout_s(self, heartbeat_interval_s: float) -> float:
        """max(configured timeout, factor x the agent's heartbeat/poll interval)."""
        return max(self.timeout_s, self.timeout_factor * heartbeat_interval_s)

    def refresh(self, record: AgentRecord, *, mono: float, wall: float) -> None:
        """Any message from the agent: push its deadline out. O(1)."""
        record.last_seen = wall
        self._wheel.schedule(record.handle, mono + record.timeout_s)

    def mark_online(
        self,
        record: AgentRecord,
        *,
        session: Session,
        connection: Connection | None,
        transport: Transport,
        remote_addr: str,
        heartbeat_interval_s: float,
        mono: float,
        wall: float,
    ) -> StatusTransition | None:
        """Bind the agent to a session (and WebSocket). Returns the transition if it was offline."""
        record.session = session
        record.connection = connection
        record.remote_addr = remote_addr
        record.timeout_s = self.agent_timeout_s(heartbeat_interval_s)
        previous_transport = record.transport
        record.transport = transport
        self.refresh(record, mono=mono, wall=wall)
        if record.status is AgentStatus.ONLINE:
            if previous_transport is not transport and previous_transport is not None:
                self._online_by_transport[previous_transport] -= 1
                self._online_by_transport[transport] += 1
            return None
        from_state = "new" if record.disconnected_at is None else "offline"
        record.status = AgentStatus.ONLINE
        record.refused_claims = 0
        record.connected_at = wall
        self._online += 1
        self._online_by_transport[transport] += 1
        self._count(from_state, "online")
        return StatusTransition(record, AgentStatus.ONLINE, wall, None)

    def mark_offline(
        self, record: AgentRecord, *, wall: float, reason: str
    ) -> StatusTransition | None:
        """Online -> offline once; later or repeated calls return None and change nothing.

        A session that ends (closed, goodbye, silent, reconnected) soon after a Restart command
        was sent to it ends with "restart requested" instead."""
        if record.status is not AgentStatus.ONLINE:
            return None
        if record.restart_requested_at:
            if (
                reason in reasons.RESTART_ENDINGS
                and wall - record.restart_requested_at <= reasons.RESTART_WINDOW_S
            ):
                reason = reasons.RESTART_REQUESTED
            record.restart_requested_at = 0.0
        connection = record.connection
        record.status = AgentStatus.OFFLINE
        record.disconnected_at = wall
        record.disconnect_reason = reason
        record.connection = None
        record.session = None
        record.proven = False
        self._wheel.cancel(record.handle)
        self._online -= 1
        if record.transport is not None:
            self._online_by_transport[record.transport] -= 1
        self._count("online", "offline")
        self._offline.append((wall, record))
        # metrics: a WebSocket's lifetime, or an HTTP agent's first poll to its end.
        self.connection_durations.observe(max(0.0, wall - record.connected_at))
        return StatusTransition(record, AgentStatus.OFFLINE, wall, reason, connection)

    def sweep(self, *, mono: float, wall: float) -> list[StatusTransition]:
        """Advance the wheel to ``mono``; every expired agent goes offline ("heartbeat timeout")
        as of its deadline (its last message plus its timeout), not of the sweep that noticed:
        the wheel's slots and the sweeper's ticks would add up to two ticks to its session."""
        transitions = []
        for handle in self._wheel.advance(mono):
            record = self._by_handle[handle]
            if record is None:
                continue
            deadline = min(wall, record.last_seen + record.timeout_s)
            transition = self.mark_offline(record, wall=deadline, reason=reasons.HEARTBEAT_TIMEOUT)
            if transition is not None:
                self._expired_total += 1
                transitions.append(transition)
        return transitions

    def forget_offline(self, *, wall: float) -> int:
        """Drop agents offline for longer than ``retention_s`` (their rows stay in Postgres).

        Kept regardless: an agent that came back (it is online, or went offline again later)
        and one the server holds a desired remote config for (only in memory). O(1) per agent.
        """
        horizon = wall - self.retention_s
        offline = self._offline
        forgotten = 0
        while offline and offline[0][0] <= horizon:
            at, record = offline.popleft()
            if (
                record.status is AgentStatus.OFFLINE
                and record.disconnected_at == at
                and record.state.remote_config is None
                and self._by_uid.get(record.uid) is record
            ):
                self.forget(record)
                forgotten += 1
        self.forgotten_total += forgotten
        return forgotten

    def _count(self, from_state: str, to_state: str) -> None:
        key = (from_state, to_state)
        self._changes[key] = self._changes.get(key, 0) + 1

    # -- introspection --------------------------------------------------------------------
    @property
    def online_count(self) -> int:
        return self._online

    @property
    def online_ws(self) -> int:
        return self._online_by_transport[Transport.WS]

    @property
    def online_http(self) -> int:
        return self._online_by_transport[Transport.HTTP]

    def statistics(self) -> RegistryStatistics:
        return RegistryStatistics(
            known=len(self._by_uid),
            online=self._online,
            offline=len(self._by_uid) - self._online,
            online_ws=self._online_by_transport[Transport.WS],
            online_http=self._online_by_transport[Transport.HTTP],
            scheduled=len(self._wheel),
            expired_total=self._expired_total,
            status_changes=dict(self._changes),
            using_extension=USING_EXTENSION,
        )
