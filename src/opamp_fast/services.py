"""``open_services``: every background service, owned by one nursery, with explicit readiness.

Services start in dependency order with ``await nursery.start(service.run)`` (each calls
``task_status.started()`` when ready) and stop in reverse order when the block exits.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from . import __version__
from .config import Settings
from .storage import Database

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Services:
    """What request handlers may use. Built once per server; passed explicitly, never global."""

    settings: Settings
    db: Database
    shutdown: trio.Event
    started_at: float = field(default_factory=time.time)
    version: str = __version__


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, db: Database, shutdown: trio.Event
) -> AsyncIterator[Services]:
    services = Services(settings=settings, db=db, shutdown=shutdown)
    async with trio.open_nursery() as nursery:
        await _record_instance_start(services)
        try:
            yield services
        finally:
            nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await _record_instance_stop(services)


async def _record_instance_start(services: Services) -> None:
    def _upsert(conn: object) -> None:
        conn.execute(  # type: ignore[attr-defined]
            """
            INSERT INTO server_instances (instance_id, version, started_at, last_heartbeat_at)
            VALUES (%s, %s, now(), now())
            ON CONFLICT (instance_id) DO UPDATE
               SET version = EXCLUDED.version, started_at = now(),
                   last_heartbeat_at = now(), stopped_at = NULL
            """,
            (services.settings.instance_id, services.version),
        )

    await services.db.run(_upsert)


async def _record_instance_stop(services: Services) -> None:
    def _update(conn: object) -> None:
        conn.execute(  # type: ignore[attr-defined]
            "UPDATE server_instances SET stopped_at = now() WHERE instance_id = %s",
            (services.settings.instance_id,),
        )

    try:
        await services.db.run(_update)
    except Exception:
        logger.warning("could not record instance stop", exc_info=True)
