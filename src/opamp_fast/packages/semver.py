"""Semantic versions (https://semver.org, 2.0.0): strict parsing and precedence.

The rule, as the specification states it: compare ``MAJOR.MINOR.PATCH`` numerically; a version
with a pre-release (``1.0.0-rc.1``) sorts before the same version without one; pre-release
identifiers compare left to right, numeric ones numerically, alphanumeric ones in ASCII order,
numeric before alphanumeric, and a shorter list before a longer one it prefixes. Build metadata
(``+build.5``) does not change precedence; two versions differing only in it are ordered by
their text, so that the order is total and stable. No leading ``v``, no leading zeros.

``packaging.version.Version`` is not used: it implements PEP 440, which orders pre-releases
differently (``1.0.0-rc.1`` and ``1.0.0rc1`` are the same there) and rejects valid semver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..strictint import parse_ascii_int

__all__ = ["SEMVER_PATTERN", "SemVer", "parse_semver", "sort_key"]

_NUM = r"0|[1-9][0-9]*"  # [0-9], not \d: \d is every script's digits
_IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BODY = (
    rf"(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_SEMVER = re.compile(_BODY)  # matched whole (fullmatch): "$" alone would accept a final "\n"
# The same, without group names, for the ``pattern`` of the OpenAPI document (ECMA-262).
SEMVER_PATTERN = "^" + re.sub(r"\(\?P<[a-z]+>", "(?:", _BODY) + "$"
MAX_VERSION_CHARS = 128


@dataclass(frozen=True, slots=True, order=True)
class SemVer:
    """A parsed version; instances order by semantic-version precedence (then text)."""

    key: tuple[object, ...] = field(repr=False)
    text: str

    @property
    def prerelease(self) -> bool:
        return self.key[3] == 0


def _pre_key(pre: str | None) -> tuple[object, ...]:
    if pre is None:
        return (1,)  # a release sorts after every pre-release of the same version
    parts: list[tuple[int, int, str]] = []
    for ident in pre.split("."):
        number = parse_ascii_int(ident, max_digits=MAX_VERSION_CHARS)
        if number is not None:
            parts.append((0, number, ""))
        else:
            parts.append((1, 0, ident))
    return (0, tuple(parts))


def parse_semver(text: str) -> SemVer:
    """Parse ``text``; ValueError names what is wrong."""
    if len(text) > MAX_VERSION_CHARS:
        raise ValueError(f"longer than {MAX_VERSION_CHARS} characters")
    match = _SEMVER.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build], e.g. 1.4.2)"
        )
    major, minor, patch = (int(match.group(g)) for g in ("major", "minor", "patch"))
    pre = _pre_key(match.group("pre"))
    return SemVer((major, minor, patch, pre[0], *pre[1:]), text)


def sort_key(text: str) -> SemVer:
    """``parse_semver`` for ``sorted(..., key=sort_key)``."""
    return parse_semver(text)
