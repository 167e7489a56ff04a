"""``transport._exchange.Exchange`` as the sans-IO object it is: request heads parsed by the
server's own parser, body bytes fed in, response messages turned into wire bytes. What a real
connection never lets through (a body after the end, messages out of order) is checked here;
everything on the wire is checked over sockets in tests/integration/test_asgi_exchange.py."""

from __future__ import annotations

import pytest

from opamp_fast.transport._exchange import QUEUE_HIGH_WATER, Exchange
from opamp_fast.transport._http11 import HTTPError, parse_head


def exchange(raw: bytes) -> Exchange:
    return Exchange(
        parse_head(raw, max_message_bytes=1 << 20), scheme="https", client=("10.0.0.1", 5)
    )


def test_response_messages_out_of_order_are_refused() -> None:
    ex = exchange(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(RuntimeError, match=r"before http\.response\.start"):
        ex.body(b"early", False)
    ex.start(200, [])
    with pytest.raises(RuntimeError, match="sent twice"):
        ex.start(500, [])
    assert ex.body(b"ok", False).endswith(b"\r\n\r\nok")
    assert ex.ended
    with pytest.raises(RuntimeError, match="after the response ended"):
        ex.body(b"late", False)


def test_content_length_body_split_from_the_next_request() -> None:
    ex = exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
    woken: list[bool] = []
    ex.notify = lambda: woken.append(True)
    assert not ex.has_body_message
    assert ex.feed(b"") == b""  # nothing yet: nothing queued, but the waiter is told
    assert not ex.has_body_message
    assert ex.feed(b"ab") == b""
    assert ex.feed(b"cdeGET /next") == b"GET /next"
    assert (ex.received, ex.queued, ex.body_done) == (5, 5, True)
    assert ex.take() == (b"abcde", False)
    assert ex.queued == 0
    assert woken == [True, True, True]
    assert ex.keep_alive


def test_reading_pauses_above_the_high_water_mark() -> None:
    size = QUEUE_HIGH_WATER + 10
    ex = exchange(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    ex.feed(b"x" * (QUEUE_HIGH_WATER - 1))
    assert ex.reading_wanted
    ex.feed(b"x")
    assert not ex.reading_wanted
    data, more = ex.take()
    assert (len(data), more, ex.reading_wanted) == (QUEUE_HIGH_WATER, True, True)


def test_chunked_body_and_a_malformed_chunk() -> None:
    ex = exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert ex.feed(b"3\r\nabc\r\n") == b""
    assert ex.take() == (b"abc", True)
    ex.feed(b"0\r\n\r\n")
    assert ex.body_done and not ex.keep_alive  # where the next request starts is not known
    assert ex.take() == (b"", False)
    bad = exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HTTPError) as caught:
        bad.feed(b"not hex\r\n")
    assert caught.value.status == 400


def test_expect_continue_only_for_a_body_still_to_come() -> None:
    expect = b"Expect: 100-Continue\r\n"
    assert exchange(b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\n" + expect + b"\r\n").expect_continue
    assert not exchange(b"GET /x HTTP/1.1\r\n" + expect + b"\r\n").expect_continue


def test_answering_before_the_body_is_read_closes_the_connection() -> None:
    ex = exchange(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
    ex.start(413, [(b"content-type", b"text/plain")])
    wire = ex.body(b"too big", False)
    assert wire.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nconnection: close\r\n" in wire
    assert b"\r\ncontent-length: 7\r\n" in wire


def test_informational_status_gets_no_framing() -> None:
    ex = exchange(b"GET /x HTTP/1.1\r\n\r\n")
    ex.start(103, [(b"link", b"</a.css>")])
    wire = ex.body(b"", False)
    assert b"content-length" not in wire and b"transfer-encoding" not in wire


def test_scope() -> None:
    ex = exchange(b"GET /a%20b?c=d HTTP/1.0\r\nX-One: 1\r\n\r\n")
    scope = ex.scope
    assert scope["path"] == "/a b"
    assert scope["raw_path"] == b"/a%20b"
    assert scope["query_string"] == b"c=d"
    assert scope["http_version"] == "1.0"
    assert scope["scheme"] == "https"
    assert scope["client"] == ("10.0.0.1", 5)
    assert (b"x-one", b"1") in scope["headers"]
    assert not ex.keep_alive  # HTTP/1.0 without keep-alive
