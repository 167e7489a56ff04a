"""Sans-IO HTTP/1.1 pieces of the OpAMP endpoint: request heads, bodies, responses.

Heads are parsed by ``httptools`` (llhttp, the parser behind Node.js and uvicorn); the
connection finds the end of a head itself (``\\r\\n\\r\\n``) so that it always knows where each
request starts in the byte stream: a request for another path can then be handed, bytes and
all, to the ASGI server. Bodies with a ``Content-Length`` are framed here; chunked bodies go
through the same ``httptools`` parser that read their head.

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from http import HTTPStatus
from typing import Final

import httptools

__all__ = [
    "BodyReader",
    "HTTPError",
    "RequestHead",
    "accepts_gzip",
    "check_websocket_key",
    "feed_chunked",
    "parse_head",
    "plain_response",
    "reason_phrase",
    "response_head",
    "websocket_accept",
]

WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: gzip may add at most this much on the wire beyond the limit on the inflated size.
GZIP_SLACK: Final = 1024 * 1024
#: A gzip body may inflate to this many times the bytes received so far, past the first
#: ``INFLATE_FREE`` bytes. OpAMP messages compress 3-20x; a bomb (1000x) is refused after a
#: bounded amount of work per byte the peer sent, instead of inflating up to the message limit
#: on the event loop.
MAX_INFLATE_RATIO: Final = 100
INFLATE_FREE: Final = 1024 * 1024


class HTTPError(Exception):
    """A request the endpoint answers with ``status`` and closes (bad head, bad body, limits)."""

    def __init__(
        self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = (), kind: str = ""
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers
        self.kind = kind or f"http_{status}"


class RequestHead:
    """One parsed request head. ``headers`` has lower-case names; repeats joined with ", "."""

    __slots__ = (
        "chunked",
        "chunks",
        "complete",
        "content_length",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "parser",
        "path",
        "target",
        "upgrade",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.path = ""
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.http_version = "1.1"
        self.upgrade = False
        self.content_length: int | None = None
        self.chunked = False
        self.parser: httptools.HttpRequestParser | None = None
        self.chunks: list[bytes] = []  # chunked body data not yet taken by the connection
        self.complete = False  # the (chunked) message ended

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def parse_head(raw: bytes, *, max_message_bytes: int) -> RequestHead:
    """Parse one complete request head (``raw`` ends with ``\\r\\n\\r\\n``).

    The returned head keeps its parser when the body is chunked (``head.parser``), so the body
    can be fed to it. Raises :class:`HTTPError` (400, 411-style problems as 400, 501 for an
    unknown transfer coding) for anything malformed.
    """
    head = RequestHead()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        head.upgrade = True
    except httptools.HttpParserError as exc:
        raise HTTPError(400, f"malformed HTTP request: {exc}", kind="bad_request") from None
    head.method = parser.get_method()
    if not head.method or not head.target:
        raise HTTPError(400, "malformed HTTP request: no request line", kind="bad_request")
    head.keep_alive = parser.should_keep_alive()
    head.http_version = parser.get_http_version()
    target = head.target
    path = target.split(b"?", 1)[0]
    if path.startswith(b"http://") or path.startswith(b"https://"):  # absolute-form target
        path = b"/" + path.split(b"/", 3)[-1] if path.count(b"/") >= 3 else b"/"
    head.path = path.decode("latin-1")
    headers = head.headers
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.strip().lower() != "chunked":
            raise HTTPError(501, f"unsupported Transfer-Encoding {coding!r}", kind="bad_request")
        if "content-length" in headers:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding", kind="bad_request")
        head.chunked = True
        head.parser = parser
    declared = headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 19:
            raise HTTPError(400, "invalid Content-Length", kind="bad_request")
        head.content_length = int(declared)
    return head


def feed_chunked(head: RequestHead, data: bytes) -> list[bytes]:
    """Bytes of a chunked body, through the parser that read its head: the body data they
    carried (``head.complete`` once the last chunk is in). Raises :class:`HTTPError` 400."""
    parser = head.parser
    assert parser is not None
    try:
        parser.feed_data(data)
    except Exception as exc:  # httptools' parser errors
        raise HTTPError(400, f"malformed chunked body: {exc}") from None
    chunks = head.chunks
    head.chunks = []
    return chunks


class BodyReader:
    """Collects one request body, inflating ``gzip`` with the size limit on the inflated size
    and a bound on the inflation ratio (a gzip bomb gets 413 after inflating at most
    ``MAX_INFLATE_RATIO`` bytes per byte received, long before memory or time is at risk)."""

    __slots__ = ("_chunks", "_inflater", "_limit", "_size", "_wire", "_wire_limit")

    def __init__(self, encoding: str, limit: int) -> None:
        if encoding not in ("identity", "gzip", "x-gzip"):
            raise HTTPError(
                415,
                f"unsupported Content-Encoding {encoding!r}; use gzip or none",
                kind="content_encoding",
            )
        self._limit = limit
        self._wire_limit = limit if encoding == "identity" else limit + GZIP_SLACK
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding != "identity" else None
        self._chunks: list[bytes] = []
        self._size = 0
        self._wire = 0

    def feed(self, chunk: bytes) -> None:
        self._wire += len(chunk)
        if self._wire > self._wire_limit:
            raise _too_large(self._limit)
        inflater = self._inflater
        if inflater is not None and chunk:
            allowed = min(self._limit, max(INFLATE_FREE, MAX_INFLATE_RATIO * self._wire))
            try:
                chunk = inflater.decompress(chunk, allowed + 1 - self._size)
            except zlib.error:
                raise HTTPError(400, "corrupt gzip body", kind="content_encoding") from None
            if inflater.unconsumed_tail:  # more output than allowed
                if allowed == self._limit:
                    raise _too_large(self._limit)
                raise HTTPError(
                    413,
                    f"gzip body inflates more than {MAX_INFLATE_RATIO}x its size",
                    kind="too_large",
                )
        self._size += len(chunk)
        if self._size > self._limit:
            raise _too_large(self._limit)
        if chunk:
            self._chunks.append(chunk)

    @property
    def received(self) -> int:
        """Bytes received on the wire so far (before inflation)."""
        return self._wire

    def finish(self) -> bytes:
        inflater = self._inflater
        if inflater is not None and not inflater.eof:
            raise HTTPError(400, "corrupt gzip body (truncated)", kind="content_encoding")
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> HTTPError:
    return HTTPError(413, f"message exceeds the limit of {limit} bytes", kind="too_large")


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


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def response_head(
    status: int, headers: list[tuple[str, str]], *, content_length: int, close: bool
) -> bytes:
    """An HTTP/1.1 response head; header values must not contain CR or LF."""
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"content-length: {content_length}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def plain_response(
    status: int, text: str, headers: tuple[tuple[str, str], ...] = (), *, close: bool = True
) -> bytes:
    """A short ``text/plain`` response (errors, refusals)."""
    body = (text + "\n").encode("utf-8", "replace")
    out = [("content-type", "text/plain; charset=utf-8")]
    out.extend((k, v.replace("\r", " ").replace("\n", " ")) for k, v in headers)
    return response_head(status, out, content_length=len(body), close=close) + body


def websocket_accept(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    digest = hashlib.sha1(key.encode("ascii") + WS_GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def check_websocket_key(key: str | None) -> str:
    """The key when it is the base64 of 16 bytes, else :class:`HTTPError` 400."""
    if key is None:
        raise HTTPError(400, "missing Sec-WebSocket-Key", kind="bad_handshake")
    key = key.strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise HTTPError(400, "invalid Sec-WebSocket-Key", kind="bad_handshake")
    return key
