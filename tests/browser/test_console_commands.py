"""The console's day-2 actions in a real headless Chromium against a real server process and
real WebSocket agents: restarting an agent from its page, sending it a custom message, its
components and custom capabilities shown, and restarting a group's members from the Groups
page with the progress shown."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from opamp_fast.protocol import format_instance_uid, pb
from tests.browser.conftest import api_token
from tests.browser.test_console import (
    console_errors,
    fill,
    flushed_count,
    sign_in,
    text_of,
    wait,
)
from tests.helpers.agents import CAPS_PYTHON_CLIENT, description, open_ws_agent

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CAPS = CAPS_PYTHON_CLIENT | 0x400 | 0x4000  # ... | AcceptsRestartCommand | components
GADGET = "io.example.gadget/v1"


@contextlib.contextmanager
def collector(portal: Any, url: str, name: str) -> Iterator[Any]:
    """A WebSocket agent that accepts restarts, declares a custom capability and reports its
    components."""
    with portal.wrap_async_context_manager(open_ws_agent(url)) as agent:
        agent.caps = CAPS
        available = pb.AvailableComponents(hash=b"build-1")
        available.components["receivers"].sub_component_map["otlp"].SetInParent()
        available.components["exporters"].sub_component_map["debug"].SetInParent()
        msg = agent.message(
            agent_description=description(name),
            available_components=available,
            custom_capabilities=pb.CustomCapabilities(capabilities=[GADGET]),
        )
        portal.call(agent.request, msg)
        yield agent


def api(base: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_token()}"}
    return httpx.Client(base_url=base, headers=headers, timeout=10)


def test_console_restarts_an_agent_and_sends_it_a_custom_message(
    console_server: Any, driver: Any, portal: Any, artifacts: Path
) -> None:
    base = console_server.url
    with collector(portal, base, "col-1") as agent:
        agent_id = format_instance_uid(agent.uid)
        flushed_count(base, 1)
        sign_in(driver, base, api_token(role="operator"))
        wait(driver).until(lambda d: text_of(d, "#count-total") == "1")
        driver.get(f"{base}/ui#/agents/{agent_id}")
        wait(driver).until(lambda d: "col-1" in text_of(d, "#agent-head"))
        wait(driver).until(lambda d: "otlp" in text_of(d, "#components"))
        assert "debug" in text_of(driver, "#components")
        assert GADGET in text_of(driver, "#custom-capabilities-list")
        assert "Last requested: —" in text_of(driver, "#restart-note")

        driver.find_element(By.ID, "restart-form-submit").click()
        wait(driver).until(
            lambda d: "Restart requested (pushed now)" in text_of(d, "#restart-form-msg")
        )
        pushed = portal.call(agent.receive, 5.0)
        assert pushed.command.type == pb.CommandType_Restart
        wait(driver).until(lambda d: "Last requested: —" not in text_of(d, "#restart-note"))

        fill(driver, "custom-capability", GADGET)
        fill(driver, "custom-type", "pause")
        fill(driver, "custom-data", "for 5 min")
        driver.find_element(By.ID, "custom-form-submit").click()
        wait(driver).until(lambda d: "sent (pushed)" in text_of(d, "#custom-form-msg"))
        got = portal.call(agent.receive, 5.0)
        assert (got.custom_message.type, got.custom_message.data) == ("pause", b"for 5 min")
        wait(driver).until(lambda d: "pause" in text_of(d, "#custom-messages"))
        assert base64.b64encode(b"for 5 min").decode() in text_of(driver, "#custom-messages")
        # A capability the agent did not declare: the server's 409, in words.
        fill(driver, "custom-capability", "io.example.other/v1")
        driver.find_element(By.ID, "custom-form-submit").click()
        wait(driver).until(lambda d: "capability_not_declared" in text_of(d, "#custom-form-msg"))
        driver.save_screenshot(str(artifacts / "console-agent-restart.png"))
        assert [e for e in console_errors(driver) if "409" not in e["message"]] == []


def test_console_restarts_a_groups_members(
    console_server: Any, driver: Any, portal: Any, artifacts: Path
) -> None:
    base = console_server.url
    with collector(portal, base, "col-a") as a, collector(portal, base, "col-b") as b:
        flushed_count(base, 2)
        with api(base) as client:
            for agent in (a, b):
                r = client.put(
                    f"/api/agents/{format_instance_uid(agent.uid)}/labels",
                    json={"labels": {"env": "prod"}},
                )
                assert r.status_code == 200, r.text
            r = client.post("/api/configs", json={"name": "col", "files": {"c.yaml": {
                "body": "receivers:\n  otlp: {}\nexporters:\n  kafka: {}\n",
                "content_type": "text/yaml"}}})  # fmt: skip
            assert r.status_code == 201, r.text
            r = client.put(
                "/api/groups/prod?force=true",
                json={"selector": {"env": "prod"}, "config": "col"},
            )
            assert r.status_code == 200, r.text
        sign_in(driver, base, api_token(role="operator"))
        wait(driver).until(lambda d: text_of(d, "#count-total") == "2")
        driver.find_element(By.CSS_SELECTOR, "#nav a[data-page='x/groups']").click()
        row = wait(driver).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-group=prod]"))
        )
        assert "0 can take it, 2 lack components" in row.text
        row.find_element(By.CSS_SELECTOR, "button[data-action=restart]").click()
        assert driver.find_element(By.ID, "group-restart-name").get_attribute("value") == "prod"
        fill(driver, "group-restart-batch", "50")
        fill(driver, "group-restart-pause", "0")
        driver.find_element(By.ID, "group-restart-form-submit").click()
        started = "Restart of prod started: 2 member(s)"
        wait(driver).until(lambda d: started in text_of(d, "#group-restart-form-msg"))
        for agent in (a, b):
            while not (msg := portal.call(agent.receive, 10.0)).HasField("command"):
                pass  # the group's config came first
            assert msg.command.type == pb.CommandType_Restart
        wait(driver, 15).until(
            lambda d: (
                "completed" in text_of(d, "#group-restart-progress")
                and "2 requested" in text_of(d, "#group-restart-progress")
            )
        )
        driver.find_element(By.ID, "group-restart-cancel").click()
        wait(driver).until(lambda d: "restart_not_running" in text_of(d, "#group-restart-form-msg"))
        driver.save_screenshot(str(artifacts / "console-group-restart.png"))
        # The expected refusals only: no restart yet when the row was picked, then the cancel.
        errors = [e["message"] for e in console_errors(driver)]
        assert all("404" in e or "409" in e for e in errors), errors
