"""Unit tests of REST API authentication: key material, minting, verification and its cache."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from opamp_fast.api.auth import BearerAuthMiddleware
from opamp_fast.auth import (
    AuthError,
    KeyMaterial,
    TokenVerifier,
    load_key_material,
    load_or_create_secret,
    mint_token,
    parse_ttl,
    secret_file_path,
)
from opamp_fast.errors import ConfigError
from opamp_fast.settings import Settings

SECRET = "k" * 64


def pem(private: Any) -> bytes:
    return bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def hs_verifier(**kw: Any) -> TokenVerifier:
    return TokenVerifier(KeyMaterial("HS256", SECRET, SECRET, "test"), **kw)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800), ("45", 45), (" 2h ", 7200)],
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "1w", "h", "-1h", "0s", "1.5h", "99999d", "1 h m", "\u00b2", "\u00b2h", "1_0", "\u0661h"],
)
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_secret_is_created_once_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "state" / "postgres")
    path = secret_file_path(settings)
    assert path == tmp_path / "state" / "jwt-secret"
    first = load_key_material(settings)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "new persisted secret" in first.source
    second = load_key_material(settings)
    assert second.signing_secret == first.signing_secret
    assert "new" not in second.source
    # A token minted by one (the CLI) verifies in the other (the server).
    token = mint_token(first, subject="cli", ttl_s=60)
    assert TokenVerifier(second).verify(token)["sub"] == "cli"


def test_secret_creation_race_keeps_the_first(tmp_path: Path) -> None:
    path = tmp_path / "jwt-secret"
    a, created_a = load_or_create_secret(path)
    b, created_b = load_or_create_secret(path)
    assert (created_a, created_b) == (True, False)
    assert a == b and len(a) >= 48


def test_configured_secret_wins_and_short_ones_are_refused(tmp_path: Path) -> None:
    keys = load_key_material(Settings(data_dir=tmp_path / "pg", api_jwt_secret=SECRET))
    assert keys.signing_secret == SECRET
    assert not (tmp_path / "jwt-secret").exists()
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load_key_material(Settings(data_dir=tmp_path / "pg", api_jwt_secret="short"))
    with pytest.raises(ConfigError, match="at least 64 bytes"):
        load_key_material(
            Settings(data_dir=tmp_path / "pg", api_jwt_secret="x" * 40, api_jwt_algorithm="HS512")
        )


def test_public_key_configuration_errors(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    files = {}
    for name, key in (("rsa", rsa_key), ("ec", ec_key), ("p384", p384)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(pem(key))
    (tmp_path / "junk.pem").write_text("not a key")

    def load(alg: str, path: Path | None) -> KeyMaterial:
        return load_key_material(
            Settings(data_dir=tmp_path / "pg", api_jwt_algorithm=alg, api_jwt_public_key_file=path)
        )

    assert isinstance(load("RS256", files["rsa"]).verify_key, rsa.RSAPublicKey)
    assert load("ES256", files["ec"]).signing_secret is None
    with pytest.raises(ConfigError, match="not an RSA key"):
        load("RS256", files["ec"])
    with pytest.raises(ConfigError, match="P-256"):
        load("ES256", files["p384"])
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load("RS256", tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="cannot read"):
        load("RS256", tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="needs api_jwt_public_key_file"):
        load("ES256", None)
    with pytest.raises(ConfigError, match="needs a shared secret"):
        load("HS256", files["rsa"])
    with pytest.raises(ConfigError, match="cannot mint"):
        mint_token(load("RS256", files["rsa"]), subject="x", ttl_s=60)


def test_es256_and_rs256_verify_and_reject_confusion(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier(KeyMaterial("ES256", ec_key.public_key(), None, "test"))
    exp = int(time.time()) + 60
    assert verifier.verify(jwt.encode({"exp": exp}, ec_key, algorithm="ES256"))["exp"] == exp
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthError, match="algorithm 'RS256'"):
        verifier.verify(jwt.encode({"exp": exp}, rsa_key, algorithm="RS256"))
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthError, match="bad signature"):
        verifier.verify(jwt.encode({"exp": exp}, other, algorithm="ES256"))
    with pytest.raises(AuthError, match="algorithm 'none'"):
        verifier.verify(jwt.encode({"exp": exp}, None, algorithm="none"))


@pytest.mark.parametrize(
    ("header", "why", "missing"),
    [
        (None, "missing bearer token", True),
        ("", "missing bearer token", True),
        ("Token abc", "malformed Authorization", False),
        ("Bearer", "malformed Authorization", False),
        ("Bearer a.b", "malformed token", False),
        ("Bearer " + "a" * 9000, "malformed token", False),
        ("Bearer !!.??.**", "malformed token", False),
    ],
)
def test_header_errors(header: str | None, why: str, missing: bool) -> None:
    with pytest.raises(AuthError, match=why) as info:
        hs_verifier().verify_header(header)
    assert info.value.missing is missing
    challenge = info.value.www_authenticate
    assert (
        challenge == "Bearer" if missing else challenge.startswith('Bearer error="invalid_token"')
    )


def test_challenge_is_ascii_without_quotes() -> None:
    err = AuthError('token algorithm "\u00e9\\" is odd')
    value = err.www_authenticate
    value.encode("ascii")
    assert value.count('"') == 4  # only the two quoted parameter values


def test_cache_skips_crypto_until_exp() -> None:
    clock = Clock()
    verifier = hs_verifier(clock=clock, cache_size=2)
    token = jwt.encode({"sub": "a", "exp": int(clock.now) + 10}, SECRET, algorithm="HS256")
    for _ in range(5):
        assert verifier.verify_header(f"Bearer {token}")["sub"] == "a"
    assert verifier.verified_total == 1
    clock.now += 11
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)
    # Bounded: the least recently used token is evicted.
    tokens = [
        jwt.encode({"sub": str(i), "exp": int(clock.now) + 100}, SECRET, algorithm="HS256")
        for i in range(3)
    ]
    for t in tokens:
        verifier.verify(t)
    verifier.verify(tokens[0])
    assert verifier.verified_total == 5  # 1 + 3 + tokens[0] evicted and checked again
    # Failures are never cached as successes.
    bad = tokens[1][:-3] + "abc"
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(bad)


def test_claims_checked_when_configured() -> None:
    verifier = hs_verifier(issuer="ops", audience="fleet")
    exp = int(time.time()) + 60

    def sign(**claims: Any) -> str:
        return jwt.encode({"exp": exp, **claims}, SECRET, algorithm="HS256")

    assert verifier.verify(sign(iss="ops", aud="fleet"))["iss"] == "ops"
    assert verifier.verify(sign(iss="ops", aud=["x", "fleet"]))["iss"] == "ops"
    with pytest.raises(AuthError, match="wrong audience"):
        verifier.verify(sign(iss="ops", aud="x"))
    with pytest.raises(AuthError, match="wrong issuer"):
        verifier.verify(sign(iss="x", aud="fleet"))
    with pytest.raises(AuthError, match="not yet valid"):
        verifier.verify(sign(iss="ops", aud="fleet", nbf=exp))
    with pytest.raises(AuthError, match="'exp'"):
        verifier.verify(jwt.encode({"iss": "ops", "aud": "fleet"}, SECRET, algorithm="HS256"))
    # Without configured issuer/audience those claims are not required.
    assert hs_verifier().verify(sign(aud="anything"))["aud"] == "anything"


def test_middleware_scope() -> None:
    mw = BearerAuthMiddleware(None, verifier=hs_verifier(), prefix="/api")
    assert mw._protected("/api")
    assert mw._protected("/api/agents")
    assert not mw._protected("/apix")
    assert not mw._protected("/healthz")
    assert not mw._protected("/openapi.json")
