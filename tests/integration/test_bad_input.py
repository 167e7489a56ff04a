"""Input that used to reach a 500 or slip through validation, against a live server and a real
Postgres: digits that are not ASCII, a signature that is not ASCII, JSON nested thousands deep,
and names with a trailing newline. Each is a clear JSON 4xx naming what is wrong, and changes
nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from opamp_fast.protocol.codec import format_instance_uid
from tests.helpers.config_api import api_client, create_config, files
from tests.integration.test_configs import snapshot

pytestmark = pytest.mark.postgres

SUPERSCRIPT_TWO = "%C2%B2"  # "²": str.isdigit() says yes, int() says no
ARABIC_ONE = "%D9%A1"  # U+0661: str.isdigit() says yes, and int() reads it as 1


def error(response: httpx.Response) -> tuple[int, str, str]:
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"], body["error"]["message"]


def assert_invalid(response: httpx.Response, name: str) -> None:
    status, code, message = error(response)
    assert (status, code) == (400, "invalid_parameter"), response.text
    assert message.startswith(f"{name}:"), message


async def test_digits_that_are_not_ascii_are_400_naming_the_parameter(server: Any) -> None:
    async with api_client(server, role="admin") as api:
        await create_config(api, "base", "a: 1\n")
        for digits in (SUPERSCRIPT_TWO, ARABIC_ONE, "1_0", "%201"):
            assert_invalid(await api.get(f"/api/audit?limit={digits}"), "limit")
            assert_invalid(await api.get(f"/api/configs/base/versions/{digits}"), "version")
            assert_invalid(await api.get(f"/api/agents?limit={digits}"), "limit")
            assert_invalid(await api.get(f"/api/events?last_event_id=x-{digits}"), "last_event_id")
        # The header arrives as Latin-1: the byte 0xB2 is "²".
        r = await api.get("/api/events", headers={"Last-Event-ID": b"x-\xb2"})
        assert_invalid(r, "last_event_id")
        assert (await api.get("/api/configs/base/versions/1")).status_code == 200


async def test_malformed_download_parameters_are_400_not_500(server: Any) -> None:
    signature = "0" * 64
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as anonymous:
        for expires in (SUPERSCRIPT_TWO, ARABIC_ONE, "-1", "1" * 13, ""):
            r = await anonymous.get(
                f"/v1/packages/agent/1.0.0/file?expires={expires}&signature={signature}"
            )
            assert_invalid(r, "expires")
        for bad in ("%C3%A9" * 32, "0" * 63, "0" * 65, "G" * 64, "%00" * 64):
            r = await anonymous.get(f"/v1/packages/agent/1.0.0/file?expires=9999&signature={bad}")
            assert_invalid(r, "signature")
        # Well formed but not ours: refused, as before.
        r = await anonymous.get(
            f"/v1/packages/agent/1.0.0/file?expires=99999999999&signature={signature}"
        )
        assert error(r)[:2] == (403, "forbidden")


def nest(opening: bytes, depth: int) -> bytes:
    """``depth`` objects, each the value of the one around it."""
    return opening * depth + b'"x"' + b"}" * depth


async def test_json_nested_thousands_deep_is_400_and_changes_nothing(server: Any) -> None:
    settings = server.services.settings
    before = await snapshot(settings.database_url)
    deep_selector = b'{"selector": {"a": ' + b"[" * 2000 + b"]" * 2000 + b"}}"
    deep_packages = b'{"packages": ' + b"[" * 100 + b"]" * 100 + b"}"
    async with api_client(server) as api:
        agent = format_instance_uid(b"\x01" * 16)
        cases = [  # deep enough for the decoder's own recursion limit, and under it
            ("PUT", "/api/groups/g", deep_selector),
            ("PUT", "/api/groups/g", b"[" * 30_000 + b"]" * 30_000),
            ("POST", "/api/configs", b'{"name": "n", "files": ' + nest(b'{"f": ', 50) + b"}"),
            ("PUT", f"/api/agents/{agent}/packages", deep_packages),
            ("PUT", f"/api/agents/{agent}/labels", b'{"labels": ' + nest(b'{"a": ', 40) + b"}"),
        ]
        for method, path, body in cases:
            r = await api.request(method, path, content=body)
            status, code, message = error(r)
            assert (status, code) == (400, "json_too_deep"), (path, r.text)
            assert "nested deeper than 32" in message
        assert (await api.get("/api/groups/g")).status_code == 404
    assert await snapshot(settings.database_url) == before


async def test_names_with_a_trailing_newline_are_refused(server: Any) -> None:
    settings = server.services.settings
    async with api_client(server) as api:
        await create_config(api, "base", "a: 1\n")
        before = await snapshot(settings.database_url)
        agent = format_instance_uid(b"\x02" * 16)
        writes: list[tuple[str, str, Any]] = [
            ("POST", "/api/configs", {"name": "edge\n", "files": files("a: 1\n")}),
            ("PUT", "/api/groups/prod%0A", {"selector": {}}),
            ("PUT", "/api/groups/prod", {"selector": {}, "config": "base\n"}),
            ("PUT", "/api/groups/prod", {"selector": {}, "config": "ba\x00se"}),  # was a 500
            ("PUT", f"/api/agents/{agent}/config", {"config": "base\n"}),
            ("PUT", f"/api/agents/{agent}/packages", {"packages": [{"name": "p\n"}]}),
            ("PUT", f"/api/agents/{agent}/packages",
             {"packages": [{"name": "p", "version": "1.0.0\n"}]}),
        ]  # fmt: skip
        for method, path, body in writes:
            r = await api.request(method, path, json=body)
            status, code, _ = error(r)
            assert status == 400 and code in ("invalid_body", "invalid_parameter"), (path, r.text)
        for path in (
            "/api/configs/base%0A",
            "/api/configs/base%0A/status",
            "/api/groups/prod%0A",
            "/api/packages/p%0A",
            "/api/packages/p/1.0.0%0A",
            "/v1/packages/p/1.0.0%0A/file",
        ):
            r = await api.get(path)
            assert error(r)[0] == 400, (path, r.text)
        assert await snapshot(settings.database_url) == before
        assert [c["name"] for c in (await api.get("/api/configs")).json()["configs"]] == ["base"]


async def test_the_server_reads_input_as_the_document_describes_it(server: Any) -> None:
    """Edge cases where the server used to be looser or stricter than /openapi.json."""
    async with api_client(server, role="admin") as api:
        # since/until are RFC 3339 date-times ('T' and 'Z' in either case), not any ISO 8601.
        for ok in (
            "2025-01-01T00:00:00Z",
            "2025-01-01t00:00:00.123456789z",
            "2025-01-01T02:00:00+02:00",
        ):
            assert (await api.get("/api/audit", params={"since": ok})).status_code == 200, ok
        for bad in (
            "2025-01-01",
            "2025-01-01T00:00",
            "2025-01-01 00:00:00Z",
            "",
            "2025-13-01T00:00:00Z",
        ):
            assert_invalid(await api.get("/api/audit", params={"until": bad}), "until")
        # An integer in a JSON body is any number without a fraction, as JSON Schema says.
        agent = format_instance_uid(b"\x03" * 16)
        r = await api.put(f"/api/agents/{agent}/config", json={"config": None, "version": 3.0})
        assert error(r)[:2] == (404, "agent_not_found")
        r = await api.put(f"/api/agents/{agent}/config", json={"config": None, "version": 3.5})
        assert error(r)[:2] == (400, "invalid_body")
        # Cursors have a documented shape; offset and cursor exclude each other.
        assert_invalid(await api.get("/api/agents?cursor=a.00.1"), "cursor")
        cursor = "a." + "0" * 32 + ".5"
        assert (await api.get(f"/api/agents?cursor={cursor}")).json()["total"] == 5
        assert_invalid(await api.get(f"/api/agents?cursor={cursor}&offset=0"), "offset")
        # Event types are known names, comma-separated, nothing else (an empty one included).
        for query in ("type=", "type=agent.connected,", "type=%20agent.connected"):
            assert_invalid(await api.get(f"/api/events?{query}"), "type")
        # An upload carries the documented parts, as sent (no trimming, no unknown parts).
        part = {"file": ("p.bin", b"x", "application/octet-stream")}
        refused = [
            {"name": "p", "version": "1.0.0", "color": "red"},
            {"name": "p ", "version": "1.0.0"},
            {"name": "p", "version": "1.0.0", "type": ""},
        ]
        for data in refused:
            r = await api.post("/api/packages", data=data, files=part)
            assert error(r)[0] == 400, (data, r.text)
        assert (await api.get("/api/packages/p")).status_code == 404
