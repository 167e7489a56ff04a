"""Units of the package feature: semantic-version order, signed URLs, Range parsing,
the offer hash, and the protocol core's offer rules (capability, once per session, re-offer on an
older reported hash)."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opamp_fast.api.packages import parse_range
from opamp_fast.packages.registry import PackageInfo, all_packages_hash, validate_name
from opamp_fast.packages.semver import parse_semver, sort_key
from opamp_fast.packages.signing import URLSigner
from opamp_fast.protocol import (
    DEFAULT_SERVER_CAPABILITIES,
    SERVER_OFFERS_PACKAGES,
    AgentState,
    ServerPolicy,
    Session,
    Transport,
    build_push,
    pb,
    process_message,
)

# semver.org section 11's example, in increasing precedence.
ORDERED = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.2.0",
    "1.10.0",
    "2.0.0",
    "10.0.0",
]


def test_semver_precedence_follows_the_specification() -> None:
    shuffled = ORDERED[:]
    random.Random(4).shuffle(shuffled)
    assert sorted(shuffled, key=sort_key) == ORDERED
    assert parse_semver("1.0.0-rc.1").prerelease and not parse_semver("1.0.0").prerelease
    # Build metadata does not change precedence; the text breaks the tie (a total order).
    assert parse_semver("1.0.0+b").key == parse_semver("1.0.0+a").key
    assert sorted(["1.0.0+b", "1.0.0+a"], key=sort_key) == ["1.0.0+a", "1.0.0+b"]


@pytest.mark.parametrize(
    "text",
    [
        "1", "1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+", "1..0", "", "a.b.c",
        "1.0.\u0661", "1.0.1\u0661", "1.0.0-1\u0661", "1.0.0\n", "1.0.0-rc\n", "1.0.0+b\n",
    ],
)  # fmt: skip
def test_invalid_versions_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="semantic version"):
        parse_semver(text)


@pytest.mark.parametrize("name", ["collector", "otel-col_1.x", "A", "a.", "a.-.b", "x" * 128])
def test_valid_names(name: str) -> None:
    assert validate_name(name) is None


@pytest.mark.parametrize(
    "name", ["", "../x", "a/b", ".hidden", "a..b", "x" * 129, "a b", "a\n", "a..", "\u0661"]
)
def test_invalid_names(name: str) -> None:
    assert validate_name(name) is not None


def test_signed_urls_cover_name_version_and_expiry() -> None:
    signer = URLSigner(b"k" * 32)
    sig = signer.signature("a", "1.0.0", 2000)
    assert signer.verify("a", "1.0.0", 2000, sig, now=1000) is None
    assert signer.verify("a", "1.0.0", 2000, sig, now=2001) == "the download URL has expired"
    assert signer.verify("a", "1.0.0", 2001, sig, now=1000) == "bad signature"
    assert signer.verify("a", "1.0.1", 2000, sig, now=1000) == "bad signature"
    assert signer.verify("b", "1.0.0", 2000, sig, now=1000) == "bad signature"
    assert URLSigner(b"j" * 32).verify("a", "1.0.0", 2000, sig, now=1000) == "bad signature"
    assert signer.verify("a", "1.0.0", 2000, "\u00e9" * 64, now=1000) == "bad signature"
    # Nothing to encode: the message is the URL's own path, as before (old URLs stay valid).
    assert (
        signer.url("a", "1.0.0", 2000) == f"/v1/packages/a/1.0.0/file?expires=2000&signature={sig}"
    )


def _as_received(url: str) -> tuple[str, str, int, str]:
    """What the server routes on: the path decoded the way the ASGI server decodes it."""
    parts = urlsplit(url)
    _, _, _, name, version, _ = parts.path.split("/")
    query = dict(parse_qsl(parts.query))
    return unquote(name), unquote(version), int(query["expires"]), query["signature"]


@given(
    name=st.text(min_size=1, max_size=40).filter(lambda s: "/" not in s),
    version=st.text(min_size=1, max_size=40).filter(lambda s: "/" not in s),
)
def test_signed_urls_verify_after_the_round_trip_through_a_url(name: str, version: str) -> None:
    """'+', '~', '%', non-ASCII, spaces: whatever the text, the URL's decoded path verifies."""
    signer = URLSigner(b"k" * 32)
    url = "http://h:1" + signer.url(name, version, 2000)
    got_name, got_version, expires, signature = _as_received(url)
    assert (got_name, got_version) == (name, version)
    assert signer.verify(got_name, got_version, expires, signature, now=1000) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 999)),
        ("bytes=-100", (900, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=1000-", "unsatisfiable"),
        ("bytes=-0", "unsatisfiable"),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=5-1", None),
        ("bytes=x-1", None),
        ("bytes=\u00b2-5", None),  # digits are ASCII digits only
        ("bytes=-\u00b2", None),
        ("bytes=1_0-20", None),
        ("bytes= 10 - 20 ", (10, 20)),
    ],
)
def test_parse_range(header: str | None, expected: object) -> None:
    assert parse_range(header, 1000) == expected


def info(
    name: str, version: str, sha: bytes = b"\x01" * 32, sig: bytes | None = None
) -> PackageInfo:
    return PackageInfo(name, version, "top_level", 10, sha, sig, f"{name}/{version}")


def test_all_packages_hash_covers_content_not_order() -> None:
    a, b = info("a", "1.0.0"), info("b", "2.0.0")
    assert all_packages_hash([a, b]) == all_packages_hash([b, a])
    assert all_packages_hash([a]) != all_packages_hash([info("a", "1.0.1")])
    assert all_packages_hash([a]) != all_packages_hash([info("a", "1.0.0", b"\x02" * 32)])
    assert all_packages_hash([a]) != all_packages_hash([info("a", "1.0.0", sig=b"s")])


# ------------------------------------------------------------------------------ protocol core

POLICY = ServerPolicy(capabilities=DEFAULT_SERVER_CAPABILITIES | SERVER_OFFERS_PACKAGES)
UID = b"u" * 16
ACCEPTS = 0x1 | 0x8 | 0x10


def offer(tag: bytes = b"\x07") -> pb.PackagesAvailable:
    message = pb.PackagesAvailable(all_packages_hash=tag * 32)
    message.packages["col"].version = "1.0.0"
    message.packages["col"].file.download_url = "http://x/file"
    return message


def send(
    agent: AgentState, session: Session, seq: int, caps: int, **fields: object
) -> pb.ServerToAgent:
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=seq, capabilities=caps)
    if seq == 0:
        msg.agent_description.SetInParent()
    for key, value in fields.items():
        getattr(msg, key).CopyFrom(value)
    return process_message(
        agent, session, msg, policy=POLICY, now=0.0, new_uid=lambda: UID
    ).response


def test_offer_goes_only_to_agents_accepting_packages() -> None:
    agent = AgentState(UID)
    agent.set_packages_available(offer())
    session = Session(Transport.WS)
    assert not send(agent, session, 0, 0x1).HasField("packages_available")
    assert build_push(agent, session, policy=POLICY) is None
    # The same agent now reports AcceptsPackages: offered once, not again in the session.
    assert send(agent, session, 1, ACCEPTS).HasField("packages_available")
    assert not send(agent, session, 2, ACCEPTS).HasField("packages_available")
    # A server without OffersPackages never offers.
    other = AgentState(UID)
    other.set_packages_available(offer())
    plain = ServerPolicy()
    msg = pb.AgentToServer(instance_uid=UID, capabilities=ACCEPTS)
    msg.agent_description.SetInParent()
    reply = process_message(
        other, Session(Transport.WS), msg, policy=plain, now=0.0, new_uid=lambda: UID
    )
    assert not reply.response.HasField("packages_available")


def test_offer_is_resent_on_an_older_hash_and_never_after_ours() -> None:
    agent = AgentState(UID)
    session = Session(Transport.WS)
    send(agent, session, 0, ACCEPTS)
    agent.set_packages_available(offer())
    pushed = build_push(agent, session, policy=POLICY)
    assert pushed is not None and pushed.packages_available.all_packages_hash == b"\x07" * 32
    older = pb.PackageStatuses(server_provided_all_packages_hash=b"\x01" * 32)
    assert send(agent, session, 1, ACCEPTS, package_statuses=older).HasField("packages_available")
    ours = pb.PackageStatuses(server_provided_all_packages_hash=b"\x07" * 32)
    assert not send(agent, session, 2, ACCEPTS, package_statuses=ours).HasField(
        "packages_available"
    )
    # A new session of an agent that reports our hash: nothing to send.
    fresh = Session(Transport.WS)
    assert not send(agent, fresh, 3, ACCEPTS).HasField("packages_available")
    # A changed offer is pushed; withdrawing it sends nothing.
    agent.set_packages_available(offer(b"\x08"))
    again = build_push(agent, fresh, policy=POLICY)
    assert again is not None and again.packages_available.all_packages_hash == b"\x08" * 32
    agent.clear_packages_available()
    assert build_push(agent, fresh, policy=POLICY) is None


def test_same_offer_with_fresh_urls_is_not_a_new_offer() -> None:
    agent = AgentState(UID)
    agent.set_packages_available(offer())
    epoch = agent.offers_epoch
    refreshed = offer()
    refreshed.packages["col"].file.download_url = "http://x/file?fresh"
    agent.set_packages_available(refreshed)
    assert agent.offers_epoch == epoch
    assert agent.packages_available is refreshed
