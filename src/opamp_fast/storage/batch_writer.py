"""``BatchWriter``: the only writer of ``agents`` and ``agent_connection_history``.

Why it looks like this (capability 3, house style "no database I/O per message"):

- Connection handlers never touch the database and never wait. Connects, disconnects and status
  changes (:meth:`BatchWriter.connected` ...) and every heartbeat (:meth:`BatchWriter.seen`) are
  synchronous O(1) merges into per-agent *coalesced* state on the event loop, also while a flush
  runs in a worker thread: memory grows with the number of agents and sessions, never with the
  number of messages. Every history row (each open and close) is kept. When too many history
  rows wait for the database (``queue_max``), :attr:`BatchWriter.overloaded` makes admission
  control refuse new connections (503) rather than grow without bound.
- A flusher task swaps the pending buffers (no ``await`` in between, so nothing is lost or seen
  twice) every ``flush_interval_s`` or when ``batch_max`` agents are pending, and writes the
  batch in ONE transaction: binary ``COPY`` into temp staging tables, then set-based statements.
  Every statement is idempotent (``session_id`` chosen here, ``GREATEST`` for times, guarded
  transitions), so a batch whose commit outcome is unknown is simply merged back and retried.
- If Postgres is down, batches are merged back under newer changes and retried with exponential
  backoff; the server keeps serving. At shutdown the writer drains (final flush, then closes this
  instance's open sessions with ``"server shutdown"``) under a shield with a time bound; at start,
  :meth:`BatchWriter.repair_after_crash` closes what a killed previous run left open.

See ``docs/persistence.md`` for the schema and the exact rules.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import anyio
import msgspec
import psycopg
from anyio.abc import TaskStatus

from ..redaction import ConfigRedactor, without_nul
from ..ticks import next_tick
from .notices import FLEET_CHANNEL, channel_for, encode_event_notices, encode_notices
from .rows import (
    AgentSnapshot,
    JSONObject,
    available_components_to_json,
    capabilities_to_bigint,
    component_set_digest,
    effective_config_hash,
)

if TYPE_CHECKING:
    from .database import Database

logger = logging.getLogger(__name__)

TRANSPORTS: Final = frozenset({"ws", "http"})
_EVENTS_KEPT: Final = 10_000  # fleet events kept for other instances through a database outage
#: How soon rows another instance's flush held (``_Batch.busy``) are tried again when flush()
#: callers wait for them; otherwise they go with the next tick's flush.
_BUSY_RETRY_S: Final = 0.05
#: Custom messages from agents waiting for the database, in bytes of data; beyond it newer ones
#: are dropped (counted): a flood or a long outage never grows memory past it.
CUSTOM_MESSAGE_BYTES_MAX: Final = 16 * 1024 * 1024
#: Custom messages kept per agent (the newest), what GET /api/agents/{id}/custom-messages shows.
CUSTOM_MESSAGES_KEPT: Final = 100
SHUTDOWN_REASON: Final = "server shutdown"
RESTART_REASON: Final = "server restart"
REPLACED_REASON: Final = "replaced by a new connection"


class OutgoingEvent(Protocol):
    """A fleet event for the other instances (``fleet.events.FleetEvent``): encoded when read,
    here in the writer's thread."""

    @property
    def json(self) -> bytes: ...


_SEEN_SLOTS_MAX: Final = 600


class _LostRace(Exception):
    """Another writer inserted one of our new agents between our UPDATE and INSERT: retry."""


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    pending_agents: int  # agents with changes not yet committed (pending + in flight)
    pending_sessions: int  # history opens/closes not yet committed
    queued: int  # history opens/closes waiting for the next flush (admission control)
    flushes_total: int  # committed flushes
    rows_written_total: int
    last_flush_rows: int
    last_flush_seconds: float
    db_errors_total: int  # failed flush attempts
    busy_total: int  # agents put back for the next flush: another instance's flush held them
    backlog_since: float | None  # UNIX time the current outage started, None when healthy
    flushing: bool


class _AgentChange:
    """Coalesced agent-row changes of one agent within one batch."""

    __slots__ = ("connected_at", "disconnected_at", "reason", "snapshot", "status", "transport")

    def __init__(self) -> None:
        self.snapshot: AgentSnapshot | None = None
        self.status: str | None = None  # the last transition in this batch
        self.connected_at: float | None = None
        self.disconnected_at: float | None = None
        self.reason: str | None = None
        self.transport: str | None = None

    def merge_older(self, older: _AgentChange) -> None:
        """Fill what this (newer) change leaves unset from an older one."""
        if self.snapshot is None:
            self.snapshot = older.snapshot
        if self.status is None:
            self.status = older.status
        if self.connected_at is None:
            self.connected_at = older.connected_at
        if self.disconnected_at is None:
            self.disconnected_at = older.disconnected_at
            self.reason = older.reason
        if self.transport is None:
            self.transport = older.transport


class _Session:
    """One connection opened since the last committed flush (possibly already closed)."""

    __slots__ = (
        "connected_at", "disconnected_at", "reason", "remote_addr", "transport", "uid", "uncertain"
    )  # fmt: skip

    def __init__(self, uid: bytes, connected_at: float, remote_addr: str, transport: str) -> None:
        self.uid = uid
        self.connected_at = connected_at
        self.remote_addr = remote_addr
        self.transport = transport
        self.disconnected_at: float | None = None
        self.reason: str | None = None
        # True once a flush carrying this session failed: it may have committed after all, so it
        # is rewritten with ON CONFLICT instead of the plain COPY used for fresh sessions.
        self.uncertain = False


class _Batch:
    """Everything pending for one flush. Bounded by agents and sessions, not by messages."""

    __slots__ = (
        "agents", "busy", "closes", "custom_bytes", "custom_messages", "drift", "events",
        "inserted", "online", "refused", "seen", "sessions", "waiters",
    )  # fmt: skip

    def __init__(self) -> None:
        self.online: tuple[int, int] | None = None  # (ws, http) online when the batch was taken
        self.agents: dict[bytes, _AgentChange] = {}
        self.seen: dict[bytes, float] = {}
        # session_id -> session opened in this batch, in event order (dicts keep insertion order)
        self.sessions: dict[bytes, _Session] = {}
        # session_id -> (closed at, reason, uid) for sessions written by an earlier flush
        self.closes: dict[bytes, tuple[float, str, bytes]] = {}
        # flush() callers waiting for this batch to commit
        self.waiters: list[anyio.Event] = []
        # fleet events for the other instances, encoded and NOTIFYed in this batch's transaction
        self.events: list[OutgoingEvent] = []
        # set by the write: agents whose unproven session here the database refused (``_FOREIGN``)
        self.refused: list[bytes] = []
        # custom messages agents sent: (uid, at, capability, type, data), oldest first
        self.custom_messages: list[tuple[bytes, float, str, str, bytes]] = []
        self.custom_bytes = 0
        # set by the write: agents whose config drift changed (uid, drifted_at, applied hash,
        # effective hash), as the trigger of migration 0013 decided it
        self.drift: list[tuple[bytes, dt.datetime | None, str | None, str | None]] = []
        self.inserted = 0  # set by the write: agent rows it inserted (the fleet's total grows)
        # set by the write: agents whose rows another instance's flush held locked; their
        # changes and last-seen times were left out, for the next flush (``split_off``)
        self.busy: frozenset[bytes] = frozenset()

    def __bool__(self) -> bool:
        return bool(
            self.agents
            or self.seen
            or self.sessions
            or self.closes
            or self.events
            or self.custom_messages
        )

    @property
    def has_transitions(self) -> bool:
        return any(change.status is not None for change in self.agents.values())

    def change(self, uid: bytes) -> _AgentChange:
        change = self.agents.get(uid)
        if change is None:
            change = self.agents[uid] = _AgentChange()
        return change

    def close_session(self, session_id: bytes, uid: bytes, at: float, reason: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.disconnected_at = at
            session.reason = reason
        else:
            self.closes[session_id] = (at, reason, uid)

    def split_off(self, uids: Iterable[bytes], *, history: bool = False) -> _Batch:
        """A batch of these agents' changes and last-seen times (with ``history``, their
        sessions and closes too), in the order of ``uids`` and of the history, taken out of
        this one, with this one's waiters: what they wait for is committed when the split-off
        part is."""
        part = _Batch()
        taken = set()
        for uid in uids:
            taken.add(uid)
            change = self.agents.pop(uid, None)
            if change is not None:
                part.agents[uid] = change
            at = self.seen.pop(uid, None)
            if at is not None:
                part.seen[uid] = at
        if history:
            part.sessions = {k: s for k, s in self.sessions.items() if s.uid in taken}
            self.sessions = {k: s for k, s in self.sessions.items() if s.uid not in taken}
            part.closes = {k: c for k, c in self.closes.items() if c[2] in taken}
            self.closes = {k: c for k, c in self.closes.items() if c[2] not in taken}
        part.waiters, self.waiters = self.waiters, []
        return part

    def merge_older(self, older: _Batch) -> None:
        """Put a failed (older) batch back underneath this one; newer changes win. Its agents
        come first, as they came: a flush writes the oldest changes first (``_take``)."""
        agents = older.agents
        for uid, change in self.agents.items():
            prior = agents.get(uid)
            if prior is not None:
                change.merge_older(prior)
            agents[uid] = change  # an agent of both keeps the older one's place
        self.agents = agents
        _keep_newest(self.seen, older.seen)
        sessions = older.sessions  # older sessions first: history ids follow event order
        for failed in sessions.values():
            failed.uncertain = True
        sessions.update(self.sessions)
        self.sessions = sessions
        closes = older.closes
        for session_id, close in self.closes.items():
            session = sessions.get(session_id)
            if session is not None and session.disconnected_at is None:
                session.disconnected_at, session.reason, _ = close
            else:
                closes[session_id] = close
        self.closes = closes
        older.waiters.extend(self.waiters)
        self.waiters = older.waiters
        self.events = (older.events + self.events)[-_EVENTS_KEPT:]
        if self.online is None:
            self.online = older.online
        self._merge_custom_messages(older)

    def _merge_custom_messages(self, older: _Batch) -> None:
        """Older messages first; beyond the byte bound the oldest go."""
        messages = older.custom_messages + self.custom_messages
        size = older.custom_bytes + self.custom_bytes
        first = 0
        while size > CUSTOM_MESSAGE_BYTES_MAX:
            size -= len(messages[first][4])
            first += 1
        self.custom_messages = messages[first:]
        self.custom_bytes = size


def _keep_newest(seen: dict[bytes, float], other: dict[bytes, float]) -> None:
    """Merge ``other``'s last-seen times into ``seen``; the later time of an agent wins."""
    for uid, at in other.items():
        if seen.get(uid, -math.inf) < at:
            seen[uid] = at


class _RandomIds:
    """Random 16-byte ids, 256 per ``os.urandom`` call (a system call per connect showed)."""

    __slots__ = ("_buffer", "_next")

    def __init__(self) -> None:
        self._buffer = b""
        self._next = 0

    def take(self) -> bytes:
        start = self._next
        if start >= len(self._buffer):
            self._buffer = os.urandom(16 * 256)
            start = 0
        self._next = start + 16
        return self._buffer[start : start + 16]


class BatchWriter:
    """Coalesces agent state and connection history and writes it to Postgres in batches.

    One instance per server, owned by the root task group: ``await tg.start(writer.run)``.
    Producers (:meth:`connected`, :meth:`disconnected`, :meth:`status`, :meth:`seen`) are
    synchronous and O(1): they merge the change into the pending batch on the event loop, so a
    connection handler never waits and never does I/O. Memory is bounded by agents and sessions
    (never by messages); :attr:`overloaded` tells admission control when the history rows waiting
    for the database pass ``queue_max`` (a long outage, a reconnect storm), so that new
    connections are refused with 503 until the database catches up, instead of memory growing.
    """

    def __init__(
        self,
        db: Database,
        *,
        instance_id: str,
        flush_interval_s: float = 1.0,
        batch_max: int = 50_000,
        queue_max: int = 200_000,
        retry_max_s: float = 30.0,
        retry_initial_s: float = 0.5,
        drain_timeout_s: float = 10.0,
        online_counts: Callable[[], tuple[int, int]] | None = None,
        redactor: ConfigRedactor | None = None,
        seen_flush_interval_s: float = 0.0,
        flush_agents_max: int = 2_000,
    ) -> None:
        if (
            min(batch_max, queue_max, flush_agents_max) < 1
            or min(flush_interval_s, retry_max_s) <= 0
        ):
            raise ValueError(
                "flush_interval_s, batch_max, queue_max, retry_max_s and flush_agents_max "
                "must be > 0"
            )
        self._db = db
        self.instance_id = instance_id
        self._interval = flush_interval_s
        # Last-seen times wait in slots by uid hash, and each flush takes the next slot: every
        # agent's last_seen_at is written once per seen interval (at most that much behind),
        # and a heartbeating fleet is written a slice per flush instead of all of it at once.
        # A burst of one UPDATE per agent competes with the event loop for the two cores for a
        # few hundred ms; that burst was most of the round trip's p99 and p99.9 at 10k x 5 s
        # (docs/performance.md, "Where the tail came from"). At most _SEEN_SLOTS_MAX slots: a
        # longer seen interval writes each agent every _SEEN_SLOTS_MAX flushes (sooner).
        slots = round(seen_flush_interval_s / flush_interval_s)
        self._seen_slots: list[dict[bytes, float]] = [
            {} for _ in range(min(_SEEN_SLOTS_MAX, max(1, slots)))
        ]
        self._next_slot = 0
        self._batch_max = batch_max
        self._flush_agents_max = flush_agents_max  # per transaction (``_take``)
        self._queue_max = queue_max
        self._retry_initial = min(retry_initial_s, retry_max_s)
        self._retry_max = retry_max_s
        self._drain_timeout = drain_timeout_s
        self._online_counts = online_counts
        # Secrets in reported effective configs are cut out in the flush thread (``redaction``).
        self._redactor = redactor if redactor is not None else ConfigRedactor()
        self._pending = _Batch()
        self._inflight: _Batch | None = None
        self._inflight_sessions = 0
        self._open_session: dict[bytes, bytes] = {}  # uid -> session_id of its open connection
        self._session_ids = _RandomIds()
        self._wake = anyio.Event()  # early flush (batch_max, flush()) or close
        self._closed = anyio.Event()  # close(): ends an outage back-off at once
        self._closing = False
        # statistics
        self._flushes = 0
        self._rows = 0
        self._last_rows = 0
        self._last_seconds = 0.0
        self._errors = 0
        self._busy = 0
        self._failed_attempts = 0
        self._backlog_since: float | None = None
        self.custom_messages_dropped = 0
        # digests of the component sets stored already (``component_sets``); bounded
        self._known_component_sets: set[bytes] = set()
        # metrics: (rows, wall seconds, CPU seconds of the writer's thread) after each flush,
        # on the event loop, for the exporter's histograms. Plain numbers.
        self.on_flush: Callable[[int, float, float], None] | None = None
        # fleet events: called when a batch is taken; what it returns is sent to the
        # other instances with pg_notify in that batch's transaction (events.EventHub).
        self.event_outbox: Callable[[], Sequence[OutgoingEvent]] | None = None
        # identity: called on the event loop with the agents whose session here did not prove
        # its uid while another instance holds it with proof; their rows were left untouched.
        self.on_refused: Callable[[list[bytes]], object] | None = None
        # drift: called on the event loop, after the commit, with the agents whose config drift
        # changed in the flush (``_Batch.drift``).
        self.on_drift: Callable[[list[Any]], object] | None = None
        # cluster: how many other instances share the database. With any, agents move between
        # them (a storm over several workers), so a flush locks its agent rows first and
        # leaves those another instance's flush holds for its next flush
        # (``_LOCK_AGENTS_OR_SKIP``): it neither waits for that flush nor deadlocks with it.
        self.peers: Callable[[], int] | None = None

    # ----------------------------------------------------------------- producer side

    def connected(
        self,
        uid: bytes,
        *,
        at: float,
        remote_addr: str,
        transport: str,
        snapshot: AgentSnapshot | None = None,
    ) -> None:
        """An agent connected (WebSocket open, first HTTP poll): opens a history row."""
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}, not {transport!r}")
        if self._closing:
            return self._late("connect", uid)
        batch = self._pending
        previous = self._open_session.get(uid)
        if previous is not None:
            batch.close_session(previous, uid, at, REPLACED_REASON)
        session_id = self._session_ids.take()
        self._open_session[uid] = session_id
        batch.sessions[session_id] = _Session(uid, at, without_nul(remote_addr), transport)
        change = batch.change(uid)
        change.status = "online"
        change.connected_at = at
        change.transport = transport
        if snapshot is not None:
            change.snapshot = snapshot
        if batch.seen.get(uid, -math.inf) < at:
            batch.seen[uid] = at
        self._check_size(batch)

    def disconnected(self, uid: bytes, *, at: float, reason: str) -> None:
        """The agent's connection ended (closed, timed out, replaced, ...)."""
        if self._closing:
            return self._late("disconnect", uid)
        session_id = self._open_session.pop(uid, None)
        if session_id is None:
            # A second report of the same disconnect (timeout, then socket close): the first one
            # already recorded it.
            logger.debug("disconnect of %s without an open session ignored", uid.hex())
            return
        batch = self._pending
        slots = self._seen_slots
        last = slots[hash(uid) % len(slots)].pop(uid, None)
        if last is not None and batch.seen.get(uid, -math.inf) < last:
            batch.seen[uid] = last  # written with the offline row, not a slot's turn later
        reason = without_nul(reason)
        batch.close_session(session_id, uid, at, reason)
        change = batch.change(uid)
        change.status = "offline"
        change.disconnected_at = at
        change.reason = reason
        self._check_size(batch)

    def status(self, uid: bytes, snapshot: AgentSnapshot) -> None:
        """The agent's reported state changed; the last snapshot per agent wins."""
        if self._closing:
            return self._late("status", uid)
        batch = self._pending
        batch.change(uid).snapshot = snapshot
        self._check_size(batch)

    def custom_message(
        self, uid: bytes, *, at: float, capability: str, type: str, data: bytes
    ) -> None:
        """A ``CustomMessage`` the agent sent: stored (the newest ``CUSTOM_MESSAGES_KEPT`` per
        agent) with the next flush. While ``CUSTOM_MESSAGE_BYTES_MAX`` bytes of them wait for
        the database, newer ones are dropped and counted (``custom_messages_dropped``)."""
        if self._closing:
            return self._late("custom message", uid)
        batch = self._pending
        if batch.custom_bytes + len(data) > CUSTOM_MESSAGE_BYTES_MAX:
            self.custom_messages_dropped += 1
            return
        batch.custom_messages.append((uid, at, without_nul(capability), without_nul(type), data))
        batch.custom_bytes += len(data)

    def seen(self, uid: bytes, at: float) -> None:
        """A message arrived from the agent at ``at`` (UNIX seconds). O(1), never blocks."""
        slots = self._seen_slots
        seen = slots[hash(uid) % len(slots)]
        seen[uid] = at
        if len(seen) >= self._batch_max:
            self._wake.set()

    @property
    def overloaded(self) -> bool:
        """True while more history rows wait for the database than ``queue_max`` allows."""
        return len(self._pending.sessions) + self._inflight_sessions >= self._queue_max

    async def flush(self) -> None:
        """Wait until everything recorded before this call is committed (tests, admin tools).

        During a database outage this waits for the recovery; bound it with a cancel scope.
        """
        if self._closing:
            return  # the drain flushes (or has flushed) everything
        done = anyio.Event()
        self._pending.waiters.append(done)
        self._wake.set()
        await done.wait()

    def close(self) -> None:
        """Stop taking changes: ``run()`` drains, flushes and returns."""
        self._closing = True
        self._wake.set()
        self._closed.set()

    async def aclose(self) -> None:
        self.close()

    def _late(self, kind: str, uid: bytes) -> None:
        # The writer is shutting down: its drain closes every open session of this instance with
        # "server shutdown", which is what this late event would have recorded.
        logger.debug("writer closed; dropped late %s event for %s", kind, uid.hex())

    def _check_size(self, batch: _Batch) -> None:
        if len(batch.agents) >= self._batch_max or len(batch.sessions) >= self._batch_max:
            self._wake.set()

    def _take(self, *, every_slot: bool = False, whole: bool = False) -> _Batch:
        """The pending batch with the next slot of last-seen times (every slot: for
        ``flush()`` callers and the drain, who wait for everything recorded so far).

        Unless ``whole`` (the drain), at most ``flush_agents_max`` agents' changes, the oldest,
        with their history; the rest stays pending, with the flush() callers, for a flush right
        after this one. A worker's flush of its 16,000 disconnects in a storm held those rows,
        and the summary it publishes, for 10 s and more; in parts, each part's rows are free
        as soon as it commits. Each part publishes the online count less the agents that came
        online in the parts after it (``_online_written``).
        """
        batch = self._pending
        rest = None
        if not whole and len(batch.agents) > self._flush_agents_max:
            later = list(itertools.islice(batch.agents, self._flush_agents_max, None))
            rest = batch.split_off(later, history=True)
        if self._online_counts is not None and (rest is not None or batch.has_transitions):
            online = self._online_counts()
            batch.online = online if rest is None else _online_written(online, rest.agents.values())
        slots = self._seen_slots
        taken = range(len(slots)) if every_slot or batch.waiters else (self._next_slot,)
        self._next_slot = (self._next_slot + 1) % len(slots)
        for k in taken:
            slot, slots[k] = slots[k], {}
            if batch.seen:
                _keep_newest(batch.seen, slot)
            else:
                batch.seen = slot
        self._pending = _Batch() if rest is None else rest
        self._wake = anyio.Event()
        if rest is not None:
            self._wake.set()
        if self.event_outbox is not None:
            batch.events.extend(self.event_outbox())
        return batch

    def _merge_back(self, batch: _Batch) -> None:
        self._pending.merge_older(batch)

    # ----------------------------------------------------------------- service

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Flush until closed (or cancelled), then drain: final flush under a shield."""
        task_status.started()
        try:
            await self._flush_loop()
        finally:
            with anyio.CancelScope(shield=True):
                await self._drain()

    async def _flush_loop(self) -> None:
        while not self._closing:
            if self._backlog_since is None:
                # the next tick on the process's grid (ticks.py), or sooner when a batch fills;
                # soon when flush() callers wait on rows a busy flush put back (``busy``)
                now = anyio.current_time()
                deadline = next_tick(self._interval, now)
                if self._pending.waiters:
                    deadline = min(deadline, now + _BUSY_RETRY_S)
                with anyio.CancelScope(deadline=deadline):
                    await self._wake.wait()
            else:
                # Outage: back off; neither batch_max nor anything else shortens the wait.
                delay = min(
                    self._retry_max, self._retry_initial * 2 ** max(0, self._failed_attempts - 1)
                )
                with anyio.move_on_after(delay):
                    await self._closed.wait()
            if self._closing:
                return  # the drain does the final flush
            await self._flush_once()

    async def _flush_once(self, *, shutdown_at: float | None = None) -> bool:
        """Write the pending batch; on failure merge it back. True when committed."""
        batch = self._take(every_slot=shutdown_at is not None, whole=shutdown_at is not None)
        if not batch and shutdown_at is None:
            for waiter in batch.waiters:
                waiter.set()
            return True
        self._inflight = batch
        self._inflight_sessions = len(batch.sessions)
        done = False
        started = time.perf_counter()
        try:
            rows, cpu_s = await self._db.run_writer(
                partial(
                    _timed_write,
                    batch=batch,
                    instance_id=self.instance_id,
                    shutdown_at=shutdown_at,
                    redactor=self._redactor,
                    known_sets=self._known_component_sets,
                    lock_first=self.peers is not None and self.peers() > 0,
                )
            )
            done = True
        except (psycopg.Error, _LostRace) as exc:
            self._errors += 1
            self._failed_attempts += 1
            if self._backlog_since is None:
                self._backlog_since = time.time()
                logger.warning(
                    "database writes failing (%s: %s); keeping changes in memory and retrying",
                    type(exc).__name__,
                    str(exc).strip() or "no detail",
                )
            else:
                logger.debug("flush attempt %d failed: %s", self._failed_attempts, exc)
            return False
        finally:
            self._inflight = None
            self._inflight_sessions = 0
            if not done:  # failed, or cancelled while the thread ran: the outcome is unknown
                self._merge_back(batch)
        elapsed = time.perf_counter() - started
        self._flushes += 1
        self._rows += rows
        self._last_rows = rows
        self._last_seconds = elapsed
        if self._backlog_since is not None:
            logger.info(
                "database writes recovered after %.1f s and %d failed attempts",
                time.time() - self._backlog_since,
                self._failed_attempts,
            )
            self._backlog_since = None
            self._failed_attempts = 0
        if self.on_flush is not None:  # metrics
            self.on_flush(rows, elapsed, cpu_s)
        if batch.refused and self.on_refused is not None:
            self.on_refused(batch.refused)
        if batch.drift and self.on_drift is not None:
            self.on_drift(batch.drift)
        if batch.busy:
            self._busy += len(batch.busy)
            self._merge_back(batch.split_off(batch.busy))  # with the waiters
        for waiter in batch.waiters:
            waiter.set()
        return True

    async def _drain(self) -> None:
        """Final flush plus closing this instance's open sessions, bounded by drain_timeout_s."""
        self._closing = True
        shutdown_at = time.time()
        with anyio.move_on_after(self._drain_timeout) as scope:
            await self._mark_stopping(shutdown_at)
            delay = self._retry_initial
            while not await self._flush_once(shutdown_at=shutdown_at):
                await anyio.sleep(delay)
                delay = min(self._retry_max, delay * 2)
        if scope.cancelled_caught:
            stats = self.statistics()
            logger.error(
                "shutdown drain timed out after %.1f s: %d agents and %d sessions not written; "
                "the next start's repair_after_crash closes the open sessions",
                self._drain_timeout,
                stats.pending_agents,
                stats.pending_sessions,
            )
        else:
            logger.info("writer drained: open sessions of %s closed", self.instance_id)
        self._open_session.clear()
        for waiter in self._pending.waiters:  # nobody waits forever on a writer that has stopped
            waiter.set()
        self._pending.waiters.clear()

    async def _mark_stopping(self, shutdown_at: float) -> None:
        """Record that this run is stopping, in a transaction of its own before the drain's: if
        the drain then runs past its bound, whoever closes the rows it left (the next start, a
        survivor) closes them as the drain would have, not as a killed instance's."""
        try:
            await self._db.run_writer(
                partial(_mark_stopping, instance_id=self.instance_id, at=shutdown_at)
            )
        except psycopg.Error as exc:  # the drain's flush retries; the marker is a refinement
            logger.warning("could not record the shutdown's start: %s", str(exc).strip())

    async def repair_after_crash(self) -> int:
        """Close sessions a previous run of this instance left open; mark its agents offline.

        Call before accepting connections, and before the start is recorded (which clears the
        previous run's ``stopping_at``). A previous run that was stopping (its drain ran past
        its bound) is closed as its drain would have: "server shutdown" at the time the drain
        began. A run that was killed: "server restart", each session at its agent's last known
        ``last_seen_at`` (never before it started), or now when that is unknown. Returns the
        number of sessions closed.
        """
        closed, reason = await self._db.run(partial(_repair, instance_id=self.instance_id))
        if closed:
            logger.info("closed %d sessions left open by a previous run (%s)", closed, reason)
        return closed

    def statistics(self) -> WriterStatistics:
        pending = self._pending
        inflight = self._inflight
        agents = pending.agents.keys() | pending.seen.keys()
        for slot in self._seen_slots:
            agents |= slot.keys()
        sessions = len(pending.sessions) + len(pending.closes)
        if inflight is not None:
            agents |= inflight.agents.keys() | inflight.seen.keys()
            sessions += len(inflight.sessions) + len(inflight.closes)
        return WriterStatistics(
            pending_agents=len(agents),
            pending_sessions=sessions,
            queued=len(pending.sessions) + len(pending.closes),
            flushes_total=self._flushes,
            rows_written_total=self._rows,
            last_flush_rows=self._last_rows,
            last_flush_seconds=self._last_seconds,
            db_errors_total=self._errors,
            busy_total=self._busy,
            backlog_since=self._backlog_since,
            flushing=inflight is not None,
        )


# --------------------------------------------------------------------- SQL (worker thread)

_COUNT_NEW_AGENTS = "UPDATE fleet_stats SET agents_total = agents_total + %s"

# Every agent row a flush will change (more than its last-seen time), locked first. NO KEY
# UPDATE is the lock the UPDATEs take anyway (the key never changes); it does not hold up
# inserts of rows that refer to an agent.
#
# A flush skips the rows another instance's flush holds and leaves their changes for its next
# flush (``_Batch.busy``): in a storm over several workers, a worker writing its 16,000
# disconnects held the rows of agents already back on the other workers for seconds, and the
# other five workers' flushes, all of them, waited behind it (their rows, and the summary they
# publish, 20 s behind). Nobody waits on anybody in the lock pass, so it cannot deadlock; the
# statements after it touch only rows it locked, or new ones, or (last-seen times) rows they
# lock in the same way themselves (``_UPDATE_SEEN_OR_SKIP``).
_LOCK_AGENTS_OR_SKIP = """
SELECT a.instance_uid FROM agents AS a JOIN unnest(%s::bytea[]) AS b(uid) ON a.instance_uid = b.uid
FOR NO KEY UPDATE OF a SKIP LOCKED
"""
# Of the agents the lock pass did not return, those whose rows exist: the busy ones.
_EXISTING_AGENTS = "SELECT instance_uid FROM agents WHERE instance_uid = ANY(%s::bytea[])"
# The shutdown drain waits for busy rows instead (it has no next flush): in one order, so that
# two instances' drains queue instead of deadlocking.
_LOCK_AGENTS_IN_ORDER = """
SELECT count(*) FROM (
    SELECT 1 FROM agents AS a JOIN unnest(%s::bytea[]) AS b(uid) ON a.instance_uid = b.uid
    ORDER BY a.instance_uid FOR NO KEY UPDATE OF a
) AS locked
"""

# This instance's online agents as its registry counted them when the batch was taken: written
# with the transitions that led to them, so the fleet summary matches the rows at every commit.
_PUBLISH_ONLINE = """
UPDATE server_instances SET online_ws = %(ws)s, online_http = %(http)s
WHERE instance_id = %(instance)s
"""

_STAGING = """
SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS opamp_stage_agents (
    uid bytea, status text, status_at float8, connected_at float8, disconnected_at float8,
    reason text, transport text, last_seen float8, has_snapshot bool, capabilities int8,
    agent_name text, description text, health text, effective_config text,
    remote_config_status text, proven bool, keep_config bool, custom_capabilities text,
    components_digest bytea, config_hash text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS opamp_stage_seen (uid bytea, seen float8) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS opamp_stage_sessions (
    seq int4, session_id bytea, uid bytea, connected_at float8, disconnected_at float8,
    reason text, remote_addr text, transport text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS opamp_stage_closes (
    session_id bytea, closed_at float8, reason text
) ON COMMIT DELETE ROWS;
"""

_AGENT_TYPES = [
    "bytea", "text", "float8", "float8", "float8", "text", "text", "float8", "bool", "int8",
    "text", "text", "text", "text", "text", "bool", "bool", "text", "bytea", "text",
]  # fmt: skip

# A session here that did not prove the uid, while another instance holds the agent with a
# session that did: nothing of it is written to the agent's row (the writer reports it as
# refused, and the fleet handler ends it). The row is the proven session's.
_FOREIGN = (
    "(a.status = 'online' AND a.proven AND a.serving_instance <> %(instance)s AND NOT s.proven)"
)

# A transition applies only if it is not older than the last one stored (another instance may
# hold the agent by now); equal times re-apply, which makes a retried batch idempotent. An offline
# transition applies only from the instance that holds the agent: a late disconnect of an old
# session elsewhere must not take an agent offline that has moved on.
_APPLIES = (
    f"(s.status IS NOT NULL AND NOT {_FOREIGN} AND to_timestamp(s.status_at) >= "
    "COALESCE(GREATEST(a.last_connected_at, a.last_disconnected_at), '-infinity') AND "
    "(s.status = 'online' OR a.serving_instance IS NULL OR a.serving_instance = %(instance)s))"
)

_SNAPSHOT = f"(s.has_snapshot AND NOT {_FOREIGN})"

_UPDATE_AGENTS = f"""
WITH upd AS (
UPDATE agents AS a SET
    status = CASE WHEN {_APPLIES} THEN s.status ELSE a.status END,
    serving_instance = CASE WHEN {_APPLIES}
        THEN (CASE WHEN s.status = 'online' THEN %(instance)s END) ELSE a.serving_instance END,
    transport = CASE WHEN {_APPLIES} THEN COALESCE(s.transport, a.transport) ELSE a.transport END,
    last_connected_at = CASE WHEN {_FOREIGN} THEN a.last_connected_at
        ELSE GREATEST(a.last_connected_at, to_timestamp(s.connected_at)) END,
    last_disconnected_at = CASE WHEN {_APPLIES} AND s.disconnected_at IS NOT NULL
        THEN GREATEST(a.last_disconnected_at, to_timestamp(s.disconnected_at))
        ELSE a.last_disconnected_at END,
    disconnect_reason = CASE WHEN {_APPLIES} AND s.disconnected_at IS NOT NULL
        THEN s.reason ELSE a.disconnect_reason END,
    last_seen_at = CASE WHEN {_FOREIGN} THEN a.last_seen_at
        ELSE GREATEST(a.last_seen_at, to_timestamp(s.last_seen)) END,
    capabilities = CASE WHEN {_SNAPSHOT} THEN s.capabilities ELSE a.capabilities END,
    agent_name = CASE WHEN {_SNAPSHOT} THEN s.agent_name ELSE a.agent_name END,
    description = CASE WHEN {_SNAPSHOT} THEN s.description::jsonb ELSE a.description END,
    health = CASE WHEN {_SNAPSHOT} THEN s.health::jsonb ELSE a.health END,
    effective_config = CASE WHEN {_SNAPSHOT} AND NOT s.keep_config
        THEN s.effective_config::jsonb ELSE a.effective_config END,
    remote_config_status = CASE WHEN {_SNAPSHOT}
        THEN s.remote_config_status::jsonb ELSE a.remote_config_status END,
    custom_capabilities = CASE WHEN {_SNAPSHOT}
        THEN s.custom_capabilities::jsonb ELSE a.custom_capabilities END,
    available_components_digest = CASE WHEN {_SNAPSHOT}
        THEN s.components_digest ELSE a.available_components_digest END,
    effective_config_hash = CASE WHEN {_SNAPSHOT}
        THEN s.config_hash ELSE a.effective_config_hash END,
    proven = CASE WHEN {_APPLIES} THEN s.status = 'online' AND s.proven ELSE a.proven END,
    updated_at = now()
FROM opamp_stage_agents AS s, agents AS old
WHERE a.instance_uid = s.uid AND old.instance_uid = s.uid
RETURNING a.instance_uid, old.serving_instance AS was, a.serving_instance AS now,
    (s.status = 'online' AND NOT s.proven AND a.status = 'online' AND a.proven
        AND a.serving_instance <> %(instance)s) AS refused,
    -- the drift trigger's decision (migration 0013), when it changed
    a.drifted_at IS DISTINCT FROM old.drifted_at AS drift_changed, a.drifted_at,
    a.applied_config_hash, a.effective_config_hash
)
-- How many rows, and the agents this batch took over from another instance, by that instance:
-- it is told (NOTIFY) so that it ends its side (the old socket is most likely half-open).
SELECT (SELECT count(*) FROM upd),
    (SELECT json_object_agg(was, uids) FROM (
        SELECT was, array_agg(encode(instance_uid, 'hex')) AS uids FROM upd
        WHERE was IS NOT NULL AND was <> %(instance)s AND now = %(instance)s
        GROUP BY was) AS moved),
    (SELECT array_agg(instance_uid) FROM upd WHERE refused),
    (SELECT json_agg(json_build_array(encode(instance_uid, 'hex'), date_part('epoch', drifted_at),
        applied_config_hash, effective_config_hash)) FROM upd WHERE drift_changed)
"""

_INSERT_AGENTS = """
INSERT INTO agents (
    instance_uid, uid_text, status, serving_instance, transport, agent_name, last_seen_at,
    last_connected_at, last_disconnected_at, disconnect_reason, capabilities, description,
    health, effective_config, remote_config_status, proven, custom_capabilities,
    available_components_digest, effective_config_hash)
SELECT s.uid, encode(s.uid, 'hex')::uuid::text, COALESCE(s.status, 'online'),
    CASE WHEN COALESCE(s.status, 'online') = 'online' THEN %(instance)s END,
    s.transport, s.agent_name, to_timestamp(s.last_seen), to_timestamp(s.connected_at),
    to_timestamp(s.disconnected_at), s.reason, COALESCE(s.capabilities, 0), s.description::jsonb,
    s.health::jsonb, s.effective_config::jsonb, s.remote_config_status::jsonb,
    s.proven AND COALESCE(s.status, 'online') = 'online', s.custom_capabilities::jsonb,
    s.components_digest, s.config_hash
FROM opamp_stage_agents AS s
"""

# Agents whose stored effective config is the one in the batch (same hash of what was reported,
# redacted by the same policy): it is not redacted and written again (a reconnect, a restart).
_UNCHANGED_CONFIGS = """
SELECT a.instance_uid FROM agents AS a
JOIN unnest(%(uids)s::bytea[], %(hashes)s::text[]) AS c(uid, hash) ON a.instance_uid = c.uid
WHERE a.effective_config->>'sha256' = c.hash AND a.effective_config->>'redaction' = %(policy)s
"""

# A flush's statements join a small staging table to the big ones by key. Priced with Postgres'
# default random_page_cost (4.0, a spinning disk's), an index lookup per staged row looks dearer
# than scanning and hashing the whole table, and the planner did that for every flush whatever
# its size (the last-seen update: the fleet's `agents` table once a second per worker; the
# closes: every history row). The rows a flush touches are in memory or on SSD; priced so (1.1,
# or the server's own value if lower), the planner looks a batch up by key and still hashes when
# a batch is a good part of the table (a blip's closes). A cost, not a ban on hash joins: those
# would also hold inside the history table's statement trigger (the availability rollup), whose
# join of the closed rows' old and new versions would then be a nested loop, quadratic in the
# rows closed (`test_a_storm_of_closes_in_one_flush_is_not_quadratic`). For this transaction only.
_KEYED_LOOKUPS_PRICED = """
SELECT set_config('random_page_cost',
    least(current_setting('random_page_cost')::float8, 1.1)::text, true)
"""

# Both in one round trip (no parameters: one simple query of several statements).
_FLUSH_PREAMBLE = _STAGING + _KEYED_LOOKUPS_PRICED

# Which staged last-seen times a row takes: newer ones, and none while another instance serves
# the agent with proof. Shared by both last-seen statements.
_SEEN_TAKEN = """(a.last_seen_at IS NULL OR a.last_seen_at < to_timestamp(s.seen))
    AND NOT (a.status = 'online' AND a.proven AND a.serving_instance <> %(instance)s)"""

_UPDATE_SEEN = f"""
UPDATE agents AS a SET last_seen_at = to_timestamp(s.seen)
FROM (SELECT uid, seen FROM opamp_stage_seen ORDER BY uid) AS s
WHERE a.instance_uid = s.uid AND {_SEEN_TAKEN}
"""

# The same with other instances writing some of the same agents: the rows another flush holds
# are skipped, never waited for, and returned (their times go to the next flush); the others
# are locked and updated in the one statement, so that only the rows held come back.
_UPDATE_SEEN_OR_SKIP = f"""
WITH locked AS (
    SELECT a.instance_uid FROM agents AS a JOIN opamp_stage_seen AS s ON a.instance_uid = s.uid
    FOR NO KEY UPDATE OF a SKIP LOCKED
), updated AS (
    UPDATE agents AS a SET last_seen_at = to_timestamp(s.seen)
    FROM opamp_stage_seen AS s JOIN locked AS l ON l.instance_uid = s.uid
    WHERE a.instance_uid = s.uid AND {_SEEN_TAKEN}
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated), ARRAY(
    SELECT s.uid FROM opamp_stage_seen AS s JOIN agents AS a ON a.instance_uid = s.uid
    WHERE s.uid NOT IN (SELECT instance_uid FROM locked)
)
"""

_INSERT_SESSIONS = """
INSERT INTO agent_connection_history AS h (
    session_id, instance_uid, connected_at, disconnected_at, duration_s, disconnect_reason,
    remote_addr, transport, serving_instance)
SELECT encode(s.session_id, 'hex')::uuid, s.uid, to_timestamp(s.connected_at),
    to_timestamp(s.disconnected_at),
    CASE WHEN s.disconnected_at IS NOT NULL
        THEN GREATEST(0.0, s.disconnected_at - s.connected_at) END,
    s.reason, s.remote_addr, s.transport, %(instance)s
FROM opamp_stage_sessions AS s
ORDER BY s.seq
ON CONFLICT (session_id) DO UPDATE SET
    disconnected_at = EXCLUDED.disconnected_at,
    duration_s = EXCLUDED.duration_s,
    disconnect_reason = EXCLUDED.disconnect_reason
WHERE h.disconnected_at IS NULL AND EXCLUDED.disconnected_at IS NOT NULL
"""

_UPDATE_CLOSES = """
UPDATE agent_connection_history AS h SET
    disconnected_at = to_timestamp(c.closed_at),
    duration_s = GREATEST(0.0, c.closed_at - extract(epoch FROM h.connected_at)::float8),
    disconnect_reason = c.reason
FROM opamp_stage_closes AS c
WHERE h.session_id = encode(c.session_id, 'hex')::uuid AND h.disconnected_at IS NULL
"""

_CLOSE_INSTANCE_SESSIONS = """
UPDATE agent_connection_history SET
    disconnected_at = GREATEST(connected_at, to_timestamp(%(at)s)),
    duration_s = GREATEST(0.0, %(at)s - extract(epoch FROM connected_at)::float8),
    disconnect_reason = %(reason)s
WHERE serving_instance = %(instance)s AND disconnected_at IS NULL
"""

_OFFLINE_INSTANCE_AGENTS = """
UPDATE agents SET
    status = 'offline', serving_instance = NULL,
    last_disconnected_at = GREATEST(last_disconnected_at, to_timestamp(%(at)s)),
    disconnect_reason = %(reason)s, updated_at = now()
WHERE serving_instance = %(instance)s AND status = 'online'
"""

_MARK_STOPPING = """
UPDATE server_instances SET stopping_at = to_timestamp(%(at)s) WHERE instance_id = %(instance)s
"""

_STOPPING_AT = """
SELECT extract(epoch FROM stopping_at)::float8 FROM server_instances
WHERE instance_id = %(instance)s AND stopping_at IS NOT NULL
"""

_REPAIR_SESSIONS = """
UPDATE agent_connection_history AS h SET
    disconnected_at = e.ended_at,
    duration_s = GREATEST(0.0, extract(epoch FROM e.ended_at - h.connected_at)::float8),
    disconnect_reason = %(reason)s
FROM (
    SELECT o.id, COALESCE(GREATEST(a.last_seen_at, o.connected_at), now()) AS ended_at
    FROM agent_connection_history AS o
    LEFT JOIN agents AS a ON a.instance_uid = o.instance_uid AND a.last_seen_at IS NOT NULL
    WHERE o.serving_instance = %(instance)s AND o.disconnected_at IS NULL
) AS e
WHERE h.id = e.id
"""

_REPAIR_AGENTS = """
UPDATE agents SET
    status = 'offline', serving_instance = NULL,
    last_disconnected_at = GREATEST(last_disconnected_at, COALESCE(last_seen_at, now())),
    disconnect_reason = %(reason)s, updated_at = now()
WHERE serving_instance = %(instance)s AND status = 'online'
"""

_COPY_HISTORY = """
COPY agent_connection_history (
    session_id, instance_uid, connected_at, disconnected_at, duration_s, disconnect_reason,
    remote_addr, transport, serving_instance) FROM STDIN (FORMAT BINARY)
"""
_HISTORY_TYPES = [
    "uuid", "bytea", "timestamptz", "timestamptz", "float8", "text", "text", "text", "text"
]  # fmt: skip

_json = msgspec.json.Encoder()


def _json_text(value: JSONObject | list[str] | None) -> str | None:
    return None if value is None else _json.encode(value).decode("utf-8")


def _config_hashes(agents: dict[bytes, _AgentChange]) -> dict[bytes, str]:
    """The hash of each reported effective config of the batch (as the row's ``sha256``)."""
    out = {}
    for uid, change in agents.items():
        snap = change.snapshot
        if snap is not None and snap.effective_config is not None:
            out[uid] = effective_config_hash(snap.effective_config).hex()
    return out


def _unchanged_configs(
    cur: psycopg.Cursor[Any], hashes: dict[bytes, str], redactor: ConfigRedactor
) -> set[bytes]:
    """The agents of the batch whose effective config is stored already (one query)."""
    if not hashes:
        return set()
    params = {"uids": list(hashes), "hashes": list(hashes.values()), "policy": redactor.fingerprint}
    return {row[0] for row in cur.execute(_UNCHANGED_CONFIGS, params).fetchall()}


def _agent_row(
    uid: bytes,
    c: _AgentChange,
    last_seen: float | None,
    keep_config: bool,
    config_hash: str | None,
    redactor: ConfigRedactor,
    sets: dict[bytes, Any],
) -> tuple[Any, ...]:
    """One staging row; a reported component set is added to ``sets`` by its digest."""
    status_at = c.connected_at if c.status == "online" else c.disconnected_at
    snap = c.snapshot
    if snap is None:
        return (uid, c.status, status_at, c.connected_at, c.disconnected_at, c.reason,
                c.transport, last_seen, False, None, None, None, None, None, None, False,
                False, None, None, None)  # fmt: skip
    # protobuf -> JSON here, in the worker thread; redacted (see rows)
    row = snap.row(redactor, effective=not keep_config)
    digest = None
    if snap.available_components is not None:
        digest = component_set_digest(snap.available_components)
        sets[digest] = snap.available_components
    return (uid, c.status, status_at, c.connected_at, c.disconnected_at, c.reason,
            c.transport or snap.transport, last_seen, True,
            capabilities_to_bigint(snap.capabilities), row.agent_name,
            _json_text(row.description), _json_text(row.health),
            _json_text(row.effective_config), _json_text(row.remote_config_status),
            snap.proven, keep_config, _json_text(row.custom_capabilities),
            digest, config_hash)  # fmt: skip


def _store_component_sets(
    cur: psycopg.Cursor[Any], sets: dict[bytes, Any], known: set[bytes]
) -> None:
    """Each component set not stored yet, once (a fleet reports a few distinct builds)."""
    new = [(digest, available) for digest, available in sets.items() if digest not in known]
    if not new:
        return
    cur.executemany(
        "INSERT INTO component_sets (digest, agent_hash, components) VALUES (%s, %s, %s) "
        "ON CONFLICT (digest) DO NOTHING",
        [
            (digest, available.hash, _json_text(available_components_to_json(available)))
            for digest, available in new
        ],
    )
    if len(known) > 4096:
        known.clear()  # a bound; forgetting costs one more idempotent insert
    known.update(digest for digest, _ in new)


def _drift_changes(
    rows: list[list[Any]] | None,
) -> list[tuple[bytes, dt.datetime | None, str | None, str | None]]:
    """The drift changes of ``_UPDATE_AGENTS`` (uid hex, epoch or null, two hashes)."""
    return [
        (bytes.fromhex(uid), None if at is None else pg_time(at), a, e)
        for uid, at, a, e in rows or ()
    ]


def _write_agents(
    cur: psycopg.Cursor[Any],
    batch: _Batch,
    instance_id: str,
    redactor: ConfigRedactor,
    known_sets: set[bytes],
) -> int:
    """The batch's agent rows: COPY to staging, one UPDATE, an INSERT for the new ones, the
    takeover notices; refused agents are left on ``batch.refused``. Returns the rows written."""
    params = {"instance": instance_id}
    agents = batch.agents
    if batch.busy:
        agents = {uid: c for uid, c in agents.items() if uid not in batch.busy}
        if not agents:
            return 0
    seen = batch.seen
    hashes = _config_hashes(agents)
    unchanged = _unchanged_configs(cur, hashes, redactor)
    sets: dict[bytes, Any] = {}
    with cur.copy("COPY opamp_stage_agents FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_AGENT_TYPES)
        for uid, c in _yielding(agents.items(), _AGENT_ROWS_PER_YIELD):
            keep = uid in unchanged
            row = _agent_row(uid, c, seen.get(uid), keep, hashes.get(uid), redactor, sets)
            copy.write_row(row)
    _store_component_sets(cur, sets, known_sets)
    cur.execute(_UPDATE_AGENTS, params)
    updated, moved, refused, drift = cur.fetchone() or (0, None, None, None)
    batch.refused = refused or []
    batch.drift = _drift_changes(drift)
    inserted = 0
    if updated == 0:
        # All new (the common first flush of a fleet): a plain INSERT, no speculative
        # insertion. Another instance inserting one of them meanwhile raises a unique
        # violation and the batch is retried, then updating that row.
        cur.execute(_INSERT_AGENTS, params)
        inserted = cur.rowcount
    elif updated < len(agents):
        cur.execute(_INSERT_AGENTS + "ON CONFLICT (instance_uid) DO NOTHING", params)
        inserted = cur.rowcount
    if updated + inserted != len(agents):
        raise _LostRace(f"{len(agents) - updated - inserted} agent rows appeared concurrently")
    batch.inserted = inserted
    for previous, uids in (moved or {}).items():
        for payload in encode_notices("takeover", instance_id, uids=uids):
            cur.execute("SELECT pg_notify(%s, %s)", (channel_for(previous), payload))
    return updated + inserted


_T = TypeVar("_T")

#: Rows encoded between two releases of the interpreter lock (about 0.1-0.2 ms of work): the
#: event loop, which shares the lock with this thread, waits at most that long for it instead
#: of a whole switch interval (5 ms) while a flush encodes thousands of rows.
_ROWS_PER_YIELD: Final = 128
_AGENT_ROWS_PER_YIELD: Final = 16  # an agent's full state goes through protobuf -> JSON
#: The longest this thread keeps the lock after a release that took long to come back.
_SHARE_MAX_S: Final = 0.005
_RELEASE: Final = partial(time.sleep, 0)


def _yielding(
    items: Iterable[_T],
    every: int = _ROWS_PER_YIELD,
    *,
    clock: Callable[[], float] = time.perf_counter,
    release: Callable[[], object] = _RELEASE,
) -> Iterator[_T]:
    """``items``, releasing the interpreter lock every ``every`` of them (``time.sleep(0)``: a
    thread waiting for the lock gets it at once; nobody waiting, it costs a system call).

    When the lock took a while to come back (the event loop was busy: asked for it, a thread
    keeps it up to a switch interval), the next release waits as long, up to ``_SHARE_MAX_S``:
    an even share of the interpreter while both are busy. Released every few rows whatever
    happened, a flush got about a tenth of it during a reconnect storm, when the loop is busy
    and the flushes are large."""
    hold_until = -math.inf
    for n, item in enumerate(items, 1):
        yield item
        if n % every:
            continue
        released = clock()
        if released < hold_until:
            continue
        release()
        back = clock()
        hold_until = back + min(back - released, _SHARE_MAX_S)


def _timed_write(conn: Any, **kw: Any) -> tuple[int, float]:
    """``_write_batch`` and the CPU time its thread spent: about the time it held the
    interpreter lock the event loop also needs (psycopg waits on the network without it)."""
    started = time.thread_time()
    rows = _write_batch(conn, **kw)
    return rows, time.thread_time() - started


def _write_batch(
    conn: psycopg.Connection[Any],
    *,
    batch: _Batch,
    instance_id: str,
    shutdown_at: float | None = None,
    redactor: ConfigRedactor | None = None,
    known_sets: set[bytes] | None = None,
    lock_first: bool = False,
) -> int:
    """Blocking: write one batch in the caller's transaction; returns the rows written.

    Order matters: agent rows first (a new agent's row exists before its history), then new
    sessions (in event order), then closes of sessions written earlier, then ``last_seen_at``;
    the rows shared by every instance last. ``lock_first`` (other instances write some of
    the same agents): lock the batch's agent rows first, leaving out those another flush holds
    (``batch.busy``) or, in the shutdown drain, waiting for them in uid order.
    """
    params = {"instance": instance_id}
    rows = 0
    with conn.cursor() as cur:
        cur.execute(_FLUSH_PREAMBLE)
        agents = batch.agents
        seen = batch.seen
        batch.inserted = 0
        batch.busy = frozenset()
        # Skipping rows another flush holds; the shutdown drain waits for them instead.
        skip_busy = lock_first and shutdown_at is None
        # Last-seen times alone are locked as they are written (_UPDATE_SEEN_OR_SKIP): a lock
        # pass over a flush's thousand heartbeats cost its thread 3.5 ms of CPU.
        if lock_first:
            uids = list(agents) if skip_busy else list(agents.keys() | seen.keys())
            if uids:
                batch.busy = _lock_agents(cur, uids, skip_busy=skip_busy)
        busy = batch.busy
        if agents:
            redactor = redactor or ConfigRedactor()
            rows += _write_agents(cur, batch, instance_id, redactor, known_sets or set())
        if batch.sessions:
            rows += _write_sessions(cur, batch.sessions, instance_id)
        if batch.closes:
            with cur.copy("COPY opamp_stage_closes FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["bytea", "float8", "text"])
                write = copy.write_row
                for session_id, (closed_at, reason, _) in _yielding(batch.closes.items()):
                    write((session_id, closed_at, reason))
            cur.execute(_UPDATE_CLOSES)
            rows += cur.rowcount
        if seen:
            staged = 0
            with cur.copy("COPY opamp_stage_seen FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["bytea", "float8"])
                write = copy.write_row
                for uid, at in _yielding(seen.items()):
                    if uid not in agents and uid not in busy:
                        write((uid, at))
                        staged += 1
            if staged and skip_busy:
                [(updated, held)] = cur.execute(_UPDATE_SEEN_OR_SKIP, params).fetchall()
                rows += updated
                batch.busy = busy | frozenset(held)  # not in ``agents``: counts stay right
            elif staged:
                cur.execute(_UPDATE_SEEN, params)
                rows += cur.rowcount
        if batch.custom_messages:
            rows += _write_custom_messages(cur, batch.custom_messages, instance_id)
        if batch.events:
            for payload in encode_event_notices(instance_id, [e.json for e in batch.events]):
                cur.execute("SELECT pg_notify(%s, %s)", (FLEET_CHANNEL, payload))
        if shutdown_at is not None:
            shutdown = {"instance": instance_id, "at": shutdown_at, "reason": SHUTDOWN_REASON}
            cur.execute(_CLOSE_INSTANCE_SESSIONS, shutdown)
            rows += cur.rowcount
            cur.execute(_OFFLINE_INSTANCE_AGENTS, shutdown)
            rows += cur.rowcount
        # The rows every instance writes (the fleet's total, this instance's online counts,
        # which its lease renewal updates too) last: each is locked for the commit only, not
        # for the whole flush.
        if batch.inserted:
            cur.execute(_COUNT_NEW_AGENTS, (batch.inserted,))
        if batch.online is not None:
            ws, http = _online_written(batch.online, (agents[u] for u in busy if u in agents))
            cur.execute(_PUBLISH_ONLINE, {"instance": instance_id, "ws": ws, "http": http})
    return rows


def _lock_agents(cur: psycopg.Cursor[Any], uids: list[bytes], skip_busy: bool) -> frozenset[bytes]:
    """Lock the rows of ``uids`` that exist; returns those another transaction holds (skipped
    with ``skip_busy``, else waited for)."""
    if not skip_busy:
        cur.execute(_LOCK_AGENTS_IN_ORDER, (uids,))
        return frozenset()
    locked = {row[0] for row in cur.execute(_LOCK_AGENTS_OR_SKIP, (uids,))}
    if len(locked) == len(uids):
        return frozenset()
    others = [uid for uid in uids if uid not in locked]  # busy, or new agents
    return frozenset(row[0] for row in cur.execute(_EXISTING_AGENTS, (others,)))


def _online_written(online: tuple[int, int], unwritten: Iterable[_AgentChange]) -> tuple[int, int]:
    """The online counts to publish with a transaction that leaves the ``unwritten`` changes
    for later (busy rows, the parts after it): without the agents that came online in those,
    whose rows do not say so yet. An agent counts once its connection is live and its row says
    so: an offline change not written yet is not counted either (the connection has ended).
    During a storm the summary is then a flush or so behind the rows, not ahead of them.

    An agent back online after a disconnect in the same unwritten changes (a blip: dropped and
    back before its offline row was written) still counts: its row says online from before."""
    ws, http = online
    for change in unwritten:
        if change.status == "online" and change.disconnected_at is None:
            if change.transport == "http":
                http -= 1
            else:
                ws -= 1
    return max(0, ws), max(0, http)


_PRUNE_CUSTOM_MESSAGES = """
DELETE FROM agent_custom_messages AS m USING (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY instance_uid ORDER BY id DESC) AS n
        FROM agent_custom_messages
        WHERE instance_uid = ANY(%(uids)s) AND direction = 'from_agent'
    ) AS ranked WHERE n > %(keep)s
) AS old
WHERE m.id = old.id
"""


def _write_custom_messages(
    cur: psycopg.Cursor[Any],
    messages: list[tuple[bytes, float, str, str, bytes]],
    instance_id: str,
) -> int:
    """Agents' custom messages, in the order they came; each agent keeps its newest
    ``CUSTOM_MESSAGES_KEPT``."""
    with cur.copy(
        "COPY agent_custom_messages (instance_uid, direction, at, capability, type, data, "
        "serving_instance) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["bytea", "text", "timestamptz", "text", "text", "bytea", "text"])
        for uid, at, capability, kind, data in messages:
            copy.write_row((uid, "from_agent", pg_time(at), capability, kind, data, instance_id))
    uids = list({uid for uid, *_ in messages})
    cur.execute(_PRUNE_CUSTOM_MESSAGES, {"uids": uids, "keep": CUSTOM_MESSAGES_KEPT})
    return len(messages)


_PG_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_PG_EPOCH_S: Final = 946_684_800.0  # 2000-01-01 in UNIX seconds
_MICROSECOND: Final = dt.timedelta(microseconds=1)


def pg_time(at: float) -> dt.datetime:
    """The timestamp Postgres' ``to_timestamp(at)`` gives, to the microsecond.

    Times reach Postgres two ways: as floats through ``to_timestamp`` in a statement (last
    seen, agent rows, closes) and as datetimes COPYed straight into the table (new history
    rows). ``datetime.fromtimestamp`` rounds the fraction of the float, Postgres the float
    minus its epoch: for one float in many thousands they differ by a microsecond, and an
    agent's ``last_seen_at`` read a microsecond before its session's ``connected_at``, both
    from the same clock read. This is Postgres' own arithmetic (float8_timestamptz)."""
    return _PG_EPOCH + round((at - _PG_EPOCH_S) * 1e6) * _MICROSECOND


def _write_sessions(
    cur: psycopg.Cursor[Any], sessions: dict[bytes, _Session], instance_id: str
) -> int:
    """History rows of sessions opened since the last commit, in event order.

    Sessions from a failed flush (``uncertain``, always older than the others) are upserted on
    ``session_id`` through staging; fresh ones cannot exist yet and are COPYed straight into the
    table, which is what raw COPY costs. A duplicate there (impossible by construction) would
    fail the flush, mark the batch uncertain and so heal on the retry.
    """
    rows = 0
    if any(s.uncertain for s in sessions.values()):
        uncertain = [(sid, s) for sid, s in sessions.items() if s.uncertain]
        with cur.copy("COPY opamp_stage_sessions FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "bytea", "bytea", "float8", "float8", "text", "text", "text"])
            write = copy.write_row
            for seq, (session_id, s) in enumerate(uncertain):
                write((seq, session_id, s.uid, s.connected_at, s.disconnected_at, s.reason,
                       s.remote_addr, s.transport))  # fmt: skip
        cur.execute(_INSERT_SESSIONS, {"instance": instance_id})
        rows += cur.rowcount
        if all(s.uncertain for s in sessions.values()):
            return rows
    as_uuid = uuid.UUID
    with cur.copy(_COPY_HISTORY) as copy:
        copy.set_types(_HISTORY_TYPES)
        write = copy.write_row
        for session_id, s in _yielding(sessions.items()):
            if s.uncertain:
                continue
            end = s.disconnected_at
            write((as_uuid(bytes=session_id), s.uid, pg_time(s.connected_at),
                   None if end is None else pg_time(end),
                   None if end is None else max(0.0, end - s.connected_at),
                   s.reason, s.remote_addr, s.transport, instance_id))  # fmt: skip
            rows += 1
    return rows


def _mark_stopping(conn: psycopg.Connection[Any], *, instance_id: str, at: float) -> None:
    conn.execute(_MARK_STOPPING, {"instance": instance_id, "at": at})


def _repair(conn: psycopg.Connection[Any], *, instance_id: str) -> tuple[int, str]:
    row = conn.execute(_STOPPING_AT, {"instance": instance_id}).fetchone()
    stopping_at = None if row is None else row[0]
    with conn.cursor() as cur:
        if stopping_at is None:  # killed
            params: dict[str, Any] = {"instance": instance_id, "reason": RESTART_REASON}
            cur.execute(_REPAIR_SESSIONS, params)
            closed = cur.rowcount
            cur.execute(_REPAIR_AGENTS, params)
            return closed, RESTART_REASON
        params = {"instance": instance_id, "at": stopping_at, "reason": SHUTDOWN_REASON}
        cur.execute(_CLOSE_INSTANCE_SESSIONS, params)
        closed = cur.rowcount
        cur.execute(_OFFLINE_INSTANCE_AGENTS, params)
        return closed, SHUTDOWN_REASON
