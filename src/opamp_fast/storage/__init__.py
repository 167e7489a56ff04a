"""Postgres access: a thread-backed pool (psycopg 3 sync API), migrations, embedded server."""

from .batch_writer import BatchWriter as BatchWriter
from .batch_writer import WriterStatistics as WriterStatistics
from .database import Database as Database
from .database import open_database as open_database
from .migrations import apply_migrations as apply_migrations
from .migrations import pending_migrations as pending_migrations
from .rows import AgentSnapshot as AgentSnapshot

__all__ = [
    "AgentSnapshot",
    "BatchWriter",
    "Database",
    "WriterStatistics",
    "apply_migrations",
    "open_database",
    "pending_migrations",
]
