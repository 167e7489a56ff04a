"""The web console and /docs in a real headless Chromium against a real server process, real
Postgres and real OpAMP agents: sign-in, live counts and lists, agent detail,
error messages, and no request leaving the machine."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import psycopg
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from opamp_fast.protocol import format_instance_uid, pb
from tests.browser.conftest import SECRET, api_token
from tests.helpers.agents import HTTPAgent, open_ws_agent

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LOCAL_HOSTS = {"127.0.0.1"}


class Requests:
    """Every URL the browser requested (Chrome's performance log, read incrementally)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.urls: list[str] = []

    def collect(self) -> list[str]:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.urls.append(message["params"]["request"]["url"])
        return self.urls

    def external(self) -> list[str]:
        out = []
        for url in self.collect():
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about"):
                continue
            if parts.hostname not in LOCAL_HOSTS:
                out.append(url)
        return out


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver: Any, timeout: float = 10) -> WebDriverWait:
    # Live pages re-render: an element found a moment ago may be replaced before it is read.
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def text_of(driver: Any, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def sign_in(driver: Any, base: str, token: str) -> None:
    driver.get(base + "/ui")
    box = wait(driver).until(ec.visibility_of_element_located((By.ID, "token")))
    box.clear()
    box.send_keys(token)
    driver.find_element(By.ID, "signin-button").click()


@contextlib.contextmanager
def ws_agent(portal: Any, url: str, name: str, **attrs: str) -> Iterator[Any]:
    with portal.wrap_async_context_manager(open_ws_agent(url)) as agent:
        msg = agent.message()
        msg.agent_description.identifying_attributes.add(
            key="service.name"
        ).value.string_value = name
        for key, value in attrs.items():
            kv = msg.agent_description.identifying_attributes.add(key=key)
            kv.value.string_value = value
        portal.call(agent.request, msg)
        yield agent


def flushed_count(base: str, expected_online: int) -> None:
    """Wait until the server's stored summary says so (the writer flushes every 0.1 s)."""
    headers = {"Authorization": f"Bearer {api_token()}"}
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(base + "/api/agents/status/summary", headers=headers)
        if r.json()["online"] == expected_online or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def test_console_sign_in_live_fleet_and_detail(
    console_server: Any, driver: Any, portal: Any, artifacts: Path
) -> None:
    base = console_server.url
    requests = Requests(driver)
    with (
        ws_agent(portal, base, "checkout", **{"service.version": "1.4.0"}),
        ws_agent(portal, base, "checkout", **{"service.version": "1.4.0"}),
    ):

        async def http_poll() -> None:
            async with httpx.AsyncClient(base_url=base) as client:
                await HTTPAgent(client).full_state("poller")

        portal.call(http_poll)
        flushed_count(base, 3)

        # A wrong token: a clear message, still on the sign-in form.
        sign_in(driver, base, "not-a-token")
        wait(driver).until(lambda d: "rejected" in text_of(d, "#signin-error"))
        rejected = console_errors(driver)  # Chrome logs the 401 response itself, nothing else
        assert [e["source"] for e in rejected] == ["network"] and "401" in rejected[0]["message"]
        sign_in(driver, base, api_token())
        wait(driver).until(lambda d: text_of(d, "#count-total") == "3")
        assert text_of(driver, "#count-online") == "3"
        assert text_of(driver, "#count-offline") == "0"
        transports = {
            row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[
                1
            ].text
            for row in driver.find_elements(By.CSS_SELECTOR, "#by-transport tr")
        }
        assert transports == {"ws": "2", "http": "1"}
        assert "1.4.0" in text_of(driver, "#by-version")
        wait(driver).until(lambda d: "live" == text_of(d, "#live"))
        assert driver.find_elements(By.CSS_SELECTOR, "#chart svg polyline")
        overview_png = artifacts / "console-overview.png"
        driver.save_screenshot(str(overview_png))
        print(f"\nscreenshot: {overview_png}")

        # The agent list, then an agent connects: it appears without a reload, within 2 s.
        driver.find_element(By.CSS_SELECTOR, "#nav a[data-page=agents]").click()
        wait(driver).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#agent-rows tr[data-agent]")) == 3
        )
        driver.execute_script("window.__marker = 1")  # a reload would lose it
        with ws_agent(portal, base, "newcomer") as newcomer:
            agent_id = format_instance_uid(newcomer.uid)
            row = wait(driver, 2).until(ec.presence_of_element_located((By.ID, "row-" + agent_id)))
            assert "online" in row.text and "newcomer" in row.text
        wait(driver, 2).until(lambda d: "offline" in d.find_element(By.ID, "row-" + agent_id).text)
        assert driver.execute_script("return window.__marker") == 1

        # Its detail page: description, capabilities and its connection history.
        driver.find_element(By.CSS_SELECTOR, f"#row-{agent_id} a").click()
        wait(driver).until(lambda d: "newcomer" in text_of(d, "#agent-head"))
        wait(driver).until(lambda d: "connection closed" in text_of(d, "#history"))
        assert "offline" in text_of(driver, "#agent-status")
        assert "ReportsStatus" in text_of(driver, "#capabilities")
        detail_png = artifacts / "console-agent-detail.png"
        driver.save_screenshot(str(detail_png))
        print(f"screenshot: {detail_png}")

        # Live on the detail page too: the same uid reconnects.
        async def reconnect() -> None:
            async with open_ws_agent(base, uid=newcomer.uid) as again:
                await again.full_state("newcomer")
                with_status = again.message()
                await again.request(with_status)

        portal.call(reconnect)
        wait(driver, 3).until(lambda d: text_of(d, "#history").count("connection closed") >= 2)

    assert requests.external() == []
    assert console_errors(driver) == []


def test_console_errors_narrow_window_and_keyboard(console_server: Any, driver: Any) -> None:
    base = console_server.url
    driver.set_window_size(420, 800)
    expired = api_token(ttl_s=1)
    time.sleep(1.5)
    sign_in(driver, base, expired)
    wait(driver).until(lambda d: "expired" in text_of(d, "#signin-error"))

    # A token that expires while the console is open: back to sign-in, saying why.
    sign_in(driver, base, api_token(ttl_s=3))
    wait(driver).until(lambda d: text_of(d, "#count-total") == "0")
    wait(driver, 8).until(lambda d: "expired" in text_of(d, "#signin-error"))
    assert driver.find_element(By.ID, "token").is_displayed()

    # Keyboard only: the token box has the focus on arrival, Tab reaches the button, Enter
    # signs in; then the skip link is the first stop of the page.
    driver.get(base + "/ui")
    wait(driver).until(lambda d: d.switch_to.active_element.get_attribute("id") == "token")
    active = driver.switch_to.active_element
    active.send_keys(api_token())
    active.send_keys(Keys.TAB)
    assert driver.switch_to.active_element.text == "Sign in"
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait(driver).until(lambda d: text_of(d, "#count-total") == "0")
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.text == "Skip to content"
    nav = driver.find_element(By.ID, "nav")
    assert nav.is_displayed()
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 420, f"the page scrolls sideways at 420 px ({width} px wide)"
    errors = [e for e in console_errors(driver) if "401" not in e["message"]]
    assert errors == []  # the expected 401s are the only complaints


def test_docs_render_operations_offline(console_server: Any, driver: Any) -> None:
    requests = Requests(driver)
    driver.get(console_server.url + "/docs")
    wait(driver, 20).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")) >= 8
    )
    paths = {
        e.text.replace("\u200b", "")
        for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert "/api/agents" in paths and "/api/events" in paths
    urls = requests.collect()
    assert any(u.endswith("/docs/static/swagger-ui-bundle.js") for u in urls)
    assert any(u.endswith("/openapi.json") for u in urls)
    assert requests.external() == []
    assert console_errors(driver) == []


def fill(driver: Any, element_id: str, text: str) -> None:
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(text)


def test_console_operator_actions_and_viewer_refusal(
    console_server: Any, driver: Any, portal: Any, artifacts: Path
) -> None:
    """As an operator: a config version from the Configs page, a group selecting a label and
    assigning it from the Groups page, the label set on a connected agent from its detail page,
    and the agent's remote config shown there once it applies it; the disconnect form (admin)
    disabled for the operator. A viewer sees every form disabled, with the role it needs."""
    base = console_server.url
    with ws_agent(portal, base, "web-1") as agent:
        agent_id = format_instance_uid(agent.uid)
        flushed_count(base, 1)
        sign_in(driver, base, api_token(role="operator"))
        wait(driver).until(lambda d: text_of(d, "#count-total") == "1")
        assert driver.find_elements(By.CSS_SELECTOR, "#nav a[data-page='x/audit']")

        # Configs: create version 1 from the form.
        driver.find_element(By.CSS_SELECTOR, "#nav a[data-page='x/configs']").click()
        wait(driver).until(ec.visibility_of_element_located((By.ID, "config-name")))
        fill(driver, "config-name", "web")
        fill(driver, "config-file", "collector.yaml")
        fill(driver, "config-body", "receivers: {otlp: {}}\n")
        driver.find_element(By.ID, "config-form-submit").click()
        wait(driver).until(lambda d: "Created version 1 of web" in text_of(d, "#config-form-msg"))
        wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-config=web]"))

        # Groups: env=prod gets config web (keyboard: Enter in a field submits the form).
        driver.find_element(By.CSS_SELECTOR, "#nav a[data-page='x/groups']").click()
        wait(driver).until(ec.visibility_of_element_located((By.ID, "group-name")))
        fill(driver, "group-selector", "env=prod")
        fill(driver, "group-config", "web")
        fill(driver, "group-name", "prod-web" + Keys.ENTER)
        wait(driver).until(lambda d: "Saved group prod-web" in text_of(d, "#group-form-msg"))
        row = wait(driver).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-group=prod-web]"))
        )
        assert "web v1" in row.text and "env=prod" in row.text
        driver.save_screenshot(str(artifacts / "console-groups.png"))

        # The agent's detail page: set the label; the server pushes the config to the agent.
        driver.get(f"{base}/ui#/agents/{agent_id}")
        wait(driver).until(lambda d: "web-1" in text_of(d, "#agent-head"))
        # An operator may label and pin, not disconnect (admin): that form says so.
        assert text_of(driver, "#whoami").endswith("(operator)")
        assert not driver.find_element(By.ID, "disconnect-form-submit").is_enabled()
        assert "Needs the admin role" in text_of(driver, "#disconnect-form-role")
        fill(driver, "labels", "env=prod")
        driver.find_element(By.ID, "labels-form-submit").click()
        wait(driver).until(lambda d: "Labels saved" in text_of(d, "#labels-form-msg"))
        pushed = portal.call(agent.receive, 5.0)
        assert b"otlp" in pushed.remote_config.config.config_map["collector.yaml"].body
        status = pb.RemoteConfigStatus(
            last_remote_config_hash=pushed.remote_config.config_hash,
            status=1,  # type: ignore[arg-type]  # APPLIED
        )
        portal.call(agent.send, agent.message(remote_config_status=status))
        wait(driver).until(
            lambda d: all(
                s in text_of(d, "#remote-config") for s in ("web v1", "applied", "group prod-web")
            )
        )
        driver.execute_script("document.getElementById('remote-config').scrollIntoView()")
        driver.save_screenshot(str(artifacts / "console-agent-actions.png"))
        assert console_errors(driver) == []

        # A viewer: the forms are there, disabled, and say which role they need; nothing was
        # sent, so no 403 either.
        driver.find_element(By.ID, "signout").click()
        sign_in(driver, base, api_token(role="viewer"))
        wait(driver).until(lambda d: text_of(d, "#count-total") == "1")
        assert text_of(driver, "#whoami").endswith("(viewer)")
        assert driver.find_elements(By.CSS_SELECTOR, "#nav a[data-page='x/configs']")
        assert not driver.find_elements(By.CSS_SELECTOR, "#nav a[data-page='x/audit']")
        driver.get(base + "/ui#/x/configs")
        wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-config=web]"))
        assert not driver.find_element(By.ID, "config-form-submit").is_enabled()
        assert not driver.find_element(By.ID, "config-body").is_enabled()
        note = text_of(driver, "#config-form-role")
        assert note == "Needs the operator role; this token is a viewer.", note
        driver.get(base + "/ui#/x/configs/web")
        wait(driver).until(ec.presence_of_element_located((By.ID, "config-delete")))
        assert not driver.find_element(By.ID, "config-delete").is_enabled()
        assert console_errors(driver) == []


def test_console_packages_audit_and_filters(
    launch: Any, driver: Any, tmp_path: Path, artifacts: Path
) -> None:
    """What the other tests do not visit, as an operator: an agent filter with nothing to show,
    a package uploaded from its form (progress over XMLHttpRequest), its versions page and a
    two-press delete, a config's detail page, pinning and unpinning an agent, a group loaded
    into its form by Edit, and the audit log filtered; no console error on any of them."""
    server = launch(api_jwt_secret=SECRET, package_store=str(tmp_path / "packages"))
    anyio.run(server.ready)
    base = server.url
    requests = Requests(driver)
    headers = {"Authorization": f"Bearer {api_token(role='operator')}"}
    files = {"collector.yaml": {"body": "receivers: {otlp: {}}\n", "content_type": "text/yaml"}}
    created = httpx.post(
        base + "/api/configs", headers=headers, json={"name": "web", "files": files}
    )
    assert created.status_code in (200, 201), created.text
    group = {"selector": {"env": "prod"}, "config": "web"}
    saved = httpx.put(base + "/api/groups/prod-web", headers=headers, json=group)
    assert saved.status_code == 200, saved.text

    async def poll() -> str:
        async with httpx.AsyncClient(base_url=base) as client:
            agent = HTTPAgent(client)
            await agent.full_state("poller")
            return format_instance_uid(agent.uid)

    agent_id = anyio.run(poll)
    flushed_count(base, 1)
    sign_in(driver, base, api_token(role="operator"))
    wait(driver).until(lambda d: text_of(d, "#count-total") == "1")

    # Agents: a filter from the form goes into the address; nothing matches.
    driver.find_element(By.CSS_SELECTOR, "#nav a[data-page=agents]").click()
    wait(driver).until(ec.visibility_of_element_located((By.ID, "search")))
    fill(driver, "search", "nobody" + Keys.ENTER)
    wait(driver).until(lambda d: "q=nobody" in d.current_url)
    wait(driver).until(lambda d: "No agents match." in text_of(d, "#agent-rows"))
    assert text_of(driver, "#agent-total") == "0 agents"

    # Packages: upload a version from the form, then its own page.
    artifact = tmp_path / "collector.tar.gz"
    artifact.write_bytes(b"\x1f\x8b" + b"x" * 4096)
    driver.find_element(By.CSS_SELECTOR, "#nav a[data-page='x/packages']").click()
    wait(driver).until(ec.visibility_of_element_located((By.ID, "package-name")))
    fill(driver, "package-name", "collector")
    fill(driver, "package-version", "1.0.0")
    driver.find_element(By.ID, "package-file").send_keys(str(artifact))
    driver.find_element(By.ID, "package-form-submit").click()
    wait(driver).until(lambda d: "Uploaded collector 1.0.0" in text_of(d, "#package-form-msg"))
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-package=collector]"))
    driver.find_element(By.CSS_SELECTOR, "tr[data-package=collector] a").click()
    row = wait(driver).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-version='1.0.0']"))
    )
    assert "top_level" in row.text
    driver.save_screenshot(str(artifacts / "console-package.png"))
    delete = row.find_element(By.TAG_NAME, "button")
    delete.click()
    assert "Press again" in delete.text
    delete.click()
    wait(driver).until(lambda d: "Deleted collector 1.0.0." in text_of(d, "#package-versions-msg"))

    # A config's page: its versions, and the form prefilled from the latest files.
    driver.get(base + "/ui#/x/configs/web")
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-version='1']"))
    wait(driver).until(
        lambda d: d.find_element(By.ID, "config-file").get_attribute("value") == "collector.yaml"
    )
    assert "otlp" in driver.find_element(By.ID, "config-body").get_attribute("value")
    files = text_of(driver, "#config-files")  # the latest files, rendered (not "[object ...]")
    assert "collector.yaml" in files and "otlp" in files and "[object" not in files, files
    driver.save_screenshot(str(artifacts / "console-config.png"))

    # An agent's page: pin it to the config, then unpin it.
    driver.get(f"{base}/ui#/agents/{agent_id}")
    wait(driver).until(lambda d: "poller" in text_of(d, "#agent-head"))
    fill(driver, "pin-config", "web")
    driver.find_element(By.ID, "pin-form-submit").click()
    wait(driver).until(lambda d: "Pinned to web v1." in text_of(d, "#pin-form-msg"))
    driver.find_element(By.ID, "pin-form-unpin").click()
    wait(driver).until(lambda d: "Unpinned" in text_of(d, "#pin-form-msg"))

    # Groups: Edit loads a group into the form.
    driver.find_element(By.CSS_SELECTOR, "#nav a[data-page='x/groups']").click()
    edit = (By.CSS_SELECTOR, "tr[data-group=prod-web] button")  # the row may be redrawn
    wait(driver).until(lambda d: d.find_element(*edit).click() is None)
    assert driver.find_element(By.ID, "group-name").get_attribute("value") == "prod-web"
    assert driver.find_element(By.ID, "group-selector").get_attribute("value") == "env=prod"
    assert driver.find_element(By.ID, "group-config").get_attribute("value") == "web"

    # The audit log: every change above, then a filter that matches nothing.
    driver.find_element(By.CSS_SELECTOR, "#nav a[data-page='x/audit']").click()
    wait(driver).until(lambda d: "package.delete" in text_of(d, "#audit-rows"))
    assert "config.create" in text_of(driver, "#audit-rows")
    driver.save_screenshot(str(artifacts / "console-audit.png"))
    fill(driver, "audit-actor", "nobody" + Keys.ENTER)
    wait(driver).until(lambda d: "No entries match." in text_of(d, "#audit-rows"))
    assert not driver.find_element(By.ID, "audit-next").is_enabled()

    assert requests.external() == []
    # The package went with its last version: its page asks again and is told 404.
    errors = [e for e in console_errors(driver) if "/api/packages/collector " not in e["message"]]
    assert errors == []


def test_console_connection_settings_and_certificate_rotation(
    launch: Any, driver: Any, portal: Any, tmp_path: Path, artifacts: Path
) -> None:
    """An agent's detail shows what it is offered part by part (own metrics from its group,
    the server's heartbeat for OpAMP) and the certificate signed from its CSR (serial, expiry);
    an admin rotates the certificate from the page and the new one shows."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec as keys
    from cryptography.x509.oid import NameOID

    from tests.helpers.certs import make_ca

    ca = make_ca(tmp_path / "pki", "agent CA", days=365)
    server = launch(
        api_jwt_secret=SECRET, agent_ca_cert_file=str(ca.cert), agent_ca_key_file=str(ca.key_file())
    )
    anyio.run(server.ready)
    base = server.url
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "console agent")]))
        .sign(keys.generate_private_key(keys.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with portal.wrap_async_context_manager(open_ws_agent(base)) as agent:
        agent.caps = 0x3007 | 0x40 | 0x100  # + ReportsOwnMetrics, AcceptsOpAMPConnectionSettings
        msg = agent.message()
        msg.agent_description.identifying_attributes.add(
            key="service.name"
        ).value.string_value = "cert-agent"
        msg.connection_settings_request.opamp.certificate_request.csr = csr
        portal.call(agent.request, msg)
        issued = portal.call(agent.receive, 10.0).connection_settings.opamp.certificate
        serial = format(x509.load_pem_x509_certificate(issued.cert).serial_number, "x")
        agent_id = format_instance_uid(agent.uid)
        flushed_count(base, 1)
        admin = {"Authorization": f"Bearer {api_token(role='admin')}"}
        assert httpx.put(f"{base}/api/groups/all", json={"selector": {}}, headers=admin).is_success
        body = {"telemetry": {"metrics": {"endpoint": "https://otlp.example/v1/metrics"}}}
        r = httpx.put(f"{base}/api/groups/all/connection-settings", json=body, headers=admin)
        assert r.status_code == 200, r.text
        portal.call(agent.receive, 10.0)  # the group's offer, pushed

        sign_in(driver, base, api_token(role="admin"))
        wait(driver).until(lambda d: text_of(d, "#count-total") == "1")
        driver.get(f"{base}/ui#/agents/{agent_id}")
        wait(driver).until(lambda d: serial in text_of(d, "#certificate"))
        assert "agent's CSR" in text_of(driver, "#certificate")
        metrics = text_of(driver, "#connection-parts tr[data-part=metrics]")
        assert "https://otlp.example/v1/metrics" in metrics and "group" in metrics
        assert "not_reported" in metrics  # the agent does not report ConnectionSettingsStatus
        assert "heartbeat 30 s" in text_of(driver, "#connection-parts tr[data-part=opamp]")
        assert text_of(driver, "#connection-parts tr[data-part=traces]").endswith("none")
        driver.execute_script("document.getElementById('connection-settings').scrollIntoView()")
        driver.save_screenshot(str(artifacts / "console-agent-connection-settings.png"))

        driver.find_element(By.ID, "rotate-form-submit").click()
        wait(driver).until(lambda d: "Rotation sent to proc-test" in text_of(d, "#rotate-form-msg"))
        rotated = portal.call(agent.receive, 10.0).connection_settings.opamp.certificate
        assert rotated.private_key
        new_serial = format(x509.load_pem_x509_certificate(rotated.cert).serial_number, "x")
        wait(driver).until(lambda d: new_serial in text_of(d, "#certificate"))
        assert "rotation" in text_of(driver, "#certificate")
    assert console_errors(driver) == []


def test_console_availability_page_agent_strip_and_list_filters(
    console_server: Any, driver: Any, portal: Any, artifacts: Path, database_url: str
) -> None:
    """One agent flaps (six short sessions), one stays online: the availability page shows
    them, the flapping one's page draws each session on its strip, and the agent list hides
    an agent offline for more than a day when asked."""
    base = console_server.url
    requests = Requests(driver)

    async def flap(uid: bytes | None) -> bytes:
        async with open_ws_agent(base, uid=uid) as agent:
            msg = agent.message()
            attrs = msg.agent_description.identifying_attributes
            for key, value in (("service.name", "flappy"), ("service.version", "0.9.0")):
                attrs.add(key=key).value.string_value = value
            await agent.request(msg)
            await anyio.sleep(0.3)
        return agent.uid

    with ws_agent(portal, base, "steady", **{"service.version": "1.0.0"}):
        uid = portal.call(flap, None)
        for _ in range(5):
            portal.call(flap, uid)
        flappy = format_instance_uid(uid)
        with ws_agent(portal, base, "old-one") as old:
            old_id = format_instance_uid(old.uid)
        flushed_count(base, 1)
        # "old-one" went away two days ago, as far as the database knows.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE agents SET last_disconnected_at = now() - interval '2 days'"
                " WHERE instance_uid = %s",
                (old.uid,),
            )

        sign_in(driver, base, api_token())
        wait(driver).until(lambda d: text_of(d, "#count-total") == "3")
        driver.find_element(By.CSS_SELECTOR, "#nav a[data-page=availability]").click()
        wait(driver).until(lambda d: text_of(d, "#fleet-agents") == "3")
        assert text_of(driver, "#fleet-disconnects") == "7"  # six flaps and old-one
        assert text_of(driver, "#fleet-flapping") == "1"
        flapping = driver.find_elements(By.CSS_SELECTOR, "#flapping-rows tr[data-agent]")
        assert [r.get_attribute("data-agent") for r in flapping] == [flappy]
        assert "flappy" in flapping[0].text and "6" in flapping[0].text
        reasons = driver.find_element(By.CSS_SELECTOR, "#reason-bars tr[data-key]")
        assert reasons.get_attribute("data-key") == "connection closed" and "7" in reasons.text
        versions = {
            r.get_attribute("data-key")
            for r in driver.find_elements(By.CSS_SELECTOR, "#version-bars tr[data-key]")
        }
        assert versions == {"0.9.0", "1.0.0", "unknown"}
        bars = driver.find_elements(By.CSS_SELECTOR, "#uptime-chart svg rect.bar")
        assert bars and "agents" in bars[-1].find_element(By.TAG_NAME, "title").get_attribute(
            "textContent"
        )
        driver.save_screenshot(str(artifacts / "console-availability.png"))
        driver.find_element(By.ID, "range-7d").click()
        wait(driver).until(lambda d: "7 days" in text_of(d, "#page h2"))
        wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#uptime-chart rect")))

        # The flapping agent's page: six online stretches on its strip, each ended by a close.
        driver.back()
        wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#flapping-rows a"))
        driver.find_element(By.CSS_SELECTOR, "#flapping-rows a").click()
        wait(driver).until(lambda d: "flappy" in text_of(d, "#agent-head"))
        wait(driver).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#availability-strip rect.up")) == 6
        )
        stretches = driver.find_elements(By.CSS_SELECTOR, "#availability-strip rect.up")
        assert {s.get_attribute("data-ended-by") for s in stretches} == {"connection closed"}
        hover = stretches[0].find_element(By.TAG_NAME, "title").get_attribute("textContent")
        assert "ended by connection closed" in hover
        assert driver.find_elements(By.CSS_SELECTOR, "#availability-strip rect.observed")
        assert "6 disconnects" in text_of(driver, "#agent-uptime")
        driver.save_screenshot(str(artifacts / "console-agent-strip.png"))

        list_hides_long_offline(driver, base, old_id)
    assert requests.external() == []
    assert console_errors(driver) == []


def list_hides_long_offline(driver: Any, base: str, old_id: str) -> None:
    """The agent list: every agent, then without the one offline for two days."""
    rows = "#agent-rows tr[data-agent]"
    driver.get(base + "/ui#/agents")
    wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 3)
    driver.find_element(By.ID, "recent-filter").click()
    driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 2)
    assert not driver.find_elements(By.ID, "row-" + old_id)
    assert "recent=1" in driver.current_url
