"""Why a connection ended: disconnect reasons and WebSocket close codes, defined once.

The reasons are stored in ``agent_connection_history.disconnect_reason`` and
``agents.disconnect_reason`` and shown by the API, so their spelling is part of the interface.
"""

from __future__ import annotations

from typing import Final

# -- disconnect reasons (history rows, agent rows, the API) ------------------------------------
AGENT_DISCONNECT: Final = "agent_disconnect"  # the agent said goodbye
CONNECTION_CLOSED: Final = "connection closed"  # the WebSocket closed without a goodbye
HEARTBEAT_TIMEOUT: Final = "heartbeat timeout"  # silent past its timeout
SUPERSEDED: Final = "superseded by a new connection"  # the agent connected again elsewhere
UID_CHANGED: Final = "instance uid changed"  # the agent continued under a new uid
SERVER_SHUTDOWN: Final = "server shutdown"  # this server stopped (SIGTERM)
SERVER_RESTART: Final = "server restart"  # this server was killed; closed at its next start
SERVER_LOST: Final = "server lost"  # another instance died; closed by a survivor
OPERATOR: Final = "disconnected by an operator"  # POST /api/agents/{id}/disconnect
# an unproven claim, ended when the database showed the uid held with proof by another instance
PROVEN_ELSEWHERE: Final = "instance uid held by a proven connection"
# the session ended (closed, said goodbye, went silent, reconnected) within RESTART_WINDOW_S of
# a Restart command sent to it: the agent restarting, as far as the server can tell
RESTART_REQUESTED: Final = "restart requested"
RESTART_WINDOW_S: Final = 120.0
#: The endings a restart explains; an operator's disconnect or a server shutdown it does not.
RESTART_ENDINGS: Final = frozenset(
    {AGENT_DISCONNECT, CONNECTION_CLOSED, HEARTBEAT_TIMEOUT, SUPERSEDED}
)

# -- WebSocket close codes (RFC 6455 section 7.4: 4000-4999 are the application's) -------------
CLOSE_GOING_AWAY: Final = 1001  # server shutting down
CLOSE_SUPERSEDED: Final = 4000  # a newer connection took over this agent
CLOSE_TIMEOUT: Final = 4001  # no message within the heartbeat timeout
CLOSE_ROUTED: Final = 4002  # an operator (or another instance) disconnected the agent
CLOSE_REFUSED: Final = 4003  # the uid is held by a connection that proved it; this one did not
