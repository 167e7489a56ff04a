"""A group's ``packages``: offered to every member the group decides, over WebSocket
at once and over HTTP on the next poll; an agent's own offer wins; agents that join later get it;
removing it (or the group) withdraws it; a version a group offers cannot be deleted; bad input
changes nothing. Real Postgres, real agents over loopback."""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import httpx
import pytest

from opamp_fast.protocol import pb
from opamp_fast.protocol.codec import format_instance_uid
from tests.helpers.agents import (
    CAPS_PYTHON_CLIENT,
    HTTPAgent,
    description,
    open_ws_agent,
    wait_for,
)
from tests.helpers.config_api import api_client, wait_known

pytestmark = pytest.mark.postgres

PKG_CAPS = CAPS_PYTHON_CLIENT | 0x8 | 0x10  # AcceptsPackages, ReportsPackageStatuses


async def upload(api: httpx.AsyncClient, name: str, version: str) -> None:
    files = {"file": ("pkg.bin", os.urandom(2000), "application/octet-stream")}
    r = await api.post("/api/packages", data={"name": name, "version": version}, files=files)
    assert r.status_code == 201, r.text


def offered(message: pb.ServerToAgent) -> dict[str, str]:
    """Package name -> version of the message's offer ({} when it carries none)."""
    if not message.HasField("packages_available"):
        return {}
    return {n: p.version for n, p in message.packages_available.packages.items()}


async def nothing_pushed(agent: Any, wait_s: float = 0.5) -> None:
    with anyio.move_on_after(wait_s):
        unexpected = await agent.receive(timeout=wait_s + 1)
        pytest.fail(f"unexpected push: {unexpected}")


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"}, body
    return str(body["error"]["code"])


async def put_group(api: httpx.AsyncClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await api.put(f"/api/groups/{name}", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_members_get_the_group_offer_and_an_own_offer_wins(server: Any) -> None:
    async with (
        api_client(server) as api,
        open_ws_agent(server.url) as member,
        open_ws_agent(server.url) as own,
        open_ws_agent(server.url) as outsider,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        await upload(api, "collector", "1.0.0")
        await upload(api, "collector", "2.0.0")
        await upload(api, "probe", "0.1.0")
        poller = HTTPAgent(http, caps=PKG_CAPS)
        for agent, env in ((member, "prod"), (own, "prod"), (outsider, "dev"), (poller, "prod")):
            agent.caps = PKG_CAPS
            reply = await agent.request(agent.message(agent_description=description(env=env)))
            assert not reply.HasField("packages_available")
        r = await api.put(
            f"/api/agents/{format_instance_uid(own.uid)}/packages",
            json={"packages": [{"name": "probe"}]},
        )
        assert r.status_code == 200, r.text
        assert offered(await own.receive()) == {"probe": "0.1.0"}

        started = time.perf_counter()
        body = {
            "selector": {"env": "prod"},
            "packages": [{"name": "collector", "version": "1.0.0"}],
        }
        group = await put_group(api, "prod", body)
        assert group["packages"] == [{"name": "collector", "version": "1.0.0"}]
        assert offered(await member.receive(timeout=2)) == {"collector": "1.0.0"}
        assert time.perf_counter() - started < 2
        assert offered(await poller.heartbeat()) == {"collector": "1.0.0"}
        await nothing_pushed(own)  # its own offer wins
        await nothing_pushed(outsider, 0.1)
        assert not (await outsider.heartbeat()).HasField("packages_available")
        shown = (await api.get("/api/groups/prod")).json()
        assert shown["packages"] == [{"name": "collector", "version": "1.0.0"}]
        listed = (await api.get("/api/groups")).json()["groups"]
        assert listed[0]["packages"] == shown["packages"]

        audit = (await api.get("/api/audit", params={"action": "group.put"})).json()["entries"]
        assert audit[0]["target"] == "group:prod" and audit[0]["actor"] == "alice"
        assert audit[0]["after"]["packages"] == [{"name": "collector", "version": "1.0.0"}]

        # Changing the group's version reaches the members; "latest" is resolved now.
        await put_group(
            api, "prod", {"selector": {"env": "prod"}, "packages": [{"name": "collector"}]}
        )
        assert offered(await member.receive(timeout=2)) == {"collector": "2.0.0"}
        # Withdrawing the agent's own offer hands it to its group.
        r = await api.put(
            f"/api/agents/{format_instance_uid(own.uid)}/packages", json={"packages": []}
        )
        assert r.status_code == 200, r.text
        assert offered(await own.receive(timeout=2)) == {"collector": "2.0.0"}


async def test_later_members_get_it_and_removal_withdraws_it(server: Any) -> None:
    async with api_client(server) as api:
        await upload(api, "collector", "1.0.0")
        await put_group(
            api, "edge", {"selector": {"tier": "edge"}, "packages": [{"name": "collector"}]}
        )
        async with open_ws_agent(server.url) as labelled, open_ws_agent(server.url) as described:
            for agent in (labelled, described):
                agent.caps = PKG_CAPS
                assert not (await agent.full_state()).HasField("packages_available")
            # A label set later makes it a member: pushed at once.
            await wait_known(api, labelled.uid)
            r = await api.put(
                f"/api/agents/{format_instance_uid(labelled.uid)}/labels",
                json={"labels": {"tier": "edge"}},
            )
            assert r.status_code == 200, r.text
            assert offered(await labelled.receive(timeout=2)) == {"collector": "1.0.0"}
            # A description that now matches: offered in the answer.
            reply = await described.request(
                described.message(agent_description=description(tier="edge"))
            )
            assert offered(reply) == {"collector": "1.0.0"}
            uid = described.uid

        # A new session (it never reported our hash) is offered it again.
        async with open_ws_agent(server.url, uid=uid) as again:
            again.caps = PKG_CAPS
            reply = await again.request(again.message(agent_description=description(tier="edge")))
            assert offered(reply) == {"collector": "1.0.0"}

        r = await api.delete("/api/packages/collector/1.0.0")
        assert r.status_code == 409 and error_code(r) == "package_offered"
        assert "edge" in r.json()["error"]["message"]

        # Removing the field withdraws the group's offer.
        group = await put_group(api, "edge", {"selector": {"tier": "edge"}})
        assert group["packages"] == []
        async with open_ws_agent(server.url, uid=uid) as again:
            again.caps = PKG_CAPS
            reply = await again.request(again.message(agent_description=description(tier="edge")))
            assert not reply.HasField("packages_available")

        # So does deleting the group.
        await put_group(
            api, "edge", {"selector": {"tier": "edge"}, "packages": [{"name": "collector"}]}
        )
        async with open_ws_agent(server.url, uid=uid) as again:
            again.caps = PKG_CAPS
            reply = await again.request(again.message(agent_description=description(tier="edge")))
            assert offered(reply) == {"collector": "1.0.0"}
            assert (await api.delete("/api/groups/edge")).status_code == 200
            assert not (await again.heartbeat()).HasField("packages_available")
        async with open_ws_agent(server.url, uid=uid) as again:
            again.caps = PKG_CAPS
            reply = await again.request(again.message(agent_description=description(tier="edge")))
            assert not reply.HasField("packages_available")
        assert (await api.delete("/api/packages/collector/1.0.0")).status_code == 204


async def test_more_specific_group_decides(server: Any) -> None:
    async with api_client(server) as api, open_ws_agent(server.url) as agent:
        await upload(api, "collector", "1.0.0")
        await upload(api, "collector", "2.0.0")
        agent.caps = PKG_CAPS
        await agent.request(agent.message(agent_description=description(env="prod", zone="a")))
        one = [{"name": "collector", "version": "1.0.0"}]
        await put_group(api, "all-prod", {"selector": {"env": "prod"}, "packages": one})
        assert offered(await agent.receive(timeout=2)) == {"collector": "1.0.0"}
        two = [{"name": "collector", "version": "2.0.0"}]
        await put_group(api, "zone-a", {"selector": {"env": "prod", "zone": "a"}, "packages": two})
        assert offered(await agent.receive(timeout=2)) == {"collector": "2.0.0"}
        assert (await api.delete("/api/groups/zone-a")).status_code == 200
        assert offered(await agent.receive(timeout=2)) == {"collector": "1.0.0"}


async def test_bad_input_is_a_json_error_and_changes_nothing(server: Any) -> None:
    async with api_client(server) as api:
        await upload(api, "collector", "1.0.0")
        good = [{"name": "collector", "version": "1.0.0"}]
        await put_group(api, "prod", {"selector": {"env": "prod"}, "packages": good})
        before = (await api.get("/api/groups/prod")).json()
        audits = len((await api.get("/api/audit")).json()["entries"])
        bad: list[tuple[Any, int, str]] = [
            ("collector", 400, "invalid_body"),
            ({"name": "collector"}, 400, "invalid_body"),
            ([{"name": "no spaces"}], 400, "invalid_parameter"),
            ([{"name": "collector", "version": "one"}], 400, "invalid_parameter"),
            ([{"name": "collector", "extra": 1}], 400, "invalid_parameter"),
            ([{"name": "collector"}, {"name": "collector"}], 400, "invalid_parameter"),
            ([{"name": "collector", "version": "9.9.9"}], 404, "package_not_found"),
            ([{"name": "ghost"}], 404, "package_not_found"),
        ]
        for packages, status, code in bad:
            body = {"selector": {"env": "dev"}, "packages": packages}
            r = await api.put("/api/groups/prod", json=body)
            assert r.status_code == status, (packages, r.text)
            assert error_code(r) == code, packages
        r = await api.put("/api/groups/new", json={"packages": [{"name": "ghost"}]})
        assert r.status_code == 404
        assert (await api.get("/api/groups/new")).status_code == 404
        assert (await api.get("/api/groups/prod")).json() == before
        assert len((await api.get("/api/audit")).json()["entries"]) == audits


async def test_members_on_another_instance_get_it(start_server: Any, make_settings: Any) -> None:
    servers = []
    for name in ("a", "b"):
        running = await start_server(make_settings(instance_id=name))
        with anyio.fail_after(10):
            await running.services.cluster.listening.wait()
        servers.append(running)
    a, b = servers
    async with api_client(a) as api, open_ws_agent(b.url) as agent:
        await upload(api, "collector", "1.0.0")
        agent.caps = PKG_CAPS
        await agent.request(agent.message(agent_description=description(env="prod")))
        packages = [{"name": "collector"}]
        await put_group(api, "prod", {"selector": {"env": "prod"}, "packages": packages})
        assert offered(await agent.receive(timeout=3)) == {"collector": "1.0.0"}
        await put_group(api, "prod", {"selector": {"env": "prod"}})
        await wait_for(lambda: not b.services.packages.group_offer("prod"))
        uid = agent.uid
    async with open_ws_agent(b.url, uid=uid) as again:
        again.caps = PKG_CAPS
        reply = await again.request(again.message(agent_description=description(env="prod")))
        assert not reply.HasField("packages_available")
