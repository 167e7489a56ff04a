"""The server as a real child process, for tests of what only a process shows (signals, exit
codes, resource limits)."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import free_port

__all__ = ["ServerProcess", "launch", "unmeasured"]


def unmeasured(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a Python child that runs none of opamp_fast's code (a client such as
    schemathesis): without the variable through which coverage measures every child process.
    Coverage's tracer sees every function call, so measuring a CPU-bound client costs minutes
    and finds nothing."""
    return {k: v for k, v in env.items() if k != "COVERAGE_PROCESS_CONFIG"}


class ServerProcess:
    def __init__(
        self, database_url: str, tmp_path: Path, *, fd_limit: int | None = None, **extra: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "opamp_fast",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database-url",
            database_url,
            "--instance-id",
            "proc-test",
            "--flush-interval-s",
            "0.1",
            "--graceful-timeout-s",
            "3",
        ]
        for key, value in extra.items():
            args += ["--" + key.replace("_", "-"), value]
        self.log = open(tmp_path / f"server-{self.port}.log", "wb")

        def limit() -> None:
            if fd_limit is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard))

        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit
        )

    async def ready(self, timeout: float = 20.0) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client:
            with anyio.fail_after(timeout):
                while True:
                    assert self.proc.poll() is None, self.output()
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM, the server's graceful shutdown (a child measuring its coverage saves its
        data on the way out; SIGKILL would lose it), then SIGKILL if it takes too long."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def launch(database_url: str, tmp_path: Path) -> Any:
    """Factory: ``launch(**flags)`` starts a server process; all are stopped at teardown."""
    started: list[ServerProcess] = []

    def make(**extra: Any) -> ServerProcess:
        process = ServerProcess(database_url, tmp_path, **extra)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()
