"""locust scenarios: REST users and OpAMP agents (WebSocket and plain HTTP).

Why locust next to the simulator: the simulator holds tens of thousands of agents cheaply; locust
mixes operators (REST pages) with agents and reports per-endpoint latency the usual way.

locust runs on gevent, so nothing here imports trio (the simulator does): the WebSocket agent is
the sans-IO ``wsproto`` over a plain (gevent-patched) socket, and ``opamp_fast.protocol`` is
runtime-free. OpAMP users only target loopback hosts, like the simulator.

Headless example (a server on 127.0.0.1:4320, a token from ``opamp-fast token --subject load``):

    OPAMP_FAST_TOKEN=$(opamp-fast token --subject load) \
    locust -f loadtest/locustfile.py --host http://127.0.0.1:4320 \
        -u 50 -r 10 -t 20s --headless --only-summary

Environment: ``OPAMP_FAST_TOKEN`` (REST bearer), ``OPAMP_HEARTBEAT_S`` (agent heartbeat interval,
default 5), ``OPAMP_PATH`` (default ``/v1/opamp``).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import wsproto
import wsproto.events as wse
from locust import HttpUser, User, between, constant, events, task

from opamp_fast.protocol import (
    SERVER_FLAG_REPORT_FULL_STATE,
    decode_ws_payload,
    encode_ws_frame,
    pb,
)

assert "trio" not in sys.modules, "the locustfile must stay free of trio (gevent runtime)"

TOKEN = os.environ.get("OPAMP_FAST_TOKEN", "")
HEARTBEAT_S = float(os.environ.get("OPAMP_HEARTBEAT_S", "5"))
OPAMP_PATH = os.environ.get("OPAMP_PATH", "/v1/opamp")
CAPABILITIES = 0x3907  # Collector-like, plus connection settings and health (see simulator.py)
_SERVICES = ("checkout", "cart", "payments", "frontend", "search", "inventory")


def _loopback_host(host: str) -> tuple[str, int]:
    parts = urlsplit(host)
    name = parts.hostname or ""
    addrs = {info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)}
    if not addrs or not all(ipaddress.ip_address(a).is_loopback for a in addrs):
        raise RuntimeError(f"OpAMP agent users only target loopback servers, not {host!r}")
    return name, parts.port or 4320


def full_state(uid: bytes, seq: int) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=CAPABILITIES)
    desc = msg.agent_description
    for key, value in (
        ("service.name", random.choice(_SERVICES)),
        ("service.instance.id", str(uuid.UUID(bytes=uid))),
    ):
        kv = desc.identifying_attributes.add()
        kv.key, kv.value.string_value = key, value
    for key, value in (("host.name", socket.gethostname()), ("os.type", "linux")):
        kv = desc.non_identifying_attributes.add()
        kv.key, kv.value.string_value = key, value
    msg.health.healthy = True
    return msg


class _Agent:
    """Shared agent state for both transports: uid, sequence number, full state when asked."""

    def __init__(self) -> None:
        self.uid = uuid.uuid4().bytes
        self.seq = 0
        self.full_state_due = True

    def next_message(self) -> tuple[str, bytes]:
        if self.full_state_due:
            msg, name = full_state(self.uid, self.seq), "full state"
            self.full_state_due = False
        else:
            msg = pb.AgentToServer(
                instance_uid=self.uid, sequence_num=self.seq, capabilities=CAPABILITIES
            )
            name = "heartbeat"
        self.seq += 1
        return name, msg.SerializeToString()

    def goodbye(self) -> bytes:
        msg = pb.AgentToServer(
            instance_uid=self.uid, sequence_num=self.seq, capabilities=CAPABILITIES
        )
        msg.agent_disconnect.SetInParent()
        self.seq += 1
        data: bytes = msg.SerializeToString()
        return data

    def handle(self, resp: pb.ServerToAgent) -> None:
        if resp.flags & SERVER_FLAG_REPORT_FULL_STATE:
            self.full_state_due = True


class OpAMPWebSocketUser(User):
    """One agent over one WebSocket (wsproto over a socket); a heartbeat per task run."""

    weight = 8
    wait_time = constant(HEARTBEAT_S)

    def on_start(self) -> None:
        self.agent = _Agent()
        self.sock: socket.socket | None = None
        self._connect()

    def _fire(self, name: str, started: float, length: int, exc: Exception | None) -> None:
        events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )

    def _connect(self) -> None:
        host, port = _loopback_host(self.host or "http://127.0.0.1:4320")
        started = time.perf_counter()
        try:
            self.sock = socket.create_connection((host, port), timeout=10)
            self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            self.sock.sendall(self.ws.send(wse.Request(host=f"{host}:{port}", target=OPAMP_PATH)))
            self._wait(wse.AcceptConnection)
            self._fire("connect", started, 0, None)
        except Exception as exc:  # report to locust, retry on the next task run
            self._fire("connect", started, 0, exc)
            self._drop()
            return
        self.agent.full_state_due = True
        self._exchange()

    def _wait(self, kind: type) -> Any:
        assert self.sock is not None
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, wse.RejectConnection):
                    raise ConnectionError(f"upgrade refused: HTTP {event.status_code}")
                if isinstance(event, wse.CloseConnection):
                    raise ConnectionError(f"server closed with {event.code}")
                if isinstance(event, wse.Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                if isinstance(event, kind):
                    return event

    def _exchange(self) -> None:
        if self.sock is None:
            self._connect()
            return
        name, payload = self.agent.next_message()
        started = time.perf_counter()
        try:
            self.sock.sendall(self.ws.send(wse.Message(data=encode_ws_frame(payload))))
            event = self._wait(wse.BytesMessage)
            resp = pb.ServerToAgent.FromString(decode_ws_payload(bytes(event.data)))
            self.agent.handle(resp)
        except Exception as exc:
            self._fire(name, started, 0, exc)
            self._drop()
            return
        self._fire(name, started, len(event.data), None)

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    @task
    def heartbeat(self) -> None:
        self._exchange()

    def on_stop(self) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendall(self.ws.send(wse.Message(data=encode_ws_frame(self.agent.goodbye()))))
            self._wait(wse.BytesMessage)
            self.sock.sendall(self.ws.send(wse.CloseConnection(code=1000)))
        except Exception:  # the run is ending; the server marks the agent offline on close
            pass
        self._drop()


class OpAMPHttpUser(HttpUser):
    """One agent polling over plain HTTP (protobuf POSTs on a keep-alive connection)."""

    weight = 1
    wait_time = constant(HEARTBEAT_S)

    def on_start(self) -> None:
        _loopback_host(self.host or "")
        self.agent = _Agent()
        self.poll()

    def _post(self, name: str, body: bytes) -> None:
        with self.client.post(
            OPAMP_PATH,
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
            name=f"POST {OPAMP_PATH} ({name})",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            try:
                self.agent.handle(pb.ServerToAgent.FromString(resp.content or b""))
            except Exception as exc:
                resp.failure(f"undecodable ServerToAgent: {exc}")

    @task
    def poll(self) -> None:
        name, body = self.agent.next_message()
        self._post(name, body)

    def on_stop(self) -> None:
        self._post("agent_disconnect", self.agent.goodbye())


class RestUser(HttpUser):
    """An operator: fleet list, status summary and connection-history pages (bearer token)."""

    weight = 1
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {TOKEN}"
        self.agent_ids: list[str] = []
        self.list_agents()

    @task(3)
    def list_agents(self) -> None:
        with self.client.get(
            "/api/agents?limit=50", name="/api/agents", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            ids = [a["id"] for a in resp.json().get("agents", [])]
            if ids:
                self.agent_ids = ids

    @task(3)
    def status_summary(self) -> None:
        self.client.get("/api/agents/status/summary")

    @task(2)
    def connection_history(self) -> None:
        if not self.agent_ids:
            return
        agent_id = random.choice(self.agent_ids)
        path = f"/api/agents/{agent_id}/connection-history?limit=20"
        with self.client.get(
            path, name="/api/agents/{id}/connection-history", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            cursor = resp.json().get("next_cursor")
        if cursor:  # the next page, keyset pagination
            self.client.get(
                f"{path}&cursor={cursor}", name="/api/agents/{id}/connection-history (page 2)"
            )
