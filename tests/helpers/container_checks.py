"""What the container tests do to a running opamp-fast container: wait for it, read its REST API,
connect real agents (``tests/helpers/agents.py``'s WebSocket agent, the official Python client
over HTTP). Every wait is bounded and fails with the containers' logs."""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import requests
from opentelemetry._opamp import OpAMPAgent, OpAMPCallbacks, OpAMPClient
from opentelemetry._opamp.transport.requests import RequestsTransport

from tests.helpers.docker_engine import Engine

__all__ = ["Api", "OfficialClient", "wait_healthy", "wait_ready", "wait_until"]


def wait_until(
    engine: Engine, what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.5
) -> Any:
    """Poll ``predicate`` until it returns something true (returned); fail after ``timeout``
    seconds with the session's container logs."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{engine.all_logs()}")
        time.sleep(interval)


def _running(engine: Engine, container: str) -> None:
    state = engine.inspect(container, "{{.State.Status}} {{.State.ExitCode}}")
    assert state.startswith("running"), (
        f"{container} is not running ({state}):\n{engine.logs(container)}"
    )


def wait_ready(engine: Engine, container: str, url: str, timeout: float = 60) -> None:
    """``/readyz`` answers 200 (fails at once if the container stops)."""

    def ready() -> bool:
        _running(engine, container)
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(engine, f"{container} ready at {url}", ready, timeout, interval=0.2)


def wait_healthy(engine: Engine, container: str, timeout: float = 90) -> None:
    """The image's HEALTHCHECK reports ``healthy`` (fails at once on ``unhealthy``)."""

    def healthy() -> bool:
        _running(engine, container)
        status = engine.inspect(container, "{{.State.Health.Status}}")
        assert status in ("starting", "healthy"), (
            f"{container} is {status}:\n"
            f"{engine.inspect(container, '{{json .State.Health.Log}}')}\n{engine.logs(container)}"
        )
        return status == "healthy"

    wait_until(engine, f"{container} healthy", healthy, timeout, interval=0.25)


class Api:
    """The REST API of one instance, with a token minted inside its container (where the
    secret is), as docs/operations.md tells operators to."""

    def __init__(self, engine: Engine, container: str, url: str) -> None:
        token = engine("exec", container, "opamp-fast", "token", "--subject", "container-test")
        self.client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token.stdout.strip()}"}, timeout=10
        )

    def get(self, path: str) -> Any:
        response = self.client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        """The agent's detail, None while the server does not know it."""
        response = self.client.get(f"/api/agents/{agent_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        return detail

    def history(self, agent_id: str) -> list[dict[str, Any]]:
        histories: list[dict[str, Any]] = self.get(f"/api/agents/{agent_id}/connection-history")[
            "histories"
        ]
        return histories

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Connects(OpAMPCallbacks):
    def __init__(self) -> None:
        self.connected = threading.Event()

    def on_connect(self, agent: OpAMPAgent, client: OpAMPClient) -> None:
        self.connected.set()


class OfficialClient:
    """An agent of the official Python client (``opentelemetry-opamp-client``, plain HTTP),
    polling every second in its own threads."""

    def __init__(self, url: str, name: str) -> None:
        self.session = requests.Session()
        self.client = OpAMPClient(
            endpoint=url + "/v1/opamp",
            agent_identifying_attributes={"service.name": name},
            agent_non_identifying_attributes={"host.name": "container-test"},
            transport=RequestsTransport(self.session),
        )
        self.callbacks = _Connects()
        self.agent = OpAMPAgent(
            interval=1.0, callbacks=self.callbacks, client=self.client, initial_backoff=0.2
        )

    @property
    def uid(self) -> bytes:
        uid: bytes = self.client._instance_uid
        return uid

    def start(self) -> None:
        self.agent.start()

    def halt(self) -> None:
        """Stop polling without a goodbye (``agent_disconnect``): to the server the agent is
        still connected until it times out or the server stops."""
        atexit.unregister(self.agent.stop)  # the client's own goodbye at exit
        self.agent._stop.set()
        for thread in (self.agent._worker, self.agent._scheduler):
            if thread.is_alive():
                thread.join(10)
        self.session.close()
