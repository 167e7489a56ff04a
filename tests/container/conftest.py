"""Fixtures of the container tests: a real Docker engine, base images made from Debian packages,
and the project's image built once per session from the real Dockerfile, shared by every test.

* ``engine``: the daemon the client reaches (``DOCKER_HOST`` or the default socket), or, when
  none answers, a ``dockerd`` started for the session (``tests/helpers/docker_engine.py``) and
  stopped by its PID at the end. No Docker at all fails with the command that installs it.
* ``images``: the base images (``tests/helpers/base_images.py``, tagged by a digest of their
  recipe, so an engine that has them is not asked again) and the project's image, built with
  ``--no-cache`` so that every session builds it for real, with the build's secrets: a
  ``pip.conf`` and this machine's CA bundle (behind a TLS-intercepting proxy pip needs its CA),
  never baked into a layer. The python base and the services base are made in parallel; the
  project's build starts as soon as its base is there.
* After each test its containers and volumes are removed; at the end of the session the images
  it built too (the base images stay: they are the cache). A failed test's report carries the
  logs of every container still there.

Figures (image size, time to healthy, drain time...) go to ``test-artifacts/container.json``.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from tests.helpers import base_images
from tests.helpers.docker_engine import (
    Engine,
    StartedDaemon,
    engine_env,
    reachable,
    start_daemon,
    stop_daemon,
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
#: Passed to the build as they are (Docker's predefined build arguments: not in the image).
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
#: What the build's pip.conf secret sets: pip says it looks there, which the tests check.
INDEX_URL = "https://pypi.org/simple/"


@dataclass(frozen=True)
class Images:
    python: str
    postgres: str
    prometheus: str
    haproxy: str
    opamp_fast: str
    build_log: str
    secret_marker: str  # a line of the build's pip.conf secret: must be in no layer


def ca_bundle() -> Path:
    """The CA bundle this machine's pip trusts (with a proxy's CA, where there is one)."""
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    default = ssl.get_default_verify_paths().cafile
    path = Path(default or "/etc/ssl/certs/ca-certificates.crt")
    assert path.is_file(), f"no CA bundle found for the build (tried {path})"
    return path


def build_project_image(engine: Engine, python: str, workdir: Path) -> tuple[str, str, str]:
    """``docker build`` of the repository's Dockerfile on ``python``: (tag, log, marker)."""
    tag = f"opamp-fast-test/opamp-fast:{engine.prefix}"
    marker = f"# build secret {secrets.token_hex(16)}"
    pip_conf = workdir / "pip.conf"
    pip_conf.write_text(
        f"[global]\n{marker}\nindex-url = {INDEX_URL}\ncert = /run/secrets/ca.pem\n"
    )
    args = [
        "build", "--network", "host", "--no-cache", "--progress", "plain",
        "--build-arg", f"PYTHON_IMAGE={python}",
        "--secret", f"id=pip.conf,src={pip_conf}", "--secret", f"id=ca.pem,src={ca_bundle()}",
        "--label", f"{Engine.LABEL}={engine.prefix}", "--tag", tag,
    ]  # fmt: skip
    for name in PROXY_VARIABLES:
        if name in os.environ:
            args += ["--build-arg", name]
    started = time.monotonic()
    result = engine(*args, str(ROOT), timeout=900, check=False)
    log = result.stdout + result.stderr
    (workdir / "build.log").write_text(log)
    assert result.returncode == 0, f"docker build failed ({result.returncode}):\n{log[-8000:]}"
    engine.images.append(tag)
    engine.timings["project image build"] = time.monotonic() - started
    return tag, log, marker


def _services_images(engine: Engine, workdir: Path) -> list[str]:
    base_images.SERVICES.ensure(engine, workdir)
    derived = (base_images.POSTGRES, base_images.PROMETHEUS, base_images.HAPROXY)
    return [image.ensure(engine) for image in derived]


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    env = engine_env()
    started: StartedDaemon | None = None
    if not reachable(env):
        # A short path: the daemon's socket lives there (sun_path holds 108 bytes).
        started = start_daemon(Path(tempfile.mkdtemp(prefix="oft-dockerd-", dir="/tmp")))
        env = engine_env(started.host)
    engine = Engine(env, prefix=f"oft{secrets.token_hex(3)}")
    try:
        yield engine
    finally:
        try:
            engine.cleanup()
        finally:
            if started is not None:
                stop_daemon(started)


@pytest.fixture(scope="session")
def figures(engine: Engine) -> Iterator[dict[str, Any]]:
    """Figures the tests measure, written to test-artifacts/container.json at the end."""
    found: dict[str, Any] = {}
    yield found
    ARTIFACTS.mkdir(exist_ok=True)
    timings = {k: round(v, 1) for k, v in engine.timings.items()}
    (ARTIFACTS / "container.json").write_text(
        json.dumps({**found, "timings_s": timings}, indent=2) + "\n"
    )


@pytest.fixture(scope="session")
def images(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Images:
    workdir = tmp_path_factory.mktemp("images")
    with ThreadPoolExecutor(1) as pool:
        services = pool.submit(_services_images, engine, workdir)
        python = base_images.PYTHON.ensure(engine, workdir)
        opamp_fast, log, marker = build_project_image(engine, python, workdir)
        postgres, prometheus, haproxy = services.result()
    return Images(python, postgres, prometheus, haproxy, opamp_fast, log, marker)


@pytest.fixture(autouse=True)
def _remove_containers(engine: Engine) -> Iterator[None]:
    """Each test starts clean and leaves nothing running: its containers and volumes go."""
    yield
    engine.cleanup(images=False)


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    """An event loop in a thread, for the tests' OpAMP agents (the tests themselves block on
    the Docker client)."""
    with start_blocking_portal(backend="asyncio") as p:
        yield p


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the logs of the containers it left (before teardown)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    engine = getattr(item, "funcargs", {}).get("engine")
    if report.failed and isinstance(engine, Engine):
        report.sections.append(("container logs", engine.all_logs() or "(no container left)"))
