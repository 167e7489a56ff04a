"""Small process helpers the load scripts share (standard library only: ``failover.py`` runs
in CI, where the ``loadtest`` extra, psutil included, is not installed)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request

__all__ = ["free_port", "wait_ready"]


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    *,
    name: str = "server",
    timeout_s: float = 60.0,
    hint: str = "",
) -> None:
    """Poll ``url`` until it answers 200; exit (SystemExit) if ``proc`` ends first or the time
    runs out. ``hint`` is appended to the message (e.g. where the log is)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}{hint}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} not ready after {timeout_s:g} s{hint}")
