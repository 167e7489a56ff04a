"""SQL of remote configuration management: versions, labels, pins, groups, status, audit.

Plain functions of a psycopg connection, run in a worker thread by ``Database.run`` (one
transaction per call). Every change is made in one transaction with its audit row and with the
``configs`` notice (``pg_notify`` on the fleet channel) that makes every instance reload its
directory: the notice arrives when the change is visible, or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .notices import FLEET_CHANNEL, encode_notices

Conn = psycopg.Connection[Any]

CONFIGS_NOTICE = "configs"


class Conflict(Exception):
    """The change conflicts with the stored state (HTTP 409); ``message`` says how."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NotFound(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def notify_changed(conn: Conn, sender: str) -> None:
    """Tell every instance to reload its directory (delivered at commit)."""
    for payload in encode_notices(CONFIGS_NOTICE, sender):
        conn.execute("SELECT pg_notify(%s, %s)", (FLEET_CHANNEL, payload))


# ----------------------------------------------------------------------------- audit


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str
    role: str
    action: str
    target: str
    outcome: str = "ok"
    before: Any = None
    after: Any = None
    request_id: str | None = None
    client_addr: str | None = None


def append_audit(conn: Conn, entry: AuditEntry) -> None:
    conn.execute(
        "INSERT INTO audit_log (actor, role, action, target, outcome, before, after, "
        "request_id, client_addr) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            entry.actor,
            entry.role,
            entry.action,
            entry.target,
            entry.outcome,
            None if entry.before is None else Jsonb(entry.before),
            None if entry.after is None else Jsonb(entry.after),
            entry.request_id,
            entry.client_addr,
        ),
    )


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str | None = None
    target: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


_AUDIT_COLUMNS = "id, at, actor, role, action, target, outcome, before, after, request_id, " + (
    "client_addr"
)


def audit_page(
    conn: Conn, flt: AuditFilter, *, limit: int, after: tuple[datetime, int] | None
) -> list[tuple[Any, ...]]:
    """Newest first, keyset on ``(at, id)``; ``limit + 1`` rows (the extra one: a next page)."""
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": limit + 1}
    for column in ("actor", "target", "action"):
        value = getattr(flt, column)
        if value is not None:
            clauses.append(f"{column} = %({column})s")
            params[column] = value
    if flt.since is not None:
        clauses.append("at >= %(since)s")
        params["since"] = flt.since
    if flt.until is not None:
        clauses.append("at < %(until)s")
        params["until"] = flt.until
    if after is not None:
        clauses.append("(at, id) < (%(at)s, %(id)s)")
        params["at"], params["id"] = after
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        f"SELECT {_AUDIT_COLUMNS} FROM audit_log {where} ORDER BY at DESC, id DESC LIMIT %(limit)s"
    )
    return list(conn.execute(sql, params).fetchall())


# ----------------------------------------------------------------------------- versions


@dataclass(frozen=True, slots=True)
class VersionRow:
    name: str
    version: int
    config_hash: bytes
    size_bytes: int
    created_at: datetime
    created_by: str
    files: dict[str, Any] | None = None


_VERSION_COLUMNS = "name, version, config_hash, size_bytes, created_at, created_by"


def create_version(
    conn: Conn, name: str, files: dict[str, Any], config_hash: bytes, size: int, actor: str
) -> tuple[VersionRow, bool]:
    """The version with this content (existing, ``False``; or new, ``True``). Versions of one
    name are numbered under a transaction-scoped advisory lock on the name."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 13))", (name,))
    row = conn.execute(
        f"SELECT {_VERSION_COLUMNS} FROM config_versions WHERE name = %s AND config_hash = %s",
        (name, config_hash),
    ).fetchone()
    if row is not None:
        return VersionRow(*row), False
    row = conn.execute(
        f"""INSERT INTO config_versions (name, version, config_hash, files, size_bytes, created_by)
        SELECT %(name)s, COALESCE(max(version), 0) + 1, %(hash)s, %(files)s, %(size)s, %(actor)s
        FROM config_versions WHERE name = %(name)s
        RETURNING {_VERSION_COLUMNS}""",
        {"name": name, "hash": config_hash, "files": Jsonb(files), "size": size, "actor": actor},
    ).fetchone()
    assert row is not None
    return VersionRow(*row), True


def list_configs(conn: Conn) -> list[tuple[Any, ...]]:
    """(name, latest version, versions, latest hash, updated_at) per config, by name."""
    return list(
        conn.execute(
            """SELECT DISTINCT ON (name) name, version,
                (SELECT count(*) FROM config_versions c WHERE c.name = v.name),
                config_hash, created_at
            FROM config_versions v ORDER BY name, version DESC"""
        ).fetchall()
    )


def versions_of(conn: Conn, name: str) -> list[VersionRow]:
    rows = conn.execute(
        f"SELECT {_VERSION_COLUMNS} FROM config_versions WHERE name = %s ORDER BY version DESC",
        (name,),
    ).fetchall()
    return [VersionRow(*r) for r in rows]


def get_version(conn: Conn, name: str, version: int | None) -> VersionRow | None:
    """One version with its files; the latest when ``version`` is None."""
    if version is None:
        sql = (
            f"SELECT {_VERSION_COLUMNS}, files FROM config_versions WHERE name = %s "
            "ORDER BY version DESC LIMIT 1"
        )
        row = conn.execute(sql, (name,)).fetchone()
    else:
        sql = (
            f"SELECT {_VERSION_COLUMNS}, files FROM config_versions "
            "WHERE name = %s AND version = %s"
        )
        row = conn.execute(sql, (name, version)).fetchone()
    return VersionRow(*row) if row else None


def require_version(conn: Conn, name: str, version: int | None) -> VersionRow:
    row = get_version(conn, name, version)
    if row is None:
        what = f"config {name!r}" if version is None else f"config {name!r} version {version}"
        raise NotFound("config_not_found", f"no {what}")
    return row


def config_users(conn: Conn, name: str) -> list[str]:
    """What uses any version of config ``name`` (groups, pins, active rollouts)."""
    rows = conn.execute(
        """SELECT 'group ' || name FROM agent_groups
            WHERE config_name = %(n)s OR previous_name = %(n)s
        UNION ALL SELECT 'pinned agent ' || encode(instance_uid, 'hex')::uuid::text
            FROM agent_config_pins WHERE config_name = %(n)s
        UNION ALL SELECT 'rollout ' || id FROM rollouts
            WHERE (to_name = %(n)s OR from_name = %(n)s) AND state IN ('running', 'paused')
        LIMIT 20""",
        {"n": name},
    ).fetchall()
    return [r[0] for r in rows]


def delete_config(conn: Conn, name: str) -> int:
    """Delete every version of an unused config (finished rollouts that named it go with it:
    the audit log keeps their story). Raises Conflict when something uses it."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 13))", (name,))
    users = config_users(conn, name)
    if users:
        raise Conflict("config_in_use", f"config {name!r} is in use by {', '.join(users)}")
    conn.execute("DELETE FROM rollouts WHERE to_name = %(n)s OR from_name = %(n)s", {"n": name})
    return conn.execute("DELETE FROM config_versions WHERE name = %s", (name,)).rowcount


# ----------------------------------------------------------------------------- labels, pins


def set_labels(conn: Conn, uid: bytes, labels: dict[str, str]) -> dict[str, Any] | None:
    """Replace an agent's operator labels; the old ones, or None when the agent is unknown."""
    row = conn.execute(
        "SELECT labels FROM agents WHERE instance_uid = %s FOR UPDATE", (uid,)
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE agents SET labels = %s, updated_at = now() WHERE instance_uid = %s",
        (Jsonb(labels), uid),
    )
    return dict(row[0])


def get_pin(conn: Conn, uid: bytes) -> tuple[str, int] | None:
    row = conn.execute(
        "SELECT config_name, config_version FROM agent_config_pins WHERE instance_uid = %s", (uid,)
    ).fetchone()
    return (row[0], row[1]) if row else None


def set_pin(conn: Conn, uid: bytes, name: str, version: int) -> None:
    conn.execute(
        """INSERT INTO agent_config_pins (instance_uid, config_name, config_version)
        VALUES (%s, %s, %s) ON CONFLICT (instance_uid) DO UPDATE
        SET config_name = EXCLUDED.config_name, config_version = EXCLUDED.config_version,
            created_at = now()""",
        (uid, name, version),
    )


def clear_pin(conn: Conn, uid: bytes) -> bool:
    return (
        conn.execute("DELETE FROM agent_config_pins WHERE instance_uid = %s", (uid,)).rowcount > 0
    )


def agent_known(conn: Conn, uid: bytes) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM agents WHERE instance_uid = %s)", (uid,))
    found = row.fetchone()
    return bool(found and found[0])


@dataclass(frozen=True, slots=True)
class AgentOutcome:
    labels: dict[str, Any]
    description: dict[str, Any] | None
    reported: dict[str, Any] | None
    updated_at: datetime | None
    failed_hash: str | None
    failed_error: str | None


def agent_outcome(conn: Conn, uid: bytes) -> AgentOutcome | None:
    row = conn.execute(
        "SELECT labels, description, remote_config_status, remote_config_updated_at, "
        "remote_config_failed_hash, remote_config_failed_error FROM agents WHERE instance_uid = %s",
        (uid,),
    ).fetchone()
    return AgentOutcome(*row) if row else None


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True, slots=True)
class GroupRow:
    name: str
    selector: dict[str, str]
    config_name: str | None
    config_version: int | None
    previous_name: str | None
    previous_version: int | None
    created_at: datetime
    updated_at: datetime
    # Short-lived members (``lifecycle.EPHEMERAL_KEYS``) are forgotten after this long offline.
    forget_offline_after_s: int | None = None


_GROUP_COLUMNS = (
    "name, selector, config_name, config_version, previous_name, previous_version, "
    "created_at, updated_at, forget_offline_after_s"
)


def get_group(conn: Conn, name: str, *, lock: bool = False) -> GroupRow | None:
    sql = f"SELECT {_GROUP_COLUMNS} FROM agent_groups WHERE name = %s"
    row = conn.execute(sql + (" FOR UPDATE" if lock else ""), (name,)).fetchone()
    return GroupRow(*row) if row else None


def list_groups(conn: Conn) -> list[GroupRow]:
    rows = conn.execute(f"SELECT {_GROUP_COLUMNS} FROM agent_groups ORDER BY name").fetchall()
    return [GroupRow(*r) for r in rows]


def upsert_group(
    conn: Conn,
    name: str,
    selector: dict[str, str],
    target: tuple[str, int] | None,
    previous: tuple[str, int] | None,
    forget_offline_after_s: int | None = None,
) -> GroupRow:
    row = conn.execute(
        f"""INSERT INTO agent_groups AS g (name, selector, config_name, config_version,
            previous_name, previous_version, forget_offline_after_s)
        VALUES (%(name)s, %(sel)s, %(cn)s, %(cv)s, %(pn)s, %(pv)s, %(forget)s)
        ON CONFLICT (name) DO UPDATE SET selector = EXCLUDED.selector,
            config_name = EXCLUDED.config_name, config_version = EXCLUDED.config_version,
            previous_name = EXCLUDED.previous_name, previous_version = EXCLUDED.previous_version,
            forget_offline_after_s = EXCLUDED.forget_offline_after_s, updated_at = now()
        RETURNING {_GROUP_COLUMNS}""",
        {
            "forget": forget_offline_after_s,
            "name": name,
            "sel": Jsonb(selector),
            "cn": target[0] if target else None,
            "cv": target[1] if target else None,
            "pn": previous[0] if previous else None,
            "pv": previous[1] if previous else None,
        },
    ).fetchone()
    assert row is not None
    return GroupRow(*row)


def delete_group(conn: Conn, name: str) -> bool:
    return conn.execute("DELETE FROM agent_groups WHERE name = %s", (name,)).rowcount > 0


def selector_sql(selector: Mapping[str, str], prefix: str = "sel") -> tuple[str, dict[str, Any]]:
    """A WHERE fragment over ``agents AS a`` matching ``selector`` exactly like
    :meth:`opamp_fast.remote_config.model.Selector.matches` (labels, then identifying, then
    non-identifying attributes). ``TRUE`` for an empty selector."""
    clauses = []
    params: dict[str, Any] = {}
    for i, (key, value) in enumerate(sorted(selector.items())):
        k, v = f"{prefix}k{i}", f"{prefix}v{i}"
        params[k], params[v] = key, value
        clauses.append(
            f"""(CASE WHEN a.labels ? %({k})s THEN a.labels ->> %({k})s = %({v})s
            WHEN a.description -> 'identifying_attributes' ? %({k})s
                THEN a.description -> 'identifying_attributes' ->> %({k})s = %({v})s
            ELSE COALESCE(a.description -> 'non_identifying_attributes' ->> %({k})s = %({v})s,
                false) END)"""
        )
    return (" AND ".join(clauses) or "TRUE"), params


def count_matching(conn: Conn, selector: Mapping[str, str]) -> tuple[int, int]:
    """(agents matching, of which online) over the whole fleet."""
    where, params = selector_sql(selector)
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'online') FROM agents AS a "
        f"WHERE {where}",
        params,
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# ----------------------------------------------------------------------------- status


def config_status(conn: Conn, name: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Agents by (version, reported status) for config ``name``, and the failure messages
    grouped (version, error, count): agents whose last report names one of its versions, plus
    agents that fell back after failing one (their last failure names it)."""
    by_status = conn.execute(
        """SELECT v.version, lower(a.remote_config_status ->> 'status'), count(*)
        FROM config_versions v
        JOIN agents a ON a.remote_config_status ->> 'last_remote_config_hash'
            = encode(v.config_hash, 'hex')
        WHERE v.name = %(n)s GROUP BY 1, 2
        UNION ALL
        SELECT v.version, 'failed', count(*) FROM config_versions v
        JOIN agents a ON a.remote_config_failed_hash = encode(v.config_hash, 'hex')
        WHERE v.name = %(n)s AND a.remote_config_status ->> 'last_remote_config_hash'
            IS DISTINCT FROM encode(v.config_hash, 'hex')
        GROUP BY 1 ORDER BY 1 DESC, 2""",
        {"n": name},
    ).fetchall()
    errors = conn.execute(
        """SELECT v.version, a.remote_config_failed_error, count(*) FROM config_versions v
        JOIN agents a ON a.remote_config_failed_hash = encode(v.config_hash, 'hex')
        WHERE v.name = %(n)s GROUP BY 1, 2 ORDER BY 3 DESC, 1 DESC LIMIT 20""",
        {"n": name},
    ).fetchall()
    return list(by_status), list(errors)


# ----------------------------------------------------------------------------- directory


@dataclass(frozen=True, slots=True)
class DirectoryRows:
    versions: list[tuple[str, int, bytes, dict[str, Any]]]  # referenced versions, with files
    hashes: list[tuple[bytes, str, int]]  # every version's hash
    groups: list[GroupRow]
    pins: list[tuple[bytes, str, int]]
    labels: list[tuple[bytes, dict[str, str]]]
    rollouts: list[tuple[Any, ...]]  # the latest rollout per group (see ROLLOUT_COLUMNS)
    admitted: list[tuple[int, bytes]]  # (rollout id, uid) of active rollouts


ROLLOUT_COLUMNS = (
    "id, group_name, from_name, from_version, to_name, to_version, batch_percent, "
    "max_failed_percent, state, batches, eligible, admitted, applied, failed, pending, reason, "
    "created_by, created_at, updated_at"
)


def latest_rollouts(conn: Conn) -> list[tuple[Any, ...]]:
    """The latest rollout of each group."""
    return list(
        conn.execute(
            f"SELECT DISTINCT ON (group_name) {ROLLOUT_COLUMNS} FROM rollouts "
            "ORDER BY group_name, id DESC"
        ).fetchall()
    )


def load_directory(conn: Conn) -> DirectoryRows:
    versions = conn.execute(
        """SELECT v.name, v.version, v.config_hash, v.files FROM config_versions v
        WHERE EXISTS (SELECT 1 FROM agent_groups g
                WHERE (g.config_name, g.config_version) = (v.name, v.version)
                   OR (g.previous_name, g.previous_version) = (v.name, v.version))
           OR EXISTS (SELECT 1 FROM agent_config_pins p
                WHERE (p.config_name, p.config_version) = (v.name, v.version))
           OR EXISTS (SELECT 1 FROM rollouts r WHERE r.state IN ('running', 'paused')
                AND (r.from_name, r.from_version) = (v.name, v.version))"""
    ).fetchall()
    hashes = conn.execute("SELECT config_hash, name, version FROM config_versions").fetchall()
    rollouts = latest_rollouts(conn)
    admitted = conn.execute(
        "SELECT ra.rollout_id, ra.instance_uid FROM rollout_agents ra JOIN rollouts r "
        "ON r.id = ra.rollout_id WHERE r.state IN ('running', 'paused')"
    ).fetchall()
    return DirectoryRows(
        versions=[(r[0], r[1], bytes(r[2]), r[3]) for r in versions],
        hashes=[(bytes(r[0]), r[1], r[2]) for r in hashes],
        groups=list_groups(conn),
        pins=[
            (bytes(r[0]), r[1], r[2])
            for r in conn.execute(
                "SELECT instance_uid, config_name, config_version FROM agent_config_pins"
            )
        ],
        labels=[
            (bytes(r[0]), r[1])
            for r in conn.execute("SELECT instance_uid, labels FROM agents WHERE labels <> '{}'")
        ],
        rollouts=list(rollouts),
        admitted=[(r[0], bytes(r[1])) for r in admitted],
    )
