"""Fleet events: one in-memory hub per instance that fans events out to ``/api/events``.

Why it looks like this:

* **Publishing never waits, and costs little when nobody reads.** :meth:`EventHub.publish` is
  synchronous and runs on the event loop inside agent callbacks: it numbers the event, appends
  it to the bounded replay ring, and for each subscriber does a filter check and a
  ``deque.append`` (O(1) per subscriber, no ``await``, no I/O). The event is encoded (msgspec)
  the first time something reads it (a subscriber, a replay, the forward to other instances),
  once; agents connect by the thousand per second with no console open, and encoding two
  events per connect for nobody was a quarter of a connect's cost. A subscriber whose bounded
  queue is full is dropped at once (it gets a ``resync`` event and the stream ends), so a slow
  browser never slows agents.
* **Resumable.** Every event gets the next number of this hub's sequence; its SSE id is
  ``<stream>-<seq>`` where ``stream`` is random per hub, so an id from another instance or from
  before a restart is recognised as foreign (-> ``resync``) instead of silently skipping events.
  A client that reconnects with ``Last-Event-ID`` gets the events it missed from the replay ring
  (``events_replay_max`` deep), or a ``resync`` when they are gone.
* **Fleet-wide.** While other instances are live (:attr:`EventHub.forwarding`, kept by
  ``cluster.Cluster``), locally published events are also queued (bounded) for them: the batch
  writer takes them at each flush, encodes them in its thread and sends them with ``pg_notify``
  on the fleet channel inside the flush's transaction (payloads under Postgres's 8,000-byte
  limit), so other instances learn of a change exactly when it is committed. Their listeners
  hand the notice to :meth:`EventHub.ingest`, which re-numbers the events in the local
  sequence. An instance alone forwards nothing.

Publishers call ``hub.publish(type, agent, data)``; ``type`` is one of :data:`EVENT_TYPES`.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
import psycopg
from anyio.abc import TaskStatus
from psycopg_pool import PoolTimeout

from ..protocol.codec import format_instance_uid
from ..redaction import redact_error_text

if TYPE_CHECKING:
    from ..protocol import pb
    from .registry import AgentRecord

__all__ = [
    "EVENT_TYPES",
    "EventHub",
    "EventHubStatistics",
    "FleetEvent",
    "OnlineHistory",
    "Subscriber",
    "announce_changes",
    "announce_connected",
    "announce_custom_message",
    "announce_disconnected",
    "announce_drift",
    "announce_forgotten",
]

logger = logging.getLogger(__name__)

#: Every event type, with what its ``data`` holds (documented in docs/api.md).
EVENT_TYPES: Final[Mapping[str, str]] = {
    "agent.connected": "transport, remote_addr, name, version",
    "agent.disconnected": "reason",
    "agent.description": "name, version (the agent description changed)",
    "agent.health": "healthy, status, last_error",
    "agent.status": "changed: other reported parts that changed (capabilities, effective config)",
    "agent.config_status": "status, error_message, config_hash (remote config apply status)",
    "agent.package_status": "the agent reported new package statuses",
    "agent.custom_message": "capability, type, size, data (base64, when at most "
    "CUSTOM_DATA_SHOWN bytes): a CustomMessage the agent sent",
    "agent.drift": "drifted, since, applied_config_hash, effective_config_hash (config drift)",
    "agent.forgotten": "by: operator or expiry (deleted; an agent coming back is new)",
    "instance.lost": "instance, by: a server instance was declared lost; its agents are offline",
    "config.changed": "operator change of a configuration or its assignment (id, action, ...)",
    "package.changed": "operator change of a package (id, action, ...)",
}
# An event id: ``<stream>-<seq>`` (the stream is random per server start). Also the
# ``pattern`` of ``last_event_id`` in the OpenAPI document; matched whole.
EVENT_ID_PATTERN: Final = r"^[0-9A-Za-z_]{1,64}-[0-9]{1,18}$"
_EVENT_ID: Final = re.compile(EVENT_ID_PATTERN)
RESYNC: Final = "resync"  # control event: state was missed; re-read it from the REST API
MAX_TEXT: Final = 256  # strings in event data are cut to this many characters
#: A custom message's data rides on its event when its base64 fits MAX_TEXT; larger data is
#: read from GET /api/agents/{id}/custom-messages.
CUSTOM_DATA_SHOWN: Final = MAX_TEXT // 4 * 3
# One Server-Sent Events frame of a stream, as the OpenAPI document describes it: ``event`` is
# the type, ``data`` the event as JSON (a fleet event, ``resync`` or ``auth_expired``).
FRAME_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": EVENT_ID_PATTERN},
        "event": {"enum": [*sorted(EVENT_TYPES), RESYNC, "auth_expired"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"enum": [*sorted(EVENT_TYPES), RESYNC, "auth_expired"]},
                    "seq": {"type": "integer", "minimum": 0},
                    "at": {"type": "string", "format": "date-time"},
                    "instance": {"type": "string"},
                    "agent": {"type": ["string", "null"]},
                    "data": {"type": "object"},
                    "reason": {"type": "string"},
                },
            },
        },
    },
}
_encoder = msgspec.json.Encoder()


Data = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


class FleetEvent:
    """One numbered event. Its JSON and SSE frame are encoded on first use (a subscriber that
    accepts it, a replay, a forward to the other instances), once, and shared; an event nobody
    reads costs its numbering and a place in the replay ring. ``data`` may be a callable that
    builds the mapping then: it must read only values that are never mutated afterwards (the
    protocol state replaces a status part when it changes, it does not edit it)."""

    __slots__ = ("_agent", "_at", "_data", "_frame", "_instance", "_json", "_stream", "seq", "type")

    def __init__(
        self,
        seq: int,
        type: str,
        agent: bytes | str | None,
        at: float | str,
        instance: str | None,
        data: Data,
        stream: str,
    ) -> None:
        self.seq = seq
        self.type = type
        self._agent = agent  # the uid's bytes until its text is first asked for
        self._at = at  # UNIX seconds; RFC 3339 text when forwarded by another instance
        self._instance = instance
        self._data = data
        self._stream = stream
        self._json: bytes | None = None
        self._frame: bytes | None = None

    @property
    def agent(self) -> str | None:
        """The canonical instance uid text, None for fleet-level events."""
        agent = self._agent
        if agent.__class__ is bytes:
            agent = self._agent = format_instance_uid(agent)  # type: ignore[arg-type]
        return agent  # type: ignore[return-value]

    @property
    def json(self) -> bytes:
        """The event object, as in the frame's data line."""
        raw = self._json
        if raw is None:
            data = self._data
            if callable(data):
                data = data()
            at = self._at
            raw = self._json = _encoder.encode(
                {
                    "type": self.type,
                    "at": at if at.__class__ is str else _rfc3339(at),  # type: ignore[arg-type]
                    "instance": self._instance,
                    "agent": self.agent,
                    "data": {k: clip(v) for k, v in data.items()},
                    "seq": self.seq,
                }
            )
            # _data stays: the writer's thread may be encoding the same event right now (both
            # get the same bytes); the ring bounds what it keeps alive.
        return raw

    @property
    def frame(self) -> bytes:
        """The SSE frame (id, event, data)."""
        frame = self._frame
        if frame is None:
            head = f"id: {self._stream}-{self.seq}\nevent: {self.type}\ndata: ".encode()
            frame = self._frame = head + self.json + b"\n\n"
        return frame


_NO_DATA: Final[Mapping[str, Any]] = {}


@dataclass(frozen=True, slots=True)
class EventHubStatistics:
    last_seq: int
    subscribers: int
    published_total: int  # local events
    ingested_total: int  # events from other instances
    delivered_total: int  # event copies queued to subscribers
    dropped_subscribers_total: int  # subscribers dropped for a full queue
    outbox_dropped_total: int  # events not forwarded (outbox full during a database outage)
    forwarded_total: int  # events queued for the other instances
    forwarding: bool  # other instances are live: events are forwarded to them


class Subscriber:
    """One stream's filter and bounded queue. Filled by the hub, drained by its stream task."""

    __slots__ = ("agents", "dropped", "queue", "queue_max", "types", "wake")

    def __init__(
        self, *, types: frozenset[str] | None, agents: frozenset[str] | None, queue_max: int
    ) -> None:
        self.types = types  # None: every type
        self.agents = agents  # None: every agent (replaced by a label filter's refresh)
        self.queue: deque[bytes] = deque()
        self.queue_max = queue_max
        self.dropped = False
        self.wake = anyio.Event()

    def accepts(self, event: FleetEvent) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        agents = self.agents
        return agents is None or event.agent is None or event.agent in agents

    def offer(self, event: FleetEvent) -> bool:
        """Queue the event (O(1)); False when the queue is full (the caller drops us)."""
        if len(self.queue) >= self.queue_max:
            return False
        self.queue.append(event.frame)
        if not self.wake.is_set():
            self.wake.set()
        return True

    def take(self) -> bytes:
        """Everything queued, as one chunk; re-arms the wake-up."""
        chunk = b"".join(self.queue)
        self.queue.clear()
        self.wake = anyio.Event()
        return chunk


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clip(value: Any) -> Any:
    """Event data stays small: long strings are cut to :data:`MAX_TEXT` characters."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "…"
    return value


class EventHub:
    """Numbers, keeps (bounded) and fans out this instance's view of the fleet's events."""

    def __init__(
        self,
        *,
        instance_id: str,
        replay_max: int = 10_000,
        queue_max: int = 1_000,
        outbox_max: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.instance_id = instance_id
        self.stream = secrets.token_hex(4)
        self.queue_max = queue_max
        self._clock = clock
        self._seq = 0
        self._ring: deque[FleetEvent] = deque(maxlen=replay_max)
        self._subscribers: set[Subscriber] = set()
        self._outbox: deque[FleetEvent] = deque(maxlen=outbox_max)
        # Whether other instances may be listening (``Cluster`` keeps this up to date): alone,
        # an instance neither encodes nor NOTIFYs its events for nobody.
        self.forwarding = True
        self._published = 0
        self._ingested = 0
        self._delivered = 0
        self._dropped = 0
        self._outbox_dropped = 0
        self._forwarded = 0

    # -- producing ---------------------------------------------------------------------------
    def publish(
        self,
        type: str,
        agent: bytes | str | None,
        data: Data | None = None,
        *,
        at: float | None = None,
        forward: bool = True,
    ) -> FleetEvent:
        """Announce an event: synchronous, O(subscribers), never blocks, encodes nothing
        unless a subscriber takes it. ``agent`` is the instance uid (bytes, or its canonical
        text); ``forward=False`` keeps it off the other instances (when each of them learns it
        by itself, like ``instance.lost``)."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}; add it to events.EVENT_TYPES")
        self._published += 1
        self._seq += 1
        event = FleetEvent(
            self._seq,
            type,
            agent,
            self._clock() if at is None else at,
            self.instance_id,
            _NO_DATA if data is None else data,
            self.stream,
        )
        self._fan_out(event)
        if forward and self.forwarding:
            if len(self._outbox) == self._outbox.maxlen:
                self._outbox_dropped += 1
            self._outbox.append(event)
            self._forwarded += 1
        return event

    def ingest(self, events: Any, sender: str | None) -> int:
        """Events forwarded by another instance (a decoded notice): numbered here and fanned
        out. Malformed entries are skipped. Returns how many were taken."""
        if not isinstance(events, list):
            return 0
        taken = 0
        for body in events:
            if (
                not isinstance(body, dict)
                or body.get("type") not in EVENT_TYPES
                or not isinstance(body.get("data"), dict)
            ):
                continue
            agent = body.get("agent")
            at = body.get("at")
            self._seq += 1
            event = FleetEvent(
                self._seq,
                body["type"],
                agent if isinstance(agent, str) else None,
                at if isinstance(at, str) else "",
                body.get("instance") or sender,
                body["data"],
                self.stream,
            )
            self._fan_out(event)
            taken += 1
        self._ingested += taken
        return taken

    def _fan_out(self, event: FleetEvent) -> None:
        self._ring.append(event)
        if not self._subscribers:
            return
        dropped: list[Subscriber] | None = None
        for sub in self._subscribers:
            if sub.accepts(event):
                if sub.offer(event):
                    self._delivered += 1
                else:
                    dropped = dropped or []
                    dropped.append(sub)
        if dropped:
            for sub in dropped:
                self._drop(sub)

    def _drop(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        sub.dropped = True
        sub.queue.clear()
        sub.wake.set()
        self._dropped += 1
        logger.info("dropped a slow event-stream subscriber (queue of %d full)", sub.queue_max)

    def take_outbox(self) -> list[FleetEvent]:
        """Events to forward to the other instances (the writer calls this at each flush, and
        encodes them in its thread)."""
        items = list(self._outbox)
        self._outbox.clear()
        return items

    # -- consuming ---------------------------------------------------------------------------
    @property
    def last_id(self) -> str:
        return f"{self.stream}-{self._seq}"

    def parse_id(self, text: str) -> tuple[str, int] | None:
        """``(stream, seq)`` of an event id (:data:`EVENT_ID_PATTERN`), None when it is not one."""
        if not _EVENT_ID.fullmatch(text):
            return None
        stream, _, seq = text.partition("-")
        return stream, int(seq)

    def subscribe(
        self,
        *,
        types: frozenset[str] | None = None,
        agents: frozenset[str] | None = None,
        last_id: str | None = None,
    ) -> tuple[Subscriber, list[FleetEvent], str | None]:
        """Register a subscriber. Returns it, the events to replay (after ``last_id``), and a
        resync reason when the missed events cannot be replayed. No ``await`` here: nothing
        published meanwhile can fall between the replay and the queue."""
        sub = Subscriber(types=types, agents=agents, queue_max=self.queue_max)
        replay: list[FleetEvent] = []
        reason = None
        if last_id is not None:
            parsed = self.parse_id(last_id)
            if parsed is None or parsed[0] != self.stream or parsed[1] > self._seq:
                reason = "unknown event id (the server restarted, or it is another instance's)"
            else:
                oldest = self._ring[0].seq if self._ring else self._seq + 1
                if parsed[1] < oldest - 1:
                    reason = "the missed events are no longer in the replay buffer"
                else:
                    start = max(0, parsed[1] + 1 - oldest)
                    replay = [e for i, e in enumerate(self._ring) if i >= start and sub.accepts(e)]
        self._subscribers.add(sub)
        return sub, replay, reason

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def resync_frame(self, reason: str) -> bytes:
        body = _encoder.encode({"type": RESYNC, "seq": self._seq, "reason": reason})
        return b"id: " + self.last_id.encode() + b"\nevent: resync\ndata: " + body + b"\n\n"

    def statistics(self) -> EventHubStatistics:
        return EventHubStatistics(
            last_seq=self._seq,
            subscribers=len(self._subscribers),
            published_total=self._published,
            ingested_total=self._ingested,
            delivered_total=self._delivered,
            dropped_subscribers_total=self._dropped,
            outbox_dropped_total=self._outbox_dropped,
            forwarded_total=self._forwarded,
            forwarding=self.forwarding,
        )


class OnlineHistory:
    """Online agents fleet-wide, sampled once a minute: the overview's chart of the last hour.

    A bounded ring of ``(unix time, online)``; ``sample`` reads the fleet counts (Postgres).
    """

    def __init__(
        self,
        sample: Callable[[], Awaitable[int]],
        *,
        interval_s: float = 60.0,
        keep: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sample = sample
        self.interval_s = interval_s
        self._clock = clock
        self.points: deque[tuple[float, int]] = deque(maxlen=keep)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.take_sample()
            await anyio.sleep(self.interval_s)

    async def take_sample(self) -> None:
        try:
            online = await self._sample()
        except (psycopg.Error, PoolTimeout) as exc:  # an outage: a gap in the chart, no crash
            logger.debug("online sample skipped: %s", exc)
            return
        self.points.append((self._clock(), online))


# -- agent events, as the fleet handler announces them -------------------------------------------
_STATUS_PARTS: Final = {
    "description": "agent.description",
    "health": "agent.health",
    "remote_config_status": "agent.config_status",
    "package_statuses": "agent.package_status",
}
_STATUS_NAMES: Final = ("UNSET", "APPLIED", "APPLYING", "FAILED")


def _name_version(description: pb.AgentDescription | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": None, "version": None}
    if description is None:
        return out
    for attrs in (description.non_identifying_attributes, description.identifying_attributes):
        for kv in attrs:
            key = kv.key  # compare the key first: most attributes are neither (once per connect)
            if key == "service.name" or key == "service.version":
                value = kv.value
                if value.WhichOneof("value") == "string_value":
                    out["name" if key == "service.name" else "version"] = value.string_value
    return out


def announce_connected(hub: EventHub, record: AgentRecord, at: float) -> None:
    description = record.state.description  # replaced, never edited: read when encoded
    transport = record.transport.value if record.transport is not None else None
    remote_addr = record.remote_addr

    def data() -> dict[str, Any]:
        out = _name_version(description)
        out["transport"] = transport
        out["remote_addr"] = remote_addr
        return out

    hub.publish("agent.connected", record.uid, data, at=at)


def announce_disconnected(hub: EventHub, uid: bytes, at: float, reason: str) -> None:
    hub.publish("agent.disconnected", uid, {"reason": reason}, at=at)


def announce_custom_message(
    hub: EventHub, uid: bytes, at: float, capability: str, type: str, data: bytes
) -> None:
    def encoded() -> dict[str, Any]:
        out: dict[str, Any] = {"capability": capability, "type": type, "size": len(data)}
        if len(data) <= CUSTOM_DATA_SHOWN:
            out["data"] = base64.b64encode(data).decode("ascii")
        return out

    hub.publish("agent.custom_message", uid, encoded, at=at)


def announce_forgotten(hub: EventHub, uids: list[bytes], by: str) -> None:
    """Agents deleted (every instance learns it from the ``forget`` notice: not forwarded)."""
    for uid in uids:
        hub.publish("agent.forgotten", uid, {"by": by}, forward=False)


def announce_drift(hub: EventHub, changes: list[tuple[Any, ...]]) -> None:
    """Agents whose drift changed, as the writer's flush committed it: ``(uid, drifted_at,
    applied_config_hash, effective_config_hash)`` each (``drifted_at`` None: no longer)."""
    for uid, since, applied, effective in changes:
        data = {
            "drifted": since is not None,
            "since": None if since is None else _rfc3339(since.timestamp()),
            "applied_config_hash": applied,
            "effective_config_hash": effective,
        }
        hub.publish("agent.drift", uid, data)


def announce_changes(hub: EventHub, record: AgentRecord, changed: frozenset[str]) -> None:
    """One event per changed part the console shows; the other parts in one ``agent.status``.
    The data is read from the parts when (if) the event is encoded: each part is replaced, not
    edited, when the agent reports it again."""
    uid = record.uid
    state = record.state
    rest = sorted(part for part in changed if part not in _STATUS_PARTS)
    for part in sorted(changed & _STATUS_PARTS.keys()):
        data: Data = _NO_DATA
        if part == "description":
            data = partial(_name_version, state.description)
        elif part == "health" and state.health is not None:
            data = partial(_health_data, state.health)
        elif part == "remote_config_status" and state.remote_config_status is not None:
            data = partial(_config_status_data, state.remote_config_status)
        hub.publish(_STATUS_PARTS[part], uid, data)
    if rest:
        hub.publish("agent.status", uid, {"changed": rest})


def _health_data(health: pb.ComponentHealth) -> dict[str, Any]:
    return {
        "healthy": health.healthy,
        "status": redact_error_text(health.status),
        "last_error": redact_error_text(health.last_error),
    }


def _config_status_data(rcs: pb.RemoteConfigStatus) -> dict[str, Any]:
    status = rcs.status
    return {
        "status": _STATUS_NAMES[status] if 0 <= status < len(_STATUS_NAMES) else status,
        "error_message": redact_error_text(rcs.error_message),
        "config_hash": rcs.last_remote_config_hash.hex(),
    }
