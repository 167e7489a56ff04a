"""The OpenAPI 3.1 document: valid, complete, and true to the live server (schemathesis)."""

from __future__ import annotations

import difflib
import os
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from opamp_fast.api.models import RESPONSE_STRUCTS
from scripts.openapi_snapshot import SNAPSHOT, served_bytes, snapshot_text
from tests.helpers.agents import HTTPAgent, open_ws_agent
from tests.helpers.config_api import api_client, create_config
from tests.helpers.process import unmeasured
from tests.integration.test_rest_api import insert_agents, insert_history, run_sql, token_for

pytestmark = pytest.mark.postgres


async def fetch_spec(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.get("/openapi.json")  # no token needed
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    spec: dict[str, Any] = r.json()
    return spec


async def operation_ids(server: Any) -> list[str]:
    spec = await fetch_spec(server.url)
    return [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]


async def test_document_is_valid_openapi_31_and_describes_every_route(server) -> None:
    spec = await fetch_spec(server.url)
    validate(spec)  # raises on any violation of the OpenAPI 3.1 meta-schema
    assert spec["openapi"] == "3.1.0"
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    for struct in RESPONSE_STRUCTS:
        assert struct.__name__ in spec["components"]["schemas"]

    # Every route of the running app (except the document and the UI themselves) is described.
    app = server.services  # the Starlette app is not exposed; rebuild its route list instead
    from opamp_fast.api.app import build_starlette

    routes = [r for r in build_starlette(app).routes if isinstance(r, Route)]
    described = {r.path for r in routes if r.include_in_schema}
    assert set(spec["paths"]) == described
    assert "/openapi.json" not in spec["paths"] and "/docs" not in spec["paths"]

    api_paths = [p for p in spec["paths"] if p.startswith("/api/")]
    assert sorted(api_paths) == sorted(
        [
            "/api/agents",
            "/api/agents/online",
            "/api/agents/offline",
            "/api/agents/status/summary",
            "/api/agents/{id}",
            "/api/agents/{id}/active-connection",
            "/api/agents/{id}/connection-history",
            "/api/agents/{id}/disconnect",
            "/api/agents/{id}/restart",
            "/api/agents/{id}/custom-messages",
            "/api/events",
            "/api/ui/overview",
            "/api/ui/me",
            # Packages.
            "/api/packages",
            "/api/packages/{name}",
            "/api/packages/{name}/latest",
            "/api/packages/{name}/status",
            "/api/packages/{name}/{version}",
            "/api/agents/{id}/packages",
            # Remote configuration.
            "/api/configs",
            "/api/configs/{name}",
            "/api/configs/{name}/versions/{version}",
            "/api/configs/{name}/status",
            "/api/groups",
            "/api/groups/{name}",
            "/api/groups/{name}/rollback",
            "/api/groups/{name}/restart",
            "/api/agents/{id}/labels",
            "/api/agents/{id}/config",
            "/api/audit",
            # Connection settings and agent certificates.
            "/api/groups/{name}/connection-settings",
            "/api/agents/{id}/connection-settings",
            "/api/agents/{id}/rotate-certificate",
            # Availability.
            "/api/agents/{id}/availability",
            "/api/fleet/availability",
        ]
    )
    operations = [(p, op) for p in api_paths for op in spec["paths"][p].values()]
    for path, op in operations:
        success = min(code for code in op["responses"] if code.startswith("2"))
        assert op["security"] == [{"bearerAuth": []}], path
        assert "401" in op["responses"] and success in op["responses"], path
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
        if path == "/api/events":  # a Server-Sent Events stream, not JSON
            assert "text/event-stream" in op["responses"][success]["content"]
        elif success != "204":
            ok = op["responses"][success]["content"]["application/json"]["schema"]["$ref"]
            assert ok.startswith("#/components/schemas/")
        err = op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
        assert err == "#/components/schemas/ErrorResponse"
        names = {p["name"] for p in op["parameters"]}
        if "{id}" in path:
            assert "id" in names and "404" in op["responses"] and "400" in op["responses"]
        paged = path in (
            "/api/agents",
            "/api/agents/online",
            "/api/agents/offline",
            "/api/fleet/availability",
        )
        if paged or path.endswith("/connection-history"):
            # One exploded object, so that the document can say offset and cursor exclude
            # each other; on the wire they are plain query parameters.
            (page,) = [p for p in op["parameters"] if p["in"] == "query"]
            assert (page["style"], page["explode"]) == ("form", True)
            assert {"limit", "offset", "cursor"} <= set(page["schema"]["properties"]), path
            assert page["schema"]["not"] == {"required": ["offset", "cursor"]}
        if op.get("requestBody"):
            assert op["requestBody"]["required"] is True
    (listing,) = spec["paths"]["/api/agents"]["get"]["parameters"]
    props = listing["schema"]["properties"]
    assert props["limit"]["maximum"] == server.services.settings.api_max_page_size
    assert props["status"]["enum"] == ["online", "offline"]
    writes = [(p, m) for p, ops in spec["paths"].items() for m in ops if m in ("put", "post")]
    bodiless = {
        ("/api/agents/{id}/disconnect", "post"),
        ("/api/agents/{id}/restart", "post"),
        ("/api/groups/{name}/rollback", "post"),
        ("/api/agents/{id}/rotate-certificate", "post"),
    }
    for path, method in writes:  # every write says what it takes
        assert ("requestBody" in spec["paths"][path][method]) != ((path, method) in bodiless)
    assert spec["paths"]["/healthz"]["get"]["security"] == []


async def test_document_matches_snapshot(server) -> None:
    """The served document is the committed snapshot, byte for byte: every route in its order,
    operation ids, tags, parameters, links and schemas. When an API change is intended,
    regenerate it with ``python scripts/openapi_snapshot.py --write`` and commit the file with
    the change (its diff is the change to the document)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        served = (await client.get("/openapi.json")).content
    recorded = SNAPSHOT.read_bytes()
    if served != served_bytes(recorded):
        diff = difflib.unified_diff(
            recorded.decode().splitlines(),
            snapshot_text(served).decode().splitlines(),
            "openapi.snapshot.json",
            "served /openapi.json",
            lineterm="",
        )
        pytest.fail(
            "the OpenAPI document changed; if that is intended, run "
            "`python scripts/openapi_snapshot.py --write`:\n" + "\n".join(list(diff)[:80])
        )


async def test_405_lists_every_method_of_the_path(server) -> None:
    """Several routes share a path, one per method: a method none of them has is one 405 whose
    Allow names them all (Starlette named only the first route's), and a literal segment wins
    over a parameter (".../latest" is never version "latest")."""
    token = token_for(server.services.settings)
    headers = {"Authorization": f"Bearer {token}"}
    expected = {
        "/api/configs": "GET, HEAD, POST",
        "/api/configs/c": "DELETE, GET, HEAD",
        "/api/groups/g": "DELETE, GET, HEAD, PUT",
        "/api/groups/g/restart": "DELETE, GET, HEAD, POST",
        "/api/agents/00000000000000000000000000000001/custom-messages": "GET, HEAD, POST",
        "/api/packages": "GET, HEAD, POST",
        "/api/packages/p/1.0.0": "DELETE, GET, HEAD",
        "/api/packages/p/latest": "GET, HEAD",
        "/api/packages/p/status": "GET, HEAD",
        "/api/agents/00000000000000000000000000000001/config": "GET, HEAD, PUT",
        "/api/agents/00000000000000000000000000000001/packages": "GET, HEAD, PUT",
        "/healthz": "GET, HEAD",
    }
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as client:
        for path, allow in expected.items():
            for method in ("OPTIONS", "PATCH", "DELETE", "POST", "PUT", "TRACE"):
                if method in allow:
                    continue
                r = await client.request(method, path)
                assert r.status_code == 405, (method, path, r.text)
                assert set(r.headers["allow"].split(", ")) == set(allow.split(", ")), path
                assert r.json()["error"]["code"] == "method_not_allowed"


async def test_swagger_ui_page(server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.get("/docs")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "swagger-ui" in r.text
        assert "https://" not in r.text and "http://" not in r.text  # nothing from a CDN
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "init.js"):
            served = await client.get(f"/docs/static/{asset}")
            assert served.status_code == 200, asset
        assert "/openapi.json" in served.text  # init.js
        assert (await client.get("/docs/static/index.j2")).status_code == 404


SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")


async def seed_fleet(server: Any, database_url: str) -> None:
    """Real rows for the positive cases to find: agents with history, a config, a group and a
    package (the run itself creates, changes and deletes more)."""
    uids = [uuid.uuid4().bytes for _ in range(5)]
    base = datetime(2025, 1, 1, tzinfo=UTC)

    def seed(conn: Any) -> None:
        insert_agents(conn, [{"uid": u, "name": f"svc-{i}"} for i, u in enumerate(uids)])
        insert_history(conn, uids[0], [base + timedelta(seconds=i) for i in range(30)])

    await run_sql(database_url, seed)
    async with api_client(server, role="admin") as api:
        await create_config(api, "base", "a: 1\n")
        group = {"selector": {"env": "prod"}, "config": "base"}
        assert (await api.put("/api/groups/prod", json=group)).status_code == 200
        upload = {"file": ("p.bin", b"payload", "application/octet-stream")}
        r = await api.post(
            "/api/packages", data={"name": "agent", "version": "1.0.0"}, files=upload
        )
        assert r.status_code == 201, r.text


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_schemathesis_all_checks_on_every_operation(server, database_url, tmp_path) -> None:
    """Every check schemathesis has, on every operation of the document (writes included, with
    an admin token), valid and invalid inputs, in the coverage, fuzzing and stateful phases:
    no 5xx, and the server does exactly what the document says (status codes, content types,
    headers, response schemas, valid requests accepted, invalid ones refused, 405 with the right
    ``Allow``, auth not ignored, deleted resources gone). The run's settings, and the one check
    each of three operations cannot satisfy (with why), are in ``schemathesis.toml``."""
    await seed_fleet(server, database_url)
    token = token_for(server.services.settings, sub="schemathesis")
    env = {**unmeasured(os.environ), "OPAMP_FAST_SCHEMATHESIS_TOKEN": token, "NO_COLOR": "1"}
    args = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(SCHEMATHESIS_CONFIG)]
    args += ["run", f"{server.url}/openapi.json", "--no-color"]
    async with open_ws_agent(server.url) as ws:
        await ws.full_state("fuzz-ws")
        async with httpx.AsyncClient(base_url=server.url) as opamp_client:
            await HTTPAgent(opamp_client).full_state("fuzz-http")
            done = await anyio.run_process(args, check=False, cwd=tmp_path, env=env)
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, output
    operations = re.search(r"Tested: (\d+)", output)
    assert operations is not None and int(operations.group(1)) == len(await operation_ids(server))
