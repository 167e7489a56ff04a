"""This instance's part in day-2 commands (the REST routes are in ``api.commands``).

* **Commands routed here.** An operator's restart or custom message for an agent this instance
  holds, asked through another instance, arrives as a notice on our channel
  (``storage.command_queries``): a restart names the agents; a custom message names the row
  that holds it (its data may be larger than a notice), read back here in a task of our own,
  through a bounded queue (a notice never waits for the database on the event loop).
* **Group restarts.** Every ``tick_s`` while a group restart runs anywhere (a
  ``group_restarts`` notice or our own start wakes us; we go idle when none runs), the next
  batch of each restart whose pause is over is sent by whichever instance locks it first; the
  agents of a batch held by other instances are restarted by their notices.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import psycopg
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from psycopg_pool import PoolTimeout

from ..protocol import NotAccepted, pb
from ..storage import command_queries as cmq
from ..ticks import next_tick

if TYPE_CHECKING:
    from ..storage import Database
    from .handler import FleetHandler

__all__ = ["Commands"]

logger = logging.getLogger(__name__)

#: Custom messages routed here waiting to be read back and sent; beyond it notices are dropped
#: (logged): the operator's call had its 202 and the message is in the agent's list as sent.
ROUTED_QUEUE_MAX = 1024


class Commands:
    """Commands routed to this instance, and the group restart driver."""

    def __init__(
        self, db: Database, fleet: FleetHandler, *, instance_id: str, tick_s: float = 1.0
    ) -> None:
        self._db = db
        self._fleet = fleet
        self.instance_id = instance_id
        self.tick_s = tick_s
        # Ids of custom messages routed here, while ``run`` runs (its task reads them).
        self._routed: MemoryObjectSendStream[int] | None = None
        self._wake = anyio.Event()
        self._active = True  # a group restart may run: drive every tick (checked at start)
        self.batches_total = 0
        self.routed_dropped_total = 0

    # -- notices (on the event loop) -----------------------------------------------------
    def on_notice(self, notice: dict[str, Any]) -> None:
        kind = notice.get("kind")
        if kind == cmq.RESTART_NOTICE:
            uids = [bytes.fromhex(u) for u in notice.get("uids", ())]
            self._fleet.restart_many(uids)
        elif kind == cmq.CUSTOM_MESSAGE_NOTICE:
            self._route(notice)
        elif kind == cmq.GROUP_RESTARTS_NOTICE:
            self.wake()

    def _route(self, notice: dict[str, Any]) -> None:
        try:
            message_id = int(notice["id"])
        except (KeyError, TypeError, ValueError):
            logger.warning("ignored a malformed custom message notice")
            return
        try:
            if self._routed is None:
                raise anyio.WouldBlock
            self._routed.send_nowait(message_id)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.routed_dropped_total += 1
            logger.warning("custom message %d not sent: not taking routed messages", message_id)

    def started(self, local: list[bytes], *, batch_sent: bool) -> None:
        """A group restart started through this instance's API, which sent its first batch:
        restart that batch's agents held here, and drive from now on."""
        if batch_sent:
            self.batches_total += 1
        self._fleet.restart_many(local)
        self.wake()

    def wake(self) -> None:
        """A group restart started: drive from now on."""
        self._active = True
        self._wake.set()

    # -- the service -------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        send, receive = anyio.create_memory_object_stream[int](ROUTED_QUEUE_MAX)
        async with send, receive, anyio.create_task_group() as tg:
            self._routed = send
            tg.start_soon(self._send_routed, receive)
            task_status.started()
            try:
                await self._drive_forever()
            finally:
                self._routed = None

    async def _drive_forever(self) -> None:
        while True:
            # the next tick on the process's grid (ticks.py) while a restart runs; else a wake
            deadline = next_tick(self.tick_s, anyio.current_time()) if self._active else math.inf
            with anyio.CancelScope(deadline=deadline):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.drive()
            except (psycopg.Error, PoolTimeout) as exc:
                logger.warning("group restart step failed: %s", exc)
                await anyio.sleep(self.tick_s)

    async def drive(self) -> list[cmq.GroupRestartRow]:
        """Send the batches that are due (those no other instance is sending); the restarts
        that moved."""
        moved, running = await self._db.run(
            lambda conn: cmq.drive_group_restarts(conn, sender=self.instance_id)
        )
        self._active = running
        for row, local in moved:
            self.batches_total += 1
            self._fleet.restart_many(local)
            logger.info(
                "restart %d of group %s: batch %d, %d requested, %d skipped of %d (%s)",
                row.id,
                row.group_name,
                row.batches,
                row.requested,
                row.skipped,
                row.targets,
                row.state,
            )
        return [row for row, _ in moved]

    async def _send_routed(self, receive: MemoryObjectReceiveStream[int]) -> None:
        async for message_id in receive:
            try:
                found = await self._db.run(partial(cmq.outgoing_message, message_id=message_id))
            except (psycopg.Error, PoolTimeout) as exc:
                logger.warning("custom message %d not sent: %s", message_id, exc)
                continue
            if found is None:
                continue
            uid, capability, kind, data = found
            message = pb.CustomMessage(capability=capability, type=kind, data=data)
            try:
                self._fleet.send_custom_message(uid, message)
            except NotAccepted as exc:
                logger.info("custom message %d not sent: %s", message_id, exc)
