"""Keeps every agent on this instance on the configuration the operators chose.

* **One directory in memory.** Versions in use (as prebuilt ``AgentRemoteConfig`` messages
  shared by all agents that run them), groups in precedence order, pins, operator labels and the
  admitted agents of active rollouts, loaded from Postgres in a worker thread. Resolving an agent
  (:meth:`ConfigService.assign`, called by the ``FleetHandler`` when an agent comes online or its
  description changes) is a few dict lookups: no database round trip on the OpAMP path.
* **Reload on change.** Every change made through the API commits with a ``configs`` notice on
  the fleet channel. The instance that made it reloads before it answers (so a WebSocket agent
  connected here has the new config before the API call returns); the others reload when the
  notice arrives. After a reload every online agent is re-resolved, and those whose config
  changed are pushed at once (WebSocket) or get it in their next poll (plain HTTP).
* **Packages.** Groups also offer packages (``packages.registry``): the registry reloads the
  groups' offers in the same reload (:attr:`ConfigService.before_apply`), and every re-resolution
  also sets the agent's package offer (:attr:`ConfigService.also_assign`).
* **Rollouts.** Every ``tick_s`` the running rollouts are advanced (``storage.rollout_queries``)
  by whichever instance locks them first.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import psycopg
from anyio.abc import TaskStatus
from psycopg_pool import PoolTimeout

from ..protocol import REMOTE_CONFIG_APPLIED, REMOTE_CONFIG_APPLYING, REMOTE_CONFIG_FAILED
from ..storage import config_queries, rollout_queries
from ..ticks import next_tick
from .model import (
    ACTIVE_ROLLOUT_STATES,
    Directory,
    GroupRule,
    VersionRef,
    build_config,
    description_attributes,
    files_from_json,
    order_groups,
    parse_selector,
    winning_group,
)

if TYPE_CHECKING:
    from ..fleet.handler import FleetHandler
    from ..fleet.registry import AgentRecord
    from ..storage import Database

__all__ = ["ConfigService", "ConfigStatistics", "build_directory"]

logger = logging.getLogger(__name__)

#: Agents re-resolved (and pushed to) between two yields to the event loop.
APPLY_BATCH = 256

_STATUS_NAMES = {
    REMOTE_CONFIG_APPLIED: "applied",
    REMOTE_CONFIG_APPLYING: "applying",
    REMOTE_CONFIG_FAILED: "failed",
}


@dataclass(frozen=True, slots=True)
class ConfigStatistics:
    """For metrics: this instance's online agents by reported remote-config status, and the
    latest rollout of each group (as of the last reload)."""

    status_counts: dict[str, int]
    rollouts: dict[str, dict[str, Any]]
    reloads_total: int
    pushes_total: int


_ROLLOUT_FIELDS = config_queries.ROLLOUT_COLUMNS.replace(" ", "").split(",")


def rollout_dicts(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, Any]]:
    """Latest rollout rows by group name, as dicts of their columns."""
    return {row[1]: dict(zip(_ROLLOUT_FIELDS, row, strict=True)) for row in rows}


def build_directory(rows: config_queries.DirectoryRows) -> Directory:
    """The in-memory directory from its rows (pure; run in the worker thread that loaded it)."""
    directory = Directory()
    for name, version, _, files in rows.versions:
        directory.configs[VersionRef(name, version)] = build_config(files_from_json(files))
    for config_hash, name, version in rows.hashes:
        directory.by_hash[config_hash] = VersionRef(name, version)
    admitted: dict[int, set[bytes]] = {}
    for rollout_id, uid in rows.admitted:
        admitted.setdefault(rollout_id, set()).add(uid)
    latest = directory.rollouts = rollout_dicts(rows.rollouts)
    rules = []
    for g in rows.groups:
        target = None if g.config_name is None else VersionRef(g.config_name, g.config_version or 0)
        rollout = latest.get(g.name)
        source = None
        members = None
        if rollout is not None and rollout["state"] in ACTIVE_ROLLOUT_STATES:
            members = frozenset(admitted.get(rollout["id"], ()))
            if rollout["from_name"] is not None:
                source = VersionRef(rollout["from_name"], rollout["from_version"])
        rules.append(GroupRule(g.name, parse_selector(g.selector), target, source, members))
    directory.groups = order_groups(rules)
    directory.pins = {uid: VersionRef(name, version) for uid, name, version in rows.pins}
    directory.labels = {uid: labels for uid, labels in rows.labels}
    return directory


class ConfigService:
    """The directory of this instance, its reloads, the pushes they cause, and the rollout
    driver."""

    def __init__(
        self, db: Database, fleet: FleetHandler, *, instance_id: str, tick_s: float = 0.5
    ) -> None:
        self._db = db
        self._fleet = fleet
        self.instance_id = instance_id
        self.tick_s = tick_s
        self.directory = Directory()
        self._assigned: dict[bytes, bytes] = {}  # uid -> hash this service set on its state
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._generation = 0  # bumped by every notice; a reload covers what it saw
        self._loaded_generation = -1
        self.reloads_total = 0
        self.pushes_total = 0
        # Package offers by group (``PackageRegistry.assign`` and ``.load_groups``).
        self.also_assign: Callable[[AgentRecord], bool] | None = None
        self.before_apply: Callable[[], Awaitable[None]] | None = None

    # -- the hot path (event loop, synchronous) ---------------------------------------------
    def assign(self, record: AgentRecord) -> bool:
        """Give ``record`` its config and package offer; True when either changed."""
        changed = self.assign_config(record)
        if self.also_assign is not None:
            changed = self.also_assign(record) or changed
        return changed

    def deciding_group(self, record: AgentRecord) -> str | None:
        """The group that decides ``record`` by precedence (pins aside), or None."""
        directory = self.directory
        if not directory.groups:
            return None
        group = winning_group(
            directory.groups,
            directory.labels.get(record.uid, {}),
            description_attributes(record.state.description),
        )
        return None if group is None else group.name

    def assign_config(self, record: AgentRecord) -> bool:
        """Give ``record`` the config the directory resolves for it; True when it changed."""
        directory = self.directory
        uid = record.uid
        if directory.empty and uid not in self._assigned:
            return False  # nothing managed here: leave whatever was set by other means alone
        state = record.state
        assignment = directory.resolve(uid, description_attributes(state.description))
        if assignment is None:
            if self._assigned.pop(uid, None) is None or state.remote_config_hash is None:
                return False
            state.clear_remote_config()
            return True
        if state.remote_config_hash == assignment.config_hash:
            self._assigned[uid] = assignment.config_hash
            return False
        state.set_remote_config_message(directory.configs[assignment.ref])
        self._assigned[uid] = assignment.config_hash
        return True

    def forget(self, uid: bytes) -> None:
        self._assigned.pop(uid, None)

    async def apply_all(self) -> int:
        """Re-resolve every online agent here; push those whose config changed. Returns how
        many changed.

        A push costs ~0.1 ms (build, encode, write), so a config for 10,000 agents is a second
        of work: it is done ``APPLY_BATCH`` agents at a time, letting heartbeats through between
        batches instead of stalling every agent for the whole second."""
        changed = 0
        fleet = self._fleet
        for i, record in enumerate(list(fleet.registry.online_records()), 1):
            if record.online and self.assign(record):
                changed += 1
                if fleet.push(record):
                    self.pushes_total += 1
            if i % APPLY_BATCH == 0:
                await anyio.lowlevel.checkpoint()
        return changed

    # -- reloads ----------------------------------------------------------------------------
    def on_notice(self, notice: dict[str, Any]) -> None:
        """A ``configs`` notice from another instance (on the event loop)."""
        self._generation += 1
        self._wake.set()

    async def refresh(self) -> int:
        """Reload the directory and apply it (after this instance changed something)."""
        self._generation += 1
        try:
            return await self._reload(self._generation)
        finally:
            self._wake.set()  # the loop looks again: a rollout may run now, or a retry be due

    async def _reload(self, generation: int) -> int:
        async with self._lock:
            if self._loaded_generation >= generation:
                return 0  # a reload that started after this change already covered it
            started = self._generation
            rows = await self._db.run(config_queries.load_directory)
            directory = await anyio.to_thread.run_sync(build_directory, rows)
            if self.before_apply is not None:
                await self.before_apply()
            self.directory = directory
            self._loaded_generation = started
            self.reloads_total += 1
            return await self.apply_all()

    # -- the service ------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._reload(0)
        self._fleet.assigner = self.assign
        task_status.started()
        try:
            while True:
                with anyio.CancelScope(deadline=self._next_step()):
                    await self._wake.wait()
                try:
                    if self._generation > self._loaded_generation:
                        await self._reload(self._generation)
                    if self._has_running_rollout():
                        await self.drive()
                except (psycopg.Error, PoolTimeout) as exc:
                    logger.warning("configuration reload or rollout step failed: %s", exc)
                    await anyio.sleep(self.tick_s)
                self._wake = anyio.Event()  # what is left to do, _next_step reads from the state
        finally:
            self._fleet.assigner = None

    def _next_step(self) -> float:
        """When the loop has work without being woken: now while a reload is due (a notice came
        in, or a reload failed: its retry), the next tick while a rollout runs; otherwise
        never, until a notice or a refresh wakes it (an idle process sleeps through)."""
        now = anyio.current_time()
        if self._generation > self._loaded_generation:
            return now
        if self._has_running_rollout():
            return next_tick(self.tick_s, now)
        return math.inf

    def _has_running_rollout(self) -> bool:
        return any(r["state"] == "running" for r in self.directory.rollouts.values())

    async def drive(self) -> list[rollout_queries.RolloutRow]:
        """Advance the running rollouts (those no other instance is advancing right now)."""
        moved = await self._db.run(
            lambda conn: rollout_queries.drive_all(conn, sender=self.instance_id)
        )
        for row in moved:
            logger.info(
                "rollout %d of group %s: %s (batch %d, %d admitted, %d applied, %d failed)",
                row.id,
                row.group_name,
                row.state,
                row.batches,
                row.admitted,
                row.applied,
                row.failed,
            )
        if moved:
            await self.refresh()
        else:  # nothing to re-resolve: only the progress counts, for the detail and metrics
            rows = await self._db.run(config_queries.latest_rollouts)
            self.directory.rollouts = rollout_dicts(rows)
        return moved

    def statistics(self) -> ConfigStatistics:
        counts: Counter[str] = Counter()
        for record in self._fleet.registry.online_records():
            status = record.state.remote_config_status
            if status is not None:
                counts[_STATUS_NAMES.get(int(status.status), "unset")] += 1
        return ConfigStatistics(
            status_counts=dict(counts),
            rollouts=dict(self.directory.rollouts),
            reloads_total=self.reloads_total,
            pushes_total=self.pushes_total,
        )
