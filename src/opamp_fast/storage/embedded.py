"""Embedded Postgres from the ``pgserver`` package (pip-installed binaries, runs as root too)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import StorageError


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
    import pgserver

    try:
        return pgserver.get_server(  # type: ignore[attr-defined]
            data_dir, cleanup_mode="stop"
        )
    except Exception as exc:  # pgserver raises bare exceptions with the initdb/pg_ctl output
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"embedded Postgres failed to start in {data_dir}: {first}") from None
