"""What one agent can make the server keep is bounded: a description with 200,000
attributes or an oversized status part is refused with a clear BadRequest, nothing of it is
kept, and the agent's previous state is intact."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from opamp_fast.protocol import pb
from tests.helpers.agents import HTTPAgent, description, open_ws_agent
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def huge_description(attributes: int) -> pb.AgentDescription:
    desc = description("huge")
    for i in range(attributes):
        kv = desc.non_identifying_attributes.add()
        kv.key = f"attribute.{i}"
        kv.value.string_value = "x" * 16
    return desc


async def test_huge_description_is_refused_and_nothing_kept(server: Any) -> None:
    registry = server.services.registry
    async with open_ws_agent(server.url) as agent:
        reply = await agent.request(agent.message(agent_description=huge_description(200_000)))
        assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
        assert "exceeds what the server keeps" in reply.error_response.error_message
        assert registry.get(agent.uid) is None  # nothing was created for it
        # The socket survives: a sane description is served.
        assert (await agent.full_state("sane")).instance_uid == agent.uid
        assert registry.get(agent.uid).online
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        poller = HTTPAgent(http)
        refused = await poller.request(
            poller.message(agent_description=huge_description(2_000))  # 2,000 > 1,024
        )
        assert refused.HasField("error_response")
        assert registry.get(poller.uid) is None


async def test_oversized_status_part_keeps_the_previous_one(server: Any) -> None:
    registry = server.services.registry
    async with open_ws_agent(server.url) as agent:
        small = pb.EffectiveConfig()
        small.config_map.config_map["c.yaml"].body = b"receivers: {}\n"
        await agent.request(agent.message(agent_description=description(), effective_config=small))
        big = pb.EffectiveConfig()
        big.config_map.config_map["c.yaml"].body = b"x" * (2 * 1024 * 1024)
        reply = await agent.request(agent.message(effective_config=big))
        assert reply.HasField("error_response")
        assert "effective_config" in reply.error_response.error_message
        kept = registry.get(agent.uid).state.effective_config
        assert kept.config_map.config_map["c.yaml"].body == b"receivers: {}\n"
        assert (await agent.heartbeat()).instance_uid == agent.uid  # and it carries on
