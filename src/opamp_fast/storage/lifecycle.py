"""Forgetting agents: by an operator (``DELETE /api/agents/{id}``) or by expiry.

A forgotten agent loses its row (labels with it), its config pin, its package offers and
statuses and its rollout admissions, in one transaction that also lowers
``fleet_stats.agents_total`` and sends a ``forget`` notice on the fleet channel, so every
instance drops it from memory when (and only if) the deletion commits; ``configs`` and
``packages`` notices follow when a pin, labels or offers went with it. Its connection history
stays until history retention removes it, unless the operator asks for it to go too. An agent
that comes back later is new again: its row is written afresh and, as no instance remembers it,
it is asked for its full state.

Only an offline agent is forgotten: the ``DELETE`` re-checks ``status = 'offline'`` under the
row lock, so a connect the writers committed first wins (the operator gets a 409), and a connect
committed after it finds no row and inserts a new one.

Expiry (:class:`AgentLifecycle`, a :class:`~opamp_fast.storage.retention.BatchedCleanup`):
agents offline for longer than ``forget_offline_after_days``, oldest first, in small batches
under an advisory lock; then the short-lived members (:data:`EPHEMERAL_KEYS` in their
description) of groups with a ``forget_offline_after``, when that group decides them (the
configs' precedence) and they have been offline that long. Each batch is one audit row.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import anyio
import psycopg

from ..remote_config.model import (
    GroupRule,
    json_attributes,
    order_groups,
    parse_selector,
    winning_group,
)
from .config_queries import AuditEntry, append_audit, list_groups, notify_changed
from .notices import FLEET_CHANNEL, encode_notices
from .retention import BatchedCleanup, try_lock
from .rollout_queries import SYSTEM_ACTOR, SYSTEM_ROLE

if TYPE_CHECKING:
    from .database import Database

__all__ = ["EPHEMERAL_KEYS", "FORGET_NOTICE", "AgentLifecycle", "Forgotten", "forget_agents"]

logger = logging.getLogger(__name__)

#: Attributes that mark an agent as short-lived: a Kubernetes pod or a container (each restart
#: is a new instance uid). Looked up in the identifying and non-identifying attributes.
EPHEMERAL_KEYS: Final = ("k8s.pod.name", "k8s.pod.uid", "container.id")
FORGET_NOTICE: Final = "forget"
#: Advisory lock key of expiry ("opampexp").
EXPIRY_LOCK_KEY: Final = 0x6F70616D70657870
#: Agents named in one expiry audit row (the count is always complete).
AUDIT_IDS_MAX: Final = 50

_FORGET = """
WITH gone AS (
    DELETE FROM agents AS a
    WHERE a.instance_uid = ANY(%(uids)s) AND a.status = 'offline'
      AND (%(age)s::float8 IS NULL OR COALESCE(a.last_disconnected_at, a.created_at)
           < now() - make_interval(secs => %(age)s::float8))
    RETURNING a.instance_uid, a.uid_text, a.agent_name, a.labels, a.last_disconnected_at
), pins AS (
    DELETE FROM agent_config_pins AS p USING gone AS g WHERE p.instance_uid = g.instance_uid
    RETURNING p.instance_uid
), offers AS (
    DELETE FROM package_offers AS o USING gone AS g WHERE o.instance_uid = g.instance_uid
    RETURNING o.instance_uid
), statuses AS (
    DELETE FROM agent_package_statuses AS s USING gone AS g WHERE s.instance_uid = g.instance_uid
), reports AS (
    DELETE FROM agent_package_reports AS r USING gone AS g WHERE r.instance_uid = g.instance_uid
), admitted AS (
    DELETE FROM rollout_agents AS r USING gone AS g WHERE r.instance_uid = g.instance_uid
), messages AS (
    DELETE FROM agent_custom_messages AS m USING gone AS g WHERE m.instance_uid = g.instance_uid
), counted AS (
    UPDATE fleet_stats SET agents_total = agents_total - (SELECT count(*) FROM gone)
)
SELECT g.instance_uid, g.uid_text, g.agent_name, g.labels, g.last_disconnected_at,
    g.labels <> '{}' OR EXISTS (SELECT 1 FROM pins WHERE pins.instance_uid = g.instance_uid),
    EXISTS (SELECT 1 FROM offers WHERE offers.instance_uid = g.instance_uid)
FROM gone AS g
"""

_EPHEMERAL = " OR ".join(
    f"a.description -> '{part}' ?| %(ephemeral)s"
    for part in ("identifying_attributes", "non_identifying_attributes")
)
_OFFLINE_FOR = (
    "(a.last_disconnected_at < now() - make_interval(secs => %(age)s) OR "
    "(a.last_disconnected_at IS NULL AND a.created_at < now() - make_interval(secs => %(age)s)))"
)
# Agents offline for longer than the fleet's expiry, longest offline first
# (agents_offline_since_idx).
_EXPIRED = f"""
SELECT a.instance_uid FROM agents AS a WHERE a.status = 'offline' AND {_OFFLINE_FOR}
ORDER BY a.last_disconnected_at NULLS FIRST LIMIT %(batch)s
"""
# Short-lived agents offline for longer than the shortest group expiry: the groups that decide
# them say whether their time has come.
_EPHEMERAL_CANDIDATES = f"""
SELECT a.instance_uid, a.labels, a.description,
    date_part('epoch', now() - COALESCE(a.last_disconnected_at, a.created_at))
FROM agents AS a
WHERE a.status = 'offline' AND {_OFFLINE_FOR} AND ({_EPHEMERAL}) AND a.instance_uid > %(after)s
ORDER BY a.instance_uid LIMIT %(batch)s
"""


@dataclass(frozen=True, slots=True)
class ForgottenAgent:
    uid: bytes
    uid_text: str
    name: str | None
    labels: dict[str, Any]
    last_disconnected_at: datetime | None


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What one forgetting transaction removed."""

    agents: list[ForgottenAgent]
    by: str  # "operator" or "expiry"
    directory_changed: bool = False  # labels or a pin went: every config directory reloads
    offer_uids: list[bytes] = field(default_factory=list)  # their package offers went
    history_deleted: int = 0

    @property
    def uids(self) -> list[bytes]:
        return [a.uid for a in self.agents]


def forget_agents(
    conn: psycopg.Connection[Any],
    uids: Sequence[bytes],
    *,
    sender: str,
    by: str,
    offline_for_s: float | None = None,
    purge_history: bool = False,
) -> Forgotten:
    """Forget those of ``uids`` that are offline (for longer than ``offline_for_s``, when
    given), in the caller's transaction, with the notices that make every instance forget
    them too."""
    rows = conn.execute(_FORGET, {"uids": list(uids), "age": offline_for_s}).fetchall()
    agents = [ForgottenAgent(bytes(r[0]), r[1], r[2], r[3] or {}, r[4]) for r in rows]
    directory_changed = any(r[5] for r in rows)
    offer_uids = [bytes(r[0]) for r in rows if r[6]]
    gone = [a.uid for a in agents]
    history = 0
    if gone and purge_history:
        history = conn.execute(
            "DELETE FROM agent_connection_history WHERE instance_uid = ANY(%s)", (gone,)
        ).rowcount
        conn.execute("DELETE FROM agent_uptime_daily WHERE instance_uid = ANY(%s)", (gone,))
    if gone:
        _notify(conn, FORGET_NOTICE, sender, gone, by=by)
    if offer_uids:
        _notify(conn, "packages", sender, offer_uids)
    if directory_changed:
        notify_changed(conn, sender)
    return Forgotten(agents, by, directory_changed, offer_uids, history)


def _notify(
    conn: psycopg.Connection[Any], kind: str, sender: str, uids: list[bytes], **fields: Any
) -> None:
    for payload in encode_notices(kind, sender, uids=[u.hex() for u in uids], **fields):
        conn.execute("SELECT pg_notify(%s, %s)", (FLEET_CHANNEL, payload))


def agent_status(conn: psycopg.Connection[Any], uid: bytes) -> str | None:
    """The stored status of an agent, None when there is no such agent."""
    row = conn.execute("SELECT status FROM agents WHERE instance_uid = %s", (uid,)).fetchone()
    return None if row is None else str(row[0])


class AgentLifecycle(BatchedCleanup):
    """Forgets agents: :meth:`forget` for an operator, :meth:`run_once` (every ``interval_s``)
    for expiry. After each committed forgetting, :attr:`on_forgotten` (set by the services)
    makes this instance forget them in memory; the others do on the ``forget`` notice."""

    lock_key = EXPIRY_LOCK_KEY
    what = "offline agents"

    def __init__(
        self,
        db: Database,
        *,
        retention_days: float,
        instance_id: str,
        batch_rows: int = 500,
        interval_s: float = 300.0,
        pause_s: float = 0.05,
    ) -> None:
        super().__init__(
            db,
            retention_days=retention_days,
            batch_rows=batch_rows,
            interval_s=interval_s,
            pause_s=pause_s,
        )
        self.instance_id = instance_id
        self._after = b""  # where the walk of short-lived agents resumes (by uid)
        self.on_forgotten: Callable[[Forgotten], Awaitable[None]] | None = None
        self.forgotten_total = {"operator": 0, "expiry": 0}

    @property
    def enabled(self) -> bool:
        return True  # a group may expire its short-lived members even when the fleet keeps all

    async def forget(
        self,
        uid: bytes,
        *,
        purge_history: bool = False,
        also: Callable[[psycopg.Connection[Any], Forgotten], None] | None = None,
    ) -> Forgotten | str | None:
        """An operator forgets one agent: what went, or its status (``"online"``) when it was
        not offline, or None when there is no such agent. ``also`` runs in the same
        transaction once the agent is gone (the audit row)."""

        def work(conn: psycopg.Connection[Any]) -> Forgotten | str | None:
            forgotten = forget_agents(
                conn, [uid], sender=self.instance_id, by="operator", purge_history=purge_history
            )
            if not forgotten.agents:
                return agent_status(conn, uid)
            if also is not None:
                also(conn, forgotten)
            return forgotten

        outcome = await self._db.run(work)
        if isinstance(outcome, Forgotten):
            await self._forgotten(outcome)
        return outcome

    async def run_once(self) -> int:
        """Forget every agent past its expiry, batch by batch; returns how many."""
        forgotten = 0
        phases: list[Callable[[psycopg.Connection[Any]], tuple[Forgotten, bool] | None]] = []
        if self.retention_days > 0:
            phases.append(self._expire_batch)
        phases.append(self._ephemeral_batch)
        for phase in phases:
            self._after = b""
            while True:
                outcome = await self._db.run(phase)
                if outcome is None:  # another instance is at it
                    break
                batch, more = outcome
                await self._forgotten(batch)
                forgotten += len(batch.agents)
                if not more:
                    break
                await anyio.sleep(self.pause_s)
        self.passes += 1
        if forgotten:
            logger.info("expiry: forgot %d offline agents", forgotten)
        return forgotten

    async def _forgotten(self, forgotten: Forgotten) -> None:
        if not forgotten.agents:
            return
        self.forgotten_total[forgotten.by] += len(forgotten.agents)
        self.deleted_total += len(forgotten.agents)
        if self.on_forgotten is not None:
            await self.on_forgotten(forgotten)

    def _expire_batch(self, conn: psycopg.Connection[Any]) -> tuple[Forgotten, bool] | None:
        """Agents offline for longer than the fleet's expiry; (what went, whether more may)."""
        if not try_lock(conn, self.lock_key):
            return None
        params = {"age": self.age_s, "batch": self.batch_rows}
        uids = [bytes(r[0]) for r in conn.execute(_EXPIRED, params)]
        forgotten = self._forget(conn, uids, self.age_s, {"forget_offline_after_days": (
            self.retention_days)})  # fmt: skip
        return forgotten, len(uids) == self.batch_rows

    def _ephemeral_batch(self, conn: psycopg.Connection[Any]) -> tuple[Forgotten, bool] | None:
        """One page of short-lived agents, by uid, forgotten when the group deciding them
        (with a ``forget_offline_after``) says their time has come."""
        if not try_lock(conn, self.lock_key):
            return None
        groups = list_groups(conn)
        limits = {g.name: g.forget_offline_after_s for g in groups if g.forget_offline_after_s}
        if not limits:
            return Forgotten([], "expiry"), False
        rules = order_groups(GroupRule(g.name, parse_selector(g.selector), None) for g in groups)
        age = float(min(limits.values()))
        params = {
            "age": age,
            "ephemeral": list(EPHEMERAL_KEYS),
            "after": self._after,
            "batch": self.batch_rows,
        }
        rows = conn.execute(_EPHEMERAL_CANDIDATES, params).fetchall()
        due: dict[str, list[bytes]] = {}
        for uid, labels, description, offline_s in rows:
            group = winning_group(rules, labels or {}, json_attributes(description))
            name = group.name if group is not None else ""
            if name in limits and offline_s >= limits[name]:
                due.setdefault(name, []).append(bytes(uid))
        if rows:
            self._after = bytes(rows[-1][0])
        uids = [uid for members in due.values() for uid in members]
        counts = {name: len(members) for name, members in due.items()}
        forgotten = self._forget(conn, uids, age, {"groups": counts})
        return forgotten, len(rows) == self.batch_rows

    def _forget(
        self, conn: psycopg.Connection[Any], uids: list[bytes], age: float, rule: dict[str, Any]
    ) -> Forgotten:
        """Forget ``uids`` (offline for longer than ``age``), with one audit row."""
        if not uids:
            return Forgotten([], "expiry")
        forgotten = forget_agents(
            conn, uids, sender=self.instance_id, by="expiry", offline_for_s=age
        )
        if forgotten.agents:
            ids = [a.uid_text for a in forgotten.agents]
            after = {"count": len(ids), "agents": ids[:AUDIT_IDS_MAX], **rule}
            append_audit(
                conn, AuditEntry(SYSTEM_ACTOR, SYSTEM_ROLE, "agent.expire", "agents", after=after)
            )
        return forgotten
