"""SQL of the components agents report (``AvailableComponents``): which set each agent runs,
and the sets themselves.

The batch writer stores each distinct set once (``component_sets``, keyed by the digest of
what was reported) and each agent's row names its set (``agents.available_components_digest``;
NULL: the agent never reported its components). A fleet runs a few builds, so every question
here is answered per set, then per agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config_queries import Conn, selector_sql

__all__ = ["agents_by_set", "component_sets", "member_sets"]


def member_sets(conn: Conn, selector: Mapping[str, str]) -> list[tuple[bytes | None, int]]:
    """(component set digest or None, how many agents) over the agents matching ``selector``."""
    where, params = selector_sql(selector)
    rows = conn.execute(
        f"SELECT a.available_components_digest, count(*) FROM agents AS a WHERE {where} GROUP BY 1",
        params,
    ).fetchall()
    return [(None if d is None else bytes(d), int(n)) for d, n in rows]


def agents_by_set(conn: Conn, uids: list[bytes]) -> dict[bytes | None, list[str]]:
    """The agents among ``uids`` by the component set they reported (ids, sorted)."""
    rows = conn.execute(
        "SELECT available_components_digest, array_agg(uid_text ORDER BY uid_text) "
        "FROM agents WHERE instance_uid = ANY(%s) GROUP BY 1",
        (uids,),
    ).fetchall()
    return {(None if d is None else bytes(d)): list(ids) for d, ids in rows}


def component_sets(conn: Conn, digests: list[bytes]) -> dict[bytes, dict[str, Any]]:
    """The stored sets (``storage.rows.available_components_to_json`` shape) by digest."""
    rows = conn.execute(
        "SELECT digest, components FROM component_sets WHERE digest = ANY(%s)", (digests,)
    ).fetchall()
    return {bytes(d): components for d, components in rows}
