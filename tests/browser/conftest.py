"""Fixtures of the browser tests: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, which ``.ci/run`` installs) driven by Selenium, a server process, and an
event loop in a thread for the real OpAMP agents the tests connect."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from opamp_fast.auth import load_key_material, mint_token
from opamp_fast.settings import Settings

SECRET = "browser-tests-" + "s" * 40
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail(
            "the browser tests need Debian's chromium and chromium-driver: "
            "apt-get install -y chromium chromium-driver (.ci/run does it)"
        )
    return browser, driver


def api_token(ttl_s: int = 600, role: str | None = None) -> str:
    keys = load_key_material(Settings(api_jwt_secret=SECRET))
    token = mint_token(keys, subject="browser-test", ttl_s=ttl_s)
    if role is None:
        return token
    import jwt

    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    return jwt.encode({**claims, "role": role}, SECRET, algorithm="HS256")


@pytest.fixture
def console_server(launch: Any) -> Any:
    """A real server process (its own port, the test's database, a known JWT secret)."""
    import anyio

    server = launch(api_jwt_secret=SECRET)
    anyio.run(server.ready)
    return server


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    """An asyncio loop in a thread: the tests' OpAMP agents live there."""
    with start_blocking_portal(backend="asyncio") as p:
        yield p


@pytest.fixture
def driver() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,800",
        "--no-first-run",
        "--disable-background-networking",  # no update checks, no safe-browsing downloads
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver_path))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    os.chmod(ARTIFACTS, 0o755)
    return ARTIFACTS
