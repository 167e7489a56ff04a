"""Agent packages end to end, the same tests on the filesystem store and on a real
S3-compatible server (moto's server mode on loopback, started here): upload, list, latest,
delete refused while offered, offers over WebSocket and HTTP, a download with a Range resume,
install statuses in the API, and refusals (corrupt upload, bad input, oversize)."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import boto3
import httpx
import pytest

from opamp_fast.protocol import pb
from opamp_fast.protocol.codec import format_instance_uid
from opamp_fast.settings import Settings
from tests.helpers.agents import CAPS_PYTHON_CLIENT, HTTPAgent, open_ws_agent
from tests.integration.test_rest_api import token_for

pytestmark = pytest.mark.postgres

ACCEPTS_PACKAGES = 0x8
REPORTS_PACKAGE_STATUSES = 0x10
PKG_CAPS = CAPS_PYTHON_CLIENT | ACCEPTS_PACKAGES | REPORTS_PACKAGE_STATUSES
S3_KEYS = {"package_s3_access_key_id": "testing", "package_s3_secret_access_key": "testing"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


class Store:
    """The store a test runs against, and a way to list what it holds."""

    def __init__(self, kind: str, overrides: dict[str, Any], listing: Callable[[], list[str]]):
        self.kind = kind
        self.overrides = overrides
        self.list = listing


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "filesystem":
        root = tmp_path / "packages"

        def files() -> list[str]:
            if not root.exists():
                return []
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

        return Store("filesystem", {"package_store": str(root)}, files)
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = f"pkgs-{os.urandom(4).hex()}"
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)

    def objects() -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listed.get("Contents", ()))

    overrides = {
        "package_store": f"s3://{bucket}/fleet",
        "package_s3_endpoint_url": endpoint,
        "package_s3_region": "us-east-1",
        **S3_KEYS,
    }
    return Store("s3", overrides, objects)


@pytest.fixture
async def running(
    start_server: Callable[..., Any], make_settings: Callable[..., Settings], store: Store
) -> Any:
    return await start_server(make_settings(package_max_bytes=8 * 1024 * 1024, **store.overrides))


@pytest.fixture
async def api(running: Any) -> AsyncIterator[httpx.AsyncClient]:
    token = token_for(running.services.settings)
    async with httpx.AsyncClient(
        base_url=running.url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


async def upload(
    api: httpx.AsyncClient,
    name: str,
    version: str,
    content: bytes,
    *,
    kind: str | None = None,
    signature: bytes | None = None,
    sha256: str | None = None,
) -> httpx.Response:
    data = {"name": name, "version": version}
    if kind is not None:
        data["type"] = kind
    if sha256 is not None:
        data["sha256"] = sha256
    files: dict[str, Any] = {"file": ("pkg.bin", content, "application/octet-stream")}
    if signature is not None:
        files["signature"] = ("pkg.sig", signature, "application/octet-stream")
    return await api.post("/api/packages", data=data, files=files)


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    return str(body["error"]["code"])


async def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    with anyio.fail_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await anyio.sleep(0.05)


# ------------------------------------------------------------------------------ the registry


async def test_upload_list_latest_and_delete_refused_while_offered(
    api: httpx.AsyncClient, store: Store
) -> None:
    bodies = {
        v: os.urandom(1000 + i) for i, v in enumerate(["1.0.0", "1.10.0", "2.0.0-rc.1", "1.2.0"])
    }
    for version, body in bodies.items():
        r = await upload(api, "collector", version, body)
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["sha256"] == hashlib.sha256(body).hexdigest()
        assert created["size_bytes"] == len(body) and created["type"] == "top_level"
    r = await upload(api, "collector", "1.0.0", b"again")
    assert r.status_code == 409 and error_code(r) == "package_exists"
    assert (await upload(api, "ext", "0.1.0", b"x", kind="addon")).json()["type"] == "addon"

    listing = (await api.get("/api/packages")).json()["packages"]
    assert listing == [
        {"name": "collector", "latest_version": "1.10.0", "versions": 4},
        {"name": "ext", "latest_version": "0.1.0", "versions": 1},
    ]
    versions = (await api.get("/api/packages/collector")).json()["versions"]
    assert [v["version"] for v in versions] == ["2.0.0-rc.1", "1.10.0", "1.2.0", "1.0.0"]
    latest = (await api.get("/api/packages/collector/latest")).json()
    assert latest["version"] == "1.10.0"
    assert latest["sha256"] == hashlib.sha256(bodies["1.10.0"]).hexdigest()
    assert len(store.list()) == 5  # the files are in the store under test

    uid = os.urandom(16)
    agent = format_instance_uid(uid)
    r = await api.put(
        f"/api/agents/{agent}/packages",
        json={"packages": [{"name": "collector", "version": "1.2.0"}]},
    )
    assert r.status_code == 200, r.text
    assert [o["version"] for o in r.json()["offered"]] == ["1.2.0"]
    r = await api.delete("/api/packages/collector/1.2.0")
    assert r.status_code == 409 and error_code(r) == "package_offered"
    assert (await api.get("/api/packages/collector/1.2.0")).status_code == 200

    r = await api.put(f"/api/agents/{agent}/packages", json={"packages": []})
    assert r.status_code == 200 and r.json()["offered"] == []
    assert (await api.delete("/api/packages/collector/1.2.0")).status_code == 204
    assert (await api.get("/api/packages/collector/1.2.0")).status_code == 404
    assert len(store.list()) == 4
    versions = (await api.get("/api/packages/collector")).json()["versions"]
    assert [v["version"] for v in versions] == ["2.0.0-rc.1", "1.10.0", "1.0.0"]


async def test_corrupt_upload_is_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, store: Store
) -> None:
    body = os.urandom(300_000)
    wrong = hashlib.sha256(body + b"!").hexdigest()
    r = await upload(api, "agent", "1.0.0", body, sha256=wrong)
    assert r.status_code == 400 and error_code(r) == "hash_mismatch"
    assert store.list() == []
    assert (await api.get("/api/packages/agent")).status_code == 404
    right = hashlib.sha256(body).hexdigest()
    r = await upload(api, "agent", "1.0.0", body, sha256=right)
    assert r.status_code == 201 and r.json()["sha256"] == right
    assert len(store.list()) == 1


async def test_bad_input_gets_json_errors(api: httpx.AsyncClient, store: Store) -> None:
    r = await upload(api, "agent", "1.0", b"x")
    assert r.status_code == 400 and error_code(r) == "invalid_parameter"
    assert "version" in r.json()["error"]["message"]
    r = await upload(api, "../etc", "1.0.0", b"x")
    assert r.status_code == 400 and error_code(r) == "invalid_parameter"
    r = await api.post("/api/packages", json={"name": "x"})
    assert r.status_code == 400 and error_code(r) == "invalid_upload"
    r = await api.post("/api/packages", data={"name": "x", "version": "1.0.0"}, files={})
    assert r.status_code == 400
    # Oversize (8 MiB limit here): refused while streaming, and nothing is kept.
    r = await upload(api, "big", "1.0.0", os.urandom(8 * 1024 * 1024 + 1))
    assert r.status_code == 413 and error_code(r) == "too_large"
    assert store.list() == []
    assert (await api.get("/api/packages/nope")).status_code == 404
    assert error_code(await api.get("/api/packages/nope/latest")) == "package_not_found"
    assert (await api.get("/api/packages/nope/1.x")).status_code == 400
    agent = format_instance_uid(os.urandom(16))
    r = await api.put(
        f"/api/agents/{agent}/packages", json={"packages": [{"name": "nope", "version": "1.0.0"}]}
    )
    assert r.status_code == 404 and error_code(r) == "package_not_found"
    r = await api.put(
        f"/api/agents/{agent}/packages", json={"packages": [{"name": "a", "version": "v1"}]}
    )
    assert r.status_code == 400 and error_code(r) == "invalid_parameter"
    r = await api.put(f"/api/agents/{agent}/packages", json={"pkgs": []})
    assert r.status_code == 400
    # Downloads need a signed URL or agent credentials.
    assert (await upload(api, "agent", "1.0.0", b"abc")).status_code == 201
    async with httpx.AsyncClient(base_url=str(api.base_url)) as anonymous:
        r = await anonymous.get("/v1/packages/agent/1.0.0/file")
        assert r.status_code == 401 and error_code(r) == "unauthorized"
        r = await anonymous.get(
            "/v1/packages/agent/1.0.0/file",
            params={"expires": "99999999999", "signature": "0" * 64},
        )
        assert r.status_code == 403 and error_code(r) == "forbidden"


# ------------------------------------------------------------------------------ offers


def statuses(
    offer: pb.PackagesAvailable, status: int, *, have: bool, error: str = ""
) -> pb.PackageStatuses:
    out = pb.PackageStatuses(server_provided_all_packages_hash=offer.all_packages_hash)
    for name, available in offer.packages.items():
        entry = out.packages[name]
        entry.name = name
        entry.server_offered_version = available.version
        entry.server_offered_hash = available.hash
        entry.status = status  # type: ignore[assignment]
        entry.error_message = error
        if have:
            entry.agent_has_version = available.version
            entry.agent_has_hash = available.hash
    return out


async def fetch(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(url, headers=headers or {})


async def test_ws_agent_downloads_with_a_range_resume_and_reports_installed(
    api: httpx.AsyncClient, running: Any, store: Store
) -> None:
    content = os.urandom(3 * 1024 * 1024 + 123)
    signature = b"-----BEGIN SIGNATURE-----\nnot checked by the server\n"
    r = await upload(api, "otelcol", "0.9.0", content, signature=signature)
    assert r.status_code == 201, r.text

    async with open_ws_agent(running.url) as agent:
        agent.caps = PKG_CAPS
        first = await agent.full_state()
        assert first.capabilities & 0x8  # OffersPackages
        assert not first.HasField("packages_available")
        agent_id = format_instance_uid(agent.uid)
        r = await api.put(
            f"/api/agents/{agent_id}/packages", json={"packages": [{"name": "otelcol"}]}
        )
        assert r.status_code == 200, r.text
        offered_hash = r.json()["all_packages_hash"]

        pushed = await agent.receive()  # at once, without waiting for a heartbeat
        assert pushed.HasField("packages_available")
        offer = pushed.packages_available
        assert offer.all_packages_hash.hex() == offered_hash
        package = offer.packages["otelcol"]
        assert package.version == "0.9.0" and package.type == pb.PackageType_TopLevel
        assert package.file.content_hash == hashlib.sha256(content).digest()
        assert package.file.signature == signature
        url = package.file.download_url
        if store.kind == "filesystem":
            assert url.startswith(running.url + "/v1/packages/otelcol/0.9.0/file?")

        # The agent downloads half, "loses" the connection, and resumes with a Range request.
        half = len(content) // 2
        part1 = await fetch(url, {"Range": f"bytes=0-{half - 1}"})
        assert part1.status_code == 206, part1.text
        assert part1.headers["content-length"] == str(half)
        assert part1.headers["content-range"] == f"bytes 0-{half - 1}/{len(content)}"
        etag = part1.headers["etag"]
        r = await agent.request(
            agent.message(
                package_statuses=statuses(offer, pb.PackageStatusEnum_Downloading, have=False)
            )
        )
        assert not r.HasField("packages_available")  # it has our offer: not sent again
        part2 = await fetch(url, {"Range": f"bytes={half}-", "If-Range": etag})
        assert part2.status_code == 206
        assert part2.headers["content-range"] == f"bytes {half}-{len(content) - 1}/{len(content)}"
        downloaded = part1.content + part2.content
        assert hashlib.sha256(downloaded).digest() == package.file.content_hash
        whole = await fetch(url)
        assert whole.status_code == 200 and whole.content == content
        assert whole.headers["content-length"] == str(len(content))
        assert (await fetch(url, {"Range": f"bytes={len(content) + 10}-"})).status_code == 416

        reply = await agent.request(
            agent.message(
                package_statuses=statuses(offer, pb.PackageStatusEnum_Installed, have=True)
            )
        )
        assert not reply.HasField("packages_available")
        assert not (await agent.heartbeat()).HasField("packages_available")

        async def installed() -> Any:
            detail = (await api.get(f"/api/agents/{agent_id}")).json()
            pkgs = detail.get("packages") or {}
            sts = pkgs.get("statuses") or []
            return detail if sts and sts[0]["status"] == "installed" else None

        detail = await wait_until(installed)
        pkgs = detail["packages"]
        assert pkgs["server_provided_all_packages_hash"] == offered_hash
        assert pkgs["all_packages_hash"] == offered_hash
        assert pkgs["statuses"][0]["agent_has_version"] == "0.9.0"
        assert [o["name"] for o in pkgs["offered"]] == ["otelcol"]
        summary = (await api.get("/api/packages/otelcol/status")).json()
        assert summary["versions"] == [
            {"version": "0.9.0", "offered": 1, "counts": {"installed": 1}}
        ]
        metrics = (await api.get("/metrics")).text
        assert 'opamp_fast_package_installs_total{result="installed"} 1.0' in metrics
        assert "opamp_fast_package_offers_sent_total 1.0" in metrics

    # The agent reconnects still reporting the old hash: it is offered the package again.
    async with open_ws_agent(running.url, uid=agent.uid) as again:
        again.caps = PKG_CAPS
        old = pb.PackageStatuses(server_provided_all_packages_hash=b"\x01" * 32)
        reply = await again.request(
            again.message(agent_description=pb.AgentDescription(), package_statuses=old)
        )
        assert reply.packages_available.all_packages_hash.hex() == offered_hash


async def test_install_failure_is_reported(
    api: httpx.AsyncClient, running: Any, store: Store
) -> None:
    assert (await upload(api, "bad", "1.0.0", b"payload")).status_code == 201
    async with open_ws_agent(running.url) as agent:
        agent.caps = PKG_CAPS
        await agent.full_state()
        agent_id = format_instance_uid(agent.uid)
        await api.put(f"/api/agents/{agent_id}/packages", json={"packages": [{"name": "bad"}]})
        offer = (await agent.receive()).packages_available
        error = "disk full under https://mirror:hunter2@pkgs.example.com"
        failed = statuses(offer, pb.PackageStatusEnum_InstallFailed, have=False, error=error)
        await agent.request(agent.message(package_statuses=failed))

        async def failures() -> Any:
            body = (await api.get("/api/packages/bad/status")).json()
            return body if body["failures"] else None

        body = await wait_until(failures)
        assert body["failures"][0]["agent_id"] == agent_id
        assert body["failures"][0]["error_message"] == (
            "disk full under https://mirror:<redacted>@pkgs.example.com"
        )
        assert body["versions"][0]["counts"] == {"install_failed": 1}


async def test_agent_without_the_capability_is_never_offered_anything(
    api: httpx.AsyncClient, running: Any, store: Store
) -> None:
    assert (await upload(api, "otelcol", "1.0.0", b"payload")).status_code == 201
    async with open_ws_agent(running.url) as agent:
        agent.caps = CAPS_PYTHON_CLIENT | REPORTS_PACKAGE_STATUSES  # no AcceptsPackages
        assert not (await agent.full_state()).HasField("packages_available")
        agent_id = format_instance_uid(agent.uid)
        r = await api.put(
            f"/api/agents/{agent_id}/packages", json={"packages": [{"name": "otelcol"}]}
        )
        assert r.status_code == 200
        with anyio.move_on_after(0.5):
            unexpected = await agent.receive(timeout=1)
            pytest.fail(f"pushed to an agent that does not accept packages: {unexpected}")
        for _ in range(3):
            assert not (await agent.heartbeat()).HasField("packages_available")
        stale = pb.PackageStatuses(server_provided_all_packages_hash=b"\x02" * 32)
        assert not (await agent.request(agent.message(package_statuses=stale))).HasField(
            "packages_available"
        )
    # Nor over plain HTTP.
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        http_agent = HTTPAgent(client, uid=agent.uid, caps=CAPS_PYTHON_CLIENT)
        assert not (await http_agent.full_state()).HasField("packages_available")


async def test_http_agent_gets_the_offer_on_its_next_poll(
    api: httpx.AsyncClient, running: Any, store: Store
) -> None:
    content = os.urandom(50_000)
    assert (await upload(api, "otelcol", "1.0.0", content)).status_code == 201
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        agent = HTTPAgent(client, caps=PKG_CAPS)
        assert not (await agent.full_state()).HasField("packages_available")
        agent_id = format_instance_uid(agent.uid)
        r = await api.put(
            f"/api/agents/{agent_id}/packages",
            json={"packages": [{"name": "otelcol", "version": "1.0.0"}]},
        )
        assert r.status_code == 200
        offer = (await agent.heartbeat()).packages_available
        assert offer.packages["otelcol"].version == "1.0.0"
        body = (await fetch(offer.packages["otelcol"].file.download_url)).content
        assert hashlib.sha256(body).digest() == offer.packages["otelcol"].file.content_hash
        done = statuses(offer, pb.PackageStatusEnum_Installed, have=True)
        assert not (await agent.request(agent.message(package_statuses=done))).HasField(
            "packages_available"
        )
        assert not (await agent.heartbeat()).HasField("packages_available")


# ------------------------------------------------------------------------- signed URLs


async def test_signed_urls_hold_for_versions_with_build_metadata(server: Any) -> None:
    """A '+' in a version is percent-encoded in the offered URL's path; the signature covers the
    name and version themselves, so the agent downloads it whichever way its client spells the
    path. Characters no version may carry ('~', '%', non-ASCII) are a 400, signed or not."""
    token = token_for(server.services.settings)
    headers = {"Authorization": f"Bearer {token}"}
    content = os.urandom(20_000)
    name = "otel.col_x-1"
    async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=headers) as api:
        for version in ("1.0.1+build.7", "2.0.0-rc.1+exp.sha.5114f85"):
            assert (await upload(api, name, version, content)).status_code == 201
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            agent = HTTPAgent(client, caps=PKG_CAPS)
            await agent.full_state()
            for version in ("1.0.1+build.7", "2.0.0-rc.1+exp.sha.5114f85"):
                wanted = {"packages": [{"name": name, "version": version}]}
                agent_id = format_instance_uid(agent.uid)
                assert (await api.put(f"/api/agents/{agent_id}/packages", json=wanted)).is_success
                url = (await agent.heartbeat()).packages_available.packages[name].file.download_url
                assert f"/{name}/{version.replace('+', '%2B')}/file?" in url, url
                for spelling in (url, url.replace("%2B", "+", 1), url.replace("%2B", "%2b", 1)):
                    got = await fetch(spelling)
                    assert (got.status_code, got.content) == (200, content), (spelling, got.text)
                tampered = await fetch(url.replace("%2B", "%2B0", 1))
                assert tampered.status_code == 403, tampered.text
                assert tampered.json()["error"]["message"] == "bad signature"
        for version in ("1.0.0~rc.1", "1.0.0%", "1.0.0-\u00fc", "1.0.0+\u00e9"):
            r = await upload(api, name, version, content)
            assert r.status_code == 400 and error_code(r) == "invalid_parameter", version
            quoted = quote(version, safe="")
            r = await fetch(f"{server.url}/v1/packages/{name}/{quoted}/file?{url.split('?')[1]}")
            assert r.status_code == 400 and error_code(r) == "invalid_parameter", (version, r.text)
