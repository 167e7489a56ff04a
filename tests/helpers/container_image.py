"""The Dockerfile as data, for the static checks of ``tests/integration/test_container.py``.

:func:`parse_dockerfile` reads the Dockerfile with BuildKit's own parser (the ``dockerfile``
package wraps moby/buildkit's Go parser) into stages of instructions, global ARGs applied to
FROM; :class:`Stage` answers what the image ends up with (ENV, LABEL, WORKDIR, the instruction in
force). The image itself is built and run by a real Docker engine in ``tests/container``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Instruction", "Stage", "expand", "parse_dockerfile", "shell_segments"]


def _dockerfile_module() -> Any:
    try:
        import dockerfile
    except ImportError:  # pragma: no cover - the message is the point
        raise AssertionError(
            "the 'dockerfile' package (BuildKit's Dockerfile parser) is not installed: "
            "pip install dockerfile==3.4.0 (.ci/run installs it)"
        ) from None
    return dockerfile


@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case: FROM, RUN, ...
    args: tuple[str, ...]  # the words after the flags (exec form: the JSON array's items)
    flags: tuple[str, ...]  # --mount=..., --from=..., --interval=...
    json: bool  # exec (JSON) form
    line: int
    original: str

    def flag(self, name: str) -> str | None:
        for item in self.flags:
            key, _, value = item.partition("=")
            if key == f"--{name}":
                return value
        return None


@dataclass
class Stage:
    index: int
    base: str  # FROM's image or earlier stage, variables expanded
    name: str | None
    parent: Stage | None = None  # the earlier stage this one is built FROM
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # ARGs in scope (global ones re-declared)

    @property
    def image(self) -> str:
        """The base image at the root of this stage's FROM chain."""
        return self.parent.image if self.parent is not None else self.base

    def chain(self) -> list[Stage]:
        """The stages whose instructions make up this one: its FROM ancestors, then itself."""
        return [*self.parent.chain(), self] if self.parent is not None else [self]

    def all(self, cmd: str) -> list[Instruction]:
        """This stage's own instructions named ``cmd`` (not its parent's)."""
        return [i for i in self.instructions if i.cmd == cmd]

    def inherited(self, cmd: str) -> list[Instruction]:
        return [i for stage in self.chain() for i in stage.all(cmd)]

    def last(self, cmd: str) -> Instruction | None:
        """The instruction ``cmd`` in force at the end of this stage (its own or inherited)."""
        found = self.inherited(cmd)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV as the image ends up with it (later assignments win), values expanded."""
        out: dict[str, str] = {}
        for stage in self.chain():
            for inst in stage.all("ENV"):
                for key, raw in _pairs(inst.args):
                    out[key] = expand(_unquote(raw), {**stage.args, **out})
        return out

    def labels(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for stage in self.chain():
            for inst in stage.all("LABEL"):
                for key, raw in _pairs(inst.args):
                    out[_unquote(key)] = expand(_unquote(raw), stage.args)
        return out

    def workdir(self) -> str:
        current = "/"
        for stage in self.chain():
            for inst in stage.all("WORKDIR"):
                current = os.path.join(current, expand(inst.args[0], stage.args))
        return os.path.normpath(current)


def _pairs(args: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    if len(args) % 2:
        raise AssertionError(f"odd key/value list: {args}")
    for i in range(0, len(args), 2):
        yield args[i], args[i + 1]


def _unquote(raw: str) -> str:
    words = shlex.split(raw)
    return words[0] if len(words) == 1 else " ".join(words)


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Dockerfile variable substitution: ``$NAME``, ``${NAME}``, ``${NAME:-default}``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        value = variables.get(name, "")
        if not value and match.group(2) is not None:
            return match.group(2)
        return value

    return _VAR.sub(one, text)


def parse_dockerfile(path: Path) -> list[Stage]:
    """The Dockerfile's stages, as BuildKit's parser reads it (global ARGs applied to FROM)."""
    commands = _dockerfile_module().parse_file(str(path))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for c in commands:
        inst = Instruction(
            c.cmd.upper(), tuple(c.value), tuple(c.flags), bool(c.json), c.start_line, c.original
        )
        if c.heredocs:
            raise AssertionError(f"line {inst.line}: heredocs are not replayed; use RUN commands")
        if inst.cmd == "FROM":
            words = list(inst.args)
            name = None
            if len(words) == 3 and words[1].upper() == "AS":
                name = words[2]
            elif len(words) != 1:
                raise AssertionError(f"line {inst.line}: unexpected FROM {words}")
            base = expand(words[0], global_args)
            parent = next((st for st in stages if st.name == base), None)
            stages.append(Stage(len(stages), base, name, parent))
            stages[-1].instructions.append(inst)
            continue
        if inst.cmd == "ARG":
            for word in inst.args:
                key, eq, default = word.partition("=")
                target = stages[-1].args if stages else global_args
                if eq:
                    target[key] = _unquote(default)
                elif stages and key in global_args:
                    target[key] = global_args[key]  # re-declared global ARG: its default
                else:
                    target.setdefault(key, "")
        if not stages:
            if inst.cmd != "ARG":
                raise AssertionError(f"line {inst.line}: {inst.cmd} before the first FROM")
            continue
        stages[-1].instructions.append(inst)
    if not stages:
        raise AssertionError(f"{path}: no FROM")
    return stages


def shell_segments(command: str) -> list[list[str]]:
    """A RUN's shell command as ``&&``-joined simple commands (words, redirections kept)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            segments.append([])
        elif token in ("|", "||", ";", "&", "(", ")"):
            raise AssertionError(f"shell construct {token!r} is not replayed: {command!r}")
        else:
            segments[-1].append(token)
    if any(not s for s in segments):
        raise AssertionError(f"empty command in {command!r}")
    return segments
