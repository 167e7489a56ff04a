"""SQL of day-2 commands: restarts (of one agent, of a group's members in batches) and custom
messages to agents.

Plain functions of a psycopg connection, run in a worker thread by ``Database.run`` (one
transaction per call). A command for an agent held by another instance travels as a notice on
that instance's channel, sent in the transaction that records it (``last_restart_requested_at``,
the outgoing custom message row, the audit row): it arrives when the change is visible, or not
at all.

**Group restarts** are rows in Postgres, not state of the instance that was asked: whichever
instance locks a running one (``FOR UPDATE SKIP LOCKED``) sends its next batch once its pause
is over, so a restart survives the API call and the instance that accepted it, and cancelling
it (an ``UPDATE`` every instance sees) stops further batches everywhere.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..protocol import AGENT_ACCEPTS_RESTART_COMMAND
from ..remote_config.model import batch_size
from .batch_writer import CUSTOM_MESSAGES_KEPT
from .config_queries import AuditEntry, Conflict, Conn, NotFound, append_audit, selector_sql
from .notices import FLEET_CHANNEL, channel_for, encode_notices
from .rollout_queries import SYSTEM_ACTOR, SYSTEM_ROLE

__all__ = [
    "CUSTOM_MESSAGE_NOTICE",
    "GROUP_RESTARTS_NOTICE",
    "RESTART_NOTICE",
    "AgentExtras",
    "AgentFacts",
    "CustomMessageRow",
    "GroupRestartRow",
    "advance_group_restart",
    "agent_extras",
    "agent_facts",
    "any_group_restart_running",
    "cancel_group_restart",
    "custom_messages",
    "drive_group_restarts",
    "latest_group_restart",
    "notify_instance",
    "outgoing_message",
    "record_restart",
    "start_group_restart",
    "store_outgoing",
]

RESTART_NOTICE = "restart"  # to the instance holding agents: restart them (``uids``)
CUSTOM_MESSAGE_NOTICE = "custom_message"  # to the instance holding the agent: send row ``id``
GROUP_RESTARTS_NOTICE = "group_restarts"  # to every instance: a group restart runs


@dataclass(frozen=True, slots=True)
class AgentFacts:
    """What a command needs to know of an agent, as its instance last flushed it."""

    status: str
    serving_instance: str | None
    capabilities: int
    custom_capabilities: list[str]


def agent_facts(conn: Conn, uid: bytes) -> AgentFacts | None:
    row = conn.execute(
        "SELECT status, serving_instance, capabilities, custom_capabilities FROM agents "
        "WHERE instance_uid = %s",
        (uid,),
    ).fetchone()
    if row is None:
        return None
    custom = [c for c in row[3] or () if isinstance(c, str)]
    return AgentFacts(row[0], row[1], int(row[2]), custom)


@dataclass(frozen=True, slots=True)
class AgentExtras:
    """What the agent detail shows of day-2 operations."""

    last_restart_requested_at: datetime | None
    custom_capabilities: list[str] | None
    available_components: dict[str, Any] | None


def agent_extras(conn: Conn, uid: bytes) -> AgentExtras | None:
    row = conn.execute(
        "SELECT a.last_restart_requested_at, a.custom_capabilities, s.components FROM agents a "
        "LEFT JOIN component_sets s ON s.digest = a.available_components_digest "
        "WHERE a.instance_uid = %s",
        (uid,),
    ).fetchone()
    return None if row is None else AgentExtras(*row)


def notify_instance(conn: Conn, instance: str, kind: str, sender: str, **fields: Any) -> None:
    """A notice to one instance, delivered when the transaction commits."""
    for payload in encode_notices(kind, sender, **fields):
        conn.execute("SELECT pg_notify(%s, %s)", (channel_for(instance), payload))


def record_restart(
    conn: Conn, uids: list[bytes], *, sender: str, serving: dict[bytes, str | None]
) -> list[bytes]:
    """Stamp ``last_restart_requested_at`` on these agents and tell the instances holding them
    (other than ``sender``) to send the command. Returns the agents ``sender`` holds itself."""
    conn.execute(
        "UPDATE agents SET last_restart_requested_at = now() WHERE instance_uid = ANY(%s)",
        (uids,),
    )
    by_instance: dict[str, list[str]] = defaultdict(list)
    local = []
    for uid in uids:
        instance = serving.get(uid)
        if instance == sender:
            local.append(uid)
        elif instance is not None:
            by_instance[instance].append(uid.hex())
    for instance, hex_uids in by_instance.items():
        notify_instance(conn, instance, RESTART_NOTICE, sender, uids=hex_uids)
    return local


# ----------------------------------------------------------------------------- custom messages


@dataclass(frozen=True, slots=True)
class CustomMessageRow:
    id: int
    direction: str
    at: datetime
    capability: str
    type: str
    data: bytes
    serving_instance: str | None
    sent_by: str | None


_MESSAGE_COLUMNS = "id, direction, at, capability, type, data, serving_instance, sent_by"


def store_outgoing(
    conn: Conn,
    uid: bytes,
    message: tuple[str, str, bytes],
    *,
    serving_instance: str | None,
    sent_by: str,
) -> int:
    """Record a custom message sent to an agent (the newest ``CUSTOM_MESSAGES_KEPT`` are kept);
    its id."""
    capability, kind, data = message
    row = conn.execute(
        "INSERT INTO agent_custom_messages (instance_uid, direction, at, capability, type, data, "
        "serving_instance, sent_by) VALUES (%s, 'to_agent', now(), %s, %s, %s, %s, %s) "
        "RETURNING id",
        (uid, capability, kind, data, serving_instance, sent_by),
    ).fetchone()
    assert row is not None
    conn.execute(
        """DELETE FROM agent_custom_messages WHERE id IN (
            SELECT id FROM agent_custom_messages
            WHERE instance_uid = %s AND direction = 'to_agent'
            ORDER BY id DESC OFFSET %s)""",
        (uid, CUSTOM_MESSAGES_KEPT),
    )
    return int(row[0])


def outgoing_message(conn: Conn, message_id: int) -> tuple[bytes, str, str, bytes] | None:
    """(agent, capability, type, data) of a stored outgoing custom message."""
    row = conn.execute(
        "SELECT instance_uid, capability, type, data FROM agent_custom_messages "
        "WHERE id = %s AND direction = 'to_agent'",
        (message_id,),
    ).fetchone()
    return None if row is None else (bytes(row[0]), row[1], row[2], bytes(row[3]))


def custom_messages(conn: Conn, uid: bytes, direction: str | None) -> list[CustomMessageRow]:
    """The agent's kept custom messages (one direction, or both), newest first by when they
    were sent (an agent's are stored at the writer's next flush, after later operator sends)."""
    where = "instance_uid = %s" + (" AND direction = %s" if direction else "")
    params: tuple[Any, ...] = (uid, direction) if direction else (uid,)
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM agent_custom_messages WHERE {where} "
        "ORDER BY at DESC, id DESC",
        params,
    ).fetchall()
    return [CustomMessageRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7]) for r in rows]


# ----------------------------------------------------------------------------- group restarts


@dataclass(frozen=True, slots=True)
class GroupRestartRow:
    id: int
    group_name: str
    state: str
    batch_percent: int
    pause_s: int
    targets: int
    batches: int
    requested: int
    skipped: int
    next_batch_at: datetime
    created_by: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    ended_by: str | None

    def summary(self) -> dict[str, Any]:
        """A compact form for audit rows."""
        return {
            "id": self.id,
            "state": self.state,
            "targets": self.targets,
            "batches": self.batches,
            "requested": self.requested,
            "skipped": self.skipped,
        }


_RESTART_COLUMNS = (
    "id, group_name, state, batch_percent, pause_s, targets, batches, requested, skipped, "
    "next_batch_at, created_by, created_at, updated_at, ended_at, ended_by"
)


def latest_group_restart(conn: Conn, group: str) -> GroupRestartRow | None:
    row = conn.execute(
        f"SELECT {_RESTART_COLUMNS} FROM group_restarts WHERE group_name = %s "
        "ORDER BY id DESC LIMIT 1",
        (group,),
    ).fetchone()
    return GroupRestartRow(*row) if row else None


def start_group_restart(
    conn: Conn,
    group: str,
    selector: dict[str, str],
    *,
    batch_percent: int,
    pause_s: int,
    actor: str,
    sender: str,
) -> tuple[GroupRestartRow, list[bytes]]:
    """Start restarting the group's members (those online and accepting restarts now) and send
    the first batch; (the restart, the agents of that batch this instance holds). Every
    instance is told to drive it from now on. 409 ``restart_running`` while one runs."""
    running = latest_group_restart(conn, group)
    if running is not None and running.state == "running":
        raise Conflict(
            "restart_running",
            f"group {group!r} is being restarted (restart {running.id}); cancel it first",
        )
    row = conn.execute(
        f"""INSERT INTO group_restarts (group_name, state, batch_percent, pause_s, targets,
            created_by) VALUES (%s, 'running', %s, %s, 0, %s) RETURNING {_RESTART_COLUMNS}""",
        (group, batch_percent, pause_s, actor),
    ).fetchone()
    assert row is not None
    restart = GroupRestartRow(*row)
    where, params = selector_sql(selector)
    params.update(id=restart.id, caps=AGENT_ACCEPTS_RESTART_COMMAND)
    targets = conn.execute(
        f"""INSERT INTO group_restart_agents (restart_id, instance_uid)
        SELECT %(id)s, a.instance_uid FROM agents AS a
        WHERE a.status = 'online' AND a.capabilities & %(caps)s <> 0 AND {where}""",
        params,
    ).rowcount
    conn.execute("UPDATE group_restarts SET targets = %s WHERE id = %s", (targets, restart.id))
    for payload in encode_notices(GROUP_RESTARTS_NOTICE, sender):
        conn.execute("SELECT pg_notify(%s, %s)", (FLEET_CHANNEL, payload))
    started = dataclasses.replace(restart, targets=targets)
    return advance_group_restart(conn, started, sender=sender)


def cancel_group_restart(conn: Conn, group: str, actor: str) -> GroupRestartRow:
    """Cancel the group's running restart: no further batch, on any instance. 404
    ``restart_not_found`` when the group was never restarted, 409 ``restart_not_running`` when
    its latest restart has ended."""
    latest = latest_group_restart(conn, group)
    if latest is None:
        raise NotFound("restart_not_found", f"group {group!r} has never been restarted")
    row = conn.execute(
        f"""UPDATE group_restarts SET state = 'cancelled', ended_at = now(), ended_by = %s,
            updated_at = now()
        WHERE id = %s AND state = 'running' RETURNING {_RESTART_COLUMNS}""",
        (actor, latest.id),
    ).fetchone()
    if row is None:
        raise Conflict(
            "restart_not_running",
            f"the latest restart of group {group!r} ({latest.id}) is {latest.state}",
        )
    return GroupRestartRow(*row)


def any_group_restart_running(conn: Conn) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM group_restarts WHERE state = 'running')")
    found = row.fetchone()
    return bool(found and found[0])


def drive_group_restarts(
    conn: Conn, *, sender: str
) -> tuple[list[tuple[GroupRestartRow, list[bytes]]], bool]:
    """Send the next batch of every running restart whose pause is over and that no other
    instance is driving right now: [(the restart after it, the agents ``sender`` holds)], and
    whether any restart still runs."""
    rows = conn.execute(
        f"SELECT {_RESTART_COLUMNS} FROM group_restarts "
        "WHERE state = 'running' AND next_batch_at <= now() ORDER BY id FOR UPDATE SKIP LOCKED"
    ).fetchall()
    moved = [advance_group_restart(conn, GroupRestartRow(*row), sender=sender) for row in rows]
    return moved, any_group_restart_running(conn)


_NEXT_BATCH = """
SELECT r.instance_uid, COALESCE(a.status = 'online' AND a.capabilities & %(caps)s <> 0, false),
    a.serving_instance
FROM group_restart_agents AS r LEFT JOIN agents AS a ON a.instance_uid = r.instance_uid
WHERE r.restart_id = %(id)s AND r.batch IS NULL
ORDER BY r.instance_uid LIMIT %(n)s
"""

_MARK_BATCH = """
UPDATE group_restart_agents SET batch = %(batch)s, at = now(),
    outcome = CASE WHEN instance_uid = ANY(%(requested)s) THEN 'requested' ELSE 'skipped' END
WHERE restart_id = %(id)s AND instance_uid = ANY(%(uids)s)
"""

_STORE_BATCH = f"""
UPDATE group_restarts SET batches = batches + 1, requested = requested + %(requested)s,
    skipped = skipped + %(skipped)s, updated_at = now(),
    state = CASE WHEN %(done)s THEN 'completed' ELSE state END,
    ended_at = CASE WHEN %(done)s THEN now() END,
    next_batch_at = now() + make_interval(secs => pause_s)
WHERE id = %(id)s RETURNING {_RESTART_COLUMNS}
"""


def advance_group_restart(
    conn: Conn, restart: GroupRestartRow, *, sender: str
) -> tuple[GroupRestartRow, list[bytes]]:
    """One batch of a running restart (its row locked by the caller): ``batch_percent`` of its
    targets, rounded up. Agents that went offline or stopped accepting restarts since it
    started are skipped. Returns the restart after it and the agents ``sender`` holds (the
    others' instances are told in this transaction)."""
    size = batch_size(restart.targets, restart.batch_percent) if restart.targets else 0
    picked = conn.execute(
        _NEXT_BATCH, {"caps": AGENT_ACCEPTS_RESTART_COMMAND, "id": restart.id, "n": size}
    ).fetchall()
    uids = [bytes(uid) for uid, _, _ in picked]
    requested = [bytes(uid) for uid, ok, _ in picked if ok]
    serving = {bytes(uid): instance for uid, ok, instance in picked if ok}
    batch = restart.batches + 1
    conn.execute(
        _MARK_BATCH, {"batch": batch, "requested": requested, "id": restart.id, "uids": uids}
    )
    local = record_restart(conn, requested, sender=sender, serving=serving) if requested else []
    left = conn.execute(
        "SELECT count(*) FROM group_restart_agents WHERE restart_id = %s AND batch IS NULL",
        (restart.id,),
    ).fetchone()
    done = not left or not left[0]
    row = conn.execute(
        _STORE_BATCH,
        {
            "requested": len(requested),
            "skipped": len(uids) - len(requested),
            "done": done,
            "id": restart.id,
        },
    ).fetchone()
    assert row is not None
    after = GroupRestartRow(*row)
    append_audit(
        conn,
        AuditEntry(
            SYSTEM_ACTOR,
            SYSTEM_ROLE,
            "group.restart.batch",
            f"group:{restart.group_name}",
            after={**after.summary(), "batch": batch},
        ),
    )
    return after, local
