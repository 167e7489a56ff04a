"""Unit tests for the WebSocket frame codec, run against both implementations."""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import tracemalloc
from types import ModuleType
from typing import Any

import pytest
import wsproto
import wsproto.events as wse
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from opamp_fast.native import _wsframe_py, wsframe
from opamp_fast.native._wsframe_py import FrameError, encode_client_frame

NO_EXTENSIONS = bool(os.environ.get("OPAMP_FAST_NO_EXTENSIONS"))

MASK = b"\x37\xfa\x21\x3d"
LIMIT = 1 << 20


def _load_extension() -> ModuleType:
    try:
        return importlib.import_module("opamp_fast.native._wsframe")
    except ImportError as exc:  # must fail, not skip: a missing build is a bug
        pytest.fail(f"compiled opamp_fast.native._wsframe is not importable: {exc}")


@pytest.fixture(params=["C", "Py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "Py":
        return _wsframe_py
    if NO_EXTENSIONS:
        pytest.skip("OPAMP_FAST_NO_EXTENSIONS is set")
    return _load_extension()


def cf(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame."""
    return encode_client_frame(opcode, payload, mask=MASK, fin=fin, rsv=rsv)


def raw(b0: int, length_field: bytes, payload: bytes = b"", *, masked: bool = True) -> bytes:
    """A hand-built frame: ``length_field`` is the 7-bit length byte plus any extended length
    (the mask bit is added here), so non-minimal and oversized encodings can be written."""
    b1 = length_field[0] | (0x80 if masked else 0)
    head = bytes((b0, b1)) + length_field[1:]
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def feed_all(reader: Any, chunks: list[bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for chunk in chunks:
        out += reader.feed(chunk)
    return out


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- dispatcher, extension, exports --------------------------------------------


def test_extension_loaded() -> None:
    if NO_EXTENSIONS:
        assert wsframe.USING_EXTENSION is False
        assert wsframe.FrameReader is _wsframe_py.FrameReader
        assert wsframe.encode_opamp is _wsframe_py.encode_opamp
        return
    ext = _load_extension()
    assert wsframe.USING_EXTENSION is True
    for name in ("FrameReader", "parse_close", "encode_frame", "encode_close", "encode_opamp"):
        assert getattr(wsframe, name) is getattr(ext, name), name
    assert ext.__file__ is not None
    assert not ext.__file__.endswith(".py")


def test_exports() -> None:
    py_public = set(_wsframe_py.__all__)
    assert py_public - set(wsframe.__all__) == set()
    assert set(wsframe.__all__) - py_public == {"NO_EXTENSIONS", "USING_EXTENSION"}
    for name in wsframe.__all__:
        assert hasattr(wsframe, name), name
    assert wsframe.encode_client_frame is _wsframe_py.encode_client_frame
    assert wsframe.FrameError is _wsframe_py.FrameError
    if NO_EXTENSIONS:
        return
    ext = _load_extension()
    assert set(ext.__all__) == py_public - {"encode_client_frame"}
    assert ext.FrameError is _wsframe_py.FrameError  # one class: `except FrameError` always works
    for name in ext.__all__:
        if name.startswith(("OP_", "CLOSE_")):
            assert getattr(ext, name) == getattr(_wsframe_py, name), name


def test_constants() -> None:
    m = _wsframe_py
    assert (m.OP_CONTINUATION, m.OP_TEXT, m.OP_BINARY) == (0, 1, 2)
    assert (m.OP_CLOSE, m.OP_PING, m.OP_PONG) == (8, 9, 10)
    codes = (m.CLOSE_NORMAL, m.CLOSE_GOING_AWAY, m.CLOSE_PROTOCOL_ERROR, m.CLOSE_UNSUPPORTED)
    assert codes == (1000, 1001, 1002, 1003)
    codes = (m.CLOSE_INVALID_DATA, m.CLOSE_POLICY, m.CLOSE_TOO_BIG, m.CLOSE_INTERNAL)
    assert codes == (1007, 1008, 1009, 1011)


def _run_isolated(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=60
    )


def test_fallback_with_env_var() -> None:
    code = (
        "import opamp_fast.native.wsframe as w\n"
        "assert w.NO_EXTENSIONS is True\n"
        "assert w.USING_EXTENSION is False\n"
        "assert w.FrameReader.__module__ == 'opamp_fast.native._wsframe_py'\n"
        "assert w.encode_opamp.__module__ == 'opamp_fast.native._wsframe_py'\n"
        "f = w.encode_client_frame(2, b'hi', mask=b'abcd')\n"
        "assert w.FrameReader(10).feed(f) == [(2, b'hi')]\n"
    )
    proc = _run_isolated(code, {**os.environ, "OPAMP_FAST_NO_EXTENSIONS": "1"})
    assert proc.returncode == 0, proc.stderr


def test_fallback_when_extension_missing() -> None:
    code = (
        "import sys, logging\n"
        "logging.basicConfig()\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'opamp_fast.native._wsframe':\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import opamp_fast.native.wsframe as w\n"
        "assert w.USING_EXTENSION is False\n"
        "assert w.FrameReader.__module__ == 'opamp_fast.native._wsframe_py'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPAMP_FAST_NO_EXTENSIONS"}
    proc = _run_isolated(code, env)
    assert proc.returncode == 0, proc.stderr
    assert "pure-Python frame codec" in proc.stderr


# -- reading valid frames -------------------------------------------------------


@pytest.mark.parametrize("opcode", [1, 2, 9, 10])
@pytest.mark.parametrize("mask", [b"\x00\x00\x00\x00", MASK, b"\xff\xff\xff\xff"])
def test_single_frames(impl: ModuleType, opcode: int, mask: bytes) -> None:
    payload = b"\x00" + bytes(range(1, 30))
    frame = encode_client_frame(opcode, payload, mask=mask)
    assert len(frame) == 2 + 4 + 30
    r = impl.FrameReader(LIMIT)
    assert r.feed(frame) == [(opcode, payload)]
    assert r.buffered == 0
    assert r.closed is False


@pytest.mark.parametrize("n", [*range(0, 20), 125, 126, 127, 1000, 65535, 65536, 65537, 200_003])
def test_lengths_and_unmask_tail(impl: ModuleType, n: int) -> None:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(n))
    frame = cf(2, payload)
    # The minimal length encoding, as the client side must send it.
    if n < 126:
        assert frame[1] == 0x80 | n
    elif n < 65536:
        assert frame[1] == 0x80 | 126
        assert int.from_bytes(frame[2:4], "big") == n
    else:
        assert frame[1] == 0x80 | 127
        assert int.from_bytes(frame[2:10], "big") == n
    # Masking against an independent byte-by-byte reference.
    start = len(frame) - n
    assert frame[start:] == bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    r = impl.FrameReader(LIMIT)
    (event,) = r.feed(frame)
    assert event == (2, payload)
    assert type(event[1]) is bytes
    r = impl.FrameReader(LIMIT)  # and split in two at every header position
    for cut in range(1, min(len(frame), 16)):
        assert r.feed(frame[:cut]) == []
        assert r.buffered == cut
        assert r.feed(frame[cut:]) == [(2, payload)]
        assert r.buffered == 0


def test_text_is_returned_as_is_without_utf8_validation(impl: ModuleType) -> None:
    r = impl.FrameReader(LIMIT)
    assert r.feed(cf(1, b"\xff\xfe not utf-8")) == [(1, b"\xff\xfe not utf-8")]
    assert r.feed(cf(1, "héllo".encode())) == [(1, "héllo".encode())]


def test_fragment_reassembly(impl: ModuleType) -> None:
    r = impl.FrameReader(LIMIT)
    stream = cf(2, b"abc", fin=False) + cf(0, b"", fin=False) + cf(0, b"def", fin=False)
    assert r.feed(stream) == []
    assert r.buffered == 6
    assert r.feed(cf(0, b"gh")) == [(2, b"abcdefgh")]
    assert r.buffered == 0
    # A text message whose fragments split a multi-byte character.
    text = "€uro".encode()
    assert r.feed(cf(1, text[:1], fin=False) + cf(0, text[1:])) == [(1, text)]


def test_control_frames_interleaved_in_fragmented_message(impl: ModuleType) -> None:
    r = impl.FrameReader(LIMIT)
    stream = (
        cf(1, b"he", fin=False)
        + cf(9, b"ping-1")
        + cf(0, b"ll", fin=False)
        + cf(10, b"")
        + cf(9, b"ping-2")
        + cf(0, b"o")
        + cf(2, b"next")
    )
    expected = [(9, b"ping-1"), (10, b""), (9, b"ping-2"), (1, b"hello"), (2, b"next")]
    assert r.feed(stream) == expected
    r = impl.FrameReader(LIMIT)
    assert feed_all(r, bytewise(stream)) == expected


def test_close_inside_fragmented_message(impl: ModuleType) -> None:
    r = impl.FrameReader(LIMIT)
    close = cf(8, b"\x03\xe8bye")
    assert r.feed(cf(2, b"part", fin=False) + close + cf(2, b"ignored")) == [(8, b"\x03\xe8bye")]
    assert r.closed is True
    assert r.buffered == 0
    assert r.feed(cf(0, b"more")) == []
    assert r.feed(b"\xff\xff garbage is ignored after close") == []


def _composite_stream() -> tuple[bytes, list[tuple[int, bytes]]]:
    big = bytes(range(256)) * 300  # 76800 bytes: 64-bit length
    mid = b"m" * 300  # 16-bit length
    stream = (
        cf(2, b"\x00heartbeat")
        + cf(9, b"p")
        + cf(2, mid[:100], fin=False)
        + cf(0, mid[100:], fin=False)
        + cf(10, b"pong")
        + cf(0, b"")
        + cf(2, big)
        + cf(1, b"text", fin=False)
        + cf(0, b"!")
        + cf(8, b"\x03\xe9")
    )
    expected = [
        (2, b"\x00heartbeat"),
        (9, b"p"),
        (10, b"pong"),
        (2, mid),
        (2, big),
        (1, b"text!"),
        (8, b"\x03\xe9"),
    ]
    return stream, expected


def test_any_split_gives_the_same_events(impl: ModuleType) -> None:
    stream, expected = _composite_stream()
    assert impl.FrameReader(LIMIT).feed(stream) == expected
    assert feed_all(impl.FrameReader(LIMIT), bytewise(stream)) == expected
    for size in (2, 3, 5, 7, 13, 1000, 4096):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert feed_all(impl.FrameReader(LIMIT), chunks) == expected, size
    head = stream[:400]  # every two-way split of the first frames
    head_events = impl.FrameReader(LIMIT).feed(head)
    for cut in range(len(head) + 1):
        assert feed_all(impl.FrameReader(LIMIT), [head[:cut], head[cut:]]) == head_events


def test_buffered_counts_partial_frame_and_message(impl: ModuleType) -> None:
    r = impl.FrameReader(LIMIT)
    assert r.buffered == 0
    frame = cf(2, b"x" * 300)
    assert r.feed(frame[:1]) == []
    assert r.buffered == 1
    assert r.feed(frame[1:5]) == []
    assert r.buffered == 5
    assert r.feed(frame[5:200]) == []
    assert r.buffered == 200
    assert r.feed(frame[200:]) == [(2, b"x" * 300)]
    assert r.buffered == 0
    assert r.feed(cf(2, b"a" * 10, fin=False)) == []
    assert r.buffered == 10
    tail = cf(0, b"b" * 5)
    assert r.feed(tail[:3]) == []
    assert r.buffered == 13
    assert r.feed(tail[3:]) == [(2, b"a" * 10 + b"b" * 5)]
    assert r.buffered == 0
    assert r.feed(b"") == []


def test_memory_follows_received_bytes(impl: ModuleType) -> None:
    """A header announcing a big frame allocates nothing like the announced size, and a
    large buffer is released once its message is complete."""
    payload = b"q" * (8 << 20)
    frame = cf(2, payload)
    r = impl.FrameReader(16 << 20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert r.feed(frame[:14]) == []
        assert r.feed(frame[14:1000]) == []
        assert tracemalloc.get_traced_memory()[0] - before < 64 * 1024
        assert r.buffered == 1000
        assert r.feed(frame[1000:]) == [(2, payload)]
        assert tracemalloc.get_traced_memory()[0] - before < 64 * 1024 + len(payload) * 2
        r.feed(cf(0x2, b"x", fin=False))
        r.feed(cf(0x0, payload[: 4 << 20], fin=False))
        assert r.feed(cf(0x0, b"")) == [(2, b"x" + payload[: 4 << 20])]
        del payload, frame
        assert tracemalloc.get_traced_memory()[0] - before < 64 * 1024
    finally:
        tracemalloc.stop()


def test_bytes_like_input(impl: ModuleType) -> None:
    frame = cf(2, b"data")
    assert impl.FrameReader(LIMIT).feed(bytearray(frame)) == [(2, b"data")]
    assert impl.FrameReader(LIMIT).feed(memoryview(frame)) == [(2, b"data")]
    for bad in (5, "text", None):
        with pytest.raises(TypeError):
            impl.FrameReader(LIMIT).feed(bad)


@pytest.mark.parametrize("value", [-1, -(2**70), 2**62 + 1, 2**80])
def test_invalid_limit(impl: ModuleType, value: int) -> None:
    with pytest.raises(ValueError):
        impl.FrameReader(value)


def test_limit_type(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.FrameReader(1.5)
    assert impl.FrameReader(2**62).feed(cf(2, b"ok")) == [(2, b"ok")]
    assert impl.FrameReader(True).feed(cf(2, b"k")) == [(2, b"k")]  # bool is an int


# -- violations -----------------------------------------------------------------

# (id, stream, expected code, whether wsproto's server side also rejects it with that code)
INVALID: list[tuple[str, bytes, int, bool]] = [
    ("rsv1", cf(2, b"x", rsv=4), 1002, True),
    ("rsv2", cf(2, b"x", rsv=2), 1002, True),
    ("rsv3", cf(9, b"x", rsv=1), 1002, True),
    *[(f"opcode-{op}", cf(op, b"x"), 1002, True) for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)],
    ("control-not-final-ping", cf(9, b"x", fin=False), 1002, True),
    ("control-not-final-close", cf(8, b"\x03\xe8", fin=False), 1002, True),
    ("control-126", cf(9, b"x" * 126), 1002, True),
    ("control-126-pong", cf(10, b"x" * 200), 1002, True),
    ("unmasked", raw(0x82, b"\x02", b"hi", masked=False), 1002, True),
    ("unmasked-ping", raw(0x89, b"\x00", masked=False), 1002, True),
    ("unmasked-empty", raw(0x82, b"\x00", masked=False), 1002, True),
    ("continuation-first", cf(0, b"x"), 1002, True),
    ("continuation-after-message", cf(2, b"a") + cf(0, b"x"), 1002, True),
    ("new-binary-in-fragmented", cf(2, b"a", fin=False) + cf(2, b"b"), 1002, True),
    ("new-text-in-fragmented", cf(1, b"a", fin=False) + cf(1, b"b", fin=False), 1002, True),
    ("nonminimal-16-0", raw(0x82, b"\x7e\x00\x00"), 1002, True),
    ("nonminimal-16-125", raw(0x82, b"\x7e\x00\x7d", b"x" * 125), 1002, True),
    ("nonminimal-64-126", raw(0x82, b"\x7f" + (126).to_bytes(8, "big"), b"x" * 126), 1002, True),
    ("nonminimal-64-65535", raw(0x82, b"\x7f" + (65535).to_bytes(8, "big")), 1002, True),
    ("64-bit-msb", raw(0x82, b"\x7f" + (2**63 + 70000).to_bytes(8, "big")), 1002, True),
    ("64-bit-all-ones", raw(0x82, b"\x7f" + b"\xff" * 8), 1002, True),
    ("close-1-byte", cf(8, b"\x03"), 1002, True),
    ("close-999", cf(8, (999).to_bytes(2, "big")), 1002, True),
    ("close-0", cf(8, b"\x00\x00"), 1002, True),
    ("close-1004", cf(8, (1004).to_bytes(2, "big")), 1002, True),
    ("close-1005", cf(8, (1005).to_bytes(2, "big")), 1002, True),
    ("close-1006", cf(8, (1006).to_bytes(2, "big")), 1002, True),
    ("close-1015", cf(8, (1015).to_bytes(2, "big")), 1002, True),
    ("close-1016", cf(8, (1016).to_bytes(2, "big")), 1002, True),
    ("close-2999", cf(8, (2999).to_bytes(2, "big")), 1002, True),
    ("close-5000", cf(8, (5000).to_bytes(2, "big")), 1002, True),
    ("close-65535", cf(8, b"\xff\xff"), 1002, True),
    ("close-bad-utf8", cf(8, b"\x03\xe8\xff"), 1007, True),
    ("close-truncated-utf8", cf(8, b"\x03\xe8" + "é".encode()[:1]), 1007, True),
    ("close-surrogate", cf(8, b"\x03\xe8\xed\xa0\x80"), 1007, True),
    # Our own limits (wsproto has none): 64 KiB here.
    ("too-big-single", cf(2, b"x" * 65537), 1009, False),
    ("too-big-fragmented", cf(2, b"x" * 65000, fin=False) + cf(0, b"y" * 537), 1009, False),
    ("too-many-fragments", cf(2, b"x", fin=False) + cf(0, b"y", fin=False) * 16, 1008, False),
]


@pytest.mark.parametrize(
    ("stream", "code", "wsproto_agrees"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_violations(impl: ModuleType, stream: bytes, code: int, wsproto_agrees: bool) -> None:
    limit = 65536
    with pytest.raises(FrameError) as exc:
        impl.FrameReader(limit).feed(stream)
    err = exc.value
    assert err.code == code
    assert 0 < len(err.reason) <= 100
    assert err.reason.isascii()
    # The same error at the same point when fed byte by byte, and the reader stays failed.
    r = impl.FrameReader(limit)
    with pytest.raises(FrameError) as exc2:
        feed_all(r, bytewise(stream))
    assert (exc2.value.code, exc2.value.reason) == (err.code, err.reason)
    first = exc2.value
    assert r.buffered == 0
    assert r.closed is False
    for again in (b"", cf(2, b"valid")):
        with pytest.raises(FrameError) as exc3:
            r.feed(again)
        assert exc3.value is first
    # The oracle agrees for the RFC rules it implements.
    proto = FrameProtocol(client=False, extensions=[])
    proto.receive_bytes(stream)
    if wsproto_agrees:
        with pytest.raises(ParseFailed) as wexc:
            list(proto.received_frames())
        assert wexc.value.code == code
    else:
        list(proto.received_frames())


def test_valid_close_codes_accepted_like_wsproto(impl: ModuleType) -> None:
    for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999):
        payload = code.to_bytes(2, "big") + "adiós".encode()
        r = impl.FrameReader(LIMIT)
        assert r.feed(cf(8, payload)) == [(8, payload)]
        assert r.closed is True
        proto = FrameProtocol(client=False, extensions=[])
        proto.receive_bytes(cf(8, payload))
        (frame,) = list(proto.received_frames())
        assert frame.payload == (code, "adiós")


def test_header_errors_raise_before_the_payload_arrives(impl: ModuleType) -> None:
    # 1009: only the 10-byte header of a 1 GiB frame has arrived.
    header = raw(0x82, b"\x7f" + (1 << 30).to_bytes(8, "big"))[:14]
    with pytest.raises(FrameError) as exc:
        impl.FrameReader(LIMIT).feed(header)
    assert exc.value.code == 1009
    r = impl.FrameReader(LIMIT)
    assert r.feed(header[:13]) == []
    with pytest.raises(FrameError):
        r.feed(header[13:])
    # Unmasked: detected from the first two bytes.
    r = impl.FrameReader(LIMIT)
    assert r.feed(b"\x82") == []
    with pytest.raises(FrameError) as exc:
        r.feed(b"\x05")
    assert exc.value.code == 1002
    # Too many fragments: detected at the header of the 17th frame.
    r = impl.FrameReader(LIMIT)
    assert r.feed(cf(2, b"a", fin=False) + cf(0, b"b", fin=False) * 15) == []
    with pytest.raises(FrameError) as exc:
        r.feed(cf(0, b"c" * 1000)[:8])
    assert exc.value.code == 1008


def test_events_before_a_violation_in_the_same_call_are_dropped(impl: ModuleType) -> None:
    r = impl.FrameReader(LIMIT)
    with pytest.raises(FrameError):
        r.feed(cf(2, b"fine") + cf(5, b""))
    r = impl.FrameReader(LIMIT)
    assert r.feed(cf(2, b"fine")) == [(2, b"fine")]
    with pytest.raises(FrameError):
        r.feed(cf(5, b""))


@pytest.mark.parametrize("limit", [0, 1, 125, 126, 65535, 65536, 70000])
def test_max_message_bytes_boundary(impl: ModuleType, limit: int) -> None:
    at = b"z" * limit
    assert impl.FrameReader(limit).feed(cf(2, at)) == [(2, at)]
    with pytest.raises(FrameError) as exc:
        impl.FrameReader(limit).feed(cf(2, at + b"!"))
    assert exc.value.code == 1009
    # The same for a fragmented message: the sum of its frames counts.
    half = limit // 2
    frames = cf(2, at[:half], fin=False) + cf(9, b"ping is not counted") + cf(0, at[half:])
    assert impl.FrameReader(limit).feed(frames) == [(9, b"ping is not counted"), (2, at)]
    with pytest.raises(FrameError) as exc:
        impl.FrameReader(limit).feed(cf(2, at[:half], fin=False) + cf(0, at[half:] + b"!"))
    assert exc.value.code == 1009
    # Control frames do not count against the limit.
    assert impl.FrameReader(limit).feed(cf(9, b"p" * 125)) == [(9, b"p" * 125)]


def test_fragment_budget(impl: ModuleType) -> None:
    # 16 frames are always allowed, whatever their size.
    ok = cf(2, b"a", fin=False) + cf(0, b"b", fin=False) * 14 + cf(0, b"c")
    assert impl.FrameReader(LIMIT).feed(ok) == [(2, b"a" + b"b" * 14 + b"c")]
    # The 17th frame needs 256 bytes received before it: 241 + 15 * 1 = 256.
    stream = cf(2, b"a" * 241, fin=False) + cf(0, b"b", fin=False) * 15
    assert impl.FrameReader(LIMIT).feed(stream + cf(0, b"c")) == [
        (2, b"a" * 241 + b"b" * 15 + b"c")
    ]
    with pytest.raises(FrameError) as exc:
        impl.FrameReader(LIMIT).feed(stream + cf(0, b"c", fin=False) + cf(0, b"d"))
    assert exc.value.code == 1008
    assert exc.value.reason == "too many fragments"
    short = cf(2, b"a" * 240, fin=False) + cf(0, b"b", fin=False) * 15  # 255 bytes
    with pytest.raises(FrameError) as exc:
        impl.FrameReader(LIMIT).feed(short + cf(0, b"c"))
    assert exc.value.code == 1008
    # Gorilla-style 4 KiB fragments of a 1 MiB message stay far inside the budget.
    chunk = b"g" * 4096
    big = cf(2, chunk, fin=False) + cf(0, chunk, fin=False) * 254 + cf(0, chunk)
    assert impl.FrameReader(LIMIT).feed(big) == [(2, chunk * 256)]
    # Control frames between fragments are not fragments.
    pings = cf(2, b"a", fin=False) + (cf(9, b"") + cf(0, b"b", fin=False)) * 14 + cf(0, b"c")
    assert impl.FrameReader(LIMIT).feed(pings)[-1] == (2, b"a" + b"b" * 14 + b"c")


def test_closed_after_close_frame(impl: ModuleType) -> None:
    r = impl.FrameReader(LIMIT)
    assert r.feed(cf(8, b"")) == [(8, b"")]
    assert r.closed is True
    assert r.feed(cf(2, b"after")) == []
    r = impl.FrameReader(LIMIT)
    close = cf(8, b"\x0f\xa0app-specific")
    assert r.feed(close[:3]) == []
    assert r.closed is False
    assert r.feed(close[3:] + b"\x00\x00 junk") == [(8, b"\x0f\xa0app-specific")]
    assert r.closed is True
    assert r.buffered == 0


# -- parse_close ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        (0, False),
        (999, False),
        (1000, True),
        (1003, True),
        (1004, False),
        (1005, False),
        (1006, False),
        (1007, True),
        (1014, True),
        (1015, False),
        (1016, False),
        (2000, False),
        (2999, False),
        (3000, True),
        (4000, True),
        (4999, True),
        (5000, False),
        (65535, False),
    ],
)
def test_parse_close_codes(impl: ModuleType, code: int, ok: bool) -> None:
    payload = code.to_bytes(2, "big") + b"why"
    if ok:
        assert impl.parse_close(payload) == (code, "why")
        assert impl.encode_close(code, "why") == b"\x88" + bytes((len(payload),)) + payload
    else:
        with pytest.raises(FrameError) as exc:
            impl.parse_close(payload)
        assert exc.value.code == 1002
        with pytest.raises(ValueError):
            impl.encode_close(code)


def test_parse_close_payloads(impl: ModuleType) -> None:
    assert impl.parse_close(b"") == (1005, "")
    assert impl.parse_close(b"\x03\xe8") == (1000, "")
    assert impl.parse_close(bytearray(b"\x03\xe9\xc3\xa9")) == (1001, "é")
    with pytest.raises(FrameError) as exc:
        impl.parse_close(b"\x03")
    assert exc.value.code == 1002
    with pytest.raises(FrameError) as exc:
        impl.parse_close(b"\x03\xe8\xc3")
    assert exc.value.code == 1007
    assert exc.value.__suppress_context__ is True


def test_frame_error() -> None:
    err = FrameError(1009, "message too big")
    assert (err.code, err.reason) == (1009, "message too big")
    assert str(err) == "message too big (close code 1009)"
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is FrameError
    assert (copy.code, copy.reason) == (1009, "message too big")


# -- encoding: wsproto's client side must accept every server frame ----------------


def _client_frames(data: bytes) -> list[tuple[Opcode, object, bool]]:
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(data)
    return [(f.opcode, f.payload, f.message_finished) for f in proto.received_frames()]


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 100_000])
def test_encode_frame_round_trip(impl: ModuleType, n: int) -> None:
    payload = bytes(i & 0xFF for i in range(n))
    frame = impl.encode_frame(2, payload)
    assert type(frame) is bytes
    assert frame[0] == 0x82
    assert _client_frames(frame) == [(Opcode.BINARY, payload, True)]
    assert impl.encode_frame(2, payload) == _wsframe_py.encode_frame(2, payload)
    text = ("é" * n)[: n // 2]
    assert _client_frames(impl.encode_frame(1, text.encode())) == [(Opcode.TEXT, text, True)]


def test_encode_opamp(impl: ModuleType) -> None:
    for n in (0, 20, 124, 125, 126, 65534, 65535, 65536, 70000):
        payload = bytes((i * 13) & 0xFF for i in range(n))
        frame = impl.encode_opamp(payload)
        assert type(frame) is bytes
        assert frame == impl.encode_frame(2, b"\x00" + payload)
        assert _client_frames(frame) == [(Opcode.BINARY, b"\x00" + payload, True)]
    assert impl.encode_opamp(bytearray(b"ab")) == b"\x82\x03\x00ab"
    with pytest.raises(TypeError):
        impl.encode_opamp("text")


def test_encode_control_frames(impl: ModuleType) -> None:
    assert impl.encode_frame(9) == b"\x89\x00"
    assert impl.encode_frame(10, b"x" * 125)[:2] == b"\x8a\x7d"
    assert _client_frames(impl.encode_frame(9, b"hello")) == [(Opcode.PING, b"hello", True)]
    assert _client_frames(impl.encode_frame(10, b"")) == [(Opcode.PONG, b"", True)]
    for op in (8, 9, 10):
        with pytest.raises(ValueError):
            impl.encode_frame(op, b"x" * 126)
    for op in (-1, 0, 3, 7, 11, 15, 16, 2**70):
        with pytest.raises(ValueError):
            impl.encode_frame(op, b"")
    with pytest.raises(TypeError):
        impl.encode_frame(2.0, b"")
    with pytest.raises(TypeError):
        impl.encode_frame(2, 5)


@pytest.mark.parametrize(
    "reason", ["", "bye", "x" * 123, "x" * 124, "é" * 70, "€" * 50, "😀" * 40, "a" + "😀" * 40]
)
def test_encode_close_round_trip(impl: ModuleType, reason: str) -> None:
    frame = impl.encode_close(1001, reason)
    assert type(frame) is bytes
    assert frame == _wsframe_py.encode_close(1001, reason)
    payload = frame[2:]
    assert frame[:2] == bytes((0x88, len(payload)))
    assert len(payload) <= 125
    code, got = impl.parse_close(payload)
    assert code == 1001
    assert reason.startswith(got)
    if got != reason:  # cut only as far as needed: at most 3 bytes of a 4-byte character
        assert 120 <= len(got.encode()) <= 123
    ((opcode, parsed, _),) = _client_frames(frame)
    assert opcode is Opcode.CLOSE
    assert parsed == (1001, got)
    with pytest.raises(TypeError):
        impl.encode_close(1000, b"bytes")


def test_against_wsproto_connections(impl: ModuleType) -> None:
    """A real wsproto client after a handshake reads our frames, and we read its frames."""
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(client.send(wse.Request(host="localhost", target="/v1/opamp")))
    assert isinstance(next(server.events()), wse.Request)
    client.receive_data(server.send(wse.AcceptConnection()))
    assert isinstance(next(client.events()), wse.AcceptConnection)

    client.receive_data(
        impl.encode_opamp(b"reply")
        + impl.encode_frame(9, b"are you there")
        + impl.encode_frame(1, "tëxt".encode())
        + impl.encode_close(1001, "shutting down")
    )
    events = list(client.events())
    assert isinstance(events[0], wse.BytesMessage)
    assert events[0].data == b"\x00reply"
    assert isinstance(events[1], wse.Ping)
    assert events[1].payload == b"are you there"
    assert isinstance(events[2], wse.TextMessage)
    assert events[2].data == "tëxt"
    assert isinstance(events[3], wse.CloseConnection)
    assert (events[3].code, events[3].reason) == (1001, "shutting down")

    # wsproto client frames (random masks) into our reader.
    client2 = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server2 = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server2.receive_data(client2.send(wse.Request(host="localhost", target="/")))
    list(server2.events())
    client2.receive_data(server2.send(wse.AcceptConnection()))
    list(client2.events())
    big = bytes(range(256)) * 400
    wire = (
        client2.send(wse.BytesMessage(data=b"\x00hb"))
        + client2.send(wse.BytesMessage(data=big[:5000], message_finished=False))
        + client2.send(wse.Ping(payload=b"x"))
        + client2.send(wse.BytesMessage(data=big[5000:]))
        + client2.send(wse.TextMessage(data="hi"))
        + client2.send(wse.CloseConnection(code=1000, reason="done"))
    )
    expected = [(2, b"\x00hb"), (9, b"x"), (2, big), (1, b"hi"), (8, b"\x03\xe8done")]
    assert impl.FrameReader(LIMIT).feed(wire) == expected
    chunks = [wire[i : i + 999] for i in range(0, len(wire), 999)]
    assert feed_all(impl.FrameReader(LIMIT), chunks) == expected
    assert impl.parse_close(expected[-1][1]) == (1000, "done")


def test_encode_client_frame_validation() -> None:
    with pytest.raises(ValueError):
        encode_client_frame(16, b"")
    with pytest.raises(ValueError):
        encode_client_frame(2, b"", rsv=8)
    with pytest.raises(ValueError):
        encode_client_frame(2, b"", mask=b"abc")
    assert encode_client_frame(2, b"ab", mask=b"\x00\x00\x00\x00") == b"\x82\x82\x00\x00\x00\x00ab"
    assert encode_client_frame(0, b"", fin=False, rsv=7) == b"\x70\x80\x00\x00\x00\x00"
