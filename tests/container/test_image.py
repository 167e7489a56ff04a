"""The project's image, built from the real Dockerfile and run by a real Docker engine.

The engine has no bridge network (``dockerd --bridge=none``, as on the CI machine): containers
use the host's network, listening on 127.0.0.1 and a free port (``OPAMP_FAST_HOST`` and
``OPAMP_FAST_PORT``); nothing else is passed to ``docker run`` but a name and a volume.
"""

from __future__ import annotations

import contextlib
import tarfile
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal

from opamp_fast.protocol.codec import format_instance_uid
from tests.conftest import free_port
from tests.container.conftest import INDEX_URL, Images
from tests.helpers.agents import WSAgent, open_ws_agent
from tests.helpers.container_checks import (
    Api,
    OfficialClient,
    wait_healthy,
    wait_ready,
    wait_until,
)
from tests.helpers.docker_engine import Engine
from tests.helpers.wsclient import ConnectionClosed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the first test builds the images

IMAGE_UID = 10001


def run_server(engine: Engine, images: Images, name: str, *options: str) -> tuple[str, str]:
    """``docker run`` the image on the host's network, loopback and a free port: (name, url)."""
    port = free_port()
    container = engine.name(name)
    engine(
        "run", "--detach", "--name", container, "--network", "host",
        "--env", "OPAMP_FAST_HOST=127.0.0.1", "--env", f"OPAMP_FAST_PORT={port}",
        *options, images.opamp_fast,
    )  # fmt: skip
    return container, f"http://127.0.0.1:{port}"


def process_uids(engine: Engine, container: str) -> set[int]:
    """The real uids of the container's processes (the server and its embedded Postgres), as
    the engine's host sees them."""
    rows = engine("top", container, "-eo", "pid,uid,args").stdout.splitlines()[1:]
    assert rows, f"no process in {container}"
    return {int(row.split()[1]) for row in rows}


async def close_code(agent: WSAgent) -> int:
    """The close code the server ended the agent's WebSocket with."""
    with anyio.fail_after(10):
        while True:
            try:
                await agent.ws.get_message()
            except ConnectionClosed as closed:
                return closed.reason.code


def layer_files_containing(image_tar: Path, needle: bytes) -> list[str]:
    """Files of any layer of a ``docker save`` archive (and its metadata) containing
    ``needle``."""
    found = []
    with tarfile.open(image_tar) as archive:
        for member in archive:
            if not member.isfile():
                continue
            data = archive.extractfile(member)
            assert data is not None
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=data, mode="r|") as layer:
                    for entry in layer:
                        inner = layer.extractfile(entry) if entry.isfile() else None
                        if inner is not None and needle in inner.read():
                            found.append(f"{member.name}:{entry.name}")
            elif needle in data.read():
                found.append(member.name)
    return found


def test_image_builds_without_compiler_or_build_secrets(
    engine: Engine, images: Images, figures: dict[str, Any], tmp_path: Path
) -> None:
    # The build read the pip.conf secret in both pip steps (the default index is not named).
    assert images.build_log.count(f"Looking in indexes: {INDEX_URL}") == 2, images.build_log

    # No compiler, no Cython in the runtime image; the compiled extensions import.
    probe = engine(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", images.opamp_fast, "-c",
        "for c in gcc cc c++ g++ x86_64-linux-gnu-gcc-12 make; do"
        " if command -v $c; then exit 3; fi; done;"
        " python -c 'import importlib.util as u, opamp_fast.native._heartbeat,"
        " opamp_fast.native._wsframe, opamp_fast.native._pbscan;"
        " assert u.find_spec(\"Cython\") is None'",
        check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stdout + probe.stderr

    # Neither the secret pip.conf nor anything of it is in a layer or the history.
    archive = tmp_path / "image.tar"
    engine("save", "--output", str(archive), images.opamp_fast, timeout=300)
    assert layer_files_containing(archive, images.secret_marker.encode()) == []
    history = engine("history", "--no-trunc", images.opamp_fast).stdout
    assert "pip.conf" not in history.replace("id=pip.conf", "")  # the mount's id, not a file

    # The image's size, and what the project adds to its base.
    size = int(engine("image", "inspect", "--format", "{{.Size}}", images.opamp_fast).stdout)
    base = int(engine("image", "inspect", "--format", "{{.Size}}", images.python).stdout)
    figures["image_size_mb"] = round(size / 1e6)
    figures["base_image_size_mb"] = round(base / 1e6)
    assert size - base < 250e6, f"the project's layers take {(size - base) / 1e6:.0f} MB"


def test_docker_run_stop_start(
    engine: Engine, images: Images, figures: dict[str, Any], portal: BlockingPortal
) -> None:
    """``docker run`` with the image's defaults: healthy, non-root, serving agents of both
    transports; ``docker stop`` drains to exit 0; ``docker start`` remembers them."""
    volume = engine.name("data")
    started = time.monotonic()
    container, url = run_server(
        engine, images, "server", "--volume", f"{volume}:/var/lib/opamp-fast"
    )
    wait_ready(engine, container, url, timeout=60)
    figures["docker_run_to_ready_s"] = round(time.monotonic() - started, 1)
    wait_healthy(engine, container, timeout=90 - (time.monotonic() - started))
    figures["docker_run_to_healthy_s"] = round(time.monotonic() - started, 1)
    assert process_uids(engine, container) == {IMAGE_UID}
    assert engine("exec", container, "id", "-u").stdout.strip() == str(IMAGE_UID)

    official = OfficialClient(url, "official-http-agent")
    with (
        contextlib.ExitStack() as cleanup,
        Api(engine, container, url) as api,
        portal.wrap_async_context_manager(open_ws_agent(url)) as ws_agent,
    ):
        cleanup.callback(official.halt)  # also when the test fails before it halts it
        reply = portal.call(ws_agent.full_state, "ws-agent")
        assert reply.instance_uid == ws_agent.uid
        official.start()
        agents = {
            format_instance_uid(ws_agent.uid): "ws",
            format_instance_uid(official.uid): "http",
        }

        def all_online() -> bool:
            details = [api.agent(agent_id) for agent_id in agents]
            return all(d is not None and d["status"] == "online" for d in details)

        wait_until(engine, "both agents online in the REST API", all_online, timeout=20)
        for agent_id, transport in agents.items():
            detail = api.agent(agent_id)
            assert detail is not None and detail["transport"] == transport, detail
        official.halt()  # no goodbye: the server still holds the agent when it stops

        stopping = time.monotonic()
        engine("stop", "--time", "30", container, timeout=60)
        figures["docker_stop_s"] = round(time.monotonic() - stopping, 1)
        # 1001, going away: agents reconnect (to another instance, or to this one restarted).
        assert portal.call(close_code, ws_agent) == 1001
    exit_code = engine.inspect(container, "{{.State.ExitCode}}")
    assert exit_code == "0", engine.logs(container)
    log = engine.logs(container)
    assert "shutdown complete" in log and "Traceback" not in log, log

    # The same container, the same volume: the agents are known, offline, with their history.
    engine("start", container)
    wait_ready(engine, container, url)
    with Api(engine, container, url) as api:
        for agent_id in agents:
            detail = api.agent(agent_id)
            assert detail is not None, f"{agent_id} forgotten"
            assert detail["status"] == "offline", detail
            assert detail["disconnect_reason"] == "server shutdown", detail
            (row,) = api.history(agent_id)
            assert row["disconnected_at"] is not None, row
            assert row["disconnect_reason"] == "server shutdown", row


def test_read_only_root_file_system(engine: Engine, images: Images) -> None:
    """``--read-only`` with a tmpfs on /tmp and the data volume: the embedded Postgres, the
    REST API secret and the package store all live in the volume."""
    container, url = run_server(
        engine, images, "read-only", "--read-only", "--tmpfs", "/tmp",
        "--volume", f"{engine.name('ro-data')}:/var/lib/opamp-fast",
    )  # fmt: skip
    wait_ready(engine, container, url)
    with Api(engine, container, url) as api:
        summary = api.get("/api/agents/status/summary")
    assert summary["total"] == 0, summary
    engine("stop", "--time", "30", container, timeout=60)
    assert engine.inspect(container, "{{.State.ExitCode}}") == "0", engine.logs(container)


def test_external_postgres(engine: Engine, images: Images, portal: BlockingPortal) -> None:
    """``OPAMP_FAST_DATABASE_URL`` to a Postgres container: migrated, serving, rows there."""
    pg_port = free_port()
    postgres = engine.name("postgres")
    engine(
        "run", "--detach", "--name", postgres, "--network", "host",
        "--env", "POSTGRES_USER=opamp", "--env", "POSTGRES_DB=opamp",
        "--env", "POSTGRES_PASSWORD=container-test", images.postgres,
        "postgres", "-c", "listen_addresses=127.0.0.1", "-p", str(pg_port),
    )  # fmt: skip
    wait_until(
        engine,
        "postgres accepting connections",
        lambda: (
            engine("exec", postgres, "pg_isready", "-p", str(pg_port), check=False).returncode == 0
        ),
        timeout=60,
    )
    database_url = f"postgresql://opamp:container-test@127.0.0.1:{pg_port}/opamp"
    container, url = run_server(
        engine, images, "external-db", "--env", f"OPAMP_FAST_DATABASE_URL={database_url}",
        "--env", "OPAMP_FAST_API_JWT_SECRET=" + "container-test-secret-" + "x" * 20,
    )  # fmt: skip
    wait_ready(engine, container, url)
    log = engine.logs(container)
    assert "schema migrated" in log and "embedded Postgres" not in log, log

    with portal.wrap_async_context_manager(open_ws_agent(url)) as ws_agent:
        portal.call(ws_agent.full_state, "external-db-agent")
        agent_id = format_instance_uid(ws_agent.uid)
        query = f"SELECT status FROM agents WHERE uid_text = '{agent_id}'"
        psql = ["exec", postgres, "psql", "-p", str(pg_port), "-U", "opamp", "-d", "opamp", "-tAc"]
        wait_until(
            engine,
            "the agent's row in the external Postgres",
            lambda: engine(*psql, query).stdout.strip() == "online",
            timeout=20,
        )
    with Api(engine, container, url) as api:
        assert api.agent(agent_id) is not None
