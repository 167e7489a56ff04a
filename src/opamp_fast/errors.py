"""Errors raised outside the sans-IO protocol core (which has its own in ``protocol``)."""

from __future__ import annotations


class OpAMPFastError(Exception):
    """Base class of the server's own errors."""


class ConfigError(OpAMPFastError):
    """A setting is missing or invalid; the message names it and says what is wrong."""


class StorageError(OpAMPFastError):
    """The database could not be reached, started or migrated."""


class StartupError(OpAMPFastError):
    """The server cannot start (port in use, unwritable data directory, ...)."""
