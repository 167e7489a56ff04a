"""OpAMP over WebSocket (raw ASGI): binary frames with the 0x00 varint header.

Per connection: one receive loop calling the handler in order; replies and server pushes share
one serialised writer (``Connection.send_frame``). Protocol errors close with a code and reason:
text frame or non-zero header -> 1002; oversize -> 1009 (hypercorn enforces the size limit while
reading and closes with 1009 itself). An undecodable protobuf gets ``error_response{BadRequest}``
and the connection survives: the agent may send a good message next.
"""

from __future__ import annotations

import logging
from typing import Any

from ..handlers import AgentHandler, ConnectingRequest
from ..protocol import (
    ProtocolError,
    RemoteProtocolError,
    Transport,
    decode_agent_to_server,
    decode_ws_payload,
    encode_server_to_agent,
    encode_ws_frame,
    error_response,
    pb,
)
from .connection import Connection, ConnectionClosedError
from .stats import TransportStats

logger = logging.getLogger(__name__)

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_GOING_AWAY = 1001


async def serve_websocket(
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    *,
    handler: AgentHandler,
    stats: TransportStats,
    max_message_bytes: int,
    request: ConnectingRequest,
) -> None:
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    verdict = handler.on_connecting(request)
    if not verdict.accept:
        stats.rejected(Transport.WS, verdict.http_status)
        await _deny(scope, send, verdict.http_status, verdict.reason, verdict.headers)
        return
    await send({"type": "websocket.accept"})
    conn = Connection(
        Transport.WS, request.remote_addr, send=send, max_message_bytes=max_message_bytes
    )
    stats.opened(Transport.WS)
    try:
        await handler.on_connected(conn)
        await _receive_loop(conn, receive, handler, stats, max_message_bytes)
    finally:
        stats.closed(Transport.WS)
        conn.closed = True
        await handler.on_connection_close(conn)


async def _receive_loop(
    conn: Connection,
    receive: Any,
    handler: AgentHandler,
    stats: TransportStats,
    max_message_bytes: int,
) -> None:
    while True:
        event = await receive()
        kind = event["type"]
        if kind == "websocket.disconnect":
            return
        if kind != "websocket.receive":
            continue
        data = event.get("bytes")
        if data is None:
            stats.protocol_error(Transport.WS, "text_frame")
            await conn.close(CLOSE_PROTOCOL_ERROR, "text frames are not OpAMP; send binary frames")
            return
        stats.received(Transport.WS, len(data))
        try:
            msg = decode_agent_to_server(decode_ws_payload(data), max_bytes=max_message_bytes)
        except ProtocolError as exc:
            stats.protocol_error(Transport.WS, exc.kind)
            handler.on_read_message_error(conn, exc)
            if exc.kind == "decode":
                # Bad payload in a well-framed message: answer, don't retry, keep the socket.
                reply = error_response(pb.ServerErrorResponseType_BadRequest, str(exc))
                if not await _send(conn, reply, stats, max_message_bytes):
                    return
                continue
            await conn.close(exc.close_code_hint, str(exc))
            return
        try:
            response = await handler.on_message(conn, msg)
        except RemoteProtocolError as exc:  # e.g. an invalid instance_uid
            stats.protocol_error(Transport.WS, exc.kind)
            handler.on_read_message_error(conn, exc)
            response = error_response(pb.ServerErrorResponseType_BadRequest, str(exc))
        if response is not None and not await _send(conn, response, stats, max_message_bytes):
            return


async def _send(
    conn: Connection, msg: pb.ServerToAgent, stats: TransportStats, max_message_bytes: int
) -> bool:
    try:
        frame = encode_ws_frame(encode_server_to_agent(msg, max_bytes=max_message_bytes))
    except ProtocolError as exc:  # our reply is over the limit: it MUST NOT be sent
        logger.error("reply to %s not sent: %s", conn.remote_addr, exc)
        stats.protocol_error(Transport.WS, exc.kind)
        return True
    try:
        await conn.send_frame(frame)
    except ConnectionClosedError:
        return False
    stats.sent(Transport.WS, len(frame))
    return True


async def _deny(
    scope: dict[str, Any],
    send: Any,
    status: int,
    reason: str,
    headers: tuple[tuple[str, str], ...],
) -> None:
    """Refuse the upgrade with a real HTTP status (401, 503 + Retry-After) when the server
    supports the ASGI WebSocket denial response; a bare close (403) otherwise."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = reason.encode()
        raw_headers = [(k.encode(), v.encode()) for k, v in headers]
        raw_headers.append((b"content-type", b"text/plain; charset=utf-8"))
        await send(
            {"type": "websocket.http.response.start", "status": status, "headers": raw_headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
