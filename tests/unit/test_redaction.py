"""Secrets in reported configs (``opamp_fast.redaction``): examples from real collector configs,
and properties checked with Hypothesis against an oracle that works on the parsed document
(PyYAML and json parse the redacted text; they are test oracles only, not used by the server)."""

from __future__ import annotations

import hashlib
import json
import re
import string
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from opamp_fast.redaction import (
    DEFAULT_SECRET_WORDS,
    REDACTED,
    ConfigRedactor,
    RedactionPolicy,
    redact_body,
    redact_value_text,
)

POLICY = RedactionPolicy.parse(",".join(DEFAULT_SECRET_WORDS))

COLLECTOR = """\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
exporters:
  otlphttp:
    endpoint: https://otlp.example.com
    headers:
      api-key: abc123SECRET1
      X-Scope-OrgID: tenant-1
  datadog:
    api:
      key: ${env:DD_API_KEY}
      site: datadoghq.eu
  prometheusremotewrite:
    endpoint: https://user:SECRET2pass@prom.example.com/api/v1/write
    headers:
      Authorization: "Bearer SECRET3tokenvalue"
      X-Extra: Bearer SECRET9abcdefgh
extensions:
  basicauth/client:
    client_auth:
      username: bob
      password: SECRET4   # rotate me
  oauth2client:
    client_id: agent
    client_secret: >-
      SECRET5line1
      SECRET5line2
    tls:
      cert_file: /etc/otel/cert.pem
      key_file: /etc/otel/key.pem
processors:
  attributes:
    actions:
      - key: db.password
        value: SECRET6
        action: upsert
      - key: service.name
        value: checkout
        action: insert
service:
  extensions: [basicauth/client, oauth2client]
  pipelines:
    traces: {receivers: [otlp], exporters: [otlphttp, datadog]}
# old credentials: SECRET7
"""


def test_a_collector_config_keeps_everything_but_its_secrets() -> None:
    out = redact_body(COLLECTOR.encode(), "text/yaml", POLICY)
    assert out.text is not None and out.withheld is None
    assert "SECRET" not in out.text
    for kept in (
        "        endpoint: 0.0.0.0:4317\n",
        "      X-Scope-OrgID: tenant-1\n",
        "      key: ${env:DD_API_KEY}\n",  # a reference to a secret is not one
        "      site: datadoghq.eu\n",
        "      username: bob\n",
        "    endpoint: https://user:<redacted>@prom.example.com/api/v1/write\n",
        "      X-Extra: Bearer <redacted>\n",
        "      password: <redacted>   # rotate me\n",
        "    client_secret: <redacted>\n    tls:\n",
        "      cert_file: /etc/otel/cert.pem\n",
        "      key_file: /etc/otel/key.pem\n",  # where the key is, not the key
        "      - key: service.name\n        value: checkout\n",
        "      - key: db.password\n        value: <redacted>\n",
        "  extensions: [basicauth/client, oauth2client]\n",
        "    traces: {receivers: [otlp], exporters: [otlphttp, datadog]}\n",
        "# old credentials: <redacted>\n",
    ):
        assert kept in out.text
    parsed = yaml.safe_load(out.text)
    assert parsed["exporters"]["otlphttp"]["headers"]["api-key"] == REDACTED
    assert parsed["exporters"]["prometheusremotewrite"]["headers"]["Authorization"] == REDACTED
    assert out.redacted == 8  # each value replaced counts once


def test_json_bodies_keep_their_formatting() -> None:
    body = json.dumps(
        {
            "endpoint": "https://collector:4318",
            "headers": [{"name": "Authorization", "value": "Basic dXNlcjpwYXNz"}],
            "auth": {"credentials": {"user": "svc", "secret": "SECRET1"}, "retries": 3},
            "token": None,
            "note": "the token is in the vault",
        },
        indent=3,
    )
    out = redact_body(body.encode(), "application/json", POLICY)
    assert out.text is not None and "SECRET" not in out.text and "dXNlcjpwYXNz" not in out.text
    assert json.loads(out.text) == {
        "endpoint": "https://collector:4318",
        "headers": [{"name": "Authorization", "value": REDACTED}],
        "auth": {"credentials": {"user": REDACTED, "secret": REDACTED}, "retries": 3},
        "token": None,  # null holds no secret
        "note": "the token is in the vault",
    }
    # Only the secret values changed: the same lines, the same indentation.
    assert len(out.text.splitlines()) == len(body.splitlines())
    assert out.text.replace(f'"{REDACTED}"', "").count("\n") == body.count("\n")


@pytest.mark.parametrize(
    ("body", "content_type", "why"),
    [
        (b"\x00\x01binary", "application/octet-stream", "binary"),
        (b"\xff\xfe", "text/yaml", "binary"),
        (b"[OUTPUT]\n    Name es\n    HTTP_Passwd SECRET\n", "text/plain", "not parsed"),
        (b'password = "SECRET"\n', "application/toml", "not parsed"),
        (b"? complex\n: SECRET\n", "text/yaml", "not parsed"),
        (b"a: 'SECRET\n", "text/yaml", "not parsed"),  # unterminated
        (b'{"password": "SECRET"', "application/json", "not parsed"),
        (b"just some text with a SECRET\n", "", "not parsed"),
        (b"a:\n\tpassword: SECRET\n", "text/yaml", "not parsed"),  # tab indentation
        (b"token: SECRET\n" + b"# padding\n" * 30_000, "text/yaml", "not parsed: larger"),
    ],
)
def test_bodies_that_cannot_be_parsed_are_withheld(
    body: bytes, content_type: str, why: str
) -> None:
    out = redact_body(body, content_type, POLICY)
    assert out.text is None and out.withheld is not None and out.withheld.startswith(why)


def test_yaml_constructs_a_config_may_use() -> None:
    body = """\
--- # anchors and aliases
base: &auth
  user: svc
  password: &pw hunter2secret
name: &given s3cretvalue
other:
  <<: *auth
  token: *pw
  api_key: *given
same_indent:
  secrets:
  - one1
  plain: ok
multi: a plain scalar
  over two lines
token: a secret
  over two lines
flow: {
  password: "x y z",  # comment token: abc
  pairs: [{key: db.password, value: pw1}, {name: user, value: u1}]
}
cert: !!binary |
  AAAA
key_pem: |2
    -----BEGIN RSA PRIVATE KEY-----
  MIIE
...
--- {token: t0k3n, url: "https://svc:pa55@host"}
"""
    out = redact_body(body.encode(), "application/x-yaml", POLICY)
    assert out.text is not None
    for secret in ("hunter2", "s3cret", "one1", "a secret", "x y z", "abc", "pw1", "MIIE", "t0k3n"):
        assert secret not in out.text
    first, second = yaml.safe_load_all(out.text)
    assert first["other"] == {
        "user": "svc",
        "password": REDACTED,
        "token": REDACTED,
        "api_key": REDACTED,
    }
    assert first["name"] == REDACTED  # anchored here, given as a secret elsewhere
    assert first["same_indent"] == {"secrets": [REDACTED], "plain": "ok"}
    assert first["multi"] == "a plain scalar over two lines"
    assert first["flow"]["pairs"] == [
        {"key": "db.password", "value": REDACTED},
        {"name": "user", "value": "u1"},
    ]
    assert first["cert"] == b"\x00\x00\x00"
    assert first["key_pem"] == REDACTED
    assert second == {"token": REDACTED, "url": "https://svc:<redacted>@host"}
    assert '  password: "<redacted>",  # comment token: <redacted>\n' in out.text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("a: # note\n  token: 1\n", "a: # note\n  token: <redacted>\n"),
        ("secrets: &s # token: x\n  - x1\n", "secrets: &s # token: <redacted>\n  - <redacted>\n"),
        ("- # note\n  token: y\n", "- # note\n  token: <redacted>\n"),
        ("k:    # note\n- token: z\n", "k:    # note\n- token: <redacted>\n"),
        ("token: |  # note\n  zz\nb: 2\n", "token: <redacted>\nb: 2\n"),
        ("a: b #token: c\n", "a: b #token: <redacted>\n"),
    ],
)
def test_comments_after_keys_dashes_and_headers(body: str, expected: str) -> None:
    out = redact_body(body.encode(), "text/yaml", POLICY)
    assert out.text == expected


def test_the_stored_shape_keeps_the_hash_of_what_was_reported() -> None:
    redactor = ConfigRedactor(POLICY)
    body = b"exporters:\n  x:\n    token: SECRET\n"
    shown = redactor.file_json(body, "text/yaml")
    assert shown == {
        "body": "exporters:\n  x:\n    token: <redacted>\n",
        "content_type": "text/yaml",
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
        "redacted": 1,
    }
    assert redactor.file_json(body, "text/yaml") is shown  # one redaction per distinct body
    withheld = redactor.file_json(b"\xff", "")
    assert withheld == {
        "content_type": "",
        "sha256": hashlib.sha256(b"\xff").hexdigest(),
        "size": 1,
        "withheld": "binary (not UTF-8 text)",
    }


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("key_file", False),
        ("bearer_token_file", False),
        ("client-secret.path", False),
        ("keystore_path", False),
        ("token_dir", False),
        ("password_filename", False),
        ("key_pem", True),  # the collector's inline key, not a path
        ("api_key", True),
        ("profile", False),  # no secret word at all
        ("filekey", True),  # the secret word last
    ],
)
def test_a_name_of_a_path_is_not_a_secret_name(name: str, secret: bool) -> None:
    assert POLICY.secret_key(name) is secret


def test_a_path_the_operator_names_as_a_secret_stays_one() -> None:
    policy = RedactionPolicy.parse("password,keyfile")
    assert policy.secret_key("key_file") and policy.secret_key("tls.keyfile")
    assert not policy.secret_key("password_file")
    out = redact_body(
        b"key_file: /k.pem\npassword_file: /p\n# key_file: /old.pem\n", "text/yaml", policy
    )
    assert out.text == "key_file: <redacted>\npassword_file: /p\n# key_file: <redacted>\n"


def test_the_word_list_is_the_operators() -> None:
    policy = RedactionPolicy.parse(" Passphrase , session-id ")
    assert policy.words == ("passphrase", "sessionid")
    out = redact_body(b"passphrase: a1\nSession_ID: a2\ntoken: a3\n", "text/yaml", policy)
    assert out.text == "passphrase: <redacted>\nSession_ID: <redacted>\ntoken: a3\n"
    with pytest.raises(ValueError, match="word"):
        RedactionPolicy.parse("password,,x y")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer eyJhbGciOi.J9x", "Bearer <redacted>"),
        ("basic   dXNlcjpwYXNz", "basic   <redacted>"),
        ("the bearer of news", "the bearer of news"),
        ("https://svc:p%40ss@host:4318/v1", "https://svc:<redacted>@host:4318/v1"),
        ("https://host:4318/v1/traces", "https://host:4318/v1/traces"),
        (
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----",
            "-----BEGIN EC PRIVATE KEY-----<redacted>-----END EC PRIVATE KEY-----",
        ),
        ("-----BEGIN CERTIFICATE-----\nMIIB\n", "-----BEGIN CERTIFICATE-----\nMIIB\n"),
    ],
)
def test_credentials_are_redacted_whatever_their_key(text: str, expected: str) -> None:
    assert redact_value_text(text)[0] == expected


# -- properties -------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\{[^{}\s]+\}")
_PAIR_NAMES = ("key", "name")


def _norm(key: str) -> str:
    return re.sub(r"[ \t\r\n\f\v_.\-]", "", key.lower())


def oracle(node: Any, secret: bool = False) -> Any:
    """What the redacted document must parse to: every scalar under a secret key replaced,
    keys kept, credentials cut out of other strings; a key/name + value pair is decided by
    what the key/name says."""
    if isinstance(node, dict):
        norms = {k: _norm(str(k)) for k in node}
        pair = "value" in norms.values() and any(n in _PAIR_NAMES for n in norms.values())
        names_secret = pair and any(
            isinstance(v, dict | list) or POLICY.secret_key(str(v))
            for k, v in node.items()
            if norms[k] in _PAIR_NAMES
        )
        out = {}
        for k, v in node.items():
            if pair and norms[k] in _PAIR_NAMES:
                flag = secret
            elif pair and norms[k] == "value":
                flag = secret or names_secret
            else:
                flag = secret or POLICY.secret_key(str(k))
            out[k] = oracle(v, flag)
        return out
    if isinstance(node, list):
        return [oracle(v, secret) for v in node]
    if secret and node is not None:  # null holds no secret
        if isinstance(node, str) and _REFERENCE.fullmatch(node):
            return node
        return REDACTED
    return redact_value_text(node)[0] if isinstance(node, str) else node


def redacted_strings(node: Any, shown: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k in node for s in redacted_strings(node[k], shown[k])]
    if isinstance(node, list):
        return [s for a, b in zip(node, shown, strict=True) for s in redacted_strings(a, b)]
    return [node] if isinstance(node, str) and shown == REDACTED and node != REDACTED else []


def strings(node: Any) -> Any:
    """Every key and string value of a parsed document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


_TRIGGERS = ("bearer", "basic", "://", "private key", "redacted")
_TEXT = string.ascii_letters + string.digits + " _-.:#'\"{}[],&*!|>?%@/\\$=~`\né\t"
_words = st.sampled_from([*DEFAULT_SECRET_WORDS, "Password", "API_KEY", "x-api-key"])
secret_keys = st.builds(
    lambda a, w, b: f"{a}{w}{b}",
    st.sampled_from(["", "client_", "db.", "X-"]),
    _words,
    st.sampled_from(["", "_file", "Id", "s"]),
)
plain_keys = st.text(
    string.ascii_letters + string.digits + "_-. /", min_size=1, max_size=24
).filter(lambda k: not POLICY.secret_key(k) and _norm(k) not in (*_PAIR_NAMES, "value"))
texts = st.text(_TEXT, max_size=40).filter(lambda s: not any(t in s.lower() for t in _TRIGGERS))
scalars = st.one_of(
    texts,
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.none(),
    st.sampled_from(["${env:API_TOKEN}", "", " padded ", "multi\nline\n", "- dash", "#hash"]),
)


def _pairs(children: Any) -> Any:
    return st.builds(
        lambda which, name, value, extra: {which: name, "value": value, **extra},
        st.sampled_from(["key", "name", "Name"]),
        st.one_of(texts, secret_keys),
        children,
        st.dictionaries(plain_keys, children, max_size=2),
    )


def _collections(children: Any) -> Any:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(plain_keys, secret_keys), children, max_size=5),
        _pairs(children),
    )


documents = st.recursive(scalars, _collections, max_leaves=25).filter(
    lambda d: isinstance(d, dict | list)
)


class _LiteralDumper(yaml.SafeDumper):
    pass


def _literal(dumper: yaml.SafeDumper, value: str) -> Any:
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    )


_LiteralDumper.add_representer(str, _literal)

yaml_styles = st.fixed_dictionaries(
    {
        "default_flow_style": st.sampled_from([False, True, None]),
        "default_style": st.sampled_from([None, None, '"', "'"]),
        "width": st.sampled_from([20, 60, 4096]),
        "indent": st.sampled_from([2, 3, 4]),
        "explicit_start": st.booleans(),
        "allow_unicode": st.booleans(),
        "Dumper": st.sampled_from([yaml.SafeDumper, _LiteralDumper]),
    }
)


def check(doc: Any, text: str, content_type: str, load: Any) -> None:
    out = redact_body(text.encode(), content_type, POLICY)
    assert out.withheld is None, out.withheld
    assert out.text is not None
    expected = oracle(doc)
    assert load(out.text) == expected
    kept = list(strings(expected))
    for secret in redacted_strings(doc, expected):
        if len(secret.strip()) >= 6 and not any(secret in k for k in kept):
            assert secret not in out.text
    if expected == doc:  # nothing to redact: not a byte changes
        assert out.text == text and out.redacted == 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, yaml_styles, st.sampled_from(["\n", "\r\n"]))
def test_yaml_no_secret_survives_and_nothing_else_changes(
    doc: Any, style: dict[str, Any], newline: str
) -> None:
    text = yaml.dump(doc, sort_keys=False, **style).replace("\n", newline)
    check(doc, text, "text/yaml", yaml.safe_load)


@settings(max_examples=300, deadline=None)
@given(documents, st.sampled_from([None, 0, 2, "\t"]), st.booleans())
def test_json_no_secret_survives_and_nothing_else_changes(
    doc: Any, indent: Any, ascii_only: bool
) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    check(doc, text, "application/json", json.loads)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(_TEXT + "\t\r\x00\u2028", max_size=200),
        st.builds(lambda d, cut: d[:cut], st.just(COLLECTOR), st.integers(0, len(COLLECTOR))),
        st.builds(lambda n: "[" * n + "token: x" + "}" * n, st.integers(0, 5000)),
    ),
    st.sampled_from(["text/yaml", "application/json", "", "text/plain"]),
)
def test_any_text_is_redacted_or_withheld_never_an_error(text: str, content_type: str) -> None:
    out = redact_body(text.encode(), content_type, POLICY)
    assert (out.text is None) == (out.withheld is not None)


_token68 = st.text(string.ascii_letters + string.digits + "-._~+/", min_size=8, max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    plain_keys,
    st.sampled_from(["Bearer ", "basic ", "BEARER  "]),
    _token68.filter(lambda t: any(c.isdigit() for c in t)),
    st.sampled_from(["text/yaml", "application/json"]),
)
def test_credentials_never_survive_under_any_key(
    key: str, scheme: str, token: str, content_type: str
) -> None:
    assume(token not in key)
    doc = {
        key: f"{scheme}{token}",
        "url": f"https://u:{token}@h.example/x",
        "pem": f"-----BEGIN PRIVATE KEY-----\n{token}\n-----END PRIVATE KEY-----\n",
    }
    text = yaml.safe_dump(doc) if content_type == "text/yaml" else json.dumps(doc)
    out = redact_body(text.encode(), content_type, POLICY)
    assert out.text is not None and token not in out.text
