# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Server side of RFC 6455 framing over C buffers (see ``_wsframe_py`` for the twin).

The same rules in the same order as the twin, whose docstring pins the semantics.  The
common case, one or more complete frames in the bytes object given to ``feed``, is parsed
in place: each payload is unmasked (8-byte words, then a byte tail) straight into a new
bytes object.  Only the incomplete frame at the end of the input is copied to ``_buf``
(topped up to that frame's end, never past it, growing with the bytes received rather
than the announced length) and only the earlier fragments of a fragmented message are
kept, unmasked, in ``_msg``.  Both buffers use ``PyMem_Raw*`` (visible to tracemalloc)
and are freed once empty if they grew past 64 KiB.
"""

from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_RawFree, PyMem_RawRealloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

from opamp_fast.native._wsframe_py import FrameError


cdef extern from "Python.h":
    # exc=NULL: out-of-range ints are clipped to PY_SSIZE_T_MIN/MAX, not raised.
    Py_ssize_t PyNumber_AsSsize_t(object o, void *exc) except? -1

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameError",
    "FrameReader",
    "encode_close",
    "encode_frame",
    "encode_opamp",
    "parse_close",
]

OP_CONTINUATION = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011

cdef enum:
    OP_CLOSE_C = 8
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    NO_STATUS = 1005
    MAX_CONTROL = 125
    MAX_REASON = 123
    FREE_FRAGMENTS = 16
    BYTES_PER_FRAGMENT = 256
    MIN_CAP = 256
    KEEP_CAP = 65536  # buffers larger than this are freed once empty

cdef Py_ssize_t MAX_LIMIT = (<Py_ssize_t>1) << 62


cdef inline bytes _as_bytes(object data):
    return bytes(memoryview(data))


cdef inline void _unmask(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                         const uint8_t *key) noexcept nogil:
    cdef uint8_t key8[8]
    cdef uint64_t m, w
    cdef Py_ssize_t i = 0
    memcpy(key8, key, 4)
    memcpy(key8 + 4, key, 4)
    memcpy(&m, key8, 8)
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= m
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ key[i & 3]
        i += 1


cdef inline Py_ssize_t _header_len(Py_ssize_t n) noexcept:
    return 2 if n < 126 else 4 if n < 65536 else 10


cdef inline void _write_header(uint8_t *o, uint8_t b0, Py_ssize_t n) noexcept:
    cdef int i
    o[0] = b0
    if n < 126:
        o[1] = <uint8_t>n
    elif n < 65536:
        o[1] = 126
        o[2] = <uint8_t>(n >> 8)
        o[3] = <uint8_t>n
    else:
        o[1] = 127
        for i in range(8):
            o[2 + i] = <uint8_t>((<uint64_t>n) >> (56 - 8 * i))


cdef inline bint _close_code_ok(Py_ssize_t code) noexcept:
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


cdef tuple _parse_close(const uint8_t *p, Py_ssize_t n):
    cdef int code
    if n == 0:
        return (NO_STATUS, "")
    if n == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = (p[0] << 8) | p[1]
    if not _close_code_ok(code):
        raise FrameError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = PyUnicode_DecodeUTF8(<char *>(p + 2), n - 2, NULL)
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not valid UTF-8") from None
    return (code, reason)


def parse_close(object payload):
    """Return ``(code, reason)`` of a close frame payload; ``(1005, "")`` when it is empty.

    Raises FrameError: 1002 for a 1-byte payload or a code that may not be sent on the
    wire, 1007 when the reason is not valid UTF-8.
    """
    if not PyBytes_CheckExact(payload):
        payload = _as_bytes(payload)
    return _parse_close(<const uint8_t *>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))


def encode_frame(object opcode, object payload=b""):
    """One final, unmasked (server) frame.

    Raises ValueError: ``opcode`` is not TEXT, BINARY, CLOSE, PING or PONG, or a control
    frame payload is over 125 bytes.
    """
    cdef Py_ssize_t op = PyNumber_AsSsize_t(opcode, NULL)
    cdef Py_ssize_t n, h
    cdef bytes out
    if not PyBytes_CheckExact(payload):
        payload = _as_bytes(payload)
    if not (op == 1 or op == 2 or op == 8 or op == 9 or op == 10):
        raise ValueError(f"cannot send opcode {opcode.__index__()}")
    n = PyBytes_GET_SIZE(payload)
    if op >= 8 and n > MAX_CONTROL:
        raise ValueError("control frame payload over 125 bytes")
    h = _header_len(n)
    out = PyBytes_FromStringAndSize(NULL, h + n)
    _write_header(<uint8_t *>PyBytes_AS_STRING(out), <uint8_t>(0x80 | op), n)
    memcpy(PyBytes_AS_STRING(out) + h, PyBytes_AS_STRING(payload), n)
    return out


def encode_close(object code, object reason=""):
    """A close frame; ``reason`` is UTF-8 encoded and cut on a character boundary to fit.

    Raises ValueError: ``code`` may not be sent on the wire (see ``parse_close``).
    """
    cdef Py_ssize_t c = PyNumber_AsSsize_t(code, NULL)
    cdef Py_ssize_t n, cut
    cdef bytes data, out
    cdef const uint8_t *d
    cdef uint8_t *o
    if not isinstance(reason, str):
        raise TypeError(f"reason must be str, not {type(reason).__name__}")
    if not _close_code_ok(c):
        raise ValueError(f"cannot send close code {code.__index__()}")
    data = (<str>reason).encode("utf-8")
    d = <const uint8_t *>PyBytes_AS_STRING(data)
    n = PyBytes_GET_SIZE(data)
    if n > MAX_REASON:
        cut = MAX_REASON
        while d[cut] & 0xC0 == 0x80:  # a continuation byte: back off to its lead byte
            cut -= 1
        n = cut
    out = PyBytes_FromStringAndSize(NULL, 4 + n)
    o = <uint8_t *>PyBytes_AS_STRING(out)
    o[0] = 0x80 | OP_CLOSE_C
    o[1] = <uint8_t>(2 + n)
    o[2] = <uint8_t>(c >> 8)
    o[3] = <uint8_t>c
    memcpy(o + 4, d, n)
    return out


def encode_opamp(object payload):
    """A final unmasked binary frame carrying the OpAMP header byte 0x00 and ``payload``."""
    cdef Py_ssize_t n, h
    cdef bytes out
    cdef uint8_t *o
    if not PyBytes_CheckExact(payload):
        payload = _as_bytes(payload)
    n = PyBytes_GET_SIZE(payload) + 1
    h = _header_len(n)
    out = PyBytes_FromStringAndSize(NULL, h + n)
    o = <uint8_t *>PyBytes_AS_STRING(out)
    _write_header(o, 0x82, n)
    o[h] = 0
    memcpy(o + h + 1, PyBytes_AS_STRING(payload), n - 1)
    return out


cdef int _reserve(uint8_t **buf, Py_ssize_t *cap, Py_ssize_t need,
                  Py_ssize_t grow) except -1:
    cdef void *q
    if need <= cap[0]:
        return 0
    if grow < need:
        grow = need
    if grow < MIN_CAP:
        grow = MIN_CAP
    q = PyMem_RawRealloc(buf[0], grow)  # visible to tracemalloc
    if q == NULL:
        raise MemoryError()
    buf[0] = <uint8_t *>q
    cap[0] = grow
    return 0


cdef class FrameReader:
    """Incremental reader of the frames a WebSocket client sends (see ``_wsframe_py``)."""

    cdef Py_ssize_t _max
    cdef uint8_t *_buf  # raw bytes of the incomplete frame at the end of the input
    cdef Py_ssize_t _buf_len
    cdef Py_ssize_t _buf_cap
    cdef Py_ssize_t _target  # _buf_len at which parsing can make progress again
    cdef uint8_t *_msg  # unmasked payload of a fragmented message so far
    cdef Py_ssize_t _msg_len
    cdef Py_ssize_t _msg_cap
    cdef Py_ssize_t _msg_frames
    cdef int _msg_op  # OP_TEXT/OP_BINARY while a fragmented message is in progress
    cdef bint _closed
    cdef object _error

    def __cinit__(self):
        self._buf = NULL
        self._msg = NULL
        self._buf_len = self._buf_cap = self._msg_len = self._msg_cap = 0

    def __init__(self, object max_message_bytes):
        cdef Py_ssize_t limit = PyNumber_AsSsize_t(max_message_bytes, NULL)
        if not 0 <= limit <= MAX_LIMIT:
            raise ValueError("max_message_bytes must be in 0..2**62")
        self._max = limit
        self._buf_len = self._msg_len = 0
        self._target = 2
        self._msg_frames = 0
        self._msg_op = 0
        self._closed = False
        self._error = None

    def __dealloc__(self):
        PyMem_RawFree(self._buf)
        PyMem_RawFree(self._msg)

    @property
    def buffered(self):
        """Bytes held for an incomplete frame plus the payload of an incomplete message."""
        return self._buf_len + self._msg_len

    @property
    def closed(self):
        """True once a close frame was returned; later bytes are ignored."""
        return self._closed

    def feed(self, object data):
        """Consume bytes from the client; return the complete messages and control frames.

        Data messages come as ``(OP_TEXT or OP_BINARY, payload)`` with the fragments joined,
        control frames as ``(OP_PING, OP_PONG or OP_CLOSE, payload)``, in arrival order.
        Raises FrameError at the first violation, and again on every later call.
        """
        cdef const uint8_t *p
        cdef Py_ssize_t n, k, pos = 0
        cdef list out
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._closed:
            return []
        if not PyBytes_CheckExact(data):
            data = _as_bytes(data)
        p = <const uint8_t *>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
        out = []
        if self._buf_len:
            pos = self._top_up(p, n, out)
            if self._buf_len or self._closed:
                return out
        while pos < n:
            k = self._frame(p + pos, n - pos, out)
            if k == 0:
                _reserve(&self._buf, &self._buf_cap, n - pos, self._grow())
                memcpy(self._buf, p + pos, n - pos)
                self._buf_len = n - pos
                break
            pos += k
            if self._closed:
                break
        return out

    cdef Py_ssize_t _top_up(self, const uint8_t *p, Py_ssize_t n, list out) except -1:
        """Complete the frame in ``_buf`` from ``p``; return the bytes of ``p`` used."""
        cdef Py_ssize_t used = 0, take
        while True:
            take = self._target - self._buf_len
            if take > n - used:
                take = n - used
            _reserve(&self._buf, &self._buf_cap, self._buf_len + take, self._grow())
            memcpy(self._buf + self._buf_len, p + used, take)
            self._buf_len += take
            used += take
            if self._frame(self._buf, self._buf_len, out):
                self._buf_len = 0
                if self._buf_cap > KEEP_CAP:
                    PyMem_RawFree(self._buf)
                    self._buf = NULL
                    self._buf_cap = 0
                return used
            if used == n:
                return used

    cdef inline Py_ssize_t _grow(self) noexcept:
        # Double up to the size of the frame: memory follows the bytes actually received,
        # not the length a header announces.
        return min(2 * self._buf_cap, self._target)

    cdef int _fail(self, object exc) except -1:
        self._error = exc
        self._release()
        raise exc

    cdef void _release(self) noexcept:
        PyMem_RawFree(self._buf)
        PyMem_RawFree(self._msg)
        self._buf = self._msg = NULL
        self._buf_len = self._buf_cap = self._msg_len = self._msg_cap = 0

    cdef Py_ssize_t _frame(self, const uint8_t *p, Py_ssize_t avail, list out) except -1:
        """Process the frame at ``p`` if complete: return its size, else set _target, 0."""
        cdef uint8_t b0, b1
        cdef int op
        cdef Py_ssize_t hlen, total, received
        cdef uint64_t n
        cdef bytes payload
        cdef uint8_t *dst
        if avail < 2:
            self._target = 2
            return 0
        b0 = p[0]
        b1 = p[1]
        op = b0 & 0x0F
        n = b1 & 0x7F
        if b0 & 0x70:
            self._fail(FrameError(PROTOCOL_ERROR, "reserved bits set"))
        if 2 < op < 8 or op > 10:
            self._fail(FrameError(PROTOCOL_ERROR, f"reserved opcode {op}"))
        if op >= 8:
            if not b0 & 0x80:
                self._fail(FrameError(PROTOCOL_ERROR, "fragmented control frame"))
            if n > MAX_CONTROL:
                self._fail(FrameError(PROTOCOL_ERROR, "control frame payload over 125 bytes"))
        if not b1 & 0x80:
            self._fail(FrameError(PROTOCOL_ERROR, "unmasked client frame"))
        if op == 0:
            if not self._msg_op:
                self._fail(FrameError(
                    PROTOCOL_ERROR, "continuation frame without a message in progress"))
        elif op < 8 and self._msg_op:
            self._fail(FrameError(PROTOCOL_ERROR, "new data frame inside a fragmented message"))
        hlen = 6 if n < 126 else 8 if n == 126 else 14
        if avail < hlen:
            self._target = hlen
            return 0
        if n == 126:
            n = (<uint64_t>p[2] << 8) | p[3]
            if n < 126:
                self._fail(FrameError(PROTOCOL_ERROR, "non-minimal payload length"))
        elif n == 127:
            n = ((<uint64_t>p[2] << 56) | (<uint64_t>p[3] << 48) | (<uint64_t>p[4] << 40)
                 | (<uint64_t>p[5] << 32) | (<uint64_t>p[6] << 24) | (<uint64_t>p[7] << 16)
                 | (<uint64_t>p[8] << 8) | p[9])
            if n >> 63:
                self._fail(FrameError(
                    PROTOCOL_ERROR, "64-bit payload length with the high bit set"))
            if n < 65536:
                self._fail(FrameError(PROTOCOL_ERROR, "non-minimal payload length"))
        if op < 8:
            received = self._msg_len
            if n > <uint64_t>(self._max - received):
                self._fail(FrameError(TOO_BIG, "message too big"))
            if op == 0 and self._msg_frames >= FREE_FRAGMENTS + received // BYTES_PER_FRAGMENT:
                self._fail(FrameError(POLICY, "too many fragments"))
        # n <= 2**62 here (control: <= 125, data: <= _max), so this cannot overflow.
        total = hlen + <Py_ssize_t>n
        if avail < total:
            self._target = total
            return 0
        if op >= 8:
            payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
            _unmask(<uint8_t *>PyBytes_AS_STRING(payload), p + hlen, <Py_ssize_t>n, p + hlen - 4)
            if op == OP_CLOSE_C:
                try:
                    _parse_close(<const uint8_t *>PyBytes_AS_STRING(payload), <Py_ssize_t>n)
                except FrameError as exc:
                    self._fail(exc)
                out.append((op, payload))
                self._closed = True
                self._release()
                return total
            out.append((op, payload))
        elif b0 & 0x80:
            if op:
                payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
                _unmask(<uint8_t *>PyBytes_AS_STRING(payload), p + hlen, <Py_ssize_t>n,
                        p + hlen - 4)
                out.append((op, payload))
            else:
                received = self._msg_len
                payload = PyBytes_FromStringAndSize(NULL, received + <Py_ssize_t>n)
                dst = <uint8_t *>PyBytes_AS_STRING(payload)
                if received:
                    memcpy(dst, self._msg, received)
                _unmask(dst + received, p + hlen, <Py_ssize_t>n, p + hlen - 4)
                out.append((self._msg_op, payload))
                self._msg_op = 0
                self._msg_frames = 0
                self._msg_len = 0
                if self._msg_cap > KEEP_CAP:
                    PyMem_RawFree(self._msg)
                    self._msg = NULL
                    self._msg_cap = 0
        else:
            if op:
                self._msg_op = op
                self._msg_frames = 1
            else:
                self._msg_frames += 1
            received = self._msg_len
            # Doubling, capped at the limit: n <= _max - received was checked above.
            _reserve(&self._msg, &self._msg_cap, received + <Py_ssize_t>n,
                     min(2 * self._msg_cap, self._max))
            _unmask(self._msg + received, p + hlen, <Py_ssize_t>n, p + hlen - 4)
            self._msg_len = received + <Py_ssize_t>n
        return total
