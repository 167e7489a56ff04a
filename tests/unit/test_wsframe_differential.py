"""Differential test: Cython frame reader vs Python twin vs wsproto (Hypothesis).

Random client byte streams, split at random chunk boundaries, are fed to both readers
call by call; every call must give the same events or the same ``FrameError`` (code and
reason), and the same ``buffered``/``closed`` afterwards.  Valid streams must also give
exactly the messages that wsproto's server-side ``FrameProtocol`` reads and that the
generator built.  For any stream, the first error does not depend on the chunking and the
events returned before it are a prefix of those returned when feeding byte by byte.
"""

from __future__ import annotations

import importlib
import itertools
import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from opamp_fast.native._wsframe_py import FrameError, FrameReader, encode_client_frame, parse_close

NO_EXTENSIONS = bool(os.environ.get("OPAMP_FAST_NO_EXTENSIONS"))

if NO_EXTENSIONS:
    CReader: Any = None
else:
    try:
        CReader = importlib.import_module("opamp_fast.native._wsframe").FrameReader
    except ImportError as exc:  # fail loudly below rather than skipping
        CReader = None
        _IMPORT_ERROR: ImportError | None = exc

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG_LIMIT = 1 << 20
Event = tuple[int, bytes]
Outcome = tuple[Any, ...]

MASKS = st.binary(min_size=4, max_size=4)
# Close codes both we and wsproto accept (wsproto refuses 1014, which IANA assigns).
CLOSE_CODES = st.one_of(
    st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013]),
    st.integers(3000, 4999),
)


@st.composite
def binary_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 24))
    if kind == 0:  # 64-bit length, rarely: generated from a seed, not byte by byte
        size = draw(st.integers(65530, 70000))
        return random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    if kind < 6:  # 16-bit length
        return draw(st.binary(min_size=100, max_size=400))
    return draw(st.binary(max_size=40))


@st.composite
def text_payloads(draw: st.DrawFn) -> bytes:
    text = draw(st.text(max_size=30))
    return (text * draw(st.sampled_from([1, 1, 1, 1, 8, 40]))).encode()


@st.composite
def control_frames(draw: st.DrawFn) -> tuple[bytes, Event]:
    op = draw(st.sampled_from([9, 10]))
    payload = draw(st.binary(max_size=125))
    return encode_client_frame(op, payload, mask=draw(MASKS)), (op, payload)


@st.composite
def messages(draw: st.DrawFn) -> tuple[list[bytes], list[Event]]:
    """One data message, maybe fragmented (at most 16 frames), with control frames between
    its fragments; returns its frames and the events a reader must report for them."""
    op = draw(st.sampled_from([1, 2]))
    payload = draw(text_payloads() if op == 1 else binary_payloads())
    nfrag = draw(st.sampled_from([1, 1, 1, 2, 3, 16]))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=nfrag - 1)))
    bounds = [0, *cuts[: nfrag - 1], len(payload)]
    frames: list[bytes] = []
    events: list[Event] = []
    for i in range(len(bounds) - 1):
        last = i == len(bounds) - 2
        frames.append(
            encode_client_frame(
                op if i == 0 else 0,
                payload[bounds[i] : bounds[i + 1]],
                mask=draw(MASKS),
                fin=last,
            )
        )
        if not last:
            for frame, event in draw(st.lists(control_frames(), max_size=2)):
                frames.append(frame)
                events.append(event)
    events.append((op, payload))
    return frames, events


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[list[bytes], list[Event]]:
    frames: list[bytes] = []
    events: list[Event] = []
    for item in draw(st.lists(st.one_of(messages(), control_frames()), max_size=8)):
        if isinstance(item[0], list):
            frames += item[0]
            events += item[1]
        else:
            frames.append(item[0])
            events.append(item[1])
    close = draw(st.sampled_from(["none", "none", "empty", "code"]))
    if close != "none":
        payload = b""
        if close == "code":
            reason = draw(st.text(max_size=20)).encode()[:100]
            reason = reason.decode("utf-8", "ignore").encode()
            payload = draw(CLOSE_CODES).to_bytes(2, "big") + reason
        frames.append(encode_client_frame(8, payload, mask=draw(MASKS)))
        events.append((8, payload))
        frames.append(draw(st.binary(max_size=10)))  # ignored after the close
    return frames, events


def _bad_frames(mask: bytes) -> list[bytes]:
    def masked(b0: int, length: bytes, payload: bytes = b"") -> bytes:
        return bytes((b0, 0x80 | length[0])) + length[1:] + mask + payload

    return [
        encode_client_frame(2, b"rsv", mask=mask, rsv=4),
        encode_client_frame(5, b"op", mask=mask),
        encode_client_frame(13, b"", mask=mask),
        encode_client_frame(9, b"frag", mask=mask, fin=False),
        encode_client_frame(10, b"x" * 126, mask=mask),
        b"\x82\x03abc",  # unmasked
        encode_client_frame(0, b"cont", mask=mask),
        encode_client_frame(2, b"a", mask=mask, fin=False) + encode_client_frame(1, b"b"),
        masked(0x82, b"\x7e\x00\x05", b"12345"),
        masked(0x82, b"\x7f" + (300).to_bytes(8, "big")),
        masked(0x82, b"\x7f" + (2**63 + 1).to_bytes(8, "big")),
        masked(0x82, b"\x7f" + (5 * 2**30).to_bytes(8, "big")),
        encode_client_frame(8, b"\x03", mask=mask),
        encode_client_frame(8, (1005).to_bytes(2, "big"), mask=mask),
        encode_client_frame(8, b"\x03\xe8\xc0\xaf", mask=mask),
        encode_client_frame(2, b"f", mask=mask, fin=False)
        + encode_client_frame(0, b"", mask=mask, fin=False) * 20,
    ]


@st.composite
def broken_streams(draw: st.DrawFn) -> tuple[bytes, int]:
    """Valid streams bit-flipped, truncated, followed by random bytes or read with a small
    message size limit; returns the stream and the limit."""
    frames, _ = draw(valid_streams())
    stream = b"".join(frames)
    mutation = draw(st.sampled_from(["bitflip", "truncate", "random", "limit"]))
    if mutation == "bitflip" and stream:
        i = draw(st.integers(0, len(stream) - 1))
        stream = stream[:i] + bytes((stream[i] ^ (1 << draw(st.integers(0, 7))),)) + stream[i + 1 :]
    elif mutation == "truncate":
        stream = stream[: draw(st.integers(0, len(stream)))]
    elif mutation == "random":
        stream = stream[: draw(st.integers(0, len(stream)))] + draw(st.binary(max_size=64))
    limit = BIG_LIMIT
    if mutation == "limit":
        limit = draw(st.sampled_from([0, 1, 40, 300, 70000]))
    return stream, limit


def _chunks(draw: Callable[[st.SearchStrategy[Any]], Any], stream: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=20))))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def _run(reader_cls: type, limit: int, chunks: list[bytes]) -> list[Outcome]:
    """Per call: ("ok", events, buffered, closed) or ("error", code, reason, buffered, closed).
    Stops after the first error, checking that a further call raises it again."""
    reader = reader_cls(limit)
    outcomes: list[Outcome] = []
    for chunk in chunks:
        error: FrameError | None = None
        try:
            events = reader.feed(chunk)
        except FrameError as exc:
            error = exc
        if error is not None:
            outcomes.append(("error", error.code, error.reason, reader.buffered, reader.closed))
            with pytest.raises(FrameError) as again:
                reader.feed(b"")
            assert again.value is error
            return outcomes
        assert all(type(p) is bytes for _, p in events)
        outcomes.append(("ok", events, reader.buffered, reader.closed))
    return outcomes


def _readers() -> list[type]:
    return [FrameReader] if CReader is None else [FrameReader, CReader]


def _compare(limit: int, chunks: list[bytes]) -> list[Outcome]:
    """Run every implementation on the same chunks; they must agree call by call."""
    results = [_run(cls, limit, chunks) for cls in _readers()]
    for other in results[1:]:
        assert other == results[0]
    return results[0]


def _events(outcomes: list[Outcome]) -> list[Event]:
    return [event for o in outcomes if o[0] == "ok" for event in o[1]]


def _error(outcomes: list[Outcome]) -> tuple[int, str] | None:
    return (outcomes[-1][1], outcomes[-1][2]) if outcomes and outcomes[-1][0] == "error" else None


def _wsproto_events(stream: bytes) -> list[Event]:
    """What wsproto's server side reads, as whole messages with control frames in between."""
    proto = FrameProtocol(client=False, extensions=[])
    proto.receive_bytes(stream)
    out: list[Event] = []
    parts: list[bytes] = []
    for frame in proto.received_frames():
        if frame.opcode is Opcode.CLOSE:
            assert isinstance(frame.payload, tuple)
            code, reason = frame.payload
            out.append((8, b"" if code == 1005 else int(code).to_bytes(2, "big") + reason.encode()))
        elif frame.opcode.iscontrol():
            assert isinstance(frame.payload, bytes)
            out.append((int(frame.opcode), frame.payload))
        else:
            p = frame.payload
            assert not isinstance(p, tuple)
            parts.append(p.encode() if isinstance(p, str) else p)
            if frame.message_finished:
                out.append((int(frame.opcode), b"".join(parts)))
                parts = []
    return out


@SETTINGS
@given(stream=valid_streams(), data=st.data())
def test_valid_streams_match_wsproto(
    stream: tuple[list[bytes], list[Event]], data: st.DataObject
) -> None:
    frames, expected = stream
    raw = b"".join(frames)
    chunks = _chunks(data.draw, raw)
    outcomes = _compare(BIG_LIMIT, chunks)
    assert _error(outcomes) is None
    assert _events(outcomes) == expected
    assert _wsproto_events(raw) == expected
    if outcomes:
        last = outcomes[-1]
        assert last[2] == 0  # nothing buffered at the end of a complete stream
        assert last[3] is (bool(expected) and expected[-1][0] == 8)
    if expected and expected[-1][0] == 8:
        parse_close(expected[-1][1])  # the generator only builds well-formed close frames
    assert _events(_compare(BIG_LIMIT, [raw])) == expected


def _check_any(raw: bytes, limit: int, chunks: list[bytes]) -> tuple[int, str] | None:
    """C == Py call by call; the error and the events do not depend on the chunking."""
    outcomes = _compare(limit, chunks)
    whole = _compare(limit, [raw])
    error = _error(whole)
    assert _error(outcomes) == error
    if error is None:
        assert _events(outcomes) == _events(whole)
    if len(raw) <= 1500:
        bytewise = _compare(limit, [raw[i : i + 1] for i in range(len(raw))])
        assert _error(bytewise) == error
        full = _events(bytewise)
        for got in (_events(outcomes), _events(whole)):
            assert got == full[: len(got)]
    return error


@SETTINGS
@given(stream=broken_streams(), data=st.data())
def test_broken_streams_c_vs_py(stream: tuple[bytes, int], data: st.DataObject) -> None:
    raw, limit = stream
    error = _check_any(raw, limit, _chunks(data.draw, raw))
    event(f"close code {error[0] if error else None}")


@pytest.mark.parametrize("kind", range(len(_bad_frames(b"mask"))))
@settings(SETTINGS, max_examples=12)
@given(stream=valid_streams(), mask=MASKS, data=st.data())
def test_inserted_violation_c_vs_py(
    kind: int, stream: tuple[list[bytes], list[Event]], mask: bytes, data: st.DataObject
) -> None:
    frames, _ = stream
    at = data.draw(st.integers(0, len(frames)))
    frames.insert(at, _bad_frames(mask)[kind])
    raw = b"".join(frames)
    error = _check_any(raw, BIG_LIMIT, _chunks(data.draw, raw))
    closed_before = any(f[:1] == b"\x88" for f in frames[:at])
    assert (error is None) == closed_before, error
    event(f"close code {error[0] if error else None}")


@SETTINGS
@given(raw=st.binary(max_size=200), limit=st.sampled_from([0, 10, 1000]), data=st.data())
def test_random_bytes_c_vs_py(raw: bytes, limit: int, data: st.DataObject) -> None:
    outcomes = _compare(limit, _chunks(data.draw, raw))
    assert _error(outcomes) == _error(_compare(limit, [raw]))


def test_extension_present_for_differential() -> None:
    if not NO_EXTENSIONS and CReader is None:
        pytest.fail(f"compiled opamp_fast.native._wsframe is not importable: {_IMPORT_ERROR}")
