"""The components agents report, put to use: a config assignment whose config names a component
type a targeted agent lacks is refused (422 ``components_missing``, ``?force=true`` overrides,
audited), and a group shows how many of its members could take its config.

The config's component types are read from its files (``remote_config.model``: the keys under
``receivers:``, ``processors:``, ``exporters:``, ``extensions:``, ``connectors:``); each agent's
from the component set it reported (``storage.component_queries``). Only agents that reported
their components are checked: one that never did is not refused. Both sides are immutable (a
config version, a component set by its digest), so their parsed types are cached per app.
Everything here runs in the worker thread of the caller's transaction.
"""

from __future__ import annotations

import threading
from typing import Any

from starlette.requests import Request

from ..remote_config.model import (
    ComponentTypes,
    component_types_available,
    component_types_needed,
    files_from_json,
    missing_component_types,
)
from ..storage import component_queries as compq
from ..storage import config_queries as cq
from .command_models import AgentMissing, GroupComponents
from .errors import APIError, invalid_parameter
from .params import Param

__all__ = [
    "COMPONENTS_MISSING",
    "FORCE_PARAM",
    "ComponentCache",
    "ComponentsMissing",
    "parse_force",
]

#: Agents listed in a 422 (the total is given too).
LISTED = 100


class ComponentsMissing(APIError):
    """422 ``components_missing``, naming the agents and what each lacks."""

    def __init__(self, config: str, agents: list[AgentMissing], total: int) -> None:
        shown = ", ".join(
            f"{a.id} lacks {', '.join(f'{k}: {t}' for k, v in a.missing.items() for t in v)}"
            for a in agents[:3]
        )
        more = f" (and {total - 3} more)" if total > 3 else ""
        super().__init__(
            422,
            "components_missing",
            f"{total} targeted agent(s) lack components that {config} names: {shown}{more}; "
            "?force=true assigns it anyway",
        )
        self.extra = {
            "config": config,
            "agents": [{"id": a.id, "missing": a.missing} for a in agents[:LISTED]],
            "agents_total": total,
        }


FORCE_PARAM = Param(
    "force",
    "query",
    "`true`: assign the config even if targeted agents lack components it names (audited); "
    "otherwise that is a 422 `components_missing`.",
    {"type": "string", "enum": ["true", "false"]},
)


#: The 422 of an assignment refused by the pre-flight (``Operation.extra_responses``).
COMPONENTS_MISSING = {
    "422": {
        "description": "Targeted agents lack component types the config names "
        "(`components_missing`), listed with what each lacks.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ComponentsMissingError"}}
        },
    }
}


def parse_force(request: Request) -> bool:
    raw = request.query_params.get("force")
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise invalid_parameter("force", f"must be true or false, got {raw[:20]!r}")


class ComponentCache:
    """Parsed component types by config version and by component set (both immutable), kept
    for the app's life, bounded. Used from worker threads."""

    def __init__(self, max_entries: int = 512) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._needed: dict[tuple[str, int], ComponentTypes] = {}
        self._available: dict[bytes, ComponentTypes] = {}

    def needed(self, conn: cq.Conn, name: str, version: int) -> ComponentTypes:
        key = (name, version)
        with self._lock:
            hit = self._needed.get(key)
        if hit is not None:
            return hit
        row = cq.require_version(conn, name, version)
        needed = component_types_needed(files_from_json(row.files or {}))
        self._keep(self._needed, key, needed)
        return needed

    def available(self, conn: cq.Conn, digests: list[bytes]) -> dict[bytes, ComponentTypes]:
        with self._lock:
            out = {d: self._available[d] for d in digests if d in self._available}
        missing = [d for d in digests if d not in out]
        for digest, components in compq.component_sets(conn, missing).items():
            out[digest] = component_types_available(components)
            self._keep(self._available, digest, out[digest])
        return out

    def _keep(self, cache: dict[Any, ComponentTypes], key: Any, value: ComponentTypes) -> None:
        with self._lock:
            if len(cache) >= self._max:
                cache.clear()
            cache[key] = value

    # -- uses ---------------------------------------------------------------------------------
    def check(
        self, conn: cq.Conn, ref: tuple[str, int], uids: list[bytes]
    ) -> tuple[list[AgentMissing], int]:
        """The agents among ``uids`` that lack component types version ``ref`` names (the
        first ``LISTED``, sorted by id) and how many they are."""
        needed = self.needed(conn, *ref)
        if not needed or not uids:
            return [], 0
        by_set = compq.agents_by_set(conn, uids)
        digests = [d for d in by_set if d is not None]
        available = self.available(conn, digests)
        lacking: list[AgentMissing] = []
        for digest in digests:
            missing = missing_component_types(needed, available.get(digest, {}))
            if missing:
                lacking.extend(AgentMissing(agent_id, missing) for agent_id in by_set[digest])
        lacking.sort(key=lambda a: a.id)
        return lacking[:LISTED], len(lacking)

    def require(
        self, conn: cq.Conn, ref: tuple[str, int], uids: list[bytes], *, force: bool
    ) -> dict[str, Any] | None:
        """Refuse the assignment of ``ref`` to ``uids`` when some lack its components
        (:class:`ComponentsMissing`), unless ``force``: then what was overridden, for the
        audit row (None when nothing was)."""
        agents, total = self.check(conn, ref, uids)
        if not total:
            return None
        config = f"{ref[0]}@{ref[1]}"
        if not force:
            raise ComponentsMissing(config, agents, total)
        return {"forced": True, "agents_lacking_components": total, "first": agents[0].id}

    def group_fit(
        self, conn: cq.Conn, selector: dict[str, str], ref: tuple[str, int]
    ) -> GroupComponents:
        """How many of the agents matching ``selector`` could take version ``ref``."""
        needed = self.needed(conn, *ref)
        counts = compq.member_sets(conn, selector)
        available = self.available(conn, [d for d, _ in counts if d is not None])
        fit = GroupComponents(f"{ref[0]}@{ref[1]}", 0, 0, 0)
        for digest, n in counts:
            if digest is None:
                fit.unreported += n
            elif missing_component_types(needed, available.get(digest, {})):
                fit.incompatible += n
            else:
                fit.compatible += n
        return fit
