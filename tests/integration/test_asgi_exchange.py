"""The front's ASGI side (``transport.asgi`` and ``transport._exchange``) against a small ASGI
application of its own, on both backends, over real loopback sockets.

The REST API never provokes some of what the front must get right: an application that fails
before or after starting its response, one that streams a response of unknown length, answers
a HEAD or a 204, or sends what ASGI does not allow. Each route of ``App`` below does one such
thing. The client side is h11, an HTTP/1.1 implementation independent of the server's (which
parses with httptools): a framing mistake on the wire is an h11 error here.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import h11
import pytest
import sniffio

from opamp_fast.transport.connection import Limits
from opamp_fast.transport.handlers import ConnectionResponse
from opamp_fast.transport.stats import TransportStats
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends

ASGI_LOGGER = "opamp_fast.transport.asgi"


class NoAgents:
    """The OpAMP handler of a front that serves only its application here: every OpAMP
    request is refused before it reaches anything."""

    def on_connecting(self, request: Any) -> ConnectionResponse:
        return ConnectionResponse.reject(403, "no agents here")

    def __getattr__(self, name: str) -> Any:  # no other callback may be reached
        raise AssertionError(f"the OpAMP handler was called: {name}")


class App:
    """One route per behaviour; ``seen`` records what the application received."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.disconnected = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        name = scope["path"].strip("/").replace("-", "_") or "scope"
        route = getattr(self, "route_" + name)
        self.seen["scope"] = scope
        await route(scope, receive, send)

    @staticmethod
    async def read_body(receive: Any) -> tuple[bytes, list[dict[str, Any]]]:
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            assert message["type"] == "http.request", message
            if not message.get("more_body"):
                return b"".join(m["body"] for m in messages), messages

    async def route_echo(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The request body back, in one message without a Content-Length of its own."""
        body, messages = await self.read_body(receive)
        self.seen["messages"] = messages
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def route_scope(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        shown = {k: v for k, v in scope.items() if k in ("method", "path", "scheme")}
        shown["raw_path"] = scope["raw_path"].decode()
        shown["query_string"] = scope["query_string"].decode()
        shown["client_host"] = scope["client"][0]
        shown["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        body = json.dumps(shown).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def route_stream(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A response of unknown length: several body messages, the last one empty."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def route_sized_stream(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Several body messages under the application's own Content-Length."""
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"6")]}
        )
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"def"})

    async def route_no_content(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b"ignored"})

    async def route_close(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"connection", b"close"), (b"transfer-encoding", b"chunked")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"bye"})

    async def route_dated(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"date", b"Thu, 01 Jan 1970 00:00:00 GMT")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"old"})

    async def route_unread(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answers without reading the request body."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"not reading that"})

    async def route_raise_before(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("failed before its response")

    async def route_raise_after(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("failed in the middle of its response")

    async def route_return_early(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    async def route_nothing(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Returns without a response at all."""

    async def route_bad_header(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"x-injected", b"a\r\nset-cookie: evil=1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def route_started_twice(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.start", "status": 201, "headers": []})

    async def route_body_first(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.body", "body": b"no head yet"})

    async def route_body_after_end(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        await send({"type": "http.response.body", "body": b"more"})

    async def route_keep_alive_header(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"connection", b"keep-alive")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"still here"})

    async def route_unknown_message(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.trailers", "headers": []})

    async def route_wait_for_disconnect(
        self, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        """Takes the body, then waits on receive() until the client has gone; what it sends
        afterwards is discarded."""
        self.seen["body"], _ = await self.read_body(receive)
        self.seen["after"] = await receive()
        self.disconnected.set()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"nobody reads this"})
        self.seen["sent"] = True

    async def route_disconnect_mid_body(
        self, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] == "http.disconnect":
                break
        self.seen["messages"] = messages
        self.disconnected.set()
        raise RuntimeError("the request body never completed")  # not logged: the peer left

    async def route_after_response(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Completes its response, then asks for more input: the exchange is over."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        self.seen["after"] = await receive()

    async def route_big(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """More than the socket buffers hold, so that sending waits for the reader."""
        part = b"x" * (1 << 20)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(32):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self.seen["sent"] = True


@asynccontextmanager
async def serving(app: Callable[..., Any] | None) -> AsyncIterator[int]:
    """The running backend's front on a loopback port, with ``app`` for every other path."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    limits = Limits(handler=NoAgents(), stats=TransportStats())  # type: ignore[arg-type]
    front: Any
    if sniffio.current_async_library() == "trio":
        from opamp_fast.transport.trio_front import TrioFront

        front = TrioFront(limits, app, tick_s=0.05)
    else:
        from opamp_fast.transport.asyncio_front import AsyncioFront

        front = AsyncioFront(limits, app, tick_s=0.05)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(front.run, [sock])
            try:
                yield port
            finally:  # the server's own order: stop accepting, close what is left, stop
                with anyio.CancelScope(shield=True):
                    await front.drain(2.0)
                    await front.aclose()
                tg.cancel_scope.cancel()
    finally:
        sock.close()


class Client:
    """One keep-alive connection driven by h11."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, *events: Any) -> None:
        for event in events:
            data = self.h11.send(event)
            if data:
                await self.stream.send(data)

    async def event(self) -> Any:
        with anyio.fail_after(10):
            while True:
                event = self.h11.next_event()
                if event is not h11.NEED_DATA:
                    return event
                try:
                    data = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    data = b""
                self.h11.receive_data(data)

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: list[tuple[str, str]] = ()
    ) -> tuple[h11.Response, bytes]:
        await self.send(*request_events(method, target, body, list(headers)))
        return await self.exchange_response()

    async def exchange_response(self) -> tuple[h11.Response, bytes]:
        event = await self.event()
        while isinstance(event, h11.InformationalResponse):
            event = await self.event()
        assert isinstance(event, h11.Response), event
        body = b""
        while not isinstance(part := await self.event(), h11.EndOfMessage):
            assert isinstance(part, h11.Data), part
            body += bytes(part.data)
        return event, body

    async def read_events_into(self, seen: list[Any]) -> None:
        """Events until the end of the response (or an h11 error)."""
        while not isinstance(event := await self.event(), h11.EndOfMessage):
            seen.append(event)
        seen.append(event)

    async def closed(self) -> bool:
        """The server closed the connection after the response."""
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            return isinstance(await self.event(), h11.ConnectionClosed)
        return False

    def next_cycle(self) -> None:
        self.h11.start_next_cycle()


def request_events(
    method: str, target: str, body: bytes, headers: list[tuple[str, str]]
) -> list[Any]:
    names = {name.lower() for name, _ in headers}
    headers = [("host", "test"), *headers]
    if body and "transfer-encoding" not in names and "content-length" not in names:
        headers.append(("content-length", str(len(body))))
    events: list[Any] = [h11.Request(method=method, target=target, headers=headers)]
    if body:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    return events


def header(response: h11.Response, name: str) -> str | None:
    values = [v.decode() for k, v in response.headers if k.decode() == name]
    assert len(values) <= 1, values
    return values[0] if values else None


@asynccontextmanager
async def connected(app: App) -> AsyncIterator[Client]:
    async with serving(app) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        yield Client(stream)


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` as is, then read until the server closes."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        received = b""
        with anyio.fail_after(10):
            while True:
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return received


# -- request bodies ------------------------------------------------------------------------------
async def test_body_with_content_length_and_keep_alive() -> None:
    app = App()
    async with connected(app) as client:
        for body in (b"first", b"", b"third" * 1000):
            response, echoed = await client.request("POST", "/echo", body)
            assert response.status_code == 200
            assert echoed == body
            assert header(response, "content-length") == str(len(body))
            assert header(response, "transfer-encoding") is None
            assert header(response, "date")  # added when the application gives none
            client.next_cycle()  # the same connection serves the next request


async def test_chunked_request_body_reaches_the_application_and_the_connection_closes() -> None:
    """A chunked upload arrives whole; where the next request would start after it is not
    known, so the connection closes after the response."""
    app = App()
    parts = [b"alpha-", b"b" * 70_000, b"-omega"]
    async with connected(app) as client:
        await client.send(
            h11.Request(
                method="POST",
                target="/echo",
                headers=[("host", "test"), ("transfer-encoding", "chunked")],
            )
        )
        for part in parts:
            await client.send(h11.Data(data=part))
            await anyio.sleep(0.02)  # separate reads: several body messages
        await client.send(h11.EndOfMessage())
        response, echoed = await client.exchange_response()
        assert response.status_code == 200
        assert echoed == b"".join(parts)
        assert header(response, "connection") == "close"
        assert await client.closed()
    messages = app.seen["messages"]
    assert messages[-1]["more_body"] is False
    assert all(m["more_body"] for m in messages[:-1])


async def test_malformed_chunked_body_is_a_400() -> None:
    async with serving(App()) as port:
        answer = await raw_exchange(
            port,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nnot hex\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 400"), answer


async def test_expect_100_continue_is_answered_when_the_application_reads() -> None:
    app = App()
    async with connected(app) as client:
        await client.send(
            h11.Request(
                method="PUT",
                target="/echo",
                headers=[("host", "test"), ("content-length", "5"), ("expect", "100-continue")],
            )
        )
        informational = await client.event()  # nothing of the body was sent yet
        assert isinstance(informational, h11.InformationalResponse), informational
        assert informational.status_code == 100
        await client.send(h11.Data(data=b"hello"), h11.EndOfMessage())
        response, echoed = await client.exchange_response()
        assert (response.status_code, echoed) == (200, b"hello")
        client.next_cycle()
        response, echoed = await client.request("POST", "/echo", b"again")
        assert echoed == b"again"


async def test_expect_100_continue_without_a_read_gets_the_answer_and_a_close() -> None:
    """An application that answers without reading the body sends no 100: the client keeps
    its body, and the connection is closed after the response (the body was never read)."""
    async with connected(App()) as client:
        await client.send(
            h11.Request(
                method="POST",
                target="/unread",
                headers=[("host", "test"), ("content-length", "9"), ("expect", "100-continue")],
            )
        )
        event = await client.event()
        assert isinstance(event, h11.Response), event  # no 100 Continue first
        assert event.status_code == 200
        assert header(event, "connection") == "close"


async def test_a_body_left_unread_closes_the_connection_after_the_response() -> None:
    async with serving(App()) as port:
        answer = await raw_exchange(
            port,
            b"POST /unread HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"y" * 1000,
        )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in head.lower()
    assert body == b"not reading that"


# -- response framing ------------------------------------------------------------------------
async def test_response_of_unknown_length_is_chunked_and_keeps_the_connection() -> None:
    async with connected(App()) as client:
        response, body = await client.request("GET", "/stream")
        assert header(response, "transfer-encoding") == "chunked"
        assert header(response, "content-length") is None
        assert body == b"one,two,three"
        client.next_cycle()
        response, body = await client.request("GET", "/stream")
        assert body == b"one,two,three"


async def test_the_applications_own_content_length_is_kept_across_body_messages() -> None:
    async with connected(App()) as client:
        response, body = await client.request("GET", "/sized-stream")
        assert header(response, "content-length") == "6"
        assert header(response, "transfer-encoding") is None
        assert body == b"abcdef"


async def test_head_gets_the_head_without_the_body() -> None:
    async with connected(App()) as client:
        response, body = await client.request("HEAD", "/echo")
        assert response.status_code == 200
        assert body == b""
        assert header(response, "content-length") == "0"
        client.next_cycle()
        response, body = await client.request("HEAD", "/stream")
        assert body == b""  # h11 would fail on any byte after the head of a HEAD response
        assert header(response, "transfer-encoding") == "chunked"
        client.next_cycle()
        response, body = await client.request("GET", "/scope")  # the connection still serves
        assert json.loads(body)["method"] == "GET"


async def test_head_response_has_no_body_on_the_wire() -> None:
    async with serving(App()) as port:
        answer = await raw_exchange(
            port, b"HEAD /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert rest == b""


async def test_204_has_neither_a_length_nor_a_body() -> None:
    async with connected(App()) as client:
        response, body = await client.request("DELETE", "/no-content")
        assert response.status_code == 204
        assert body == b""
        assert header(response, "content-length") is None
        assert header(response, "transfer-encoding") is None
        client.next_cycle()
        response, _ = await client.request("GET", "/scope")
        assert response.status_code == 200


async def test_connection_close_from_the_application_closes_and_framing_is_the_fronts() -> None:
    async with connected(App()) as client:
        response, body = await client.request("GET", "/close")
        assert body == b"bye"
        assert header(response, "connection") == "close"
        assert header(response, "transfer-encoding") is None  # its own framing header dropped
        assert header(response, "content-length") == "3"
        assert await client.closed()


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
async def test_connection_close_from_the_client_closes_after_the_response(method: str) -> None:
    """RFC 9112, 9.6: the server closes after answering a request with "Connection: close"
    (and says so), also for a request without a body, whose option httptools forgets."""
    async with connected(App()) as client:
        body = b"data" if method == "POST" else b""
        response, echoed = await client.request(
            method, "/echo", body, headers=[("connection", "close")]
        )
        assert response.status_code == 200
        assert echoed == (b"data" if method == "POST" else b"")
        assert header(response, "connection") == "close"
        assert await client.closed()


async def test_the_applications_date_is_kept() -> None:
    async with connected(App()) as client:
        response, _ = await client.request("GET", "/dated")
        assert header(response, "date") == "Thu, 01 Jan 1970 00:00:00 GMT"


async def test_a_large_response_waits_for_a_slow_reader_and_arrives_whole() -> None:
    app = App()
    async with connected(app) as client:
        await client.send(*request_events("GET", "/big", b"", []))
        await anyio.sleep(0.5)  # not reading: the application must wait, not buffer it all
        assert "sent" not in app.seen
        _, body = await client.exchange_response()
        assert len(body) == 32 << 20
        assert app.seen["sent"]


# -- the scope -----------------------------------------------------------------------------------
async def test_scope_of_an_origin_form_target() -> None:
    async with connected(App()) as client:
        _, body = await client.request("GET", "/scope?a=1&b=%20", headers=[("x-Thing", "v")])
    scope = json.loads(body)
    assert scope["method"] == "GET"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["query_string"] == "a=1&b=%20"
    assert scope["scheme"] == "http"
    assert scope["client_host"] == "127.0.0.1"
    assert ["x-thing", "v"] in scope["headers"]


async def test_scope_path_is_percent_decoded_and_raw_path_is_not() -> None:
    async with connected(App()) as client:
        _, body = await client.request("GET", "/sc%6Fpe?x=%6F")
    scope = json.loads(body)
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == (
        "/scope",
        "/sc%6Fpe",
        "x=%6F",
    )


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("http://example.test/scope?q=1", "/scope", "q=1"),
        ("https://example.test:8443/scope/", "/scope/", ""),
        ("http://example.test", "/", ""),
    ],
)
async def test_scope_of_an_absolute_form_target(target: str, path: str, query: str) -> None:
    async with serving(App()) as port:
        answer = await raw_exchange(
            port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    scope = json.loads(body)
    assert (scope["path"], scope["query_string"]) == (path, query)


async def test_a_front_without_an_application_answers_404() -> None:
    async with serving(None) as port:
        answer = await raw_exchange(
            port, b"GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), answer
    assert body == b"not found\n"


# -- an application that fails ---------------------------------------------------------------
async def test_application_raising_before_its_response_gets_500_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, ASGI_LOGGER)
    async with connected(App()) as client:
        response, body = await client.request("POST", "/raise-before", b"x")
        assert response.status_code == 500
        assert body == b"internal server error\n"
        assert await client.closed()
    [record] = [r for r in caplog.records if r.name == ASGI_LOGGER]
    assert "POST /raise-before" in record.getMessage()
    assert record.exc_info is not None


@pytest.mark.parametrize("path", ["/raise-after", "/return-early"])
async def test_a_response_cut_short_is_not_completed(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the head is out nothing can say 500: the connection is aborted, so the client
    cannot take the partial body for the whole one."""
    caplog.set_level(logging.ERROR, ASGI_LOGGER)
    async with connected(App()) as client:
        await client.send(*request_events("GET", path, b"", []))
        seen: list[Any] = []
        with pytest.raises(h11.RemoteProtocolError):  # never a complete response
            await client.read_events_into(seen)
    # asyncio delivers what was written before the abort (the head and "partial"), trio may
    # drop it with the connection: either way the response never ends.
    assert not [e for e in seen if isinstance(e, h11.EndOfMessage)]
    assert b"".join(bytes(e.data) for e in seen if isinstance(e, h11.Data)) in (b"", b"partial")
    for response in (e for e in seen if isinstance(e, h11.Response)):
        assert response.status_code == 200
        assert header(response, "transfer-encoding") == "chunked"
    assert [r.getMessage() for r in caplog.records if r.name == ASGI_LOGGER] == [
        f"the REST application failed on GET {path}"
        if path == "/raise-after"
        else f"the REST application returned without completing its response to GET {path}"
    ]


@pytest.mark.parametrize(
    "path", ["/nothing", "/bad-header", "/body-first", "/unknown-message", "/started-twice"]
)
async def test_an_application_breaking_asgi_gets_500_or_an_abort(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, ASGI_LOGGER)
    async with serving(App()) as port:
        answer = await raw_exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    if path == "/started-twice":  # once started, a failure aborts the connection
        assert answer == b""
    else:
        assert answer.startswith(b"HTTP/1.1 500"), answer
    assert b"evil" not in answer
    assert b"no head yet" not in answer
    assert [r for r in caplog.records if r.name == ASGI_LOGGER]


async def test_a_body_after_the_end_is_dropped_and_the_connection_keeps_serving() -> None:
    async with connected(App()) as client:
        _, body = await client.request("GET", "/body-after-end")
        assert body == b"done"
        client.next_cycle()  # h11 fails on any stray byte before the next response
        response, body = await client.request("GET", "/scope")
        assert response.status_code == 200
        assert json.loads(body)["path"] == "/scope"


async def test_connection_keep_alive_from_the_application_is_the_fronts_business() -> None:
    async with connected(App()) as client:
        response, body = await client.request("GET", "/keep-alive-header")
        assert body == b"still here"
        assert header(response, "connection") is None  # the front's own framing decides
        client.next_cycle()
        response, _ = await client.request("GET", "/keep-alive-header")
        assert response.status_code == 200


# -- a peer that goes away -----------------------------------------------------------------------
async def test_receive_says_disconnect_once_the_client_left_and_late_sends_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, ASGI_LOGGER)
    app = App()
    async with serving(app) as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(
                b"POST /wait-for-disconnect HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
            )
            await anyio.sleep(0.2)
            assert not app.disconnected.is_set()  # still waiting on receive()
        with anyio.fail_after(10):
            await app.disconnected.wait()
            while "sent" not in app.seen:
                await anyio.sleep(0.01)
    assert app.seen["body"] == b"body"
    assert app.seen["after"] == {"type": "http.disconnect"}
    assert not [r for r in caplog.records if r.name == ASGI_LOGGER]


async def test_a_client_leaving_mid_body_is_not_the_applications_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, ASGI_LOGGER)
    app = App()
    async with serving(app) as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(
                b"PUT /disconnect-mid-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                b"only part"
            )
            await anyio.sleep(0.2)
        with anyio.fail_after(10):
            await app.disconnected.wait()
            await anyio.sleep(0.1)  # let the failure reach serve_exchange
    messages = app.seen["messages"]
    assert messages[0] == {"type": "http.request", "body": b"only part", "more_body": True}
    assert messages[-1] == {"type": "http.disconnect"}
    assert not [r for r in caplog.records if r.name == ASGI_LOGGER]  # the peer left: no error


async def test_receive_after_the_response_is_a_disconnect() -> None:
    app = App()
    async with connected(app) as client:
        _, body = await client.request("GET", "/after-response")
        assert body == b"done"
        with anyio.fail_after(10):
            while "after" not in app.seen:
                await anyio.sleep(0.01)
    assert app.seen["after"] == {"type": "http.disconnect"}
