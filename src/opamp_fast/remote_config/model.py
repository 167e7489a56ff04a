"""Remote configuration management, the pure part: inputs, selectors, precedence, rollouts.

Nothing here does I/O or reads a clock; ``config_service`` feeds it rows from Postgres and the
agents' live state, and the REST handlers use it to validate what operators send.

* **Versions.** A config is a name and immutable numbered versions. A version's hash is the OpAMP
  config hash (:func:`opamp_fast.protocol.remote_config_hash` over its files), so the hash an
  agent reports names exactly one version of a config.
* **Selectors** are ``{key: value}`` maps. A key is looked up in the agent's operator labels
  first, then its identifying attributes, then its non-identifying attributes (the first place
  that has the key decides); every key must match.
* **Precedence.** A pin (one agent, one version) wins. Otherwise the matching group with the most
  selector keys wins; among equally specific groups, the one whose name sorts first (by code
  point) wins. The rule is total, so every instance resolves an agent the same way.
* **Rollouts** move a group from one version to another batch by batch (:func:`decide_rollout`).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..protocol import build_remote_config, pb
from ..redaction import config_outline

__all__ = [
    "Assignment",
    "ConfigInputError",
    "Directory",
    "GroupRule",
    "RolloutCounts",
    "RolloutDecision",
    "RolloutStep",
    "Selector",
    "VersionRef",
    "batch_size",
    "component_types_available",
    "component_types_needed",
    "config_name_or_none",
    "decide_rollout",
    "description_attributes",
    "missing_component_types",
    "parse_files",
    "parse_labels",
    "parse_name",
    "parse_selector",
]

# Config and group names; also the ``pattern`` of the OpenAPI document. Matched whole
# (``fullmatch``): ``$`` alone would accept a trailing newline.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_RE = re.compile(NAME_PATTERN)
MAX_FILES = 64
MAX_FILE_NAME_CHARS = 256
MAX_CONTENT_TYPE_CHARS = 128
MAX_SELECTOR_KEYS = 16
MAX_LABELS = 64
MAX_LABEL_CHARS = 256
ACTIVE_ROLLOUT_STATES = frozenset({"running", "paused"})


class ConfigInputError(ValueError):
    """Operator input that cannot be accepted; ``status`` is 400 (or 413 when too large)."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_body") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


# ----------------------------------------------------------------------------- input


def parse_name(value: Any, what: str = "name") -> str:
    """A config or group name: 1-128 characters of ``A-Z a-z 0-9 . _ -``, starting alnum."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ConfigInputError(
            f"{what}: must be 1-128 characters of letters, digits, '.', '_' or '-' "
            f"starting with a letter or digit, got {_show(value)}"
        )
    return value


def config_name_or_none(value: Any) -> str | None:
    """A body's ``config``: a config name, or null for none."""
    return None if value is None else parse_name(value, "config")


def parse_files(value: Any, *, max_bytes: int) -> dict[str, tuple[bytes, str]]:
    """``{"<file name>": {"body": "<text>", "content_type": "<type>"}}`` -> name ->
    (body bytes, content type). The file name may be ``""`` (a single-file config). The
    bodies together may not exceed ``max_bytes`` (413): what the agent would refuse to read."""
    if not isinstance(value, dict) or not value:
        raise ConfigInputError("files: must be a non-empty object of file name -> file")
    if len(value) > MAX_FILES:
        raise ConfigInputError(f"files: at most {MAX_FILES} files")
    out: dict[str, tuple[bytes, str]] = {}
    total = 0
    for name, item in value.items():
        if len(name) > MAX_FILE_NAME_CHARS or "\x00" in name:
            raise ConfigInputError(f"files: bad file name {_show(name)}")
        if not isinstance(item, dict) or set(item) - {"body", "content_type"}:
            raise ConfigInputError(
                f"files[{name!r}]: must be an object with 'body' and optional 'content_type'"
            )
        body = item.get("body")
        content_type = item.get("content_type", "text/yaml")
        if not isinstance(body, str) or "\x00" in body:
            raise ConfigInputError(f"files[{name!r}].body: must be a string without NUL")
        if (
            not isinstance(content_type, str)
            or len(content_type) > MAX_CONTENT_TYPE_CHARS
            or "\x00" in content_type
        ):
            raise ConfigInputError(f"files[{name!r}].content_type: must be a short string")
        data = body.encode("utf-8")
        total += len(data) + len(name) + len(content_type)
        if total > max_bytes:
            raise ConfigInputError(
                f"files: larger than the {max_bytes}-byte limit (max_message_bytes)",
                status=413,
                code="too_large",
            )
        out[name] = (data, content_type)
    return out


def files_to_json(files: Mapping[str, tuple[bytes, str]]) -> dict[str, dict[str, str]]:
    """The stored (and served) form of validated files."""
    return {
        name: {"body": body.decode("utf-8"), "content_type": ctype}
        for name, (body, ctype) in sorted(files.items())
    }


def files_from_json(value: Mapping[str, Any]) -> dict[str, tuple[bytes, str]]:
    return {name: (f["body"].encode("utf-8"), f["content_type"]) for name, f in value.items()}


def parse_labels(value: Any, what: str = "labels") -> dict[str, str]:
    """``{key: value}`` of non-empty string keys and string values (short, no NUL)."""
    if not isinstance(value, dict):
        raise ConfigInputError(f"{what}: must be an object of string keys and string values")
    if len(value) > MAX_LABELS:
        raise ConfigInputError(f"{what}: at most {MAX_LABELS} entries")
    for key, item in value.items():
        if not key or len(key) > MAX_LABEL_CHARS or "\x00" in key:
            raise ConfigInputError(f"{what}: bad key {_show(key)}")
        if not isinstance(item, str) or len(item) > MAX_LABEL_CHARS or "\x00" in item:
            raise ConfigInputError(f"{what}[{key!r}]: must be a string of at most 256 characters")
    return dict(value)


@dataclass(frozen=True, slots=True)
class Selector:
    """Every ``(key, value)`` must match (see the module docstring). ``{}`` matches all."""

    items: tuple[tuple[str, str], ...]

    @property
    def specificity(self) -> int:
        return len(self.items)

    def as_dict(self) -> dict[str, str]:
        return dict(self.items)

    def matches(
        self, labels: Mapping[str, str], attributes: tuple[Mapping[str, str], Mapping[str, str]]
    ) -> bool:
        identifying, non_identifying = attributes
        for key, value in self.items:
            for source in (labels, identifying, non_identifying):
                if key in source:
                    if source[key] != value:
                        return False
                    break
            else:
                return False
        return True


def parse_selector(value: Any) -> Selector:
    labels = parse_labels(value, "selector")
    if len(labels) > MAX_SELECTOR_KEYS:
        raise ConfigInputError(f"selector: at most {MAX_SELECTOR_KEYS} keys")
    return Selector(tuple(sorted(labels.items())))


def _attr_text(value: pb.AnyValue) -> str | None:  # type: ignore[name-defined]
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    return None  # arrays, maps and bytes are not selectable


def description_attributes(
    description: pb.AgentDescription | None,
) -> tuple[dict[str, str], dict[str, str]]:
    """(identifying, non-identifying) attributes with scalar values, as text."""
    if description is None:
        return {}, {}
    out: list[dict[str, str]] = []
    for items in (description.identifying_attributes, description.non_identifying_attributes):
        attrs: dict[str, str] = {}
        for kv in items:
            text = _attr_text(kv.value)
            if text is not None:
                attrs[kv.key] = text
        out.append(attrs)
    return out[0], out[1]


def json_attributes(description: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, str]]:
    """The same from a stored ``agents.description`` (``storage.rows.description_to_json``)."""
    if not description:
        return {}, {}
    out: list[dict[str, str]] = []
    for part in ("identifying_attributes", "non_identifying_attributes"):
        attrs: dict[str, str] = {}
        for key, value in (description.get(part) or {}).items():
            if isinstance(value, bool):
                attrs[key] = "true" if value else "false"
            elif isinstance(value, str | int):
                attrs[key] = str(value)
            elif isinstance(value, float):
                attrs[key] = repr(value)
        out.append(attrs)
    return out[0], out[1]


def _show(value: Any) -> str:
    return repr(value)[:60]


# ----------------------------------------------------------------------------- precedence


@dataclass(frozen=True, slots=True, order=True)
class VersionRef:
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class GroupRule:
    """A group as the resolver sees it. During an active rollout, the agents in ``admitted``
    get ``target`` and the others ``rollout_from``."""

    name: str
    selector: Selector
    target: VersionRef | None
    rollout_from: VersionRef | None = None
    admitted: frozenset[bytes] | None = None  # None: no active rollout

    @property
    def precedence(self) -> tuple[int, str]:
        """Sort key: most specific first, then by name."""
        return (-self.selector.specificity, self.name)

    def version_for(self, uid: bytes) -> VersionRef | None:
        if self.admitted is None or uid in self.admitted:
            return self.target
        return self.rollout_from


@dataclass(frozen=True, slots=True)
class Assignment:
    """What one agent should run and why (``source``: ``pin`` or ``group``)."""

    ref: VersionRef
    config_hash: bytes
    source: str
    group: str | None = None


def order_groups(groups: Iterable[GroupRule]) -> list[GroupRule]:
    return sorted(groups, key=lambda g: g.precedence)


def winning_group(
    groups: Iterable[GroupRule],
    labels: Mapping[str, str],
    attributes: tuple[Mapping[str, str], Mapping[str, str]],
) -> GroupRule | None:
    """The group that decides for an agent (``groups`` in precedence order), or None."""
    for group in groups:
        if group.selector.matches(labels, attributes):
            return group
    return None


@dataclass(slots=True)
class Directory:
    """Everything needed to resolve any agent, loaded from Postgres by ``config_service``.

    ``configs`` holds a prebuilt ``AgentRemoteConfig`` per referenced version, shared by every
    agent that runs it. ``groups`` is in precedence order.
    """

    configs: dict[VersionRef, pb.AgentRemoteConfig] = field(default_factory=dict)
    by_hash: dict[bytes, VersionRef] = field(default_factory=dict)
    groups: list[GroupRule] = field(default_factory=list)
    pins: dict[bytes, VersionRef] = field(default_factory=dict)
    labels: dict[bytes, dict[str, str]] = field(default_factory=dict)
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> latest row

    @property
    def empty(self) -> bool:
        return not self.groups and not self.pins

    def resolve(
        self,
        uid: bytes,
        attributes: tuple[Mapping[str, str], Mapping[str, str]],
        labels: Mapping[str, str] | None = None,
    ) -> Assignment | None:
        """The agent's effective assignment, or None. ``labels`` default to the loaded ones."""
        pinned = self.pins.get(uid)
        if pinned is not None:
            return self._assignment(pinned, "pin", None)
        if labels is None:
            labels = self.labels.get(uid, {})
        group = winning_group(self.groups, labels, attributes)
        if group is None:
            return None
        ref = group.version_for(uid)
        return None if ref is None else self._assignment(ref, "group", group.name)

    def _assignment(self, ref: VersionRef, source: str, group: str | None) -> Assignment | None:
        config = self.configs.get(ref)
        if config is None:
            return None
        return Assignment(ref, bytes(config.config_hash), source, group)


def build_config(files: Mapping[str, tuple[bytes, str]]) -> pb.AgentRemoteConfig:
    return build_remote_config(files)


# ----------------------------------------------------------------------------- rollouts


def batch_size(eligible: int, batch_percent: int) -> int:
    """Agents per batch: ``batch_percent`` of the eligible agents, rounded up, at least one."""
    return max(1, math.ceil(eligible * batch_percent / 100))


class RolloutStep(enum.Enum):
    WAIT = "wait"  # the current batch has not finished
    NEXT_BATCH = "next_batch"  # admit ``admit`` more agents
    PAUSE = "pause"  # too many failures: stop here
    COMPLETE = "complete"  # every eligible agent was admitted and reported


@dataclass(frozen=True, slots=True)
class RolloutCounts:
    """A rollout's agents at one evaluation. ``pending`` counts admitted agents that are online
    and have not reported applied or failed for the new version; ``waiting`` how many eligible
    agents have not been admitted yet."""

    eligible: int
    admitted: int
    applied: int
    failed: int
    pending: int
    waiting: int


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    step: RolloutStep
    admit: int = 0
    reason: str | None = None


def decide_rollout(
    counts: RolloutCounts, *, batch_percent: int, max_failed_percent: int
) -> RolloutDecision:
    """The next step of a running rollout.

    Failures are counted over every admitted agent so far; the rollout pauses as soon as they
    pass ``max_failed_percent`` of them. A batch is finished when none of its online agents is
    still pending (offline agents do not hold a rollout up: they get the version when they come
    back). Then the next batch is ``batch_percent`` of the eligible agents.
    """
    if counts.admitted and counts.failed * 100 > max_failed_percent * counts.admitted:
        share = 100 * counts.failed / counts.admitted
        return RolloutDecision(
            RolloutStep.PAUSE,
            reason=(
                f"{counts.failed} of {counts.admitted} agents failed ({share:.0f}% > "
                f"max_failed_percent {max_failed_percent}%)"
            ),
        )
    if counts.pending:
        return RolloutDecision(RolloutStep.WAIT)
    if counts.waiting == 0:
        return RolloutDecision(RolloutStep.COMPLETE)
    size = batch_size(counts.eligible, batch_percent)
    return RolloutDecision(RolloutStep.NEXT_BATCH, admit=min(size, counts.waiting))


# ----------------------------------------------------------------------------- components

#: The sections of a collector config that name components, as the Collector reports its
#: ``AvailableComponents`` (kinds at the top, component types under each).
COMPONENT_KINDS: tuple[str, ...] = (
    "receivers",
    "processors",
    "exporters",
    "extensions",
    "connectors",
)
ComponentTypes = dict[str, frozenset[str]]  # kind -> component types


def component_types_needed(files: Mapping[str, tuple[bytes, str]]) -> ComponentTypes:
    """The component types a config's files name, by kind: the keys under ``receivers:``,
    ``processors:``... of every JSON or YAML file, a type being the id before its ``/``
    (``otlp/2`` is an ``otlp``). Files the parser cannot read with certainty name nothing (see
    ``redaction.config_outline``): such a config is never refused for them."""
    needed: dict[str, set[str]] = {}
    for body, content_type in files.values():
        outline = config_outline(bytes(body), content_type) or {}
        for kind in COMPONENT_KINDS:
            for component_id in outline.get(kind, ()):
                kind_types = needed.setdefault(kind, set())
                kind_types.add(component_id.split("/", 1)[0].strip())
    return {kind: frozenset(t for t in types if t) for kind, types in needed.items()}


def component_types_available(components: Mapping[str, Any]) -> ComponentTypes:
    """The component types of a stored component set (``storage.rows`` shape), by kind."""
    shown = components.get("components")
    out: dict[str, frozenset[str]] = {}
    for kind in COMPONENT_KINDS:
        details = shown.get(kind) if isinstance(shown, Mapping) else None
        subs = details.get("sub_component_map") if isinstance(details, Mapping) else None
        out[kind] = frozenset(subs) if isinstance(subs, Mapping) else frozenset()
    return out


def missing_component_types(
    needed: ComponentTypes, available: ComponentTypes
) -> dict[str, list[str]]:
    """The types ``needed`` names that ``available`` lacks, by kind (sorted); {} when none."""
    out = {}
    for kind, types in needed.items():
        lacking = types - available.get(kind, frozenset())
        if lacking:
            out[kind] = sorted(lacking)
    return out
