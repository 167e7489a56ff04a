"""Minimal real OpAMP peers for tests: a WebSocket agent (``wsclient``, anyio + wsproto) and an
HTTP agent (httpx), speaking our generated protobuf classes over loopback."""

from __future__ import annotations

import contextlib
import gzip
import os
from typing import Any

import anyio
import httpx

from opamp_fast.protocol import pb
from tests.helpers.wsclient import WSClient, open_ws

CAPS_PYTHON_CLIENT = 0x3007  # ReportsStatus|AcceptsRemoteConfig|ReportsEffectiveConfig|...Heartbeat


def new_uid() -> bytes:
    return os.urandom(16)


def description(name: str = "svc", **extra: str) -> pb.AgentDescription:
    desc = pb.AgentDescription()
    kv = desc.identifying_attributes.add()
    kv.key = "service.name"
    kv.value.string_value = name
    for key, value in extra.items():
        item = desc.non_identifying_attributes.add()
        item.key = key
        item.value.string_value = value
    return desc


def ws_url(server_url: str, path: str = "/v1/opamp") -> str:
    return server_url.replace("http://", "ws://") + path


class WSAgent:
    """One agent over one WebSocket. ``send`` frames with the 0x00 header unless ``legacy``."""

    def __init__(self, ws: WSClient, uid: bytes, caps: int = CAPS_PYTHON_CLIENT):
        self.ws = ws
        self.uid = uid
        self.caps = caps
        self.seq = 0

    def message(self, **fields: Any) -> pb.AgentToServer:
        msg = pb.AgentToServer(instance_uid=self.uid, sequence_num=self.seq, capabilities=self.caps)
        for key, value in fields.items():
            if isinstance(value, int | bytes | str):
                setattr(msg, key, value)
            else:
                getattr(msg, key).CopyFrom(value)
        self.seq += 1
        return msg

    async def send(self, msg: pb.AgentToServer, *, legacy: bool = False) -> None:
        payload = msg.SerializeToString()
        await self.ws.send_message(payload if legacy else b"\x00" + payload)

    async def receive(self, timeout: float = 5.0) -> pb.ServerToAgent:
        with anyio.fail_after(timeout):
            data = await self.ws.get_message()
        assert isinstance(data, bytes), "server sent a text frame"
        assert data[:1] == b"\x00", "server frames must carry the 0x00 header"
        return pb.ServerToAgent.FromString(data[1:])

    async def request(self, msg: pb.AgentToServer, **kw: Any) -> pb.ServerToAgent:
        await self.send(msg, **kw)
        return await self.receive()

    async def full_state(self, name: str = "svc") -> pb.ServerToAgent:
        return await self.request(self.message(agent_description=description(name)))

    async def heartbeat(self) -> pb.ServerToAgent:
        return await self.request(self.message())


@contextlib.asynccontextmanager
async def open_ws_agent(server_url: str, uid: bytes | None = None, **kw: Any) -> Any:
    """``async with open_ws_agent(url) as agent`` yields a :class:`WSAgent`."""
    async with open_ws(ws_url(server_url), **kw) as ws:
        yield WSAgent(ws, uid or new_uid())


class HTTPAgent:
    def __init__(
        self,
        client: httpx.AsyncClient,
        uid: bytes | None = None,
        caps: int = CAPS_PYTHON_CLIENT,
        path: str = "/v1/opamp",
    ) -> None:
        self.client = client
        self.uid = uid or new_uid()
        self.caps = caps
        self.seq = 0
        self.path = path

    message = WSAgent.message

    async def post(
        self,
        msg: pb.AgentToServer,
        *,
        gzip_body: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = msg.SerializeToString()
        hdrs = {"Content-Type": "application/x-protobuf"}
        if gzip_body:
            body = gzip.compress(body)
            hdrs["Content-Encoding"] = "gzip"
        hdrs.update(headers or {})
        return await self.client.post(self.path, content=body, headers=hdrs)

    async def request(self, msg: pb.AgentToServer, **kw: Any) -> pb.ServerToAgent:
        response = await self.post(msg, **kw)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/x-protobuf"
        return pb.ServerToAgent.FromString(response.content)

    async def full_state(self, name: str = "svc") -> pb.ServerToAgent:
        return await self.request(self.message(agent_description=description(name)))

    async def heartbeat(self) -> pb.ServerToAgent:
        return await self.request(self.message())


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate()`` (sync) until true; fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(interval)


class HandlerSpy:
    """Decorates the server's AgentHandler through the public seam (``services.opamp.handler``):
    records every request and response, and can replace replies to emulate a shedding server.
    Everything else is the real handler. It declines the heartbeat fast path, so that every
    message reaches ``on_message`` and is recorded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[pb.AgentToServer] = []
        self.responses: list[pb.ServerToAgent] = []
        self.override: pb.ServerToAgent | None = None

    def on_connecting(self, request: Any) -> Any:
        return self.inner.on_connecting(request)

    def on_connected(self, conn: Any) -> None:
        self.inner.on_connected(conn)

    def on_read_message_error(self, conn: Any, error: Any) -> None:
        self.inner.on_read_message_error(conn, error)

    def on_connection_close(self, conn: Any) -> None:
        self.inner.on_connection_close(conn)

    def on_heartbeat(self, conn: Any, uid: bytes, seq: int, caps: int) -> bytes | None:
        return None

    def on_message(self, conn: Any, msg: pb.AgentToServer) -> pb.ServerToAgent:
        self.requests.append(msg)
        response = self.override if self.override is not None else self.inner.on_message(conn, msg)
        self.responses.append(response)
        return response

    @classmethod
    def install(cls, running: Any) -> HandlerSpy:
        spy = cls(running.services.opamp.handler)
        running.services.opamp.handler = spy
        return spy
