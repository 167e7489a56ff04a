"""OpAMP over plain HTTP (raw ASGI): one POSTed ``AgentToServer``, one ``ServerToAgent`` reply.

* ``Content-Encoding: gzip`` request bodies are inflated with the size limit applied to the
  *decompressed* size (a gzip bomb gets 413, not memory exhaustion).
* The reply is gzipped when ``Accept-Encoding`` allows gzip (RFC 9110 q-values honoured).
* An undecodable body gets 200 + ``error_response{BadRequest}`` (spec SHOULD; clients do not
  retry it), never a 500. Over-limit body: 413. Wrong method: 405. Wrong content type: 415.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from typing import Any

from ..handlers import AgentHandler, ConnectingRequest
from ..protocol import (
    ProtocolError,
    RemoteProtocolError,
    Transport,
    decode_agent_to_server,
    encode_server_to_agent,
    error_response,
    pb,
)
from .connection import Connection
from .stats import TransportStats

logger = logging.getLogger(__name__)

PROTOBUF = b"application/x-protobuf"


class BodyTooLargeError(Exception):
    pass


class BadEncodingError(Exception):
    """The body cannot be read as sent; ``status`` is the HTTP answer (400 or 415)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def serve_http(
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    *,
    handler: AgentHandler,
    stats: TransportStats,
    max_message_bytes: int,
    request: ConnectingRequest,
) -> None:
    headers = request.headers
    if scope["method"] != "POST":
        await _plain(send, 405, "OpAMP over HTTP accepts POST only", [(b"allow", b"POST")])
        return
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != PROTOBUF.decode():
        stats.protocol_error(Transport.HTTP, "content_type")
        await _plain(send, 415, "Content-Type must be application/x-protobuf (or use WebSocket)")
        return
    verdict = handler.on_connecting(request)
    if not verdict.accept:
        stats.rejected(Transport.HTTP, verdict.http_status)
        await _plain(
            send,
            verdict.http_status,
            verdict.reason,
            [(k.encode(), v.encode()) for k, v in verdict.headers],
        )
        return
    encoding = headers.get("content-encoding", "identity").strip().lower()
    try:
        body = await _read_body(receive, headers, encoding, max_message_bytes)
    except BodyTooLargeError:
        stats.protocol_error(Transport.HTTP, "too_large")
        await _plain(send, 413, f"message exceeds the limit of {max_message_bytes} bytes")
        return
    except BadEncodingError as exc:
        stats.protocol_error(Transport.HTTP, "content_encoding")
        await _plain(send, exc.status, str(exc))
        return
    stats.received(Transport.HTTP, len(body))

    conn = Connection(Transport.HTTP, request.remote_addr, max_message_bytes=max_message_bytes)
    stats.opened(Transport.HTTP)
    await handler.on_connected(conn)
    try:
        reply = await _handle(conn, body, handler, stats, max_message_bytes)
    finally:
        stats.closed(Transport.HTTP)
        await handler.on_connection_close(conn)
    try:
        payload = encode_server_to_agent(reply, max_bytes=max_message_bytes)
    except ProtocolError as exc:  # our reply is over the limit: it MUST NOT be sent
        logger.error("reply to %s not sent: %s", conn.remote_addr, exc)
        stats.protocol_error(Transport.HTTP, exc.kind)
        payload = encode_server_to_agent(
            error_response(pb.ServerErrorResponseType_Unknown, "reply exceeded the size limit"),
            max_bytes=max_message_bytes,
        )
    out_headers = [(b"content-type", PROTOBUF)]
    if accepts_gzip(headers.get("accept-encoding", "")):
        payload = gzip.compress(payload, compresslevel=5, mtime=0)
        out_headers.append((b"content-encoding", b"gzip"))
    out_headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": out_headers})
    await send({"type": "http.response.body", "body": payload})
    stats.sent(Transport.HTTP, len(payload))


async def _handle(
    conn: Connection,
    body: bytes,
    handler: AgentHandler,
    stats: TransportStats,
    max_message_bytes: int,
) -> pb.ServerToAgent:
    try:
        msg = decode_agent_to_server(body, max_bytes=max_message_bytes)
    except ProtocolError as exc:
        stats.protocol_error(Transport.HTTP, exc.kind)
        handler.on_read_message_error(conn, exc)
        return error_response(pb.ServerErrorResponseType_BadRequest, str(exc))
    try:
        response = await handler.on_message(conn, msg)
    except RemoteProtocolError as exc:
        stats.protocol_error(Transport.HTTP, exc.kind)
        handler.on_read_message_error(conn, exc)
        return error_response(pb.ServerErrorResponseType_BadRequest, str(exc))
    if response is None:  # plain HTTP always answers
        response = pb.ServerToAgent(instance_uid=msg.instance_uid)
    return response


async def _read_body(receive: Any, headers: Any, encoding: str, limit: int) -> bytes:
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise BadEncodingError(
            f"unsupported Content-Encoding {encoding!r}; use gzip or none", status=415
        )
    declared = headers.get("content-length")
    if encoding == "identity" and declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise BodyTooLargeError
    wire_limit = limit if encoding == "identity" else limit + 1024 * 1024
    chunks: list[bytes] = []
    size = 0
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding != "identity" else None
    out_size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadEncodingError("client disconnected mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > wire_limit:
            raise BodyTooLargeError
        if inflater is not None and chunk:
            try:
                chunk = inflater.decompress(chunk, limit + 1 - out_size)
            except zlib.error:
                raise BadEncodingError("corrupt gzip body") from None
            if inflater.unconsumed_tail:  # more output than the limit allows
                raise BodyTooLargeError
        out_size += len(chunk)
        if out_size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if inflater is not None and not inflater.eof:
        raise BadEncodingError("corrupt gzip body (truncated)")
    return b"".join(chunks)


def accepts_gzip(header: str) -> bool:
    """True when ``Accept-Encoding`` admits gzip (explicitly or via ``*``) with q > 0."""
    gzip_q: float | None = None
    star_q: float | None = None
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name in ("gzip", "x-gzip"):
            gzip_q = q
        elif name == "*":
            star_q = q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


async def _plain(
    send: Any, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = (text + "\n").encode()
    out = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    out.extend(headers or [])
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})
