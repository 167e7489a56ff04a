"""The sans-IO OpAMP protocol core: framing, codec, per-agent state and the server rules.

Nothing here does I/O, reads a clock or draws random numbers; transports feed bytes and
``now`` in and get messages, bytes and events out. ``pb`` is the generated protobuf module
(``opamp.proto.v1``, registered as ``opamp/v1/opamp.proto``).
"""

from .._proto.opamp.v1 import anyvalue_pb2 as anyvalue_pb
from .._proto.opamp.v1 import opamp_pb2 as pb
from ._constants import (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS as AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS,
)
from ._constants import (
    AGENT_ACCEPTS_OTHER_CONNECTION_SETTINGS as AGENT_ACCEPTS_OTHER_CONNECTION_SETTINGS,
)
from ._constants import AGENT_ACCEPTS_PACKAGES as AGENT_ACCEPTS_PACKAGES
from ._constants import AGENT_ACCEPTS_REMOTE_CONFIG as AGENT_ACCEPTS_REMOTE_CONFIG
from ._constants import AGENT_ACCEPTS_RESTART_COMMAND as AGENT_ACCEPTS_RESTART_COMMAND
from ._constants import AGENT_FLAG_REQUEST_INSTANCE_UID as AGENT_FLAG_REQUEST_INSTANCE_UID
from ._constants import AGENT_REPORTS_AVAILABLE_COMPONENTS as AGENT_REPORTS_AVAILABLE_COMPONENTS
from ._constants import (
    AGENT_REPORTS_CONNECTION_SETTINGS_STATUS as AGENT_REPORTS_CONNECTION_SETTINGS_STATUS,
)
from ._constants import AGENT_REPORTS_EFFECTIVE_CONFIG as AGENT_REPORTS_EFFECTIVE_CONFIG
from ._constants import AGENT_REPORTS_HEALTH as AGENT_REPORTS_HEALTH
from ._constants import AGENT_REPORTS_HEARTBEAT as AGENT_REPORTS_HEARTBEAT
from ._constants import AGENT_REPORTS_OWN_LOGS as AGENT_REPORTS_OWN_LOGS
from ._constants import AGENT_REPORTS_OWN_METRICS as AGENT_REPORTS_OWN_METRICS
from ._constants import AGENT_REPORTS_OWN_TRACES as AGENT_REPORTS_OWN_TRACES
from ._constants import AGENT_REPORTS_PACKAGE_STATUSES as AGENT_REPORTS_PACKAGE_STATUSES
from ._constants import AGENT_REPORTS_REMOTE_CONFIG as AGENT_REPORTS_REMOTE_CONFIG
from ._constants import AGENT_REPORTS_STATUS as AGENT_REPORTS_STATUS
from ._constants import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES
from ._constants import ERROR_BAD_REQUEST as ERROR_BAD_REQUEST
from ._constants import ERROR_UNAVAILABLE as ERROR_UNAVAILABLE
from ._constants import ERROR_UNKNOWN as ERROR_UNKNOWN
from ._constants import REMOTE_CONFIG_APPLIED as REMOTE_CONFIG_APPLIED
from ._constants import REMOTE_CONFIG_APPLYING as REMOTE_CONFIG_APPLYING
from ._constants import REMOTE_CONFIG_FAILED as REMOTE_CONFIG_FAILED
from ._constants import REMOTE_CONFIG_UNSET as REMOTE_CONFIG_UNSET
from ._constants import (
    SERVER_ACCEPTS_CONNECTION_SETTINGS_REQUEST as SERVER_ACCEPTS_CONNECTION_SETTINGS_REQUEST,
)
from ._constants import SERVER_ACCEPTS_EFFECTIVE_CONFIG as SERVER_ACCEPTS_EFFECTIVE_CONFIG
from ._constants import SERVER_ACCEPTS_PACKAGES_STATUS as SERVER_ACCEPTS_PACKAGES_STATUS
from ._constants import SERVER_ACCEPTS_STATUS as SERVER_ACCEPTS_STATUS
from ._constants import SERVER_CAPABILITIES_MASK as SERVER_CAPABILITIES_MASK
from ._constants import (
    SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS as SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS,
)
from ._constants import SERVER_FLAG_REPORT_FULL_STATE as SERVER_FLAG_REPORT_FULL_STATE
from ._constants import SERVER_OFFERS_CONNECTION_SETTINGS as SERVER_OFFERS_CONNECTION_SETTINGS
from ._constants import SERVER_OFFERS_PACKAGES as SERVER_OFFERS_PACKAGES
from ._constants import SERVER_OFFERS_REMOTE_CONFIG as SERVER_OFFERS_REMOTE_CONFIG
from ._core import DEFAULT_SERVER_CAPABILITIES as DEFAULT_SERVER_CAPABILITIES
from ._core import NotAccepted as NotAccepted
from ._core import Reply as Reply
from ._core import ServerPolicy as ServerPolicy
from ._core import add_offers as add_offers
from ._core import build_push as build_push
from ._core import check_bounds as check_bounds
from ._core import declared_custom_capabilities as declared_custom_capabilities
from ._core import error_response as error_response
from ._core import process_heartbeat as process_heartbeat
from ._core import process_message as process_message
from ._core import queue_custom_message as queue_custom_message
from ._core import queue_restart as queue_restart
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import MessageTooLargeError as MessageTooLargeError
from ._errors import OpAMPError as OpAMPError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._events import AgentConnected as AgentConnected
from ._events import AgentDisconnected as AgentDisconnected
from ._events import CustomMessageReceived as CustomMessageReceived
from ._events import Event as Event
from ._events import FullStateRequested as FullStateRequested
from ._events import InstanceUidReassigned as InstanceUidReassigned
from ._events import MessageMerged as MessageMerged
from ._events import RemoteConfigStatusChanged as RemoteConfigStatusChanged
from ._events import StatusChanged as StatusChanged
from ._framing import decode_ws_payload as decode_ws_payload
from ._framing import encode_ws_frame as encode_ws_frame
from ._settings import SettingsOffer as SettingsOffer
from ._settings import SettingsParts as SettingsParts
from ._settings import SettingsVariant as SettingsVariant
from ._state import AgentState as AgentState
from ._state import Outbox as Outbox
from ._state import Session as Session
from ._state import Transport as Transport
from ._state import build_remote_config as build_remote_config
from ._state import remote_config_hash as remote_config_hash
from .codec import decode_agent_to_server as decode_agent_to_server
from .codec import decode_server_to_agent as decode_server_to_agent
from .codec import encode_agent_to_server as encode_agent_to_server
from .codec import encode_server_to_agent as encode_server_to_agent
from .codec import format_instance_uid as format_instance_uid
from .codec import normalize_instance_uid as normalize_instance_uid
from .codec import parse_instance_uid_text as parse_instance_uid_text

__all__ = [
    "AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS",
    "AGENT_ACCEPTS_OTHER_CONNECTION_SETTINGS",
    "AGENT_ACCEPTS_PACKAGES",
    "AGENT_ACCEPTS_REMOTE_CONFIG",
    "AGENT_ACCEPTS_RESTART_COMMAND",
    "AGENT_FLAG_REQUEST_INSTANCE_UID",
    "AGENT_REPORTS_AVAILABLE_COMPONENTS",
    "AGENT_REPORTS_CONNECTION_SETTINGS_STATUS",
    "AGENT_REPORTS_EFFECTIVE_CONFIG",
    "AGENT_REPORTS_HEALTH",
    "AGENT_REPORTS_HEARTBEAT",
    "AGENT_REPORTS_OWN_LOGS",
    "AGENT_REPORTS_OWN_METRICS",
    "AGENT_REPORTS_OWN_TRACES",
    "AGENT_REPORTS_PACKAGE_STATUSES",
    "AGENT_REPORTS_REMOTE_CONFIG",
    "AGENT_REPORTS_STATUS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_SERVER_CAPABILITIES",
    "ERROR_BAD_REQUEST",
    "ERROR_UNAVAILABLE",
    "ERROR_UNKNOWN",
    "REMOTE_CONFIG_APPLIED",
    "REMOTE_CONFIG_APPLYING",
    "REMOTE_CONFIG_FAILED",
    "REMOTE_CONFIG_UNSET",
    "SERVER_ACCEPTS_CONNECTION_SETTINGS_REQUEST",
    "SERVER_ACCEPTS_EFFECTIVE_CONFIG",
    "SERVER_ACCEPTS_PACKAGES_STATUS",
    "SERVER_ACCEPTS_STATUS",
    "SERVER_CAPABILITIES_MASK",
    "SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS",
    "SERVER_FLAG_REPORT_FULL_STATE",
    "SERVER_OFFERS_CONNECTION_SETTINGS",
    "SERVER_OFFERS_PACKAGES",
    "SERVER_OFFERS_REMOTE_CONFIG",
    "AgentConnected",
    "AgentDisconnected",
    "AgentState",
    "CustomMessageReceived",
    "Event",
    "FullStateRequested",
    "InstanceUidReassigned",
    "LocalProtocolError",
    "MessageMerged",
    "MessageTooLargeError",
    "NotAccepted",
    "OpAMPError",
    "Outbox",
    "ProtocolError",
    "RemoteConfigStatusChanged",
    "RemoteProtocolError",
    "Reply",
    "ServerPolicy",
    "Session",
    "SettingsOffer",
    "SettingsParts",
    "SettingsVariant",
    "StatusChanged",
    "Transport",
    "add_offers",
    "anyvalue_pb",
    "build_push",
    "build_remote_config",
    "check_bounds",
    "declared_custom_capabilities",
    "decode_agent_to_server",
    "decode_server_to_agent",
    "decode_ws_payload",
    "encode_agent_to_server",
    "encode_server_to_agent",
    "encode_ws_frame",
    "error_response",
    "format_instance_uid",
    "normalize_instance_uid",
    "parse_instance_uid_text",
    "pb",
    "process_heartbeat",
    "process_message",
    "queue_custom_message",
    "queue_restart",
    "remote_config_hash",
]
