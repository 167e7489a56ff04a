"""Tokens: bearer JWTs of the REST API, per-agent OpAMP tokens, and the key material the server
shares with the CLI. The ASGI middleware that applies them is ``api.auth``.

Why it looks like this:

* **One pinned algorithm.** The verifier accepts exactly ``settings.api_jwt_algorithm``; a token
  whose header names another one (``none``, or HS256 signed with an RSA public key as the HMAC
  secret: the classic HS/RS confusion) is rejected before any signature check.
* **Works out of the box.** With neither ``api_jwt_secret`` nor ``api_jwt_public_key_file``
  configured, a random secret is created once in ``<data_dir parent>/jwt-secret`` (mode 0600)
  and used by both the server and ``opamp-fast token``, so a fresh install can mint a token and
  call the API without any configuration, and nothing guessable is ever accepted.
* **Cheap repeated requests.** A dashboard polls with the same token over and over; verified
  tokens are kept in a small LRU keyed by the raw token until their ``exp``, so the signature
  (microseconds for HMAC, far more for RSA/ECDSA) is checked once per token, not per request.
* **Roles.** A token's ``role`` claim is ``viewer`` (reads), ``operator`` (also changes
  configs, labels, groups and rollouts) or ``admin`` (everything). A token without a ``role``
  claim is an ``admin`` token: tokens minted before roles existed keep working unchanged. An
  unknown role is a 401. Handlers read ``request.state.subject``/``request.state.role`` (or
  :func:`principal_of`) and call :func:`opamp_fast.api.roles.require_role`.
* **Says why.** Every rejection is a 401 ``{"error": {"code": "unauthorized", "message"}}``
  whose message names the problem (missing, malformed, expired, bad signature, wrong audience,
  ...) with ``WWW-Authenticate: Bearer error="invalid_token"`` (plain ``Bearer`` when no
  credentials were sent, RFC 6750 section 3.1).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import ConfigError, StartupError
from .settings import Settings
from .strictint import parse_ascii_int

logger = logging.getLogger(__name__)

SECRET_FILE_NAME = "jwt-secret"
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
_MIN_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MAX_TOKEN_CHARS = 8192  # a JWT bigger than this is garbage, not a credential
_TTL_RE = re.compile(r"\s*([0-9]{1,10})\s*([smhd])\s*")  # fullmatch
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class AuthError(Exception):
    """A request's credentials were rejected; ``message`` says why (safe to show)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing

    @property
    def www_authenticate(self) -> str:
        if self.missing:
            return "Bearer"
        # RFC 6750 section 3: error_description is printable ASCII without '"' and '\\'.
        description = "".join(c for c in self.message if " " <= c <= "~" and c not in '"\\')
        return f'Bearer error="invalid_token", error_description="{description}"'


# ----------------------------------------------------------------------------- key material


def secret_file_path(settings: Settings) -> Path:
    """Where the generated secret lives: next to (not inside) the embedded Postgres data dir."""
    return settings.data_dir.parent / SECRET_FILE_NAME


def load_or_create_secret(path: Path) -> tuple[str, bool]:
    """``(secret, created)``: read the persisted secret, creating it (mode 0600) on first use.

    Creation uses ``O_EXCL`` so two processes starting at once (server and ``token``) agree on
    one secret: the loser of the race reads the winner's file. An unusable location (not a
    directory, no permission) is one clear ``StartupError``.
    """
    try:
        return _load_or_create_secret(path)
    except OSError as exc:
        raise StartupError(
            f"JWT secret file {path} cannot be read or created: {exc.strerror or exc}"
        ) from None


def _load_or_create_secret(path: Path) -> tuple[str, bool]:
    try:
        return _read_secret(path), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_urlsafe(48)  # 384 random bits: enough for HS512 too
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path), False
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret + "\n")
    return secret, True


def _read_secret(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s is readable by other users (mode %o); chmod 600 it", path, mode & 0o777)
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 32:
        raise ConfigError(f"{path}: the persisted JWT secret is too short; delete the file")
    return secret


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """The verification key (and, for HS*, the signing key) for the configured algorithm."""

    algorithm: str
    verify_key: Any  # str for HS*, a cryptography public key object for RS256/ES256
    signing_secret: str | None  # the HMAC secret; None when only a public key is known
    source: str  # human-readable origin, for logs and CLI errors


def load_key_material(settings: Settings, *, create: bool = True) -> KeyMaterial:
    """The keys for ``settings``; raises :class:`ConfigError` on an inconsistent configuration."""
    alg = settings.api_jwt_algorithm
    if alg in HMAC_ALGORITHMS:
        if settings.api_jwt_secret is not None:
            secret, source = settings.api_jwt_secret, "api_jwt_secret"
        elif settings.api_jwt_public_key_file is not None:
            raise ConfigError(
                f"api_jwt_algorithm: {alg} needs a shared secret, but only "
                "api_jwt_public_key_file is set (use RS256 or ES256 with a public key)"
            )
        else:
            path = secret_file_path(settings)
            if not create and not path.exists():
                raise ConfigError(f"no JWT secret configured and {path} does not exist")
            secret, created = load_or_create_secret(path)
            source = f"{'new ' if created else ''}persisted secret in {path}"
        if len(secret.encode("utf-8")) < _MIN_HMAC_BYTES[alg]:
            raise ConfigError(
                f"api_jwt_secret: must be at least {_MIN_HMAC_BYTES[alg]} bytes for {alg} "
                "(RFC 7518 section 3.2)"
            )
        return KeyMaterial(alg, secret, secret, source)
    path_or_none = settings.api_jwt_public_key_file
    if path_or_none is None:
        raise ConfigError(f"api_jwt_algorithm: {alg} needs api_jwt_public_key_file (a PEM key)")
    try:
        key = load_pem_public_key(path_or_none.read_bytes())
    except OSError as exc:
        raise ConfigError(f"api_jwt_public_key_file: cannot read {path_or_none}: {exc}") from None
    except ValueError:
        raise ConfigError(
            f"api_jwt_public_key_file: {path_or_none} is not a PEM public key"
        ) from None
    if alg == "RS256" and not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"api_jwt_public_key_file: {path_or_none} is not an RSA key (RS256)")
    if alg == "ES256" and not (
        isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        raise ConfigError(f"api_jwt_public_key_file: {path_or_none} is not a P-256 EC key (ES256)")
    return KeyMaterial(alg, key, None, f"public key {path_or_none}")


# ----------------------------------------------------------------------------- roles

ROLES = ("viewer", "operator", "admin")  # each role can do everything the previous one can
DEFAULT_ROLE = "admin"  # a token without a ``role`` claim (minted before roles existed)
_ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's ``sub`` and its role."""

    subject: str
    role: str

    def allows(self, minimum: str) -> bool:
        """True when this principal's role is ``minimum`` or above it."""
        return role_allows(self.role, minimum)


def role_allows(role: str, minimum: str) -> bool:
    """``viewer`` < ``operator`` < ``admin``; unknown roles allow nothing."""
    return _ROLE_RANK.get(role, -1) >= _ROLE_RANK[minimum]


def role_of_claims(claims: Mapping[str, Any]) -> str:
    """The role a verified token carries; AuthError when the claim is present but unknown."""
    role = claims.get("role", DEFAULT_ROLE)
    if not isinstance(role, str) or role not in _ROLE_RANK:
        raise AuthError(f"token role {ascii(role)[:40]} is not one of {', '.join(ROLES)}")
    return str(role)


def principal_of(scope: Mapping[str, Any]) -> Principal:
    """The principal of a request's ASGI scope (``request.scope``), set by the middleware.

    Requests that did not pass the middleware (paths outside ``/api``) are anonymous viewers.
    """
    claims = scope.get("auth")
    if not isinstance(claims, Mapping):
        return Principal("anonymous", "viewer")
    return Principal(str(claims.get("sub", "")), role_of_claims(claims))


# ----------------------------------------------------------------------------- minting


def parse_ttl(text: str) -> int:
    """``30s``, ``15m``, ``1h``, ``7d`` (or bare seconds) -> seconds; ValueError otherwise."""
    bare = parse_ascii_int(text.strip(), max_digits=10)
    if bare is not None:
        seconds = bare
    else:
        match = _TTL_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not a duration such as 30s, 15m, 1h or 7d")
        seconds = int(match.group(1)) * _TTL_UNITS[match.group(2)]
    if not 1 <= seconds <= 10 * 365 * 86400:
        raise ValueError(f"{text!r} must be between 1 second and 10 years")
    return seconds


def mint_token(
    keys: KeyMaterial,
    *,
    subject: str,
    ttl_s: int,
    issuer: str | None = None,
    audience: str | None = None,
    role: str | None = None,
    now: float | None = None,
) -> str:
    """An HS* token for ``subject`` (with a ``role`` claim when given); ConfigError when only a
    public key is known or the role is unknown."""
    if role is not None and role not in _ROLE_RANK:
        raise ConfigError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    if keys.signing_secret is None:
        raise ConfigError(
            f"cannot mint tokens: the API verifies {keys.algorithm} tokens with a {keys.source}; "
            "sign tokens with the matching private key instead"
        )
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": subject, "iat": issued, "exp": issued + ttl_s}
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    if role is not None:
        claims["role"] = role
    return jwt.encode(claims, keys.signing_secret, algorithm=keys.algorithm)


# ----------------------------------------------------------------------------- agent tokens
#
# A per-agent token is an HS256 JWT whose ``sub`` is the agent's instance uid (canonical UUID
# text) and whose audience is ``opamp-agent``. It is signed with its own key (``agent_token_
# secret``, or one derived from the REST secret with HMAC and a fixed label), so a REST token
# can never pass as an agent token or the other way round. An agent that presents one is bound
# to that uid: it cannot speak for another agent.

AGENT_AUDIENCE = "opamp-agent"
_AGENT_KEY_LABEL = b"opamp-fast agent tokens v1"


def agent_token_key(settings: Settings) -> str | None:
    """The HMAC key of per-agent tokens, or None when none can be had (public-key REST auth
    and no ``agent_token_secret``)."""
    if settings.agent_token_secret is not None:
        return settings.agent_token_secret
    keys = load_key_material(settings)
    if keys.signing_secret is None:
        return None
    return hmac.new(keys.signing_secret.encode(), _AGENT_KEY_LABEL, hashlib.sha256).hexdigest()


def mint_agent_token(key: str, *, instance_uid: str, ttl_s: int, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {"sub": instance_uid, "aud": AGENT_AUDIENCE, "iat": issued, "exp": issued + ttl_s}
    return jwt.encode(claims, key, algorithm="HS256")


class AgentTokenVerifier:
    """``uid_of(token)``: the 16-byte instance uid a valid agent token is bound to, else None.

    Runs once per WebSocket connection and once per plain-HTTP POST; good tokens are kept in a
    bounded LRU until their expiry so a polling agent costs one HMAC, not one per poll.
    """

    def __init__(self, key: str, *, cache_size: int = 4096, clock: Any = time.time) -> None:
        self._key = key
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._cache_size = cache_size
        self._jwt = jwt.PyJWT()

    def uid_of(self, token: str) -> bytes | None:
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            exp, uid = hit
            if now < exp:
                self._cache.move_to_end(token)
                return uid
            del self._cache[token]
            return None
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            return None
        try:
            claims = self._jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=AGENT_AUDIENCE,
                options={"require": ["exp", "sub", "aud"]},
            )
            uid = bytes.fromhex(str(claims["sub"]).replace("-", ""))
        except (jwt.InvalidTokenError, ValueError):
            return None
        if len(uid) != 16:
            return None
        self._cache[token] = (float(claims["exp"]), uid)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return uid


# ----------------------------------------------------------------------------- verification


class TokenVerifier:
    """Verifies bearer tokens against one pinned algorithm, with a bounded LRU of good tokens."""

    def __init__(
        self,
        keys: KeyMaterial,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        cache_size: int = 1024,
        clock: Any = time.time,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self._cache: OrderedDict[str, tuple[float, Mapping[str, Any]]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock
        self._jwt = jwt.PyJWT()
        self.verified_total = 0  # signature checks actually done (cache misses that passed)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        keys = load_key_material(settings)
        logger.info("REST API accepts %s bearer tokens (%s)", keys.algorithm, keys.source)
        return cls(keys, issuer=settings.api_jwt_issuer, audience=settings.api_jwt_audience)

    def verify_header(self, authorization: str | None) -> Mapping[str, Any]:
        """The claims of the token in an ``Authorization`` header value, or raise AuthError."""
        if not authorization:
            raise AuthError(
                "missing bearer token (send 'Authorization: Bearer <JWT>')", missing=True
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("malformed Authorization header: expected 'Bearer <JWT>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> Mapping[str, Any]:
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            exp, claims = hit
            if now < exp:
                self._cache.move_to_end(token)
                return claims
            del self._cache[token]
            raise AuthError("token expired")
        claims = self._decode(token)
        exp = float(claims["exp"])
        self.verified_total += 1
        self._cache[token] = (exp, claims)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return claims

    def _decode(self, token: str) -> Mapping[str, Any]:
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise AuthError("malformed token: not a compact JWS (header.payload.signature)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed token: the header is not valid base64url JSON") from None
        alg = header.get("alg")
        if alg != self.keys.algorithm:
            raise AuthError(
                f"token algorithm {ascii(alg)[:40]} is not accepted (this server accepts "
                f"{self.keys.algorithm} only)"
            )
        options: dict[str, Any] = {"require": ["exp"], "verify_aud": self.audience is not None}
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token,
                self.keys.verify_key,
                algorithms=[self.keys.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad signature") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"wrong audience (expected {self.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise AuthError(f"wrong issuer (expected {self.issuer!r})") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid (nbf or iat in the future)") from None
        except jwt.InvalidAlgorithmError:
            message = f"token algorithm is not accepted ({self.keys.algorithm} only)"
            raise AuthError(message) from None
        except jwt.DecodeError:
            raise AuthError("malformed token: cannot decode it") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        if not isinstance(claims.get("exp"), int | float):
            raise AuthError("token 'exp' claim is not a number")
        role_of_claims(claims)  # an unknown role is refused here, once per token
        return claims
