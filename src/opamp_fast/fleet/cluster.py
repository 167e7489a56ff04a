"""One fleet across many instances on one Postgres: leases, notices, and the survivors' duty.

Postgres is the shared source of truth and the bus; nothing else is shared.

* **Lease.** Every instance renews ``server_instances.last_heartbeat_at`` every ``lease_s / 3``.
  An instance whose lease ran out (killed, host lost, cut off) is declared lost by a survivor:
  its open history rows close with "server lost" at its last renewal, its agents go offline
  unless they already reconnected elsewhere, its published online counts drop to zero. So is
  one that stopped with rows its shutdown drain did not close in time, with "server shutdown"
  at the time the drain began (``stopping_at``). The row
  lock (``FOR UPDATE SKIP LOCKED``) makes exactly one survivor do it. A survivor only judges
  others after its own renewals have succeeded for a whole lease: after a database outage every
  lease looks expired, and each live instance gets the time to renew first. Renewals use a
  connection of their own, reconnected at once, not the pool (whose reconnection backs off for
  longer than a lease after an outage).
* **Notices** (``storage.notices``): each instance LISTENs on its own channel, on a dedicated
  connection in a thread of its own. ``takeover`` (sent by the writer of the instance an agent
  moved to, in the transaction that recorded it) ends the agent here; ``disconnect`` (an
  operator action routed to the instance holding the agent) closes its connection; ``forget``
  (sent with the deletion of agents) drops them from memory; ``hello``
  (sent with a newcomer's first renewal, before it serves) tells the others to forward their
  fleet events, which an instance alone does not.
* **An instance declared lost while it still runs** (it was cut off from the database for longer
  than the lease) drops its connections when it finds out: its agents reconnect and are
  registered afresh, so the rows are right again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import psycopg
from anyio.abc import TaskStatus

from ..storage.command_queries import CUSTOM_MESSAGE_NOTICE, GROUP_RESTARTS_NOTICE, RESTART_NOTICE
from ..storage.notices import FLEET_CHANNEL, channel_for, encode_notices, event_notice_prefix
from ..ticks import sleep_to_tick
from . import reasons

if TYPE_CHECKING:
    from ..storage import Database
    from .events import EventHub
    from .handler import FleetHandler

__all__ = ["Cluster", "LostInstance"]

logger = logging.getLogger(__name__)

COMMAND_NOTICES = frozenset({RESTART_NOTICE, CUSTOM_MESSAGE_NOTICE, GROUP_RESTARTS_NOTICE})


@dataclass(frozen=True, slots=True)
class LostInstance:
    instance_id: str
    ended_at: Any  # its last renewal, or when its shutdown began
    reason: str
    sessions_closed: int
    agents_offline: int


_RENEW = """
UPDATE server_instances SET last_heartbeat_at = now(), lease_s = %(lease)s
WHERE instance_id = %(me)s
RETURNING lost_at IS NOT NULL, (
    SELECT count(*) FROM server_instances p
    WHERE p.instance_id <> %(me)s AND p.stopped_at IS NULL AND p.lost_at IS NULL
      AND p.last_heartbeat_at >= now() - make_interval(secs => p.lease_s))
"""

# Lost: its lease ran out while it ran (killed, cut off), or it stopped with open rows its
# shutdown drain did not close in time. The second kind is closed as the drain would have:
# "server shutdown" at the time the drain began (its next start does the same, if it comes).
_FIND_LOST = """
SELECT instance_id, COALESCE(stopping_at, last_heartbeat_at), stopping_at IS NOT NULL
FROM server_instances AS i
WHERE lost_at IS NULL AND instance_id <> %(me)s
  AND last_heartbeat_at < now() - make_interval(secs => lease_s)
  AND (stopped_at IS NULL OR EXISTS (
      SELECT 1 FROM agent_connection_history AS h
      WHERE h.serving_instance = i.instance_id AND h.disconnected_at IS NULL))
FOR UPDATE OF i SKIP LOCKED
"""

_CLOSE_LOST_SESSIONS = """
UPDATE agent_connection_history SET
    disconnected_at = GREATEST(connected_at, %(at)s),
    duration_s = GREATEST(0.0, extract(epoch FROM GREATEST(connected_at, %(at)s) - connected_at)),
    disconnect_reason = %(reason)s
WHERE serving_instance = %(lost)s AND disconnected_at IS NULL
"""

# The lost instance's agents, locked in uid order before anything else: the order in which
# every writer locks agent rows (storage.batch_writer), so that a survivor taking some of them
# over at the same moment waits instead of deadlocking with the reaper.
_LOCK_LOST_AGENTS = """
SELECT count(*) FROM (
    SELECT 1 FROM agents WHERE serving_instance = %(lost)s AND status = 'online'
    ORDER BY instance_uid FOR UPDATE
) AS locked
"""

_OFFLINE_LOST_AGENTS = """
UPDATE agents SET
    status = 'offline', serving_instance = NULL,
    last_disconnected_at = GREATEST(last_disconnected_at, %(at)s),
    disconnect_reason = %(reason)s, updated_at = now()
WHERE serving_instance = %(lost)s AND status = 'online'
"""

_MARK_LOST = """
UPDATE server_instances SET lost_at = now(), lost_by = %(me)s, online_ws = 0, online_http = 0
WHERE instance_id = %(lost)s
"""


class _ThreadStop:
    """A stop flag that a thread blocked on a socket wakes up for: ``set`` also writes a byte to
    a pipe that :meth:`wait_readable` polls beside the socket. (The notice listener used to
    wake twice a second to look at a flag: in every worker, for nothing.)"""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._read, self._write = os.pipe()

    def set(self) -> None:
        if not self._flag.is_set():
            self._flag.set()
            os.write(self._write, b"x")

    def is_set(self) -> bool:
        return self._flag.is_set()

    def wait(self, timeout: float) -> bool:
        return self._flag.wait(timeout)

    def wait_readable(self, fd: int) -> bool:
        """Block until ``fd`` has input (True) or the flag is set (False). ``poll``, not
        ``select``: the socket's number may be past 1024 in a process holding 20,000 agents."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._read, select.POLLIN)
        if not self._flag.is_set():
            poller.poll()  # no timeout: one of the two wakes it
        return not self._flag.is_set()

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class Cluster:
    """This instance's lease, its notice listener, and the reaping of lost instances."""

    def __init__(
        self,
        db: Database,
        fleet: FleetHandler,
        *,
        instance_id: str,
        lease_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        events: EventHub | None = None,
    ) -> None:
        self._db = db
        self._events = events  # fleet events: forwarded ones, and lost instances
        self._fleet = fleet
        self.instance_id = instance_id
        self.lease_s = lease_s
        self._clock = clock
        self._db_ok_since: float | None = None
        self._lease_conn: psycopg.Connection[Any] | None = None
        self._lease_lock = anyio.CapacityLimiter(1)
        self.lost_reaped: list[LostInstance] = []
        self.notices_total = 0
        self.peers = 0  # other live instances, as of the last renewal (or a ``hello``)
        self._hello_due = True  # tell the others at once that we are here (first renewal)
        self.listening = anyio.Event()  # set once LISTEN is in place (tests, readiness)
        # ``configs`` notices: the configuration directory changed; reload it.
        self.on_configs: Callable[[dict[str, Any]], None] | None = None
        # ``packages`` notices: these agents' package offers changed; reload them.
        self.on_packages: Callable[[dict[str, Any]], None] | None = None
        # ``certificates`` notices: an agent's certificate was issued (its serial), or this
        # instance is asked to rotate it.
        self.on_certificates: Callable[[dict[str, Any]], None] | None = None
        # ``restart``, ``custom_message`` and ``group_restarts`` notices (``fleet.commands``).
        self.on_commands: Callable[[dict[str, Any]], None] | None = None
        # ``forget`` notices: these agents were deleted (by an operator, or expiry); (uids, by).
        self.on_forget: Callable[[list[bytes], str], None] | None = None

    # -- sending ----------------------------------------------------------------------------
    async def notify(self, instance_id: str, kind: str, *, uids: list[str], **fields: Any) -> None:
        """Send a notice to one instance (committed at once)."""
        channel = channel_for(instance_id)
        payloads = list(encode_notices(kind, self.instance_id, uids=uids, **fields))

        def send(conn: psycopg.Connection[Any]) -> None:
            for payload in payloads:
                conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

        await self._db.run(send)

    # -- the service ------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        token = anyio.lowlevel.current_token()
        stop = _ThreadStop()
        listener = threading.Thread(
            target=self._listen_forever, args=(token, stop), name="opamp-fast-notices", daemon=True
        )
        listener.start()
        try:
            # The first renewal before "started": from the first agent on, this instance knows
            # whether anyone else listens for its events (and the others know of it).
            await self.renew_and_reap()
            task_status.started()
            await self._lease_forever()
        finally:
            stop.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(listener.join, 5.0)
                await anyio.to_thread.run_sync(self._close_lease_conn)
            if not listener.is_alive():  # (else it still polls the pipe: leave it open)
                stop.close()

    async def _lease_forever(self) -> None:
        renew_s = max(0.2, self.lease_s / 3)
        while True:
            await sleep_to_tick(renew_s)
            await self.renew_and_reap()

    async def renew_and_reap(self) -> list[LostInstance]:
        """One lease round: renew ours; if ours held for a whole lease, reap the lost ones."""
        now = self._clock()
        try:
            declared_lost, peers = await self._on_lease_conn(self._renew)
        except psycopg.Error as exc:
            if self._db_ok_since is not None:
                logger.warning("lease renewal failed (%s); retrying", str(exc).strip())
            self._db_ok_since = None
            return []
        self._hello_due = False
        self._set_peers(peers)
        if self._db_ok_since is None:
            self._db_ok_since = now
        if declared_lost:
            await self._resurrect()
        if now - self._db_ok_since < self.lease_s:
            return []
        try:
            lost: list[LostInstance] = await self._on_lease_conn(self._reap)
        except psycopg.Error as exc:
            logger.warning("could not reap lost instances: %s", str(exc).strip())
            return []
        for instance in lost:
            self._announce_lost(instance.instance_id, self.instance_id)
            logger.warning(
                "instance %s lost (%s at %s): closed %d sessions, %d agents offline",
                instance.instance_id,
                instance.reason,
                instance.ended_at,
                instance.sessions_closed,
                instance.agents_offline,
            )
        self.lost_reaped.extend(lost)
        return lost

    async def _on_lease_conn(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        def work() -> Any:
            conn = self._lease_conn
            if conn is None or conn.closed:
                conn = self._lease_conn = psycopg.connect(
                    self._db.url, connect_timeout=max(1, int(self.lease_s / 3))
                )
            try:
                with conn.transaction():
                    return fn(conn)
            except psycopg.Error:
                self._close_lease_conn()
                raise

        return await anyio.to_thread.run_sync(work, limiter=self._lease_lock)

    def _close_lease_conn(self) -> None:
        conn, self._lease_conn = self._lease_conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _renew(self, conn: psycopg.Connection[Any]) -> tuple[bool, int]:
        """Renew our lease (sending ``hello`` when due); (declared lost, live peers)."""
        row = conn.execute(_RENEW, {"lease": self.lease_s, "me": self.instance_id}).fetchone()
        if self._hello_due:
            for payload in encode_notices("hello", self.instance_id):
                conn.execute("SELECT pg_notify(%s, %s)", (FLEET_CHANNEL, payload))
        return (bool(row[0]), int(row[1])) if row else (False, 0)

    def _set_peers(self, peers: int) -> None:
        """Fleet events are forwarded only while another instance may listen: an instance alone
        neither encodes nor NOTIFYs them (a newcomer says ``hello`` before it serves, so the
        others forward from then on; one that stops or is lost is counted out at the next
        renewal)."""
        self.peers = peers
        if self._events is not None:
            self._events.forwarding = peers > 0

    def _reap(self, conn: psycopg.Connection[Any]) -> list[LostInstance]:
        lost = []
        found = conn.execute(_FIND_LOST, {"me": self.instance_id}).fetchall()
        for instance_id, last, stopping in found:
            reason = reasons.SERVER_SHUTDOWN if stopping else reasons.SERVER_LOST
            params = {"lost": instance_id, "at": last, "reason": reason}
            conn.execute(_LOCK_LOST_AGENTS, params)
            closed = conn.execute(_CLOSE_LOST_SESSIONS, params).rowcount
            offline = conn.execute(_OFFLINE_LOST_AGENTS, params).rowcount
            conn.execute(_MARK_LOST, {"lost": instance_id, "me": self.instance_id})
            for payload in encode_notices("instance_lost", self.instance_id, lost=instance_id):
                conn.execute("SELECT pg_notify(%s, %s)", (FLEET_CHANNEL, payload))
            lost.append(LostInstance(instance_id, last, reason, closed, offline))
        return lost

    async def _resurrect(self) -> None:
        """We were declared lost while running: our rows were closed. Drop our connections (the
        agents reconnect and are registered afresh) and take our place back."""
        closed = self._fleet.close_all(reason=reasons.SERVER_LOST, accepting=True)
        logger.error(
            "this instance was declared lost (cut off from the database for more than the "
            "%.0f s lease): dropped %d connections so that agents reconnect",
            self.lease_s,
            closed,
        )

        def rejoin(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE server_instances SET lost_at = NULL, lost_by = NULL, online_ws = 0, "
                "online_http = 0 WHERE instance_id = %s",
                (self.instance_id,),
            )

        await self._db.run(rejoin)
        self._hello_due = True  # the others counted us out

    def _announce_lost(self, lost: str, by: str | None) -> None:
        # Every instance learns of a loss by itself (the reaper directly, the others from its
        # notice), so the event is not forwarded.
        if self._events is not None:
            data = {"instance": lost, "by": by}
            self._events.publish("instance.lost", None, data, forward=False)

    # -- receiving --------------------------------------------------------------------------
    def _listen_forever(self, token: anyio.lowlevel.EventLoopToken, stop: _ThreadStop) -> None:
        """Thread: LISTEN on our channel and the fleet's; hand each notice to the loop, one at a
        time (the loop's pace is the back-pressure); reconnect with backoff."""
        delay = 0.5
        own_events = event_notice_prefix(self.instance_id)
        while not stop.is_set():
            try:
                with psycopg.connect(self._db.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {channel_for(self.instance_id)}")
                    conn.execute(f"LISTEN {FLEET_CHANNEL}")
                    with contextlib.suppress(RuntimeError):
                        anyio.from_thread.run_sync(self.listening.set, token=token)
                    delay = 0.5
                    while True:
                        for notice in conn.notifies(timeout=0):  # what has arrived, at once
                            if notice.payload.startswith(own_events):
                                continue  # our own events, back from the fleet channel
                            anyio.from_thread.run_sync(self.on_notice, notice.payload, token=token)
                        if not stop.wait_readable(conn.fileno()):
                            return
            except psycopg.Error as exc:
                if stop.is_set():
                    return
                logger.warning("notice listener lost its connection (%s); reconnecting", exc)
            except RuntimeError:  # the event loop has ended
                return
            stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def on_notice(self, payload: str) -> None:
        """Act on one notice (on the event loop)."""
        self.notices_total += 1
        try:
            notice = json.loads(payload)
            kind = notice["kind"]
            sender = notice.get("from")
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed notice: %.200r", payload)
            return
        if sender == self.instance_id:
            return
        uids = [bytes.fromhex(u) for u in notice.get("uids", ())]
        if kind == "takeover":
            released = self._fleet.release(uids, reason=reasons.SUPERSEDED)
            logger.debug("%d agents taken over by %s", released, sender)
        elif kind == "disconnect":
            self._fleet.disconnect(uids, reason=notice.get("reason") or reasons.OPERATOR)
        elif kind == "configs":
            if self.on_configs is not None:
                self.on_configs(notice)
        elif kind == "packages":
            if self.on_packages is not None:
                self.on_packages(notice)
        elif kind == "certificates":
            if self.on_certificates is not None:
                self.on_certificates(notice)
        elif kind in COMMAND_NOTICES:
            if self.on_commands is not None:
                self.on_commands(notice)
        elif kind == "forget":
            if self.on_forget is not None:
                self.on_forget(uids, str(notice.get("by") or "operator"))
        elif kind == "events":
            if self._events is not None:
                self._events.ingest(notice.get("events"), sender)
        elif kind == "hello":
            logger.info("instance %s joined", sender)
            self._set_peers(max(self.peers, 1))
        elif kind == "instance_lost":
            logger.info("instance %s was declared lost by %s", notice.get("lost"), sender)
            self._announce_lost(str(notice.get("lost")), sender)
        else:
            logger.debug("ignored notice %r from %s", kind, sender)
