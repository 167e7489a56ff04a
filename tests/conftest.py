"""Shared fixtures: a real Postgres for the whole session, a fresh database per test, and the
event loop each async test runs on.

With ``OPAMP_FAST_TEST_DATABASE_URL`` set, that server is used; otherwise an embedded Postgres
(``pgserver``) is started once in a temporary directory. Each test that asks for ``database_url``
gets its own freshly created database, so tests never see each other's rows.

Async tests run through anyio's pytest plugin (``anyio_mode = "auto"`` in pyproject.toml) on
asyncio with uvloop, the server's default backend. Suites that must hold on both backends (the
transports and the interop suites) import ``anyio_backend`` from ``tests.helpers.backends``.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest

from opamp_fast.server import RunningServer, serve
from opamp_fast.settings import Settings

_counter = itertools.count()

# the ``launch`` fixture (server child processes); the coverage floor holds for whole runs only
pytest_plugins = ["tests.helpers.process", "tests.helpers.coverage_floor"]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    url = os.environ.get("OPAMP_FAST_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="opamp-fast-pg-") as tmp:
        server = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture
def create_database(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    """Factory: each call creates a new empty database and returns its URL; dropped afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"opamp_test_{os.getpid()}_{next(_counter)}"
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return with_database(postgres_admin_url, name)

    yield make
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(create_database: Callable[[], str]) -> str:
    return create_database()


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for an in-process server on an ephemeral loopback port and the test database."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 1,  # replaced below: 0 is not a valid *configured* port
            "database_url": database_url,
            "data_dir": tmp_path / "unused-pgdata",
            "instance_id": "test-instance",
            "graceful_timeout_s": 2.0,
            "flush_interval_s": 0.1,
            "last_seen_flush_s": 0.1,  # tests read last_seen_at soon after a heartbeat
            # The in-process server shares its event loop with the test and its clients; on a
            # busy CI machine a lag of half a second would refuse the test's own agents. Lag
            # admission is tested on its own (tests/unit/test_admission.py).
            "max_loop_lag_s": 5.0,
        }
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
async def start_server(
    create_database: Callable[[], str],
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await start_server(settings)`` runs ``serve`` on a free loopback port.

    The fixture owns the servers' task group, so teardown is a real graceful shutdown (the same
    ordered path SIGTERM takes), not a cancellation. It depends on ``create_database`` only so
    that the test databases are dropped after the servers have drained into them.
    """
    shutdowns: list[anyio.Event] = []
    async with anyio.create_task_group() as tg:

        async def start(settings: Settings) -> RunningServer:
            shutdown = anyio.Event()
            shutdowns.append(shutdown)
            if settings.port == 1:
                settings = settings.replace(port=free_port())
            running: RunningServer = await tg.start(
                partial(serve, settings, shutdown_trigger=shutdown)
            )
            return running

        yield start
        for shutdown in shutdowns:
            shutdown.set()


@pytest.fixture
async def server(
    start_server: Callable[..., Any], make_settings: Callable[..., Settings]
) -> RunningServer:
    running: RunningServer = await start_server(make_settings())
    return running


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
