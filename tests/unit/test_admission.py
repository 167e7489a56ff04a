"""Admission: credentials and their identity, capacity, and shedding with jittered Retry-After."""

from __future__ import annotations

import uuid

import pytest

from opamp_fast.auth import AgentTokenVerifier, mint_agent_token
from opamp_fast.fleet.admission import Admission, LoopLag, cert_identity
from opamp_fast.protocol import Transport
from opamp_fast.transport.handlers import ConnectingRequest

KEY = "k" * 64
UID = uuid.uuid4()


def request(
    transport: Transport = Transport.WS, authorization: str | None = None, cert: dict | None = None
) -> ConnectingRequest:
    headers = {"authorization": authorization} if authorization else {}
    return ConnectingRequest(transport, "/v1/opamp", "127.0.0.1:1", headers, cert)


def test_open_server_accepts_anyone_without_identity() -> None:
    verdict = Admission().decide(request())
    assert verdict.accept and verdict.identity is None


def test_shared_token() -> None:
    admission = Admission(agent_auth_token="sekrit")
    assert admission.decide(request(authorization="Bearer sekrit")).accept
    for bad in (None, "Bearer wrong", "Basic c2Vrcml0", "Bearer sekrit2"):
        verdict = admission.decide(request(authorization=bad))
        assert verdict.http_status == 401 and verdict.headers == (("www-authenticate", "Bearer"),)


def test_agent_token_binds_identity_and_shared_token_does_not() -> None:
    verifier = AgentTokenVerifier(KEY)
    token = mint_agent_token(KEY, instance_uid=str(UID), ttl_s=60)
    admission = Admission(agent_auth_token="sekrit", agent_tokens=verifier, require_identity=True)
    verdict = admission.decide(request(authorization=f"Bearer {token}"))
    assert verdict.accept and verdict.identity == UID.bytes
    refused = admission.decide(request(authorization="Bearer sekrit"))
    assert refused.http_status == 401 and "bound to an instance uid" in refused.reason
    expired = mint_agent_token(KEY, instance_uid=str(UID), ttl_s=60, now=0)
    assert admission.decide(request(authorization=f"Bearer {expired}")).http_status == 401
    forged = mint_agent_token("x" * 64, instance_uid=str(UID), ttl_s=60)
    assert admission.decide(request(authorization=f"Bearer {forged}")).http_status == 401


def test_certificate_identity() -> None:
    cert = {"subject": ((("commonName", str(UID)),),)}
    assert cert_identity(cert) == UID.bytes
    san = {
        "subject": ((("commonName", "agent-7"),),),
        "subjectAltName": (("URI", f"urn:uuid:{UID}"),),
    }
    assert cert_identity(san) == UID.bytes
    assert cert_identity({"subject": ((("commonName", "agent-7"),),)}) is None
    assert cert_identity(None) is None
    admission = Admission(require_client_cert=True)
    assert admission.decide(request()).http_status == 401
    assert admission.decide(request(cert=cert)).identity == UID.bytes
    token = mint_agent_token(KEY, instance_uid=str(uuid.uuid4()), ttl_s=60)
    both = Admission(agent_tokens=AgentTokenVerifier(KEY)).decide(
        request(authorization=f"Bearer {token}", cert=cert)
    )
    assert both.http_status == 401 and "different uids" in both.reason


@pytest.mark.parametrize("why", ["capacity", "database", "shutdown"])
def test_each_shedding_reason_answers_503_with_jittered_retry_after(why: str) -> None:
    admission = Admission(
        max_connections=1,
        max_handshakes=1,
        max_loop_lag_s=0.5,
        overloaded=lambda: why == "database",
        loop_lag=lambda: 2.0 if why == "loop_lag" else 0.0,
    )
    admission.open_connections = 1 if why == "capacity" else 0
    admission.handshakes = 1 if why == "handshakes" else 0
    admission.shutting_down = why == "shutdown"
    retries = set()
    for _ in range(200):
        verdict = admission.decide(request())
        assert verdict.http_status == 503
        retries.add(int(dict(verdict.headers)["retry-after"]))
    assert min(retries) >= 30 and max(retries) <= 60 and len(retries) > 10  # spread out
    assert admission.shed_total == {why: 200}


@pytest.mark.parametrize("why", ["handshakes", "loop_lag"])
def test_a_crowd_is_told_to_return_as_fast_as_the_server_admits(why: str) -> None:
    """New WebSockets refused for load come back over the time the server needs to admit them
    (the refused / the measured admission rate), not after a fixed 30-60 s."""
    now = [1000.0]
    admission = Admission(
        max_handshakes=1, loop_lag=lambda: 2.0 if why == "loop_lag" else 0.0, clock=lambda: now[0]
    )
    admission.handshakes = 1 if why == "handshakes" else 0
    for second in range(5):  # 200 admissions a second over the window
        now[0] = 1000.0 + second
        for _ in range(200):
            admission.pace.admitted()
    retries = [int(dict(admission.decide(request()).headers)["retry-after"]) for _ in range(1000)]
    assert 1 <= min(retries) and max(retries) <= 6  # 1,000 refused at 200/s: within ~5 s
    assert len(set(retries)) >= 5  # spread, not all at once
    now[0] += 10  # the window passed: nothing admitted or refused since
    assert admission.pace.rate() == admission.pace.prior_rate
    assert int(dict(admission.decide(request()).headers)["retry-after"]) <= 2
    assert admission.shed_total == {why: 1001}


def test_the_pace_caps_the_wait_when_nothing_is_admitted() -> None:
    admission = Admission(max_handshakes=1, clock=lambda: 5.0, retry_after_s=30)
    admission.handshakes = 1
    retries = [int(dict(admission.decide(request()).headers)["retry-after"]) for _ in range(5000)]
    assert max(retries) <= 61  # 5,000 refused at the prior of 1/s: capped at 2 x retry_after_s


def test_lag_and_handshake_caps_spare_plain_http_polls() -> None:
    """A poll may come from an agent already connected: only new WebSockets are shed for them."""
    admission = Admission(max_handshakes=1, loop_lag=lambda: 5.0)
    admission.handshakes = 1
    assert admission.decide(request(Transport.HTTP)).accept
    assert admission.decide(request(Transport.WS)).http_status == 503


async def test_loop_lag_measures_a_blocked_loop_and_decays() -> None:
    import time

    import anyio

    lag = LoopLag(interval_s=0.02, decay=0.5)
    async with anyio.create_task_group() as tg:
        await tg.start(lag.run)
        await anyio.sleep(0.05)
        time.sleep(0.3)  # noqa: ASYNC251 - block the loop on purpose, as a stall would
        seen = 0.0
        for _ in range(30):  # the first tick after the stall reports it
            await anyio.sleep(0.001)
            seen = max(seen, lag())
        assert seen >= 0.2
        await anyio.sleep(0.5)
        assert lag() < 0.05  # forgotten within a few intervals
        tg.cancel_scope.cancel()
