"""REST helpers for the configuration-management tests: tokens with roles, clients, waits."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from opamp_fast.auth import load_key_material, mint_token
from opamp_fast.protocol.codec import format_instance_uid
from opamp_fast.settings import Settings
from tests.helpers.agents import wait_for

YAML = "text/yaml"


def token(settings: Settings, *, role: str | None = None, sub: str = "alice") -> str:
    return mint_token(
        load_key_material(settings),
        subject=sub,
        ttl_s=3600,
        issuer=settings.api_jwt_issuer,
        audience=settings.api_jwt_audience,
        role=role,
    )


@contextlib.asynccontextmanager
async def api_client(
    server: Any, *, role: str | None = "operator", sub: str = "alice", verify: Any = True
) -> AsyncIterator[httpx.AsyncClient]:
    """``verify``: what httpx checks a TLS server with (an ``ssl.SSLContext`` for a test CA)."""
    headers = {"Authorization": f"Bearer {token(server.services.settings, role=role, sub=sub)}"}
    async with httpx.AsyncClient(
        base_url=server.url, timeout=10, headers=headers, verify=verify
    ) as client:
        yield client


def files(body: str, name: str = "collector.yaml") -> dict[str, Any]:
    return {name: {"body": body, "content_type": YAML}}


async def create_config(api: httpx.AsyncClient, name: str, body: str) -> dict[str, Any]:
    r = await api.post("/api/configs", json={"name": name, "files": files(body)})
    assert r.status_code in (200, 201), r.text
    return dict(r.json()["version"])


async def wait_known(api: httpx.AsyncClient, uid: bytes, timeout: float = 10.0) -> None:
    """Until the writer stored the agent (its row exists)."""
    agent_id = format_instance_uid(uid)
    seen: list[int] = []

    async def probe() -> None:
        r = await api.get(f"/api/agents/{agent_id}")
        seen[:] = [r.status_code]

    import anyio

    with anyio.fail_after(timeout):
        while True:
            await probe()
            if seen == [200]:
                return
            await anyio.sleep(0.05)


async def agent_detail(api: httpx.AsyncClient, uid: bytes) -> dict[str, Any]:
    r = await api.get(f"/api/agents/{format_instance_uid(uid)}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def wait_remote_status(
    api: httpx.AsyncClient, uid: bytes, status: str, timeout: float = 10.0
) -> dict[str, Any]:
    import anyio

    with anyio.fail_after(timeout):
        while True:
            detail = await agent_detail(api, uid)
            rc = detail.get("remote_config") or {}
            if rc.get("status") == status:
                return dict(rc)
            await anyio.sleep(0.05)


__all__ = [
    "agent_detail",
    "api_client",
    "create_config",
    "files",
    "token",
    "wait_for",
    "wait_known",
    "wait_remote_status",
]
