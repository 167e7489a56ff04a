"""One REST request on its way to the ASGI application, and its response on the way back.

Every request on the shared port is read by the front (``connection.OpAMPConnection``) under
the same bounds, whichever path it names: a head of at most 16 KiB within the handshake
timeout, a body that keeps arriving. A request for another path than OpAMP becomes an
:class:`Exchange`: the ASGI scope, the body framing (``Content-Length`` or chunked) and a small
queue of body bytes the application has not taken yet, then the response framing
(``Content-Length`` when the application gives it or sends its whole body at once, chunked
otherwise). The connection serves one exchange at a time; what a client pipelines behind it
waits, bounded, until the response is complete.

Sans-IO, like the rest of ``connection``: no clock, no I/O. ``transport.asgi`` runs the
application against an exchange; ``notify`` is how it is woken when something changes here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import unquote

from ._http11 import RequestHead, feed_chunked, reason_phrase

__all__ = ["QUEUE_HIGH_WATER", "Exchange"]

#: Body bytes the application has not taken yet beyond which the connection stops reading.
QUEUE_HIGH_WATER: Final = 256 * 1024
_NO_BODY_STATUS: Final = frozenset({204, 304})


def _nothing() -> None:
    """The waker of an exchange nobody waits on."""


class Exchange:
    """Request scope and body in, response bytes out; see the module docstring."""

    __slots__ = (
        "_chunked",
        "_chunked_out",
        "_left",
        "_queue",
        "_response_headers",
        "body_done",
        "continue_sent",
        "ended",
        "expect_continue",
        "gone",
        "head",
        "keep_alive",
        "notify",
        "queued",
        "received",
        "scope",
        "started",
        "status",
        "task_started",
    )

    def __init__(self, head: RequestHead, *, scheme: str, client: tuple[str, int] | None) -> None:
        self.head = head
        self.scope = _scope(head, scheme, client)
        self._chunked = head.chunked
        self._left = 0 if head.chunked else head.content_length or 0
        self.body_done = not head.chunked and not self._left
        self._queue: deque[bytes] = deque()
        self.queued = 0  # body bytes received and not taken by the application yet
        self.received = 0  # body bytes received so far
        self.expect_continue = (
            not self.body_done and head.headers.get("expect", "").lower() == "100-continue"
        )
        self.continue_sent = False
        # httptools forgets a request's "Connection: close" once the message is complete, so
        # for a request without a body should_keep_alive() says yes: the header is read here.
        self.keep_alive = head.keep_alive and not _asks_to_close(head)
        self.gone = False  # the peer went away (or the connection was dropped)
        self.task_started = False  # the driver started the application on it
        self.started = False  # http.response.start seen
        self.ended = False  # the last body message seen
        self.status = 0
        self._response_headers: list[tuple[bytes, bytes]] | None = None  # until the head
        self._chunked_out = False
        self.notify: Callable[[], None] = _nothing  # set by whoever waits on it

    # -- request body (from the connection) ----------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Body bytes in; returns what followed the body (the next request), if anything."""
        if self._chunked:
            return self._feed_chunked(data)
        left = self._left
        body, rest = (data, b"") if len(data) <= left else (data[:left], data[left:])
        self._left = left - len(body)
        self._enqueue(body)
        if not self._left:
            self.body_done = True
        self.notify()
        return rest

    def _feed_chunked(self, data: bytes) -> bytes:
        head = self.head
        for chunk in feed_chunked(head, data):
            self._enqueue(chunk)
        if head.complete:
            self.body_done = True
            # Where the next request starts after a chunked body is not known: the
            # connection closes after this response instead of reading on.
            self.keep_alive = False
        self.notify()
        return b""

    def _enqueue(self, body: bytes) -> None:
        if body:
            self._queue.append(body)
            self.queued += len(body)
            self.received += len(body)

    def take(self) -> tuple[bytes, bool]:
        """What the application receives next: (body bytes, more to come)."""
        queue = self._queue
        data = queue.popleft() if len(queue) == 1 else b"".join(queue)
        queue.clear()
        self.queued = 0
        return data, not self.body_done

    @property
    def has_body_message(self) -> bool:
        """A ``http.request`` message is ready (data queued, or the body's end)."""
        return bool(self._queue) or self.body_done

    @property
    def reading_wanted(self) -> bool:
        return self.queued < QUEUE_HIGH_WATER

    # -- response (from the application) -------------------------------------------------------
    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.started:
            raise RuntimeError("http.response.start sent twice")
        self.started = True
        self.status = status
        self._response_headers = headers
        if not self.body_done:  # the rest of the body would have to be read and dropped
            self.keep_alive = False

    def body(self, data: bytes, more: bool) -> bytes:
        """The wire bytes for one ``http.response.body`` message (the head before the first)."""
        if not self.started:
            raise RuntimeError("http.response.body before http.response.start")
        if self.ended:
            raise RuntimeError("http.response.body after the response ended")
        out = b""
        if self._response_headers is not None:
            out = self._head(data, more)
        if not more:
            self.ended = True
        if self.head.method == b"HEAD" or self.status in _NO_BODY_STATUS:
            return out
        if self._chunked_out:
            if data:
                out += b"%x\r\n%b\r\n" % (len(data), data)
            if not more:
                out += b"0\r\n\r\n"
            return out
        return out + data

    def _head(self, data: bytes, more: bool) -> bytes:
        headers = self._response_headers or []
        self._response_headers = None
        lines = [b"HTTP/1.1 %d %s" % (self.status, reason_phrase(self.status).encode())]
        has_length = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                has_length = True
            elif lower == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue
            elif lower == b"transfer-encoding":
                continue  # the framing is ours
            lines.append(name + b": " + value)
        if not has_length and self.status not in _NO_BODY_STATUS and self.status >= 200:
            if more:
                self._chunked_out = True
                lines.append(b"transfer-encoding: chunked")
            else:
                lines.append(b"content-length: %d" % len(data))
        if not self.keep_alive:
            lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def finish(self) -> None:
        """The connection is done with this exchange (ended, failed or gone): wake the task."""
        self.notify()


def _asks_to_close(head: RequestHead) -> bool:
    """The client sent the ``close`` connection option (RFC 9112, 9.6: the server closes
    after its response)."""
    option = head.headers.get("connection")
    return option is not None and "close" in (t.strip().lower() for t in option.split(","))


def _scope(head: RequestHead, scheme: str, client: tuple[str, int] | None) -> dict[str, Any]:
    raw_path, _, query = head.target.partition(b"?")
    if raw_path.startswith((b"http://", b"https://")):  # absolute-form target
        raw_path = b"/" + raw_path.split(b"/", 3)[-1] if raw_path.count(b"/") >= 3 else b"/"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": head.http_version,
        "server": None,
        "client": client,
        "scheme": scheme,
        "method": head.method.decode("latin-1"),
        "root_path": "",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head.headers.items()],
    }
