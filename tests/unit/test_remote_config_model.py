"""The pure configuration domain: input validation, selectors, precedence, rollout decisions."""

from __future__ import annotations

import pytest

from opamp_fast.protocol import remote_config_hash
from opamp_fast.remote_config.model import (
    ConfigInputError,
    Directory,
    GroupRule,
    RolloutCounts,
    RolloutStep,
    VersionRef,
    batch_size,
    build_config,
    decide_rollout,
    description_attributes,
    json_attributes,
    order_groups,
    parse_files,
    parse_name,
    parse_selector,
)
from opamp_fast.storage.rows import description_to_json
from tests.helpers.agents import description

UID_A, UID_B = b"a" * 16, b"b" * 16


def test_files_hash_like_the_protocol_and_sizes_are_bounded() -> None:
    files = parse_files({"a.yaml": {"body": "x: 1", "content_type": "text/yaml"}}, max_bytes=100)
    assert files == {"a.yaml": (b"x: 1", "text/yaml")}
    assert build_config(files).config_hash == remote_config_hash(files)
    assert parse_files({"": {"body": "x"}}, max_bytes=100) == {"": (b"x", "text/yaml")}
    with pytest.raises(ConfigInputError) as big:
        parse_files({"a": {"body": "x" * 200}}, max_bytes=100)
    assert big.value.status == 413
    for bad in ({}, [], {"a": "x"}, {"a": {"body": 1}}, {"a": {"body": "x", "mode": 1}},
                {"a": {"body": "x\x00"}}):  # fmt: skip
        with pytest.raises(ConfigInputError) as err:
            parse_files(bad, max_bytes=100)
        assert err.value.status == 400


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 129, 5, None, "é"])
def test_bad_names(name: object) -> None:
    with pytest.raises(ConfigInputError):
        parse_name(name)


def test_selector_looks_in_labels_then_identifying_then_non_identifying() -> None:
    attrs = description_attributes(description("shop", **{"host.name": "h1", "env": "dev"}))
    assert attrs == ({"service.name": "shop"}, {"host.name": "h1", "env": "dev"})
    # The stored JSON gives the same attributes (REST and rollout driver use it).
    desc = description("shop", **{"host.name": "h1", "env": "dev"})
    assert json_attributes(description_to_json(desc)) == attrs
    sel = parse_selector({"env": "prod", "service.name": "shop"})
    assert sel.specificity == 2
    assert not sel.matches({}, attrs)  # env=dev from the attributes
    assert sel.matches({"env": "prod"}, attrs)  # the label shadows the attribute
    assert not sel.matches({"env": "prod", "service.name": "x"}, attrs)
    assert parse_selector({}).matches({}, ({}, {}))
    for bad in ({"k": 1}, {"": "v"}, "k=v", {f"k{i}": "v" for i in range(17)}):
        with pytest.raises(ConfigInputError):
            parse_selector(bad)


def test_precedence_pin_then_specificity_then_name() -> None:
    v = {n: VersionRef(n, 1) for n in "abcd"}
    d = Directory(configs={r: build_config({"f": (r.name.encode(), "t")}) for r in v.values()})
    d.groups = order_groups(
        [
            GroupRule("zeta", parse_selector({"env": "prod"}), v["b"]),
            GroupRule("alpha", parse_selector({"host.name": "h1"}), v["a"]),
            GroupRule("all", parse_selector({}), v["d"]),
        ]
    )
    attrs = ({}, {"host.name": "h1"})
    d.labels = {UID_A: {"env": "prod"}}
    got = d.resolve(UID_A, attrs)
    assert got is not None and (got.group, got.ref) == ("alpha", v["a"])
    assert d.resolve(UID_B, ({}, {}))  # the catch-all
    d.groups = order_groups([*d.groups, GroupRule("zz", parse_selector({"env": "prod",
                                                     "host.name": "h1"}), v["c"])])  # fmt: skip
    assert d.resolve(UID_A, attrs).group == "zz"  # type: ignore[union-attr]
    d.pins = {UID_A: v["d"]}
    pinned = d.resolve(UID_A, attrs)
    assert pinned is not None and (pinned.source, pinned.ref) == ("pin", v["d"])


def test_rollout_members_get_the_new_version_others_the_old() -> None:
    old, new = VersionRef("c", 1), VersionRef("c", 2)
    rule = GroupRule("g", parse_selector({}), new, old, frozenset({UID_A}))
    assert rule.version_for(UID_A) == new and rule.version_for(UID_B) == old
    assert GroupRule("g", parse_selector({}), new).version_for(UID_B) == new


@pytest.mark.parametrize(
    ("eligible", "percent", "size"), [(10, 20, 2), (10, 15, 2), (3, 10, 1), (0, 50, 1), (7, 100, 7)]
)
def test_batch_size(eligible: int, percent: int, size: int) -> None:
    assert batch_size(eligible, percent) == size


def counts(**kw: int) -> RolloutCounts:
    base = {"eligible": 10, "admitted": 2, "applied": 0, "failed": 0, "pending": 0, "waiting": 8}
    return RolloutCounts(**{**base, **kw})


def test_rollout_decisions() -> None:
    def decide(c: RolloutCounts, max_failed: int = 10) -> RolloutStep:
        return decide_rollout(c, batch_percent=20, max_failed_percent=max_failed).step

    assert decide(counts(pending=2)) is RolloutStep.WAIT
    nxt = decide_rollout(counts(applied=2), batch_percent=20, max_failed_percent=10)
    assert (nxt.step, nxt.admit) == (RolloutStep.NEXT_BATCH, 2)
    last = decide_rollout(counts(applied=9, admitted=9, waiting=1), batch_percent=20,
                          max_failed_percent=10)  # fmt: skip
    assert (last.step, last.admit) == (RolloutStep.NEXT_BATCH, 1)
    assert decide(counts(admitted=10, applied=10, waiting=0)) is RolloutStep.COMPLETE
    paused = decide_rollout(counts(applied=1, failed=1), batch_percent=20, max_failed_percent=10)
    assert paused.step is RolloutStep.PAUSE and "1 of 2 agents failed (50%" in (paused.reason or "")
    # Failures within the threshold do not pause; the threshold counts all admitted agents.
    assert decide(counts(admitted=10, applied=9, failed=1, waiting=0), 10) is RolloutStep.COMPLETE
    assert decide(counts(failed=1, pending=1), 50) is RolloutStep.WAIT
    assert decide(counts(eligible=0, admitted=0, waiting=0)) is RolloutStep.COMPLETE
