"""Embedded Postgres from the ``pgserver`` package (pip-installed binaries, runs as root too).

pgserver starts Postgres with its stock settings, made for a small machine with a spinning disk:
128 MB of shared buffers (a 150,000-agent fleet's tables outgrow them), a random page priced at
four sequential ones, a checkpoint every 1 GB of WAL. ``opamp-fast.conf`` in the data directory,
included from ``postgresql.conf`` and rewritten at every start, sizes them for this machine;
``ALTER SYSTEM`` still overrides any of them (``postgresql.auto.conf`` is read last).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import StorageError

CONF_NAME = "opamp-fast.conf"
_INCLUDE = f"include_if_exists = '{CONF_NAME}'"
_MiB = 1 << 20


def start_embedded(data_dir: Path) -> Any:
    """Blocking: create ``data_dir`` if needed, start Postgres there, return pgserver's handle.

    Errors come back as one clear ``StorageError`` line (unwritable directory, failed initdb).
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"data directory {data_dir} cannot be created: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise StorageError(f"data directory {data_dir} is not writable")
    fresh = not (data_dir / "PG_VERSION").exists()
    if not fresh:
        _write_settings(data_dir)  # read by the start below
    server = _get_server(data_dir)
    if fresh:
        # initdb ran inside get_server, just before the start: write the settings, and start
        # again to apply them (0.2 s; nobody else can be using a directory just made).
        _write_settings(data_dir)
        server.cleanup()
        server = _get_server(data_dir)
    return server


def _write_settings(data_dir: Path) -> None:
    try:
        write_settings(data_dir, memory_bytes())
    except OSError as exc:  # e.g. a data directory without its postgresql.conf
        raise StorageError(
            f"embedded Postgres settings cannot be written in {data_dir}: {exc.strerror}"
        ) from None


def _get_server(data_dir: Path) -> Any:
    import pgserver

    try:
        return pgserver.get_server(  # type: ignore[attr-defined]
            data_dir, cleanup_mode="stop"
        )
    except Exception as exc:  # pgserver raises bare exceptions with the initdb/pg_ctl output
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"embedded Postgres failed to start in {data_dir}: {first}") from None


def settings_for(memory: int) -> dict[str, str]:
    """The embedded Postgres' settings on a machine (or container) with ``memory`` bytes."""
    shared = min(max(memory // 4, 128 * _MiB), 1024 * _MiB)  # touched only as it is used
    return {
        "shared_buffers": f"{shared // _MiB}MB",
        "effective_cache_size": f"{max(memory // 2, shared) // _MiB}MB",  # the planner's hint
        "random_page_cost": "1.1",  # the rows are in memory or on SSD
        # fewer checkpoints under a fleet's steady row updates: fewer full-page images in WAL
        "max_wal_size": "2GB",
        "checkpoint_timeout": "15min",
        "checkpoint_completion_target": "0.9",
        # a supervisor and its workers, a few pooled connections each (--workers 16: ~110)
        "max_connections": "300",
    }


def write_settings(data_dir: Path, memory: int) -> None:
    """Write ``opamp-fast.conf`` and include it from ``postgresql.conf`` (once)."""
    lines = ["# Written by opamp-fast at every start; override with ALTER SYSTEM.\n"]
    lines += [f"{name} = '{value}'\n" for name, value in settings_for(memory).items()]
    conf = data_dir / CONF_NAME
    conf.write_text("".join(lines))
    main = data_dir / "postgresql.conf"
    text = main.read_text()
    if _INCLUDE not in text.splitlines():
        with main.open("a") as f:
            f.write(f"\n# opamp-fast's settings for the embedded server\n{_INCLUDE}\n")
    owner = data_dir.stat()
    if os.geteuid() == 0 and owner.st_uid != 0:  # pgserver runs Postgres as its own user
        os.chown(conf, owner.st_uid, owner.st_gid)


def memory_bytes() -> int:
    """The memory this process may use: the machine's, or its control group's limit if lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in (
        "/sys/fs/cgroup/memory.max",  # cgroup v2
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # v1
    ):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            memory = min(memory, int(limit))
    return memory
