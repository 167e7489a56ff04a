"""SQL of connection settings: group and agent settings, issued certificates, reported statuses.

Plain functions of a psycopg connection, run in a worker thread by ``Database.run`` (one
transaction per call). A change of settings commits with its audit row and the ``configs``
notice (``config_queries.notify_changed``): every instance reloads its offers with its
configuration directory. An issued certificate commits with a ``certificates`` notice naming
the agent and its serial, so that every instance knows the serial its offers' hashes name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .notices import FLEET_CHANNEL, encode_notices

Conn = psycopg.Connection[Any]

CERTIFICATES_NOTICE = "certificates"


@dataclass(frozen=True, slots=True)
class SettingsRows:
    groups: list[tuple[str, dict[str, Any]]]
    agents: list[tuple[bytes, dict[str, Any]]]


def load_settings(conn: Conn) -> SettingsRows:
    """Every group's and every agent's settings (stored form, secrets included)."""
    groups = conn.execute("SELECT group_name, settings FROM group_connection_settings").fetchall()
    agents = conn.execute("SELECT instance_uid, settings FROM agent_connection_settings").fetchall()
    return SettingsRows(
        groups=[(r[0], r[1]) for r in groups], agents=[(bytes(r[0]), r[1]) for r in agents]
    )


# Settings are kept per group and per agent in two tables of one shape: (table, key column).
_GROUP = ("group_connection_settings", "group_name")
_AGENT = ("agent_connection_settings", "instance_uid")


def _settings(conn: Conn, owner: tuple[str, str], key: Any, lock: bool) -> dict[str, Any] | None:
    table, column = owner
    sql = f"SELECT settings FROM {table} WHERE {column} = %s" + (" FOR UPDATE" if lock else "")
    row = conn.execute(sql, (key,)).fetchone()
    return None if row is None else dict(row[0])


def _put(
    conn: Conn, owner: tuple[str, str], key: Any, settings: dict[str, Any], actor: str
) -> None:
    table, column = owner
    conn.execute(
        f"""INSERT INTO {table} ({column}, settings, updated_by)
        VALUES (%s, %s, %s) ON CONFLICT ({column}) DO UPDATE
        SET settings = EXCLUDED.settings, updated_by = EXCLUDED.updated_by, updated_at = now()""",
        (key, Jsonb(settings), actor),
    )


def _delete(conn: Conn, owner: tuple[str, str], key: Any) -> bool:
    table, column = owner
    return conn.execute(f"DELETE FROM {table} WHERE {column} = %s", (key,)).rowcount > 0


def group_settings(conn: Conn, name: str, *, lock: bool = False) -> dict[str, Any] | None:
    return _settings(conn, _GROUP, name, lock)


def put_group_settings(conn: Conn, name: str, settings: dict[str, Any], actor: str) -> None:
    _put(conn, _GROUP, name, settings, actor)


def delete_group_settings(conn: Conn, name: str) -> bool:
    return _delete(conn, _GROUP, name)


def agent_settings(conn: Conn, uid: bytes, *, lock: bool = False) -> dict[str, Any] | None:
    return _settings(conn, _AGENT, uid, lock)


def put_agent_settings(conn: Conn, uid: bytes, settings: dict[str, Any], actor: str) -> None:
    _put(conn, _AGENT, uid, settings, actor)


def delete_agent_settings(conn: Conn, uid: bytes) -> bool:
    return _delete(conn, _AGENT, uid)


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True, slots=True)
class CertificateRow:
    serial: str  # hex
    not_before: datetime
    not_after: datetime
    key_sha256: bytes
    certificate: str  # PEM
    origin: str  # csr | rotation
    issued_at: datetime
    issued_by: str


_CERT_COLUMNS = (
    "serial, not_before, not_after, key_sha256, certificate, origin, issued_at, issued_by"
)


def certificate_of(conn: Conn, uid: bytes) -> CertificateRow | None:
    row = conn.execute(
        f"SELECT {_CERT_COLUMNS} FROM agent_certificates WHERE instance_uid = %s", (uid,)
    ).fetchone()
    if row is None:
        return None
    return CertificateRow(row[0], row[1], row[2], bytes(row[3]), *row[4:])


def record_certificate(conn: Conn, uid: bytes, row: CertificateRow, sender: str) -> None:
    """Store the agent's new certificate (replacing the previous one) and tell every instance
    its serial (delivered at commit)."""
    conn.execute(
        f"""INSERT INTO agent_certificates (instance_uid, {_CERT_COLUMNS})
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (instance_uid) DO UPDATE
        SET serial = EXCLUDED.serial, not_before = EXCLUDED.not_before,
            not_after = EXCLUDED.not_after, key_sha256 = EXCLUDED.key_sha256,
            certificate = EXCLUDED.certificate, origin = EXCLUDED.origin,
            issued_at = EXCLUDED.issued_at, issued_by = EXCLUDED.issued_by""",
        (
            uid,
            row.serial,
            row.not_before,
            row.not_after,
            row.key_sha256,
            row.certificate,
            row.origin,
            row.issued_at,
            row.issued_by,
        ),
    )
    for payload in encode_notices(CERTIFICATES_NOTICE, sender, uids=[uid.hex()], serial=row.serial):
        conn.execute("SELECT pg_notify(%s, %s)", (FLEET_CHANNEL, payload))


def current_serials(conn: Conn, uids: list[bytes] | None = None) -> list[tuple[bytes, str]]:
    """(uid, serial) of the certificates not expired yet (of ``uids``, or all)."""
    sql = "SELECT instance_uid, serial FROM agent_certificates WHERE not_after > now()"
    if uids is None:
        rows = conn.execute(sql).fetchall()
    else:
        rows = conn.execute(sql + " AND instance_uid = ANY(%s)", (uids,)).fetchall()
    return [(bytes(r[0]), r[1]) for r in rows]


def expiring_count(conn: Conn, within_days: int) -> int:
    """Certificates still valid that expire within ``within_days`` (fleet-wide)."""
    row = conn.execute(
        "SELECT count(*) FROM agent_certificates WHERE not_after > now() "
        "AND not_after <= now() + make_interval(days => %s)",
        (within_days,),
    ).fetchone()
    return int(row[0]) if row else 0


# ----------------------------------------------------------------------------- statuses


@dataclass(frozen=True, slots=True)
class StatusRow:
    settings_hash: bytes
    status: str  # UNSET, APPLIED, APPLYING, FAILED
    error_message: str
    reported_at: datetime


def write_statuses(conn: Conn, rows: list[tuple[bytes, bytes, str, str, float]]) -> None:
    """Upsert (uid, hash, status, error, reported at as UNIX seconds) in one statement."""
    if not rows:
        return
    uids, hashes, statuses, errors, ats = (list(column) for column in zip(*rows, strict=True))
    conn.execute(
        """INSERT INTO agent_connection_status AS s
            (instance_uid, settings_hash, status, error_message, reported_at)
        SELECT u, h, st, e, to_timestamp(t)
        FROM unnest(%s::bytea[], %s::bytea[], %s::text[], %s::text[], %s::float8[])
            AS x(u, h, st, e, t)
        ON CONFLICT (instance_uid) DO UPDATE SET settings_hash = EXCLUDED.settings_hash,
            status = EXCLUDED.status, error_message = EXCLUDED.error_message,
            reported_at = EXCLUDED.reported_at
        WHERE s.reported_at <= EXCLUDED.reported_at""",
        (uids, hashes, statuses, errors, ats),
    )


def status_of(conn: Conn, uid: bytes) -> StatusRow | None:
    row = conn.execute(
        "SELECT settings_hash, status, error_message, reported_at FROM agent_connection_status "
        "WHERE instance_uid = %s",
        (uid,),
    ).fetchone()
    return None if row is None else StatusRow(bytes(row[0]), row[1], row[2], row[3])
