"""The notice listener's stop flag (fleet.cluster): a thread blocked on a socket with no
timeout still stops at once."""

from __future__ import annotations

import socket
import threading

from opamp_fast.fleet.cluster import _ThreadStop


def test_a_thread_blocked_on_a_socket_wakes_for_input_and_for_the_stop_flag() -> None:
    """The notice listener blocks on its connection with no timeout: input wakes it (True), and
    so does stopping (False), at once, from another thread."""
    stop = _ThreadStop()
    ours, theirs = socket.socketpair()
    try:
        theirs.send(b"notice")
        assert stop.wait_readable(ours.fileno()) is True
        ours.recv(16)
        results: list[bool] = []
        waiter = threading.Thread(target=lambda: results.append(stop.wait_readable(ours.fileno())))
        waiter.start()
        stop.set()
        stop.set()  # twice is once
        waiter.join(10)
        assert results == [False]
        assert stop.wait_readable(ours.fileno()) is False  # stays stopped
    finally:
        stop.close()
        ours.close()
        theirs.close()
