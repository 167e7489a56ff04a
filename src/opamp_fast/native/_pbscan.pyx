# cython: language_level=3
"""Cython twin of ``opamp_fast.native._pbscan_py`` (same semantics, documented there)."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t

__all__ = ["parse_heartbeat"]


def parse_heartbeat(bytes data, Py_ssize_t start=0):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(data)
    cdef Py_ssize_t i = start
    cdef Py_ssize_t uid_at = -1
    cdef uint64_t seq = 0
    cdef uint64_t caps = 0
    cdef uint64_t value
    cdef unsigned int shift
    cdef unsigned char tag, b
    cdef int seen = 0
    cdef int bit
    if i < 0:
        return None
    while i < n:
        tag = p[i]
        i += 1
        if tag == 0x0A:
            if seen & 1 or i >= n or p[i] != 16 or i + 17 > n:
                return None
            uid_at = i + 1
            i += 17
            seen |= 1
            continue
        if tag == 0x10:
            bit = 2
        elif tag == 0x20:
            bit = 4
        else:
            return None
        if seen & bit:
            return None
        seen |= bit
        value = 0
        shift = 0
        while True:
            if i >= n:
                return None
            b = p[i]
            i += 1
            if shift == 63 and b > 1:
                return None
            value |= (<uint64_t>(b & 0x7F)) << shift
            if b < 0x80:
                break
            shift += 7
        if bit == 2:
            seq = value
        else:
            caps = value
    if uid_at < 0:
        return None
    return (
        PyBytes_FromStringAndSize(<const char*> p + uid_at, 16),
        seq,
        caps,
    )
