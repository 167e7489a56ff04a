"""OpAMP bitmask and enum values as plain ints (faster than protobuf enum lookups).

Values are exactly the spec's (opamp-spec f56c7ae); ``tests/unit/test_codec.py`` checks
each against the generated ``opamp_pb2`` enums.
"""

from __future__ import annotations

from typing import Final

# AgentCapabilities (AgentToServer.capabilities)
AGENT_REPORTS_STATUS: Final = 0x1
AGENT_ACCEPTS_REMOTE_CONFIG: Final = 0x2
AGENT_REPORTS_EFFECTIVE_CONFIG: Final = 0x4
AGENT_ACCEPTS_PACKAGES: Final = 0x8
AGENT_REPORTS_PACKAGE_STATUSES: Final = 0x10
AGENT_REPORTS_OWN_TRACES: Final = 0x20
AGENT_REPORTS_OWN_METRICS: Final = 0x40
AGENT_REPORTS_OWN_LOGS: Final = 0x80
AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS: Final = 0x100
AGENT_ACCEPTS_OTHER_CONNECTION_SETTINGS: Final = 0x200
AGENT_ACCEPTS_RESTART_COMMAND: Final = 0x400
AGENT_REPORTS_HEALTH: Final = 0x800
AGENT_REPORTS_REMOTE_CONFIG: Final = 0x1000
AGENT_REPORTS_HEARTBEAT: Final = 0x2000
AGENT_REPORTS_AVAILABLE_COMPONENTS: Final = 0x4000
AGENT_REPORTS_CONNECTION_SETTINGS_STATUS: Final = 0x8000

# ServerCapabilities (ServerToAgent.capabilities); undefined bits MUST be 0.
SERVER_ACCEPTS_STATUS: Final = 0x1
SERVER_OFFERS_REMOTE_CONFIG: Final = 0x2
SERVER_ACCEPTS_EFFECTIVE_CONFIG: Final = 0x4
SERVER_OFFERS_PACKAGES: Final = 0x8
SERVER_ACCEPTS_PACKAGES_STATUS: Final = 0x10
SERVER_OFFERS_CONNECTION_SETTINGS: Final = 0x20
SERVER_ACCEPTS_CONNECTION_SETTINGS_REQUEST: Final = 0x40
SERVER_CAPABILITIES_MASK: Final = 0x7F

# AgentToServerFlags / ServerToAgentFlags
AGENT_FLAG_REQUEST_INSTANCE_UID: Final = 0x1
SERVER_FLAG_REPORT_FULL_STATE: Final = 0x1
SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS: Final = 0x2

# RemoteConfigStatuses (ConnectionSettingsStatuses uses the same values)
REMOTE_CONFIG_UNSET: Final = 0
REMOTE_CONFIG_APPLIED: Final = 1
REMOTE_CONFIG_APPLYING: Final = 2
REMOTE_CONFIG_FAILED: Final = 3

# ServerErrorResponseType
ERROR_UNKNOWN: Final = 0
ERROR_BAD_REQUEST: Final = 1
ERROR_UNAVAILABLE: Final = 2

#: Default size limit for one message in either direction (spec #346): 64 MiB.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
