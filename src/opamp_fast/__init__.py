"""opamp-fast: a high-throughput OpAMP server for large fleets of OpenTelemetry agents."""

__version__ = "0.1.0"

from .errors import ConfigError as ConfigError
from .errors import OpAMPFastError as OpAMPFastError
from .errors import StartupError as StartupError
from .errors import StorageError as StorageError
from .settings import Settings as Settings

__all__ = [
    "ConfigError",
    "OpAMPFastError",
    "Settings",
    "StartupError",
    "StorageError",
    "__version__",
]
