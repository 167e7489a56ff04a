"""SQL of progressive rollouts: start one, advance it batch by batch, stop it.

A running rollout is advanced by whichever instance locks its row first
(``FOR UPDATE SKIP LOCKED``), every ``ConfigService`` tick, in one transaction: the outcome of
its admitted agents is read from ``agents`` (the reported remote-config status the batch
writers store, and the last failure the ``agents_remote_config_outcome`` trigger keeps), the
pure :func:`opamp_fast.remote_config.model.decide_rollout` says what to do, and a new batch, a
pause or the completion is written with its audit row and the ``configs`` notice.

Eligible agents: online, reporting ``AcceptsRemoteConfig``, not pinned, and decided by this
group (it wins the precedence over every other group matching them). Offline agents are never
counted (they caused spurious progress for peers), but admitted ones keep their admission.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..protocol import AGENT_ACCEPTS_REMOTE_CONFIG
from ..remote_config.model import (
    GroupRule,
    RolloutCounts,
    RolloutStep,
    decide_rollout,
    json_attributes,
    order_groups,
    parse_selector,
    winning_group,
)
from .config_queries import (
    ROLLOUT_COLUMNS,
    AuditEntry,
    Conn,
    append_audit,
    list_groups,
    notify_changed,
    selector_sql,
)

SYSTEM_ACTOR = "opamp-fast"
SYSTEM_ROLE = "system"


@dataclass(frozen=True, slots=True)
class RolloutRow:
    id: int
    group_name: str
    from_name: str | None
    from_version: int | None
    to_name: str
    to_version: int
    batch_percent: int
    max_failed_percent: int
    state: str
    batches: int
    eligible: int
    admitted: int
    applied: int
    failed: int
    pending: int
    reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime

    @property
    def active(self) -> bool:
        return self.state in ("running", "paused")

    def summary(self) -> dict[str, Any]:
        """A compact form for audit rows."""
        return {
            "id": self.id,
            "from": None if self.from_name is None else f"{self.from_name}@{self.from_version}",
            "to": f"{self.to_name}@{self.to_version}",
            "state": self.state,
            "batches": self.batches,
            "admitted": self.admitted,
            "applied": self.applied,
            "failed": self.failed,
        }


def latest_rollout(conn: Conn, group: str) -> RolloutRow | None:
    row = conn.execute(
        f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE group_name = %s ORDER BY id DESC LIMIT 1",
        (group,),
    ).fetchone()
    return RolloutRow(*row) if row else None


def stop_active(conn: Conn, group: str, state: str) -> RolloutRow | None:
    """End the group's active rollout (``superseded`` or ``rolled_back``); the ended row."""
    row = conn.execute(
        f"""UPDATE rollouts SET state = %s, updated_at = now()
        WHERE group_name = %s AND state IN ('running', 'paused') RETURNING {ROLLOUT_COLUMNS}""",
        (state, group),
    ).fetchone()
    return RolloutRow(*row) if row else None


def start_rollout(
    conn: Conn,
    group: str,
    source: tuple[str, int] | None,
    target: tuple[str, int],
    *,
    batch_percent: int,
    max_failed_percent: int,
    actor: str,
) -> RolloutRow:
    row = conn.execute(
        f"""INSERT INTO rollouts (group_name, from_name, from_version, to_name, to_version,
            batch_percent, max_failed_percent, state, created_by)
        VALUES (%s, %s, %s, %s, %s, %s, %s, 'running', %s) RETURNING {ROLLOUT_COLUMNS}""",
        (
            group,
            source[0] if source else None,
            source[1] if source else None,
            target[0],
            target[1],
            batch_percent,
            max_failed_percent,
            actor,
        ),
    ).fetchone()
    assert row is not None
    return RolloutRow(*row)


def running_ids(conn: Conn) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM rollouts WHERE state = 'running'")]


def drive_all(conn: Conn, *, sender: str) -> list[RolloutRow]:
    """Advance every running rollout no other instance is advancing; the rows that changed
    state or admitted a batch."""
    rows = conn.execute(
        f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE state = 'running' "
        "ORDER BY id FOR UPDATE SKIP LOCKED"
    ).fetchall()
    moved = []
    for row in rows:
        after = advance(conn, RolloutRow(*row), sender=sender)
        if after is not None:
            moved.append(after)
    return moved


_ADMITTED = """
SELECT ra.instance_uid, a.status,
    a.remote_config_status ->> 'last_remote_config_hash', a.remote_config_status ->> 'status',
    a.remote_config_failed_hash, a.drifted_at IS NOT NULL
FROM rollout_agents ra LEFT JOIN agents a ON a.instance_uid = ra.instance_uid
WHERE ra.rollout_id = %s
"""


def decided_by_group(conn: Conn, group_name: str, *, online_only: bool = True) -> set[bytes]:
    """The agents whose config this group decides: reporting ``AcceptsRemoteConfig``, not
    pinned, and won by this group over every other one matching them (online ones only, unless
    ``online_only`` is False: offline ones get their config when they return)."""
    groups = list_groups(conn)
    rules = order_groups(GroupRule(g.name, parse_selector(g.selector), None) for g in groups)
    mine = next((g for g in groups if g.name == group_name), None)
    if mine is None:
        return set()
    where, params = selector_sql(mine.selector)
    params["caps"] = AGENT_ACCEPTS_REMOTE_CONFIG
    online = "a.status = 'online' AND" if online_only else ""
    rows = conn.execute(
        f"""SELECT a.instance_uid, a.labels, a.description FROM agents AS a
        WHERE {online} a.capabilities & %(caps)s <> 0 AND {where}
          AND NOT EXISTS (SELECT 1 FROM agent_config_pins p
                          WHERE p.instance_uid = a.instance_uid)""",
        params,
    ).fetchall()
    out = set()
    for uid, labels, description in rows:
        winner = winning_group(rules, labels, json_attributes(description))
        if winner is not None and winner.name == group_name:
            out.add(bytes(uid))
    return out


def _to_hash(conn: Conn, rollout: RolloutRow) -> str:
    row = conn.execute(
        "SELECT encode(config_hash, 'hex') FROM config_versions WHERE name = %s AND version = %s",
        (rollout.to_name, rollout.to_version),
    ).fetchone()
    assert row is not None
    return str(row[0])


def advance(conn: Conn, rollout: RolloutRow, *, sender: str) -> RolloutRow | None:
    """One evaluation of a running rollout (its row locked by the caller). Returns the new row
    when it admitted a batch or changed state, else None (counts are refreshed either way)."""
    admitted, counts = _count(conn, rollout)
    waiting = sorted(decided_by_group(conn, rollout.group_name) - admitted)
    counts = RolloutCounts(
        eligible=len(admitted) + len(waiting),
        admitted=len(admitted),
        applied=counts.applied,
        failed=counts.failed,
        pending=counts.pending,
        waiting=len(waiting),
    )
    decision = decide_rollout(
        counts,
        batch_percent=rollout.batch_percent,
        max_failed_percent=rollout.max_failed_percent,
    )
    state, reason, batches, action = rollout.state, rollout.reason, rollout.batches, None
    if decision.step is RolloutStep.NEXT_BATCH:
        batches += 1
        chosen = waiting[: decision.admit]
        _admit(conn, rollout.id, chosen, batches)
        counts = dataclasses.replace(
            counts,
            admitted=counts.admitted + len(chosen),
            pending=counts.pending + len(chosen),
            waiting=counts.waiting - len(chosen),
        )
        action = "rollout.batch"
    elif decision.step is RolloutStep.PAUSE:
        state, reason, action = "paused", decision.reason, "rollout.pause"
    elif decision.step is RolloutStep.COMPLETE:
        state, action = "completed", "rollout.complete"
    after = _store(conn, rollout.id, state, reason, batches, counts, touched=action is not None)
    if action is None:
        return None
    append_audit(
        conn,
        AuditEntry(
            SYSTEM_ACTOR,
            SYSTEM_ROLE,
            action,
            f"group:{rollout.group_name}",
            before=rollout.summary(),
            after={**after.summary(), "reason": reason},
        ),
    )
    notify_changed(conn, sender)
    return after


def _count(conn: Conn, rollout: RolloutRow) -> tuple[set[bytes], RolloutCounts]:
    """The agents admitted so far, and how many of them applied, failed or are pending. An agent
    that applied the version and then drifted from it (its effective config changed by hand,
    or it fell back to an earlier one) counts as failed."""
    to_hash = _to_hash(conn, rollout)
    admitted: set[bytes] = set()
    applied = failed = pending = 0
    for uid, status, reported_hash, reported, failed_hash, drifted in conn.execute(
        _ADMITTED, (rollout.id,)
    ).fetchall():
        admitted.add(bytes(uid))
        if reported_hash == to_hash and reported == "APPLIED" and not drifted:
            applied += 1
        elif failed_hash == to_hash or (
            reported_hash == to_hash and reported in ("FAILED", "APPLIED")
        ):
            failed += 1
        elif status == "online":
            pending += 1
    return admitted, RolloutCounts(0, len(admitted), applied, failed, pending, 0)


def _admit(conn: Conn, rollout_id: int, uids: list[bytes], batch: int) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO rollout_agents (rollout_id, instance_uid, batch) VALUES (%s, %s, %s)",
            [(rollout_id, uid, batch) for uid in uids],
        )


def _store(
    conn: Conn,
    rollout_id: int,
    state: str,
    reason: str | None,
    batches: int,
    counts: RolloutCounts,
    *,
    touched: bool,
) -> RolloutRow:
    """Write the rollout's state and counts (``updated_at`` only when ``touched``)."""
    row = conn.execute(
        f"""UPDATE rollouts SET state = %s, reason = %s, batches = %s, eligible = %s,
            admitted = %s, applied = %s, failed = %s, pending = %s,
            updated_at = CASE WHEN %s THEN now() ELSE updated_at END
        WHERE id = %s RETURNING {ROLLOUT_COLUMNS}""",
        (
            state,
            reason,
            batches,
            counts.eligible,
            counts.admitted,
            counts.applied,
            counts.failed,
            counts.pending,
            touched,
            rollout_id,
        ),
    ).fetchone()
    assert row is not None
    return RolloutRow(*row)
