"""One TCP connection on the shared port, as a sans-IO state machine.

``OpAMPConnection`` reads HTTP/1.1 request heads; a request for the OpAMP path is served here
(a WebSocket upgrade, or a plain-HTTP POST), anything else is handed over, with every byte
received for it, to the ASGI server that runs the REST API (state ``HANDOFF``). It calls the
:class:`~opamp_fast.handlers.AgentHandler` synchronously and is itself the
:class:`~opamp_fast.handlers.Connection` the handler sees.

It does no I/O and reads no clock: the driver feeds bytes and ``now`` in, and hands the object
a ``write`` callable for its output. After every call the driver looks at ``state`` (close the
socket on ``CLOSED``, with ``abort`` meaning "without flushing"; hand the socket over on
``HANDOFF``) and at ``deadline`` (call :meth:`on_deadline` once the clock passes it). The
asyncio and trio drivers (``asyncio_front``, ``trio_front``) are thin subclasses.

Every phase is bounded in time (``Limits``): the request head (``handshake_timeout_s``, from the
first byte; an idle keep-alive connection ``keep_alive_timeout_s``), a body, a WebSocket
message once begun, the first OpAMP message after an upgrade and any connection that does not
own an agent (``message_timeout_s``), the close handshake (``close_timeout_s``), and a peer that
stops reading (``message_timeout_s`` while the driver reports writing paused).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..handlers import ConnectingRequest
from ..pbscan import parse_heartbeat
from ..protocol import (
    ProtocolError,
    RemoteProtocolError,
    Session,
    Transport,
    decode_agent_to_server,
    encode_server_to_agent,
    error_response,
    pb,
)
from ..wsframe import (
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
from ._http11 import (
    BodyReader,
    HTTPError,
    RequestHead,
    accepts_gzip,
    check_websocket_key,
    parse_head,
    plain_response,
    response_head,
    websocket_accept,
)

if TYPE_CHECKING:
    from ..handlers import AgentHandler
    from ..protocol.codec import PartBounds
    from .stats import TransportStats

__all__ = [
    "BODY",
    "CLOSED",
    "CLOSING",
    "HANDOFF",
    "HEAD",
    "WS",
    "Limits",
    "OpAMPConnection",
]

logger = logging.getLogger(__name__)

# States. HEAD: reading a request head (also an idle keep-alive connection); BODY: reading an
# OpAMP POST body; WS: WebSocket open; CLOSING: our close frame is out, waiting for the peer's;
# CLOSED: finished, the driver closes the socket; HANDOFF: not ours, the driver passes it on.
HEAD: Final = 0
BODY: Final = 1
WS: Final = 2
CLOSING: Final = 3
CLOSED: Final = 4
HANDOFF: Final = 5

PROTOBUF: Final = "application/x-protobuf"
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_POLICY: Final = 1008
RATE_BURST_S: Final = 10.0  # a connection's message budget holds this many seconds' worth
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
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


class OpAMPConnection:
    """Sans-IO: one connection from its first byte until it is closed or handed over."""

    __slots__ = (
        "_body",
        "_body_left",
        "_close_notified",
        "_head",
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
        "handoff",
        "identity",
        "limits",
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
        self.handoff: bytes | None = None  # with HANDOFF: the bytes the next server must see
        self.transport: Transport | None = None  # what the handler sees (WS, or HTTP per POST)
        self.session: Session | None = None
        self.record: Any = None  # the handler's: the agent this connection serves
        self.identity: bytes | None = None  # the uid its credentials are bound to
        self.requests = 0  # request heads read so far (0: nothing useful came yet)
        self._raw: bytearray | None = None  # HEAD: bytes of the request being read
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
        if self.state == WS:
            self._fail(code, reason, now)
        elif self.state in (HEAD, BODY):
            self._finish()

    # -- driver input --------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> None:
        state = self.state
        if state == WS or state == CLOSING:
            self._ws_data(data, now)
        elif state == HEAD:
            self._head_data(data, now)
        elif state == BODY:
            self._body_data(data, now)

    def receive_eof(self, now: float) -> None:
        """The peer will send no more: nothing left to answer on a request/response protocol."""
        self.peer_gone(now)

    def peer_gone(self, now: float) -> None:
        """The socket is gone (reset, closed, or closed by us): the agent is disconnected."""
        if self.state != HANDOFF:
            self._finish()
        self.deadline = None

    def _finish(self, *, abort: bool = False) -> None:
        """The end of the connection (every path to ``CLOSED`` comes here): the handler hears
        of it exactly once, and the socket is to be closed (``abort``: without flushing)."""
        self.state = CLOSED
        self.abort = self.abort or abort
        self._phase_deadline = self._stall_deadline = self._ping_deadline = None
        self.deadline = None
        self._notify_closed()

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
        if state == BODY:
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
        elif state in (HEAD, BODY) and phase != "write_stall":
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
    def _head_data(self, data: bytes, now: float) -> None:
        raw = self._raw
        if not raw:  # the first byte of a request: the head must complete in time
            data = data.lstrip(b"\r\n")  # empty lines before a request are allowed (RFC 9112)
            if not data:
                return
            raw = self._raw = bytearray(data)
            self._phase_deadline = now + self.limits.handshake_timeout_s
            self._update_deadline()
            start = 0
        else:
            start = max(0, len(raw) - 3)
            raw += data
        while self.state == HEAD and raw:
            end = raw.find(b"\r\n\r\n", start)
            if end < 0:
                if len(raw) > self.limits.max_head_bytes:
                    self._respond_error(HTTPError(431, "request head too large", kind="too_large"))
                return
            end += 4
            if end > self.limits.max_head_bytes:
                self._respond_error(HTTPError(431, "request head too large", kind="too_large"))
                return
            self._request(bytes(raw[:end]), raw, end, now)
            raw = self._raw
            start = 0
            if raw is None:
                return

    def _request(self, head_bytes: bytes, raw: bytearray, end: int, now: float) -> None:
        """One complete head: route it. ``raw[end:]`` is what followed it."""
        self.requests += 1
        limits = self.limits
        try:
            head = parse_head(head_bytes, max_message_bytes=limits.max_message_bytes)
        except HTTPError as exc:
            self._respond_error(exc)
            return
        if head.path != limits.path:
            self.state = HANDOFF
            self.handoff = bytes(raw)
            self._raw = None
            self.deadline = None
            return
        rest = bytes(raw[end:])
        self._raw = None
        try:
            if head.upgrade or head.headers.get("upgrade", "").lower() == "websocket":
                self._upgrade(head, rest, now)
            elif head.method == b"POST":
                self._begin_post(head, rest, now)
            else:
                raise HTTPError(
                    405,
                    "OpAMP accepts POST (plain HTTP) or a WebSocket upgrade (GET)",
                    (("allow", "GET, POST"),),
                    kind="method",
                )
        except HTTPError as exc:
            self._respond_error(exc)

    def _respond_error(self, exc: HTTPError, transport: Transport = Transport.HTTP) -> None:
        """Answer with ``exc`` and close (what follows on the socket cannot be trusted)."""
        self.limits.stats.protocol_error(transport, exc.kind)
        self._write(plain_response(exc.status, exc.reason, exc.headers))
        self._finish()
        self._raw = None
        self._head = None
        self._body = None

    def _connecting(self, transport: Transport, head: RequestHead) -> None:
        """The handler's admission decision; a refusal is answered and closes the socket."""
        request = ConnectingRequest(
            transport=transport,
            path=head.path,
            remote_addr=self.remote_addr,
            headers=head.headers,
            tls_peer_cert=self.tls_peer_cert,
        )
        verdict = self.limits.handler.on_connecting(request)
        if not verdict.accept:
            self.limits.stats.rejected(transport, verdict.http_status)
            raise HTTPError(verdict.http_status, verdict.reason, verdict.headers, kind="rejected")
        self.identity = verdict.identity

    # -- HTTP: OpAMP POST ----------------------------------------------------------------------
    def _begin_post(self, head: RequestHead, rest: bytes, now: float) -> None:
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
        self._connecting(Transport.HTTP, head)
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
        if head.chunked or self._body_left or rest:
            self._body_data(rest, now)
        else:
            self._finish_post(b"", now)

    def _body_data(self, data: bytes, now: float) -> None:
        head = self._head
        body = self._body
        assert head is not None and body is not None
        try:
            if head.chunked:
                parser = head.parser
                assert parser is not None
                try:
                    parser.feed_data(data)
                except Exception as exc:  # httptools' parser errors
                    raise HTTPError(400, f"malformed chunked body: {exc}") from None
                for chunk in head.chunks:
                    body.feed(chunk)
                head.chunks.clear()
                if head.complete:
                    self._finish_post(b"", now)  # bytes after a chunked body: see _finish_post
                return
            left = self._body_left
            if len(data) < left:
                body.feed(data)
                self._body_left = left - len(data)
                return
            body.feed(data[:left] if len(data) > left else data)
            self._body_left = 0
            self._finish_post(data[left:], now)
        except HTTPError as exc:
            self._respond_error(exc)

    def _finish_post(self, rest: bytes, now: float) -> None:
        """The body is complete: answer it, then read the next request (keep-alive)."""
        head = self._head
        body = self._body
        assert head is not None and body is not None
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
        if rest:
            self._head_data(rest, now)

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
            response = handler.on_message(self, msg)
        except RemoteProtocolError as exc:
            self.limits.stats.protocol_error(Transport.HTTP, exc.kind)
            handler.on_read_message_error(self, exc)
            return error_response(pb.ServerErrorResponseType_BadRequest, str(exc))
        if response is None:  # plain HTTP always answers
            response = pb.ServerToAgent(instance_uid=msg.instance_uid)
        return response

    # -- WebSocket: handshake --------------------------------------------------------------------
    def _upgrade(self, head: RequestHead, rest: bytes, now: float) -> None:
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
        if rest:
            self._ws_data(rest, now)

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
        if self.state == WS and (reader.buffered or self._phase_deadline is not None):
            self._ws_deadline(now)

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
