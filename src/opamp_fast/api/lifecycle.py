"""``DELETE /api/agents/{id}``: forget an offline agent, on every instance.

The deletion, its audit row and the notices that make every instance forget the agent commit in
one transaction (``storage.lifecycle``); this instance forgets it before answering. An online
agent is a 409: an agent that is connected is not dead.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..protocol.codec import format_instance_uid
from ..storage.config_queries import append_audit
from ..storage.lifecycle import Forgotten
from .audit import entry as audit_entry
from .errors import APIError, agent_not_found
from .lifecycle_models import AgentForgotten
from .params import AGENT_ID_PARAM, Param, path_agent_id, query_bool
from .responses import JSONResponse
from .roles import require_role
from .routing import Operation, Router
from .state import services_of

PURGE_PARAM = Param(
    "purge_history",
    "query",
    "Also delete the agent's connection history now (otherwise history retention removes it "
    "in time).",
    {"type": "boolean", "default": False},
)

router = Router()


def _before(forgotten: Forgotten) -> dict[str, Any]:
    agent = forgotten.agents[0]
    gone = agent.last_disconnected_at
    return {
        "name": agent.name,
        "labels": agent.labels,
        "last_disconnected_at": None if gone is None else gone.isoformat(),
    }


@router.delete(
    "/api/agents/{id}",
    Operation(
        "Forget an agent",
        "Deletes an offline agent: its row, labels, config pin, package offers and "
        "statuses, and its rollout admissions; its connection history stays until history "
        "retention removes it, or goes now with `purge_history=true`. Every instance forgets "
        "it; if it comes back it is a new agent, asked for its full state. 409 `agent_online` "
        "when it is online. Needs the admin role; audited (`agent.forget`).",
        params=(AGENT_ID_PARAM, PURGE_PARAM),
        response=AgentForgotten,
        errors=(400, 403, 404, 409, 503),
    ),
)
async def forget_agent(request: Request) -> Response:
    uid = path_agent_id(request)
    agent_id = format_instance_uid(uid)
    target = f"agent:{agent_id}"
    require_role(request, "admin", action="agent.forget", target=target)
    purge = query_bool(request.query_params, "purge_history")

    def audit(conn: Any, forgotten: Forgotten) -> None:
        after = {"purge_history": purge, "history_deleted": forgotten.history_deleted}
        row = audit_entry(request, "agent.forget", target, before=_before(forgotten), after=after)
        append_audit(conn, row)

    lifecycle = services_of(request).lifecycle
    assert lifecycle is not None
    outcome = await lifecycle.forget(uid, purge_history=purge, also=audit)
    if outcome is None:
        raise agent_not_found(uid)
    if not isinstance(outcome, Forgotten):
        raise APIError(
            409,
            "agent_online",
            f"agent {agent_id} is online: only an offline agent can be forgotten (stop it, "
            "then forget it once it is offline)",
        )
    return JSONResponse(AgentForgotten(agent_id, outcome.history_deleted))
