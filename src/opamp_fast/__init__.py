"""opamp-fast: a high-throughput OpAMP server for large fleets of OpenTelemetry agents."""

__version__ = "0.1.0"

from .config import Settings as Settings
from .errors import ConfigError as ConfigError
from .errors import OpAMPFastError as OpAMPFastError
from .errors import StartupError as StartupError
from .errors import StorageError as StorageError

__all__ = [
    "ConfigError",
    "OpAMPFastError",
    "Settings",
    "StartupError",
    "StorageError",
    "__version__",
]
