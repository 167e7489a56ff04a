"""``GET /api/events``: the fleet's events as Server-Sent Events.

Why SSE and not a WebSocket: the stream goes one way, SSE resumes with ``Last-Event-ID`` by
design, and it passes every proxy that passes HTTP. Browsers read it with ``fetch`` (which, unlike
``EventSource``, can send the bearer token).

One task group per stream owns its tasks: the pump (hub queue -> socket, keep-alive comments),
the disconnect watcher, and the label-filter refresher. The pump ends when the subscriber is
dropped (slow consumer: a ``resync`` event is sent first), when the client goes away, or when
the token expires (an ``auth_expired`` event is sent first).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio
import anyio.lowlevel
import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from ..fleet.events import (
    EVENT_ID_PATTERN,
    EVENT_TYPES,
    FRAME_SCHEMA,
    EventHub,
    FleetEvent,
    Subscriber,
)
from ..protocol.codec import format_instance_uid
from ..storage import Database
from .errors import invalid_parameter
from .params import LABEL_PARAM, UID_PATTERN, Param, parse_agent_id, parse_labels
from .routing import Operation, Router
from .state import services_of

logger = logging.getLogger(__name__)

MAX_AGENT_FILTERS: Final = 100
MAX_LABEL_MATCHES: Final = 100_000  # agents a label filter may resolve to
LABEL_REFRESH_S: Final = 10.0  # a label filter is re-resolved this often
SEND_TIMEOUT_S: Final = 30.0  # a client that reads nothing for this long is cut off
RETRY_MS: Final = 2000  # the reconnect delay suggested to clients
REPLAY_CHUNK: Final = 500  # replayed events encoded between two yields to the event loop
# After a wake-up the pump waits this long and sends everything queued by then in one write:
# at 100 subscribers, one ASGI send per event per subscriber costs the loop more than the agents.
COALESCE_S: Final = 0.05

_EXPIRED = b'event: auth_expired\ndata: {"type":"auth_expired"}\n\n'
_MATCHING = "SELECT uid_text FROM agents WHERE labels @> %s::jsonb LIMIT %s"

_TYPE_NAME = "(?:" + "|".join(t.replace(".", "\\.") for t in sorted(EVENT_TYPES)) + ")"
TYPE_PARAM = Param(
    "type",
    "query",
    "Only these event types (repeat, or separate with commas).",
    {
        "type": "array",
        "items": {"type": "string", "pattern": f"^{_TYPE_NAME}(?:,{_TYPE_NAME})*$"},
    },
    explode=True,
)
AGENT_PARAM = Param(
    "agent",
    "query",
    f"Only events about these agents (instance uids; repeat, at most {MAX_AGENT_FILTERS}). "
    "Fleet-level events (`instance.lost`) always pass.",
    {
        "type": "array",
        "items": {"type": "string", "pattern": UID_PATTERN},
        "maxItems": MAX_AGENT_FILTERS,
    },
    explode=True,
)
STREAM_LABEL_PARAM = Param(
    "label",
    "query",
    "Only events about agents carrying this label (`key:value`; repeat: all must match), "
    f"resolved when the stream opens and every {LABEL_REFRESH_S:.0f} s.",
    LABEL_PARAM.schema,
    explode=True,
)
LAST_ID_PARAM = Param(
    "last_event_id",
    "query",
    "Resume after this event id (as the `Last-Event-ID` header, which wins when both are sent). "
    "A well-formed id this instance cannot resume from starts the stream with `resync`.",
    {"type": "string", "pattern": EVENT_ID_PATTERN},
)


def parse_types(params: QueryParams) -> frozenset[str] | None:
    names = [name for raw in params.getlist("type") for name in raw.split(",")]
    if not names:
        return None
    for name in names:
        if name not in EVENT_TYPES:
            known = ", ".join(sorted(EVENT_TYPES))
            raise invalid_parameter("type", f"unknown event type {name[:40]!r} (known: {known})")
    return frozenset(names)


def parse_agents(params: QueryParams) -> frozenset[str] | None:
    raw = params.getlist("agent")
    if not raw:
        return None
    if len(raw) > MAX_AGENT_FILTERS:
        raise invalid_parameter("agent", f"at most {MAX_AGENT_FILTERS} agents")
    return frozenset(format_instance_uid(parse_agent_id(r)) for r in raw)


def parse_last_id(hub: EventHub, request: Request) -> str | None:
    """The header (an empty one, as a browser may send, means none), else the query parameter."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or (raw == "" and "last_event_id" not in request.query_params):
        return None
    if hub.parse_id(raw) is None:
        raise invalid_parameter("last_event_id", f"{raw[:40]!r} is not an event id")
    return raw


class EventStream(Response):
    """The streaming response: owns the subscriber and a task group for its lifetime."""

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: EventHub,
        sub: Subscriber,
        prologue: bytes,
        *,
        keepalive_s: float,
        expires_at: float,
        refresh: Any = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [  # no Content-Length: the body never ends by itself
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            # When the stream ends (a slow consumer dropped, the token expired), so does the
            # connection: a client that stopped reading does not keep a socket as idle keep-alive.
            (b"connection", b"close"),
        ]
        self.hub = hub
        self.sub = sub
        self.prologue = prologue
        self.keepalive_s = keepalive_s
        self.expires_at = expires_at
        self.refresh = refresh

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                if self.refresh is not None:
                    tg.start_soon(self.refresh, self.sub)
                if await self._pump(send):
                    with anyio.move_on_after(SEND_TIMEOUT_S):  # a complete (chunked) response
                        await send({"type": "http.response.body", "body": b""})
                tg.cancel_scope.cancel()
        except OSError:
            pass  # the client went away mid-write
        finally:
            self.hub.unsubscribe(self.sub)

    async def _watch_disconnect(self, receive: Any, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _write(self, send: Any, chunk: bytes) -> bool:
        with anyio.move_on_after(SEND_TIMEOUT_S):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            return True
        logger.info("event-stream client read nothing for %.0f s; closing", SEND_TIMEOUT_S)
        return False

    async def _pump(self, send: Any) -> bool:
        """Until dropped, expired or stuck; True when the response may end cleanly."""
        sub = self.sub
        expiry = anyio.current_time() + max(0.0, self.expires_at - time.time())
        if not await self._write(send, self.prologue + sub.take()):
            return False
        while True:
            with anyio.move_on_at(min(anyio.current_time() + self.keepalive_s, expiry)):
                await sub.wake.wait()
                await anyio.sleep(COALESCE_S)
            if sub.dropped:
                return await self._write(send, self.hub.resync_frame("slow consumer: queue full"))
            if anyio.current_time() >= expiry:
                return await self._write(send, _EXPIRED)
            if not await self._write(send, sub.take() or b": keep-alive\n\n"):
                return False


async def _matching(db: Database, labels: list[tuple[str, str]]) -> frozenset[str]:
    """The agents (canonical uids) carrying every label; a 400 beyond MAX_LABEL_MATCHES."""
    selector = msgspec.json.encode(dict(labels)).decode()

    def fetch(conn: Any) -> list[tuple[str]]:
        rows: list[tuple[str]] = conn.execute(
            _MATCHING, (selector, MAX_LABEL_MATCHES + 1)
        ).fetchall()
        return rows

    rows = await db.run(fetch)
    if len(rows) > MAX_LABEL_MATCHES:
        raise invalid_parameter("label", f"matches more than {MAX_LABEL_MATCHES} agents")
    return frozenset(r[0] for r in rows)


def _refresher(
    db: Database, labels: list[tuple[str, str]], agents: frozenset[str] | None
) -> Callable[[Subscriber], Awaitable[None]]:
    """The stream's task re-resolving its label filter every LABEL_REFRESH_S; what it finds is
    kept within ``agents``, the agents the request named (None: any)."""

    async def refresh(sub: Subscriber) -> None:
        while True:
            await anyio.sleep(LABEL_REFRESH_S)
            found = await _matching(db, labels)
            sub.agents = found if agents is None else found & agents

    return refresh


async def _prologue(hub: EventHub, replay: list[FleetEvent], resync: str | None) -> bytes:
    """What the stream starts with: the retry delay, the stream's name, a ``resync`` when the
    missed events are gone, then the replayed ones."""
    prologue = f"retry: {RETRY_MS}\n: stream {hub.stream}\n\n".encode()
    if resync is not None:
        prologue += hub.resync_frame(resync)
    for start in range(0, len(replay), REPLAY_CHUNK):  # encoded now, if never before
        prologue += b"".join(e.frame for e in replay[start : start + REPLAY_CHUNK])
        await anyio.lowlevel.checkpoint()  # a deep replay does not stall the agents
    return prologue


router = Router(tags=("events",))


@router.get(
    "/api/events",
    Operation(
        "Fleet event stream (Server-Sent Events)",
        "Agent connects, disconnects and status changes, and lost instances, fleet-wide, "
        "as `text/event-stream`. Each event's id is `<stream>-<seq>`; reconnect with "
        "`Last-Event-ID` to resume without gaps, or get a `resync` event when the "
        "missed events left the replay buffer. A client that falls "
        "`events_queue_max` events behind gets `resync` and the stream ends. "
        "See docs/api.md for the event types.",
        params=(TYPE_PARAM, AGENT_PARAM, STREAM_LABEL_PARAM, LAST_ID_PARAM),
        errors=(400, 503),
        extra_responses={
            "200": {
                "description": "The stream (never ends by itself).",
                "content": {"text/event-stream": {"schema": FRAME_SCHEMA}},
            }
        },
    ),
)
async def fleet_events(request: Request) -> Response:
    services = services_of(request)
    hub = services.events
    assert hub is not None  # open_services always makes one
    params = request.query_params
    types = parse_types(params)
    named = agents = parse_agents(params)
    labels = parse_labels(params)
    last_id = parse_last_id(hub, request)
    refresh = None
    if labels:
        matching = await _matching(services.db, labels)
        agents = matching if named is None else named & matching
        # Re-resolved within the agents named (not those matching now): agents that gain the
        # labels later join the stream.
        refresh = _refresher(services.db, labels, named)
    claims: Mapping[str, Any] = request.scope.get("auth") or {}
    expires_at = float(claims.get("exp", math.inf))
    sub, replay, resync = hub.subscribe(types=types, agents=agents, last_id=last_id)
    return EventStream(
        hub,
        sub,
        await _prologue(hub, replay, resync),
        keepalive_s=services.settings.events_keepalive_s,
        expires_at=expires_at,
        refresh=refresh,
    )


__all__ = ["EventStream", "FleetEvent", "router"]
