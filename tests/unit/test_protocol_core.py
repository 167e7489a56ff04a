"""The sans-IO core's rules (process_message, build_push, error_response, state, policy).

Message shapes marked "Python client" are produced by the official
opentelemetry-opamp-client 0.5b0 itself (its ``build_*_message`` helpers), decoded with our
codec, so the tests see exactly the bytes a real agent sends.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry._opamp import messages as client_messages
from opentelemetry._opamp.client import OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2 as client_pb
from opentelemetry._opamp.transport.base import HttpTransport

import opamp_fast.protocol as protocol
from opamp_fast.protocol import (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS,
    AGENT_FLAG_REQUEST_INSTANCE_UID,
    AGENT_REPORTS_AVAILABLE_COMPONENTS,
    AGENT_REPORTS_STATUS,
    DEFAULT_SERVER_CAPABILITIES,
    ERROR_BAD_REQUEST,
    ERROR_UNAVAILABLE,
    REMOTE_CONFIG_APPLIED,
    REMOTE_CONFIG_APPLYING,
    REMOTE_CONFIG_FAILED,
    SERVER_ACCEPTS_STATUS,
    SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS,
    SERVER_FLAG_REPORT_FULL_STATE,
    AgentConnected,
    AgentDisconnected,
    AgentState,
    CustomMessageReceived,
    FullStateRequested,
    InstanceUidReassigned,
    LocalProtocolError,
    MessageMerged,
    NotAccepted,
    RemoteConfigStatusChanged,
    Reply,
    ServerPolicy,
    Session,
    StatusChanged,
    Transport,
    build_push,
    build_remote_config,
    decode_agent_to_server,
    encode_server_to_agent,
    error_response,
    normalize_instance_uid,
    pb,
    process_heartbeat,
    process_message,
    queue_custom_message,
    queue_restart,
    remote_config_hash,
)

UID = bytes(range(16))
CAPS_PYTHON = 0x3007  # the official Python client's default capabilities
CAPS_NODE = 0x3003  # ReportsStatus|AcceptsRemoteConfig|ReportsRemoteConfig|ReportsHeartbeat
CAPS_SETTINGS = AGENT_REPORTS_STATUS | AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS
POLICY = ServerPolicy()
NOW = 1_700_000_000.0
MAX = 64 * 1024 * 1024
CONFIG = {"x.json": (b'{"level": "debug"}', "application/json")}
CONFIG_2 = {"x.json": (b'{"level": "info"}', "application/json")}


# --- helpers -----------------------------------------------------------------------------


def uid_source() -> Callable[[], bytes]:
    counter = itertools.count(1)
    return lambda: b"\xaa" * 15 + bytes([next(counter)])


def run(
    agent: AgentState,
    session: Session,
    msg: pb.AgentToServer,
    *,
    policy: ServerPolicy = POLICY,
    now: float = NOW,
    duplicate: bool = False,
    new_uid: Callable[[], bytes] | None = None,
) -> Reply:
    return process_message(
        agent,
        session,
        msg,
        policy=policy,
        now=now,
        new_uid=new_uid or uid_source(),
        duplicate=duplicate,
    )


def events_of(reply: Reply, cls: type[Any]) -> list[Any]:
    return [e for e in reply.events if isinstance(e, cls)]


def description(name: str = "svc") -> pb.AgentDescription:
    desc = pb.AgentDescription()
    kv = desc.identifying_attributes.add()
    kv.key = "service.name"
    kv.value.string_value = name
    return desc


def a2s(seq: int = 0, caps: int = CAPS_PYTHON, uid: bytes = UID, **parts: Any) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=caps)
    for key, value in parts.items():
        if isinstance(value, int):
            setattr(msg, key, value)
        else:
            getattr(msg, key).CopyFrom(value)
    return msg


def full(seq: int = 0, caps: int = CAPS_PYTHON, **parts: Any) -> pb.AgentToServer:
    return a2s(seq, caps, agent_description=description(), **parts)


def status(config_hash: bytes, state: int = REMOTE_CONFIG_APPLIED, error: str = "") -> Any:
    return pb.RemoteConfigStatus(
        last_remote_config_hash=config_hash, status=state, error_message=error
    )


def fresh(transport: Transport = Transport.WS) -> tuple[AgentState, Session]:
    return AgentState(UID), Session(transport)


def known(
    transport: Transport = Transport.WS, caps: int = CAPS_PYTHON
) -> tuple[AgentState, Session]:
    """An agent whose full state (seq 0) was already answered."""
    agent, session = fresh(transport)
    run(agent, session, full(0, caps))
    return agent, session


class PythonClient:
    """The official client's exact message bytes, with its sequence numbering."""

    def __init__(self, caps: int = CAPS_PYTHON) -> None:
        self.client = OpAMPClient(
            endpoint="http://127.0.0.1:9/v1/opamp",
            agent_identifying_attributes={"service.name": "svc"},
            agent_non_identifying_attributes={"host.name": "h"},
            capabilities=caps,
        )

    @property
    def uid(self) -> bytes:
        uid: bytes = self.client._instance_uid
        return uid

    def _decode(self, data: bytes) -> pb.AgentToServer:
        msg = decode_agent_to_server(data, max_bytes=MAX)
        self.client._sequence_num += 1  # what client.send() does after every attempt
        return msg

    def full_state(self) -> pb.AgentToServer:
        return self._decode(self.client.build_full_state_message())

    def heartbeat(self) -> pb.AgentToServer:
        return self._decode(self.client.build_heartbeat_message())

    def disconnect(self) -> pb.AgentToServer:
        return self._decode(self.client.build_agent_disconnect_message())

    def status(self, config_hash: bytes, state: int, error: str = "") -> pb.AgentToServer:
        st = self.client.update_remote_config_status(config_hash, state, error)
        assert st is not None
        return self._decode(self.client.build_remote_config_status_response_message(st))

    def retry(self, msg: pb.AgentToServer) -> pb.AgentToServer:
        """The client re-posts the same payload (same seq) while its counter advanced."""
        self.client._sequence_num += 1
        return msg


# --- basic replies -------------------------------------------------------------------------


def test_first_response_carries_capabilities_and_uid() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(0))
    assert reply.response.instance_uid == UID
    assert reply.response.capabilities == DEFAULT_SERVER_CAPABILITIES == 0x37
    assert reply.response.flags == 0
    assert session.first_response_sent
    assert [type(e) for e in reply.events] == [AgentConnected, MessageMerged, StatusChanged]
    connected = reply.events[0]
    assert connected == AgentConnected(UID, Transport.WS, NOW)
    assert reply.events[1] == MessageMerged(UID, 0, NOW, frozenset({"description", "capabilities"}))


def test_ws_later_responses_omit_capabilities() -> None:
    agent, session = known()
    reply = run(agent, session, a2s(1))
    assert reply.response == pb.ServerToAgent(instance_uid=UID)
    assert reply.events == (MessageMerged(UID, 1, NOW, frozenset()),)


def test_http_every_response_carries_capabilities() -> None:
    agent, session = known(Transport.HTTP)
    for seq in range(1, 4):
        reply = run(agent, session, a2s(seq))
        assert reply.response.capabilities == DEFAULT_SERVER_CAPABILITIES
    assert len(events_of(reply, AgentConnected)) == 0


def test_new_ws_session_gets_capabilities_again() -> None:
    agent, _ = known()
    session = Session(Transport.WS)
    reply = run(agent, session, a2s(1))
    assert reply.response.capabilities == DEFAULT_SERVER_CAPABILITIES
    assert events_of(reply, AgentConnected) == [AgentConnected(UID, Transport.WS, NOW)]


def test_heartbeat_reply_is_uid_only_and_encodes_small() -> None:
    agent, session = known()
    reply = run(agent, session, a2s(1))
    assert reply.response.ListFields() == [
        (pb.ServerToAgent.DESCRIPTOR.fields_by_name["instance_uid"], UID)
    ]
    assert len(encode_server_to_agent(reply.response, max_bytes=MAX)) == 18


def test_duplicates_and_retries_are_each_answered() -> None:
    agent, session = known()
    for _ in range(3):
        reply = run(agent, session, a2s(1))
        assert reply.response.instance_uid == UID
        assert not reply.response.flags
        assert events_of(reply, MessageMerged) == [MessageMerged(UID, 1, NOW, frozenset())]


def test_now_only_stamps_events() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(0), now=42.5)
    assert {e.at for e in reply.events} == {42.5}


# --- status compression ----------------------------------------------------------------------


def _health(healthy: bool) -> pb.ComponentHealth:
    health = pb.ComponentHealth(healthy=healthy, status="ok" if healthy else "down")
    kv = health.attributes.add()
    kv.key = "k"
    kv.value.int_value = 1
    return health


def _effective(body: bytes) -> pb.EffectiveConfig:
    eff = pb.EffectiveConfig()
    eff.config_map.config_map["c.yaml"].body = body
    return eff


def _packages(version: str) -> pb.PackageStatuses:
    ps = pb.PackageStatuses(server_provided_all_packages_hash=b"h")
    ps.packages["p"].agent_has_version = version
    return ps


def _components(version: str) -> pb.AvailableComponents:
    ac = pb.AvailableComponents(hash=version.encode())
    kv = ac.components["receivers"].metadata.add()
    kv.key = "version"
    kv.value.string_value = version
    return ac


COMPRESSIBLE: list[tuple[str, str, Any, Any]] = [
    ("agent_description", "description", description("a"), description("b")),
    ("health", "health", _health(True), _health(False)),
    ("effective_config", "effective_config", _effective(b"a"), _effective(b"b")),
    ("remote_config_status", "remote_config_status", status(b"a"), status(b"b")),
    ("package_statuses", "package_statuses", _packages("1"), _packages("2")),
    (
        "custom_capabilities",
        "custom_capabilities",
        pb.CustomCapabilities(capabilities=["io.x/a"]),
        pb.CustomCapabilities(capabilities=["io.x/b"]),
    ),
    ("available_components", "available_components", _components("1"), _components("2")),
    (
        "connection_settings_status",
        "connection_settings_status",
        pb.ConnectionSettingsStatus(last_connection_settings_hash=b"a", status=1),
        pb.ConnectionSettingsStatus(last_connection_settings_hash=b"b", status=3),
    ),
]


@pytest.mark.parametrize(("field", "slot", "first", "second"), COMPRESSIBLE)
def test_compressible_part_is_merged(field: str, slot: str, first: Any, second: Any) -> None:
    agent, session = known()
    base = getattr(agent, slot)

    reply = run(agent, session, a2s(1, **{field: first}))
    assert getattr(agent, slot) == first
    assert events_of(reply, StatusChanged) == [StatusChanged(UID, NOW, frozenset({slot}))]
    assert events_of(reply, MessageMerged)[0].changed == frozenset({slot})

    # Omitted: the stored value stays, nothing changed.
    reply = run(agent, session, a2s(2))
    assert getattr(agent, slot) == first
    assert events_of(reply, StatusChanged) == []

    # Re-sent unchanged: no change recorded.
    reply = run(agent, session, a2s(3, **{field: first}))
    assert events_of(reply, StatusChanged) == []

    # Replaced (not merged field by field).
    reply = run(agent, session, a2s(4, **{field: second}))
    assert getattr(agent, slot) == second
    assert events_of(reply, StatusChanged) == [StatusChanged(UID, NOW, frozenset({slot}))]
    assert base is None or slot == "description"


def test_stored_parts_are_private_copies() -> None:
    agent, session = fresh()
    msg = full(0, health=_health(True))
    run(agent, session, msg)
    msg.agent_description.identifying_attributes[0].value.string_value = "mutated"
    msg.health.healthy = False
    assert agent.description == description()
    assert agent.health == _health(True)


def test_capabilities_always_taken_from_message() -> None:
    agent, session = known()
    reply = run(agent, session, a2s(1, caps=CAPS_PYTHON | AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS))
    assert agent.capabilities == CAPS_PYTHON | AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS
    assert events_of(reply, StatusChanged) == [StatusChanged(UID, NOW, frozenset({"capabilities"}))]
    reply = run(agent, session, a2s(2, caps=0))  # invalid, but taken as given
    assert agent.capabilities == 0
    assert events_of(reply, StatusChanged)[0].changed == frozenset({"capabilities"})


def test_several_parts_change_at_once() -> None:
    agent, session = known()
    reply = run(
        agent, session, full(1, caps=0x3, health=_health(True), effective_config=_effective(b"x"))
    )
    assert events_of(reply, StatusChanged)[0].changed == frozenset(
        {"capabilities", "health", "effective_config"}
    )


def test_custom_message_changes_no_state_and_is_passed_on() -> None:
    agent, session = known()
    msg = a2s(1, custom_message=pb.CustomMessage(capability="com.acme.x", type="t", data=b"d"))
    reply = run(agent, session, msg)
    assert reply.response == pb.ServerToAgent(instance_uid=UID)
    assert reply.events == (
        MessageMerged(UID, 1, NOW, frozenset()),
        CustomMessageReceived(UID, NOW, "com.acme.x", "t", b"d"),
    )


def test_csr_request_is_ignored() -> None:
    agent, session = known()
    msg = a2s(1)
    msg.connection_settings_request.opamp.certificate_request.csr = b"-----BEGIN..."
    reply = run(agent, session, msg)
    assert reply.response == pb.ServerToAgent(instance_uid=UID)


# --- full state and sequence numbers ------------------------------------------------------------


def test_unknown_agent_heartbeat_requests_full_state_once() -> None:
    agent, session = fresh()
    reply = run(agent, session, a2s(10))
    assert reply.response.flags == SERVER_FLAG_REPORT_FULL_STATE
    assert events_of(reply, FullStateRequested) == [FullStateRequested(UID, NOW, "unknown_agent")]
    assert agent.full_state_pending

    # The next heartbeats (the full state is on its way) do not ask again.
    for seq in (11, 12, 20):
        reply = run(agent, session, a2s(seq))
        assert not reply.response.flags
        assert not events_of(reply, FullStateRequested)

    reply = run(agent, session, full(21))
    assert not reply.response.flags
    assert not agent.full_state_pending
    reply = run(agent, session, a2s(22))
    assert not reply.response.flags


def test_first_message_with_description_is_not_asked_again() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(0))
    assert not reply.response.flags
    assert not events_of(reply, FullStateRequested)


def test_sequence_gap_requests_full_state() -> None:
    agent, session = known()
    run(agent, session, a2s(1))
    reply = run(agent, session, a2s(3))
    assert reply.response.flags == SERVER_FLAG_REPORT_FULL_STATE
    assert events_of(reply, FullStateRequested) == [FullStateRequested(UID, NOW, "sequence_gap")]
    assert agent.sequence_num == 3
    # Another gap before the full state arrives: not asked again.
    reply = run(agent, session, a2s(7))
    assert not reply.response.flags
    reply = run(agent, session, full(8))
    assert not reply.response.flags
    assert not agent.full_state_pending
    reply = run(agent, session, a2s(10))  # a new gap is a new request
    assert reply.response.flags == SERVER_FLAG_REPORT_FULL_STATE


def test_gap_in_a_message_that_carries_the_description_is_fine() -> None:
    agent, session = known()
    reply = run(agent, session, full(5))
    assert not reply.response.flags


@pytest.mark.parametrize("seq", [0, 1, 2])
def test_duplicate_or_lower_seq_is_never_a_gap(seq: int) -> None:
    agent, session = known()
    run(agent, session, a2s(1))
    run(agent, session, a2s(2))
    reply = run(agent, session, a2s(seq))
    assert not reply.response.flags
    assert agent.sequence_num == seq  # the last received


def test_seq_zero_is_invisible_but_works() -> None:
    agent, session = fresh()
    msg = full(0)
    wire = pb.AgentToServer.FromString(msg.SerializeToString())
    assert "sequence_num" not in [f.name for f, _ in wire.ListFields()]  # not on the wire
    reply = run(agent, session, msg)
    assert agent.sequence_num == 0
    assert not reply.response.flags
    reply = run(agent, session, a2s(1))
    assert not reply.response.flags


def test_node_client_seq_starting_at_one_is_not_a_gap() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(1, caps=CAPS_NODE))
    assert not reply.response.flags
    reply = run(agent, session, a2s(2, caps=CAPS_NODE))
    assert not reply.response.flags


def test_known_agent_without_stored_seq_is_not_a_gap() -> None:
    # e.g. state restored from the database: description known, seq not persisted.
    agent, session = fresh()
    agent.description = description()
    agent.capabilities = CAPS_NODE
    reply = run(agent, session, a2s(57, caps=CAPS_NODE))
    assert not reply.response.flags


def test_lost_full_state_request_is_repeated_for_a_retry_of_that_message() -> None:
    agent, session = fresh(Transport.HTTP)
    first = run(agent, session, a2s(5))
    assert first.response.flags == SERVER_FLAG_REPORT_FULL_STATE
    # The client timed out and re-posted the same payload (same seq): ask again.
    again = run(agent, session, a2s(5))
    assert again.response.flags == SERVER_FLAG_REPORT_FULL_STATE
    assert events_of(again, FullStateRequested) == [FullStateRequested(UID, NOW, "unknown_agent")]
    # A later message means the flag arrived: wait for the full state.
    assert not run(agent, session, a2s(6)).response.flags


def test_pending_full_state_is_asked_again_on_a_new_session() -> None:
    agent, session = known()
    run(agent, session, a2s(5))  # gap -> asked; then the connection dropped
    assert agent.full_state_pending
    reply = run(agent, Session(Transport.WS), a2s(6))
    assert reply.response.flags & SERVER_FLAG_REPORT_FULL_STATE
    assert events_of(reply, FullStateRequested) == [FullStateRequested(UID, NOW, "sequence_gap")]


def test_disconnect_never_requests_full_state() -> None:
    agent, session = fresh()
    reply = run(agent, session, a2s(9, agent_disconnect=pb.AgentDisconnect()))
    assert not reply.response.flags
    assert not agent.full_state_pending


# --- the Python client's exact shapes (digest section 5) -----------------------------------------


def test_python_client_never_loops_on_omitted_capability_parts() -> None:
    # caps 0x3007 advertise ReportsEffectiveConfig and ReportsRemoteConfig, but the client
    # omits both until it has values: that alone must never trigger ReportFullState.
    client = PythonClient()
    agent = AgentState(client.uid)
    session = Session(Transport.HTTP)
    first = client.full_state()
    assert not first.HasField("effective_config")
    assert not first.HasField("remote_config_status")
    assert first.sequence_num == 0
    reply = run(agent, session, first)
    assert not reply.response.flags
    for _ in range(20):
        hb = client.heartbeat()
        assert [f.name for f, _ in hb.ListFields()] == [
            "instance_uid",
            "sequence_num",
            "capabilities",
        ]
        reply = run(agent, session, hb)
        assert not reply.response.flags
        assert reply.response.capabilities == DEFAULT_SERVER_CAPABILITIES


def test_python_client_server_wiped_then_restored_without_loop() -> None:
    client = PythonClient()
    client.full_state()  # answered by the previous server instance
    for _ in range(5):
        client.heartbeat()
    agent = AgentState(client.uid)  # fresh server state
    session = Session(Transport.HTTP)
    requests = 0
    reply = run(agent, session, client.heartbeat())
    for _ in range(10):
        if reply.response.flags & SERVER_FLAG_REPORT_FULL_STATE:
            requests += 1
            msg = client.full_state()
        else:
            msg = client.heartbeat()
        reply = run(agent, session, msg)
    assert requests == 1
    assert agent.description is not None
    assert not agent.full_state_pending


def test_python_client_slow_response_duplicate_then_gap_asks_at_most_once() -> None:
    # Server latency > 1 s: the full state (seq 0) is posted twice, then seq 2 follows.
    client = PythonClient()
    agent = AgentState(client.uid)
    session = Session(Transport.HTTP)
    msg = client.full_state()
    flags = [run(agent, session, msg).response.flags]
    flags.append(run(agent, session, client.retry(msg)).response.flags)
    hb = client.heartbeat()
    assert hb.sequence_num == 2
    flags.append(run(agent, session, hb).response.flags)
    flags.append(run(agent, session, client.full_state()).response.flags)
    flags.extend(run(agent, session, client.heartbeat()).response.flags for _ in range(3))
    assert sum(1 for f in flags if f & SERVER_FLAG_REPORT_FULL_STATE) <= 1


def test_python_client_disconnect_twice() -> None:
    client = PythonClient()
    agent = AgentState(client.uid)
    agent.set_remote_config(CONFIG)
    session = Session(Transport.HTTP)
    run(agent, session, client.full_state())
    session.offered_config_hash = None  # pretend nothing was offered yet
    for seq_expected in (1, 2):
        msg = client.disconnect()
        assert msg.sequence_num == seq_expected
        reply = run(agent, session, msg)
        assert reply.response.instance_uid == client.uid
        assert not reply.response.HasField("remote_config")
        assert events_of(reply, AgentDisconnected) == [
            AgentDisconnected(client.uid, NOW, "agent_disconnect")
        ]
        assert not reply.response.flags


def test_python_client_caps_gate_everything() -> None:
    client = PythonClient()
    agent = AgentState(client.uid)
    agent.set_remote_config(CONFIG)
    session = Session(Transport.HTTP)
    policy = ServerPolicy(capabilities=0x7F, custom_capabilities=("io.opamp-fast.x/v1",))
    replies = [run(agent, session, client.full_state(), policy=policy)]
    replies += [run(agent, session, client.heartbeat(), policy=policy) for _ in range(3)]
    for reply in replies:
        resp = reply.response
        assert not resp.HasField("connection_settings")
        assert not resp.HasField("packages_available")
        assert not resp.HasField("command")
        assert not resp.HasField("error_response")
    assert replies[0].response.HasField("remote_config")  # 0x2 is accepted


class CoreTransport(HttpTransport):
    """Routes the official client's POSTs into the core and back, in process."""

    def __init__(self, policy: ServerPolicy = POLICY) -> None:
        self.policy = policy
        self.agents: dict[bytes, tuple[AgentState, Session]] = {}
        self.replies: list[Reply] = []

    def send(self, *, data: bytes, **_: Any) -> client_pb.ServerToAgent:  # type: ignore[override]
        msg = decode_agent_to_server(data, max_bytes=MAX)
        uid = normalize_instance_uid(msg.instance_uid)
        if uid not in self.agents:
            self.agents[uid] = (AgentState(uid, msg.instance_uid), Session(Transport.HTTP))
        agent, session = self.agents[uid]
        reply = run(agent, session, msg, policy=self.policy)
        self.replies.append(reply)
        body = encode_server_to_agent(reply.response, max_bytes=MAX)
        return client_messages.decode_message(body)


def test_python_client_remote_config_round_trip_through_its_own_decoder() -> None:
    transport = CoreTransport()
    client = OpAMPClient(
        endpoint="http://127.0.0.1:9/v1/opamp",
        agent_identifying_attributes={"service.name": "svc"},
        transport=transport,
    )
    first = client.send(client.build_full_state_message())
    assert first.instance_uid == client._instance_uid
    assert first.capabilities == DEFAULT_SERVER_CAPABILITIES
    agent, _ = transport.agents[client._instance_uid]
    assert agent.description is not None

    # The operator assigns a config: it rides on the next heartbeat's response.
    config_hash = agent.set_remote_config(CONFIG)
    resp = client.send(client.build_heartbeat_message())
    assert resp.remote_config.config_hash == config_hash
    assert dict(client.decode_remote_config(resp.remote_config)) == {"x.json": {"level": "debug"}}

    # Heartbeats before the agent reports: not resent on this session.
    assert not client.send(client.build_heartbeat_message()).HasField("remote_config")

    st = client.update_remote_config_status(config_hash, client_pb.RemoteConfigStatuses_APPLIED)
    assert st is not None
    client.send(client.build_remote_config_status_response_message(st))
    assert agent.remote_config_status is not None
    assert agent.remote_config_status.status == REMOTE_CONFIG_APPLIED
    assert events_of(transport.replies[-1], RemoteConfigStatusChanged) == [
        RemoteConfigStatusChanged(client._instance_uid, NOW, config_hash, REMOTE_CONFIG_APPLIED, "")
    ]
    for _ in range(3):
        resp = client.send(client.build_heartbeat_message())
        assert not resp.HasField("remote_config")
        assert not resp.flags

    # A new hash goes out on the next poll.
    new_hash = agent.set_remote_config(CONFIG_2)
    assert client.send(client.build_heartbeat_message()).remote_config.config_hash == new_hash
    assert all(not r.response.flags for r in transport.replies)


# --- disconnect --------------------------------------------------------------------------------


def test_agent_disconnect_replies_normally_without_pushes() -> None:
    agent, session = fresh(Transport.WS)
    agent.set_remote_config(CONFIG)
    caps = CAPS_PYTHON | AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS
    reply = run(agent, session, full(0, caps=caps, agent_disconnect=pb.AgentDisconnect()))
    resp = reply.response
    assert resp.instance_uid == UID
    assert resp.capabilities == DEFAULT_SERVER_CAPABILITIES  # still the first response
    assert not resp.HasField("remote_config")
    assert not resp.HasField("connection_settings")
    assert reply.events[-1] == AgentDisconnected(UID, NOW, "agent_disconnect")
    # Nothing was recorded as offered, so a later session still gets both.
    reply = run(agent, Session(Transport.WS), a2s(1, caps=caps))
    assert reply.response.HasField("remote_config")
    assert reply.response.HasField("connection_settings")


# --- identity --------------------------------------------------------------------------------


def test_request_instance_uid_flag_assigns_new_uid() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(0, flags=AGENT_FLAG_REQUEST_INSTANCE_UID))
    new = b"\xaa" * 15 + b"\x01"
    assert reply.response.agent_identification.new_instance_uid == new
    assert reply.response.instance_uid == UID  # must match the agent's current uid
    assert events_of(reply, InstanceUidReassigned) == [InstanceUidReassigned(UID, new, NOW)]
    assert agent.instance_uid == UID  # the caller re-keys; the core only reports


def test_duplicate_uid_assigns_new_uid() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(0), duplicate=True)
    assert len(reply.response.agent_identification.new_instance_uid) == 16
    assert len(events_of(reply, InstanceUidReassigned)) == 1


def test_no_identification_by_default() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(0))
    assert not reply.response.HasField("agent_identification")
    assert not events_of(reply, InstanceUidReassigned)


def test_bad_new_uid_is_a_local_error() -> None:
    agent, session = fresh()
    with pytest.raises(LocalProtocolError) as exc:
        run(agent, session, full(0), duplicate=True, new_uid=lambda: b"short")
    assert exc.value.kind == "bad_new_uid"


def test_legacy_ulid_agent_sees_its_own_id() -> None:
    ulid = b"01ARZ3NDEKTSV4RRFFQ69G5FAV"
    uid = normalize_instance_uid(ulid)
    agent, session = AgentState(uid, wire_uid=ulid), Session(Transport.WS)
    reply = run(agent, session, full(0, uid=ulid))
    assert reply.response.instance_uid == ulid
    assert reply.events[0] == AgentConnected(uid, Transport.WS, NOW)


# --- remote config --------------------------------------------------------------------------------


def test_remote_config_offered_once_per_session() -> None:
    agent, session = known()
    config_hash = agent.set_remote_config(CONFIG)
    reply = run(agent, session, a2s(1))
    assert reply.response.remote_config == agent.remote_config
    assert reply.response.remote_config.config_hash == config_hash
    assert session.offered_config_hash == config_hash
    for seq in (2, 3):
        assert not run(agent, session, a2s(seq)).response.HasField("remote_config")


def test_remote_config_in_first_response_when_assigned_before_connect() -> None:
    agent, session = fresh()
    agent.set_remote_config(CONFIG)
    reply = run(agent, session, full(0))
    assert reply.response.remote_config.config.config_map["x.json"].content_type == (
        "application/json"
    )


@pytest.mark.parametrize("state", [REMOTE_CONFIG_APPLIED, REMOTE_CONFIG_FAILED])
def test_remote_config_never_resent_for_the_reported_hash(state: int) -> None:
    agent, session = known()
    config_hash = agent.set_remote_config(CONFIG)
    run(agent, session, a2s(1))
    reply = run(agent, session, a2s(2, remote_config_status=status(config_hash, state, "e")))
    assert not reply.response.HasField("remote_config")
    assert events_of(reply, RemoteConfigStatusChanged) == [
        RemoteConfigStatusChanged(UID, NOW, config_hash, state, "e")
    ]
    for seq in range(3, 6):  # heartbeats omit the status: unchanged, no resend
        assert not run(agent, session, a2s(seq)).response.HasField("remote_config")
    # Not even on a new connection or for another HTTP session.
    for transport in Transport:
        reply = run(agent, Session(transport), a2s(9))
        assert not reply.response.HasField("remote_config")


def test_new_hash_is_offered_on_next_message() -> None:
    agent, session = known()
    first_hash = agent.set_remote_config(CONFIG)
    run(agent, session, a2s(1))
    run(agent, session, a2s(2, remote_config_status=status(first_hash, REMOTE_CONFIG_FAILED)))
    second_hash = agent.set_remote_config(CONFIG_2)
    assert second_hash != first_hash
    reply = run(agent, session, a2s(3))
    assert reply.response.remote_config.config_hash == second_hash


def test_status_with_another_hash_allows_one_more_offer() -> None:
    agent, session = known()
    config_hash = agent.set_remote_config(CONFIG)
    assert run(agent, session, a2s(1)).response.HasField("remote_config")
    # The agent reports it still runs something else: offer again in this reply, once.
    reply = run(agent, session, a2s(2, remote_config_status=status(b"old", REMOTE_CONFIG_APPLIED)))
    assert reply.response.remote_config.config_hash == config_hash
    assert not run(agent, session, a2s(3)).response.HasField("remote_config")
    reply = run(agent, session, a2s(4, remote_config_status=status(config_hash, 2)))
    assert not reply.response.HasField("remote_config")


def test_applying_then_applied_emit_status_changes() -> None:
    agent, session = known()
    config_hash = agent.set_remote_config(CONFIG)
    run(agent, session, a2s(1))
    r1 = run(
        agent, session, a2s(2, remote_config_status=status(config_hash, REMOTE_CONFIG_APPLYING))
    )
    r2 = run(
        agent, session, a2s(3, remote_config_status=status(config_hash, REMOTE_CONFIG_APPLIED))
    )
    r3 = run(
        agent, session, a2s(4, remote_config_status=status(config_hash, REMOTE_CONFIG_APPLIED))
    )
    assert [e.status for e in events_of(r1, RemoteConfigStatusChanged)] == [2]
    assert [e.status for e in events_of(r2, RemoteConfigStatusChanged)] == [1]
    assert events_of(r3, RemoteConfigStatusChanged) == []


def test_remote_config_needs_accepts_remote_config() -> None:
    agent, session = known(caps=AGENT_REPORTS_STATUS)
    agent.set_remote_config(CONFIG)
    assert not run(agent, session, a2s(1, caps=AGENT_REPORTS_STATUS)).response.HasField(
        "remote_config"
    )
    assert build_push(agent, session, policy=POLICY) is None


def test_remote_config_needs_server_offers_remote_config() -> None:
    policy = ServerPolicy(capabilities=SERVER_ACCEPTS_STATUS)
    agent, session = known()
    agent.set_remote_config(CONFIG)
    assert not run(agent, session, a2s(1), policy=policy).response.HasField("remote_config")


def test_cleared_remote_config_is_not_offered() -> None:
    agent, session = known()
    agent.set_remote_config(CONFIG)
    agent.clear_remote_config()
    assert agent.remote_config is None
    assert agent.remote_config_hash is None
    assert not run(agent, session, a2s(1)).response.HasField("remote_config")
    agent.set_remote_config(CONFIG)
    assert agent.set_remote_config({}) == b""
    assert agent.remote_config is None


def test_http_retry_reoffers_what_the_lost_response_carried() -> None:
    agent, session = known(
        Transport.HTTP, caps=CAPS_PYTHON | AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS
    )
    caps = CAPS_PYTHON | AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS
    agent.set_remote_config(CONFIG)
    run(agent, session, a2s(1, caps=caps))  # offered; say the response timed out client-side
    retry = run(agent, session, a2s(1, caps=caps))
    assert retry.response.HasField("remote_config")
    assert retry.response.HasField("connection_settings")
    assert not run(agent, session, a2s(2, caps=caps)).response.HasField("remote_config")


def test_ws_duplicate_seq_does_not_reoffer() -> None:
    agent, session = known(Transport.WS)
    agent.set_remote_config(CONFIG)
    run(agent, session, a2s(1))
    assert not run(agent, session, a2s(1)).response.HasField("remote_config")


def test_shared_prebuilt_config() -> None:
    config = build_remote_config(CONFIG)
    a, b = AgentState(UID), AgentState(bytes(16))
    a.set_remote_config_message(config)
    b.set_remote_config_message(config)
    assert a.remote_config is b.remote_config
    assert a.remote_config_hash == b.remote_config_hash == remote_config_hash(CONFIG)
    with pytest.raises(ValueError, match="config_hash"):
        a.set_remote_config_message(pb.AgentRemoteConfig())


# --- config hash ------------------------------------------------------------------------


def test_config_hash_is_deterministic_and_order_independent() -> None:
    files = {"b": (b"2", "text/plain"), "a": (b"1", "application/json")}
    reordered = dict(reversed(list(files.items())))
    assert remote_config_hash(files) == remote_config_hash(reordered)
    assert len(remote_config_hash(files)) == 32
    assert build_remote_config(files) == build_remote_config(reordered)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"a": (b"bc", "")}, {"ab": (b"c", "")}),
        ({"a": (b"b", "c")}, {"a": (b"bc", "")}),
        ({"a": (b"", "")}, {}),
        ({"a": (b"x", "")}, {"a": (b"x", ""), "b": (b"", "")}),
        ({"": (b"x", "t")}, {"x": (b"", "t")}),
    ],
)
def test_config_hash_has_no_concatenation_collisions(
    left: dict[str, tuple[bytes, str]], right: dict[str, tuple[bytes, str]]
) -> None:
    assert remote_config_hash(left) != remote_config_hash(right)


def test_config_with_empty_file_name() -> None:
    agent = AgentState(UID)
    config_hash = agent.set_remote_config({"": (b"receivers: {}", "text/yaml")})
    assert agent.remote_config is not None
    assert agent.remote_config.config.config_map[""].body == b"receivers: {}"
    assert agent.remote_config.config_hash == config_hash


# --- connection settings ---------------------------------------------------------------


def test_connection_settings_need_accepts_opamp_connection_settings() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(0, caps=CAPS_PYTHON))
    assert not reply.response.HasField("connection_settings")


def test_connection_settings_offered_once_with_heartbeat_interval() -> None:
    policy = ServerPolicy(heartbeat_interval_s=15)
    agent, session = fresh()
    reply = run(agent, session, full(0, caps=CAPS_SETTINGS), policy=policy)
    offer = reply.response.connection_settings
    assert offer.opamp.heartbeat_interval_seconds == 15
    assert offer.hash == policy.connection_settings_hash
    assert len(offer.hash) == 32
    # Only the heartbeat interval is offered: no endpoint, headers, certificate, tls...
    assert [f.name for f, _ in offer.ListFields()] == ["hash", "opamp"]
    assert [f.name for f, _ in offer.opamp.ListFields()] == ["heartbeat_interval_seconds"]
    reply = run(agent, session, a2s(1, caps=CAPS_SETTINGS), policy=policy)
    assert not reply.response.HasField("connection_settings")
    # A new session offers again...
    reply = run(agent, Session(Transport.WS), a2s(2, caps=CAPS_SETTINGS), policy=policy)
    assert reply.response.HasField("connection_settings")


def test_connection_settings_not_offered_when_agent_reports_that_hash() -> None:
    policy = ServerPolicy()
    agent, session = fresh()
    css = pb.ConnectionSettingsStatus(
        last_connection_settings_hash=policy.connection_settings_hash, status=1
    )
    reply = run(agent, session, full(0, caps=CAPS_SETTINGS, connection_settings_status=css))
    assert not reply.response.HasField("connection_settings")


def test_connection_settings_need_server_capability() -> None:
    policy = ServerPolicy(capabilities=0x7)
    agent, session = fresh()
    reply = run(agent, session, full(0, caps=CAPS_SETTINGS), policy=policy)
    assert not reply.response.HasField("connection_settings")


def test_settings_hash_follows_content() -> None:
    assert ServerPolicy().connection_settings_hash == ServerPolicy().connection_settings_hash
    assert (
        ServerPolicy(heartbeat_interval_s=30).connection_settings_hash
        != ServerPolicy(heartbeat_interval_s=31).connection_settings_hash
    )
    # Capabilities do not change the offer.
    assert (
        ServerPolicy(capabilities=0x27).connection_settings_hash
        == ServerPolicy().connection_settings_hash
    )


def test_changed_settings_are_pushed_over_ws() -> None:
    agent, session = fresh()
    run(agent, session, full(0, caps=CAPS_SETTINGS))
    assert build_push(agent, session, policy=POLICY) is None
    changed = ServerPolicy(heartbeat_interval_s=5)
    push = build_push(agent, session, policy=changed)
    assert push is not None
    assert push.instance_uid == UID
    assert push.connection_settings.opamp.heartbeat_interval_seconds == 5
    assert not push.capabilities
    assert build_push(agent, session, policy=changed) is None


OWN_METRICS, OWN_TRACES, OWN_LOGS = 0x40, 0x20, 0x80


def own_parts(heartbeat: int = 30) -> protocol.SettingsParts:
    return protocol.SettingsParts(
        pb.OpAMPConnectionSettings(heartbeat_interval_seconds=heartbeat),
        own_metrics=pb.TelemetryConnectionSettings(destination_endpoint="https://m/v1/metrics"),
        own_logs=pb.TelemetryConnectionSettings(destination_endpoint="https://l/v1/logs"),
    )


def test_an_agents_own_offer_is_gated_part_by_part_on_its_capabilities() -> None:
    offer = protocol.SettingsOffer(own_parts())
    agent, session = fresh()
    agent.set_settings_offer(offer)
    reply = run(agent, session, full(0, caps=AGENT_REPORTS_STATUS | OWN_METRICS | OWN_TRACES))
    sent = reply.response.connection_settings
    # own_metrics only: no opamp (no AcceptsOpAMPConnectionSettings), no logs, no traces offered
    assert [f.name for f, _ in sent.ListFields()] == ["hash", "own_metrics"]
    assert sent.own_metrics.destination_endpoint == "https://m/v1/metrics"
    # Gaining a capability is a different offer (another hash), offered in the same session.
    reply = run(agent, session, a2s(1, caps=CAPS_SETTINGS | OWN_METRICS | OWN_LOGS))
    more = reply.response.connection_settings
    assert more.hash != sent.hash
    assert more.opamp.heartbeat_interval_seconds == 30 and more.own_logs.destination_endpoint
    assert not run(
        agent, session, a2s(2, caps=CAPS_SETTINGS | OWN_METRICS | OWN_LOGS)
    ).response.HasField("connection_settings")


def test_an_offer_without_capabilities_to_take_it_sends_nothing() -> None:
    agent, session = fresh()
    agent.set_settings_offer(protocol.SettingsOffer(own_parts()))
    assert not run(agent, session, full(0, caps=CAPS_PYTHON)).response.HasField(
        "connection_settings"
    )


def test_every_opamp_offer_has_a_heartbeat_interval() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        protocol.SettingsParts(pb.OpAMPConnectionSettings(destination_endpoint="wss://x/"))


def test_offer_hash_is_stable_and_names_the_certificate_serial() -> None:
    one, two = protocol.SettingsOffer(own_parts()), protocol.SettingsOffer(own_parts())
    caps = CAPS_SETTINGS | OWN_METRICS
    assert one.pick(caps).hash == two.pick(caps).hash  # type: ignore[union-attr]
    assert one.pick(caps) is one.pick(caps)  # built once per capability mask
    serial = protocol.SettingsOffer(own_parts(), serial=b"1f2e")
    assert serial.pick(caps).hash != one.pick(caps).hash  # type: ignore[union-attr]
    # ...only where it can be delivered: the serial rides in the opamp part.
    assert serial.pick(OWN_METRICS).hash == one.pick(OWN_METRICS).hash  # type: ignore[union-attr]
    assert protocol.SettingsOffer(own_parts(31)).pick(caps).hash != one.pick(caps).hash  # type: ignore[union-attr]


def test_a_certificate_goes_out_once_whatever_the_hashes_say() -> None:
    cert = pb.TLSCertificate(cert=b"-----BEGIN CERTIFICATE-----...", ca_cert=b"ca")
    agent, session = fresh()
    run(agent, session, full(0, caps=CAPS_SETTINGS))  # the heartbeat offer, already sent
    plain = protocol.SettingsOffer(own_parts(), serial=b"abc")
    agent.set_settings_offer(protocol.SettingsOffer(own_parts(), serial=b"abc", certificate=cert))
    push = build_push(agent, session, policy=POLICY)
    assert push is not None
    sent = push.connection_settings
    assert sent.opamp.certificate.cert == cert.cert
    # The hash is the one of the same settings without the certificate: an agent reporting it
    # (APPLIED) is not offered these settings again.
    assert sent.hash == plain.pick(CAPS_SETTINGS).hash  # type: ignore[union-attr]
    assert agent.settings_offer is not None and agent.settings_offer.certificate is None
    assert build_push(agent, session, policy=POLICY) is None
    # A new session (a reconnect with the certificate) gets the settings, not the certificate:
    # opamp-go and the Collector's supervisor reconnect on every offer carrying one.
    again = run(agent, Session(Transport.WS), a2s(1, caps=CAPS_SETTINGS)).response
    assert again.connection_settings.hash == sent.hash
    assert not again.connection_settings.opamp.HasField("certificate")


def test_a_certificate_is_delivered_even_when_the_agent_reports_the_hash() -> None:
    cert = pb.TLSCertificate(cert=b"pem")
    offer = protocol.SettingsOffer(own_parts(), serial=b"abc", certificate=cert)
    agent, session = fresh()
    agent.set_settings_offer(offer)
    css = pb.ConnectionSettingsStatus(
        last_connection_settings_hash=offer.pick(CAPS_SETTINGS).hash,  # type: ignore[union-attr]
        status=1,
    )
    reply = run(agent, session, full(0, caps=CAPS_SETTINGS, connection_settings_status=css))
    assert reply.response.connection_settings.opamp.certificate.cert == b"pem"


def test_a_certificate_waits_for_an_agent_that_accepts_opamp_settings() -> None:
    agent, session = fresh()
    agent.set_settings_offer(
        protocol.SettingsOffer(own_parts(), certificate=pb.TLSCertificate(cert=b"pem"))
    )
    reply = run(agent, session, full(0, caps=AGENT_REPORTS_STATUS | OWN_METRICS))
    assert not reply.response.connection_settings.HasField("opamp")
    assert agent.settings_offer.certificate is not None  # type: ignore[union-attr]


def test_a_new_offer_ends_the_heartbeat_fast_path_until_it_is_sent() -> None:
    agent, session = known(caps=CAPS_SETTINGS)
    run(agent, session, a2s(1, caps=CAPS_SETTINGS))
    assert protocol.process_heartbeat(agent, session, 2, CAPS_SETTINGS)
    assert agent.set_settings_offer(protocol.SettingsOffer(own_parts(12)))
    assert not agent.set_settings_offer(agent.settings_offer)  # the same offer: no change
    assert not protocol.process_heartbeat(agent, session, 3, CAPS_SETTINGS)
    push = build_push(agent, session, policy=POLICY)
    assert push is not None and push.connection_settings.opamp.heartbeat_interval_seconds == 12


def test_settings_parts_never_show_header_values() -> None:
    parts = own_parts()
    header = parts.own_metrics.headers.headers.add()  # type: ignore[union-attr]
    header.key, header.value = "Authorization", "Bearer secret"
    assert "secret" not in repr(parts)


# --- custom capabilities -----------------------------------------------------------------


CUSTOM = ServerPolicy(custom_capabilities=("io.opamp-fast.a/v1", "io.opamp-fast.b/v2"))


def test_custom_capabilities_on_first_ws_response_only() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(0), policy=CUSTOM)
    assert list(reply.response.custom_capabilities.capabilities) == list(CUSTOM.custom_capabilities)
    assert session.custom_capabilities_sent == CUSTOM.custom_capabilities
    reply = run(agent, session, a2s(1), policy=CUSTOM)
    assert not reply.response.HasField("custom_capabilities")


def test_custom_capabilities_on_every_http_response() -> None:
    agent, session = fresh(Transport.HTTP)
    for seq in range(3):
        reply = run(agent, session, full(seq), policy=CUSTOM)
        assert reply.response.custom_capabilities.capabilities == list(CUSTOM.custom_capabilities)


def test_no_custom_capabilities_when_none_configured() -> None:
    for transport in Transport:
        agent, session = fresh(transport)
        assert not run(agent, session, full(0)).response.HasField("custom_capabilities")


def test_changed_custom_capabilities_are_pushed_over_ws() -> None:
    agent, session = fresh()
    run(agent, session, full(0), policy=CUSTOM)
    assert build_push(agent, session, policy=CUSTOM) is None
    emptied = build_push(agent, session, policy=POLICY)
    assert emptied is not None
    assert emptied.HasField("custom_capabilities")
    assert list(emptied.custom_capabilities.capabilities) == []
    assert build_push(agent, session, policy=POLICY) is None


# --- available components -------------------------------------------------------------------


CAPS_AC = CAPS_PYTHON | AGENT_REPORTS_AVAILABLE_COMPONENTS


def test_unknown_available_components_hash_asks_for_the_list() -> None:
    agent, session = fresh()
    reply = run(
        agent,
        session,
        full(0, caps=CAPS_AC, available_components=pb.AvailableComponents(hash=b"h1")),
    )
    assert reply.response.flags == SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS
    assert agent.available_components is None

    listed = _components("1")
    reply = run(agent, session, a2s(1, caps=CAPS_AC, available_components=listed))
    assert not reply.response.flags
    assert agent.available_components == listed
    # Later, the hash alone (matching) is enough.
    reply = run(
        agent,
        session,
        a2s(2, caps=CAPS_AC, available_components=pb.AvailableComponents(hash=listed.hash)),
    )
    assert not reply.response.flags
    assert agent.available_components == listed
    reply = run(
        agent,
        session,
        a2s(3, caps=CAPS_AC, available_components=pb.AvailableComponents(hash=b"other")),
    )
    assert reply.response.flags == SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS


def test_available_components_flag_needs_the_capability() -> None:
    agent, session = fresh()
    reply = run(agent, session, full(0, available_components=pb.AvailableComponents(hash=b"h")))
    assert not reply.response.flags


# --- build_push ---------------------------------------------------------------------------


def test_push_remote_config_over_ws() -> None:
    agent, session = known()
    assert build_push(agent, session, policy=POLICY) is None
    config_hash = agent.set_remote_config(CONFIG)
    push = build_push(agent, session, policy=POLICY)
    assert push is not None
    assert push.instance_uid == UID
    assert push.remote_config.config_hash == config_hash
    assert [f.name for f, _ in push.ListFields()] == ["instance_uid", "remote_config"]
    assert build_push(agent, session, policy=POLICY) is None  # not twice
    # ...nor in the next reply.
    assert not run(agent, session, a2s(1)).response.HasField("remote_config")


def test_push_never_for_http_or_before_first_response() -> None:
    agent, session = known(Transport.HTTP)
    agent.set_remote_config(CONFIG)
    assert build_push(agent, session, policy=POLICY) is None
    ws_agent, ws_session = fresh()
    ws_agent.capabilities = CAPS_PYTHON
    ws_agent.set_remote_config(CONFIG)
    assert build_push(ws_agent, ws_session, policy=POLICY) is None


def test_push_uses_wire_uid() -> None:
    ulid = b"01ARZ3NDEKTSV4RRFFQ69G5FAV"
    agent = AgentState(normalize_instance_uid(ulid), wire_uid=ulid)
    session = Session(Transport.WS)
    run(agent, session, full(0, uid=ulid))
    agent.set_remote_config(CONFIG)
    push = build_push(agent, session, policy=POLICY)
    assert push is not None
    assert push.instance_uid == ulid


# --- commands and custom messages -----------------------------------------------------------
CAPS_RESTART = CAPS_PYTHON | 0x400  # ... | AcceptsRestartCommand
GADGET = "io.example.gadget/v1"


def custom(capability: str = GADGET, kind: str = "ping", data: bytes = b"hi") -> Any:
    return pb.CustomMessage(capability=capability, type=kind, data=data)


def declaring(transport: Transport = Transport.WS, *caps: str) -> tuple[AgentState, Session]:
    agent, session = known(transport)
    run(agent, session, a2s(1, custom_capabilities=pb.CustomCapabilities(capabilities=caps)))
    return agent, session


def test_restart_needs_the_capability_and_queues_nothing_without_it() -> None:
    agent, session = known(Transport.WS)
    with pytest.raises(NotAccepted) as info:
        queue_restart(agent, session)
    assert info.value.code == "restart_not_supported"
    assert session.outbox is None


def test_restart_is_pushed_alone_over_ws_and_the_rest_follows() -> None:
    agent, session = known(Transport.WS, CAPS_RESTART)
    agent.set_remote_config(CONFIG)  # due as well
    queue_restart(agent, session)
    command = build_push(agent, session, policy=POLICY)
    assert command is not None
    assert [f.name for f, _ in command.ListFields()] == ["instance_uid", "command"]
    assert command.command.type == pb.CommandType_Restart
    following = build_push(agent, session, policy=POLICY)
    assert following is not None and following.HasField("remote_config")
    assert not following.HasField("command")
    assert build_push(agent, session, policy=POLICY) is None
    assert session.outbox is None


def test_restart_waits_for_the_next_http_poll_in_a_reply_of_its_own() -> None:
    agent, session = known(Transport.HTTP, CAPS_RESTART)
    queue_restart(agent, session)
    assert build_push(agent, session, policy=POLICY) is None  # HTTP: only replies
    agent.set_remote_config(CONFIG)
    reply = run(agent, session, a2s(1, CAPS_RESTART)).response
    assert reply.command.type == pb.CommandType_Restart and reply.HasField("command")
    names = [f.name for f, _ in reply.ListFields()]
    assert names == ["instance_uid", "capabilities", "command"]
    after = run(agent, session, a2s(2, CAPS_RESTART)).response
    assert not after.HasField("command") and after.HasField("remote_config")


def test_restart_gives_way_to_a_full_state_request_and_a_goodbye() -> None:
    agent, session = known(Transport.HTTP, CAPS_RESTART)
    queue_restart(agent, session)
    gap = run(agent, session, a2s(7, CAPS_RESTART)).response  # a sequence gap: flag first
    assert gap.flags & SERVER_FLAG_REPORT_FULL_STATE and not gap.HasField("command")
    assert run(agent, session, full(8, CAPS_RESTART)).response.HasField("command")
    queue_restart(agent, session)
    goodbye = a2s(9, CAPS_RESTART, agent_disconnect=pb.AgentDisconnect())
    assert not run(agent, session, goodbye).response.HasField("command")


def test_a_restart_for_an_agent_that_dropped_the_capability_is_not_sent() -> None:
    agent, session = known(Transport.HTTP, CAPS_RESTART)
    queue_restart(agent, session)
    reply = run(agent, session, a2s(1, CAPS_PYTHON)).response  # no longer accepts restarts
    assert not reply.HasField("command")
    assert session.outbox is None


def test_a_queued_command_keeps_ws_heartbeats_off_the_fast_path() -> None:
    agent, session = known(Transport.WS, CAPS_RESTART)
    run(agent, session, a2s(1, CAPS_RESTART))
    assert process_heartbeat(agent, session, 2, CAPS_RESTART)
    queue_restart(agent, session)
    assert not process_heartbeat(agent, session, 3, CAPS_RESTART)
    reply = run(agent, session, a2s(3, CAPS_RESTART)).response
    assert reply.HasField("command")
    run(agent, session, a2s(4, CAPS_RESTART))
    assert process_heartbeat(agent, session, 5, CAPS_RESTART)  # settled again


def test_custom_message_needs_a_declared_capability() -> None:
    agent, session = declaring(Transport.WS, GADGET)
    with pytest.raises(NotAccepted) as info:
        queue_custom_message(agent, session, custom("io.example.other/v1"), max_pending=4)
    assert info.value.code == "capability_not_declared"
    queue_custom_message(agent, session, custom(), max_pending=4)
    push = build_push(agent, session, policy=POLICY)
    assert push is not None
    assert [f.name for f, _ in push.ListFields()] == ["instance_uid", "custom_message"]
    assert push.custom_message == custom()
    assert build_push(agent, session, policy=POLICY) is None


def test_custom_messages_go_one_per_http_reply_in_order_and_are_bounded() -> None:
    agent, session = declaring(Transport.HTTP, GADGET)
    for i in range(3):
        queue_custom_message(agent, session, custom(data=bytes([i])), max_pending=3)
    with pytest.raises(NotAccepted) as info:
        queue_custom_message(agent, session, custom(), max_pending=3)
    assert info.value.code == "too_many_pending"
    got = [run(agent, session, a2s(2 + i)).response.custom_message.data for i in range(4)]
    assert got == [b"\x00", b"\x01", b"\x02", b""]
    assert session.outbox is None


# --- error_response -----------------------------------------------------------------------


def test_error_response_has_nothing_else() -> None:
    resp = error_response(ERROR_BAD_REQUEST, "cannot decode", instance_uid=UID)
    assert [f.name for f, _ in resp.ListFields()] == ["instance_uid", "error_response"]
    assert resp.error_response.type == ERROR_BAD_REQUEST
    assert resp.error_response.error_message == "cannot decode"
    assert not resp.error_response.HasField("retry_info")


def test_error_response_retry_info_in_nanoseconds() -> None:
    resp = error_response(ERROR_UNAVAILABLE, "busy", retry_after_s=30.5)
    assert [f.name for f, _ in resp.ListFields()] == ["error_response"]
    assert resp.error_response.retry_info.retry_after_nanoseconds == 30_500_000_000
    with pytest.raises(ValueError, match="retry_after_s"):
        error_response(ERROR_UNAVAILABLE, "busy", retry_after_s=-1)


def test_error_response_present_even_when_all_defaults() -> None:
    resp = error_response(0, "")
    assert resp.HasField("error_response")
    assert resp.SerializeToString() == b"\x12\x00"


# --- policy, state and events ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"capabilities": 0x2}, "AcceptsStatus"),
        ({"capabilities": 0x81}, "undefined"),
        ({"heartbeat_interval_s": 0}, "heartbeat_interval_s"),
        ({"heartbeat_interval_s": -5}, "heartbeat_interval_s"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
        ({"custom_capabilities": ("",)}, "custom_capabilities"),
    ],
)
def test_policy_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ServerPolicy(**kwargs)


def test_policy_is_frozen_and_comparable() -> None:
    policy = ServerPolicy(custom_capabilities=["a.b/c"])  # type: ignore[arg-type]
    assert policy.custom_capabilities == ("a.b/c",)
    assert policy == ServerPolicy(custom_capabilities=("a.b/c",))
    assert hash(policy) == hash(ServerPolicy(custom_capabilities=("a.b/c",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.heartbeat_interval_s = 1  # type: ignore[misc]


def test_agent_state_requires_16_byte_uid() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        AgentState(b"short")
    agent = AgentState(UID)
    assert agent.wire_uid == UID
    assert agent.sequence_num is None
    assert "AgentState(" in repr(agent)
    assert "Session(" in repr(Session(Transport.HTTP))
    with pytest.raises(AttributeError):
        agent.unknown = 1  # type: ignore[attr-defined]


def test_events_are_frozen_slotted_dataclasses() -> None:
    event = MessageMerged(UID, 1, NOW, frozenset())
    assert not hasattr(event, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.sequence_num = 2  # type: ignore[misc]
    assert event == MessageMerged(instance_uid=UID, sequence_num=1, at=NOW, changed=frozenset())
    assert dataclasses.replace(event, sequence_num=2).sequence_num == 2
    assert repr(event).startswith("MessageMerged(instance_uid=")
    reply = Reply(pb.ServerToAgent(), (event,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.events = ()  # type: ignore[misc]


def test_event_order() -> None:
    agent, session = fresh()
    agent.set_remote_config(CONFIG)
    msg = a2s(
        4,
        flags=AGENT_FLAG_REQUEST_INSTANCE_UID,
        remote_config_status=status(b"x"),
        agent_disconnect=pb.AgentDisconnect(),
    )
    reply = run(agent, session, msg)
    assert [type(e) for e in reply.events] == [
        AgentConnected,
        InstanceUidReassigned,
        MessageMerged,
        StatusChanged,
        RemoteConfigStatusChanged,
        AgentDisconnected,
    ]
    agent, session = known()
    reply = run(agent, session, a2s(5))
    assert [type(e) for e in reply.events] == [MessageMerged, FullStateRequested]


# --- module hygiene -------------------------------------------------------------------------


def test_exports() -> None:
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
    public = {n for n in vars(protocol) if not n.startswith("_")}
    submodules = {"codec"}
    assert public - submodules == set(protocol.__all__)


FORBIDDEN = {
    "trio",
    "anyio",
    "asyncio",
    "starlette",
    "hypercorn",
    "psycopg",
    "socket",
    "time",
    "datetime",
    "random",
    "uuid",
    "secrets",
    "os",
    "logging",
}


def _protocol_sources() -> Iterator[Path]:
    yield from sorted(Path(protocol.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", list(_protocol_sources()), ids=lambda p: p.name)
def test_protocol_is_sans_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots = {node.module.split(".")[0]}
        else:
            continue
        assert not roots & FORBIDDEN, f"{path.name} imports {roots & FORBIDDEN}"
