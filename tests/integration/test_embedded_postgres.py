"""The embedded Postgres runs with the settings the server gives it, on a fresh data directory,
on one an earlier release made, and under an operator's ``ALTER SYSTEM``."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from opamp_fast.errors import StorageError
from opamp_fast.storage.embedded import (
    CONF_NAME,
    memory_bytes,
    settings_for,
    start_embedded,
)

GiB = 1 << 30
INCLUDE = f"include_if_exists = '{CONF_NAME}'"  # the line postgresql.conf gets


def test_settings_follow_the_memory_within_bounds() -> None:
    small, medium, large = settings_for(GiB // 2), settings_for(2 * GiB), settings_for(24 * GiB)
    assert small["shared_buffers"] == "128MB"  # pgserver's own, the floor
    assert medium["shared_buffers"] == "512MB"  # a quarter
    assert large["shared_buffers"] == "1024MB"  # the ceiling
    assert (small["effective_cache_size"], large["effective_cache_size"]) == ("256MB", "12288MB")
    assert large["random_page_cost"] == "1.1"


def _show(server, *names: str) -> tuple[str, ...]:
    with psycopg.connect(server.get_uri()) as conn:
        return tuple(conn.execute(f"SHOW {name}").fetchone()[0] for name in names)  # type: ignore[index]


def _includes(pgdata: Path) -> int:
    return (pgdata / "postgresql.conf").read_text().splitlines().count(INCLUDE)


@pytest.mark.postgres
def test_a_fresh_data_directory_starts_with_the_settings(tmp_path) -> None:
    wanted = settings_for(memory_bytes())
    pgdata = tmp_path / "pg"
    server = start_embedded(pgdata)
    try:
        with psycopg.connect(server.get_uri()) as conn:
            shared = conn.execute(
                "SELECT pg_size_bytes(current_setting('shared_buffers')) = pg_size_bytes(%s)",
                (wanted["shared_buffers"],),
            ).fetchone()
        cost, connections = _show(server, "random_page_cost", "max_connections")
    finally:
        server.cleanup()
    assert shared == (True,)
    assert (cost, connections) == ("1.1", wanted["max_connections"])
    assert _includes(pgdata) == 1

    server = start_embedded(pgdata)  # again: the include is not added twice
    server.cleanup()
    assert _includes(pgdata) == 1


@pytest.mark.postgres
def test_an_earlier_release_directory_gets_them_and_alter_system_still_wins(tmp_path) -> None:
    pgdata = tmp_path / "pg"
    server = start_embedded(pgdata)
    server.cleanup()
    # What an earlier release left: pgserver's stock postgresql.conf, no settings file.
    conf = pgdata / "postgresql.conf"
    conf.write_text("\n".join(x for x in conf.read_text().splitlines() if x != INCLUDE) + "\n")
    (pgdata / CONF_NAME).unlink()

    server = start_embedded(pgdata)
    try:
        assert _show(server, "random_page_cost") == ("1.1",)
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET random_page_cost = 2")  # the operator's choice
    finally:
        server.cleanup()
    server = start_embedded(pgdata)
    try:
        assert _show(server, "random_page_cost") == ("2",)
    finally:
        server.cleanup()


def test_a_data_directory_without_its_configuration_is_one_clear_error(tmp_path) -> None:
    pgdata = tmp_path / "pg"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("16\n")  # initialised, then damaged
    with pytest.raises(StorageError, match=r"settings cannot be written in .*No such file"):
        start_embedded(pgdata)
