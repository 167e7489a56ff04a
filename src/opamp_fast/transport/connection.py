"""One TCP connection on the shared port, as a sans-IO state machine.

``OpAMPConnection`` reads every HTTP/1.1 request head on the shared port itself; a request for
the OpAMP path is served here (a WebSocket upgrade, or a plain-HTTP POST), any other becomes an
:class:`~._exchange.Exchange` for the ASGI application that runs the REST API (state ``APP``),
after which the connection reads the next request under the same bounds. It calls the
:class:`~opamp_fast.transport.handlers.AgentHandler` synchronously and is itself the
:class:`~opamp_fast.transport.handlers.Connection` the handler sees.

It does no I/O and reads no clock: the driver feeds bytes and ``now`` in, and hands the object
a ``write`` callable for its output. After every call the driver looks at ``state`` (close the
socket on ``CLOSED``, with ``abort`` meaning "without flushing"; start the application on a new
``exchange`` in ``APP``), at ``reading_wanted`` and at ``deadline`` (call :meth:`on_deadline`
once the clock passes it). The asyncio and trio drivers (``asyncio_front``, ``trio_front``) are
thin subclasses; ``asgi`` runs the application for both.

Every phase is bounded in time (``Limits``): a request head, whatever its path
(``handshake_timeout_s``, from the first byte; an idle keep-alive connection
``keep_alive_timeout_s``), an OpAMP body, a WebSocket message once begun, the first OpAMP
message after an upgrade and any connection that does not own an agent (``message_timeout_s``),
a REST body (``message_timeout_s`` plus a second per ``min_body_bytes_per_s`` received), the
close handshake (``close_timeout_s``), and a peer that stops reading (``message_timeout_s``
while the driver reports writing paused). Bytes held for peers count against one budget per
process (``budget.BufferBudget``).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ..native.pbscan import parse_heartbeat
from ..native.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameError,
    FrameReader,
    encode_close,
    encode_frame,
    encode_opamp,
    parse_close,
)
from ..protocol import (
    ProtocolError,
    RemoteProtocolError,
    Session,
    Transport,
    decode_agent_to_server,
    encode_server_to_agent,
    error_response,
    normalize_instance_uid,
    pb,
)
from ..protocol.codec import format_instance_uid, parse_instance_uid_text
from ._exchange import Exchange
from ._http11 import (
    BodyReader,
    HTTPError,
    RequestHead,
    accepts_gzip,
    check_websocket_key,
    feed_chunked,
    parse_head,
    plain_response,
    response_head,
    websocket_accept,
)
from .budget import BufferBudget
from .handlers import ConnectingRequest

if TYPE_CHECKING:
    from ..protocol.codec import PartBounds
    from .handlers import AgentHandler
    from .stats import TransportStats

__all__ = [
    "APP",
    "BODY",
    "CLOSED",
    "CLOSING",
    "HEAD",
    "WS",
    "Limits",
    "OpAMPConnection",
]

logger = logging.getLogger(__name__)

# States. HEAD: reading a request head (also an idle keep-alive connection); BODY: reading an
# OpAMP POST body; WS: WebSocket open; APP: a request is with the ASGI application (its body
# still arriving, or its response being written); CLOSING: our close frame is out, waiting for
# the peer's; CLOSED: finished, the driver closes the socket.
HEAD: Final = 0
BODY: Final = 1
WS: Final = 2
APP: Final = 3
CLOSING: Final = 4
CLOSED: Final = 5

PROTOBUF: Final = "application/x-protobuf"
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_POLICY: Final = 1008
CLOSE_TRY_AGAIN: Final = 1013
#: A WebSocket that has not completed its first message this long after its upgrade may be
#: dropped to make room for another when every handshake slot is taken (real agents send
#: their first message at once; a peer that upgrades and waits only holds a slot).
SILENT_UPGRADE_GRACE_S: Final = 1.0
#: A closing connection reads and drops at most this much of what the peer still sends.
LINGER_BYTES: Final = 64 * 1024
#: The default of ``Limits.max_buffered_bytes``: the sum a process holds for partial input.
DEFAULT_BUFFER_BUDGET: Final = 256 * 1024 * 1024
RATE_BURST_S: Final = 10.0  # a connection's message budget holds this many seconds' worth
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_RETRY: Final = (("retry-after", "5"),)
_WS_HEADER_ROOM: Final = 16  # the OpAMP varint header in front of a maximal payload
#: Bad payloads in a well-framed WebSocket message: answered (BadRequest), the socket kept.
_ANSWERED: Final = frozenset({"decode", "too_large_state"})


@dataclass(slots=True)
class Limits:
    """What every connection on one listener shares: the handler, limits and timeouts.

    Mutable only so that tests can decorate ``handler`` (a spy) on a running server.
    """

    handler: AgentHandler
    stats: TransportStats
    path: str = "/v1/opamp"
    max_message_bytes: int = 64 * 1024 * 1024
    max_head_bytes: int = 16 * 1024
    handshake_timeout_s: float = 10.0
    message_timeout_s: float = 30.0
    close_timeout_s: float = 5.0
    keep_alive_timeout_s: float = 90.0
    ws_ping_interval_s: float = 0.0
    #: Messages (WebSocket messages or HTTP requests) one connection may send per second, with
    #: bursts of ``RATE_BURST_S`` seconds' worth; 0: unlimited. An agent sends one per heartbeat;
    #: a peer flooding messages (reading the replies or not) would otherwise buy server CPU for
    #: free until back-pressure stops it, hundreds of thousands of messages later.
    max_messages_per_s: float = 20.0
    #: What the handler keeps of a status part: a message over it is refused before it is
    #: decoded (``codec.check_part_sizes``); None: the handler alone checks, after decoding.
    part_bounds: PartBounds | None = None
    #: The ASGI application of every other path (REST API, probes, metrics); None: 404.
    app: Any = None
    scheme: str = "http"
    #: A REST body may take ``message_timeout_s`` plus one second per this many bytes received
    #: (large uploads arrive as long as they keep coming; a trickle is cut off); 0: no floor.
    min_body_bytes_per_s: float = 32768.0
    #: Bytes held for partial input across every connection (``budget.BufferBudget``).
    budget: BufferBudget = field(default_factory=lambda: BufferBudget(DEFAULT_BUFFER_BUDGET))


class OpAMPConnection:
    """Sans-IO: one connection from its first byte until it is closed or handed over."""

    __slots__ = (
        "_app_paused_at",
        "_body",
        "_body_left",
        "_body_since",
        "_close_notified",
        "_head",
        "_later",
        "_phase_deadline",
        "_ping_deadline",
        "_ping_outstanding",
        "_raw",
        "_reader",
        "_stall_deadline",
        "_tokens",
        "_tokens_at",
        "_write",
        "abort",
        "deadline",
        "discard",
        "exchange",
        "header_uid",
        "held",
        "identity",
        "limits",
        "linger",
        "record",
        "remote_addr",
        "requests",
        "session",
        "state",
        "tls_peer_cert",
        "transport",
    )

    def __init__(
        self,
        limits: Limits,
        remote_addr: str,
        write: Callable[[bytes], Any],
        now: float,
        tls_peer_cert: dict[str, Any] | None = None,
    ) -> None:
        self.limits = limits
        self.remote_addr = remote_addr
        self.tls_peer_cert = tls_peer_cert
        self._write = write
        self.state = HEAD
        self.abort = False  # with CLOSED: drop the socket without flushing what is buffered
        self.exchange: Exchange | None = None  # with APP: the request the application serves
        self.held = 0  # bytes charged to the buffer budget (kept by the budget)
        #: The body the current request announced: what a closing connection may read and drop
        #: so that the peer, still sending it, gets our answer instead of a reset.
        self.discard = 0
        self.linger = False  # with CLOSED: the driver closes in stages (see _finish)
        self.transport: Transport | None = None  # what the handler sees (WS, or HTTP per POST)
        self.session: Session | None = None
        self.record: Any = None  # the handler's: the agent this connection serves
        self.identity: bytes | None = None  # the uid its credentials are bound to
        # Plain HTTP: the uid the current POST's ``OpAMP-Instance-UID`` header names, if any.
        self.header_uid: bytes | None = None
        self.requests = 0  # request heads read so far (0: nothing useful came yet)
        self._raw: bytearray | None = None  # HEAD: bytes of the request being read
        self._later: bytearray | None = None  # APP: what followed the request (pipelined)
        self._body_since = now  # APP: when its body began (plus the time we stopped reading)
        self._app_paused_at = now  # APP: when the application's queue stopped our reading
        self._head: RequestHead | None = None
        self._body: BodyReader | None = None
        self._body_left = 0  # BODY with Content-Length: bytes still to come
        self._reader: FrameReader | None = None
        self._close_notified = True  # nothing admitted yet: nothing to notify
        self._ping_outstanding = False
        self._phase_deadline: float | None = now + limits.handshake_timeout_s
        self._stall_deadline: float | None = None
        self._ping_deadline: float | None = None
        self.deadline: float | None = self._phase_deadline
        self._tokens = limits.max_messages_per_s * RATE_BURST_S  # the message budget
        self._tokens_at = now

    # -- what the handler sees (handlers.Connection) ------------------------------------------
    @property
    def closed(self) -> bool:
        return self.state >= CLOSING

    @property
    def can_push(self) -> bool:
        return self.state == WS

    def send(self, msg: pb.ServerToAgent) -> bool:
        """Push ``msg`` now (WebSocket only); False when it cannot go out."""
        if self.state != WS:
            return False
        try:
            payload = encode_server_to_agent(msg, max_bytes=self.limits.max_message_bytes)
        except ProtocolError as exc:  # over the limit: it MUST NOT be sent
            logger.error("message to %s not sent: %s", self.remote_addr, exc)
            self.limits.stats.protocol_error(Transport.WS, exc.kind)
            return False
        stats = self.limits.stats
        stats.ws_out += 1
        stats.ws_bytes_out += len(payload) + 1  # the OpAMP message: header byte + protobuf
        self._write(encode_opamp(payload))
        return True

    def close(self, code: int = 1000, reason: str = "", now: float | None = None) -> None:
        """Start the close handshake of a WebSocket; end an idle HTTP connection. Idempotent.

        Drivers pass ``now`` (the handler does not know it) so the handshake is bounded.
        """
        state = self.state
        if state == WS:
            self._fail(code, reason, now)
        elif state == HEAD or state == BODY:
            self._finish()
        elif state == APP and self.exchange is not None:
            self.exchange.keep_alive = False  # close once the response is out

    # -- driver input --------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        if self.state == WS:  # the steady state first
            self._ws_data(data, now)
            return
        while data:  # each phase returns what it did not consume (a loop: pipelining is flat)
            state = self.state
            if state == HEAD:
                data = self._head_data(data, now)
            elif state == BODY:
                data = self._body_data(data, now)
            elif state == APP:
                data = self._app_data(data, now)
            elif state == WS or state == CLOSING:
                self._ws_data(data, now)
                return
            else:
                return

    @property
    def reading_wanted(self) -> bool:
        """False while a request waits on the application with enough of what follows it
        buffered: the driver stops reading the socket until this is true again."""
        if self.state != APP:
            return True
        exchange = self.exchange
        later = self._later
        return (exchange is None or exchange.reading_wanted) and (
            later is None or len(later) <= self.limits.max_head_bytes
        )

    def receive_eof(self, now: float) -> None:
        """The peer will send no more: nothing left to answer on a request/response protocol."""
        self.peer_gone(now)

    def peer_gone(self, now: float) -> None:
        """The socket is gone (reset, closed, or closed by us): the agent is disconnected."""
        self._finish()
        self.deadline = None

    def _finish(self, *, abort: bool = False) -> None:
        """The end of the connection (every path to ``CLOSED`` comes here): the handler hears
        of it exactly once, and the socket is to be closed (``abort``: without flushing)."""
        exchange = self.exchange
        # The peer may still be sending (a request under way, or more behind it): the driver
        # reads and drops that while our last bytes go out (a staged close), not a reset.
        self.linger = self.linger or bool(
            self._raw
            or self._later
            or self.state == BODY
            or (exchange is not None and not exchange.body_done)
        )
        self.state = CLOSED
        self.abort = self.abort or abort
        self._phase_deadline = self._stall_deadline = self._ping_deadline = None
        self.deadline = None
        self._raw = self._later = None
        self._reader = None
        if self.held:
            self.limits.budget.release(self)
        if exchange is not None and not exchange.gone:
            exchange.gone = True
            exchange.finish()
        self._notify_closed()

    def shed_buffer(self) -> None:
        """The buffer budget is over and this connection holds the most: refuse its input."""
        state = self.state
        exchange = self.exchange
        if state == WS:
            self._write(encode_close(CLOSE_TRY_AGAIN, "server buffer budget exceeded"))
            self._finish()
        elif state in (HEAD, BODY) or (exchange is not None and not exchange.started):
            self._write(plain_response(503, "server busy, try again later", _RETRY))
            self._finish()
        else:
            self._finish(abort=True)

    def on_deadline(self, now: float) -> None:
        """The clock passed ``deadline``: act on whichever bound expired."""
        if self.deadline is None or now < self.deadline:
            return
        stall = self._stall_deadline
        phase = self._phase_deadline
        if stall is not None and now >= stall:
            self._timeout("write_stall", now)
        elif phase is not None and now >= phase:
            self._timeout(self._phase_name(), now)
        elif self._ping_deadline is not None and now >= self._ping_deadline:
            self._ping(now)

    def writing_paused(self, now: float) -> None:
        """The driver's write buffer is over its high-water mark: the peer is not reading."""
        if self._stall_deadline is None:
            self._stall_deadline = now + self.limits.message_timeout_s
            self._update_deadline()

    def writing_resumed(self, now: float) -> None:
        if self._stall_deadline is not None:
            self._stall_deadline = None
            self._update_deadline()

    # -- deadlines -------------------------------------------------------------------------------
    def _update_deadline(self) -> None:
        best = self._phase_deadline
        for other in (self._stall_deadline, self._ping_deadline):
            if other is not None and (best is None or other < best):
                best = other
        self.deadline = best

    def _phase_name(self) -> str:
        state = self.state
        if state == HEAD:
            return "handshake" if self._raw else "keep_alive"
        if state == BODY or state == APP:
            return "body"
        if state == CLOSING:
            return "close"
        reader = self._reader
        if reader is not None and reader.buffered:
            return "message"
        return "first_message" if self.record is None else "idle"

    def _timeout(self, phase: str, now: float) -> None:
        self.limits.stats.timed_out(phase)
        state = self.state
        if state == HEAD and phase == "keep_alive":
            self._finish()
        elif state in (HEAD, BODY, APP) and phase != "write_stall":
            self._respond_error(HTTPError(408, "request not complete within its time limit"))
        elif state == WS and phase not in ("write_stall", "ping"):
            self._fail(CLOSE_POLICY, f"no complete OpAMP message in time ({phase})", now)
        else:  # the peer stopped reading, stopped answering pings, or ignored our close
            self._finish(abort=True)

    def _ping(self, now: float) -> None:
        if self._ping_outstanding:  # no pong for a whole interval: the peer is gone
            self._timeout("ping", now)
            return
        self._ping_outstanding = True
        self._write(encode_frame(OP_PING, b""))
        self._ping_deadline = now + self.limits.ws_ping_interval_s
        self._update_deadline()

    # -- HTTP: request heads -----------------------------------------------------------------
    def _head_data(self, data: bytes, now: float) -> bytes:
        """Bytes of a request head; returns what followed a complete head."""
        raw = self._raw
        max_head = self.limits.max_head_bytes
        if not raw:  # the first byte of a request: the head must complete in time
            data = data.lstrip(b"\r\n")  # empty lines before a request are allowed (RFC 9112)
            if not data:
                return b""
            self._phase_deadline = now + self.limits.handshake_timeout_s
            self._update_deadline()
            end = data.find(b"\r\n\r\n")
            if 0 <= end <= max_head - 4:  # the whole head in one read (the common case)
                return self._request(data[: end + 4], data[end + 4 :], now)
            raw = self._raw = bytearray(data)
            start = 0
        else:
            start = max(0, len(raw) - 3)
            raw += data
        end = raw.find(b"\r\n\r\n", start)
        if end < 0:
            if len(raw) > max_head:
                self._respond_error(HTTPError(431, "request head too large", kind="too_large"))
            elif raw.find(b"\n\n", start) >= 0 or raw.find(b"\n\r\n", start) >= 0:
                # A head ended with bare LFs: it would never end as far as we look for CRLFs.
                self._respond_error(HTTPError(400, "request lines must end with CRLF"))
            else:
                self.limits.budget.hold(self, len(raw))
            return b""
        end += 4
        if end > max_head:
            self._respond_error(HTTPError(431, "request head too large", kind="too_large"))
            return b""
        self._raw = None
        if self.held:
            self.limits.budget.release(self)
        return self._request(bytes(raw[:end]), bytes(raw[end:]), now)

    def _request(self, head_bytes: bytes, rest: bytes, now: float) -> bytes:
        """One complete head: route it. Returns ``rest`` (what followed it) to read on with."""
        self.requests += 1
        limits = self.limits
        try:
            head = parse_head(head_bytes, max_message_bytes=limits.max_message_bytes)
            declared = head.content_length or 0
            self.discard = declared if declared <= 2 * limits.max_message_bytes else 0
            if head.path != limits.path:
                self._begin_app(head, now)
            elif head.upgrade or head.headers.get("upgrade", "").lower() == "websocket":
                self._upgrade(head, now)
            elif head.method == b"POST":
                self._begin_post(head, now)
            else:
                raise HTTPError(
                    405,
                    "OpAMP accepts POST (plain HTTP) or a WebSocket upgrade (GET)",
                    (("allow", "GET, POST"),),
                    kind="method",
                )
        except HTTPError as exc:
            self._respond_error(exc)
            return b""
        return rest

    def _respond_error(self, exc: HTTPError, transport: Transport = Transport.HTTP) -> None:
        """Answer with ``exc`` and close (what follows on the socket cannot be trusted); in the
        middle of a response only the close is left."""
        self.limits.stats.protocol_error(transport, exc.kind)
        exchange = self.exchange
        if exchange is None or not exchange.started:
            self._write(plain_response(exc.status, exc.reason, exc.headers))
            self.linger = True  # the rest of the refused request may be on its way
            self._finish()
        else:
            self._finish(abort=True)
        self._head = None
        self._body = None

    def _connecting(
        self, transport: Transport, head: RequestHead, instance_uid: bytes | None = None
    ) -> None:
        """The handler's admission decision; a refusal is answered and closes the socket."""
        request = ConnectingRequest(
            transport=transport,
            path=head.path,
            remote_addr=self.remote_addr,
            headers=head.headers,
            tls_peer_cert=self.tls_peer_cert,
            instance_uid=instance_uid,
        )
        verdict = self.limits.handler.on_connecting(request)
        if not verdict.accept:
            self.limits.stats.rejected(transport, verdict.http_status)
            raise HTTPError(verdict.http_status, verdict.reason, verdict.headers, kind="rejected")
        self.identity = verdict.identity

    # -- HTTP: OpAMP POST ----------------------------------------------------------------------
    def _begin_post(self, head: RequestHead, now: float) -> None:
        limits = self.limits
        headers = head.headers
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != PROTOBUF:
            raise HTTPError(
                415,
                "Content-Type must be application/x-protobuf (or use WebSocket)",
                kind="content_type",
            )
        encoding = headers.get("content-encoding", "identity").strip().lower()
        body = BodyReader(encoding, limits.max_message_bytes)
        if head.content_length is not None and head.content_length > limits.max_message_bytes:
            if encoding == "identity":
                raise HTTPError(
                    413,
                    f"message exceeds the limit of {limits.max_message_bytes} bytes",
                    kind="too_large",
                )
        header_uid = _header_uid(headers)
        self._connecting(Transport.HTTP, head, header_uid)
        self.header_uid = header_uid
        # Admitted: the request holds a connection slot until it is answered or abandoned.
        self.transport = Transport.HTTP
        self._close_notified = False
        limits.stats.http_open += 1
        limits.handler.on_connected(self)
        if headers.get("expect", "").lower() == "100-continue":
            self._write(_CONTINUE)
        self._head = head
        self._body = body
        self.state = BODY
        self._body_left = head.content_length or 0
        self._phase_deadline = now + limits.message_timeout_s
        self._update_deadline()
        if not head.chunked and not self._body_left:
            self._finish_post(now)

    def _body_data(self, data: bytes, now: float) -> bytes:
        """Bytes of an OpAMP POST body; returns what followed it (the next request)."""
        head = self._head
        body = self._body
        assert head is not None and body is not None
        try:
            if head.chunked:
                for chunk in feed_chunked(head, data):
                    body.feed(chunk)
                if head.complete:
                    self._finish_post(now)  # bytes after a chunked body: see _finish_post
                else:
                    self.limits.budget.hold(self, body.received)
                return b""
            left = self._body_left
            if len(data) < left:
                body.feed(data)
                self._body_left = left - len(data)
                self.limits.budget.hold(self, body.received)
                return b""
            body.feed(data[:left] if len(data) > left else data)
            self._body_left = 0
            self._finish_post(now)
            return data[left:]
        except HTTPError as exc:
            self._respond_error(exc)
            return b""

    def _finish_post(self, now: float) -> None:
        """The body is complete: answer it; the connection then reads the next request."""
        head = self._head
        body = self._body
        assert head is not None and body is not None
        if self.held:
            self.limits.budget.release(self)
        payload = body.finish()
        if not self._within_rate(now):
            retry = (("retry-after", "10"),)
            self._respond_error(HTTPError(429, "request rate over the limit", retry, "rate"))
            return
        reply = self._answer(payload)
        # After a chunked body we do not know where the next request starts: close instead.
        keep_alive = head.keep_alive and not head.chunked and self.state == BODY
        headers = [("content-type", PROTOBUF)]
        if accepts_gzip(head.headers.get("accept-encoding", "")):
            reply = gzip.compress(reply, compresslevel=5, mtime=0)
            headers.append(("content-encoding", "gzip"))
        out = response_head(200, headers, content_length=len(reply), close=not keep_alive)
        stats = self.limits.stats
        stats.http_out += 1
        stats.http_bytes_out += len(reply)
        self._write(out + reply)
        self._head = None
        self._body = None
        if not keep_alive:
            self._finish()
            return
        self.state = HEAD
        self._phase_deadline = now + self.limits.keep_alive_timeout_s
        self._update_deadline()

    def _answer(self, body: bytes) -> bytes:
        """Decode one POSTed ``AgentToServer``; the handler's reply, encoded (always one)."""
        limits = self.limits
        stats = limits.stats
        stats.http_in += 1
        stats.http_bytes_in += len(body)
        try:
            reply = self._handle(body)
        finally:
            self._notify_closed()
            self.record = None
        try:
            return encode_server_to_agent(reply, max_bytes=limits.max_message_bytes)
        except ProtocolError as exc:  # our reply is over the limit: it MUST NOT be sent
            logger.error("reply to %s not sent: %s", self.remote_addr, exc)
            stats.protocol_error(Transport.HTTP, exc.kind)
            return encode_server_to_agent(
                error_response(pb.ServerErrorResponseType_Unknown, "reply exceeded the size limit"),
                max_bytes=limits.max_message_bytes,
            )

    def _handle(self, body: bytes) -> pb.ServerToAgent:
        handler = self.limits.handler
        try:
            limits = self.limits
            msg = decode_agent_to_server(
                body, max_bytes=limits.max_message_bytes, part_bounds=limits.part_bounds
            )
        except ProtocolError as exc:
            self.limits.stats.protocol_error(Transport.HTTP, exc.kind)
            handler.on_read_message_error(self, exc)
            return error_response(pb.ServerErrorResponseType_BadRequest, str(exc))
        try:
            self._check_header_uid(msg)
            response = handler.on_message(self, msg)
        except RemoteProtocolError as exc:
            self.limits.stats.protocol_error(Transport.HTTP, exc.kind)
            handler.on_read_message_error(self, exc)
            return error_response(pb.ServerErrorResponseType_BadRequest, str(exc))
        if response is None:  # plain HTTP always answers
            response = pb.ServerToAgent(instance_uid=msg.instance_uid)
        return response

    def _check_header_uid(self, msg: pb.AgentToServer) -> None:
        """A load balancer routed this POST by its ``OpAMP-Instance-UID`` header: a message
        for another agent would be served where that agent's polls do not go."""
        named = self.header_uid
        if named is not None and normalize_instance_uid(msg.instance_uid) != named:
            raise RemoteProtocolError(
                f"the OpAMP-Instance-UID header names {format_instance_uid(named)}, the "
                "message another instance_uid",
                kind="instance_uid_header",
            )

    # -- HTTP: requests for the ASGI application --------------------------------------------
    def _begin_app(self, head: RequestHead, now: float) -> None:
        limits = self.limits
        limits.stats.handed_off += 1
        host, _, port = self.remote_addr.rpartition(":")
        client = (host, int(port)) if port.isdigit() else None
        exchange = self.exchange = Exchange(head, scheme=limits.scheme, client=client)
        if head.upgrade:  # only OpAMP upgrades: after this answer the stream is not HTTP
            exchange.keep_alive = False
        self.state = APP
        self._body_since = now
        self._app_deadline(now)

    def _app_data(self, data: bytes, now: float) -> bytes:
        """Bytes while the application has the request: its body, then the next requests
        (kept, bounded by ``reading_wanted``, until the response is complete)."""
        exchange = self.exchange
        assert exchange is not None
        if not exchange.body_done:
            wanted = exchange.reading_wanted
            try:
                data = exchange.feed(data)
            except HTTPError as exc:
                self._respond_error(exc)
                return b""
            if wanted and not exchange.reading_wanted:
                self._app_paused_at = now  # the application is slow now, not the peer
            self._app_deadline(now)
        if data:
            if self._later is None:
                self._later = bytearray(data)
            else:
                self._later += data
        self._app_hold()
        return b""

    def _app_deadline(self, now: float) -> None:
        """A body keeps its deadline only while we read it: ``message_timeout_s``, plus a
        second per ``min_body_bytes_per_s`` received (0: no allowance for size)."""
        exchange = self.exchange
        assert exchange is not None
        if exchange.body_done or not exchange.reading_wanted:
            self._phase_deadline = None
        else:
            limits = self.limits
            rate = limits.min_body_bytes_per_s
            allowance = exchange.received / rate if rate > 0 else 0.0
            self._phase_deadline = self._body_since + limits.message_timeout_s + allowance
        self._update_deadline()

    def _app_hold(self) -> None:
        exchange = self.exchange
        later = self._later
        held = (exchange.queued if exchange is not None else 0) + (len(later) if later else 0)
        if held or self.held:
            self.limits.budget.hold(self, held)

    def app_waiting(self) -> None:
        """The application waits for body bytes: a client that sent ``Expect: 100-continue``
        is told to send them."""
        exchange = self.exchange
        if exchange is not None and exchange.expect_continue and not exchange.continue_sent:
            exchange.continue_sent = True
            self._write(_CONTINUE)

    def app_receive(self, now: float) -> tuple[bytes, bool]:
        """The application takes the body bytes received so far: (bytes, more to come)."""
        exchange = self.exchange
        assert exchange is not None
        paused = not exchange.reading_wanted
        data, more = exchange.take()
        if paused:  # reading resumes; the time we did not read is not the peer's
            self._body_since += now - self._app_paused_at
        if self.state == APP and not exchange.body_done:
            self._app_deadline(now)
        self._app_hold()
        return data, more

    def app_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        exchange = self.exchange
        if exchange is not None and not exchange.gone:
            exchange.start(status, headers)

    def app_body(self, data: bytes, more: bool, now: float) -> None:
        """One ``http.response.body`` message; the last one ends the exchange."""
        exchange = self.exchange
        if exchange is None or exchange.gone:
            return
        out = exchange.body(data, more)
        if out:
            self._write(out)
        if not more:
            self._app_done(now)

    def app_failed(self) -> None:
        """The application raised, or returned without ending its response."""
        exchange = self.exchange
        if exchange is None or exchange.gone:
            return
        self.limits.stats.protocol_error(Transport.HTTP, "app_error")
        if exchange.started:
            self._finish(abort=True)  # a response cut short must not look complete
        else:
            self._write(plain_response(500, "internal server error"))
            self._finish()

    def _app_done(self, now: float) -> None:
        exchange = self.exchange
        assert exchange is not None
        self.exchange = None
        exchange.finish()  # a task waiting in receive() hears that the exchange is over
        if not exchange.keep_alive or self.state != APP:
            self.linger = not exchange.body_done  # answered before the body was all read
            self._finish()
            return
        self.state = HEAD
        self._phase_deadline = now + self.limits.keep_alive_timeout_s
        self._update_deadline()
        later, self._later = self._later, None
        self._app_hold()
        if later:
            self.receive_data(bytes(later), now)

    # -- WebSocket: handshake --------------------------------------------------------------------
    def _upgrade(self, head: RequestHead, now: float) -> None:
        headers = head.headers
        if head.method != b"GET":
            raise HTTPError(400, "a WebSocket upgrade must be a GET", kind="bad_handshake")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if "upgrade" not in tokens or headers.get("upgrade", "").strip().lower() != "websocket":
            raise HTTPError(400, "not a WebSocket upgrade request", kind="bad_handshake")
        if headers.get("sec-websocket-version", "").strip() != "13":
            raise HTTPError(
                426,
                "unsupported WebSocket version (13 is supported)",
                (("sec-websocket-version", "13"),),
                kind="bad_handshake",
            )
        key = check_websocket_key(headers.get("sec-websocket-key"))
        self._connecting(Transport.WS, head)
        self._write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + websocket_accept(key).encode("ascii") + b"\r\n\r\n"
        )
        limits = self.limits
        self.state = WS
        self.transport = Transport.WS
        self._close_notified = False
        self.session = Session(Transport.WS)
        self._reader = FrameReader(limits.max_message_bytes + _WS_HEADER_ROOM)
        self._phase_deadline = now + limits.message_timeout_s  # the first message
        if limits.ws_ping_interval_s > 0:
            self._ping_deadline = now + limits.ws_ping_interval_s
        self._update_deadline()
        limits.stats.ws_open += 1
        limits.handler.on_connected(self)

    # -- WebSocket: frames -----------------------------------------------------------------------
    def _ws_data(self, data: bytes, now: float) -> None:
        reader = self._reader
        assert reader is not None
        try:
            events = reader.feed(data)
        except FrameError as exc:
            if self.state == CLOSING:  # garbage after our close frame: stop waiting
                self._finish(abort=True)
                return
            self.limits.stats.protocol_error(Transport.WS, "frame")
            self._fail(exc.code, exc.reason, now)
            return
        for opcode, payload in events:
            if self.state != WS:
                if self.state == CLOSING and opcode == OP_CLOSE:
                    self._finish()  # the peer answered our close: done
                    return
                continue
            if opcode == OP_BINARY:
                self._ws_message(payload, now)
            else:
                self._ws_control(opcode, payload, now)
        if self.state == WS:
            buffered = reader.buffered
            if buffered or self._phase_deadline is not None:
                self._ws_deadline(now)
            if buffered or self.held:  # a partial message: it counts against the budget
                self.limits.budget.hold(self, buffered)

    def _ws_deadline(self, now: float) -> None:
        """Only on transitions: a message begun, a message completed, the agent bound."""
        reader = self._reader
        assert reader is not None
        if reader.buffered:
            if self._phase_deadline is None:
                self._phase_deadline = now + self.limits.message_timeout_s
                self._update_deadline()
        elif self.record is not None:
            self._phase_deadline = None
            self._update_deadline()

    def _within_rate(self, now: float) -> bool:
        """Take one message from this connection's budget (a token bucket); False when empty."""
        rate = self.limits.max_messages_per_s
        if rate <= 0:
            return True
        tokens = min(rate * RATE_BURST_S, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def _ws_message(self, payload: bytes, now: float) -> None:
        limits = self.limits
        stats = limits.stats
        stats.ws_in += 1
        stats.ws_bytes_in += len(payload)
        if not self._within_rate(now):
            stats.protocol_error(Transport.WS, "rate")
            self._fail(CLOSE_POLICY, "message rate over the limit", now)
            return
        handler = limits.handler
        body: bytes
        if not payload:
            body = payload
        elif payload[0] == 0:  # the OpAMP header (varint 0)
            beat = parse_heartbeat(payload, 1)
            if beat is not None:
                reply = handler.on_heartbeat(self, beat[0], beat[1], beat[2])
                if reply is not None:
                    stats.ws_out += 1
                    stats.ws_bytes_out += len(reply) + 1
                    self._write(encode_opamp(reply))
                    return
            body = payload[1:]
        elif payload[0] < 8:  # a varint header other than 0: only a non-zero header does this
            stats.protocol_error(Transport.WS, "bad_header")
            self._fail(
                CLOSE_PROTOCOL_ERROR, f"non-zero OpAMP message header 0x{payload[0]:02x}", now
            )
            return
        else:  # a legacy frame without the header
            body = payload
        try:
            msg = decode_agent_to_server(
                body, max_bytes=limits.max_message_bytes, part_bounds=limits.part_bounds
            )
        except ProtocolError as exc:
            stats.protocol_error(Transport.WS, exc.kind)
            handler.on_read_message_error(self, exc)
            if exc.kind in _ANSWERED:
                # Bad payload in a well-framed message: answer, don't retry, keep the socket.
                self.send(error_response(pb.ServerErrorResponseType_BadRequest, str(exc)))
            else:
                self._fail(exc.close_code_hint, str(exc), now)
            return
        try:
            response = handler.on_message(self, msg)
        except RemoteProtocolError as exc:  # e.g. an invalid instance_uid
            stats.protocol_error(Transport.WS, exc.kind)
            handler.on_read_message_error(self, exc)
            response = error_response(pb.ServerErrorResponseType_BadRequest, str(exc))
        if response is not None:
            self.send(response)

    def _ws_control(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == OP_PING:
            self._write(encode_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            self._ping_outstanding = False
        elif opcode == OP_CLOSE:
            code, _ = parse_close(payload)  # the reader validated it already
            # Echo the peer's code (RFC 6455 5.5.1), then close the TCP connection first.
            self._write(encode_frame(OP_CLOSE, b"") if code == 1005 else encode_close(code))
            self._finish()
        else:  # a text frame
            self.limits.stats.protocol_error(Transport.WS, "text_frame")
            self._fail(CLOSE_PROTOCOL_ERROR, "text frames are not OpAMP; send binary frames", now)

    def _fail(self, code: int, reason: str, now: float | None) -> None:
        """Send a close frame and wait (``close_timeout_s``) for the peer's."""
        if self.state != WS:
            return
        self._write(encode_close(code, reason))
        if self.held:
            self.limits.budget.release(self)
        self.state = CLOSING
        self._ping_deadline = None
        self._phase_deadline = None if now is None else now + self.limits.close_timeout_s
        self._update_deadline()
        self._notify_closed()

    def _notify_closed(self) -> None:
        """Tell the handler the WebSocket (or the admitted POST) is over, exactly once."""
        if not self._close_notified:
            self._close_notified = True
            stats = self.limits.stats
            if self.transport is Transport.WS:
                stats.ws_open -= 1
            else:
                stats.http_open -= 1
            self.limits.handler.on_connection_close(self)


INSTANCE_UID_HEADER: Final = "opamp-instance-uid"


def _header_uid(headers: dict[str, str]) -> bytes | None:
    """The uid of an ``OpAMP-Instance-UID`` header (spec v0.15: set by plain-HTTP clients so
    that load balancers route each agent to one instance), None when absent.

    Raises:
        HTTPError: 400 when it is not one UUID.
    """
    text = headers.get(INSTANCE_UID_HEADER)
    if text is None:
        return None
    try:
        return parse_instance_uid_text(text.strip())
    except ValueError:
        raise HTTPError(
            400,
            "OpAMP-Instance-UID must be the instance uid as a UUID (8-4-4-4-12 hex digits)",
            kind="instance_uid_header",
        ) from None
