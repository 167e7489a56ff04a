"""Who may connect, as whom, and when the server says "not now": the ``on_connecting`` decision.

Checked in this order, cheapest refusal first, before any per-connection work:

1. **Shutting down**: 503.
2. **Credentials** (401): the shared ``agent_auth_token`` (anyone holding it may speak for any
   uid), a per-agent token (``opamp-fast agent-token``: an HS256 JWT bound to one instance uid),
   and a TLS client certificate (required when ``tls_client_ca_file`` is set; when its subject CN
   or a ``urn:uuid:`` SAN is a UUID, it binds the connection to that uid too). Bound credentials
   give the connection an *identity*: it may only speak for that uid, and a newer connection
   with the same identity may take over an older one. ``require_agent_identity`` refuses
   agents without one.
3. **Capacity** (503 + jittered ``Retry-After``): the connection cap (below the descriptor
   limit), the database backlog (history rows waiting for a database that is away), the number
   of WebSocket handshakes being served at once, and the event loop's lag: when the loop is late,
   the agents already connected get its time and new WebSockets are told to come back later,
   instead of being accepted and then timing out. For the last two, a crowd of new WebSockets,
   ``Retry-After`` follows the measured admission rate (``AdmissionPace``); the others wait
   30-60 s.
"""

from __future__ import annotations

import hmac
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio
from anyio.abc import TaskStatus

from ..auth import AgentTokenVerifier
from ..protocol import Transport, parse_instance_uid_text
from ..ticks import sleep_to_tick
from ..transport.handlers import ACCEPT, ConnectingRequest, ConnectionResponse

if TYPE_CHECKING:
    from .registry import BucketCounts

__all__ = ["Admission", "LoopLag", "cert_identity"]


def cert_identity(cert: Mapping[str, Any] | None) -> bytes | None:
    """The instance uid a client certificate names (subject CN, or a ``urn:uuid:`` SAN)."""
    if not cert:
        return None
    candidates: list[str] = []
    for rdn in cert.get("subject", ()):
        candidates.extend(value for key, value in rdn if key == "commonName")
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI" and value.lower().startswith("urn:uuid:"):
            candidates.append(value[9:])
    for text in candidates:
        try:
            return parse_instance_uid_text(text)
        except ValueError:
            continue
    return None


class Admission:
    """The accept/refuse decision of ``FleetHandler.on_connecting``; see the module docstring."""

    def __init__(
        self,
        *,
        agent_auth_token: str | None = None,
        agent_tokens: AgentTokenVerifier | None = None,
        require_client_cert: bool = False,
        require_identity: bool = False,
        max_connections: int = 200_000,
        max_handshakes: int = 512,
        max_loop_lag_s: float = 0.5,
        retry_after_s: int = 30,
        overloaded: Callable[[], bool] = lambda: False,
        loop_lag: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = f"Bearer {agent_auth_token}".encode() if agent_auth_token else None
        self._agent_tokens = agent_tokens
        self.require_client_cert = require_client_cert
        self.require_identity = require_identity
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        self.max_loop_lag_s = max_loop_lag_s
        self.retry_after_s = retry_after_s
        self._overloaded = overloaded
        self._loop_lag = loop_lag
        self.shutting_down = False
        #: Frees a handshake slot held by a WebSocket that upgraded and then said nothing (the
        #: front's ``evict_silent_upgrade``); False when none can be freed.
        self.make_handshake_room: Callable[[], bool] = lambda: False
        self.open_connections = 0  # admitted and not yet closed (handlers keep it)
        self.handshakes = 0  # admitted, first message not answered yet
        self.shed_total: dict[str, int] = {}
        #: What a crowd of new WebSockets is told: come back when the server can take you.
        self.pace = AdmissionPace(clock, prior_rate=max_handshakes, max_wait_s=2 * retry_after_s)

    def decide(self, request: ConnectingRequest) -> ConnectionResponse:
        if self.shutting_down:
            return self._shed("shutdown", "server shutting down")
        verdict = self._authenticate(request)
        if not verdict.accept:
            return verdict
        if self.open_connections >= self.max_connections:
            return self._shed("capacity", "server at capacity")
        if self._overloaded():
            # The database has been away long enough that connection history waiting for it
            # reached its bound: keep serving connected agents, refuse newcomers until it drains.
            return self._shed("database", "database backlog, try again later")
        if request.transport is Transport.WS:
            # New WebSockets are what a storm is made of, and each costs a full state; a poll
            # of a plain-HTTP agent may be one already connected, so it is not shed here.
            if self.handshakes >= self.max_handshakes and not self.make_handshake_room():
                return self._shed_paced("handshakes", "too many agents connecting at once")
            if self._loop_lag() > self.max_loop_lag_s:
                return self._shed_paced("loop_lag", "server busy, try again later")
        return verdict

    def _authenticate(self, request: ConnectingRequest) -> ConnectionResponse:
        cert = request.tls_peer_cert
        if self.require_client_cert and not cert:
            # TLS verified any certificate presented; agents must present one.
            return _unauthorized("a TLS client certificate is required")
        identity = cert_identity(cert)
        given = request.headers.get("authorization", "")
        token_uid: bytes | None = None
        shared_ok = False
        if given:
            if self._shared is not None and hmac.compare_digest(given.encode(), self._shared):
                shared_ok = True
            else:
                scheme, _, token = given.partition(" ")
                if scheme.lower() == "bearer" and self._agent_tokens is not None:
                    token_uid = self._agent_tokens.uid_of(token.strip())
                if token_uid is None:
                    return _unauthorized("invalid agent credentials")
        elif self._shared is not None and identity is None:
            return _unauthorized("missing agent credentials")
        if token_uid is not None:
            if identity is not None and identity != token_uid:
                return _unauthorized(
                    "the agent token and the client certificate name different uids"
                )
            identity = token_uid
        if self.require_identity and identity is None:
            return _unauthorized(
                "credentials bound to an instance uid are required (a per-agent token or a "
                "client certificate naming the uid)"
                + (" ; the shared token is not enough" if shared_ok else "")
            )
        if identity is None:
            return ACCEPT
        named = request.instance_uid
        if named is not None and named != identity:
            # Refused before the body is read: the header is what a balancer routed on.
            return _unauthorized(
                "the credentials are bound to another instance uid than the "
                "OpAMP-Instance-UID header names"
            )
        return ConnectionResponse(True, identity=identity)

    def _shed(self, why: str, reason: str, retry: int | None = None) -> ConnectionResponse:
        """503 + ``Retry-After``: by default 30-60 s, jittered (capacity, a database backlog and
        a shutdown do not clear at any rate the server can measure)."""
        self.shed_total[why] = self.shed_total.get(why, 0) + 1
        if retry is None:  # jitter spreads the retries of a crowd refused at the same moment
            retry = self.retry_after_s + random.randint(0, self.retry_after_s)
        return ConnectionResponse.reject(503, reason, (("retry-after", str(retry)),))

    def _shed_paced(self, why: str, reason: str) -> ConnectionResponse:
        """A crowd of new WebSockets: come back when the server will have taken those ahead."""
        self.pace.refused()
        return self._shed(why, reason, self.pace.retry_after())


class AdmissionPace:
    """How fast new WebSockets are admitted here, and so when a refused one should return.

    Per second of the last ``WINDOW_S`` seconds it counts the WebSockets whose first message
    was answered (``admitted``, told by the fleet handler) and the ones refused for load. A
    refused agent is told to come back after a random time within what the server needs to
    admit everyone refused recently (refused / admission rate), at least 1 s: a crowd of 5,000
    at 1,000 admissions per second returns over 5 s, not after a fixed 30-60 s. Until anything
    is admitted, ``prior_rate`` stands in for the rate; ``max_wait_s`` caps the answer.
    """

    WINDOW_S: Final = 5

    def __init__(self, clock: Callable[[], float], *, prior_rate: float, max_wait_s: float) -> None:
        self._clock = clock
        self.prior_rate = prior_rate
        self.max_wait_s = max_wait_s
        self._second = int(clock())
        self._admitted = [0] * self.WINDOW_S  # ring of per-second counts
        self._refused = [0] * self.WINDOW_S

    def _slot(self) -> int:
        second = int(self._clock())
        if second != self._second:  # clear the seconds that passed since the last count
            for gone in range(self._second + 1, min(second, self._second + self.WINDOW_S) + 1):
                self._admitted[gone % self.WINDOW_S] = 0
                self._refused[gone % self.WINDOW_S] = 0
            self._second = second
        return second % self.WINDOW_S

    def admitted(self) -> None:
        self._admitted[self._slot()] += 1

    def refused(self) -> None:
        self._refused[self._slot()] += 1

    def rate(self) -> float:
        """WebSockets admitted per second over the window (the prior before any)."""
        self._slot()
        admitted = sum(self._admitted)
        return admitted / self.WINDOW_S if admitted else self.prior_rate

    def retry_after(self) -> int:
        """Whole seconds a refused WebSocket should wait: at least 1, at most ``max_wait_s``."""
        self._slot()
        wait = min(self.max_wait_s, sum(self._refused) / max(1.0, self.rate()))
        return 1 + random.randint(0, math.ceil(wait))


def _unauthorized(reason: str) -> ConnectionResponse:
    return ConnectionResponse.reject(401, reason, (("www-authenticate", "Bearer"),))


class LoopLag:
    """How late the event loop runs: one task sleeps ``interval_s`` and measures the oversleep.

    ``lag_s`` takes a new maximum at once and decays by ``decay`` per 100 ms (whatever the
    interval), so admission reacts to the first late tick and forgets a single hiccup within
    about a second.
    """

    def __init__(
        self,
        *,
        interval_s: float = 0.25,
        decay: float = 0.7,
        oversleep: BucketCounts | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.decay = decay ** (interval_s / 0.1)  # per sample
        self.lag_s = 0.0
        self.oversleep = oversleep  # every sample, when an exporter keeps the histogram

    def __call__(self) -> float:
        return self.lag_s

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        interval = self.interval_s
        while True:
            late = await sleep_to_tick(interval)  # on the process's grid: wakes with the others
            self.lag_s = max(late, self.lag_s * self.decay)
            if self.oversleep is not None:
                self.oversleep.observe(late)
