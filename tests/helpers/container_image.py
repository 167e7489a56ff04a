"""The Dockerfile as data, and its build replayed on this machine without a Docker engine.

:func:`parse_dockerfile` reads the Dockerfile with BuildKit's own parser (the ``dockerfile``
package wraps moby/buildkit's Go parser) into stages of instructions. :class:`BuildReplay` then
carries those stages out in directories standing in for each stage's root file system:

* ``FROM python:3.X-slim...`` is a fresh virtual environment of the running interpreter (the
  image's ``python`` and ``pip``), ``WORKDIR`` and every absolute path map under the stage's root;
* ``COPY`` copies from the build context as Docker sends it, ``.dockerignore`` applied;
* ``RUN`` commands run for real: ``pip``, ``python`` and ``opamp-fast`` as written (paths mapped),
  ``install -d`` with the image user mapped to the current one; ``apt-get``, ``groupadd`` and
  ``useradd`` change the machine, so they are skipped here and checked statically instead. Any
  other command fails the replay, so a new step cannot go unexercised by accident;
* ``RUN --mount=type=cache`` for pip's cache is this machine's pip cache, ``type=bind,from=STAGE``
  is that stage's directory.

Only what the project's Dockerfile uses is supported; anything else fails loudly.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BuildReplay",
    "Instruction",
    "Stage",
    "build_context_files",
    "expand",
    "parse_dockerfile",
    "shell_segments",
]

#: Commands a RUN may use, by how the replay treats them.
RUN_EXECUTED = frozenset({"pip", "python", "opamp-fast"})
RUN_EMULATED = frozenset({"install", "mkdir"})
RUN_SKIPPED = frozenset({"apt-get", "groupadd", "useradd"})
_APT_PATHS = ("/var/lib/apt/lists", "/var/cache/apt")
_OPERATORS = frozenset({"&&", ">", ">>", "<"})
_PASSED_ENV = ("PIP_", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY")


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


# --------------------------------------------------------------------------- build context


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    negated: bool
    prefix: str  # the pattern up to its first wildcard


def _compile(pattern: str) -> _Pattern:
    negated = pattern.startswith("!")
    pattern = pattern[1:].strip() if negated else pattern
    pattern = os.path.normpath(pattern).lstrip("/")
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        elif c == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out, i = out + "[" + ("^" + body[1:] if body.startswith("!") else body) + "]", end + 1
        else:
            out, i = out + re.escape(c), i + 1
    prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return _Pattern(re.compile(out + r"\Z"), negated, prefix)


class DockerIgnore:
    """``.dockerignore`` as moby's patternmatcher applies it: the last matching pattern wins, and
    a pattern matches a path when it matches the path or one of its parent directories."""

    def __init__(self, text: str) -> None:
        lines = (line.strip() for line in text.splitlines())
        self.patterns = [_compile(line) for line in lines if line and not line.startswith("#")]

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for pattern in self.patterns:
            if any(pattern.regex.match(c) for c in candidates):
                result = not pattern.negated
        return result

    def may_reinclude_under(self, rel_dir: str) -> bool:
        for pattern in self.patterns:
            if pattern.negated:
                if not pattern.prefix:
                    return True
                if pattern.prefix.startswith(rel_dir + "/") or (rel_dir + "/").startswith(
                    pattern.prefix
                ):
                    return True
        return False


def build_context_files(context: Path) -> list[str]:
    """Relative paths of the files ``docker build`` sends from ``context``."""
    ignore_file = context / ".dockerignore"
    ignore = DockerIgnore(ignore_file.read_text() if ignore_file.exists() else "")
    files: list[str] = []
    for root, dirs, names in os.walk(context):
        rel_root = os.path.relpath(root, context)
        rel_root = "" if rel_root == "." else rel_root
        keep = []
        for d in sorted(dirs):
            rel = f"{rel_root}/{d}" if rel_root else d
            if ignore.excluded(rel) and not ignore.may_reinclude_under(rel):
                continue
            keep.append(d)
        dirs[:] = keep
        for name in sorted(names):
            rel = f"{rel_root}/{name}" if rel_root else name
            if not ignore.excluded(rel):
                files.append(rel)
    return files


# --------------------------------------------------------------------------- the replay


@dataclass
class _StageState:
    stage: Stage
    root: Path
    venv: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"


def _make_python(venv: Path) -> None:
    """A virtual environment with pip, as the python image has it. pip is installed by
    unpacking ensurepip's bundled wheel (what installing a wheel does), without byte-compiling
    it: a tenth of the time ``python -m venv`` takes."""
    import ensurepip
    import zipfile

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheels = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    if not wheels:  # a Python whose ensurepip has no bundled wheel (Debian's, say)
        subprocess.run([str(python), "-m", "ensurepip", "--default-pip"], check=True)
        return
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(site)
    for name in ("pip", "pip3"):
        script = venv / "bin" / name
        script.write_text(
            f"#!{python}\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n"
        )
        script.chmod(0o755)


def host_pip_cache() -> Path | None:
    """This machine's pip cache (what the builder's cache mount holds), None if disabled."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True
    )
    if result.returncode == 0 and result.stdout.strip():
        return Path(result.stdout.strip())
    return None


class BuildReplay:
    """Replays the stages of a Dockerfile under ``workdir`` (see the module docstring)."""

    def __init__(
        self,
        dockerfile: Path,
        context: Path,
        workdir: Path,
        *,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.stages = parse_dockerfile(dockerfile)
        self.context = context
        self.workdir = workdir
        self.log = log
        self.context_files = build_context_files(context)
        self.pip_cache = host_pip_cache() or workdir / "pip-cache"
        self.uid, self.gid = os.getuid(), os.getgid()
        self.user_ids: dict[str, int] = {}  # image user names -> this machine's uid
        self.group_ids: dict[str, int] = {}  # image group names -> this machine's gid
        self.users: dict[str, dict[str, str]] = {}  # useradd name -> its options
        self.skipped: list[str] = []
        self.states: dict[int, _StageState] = {}
        self.finished = {stage.index: threading.Event() for stage in self.stages}
        self.failed: set[int] = set()

    # ---------------------------------------------------------------- paths

    def stage_named(self, ref: str) -> _StageState:
        for state in self.states.values():
            if state.stage.name == ref or str(state.stage.index) == ref:
                return state
        raise AssertionError(f"no earlier stage {ref!r}")

    @staticmethod
    def mapped(state: _StageState, path: str) -> Path:
        """Where the stage's container path ``path`` lives on this machine."""
        return state.root / os.path.normpath(os.path.join(state.workdir, path)).lstrip("/")

    def _map_word(self, state: _StageState, word: str) -> str:
        if word.startswith("/") and not word.startswith(("/dev/", "/proc/")):
            return str(self.mapped(state, word))
        key, eq, value = word.partition("=")
        if eq and key.startswith("-") and value.startswith("/"):
            return f"{key}={self.mapped(state, value)}"
        return word

    # ---------------------------------------------------------------- stages

    def prepare_bases(self) -> None:
        """Create every stage's stand-in base image: a virtual environment of this Python with
        pip (concurrently; pip from ensurepip's wheel, as the image's pip)."""
        for stage in self.stages:
            match = re.fullmatch(r"python:(\d+\.\d+)(-slim(?:-\w+)?)?", stage.image)
            if match is None:
                raise AssertionError(f"FROM {stage.image}: only python:X.Y-slim is replayed")
            root = self.workdir / f"stage{stage.index}"
            (root / "tmp").mkdir(parents=True)
            (root / "root").mkdir()
            self.states[stage.index] = _StageState(stage, root, self.workdir / f"py{stage.index}")
        with ThreadPoolExecutor(len(self.states)) as pool:
            list(pool.map(lambda st: _make_python(st.venv), self.states.values()))

    def build(self) -> None:
        """Replay every stage, each in its own thread, as BuildKit runs them: an instruction that
        reads another stage (COPY --from, RUN --mount from=) waits until that stage is built."""
        with ThreadPoolExecutor(len(self.stages)) as pool:
            futures = [pool.submit(self._build_stage, st.index) for st in self.stages]
            errors = [f.exception() for f in futures]
        for error in errors:  # the earliest stage's failure is the cause of later ones
            if error is not None:
                raise error

    def _build_stage(self, index: int) -> None:
        try:
            self.run_stage(index)
        except BaseException:
            self.failed.add(index)
            raise
        finally:
            self.finished[index].set()

    def _built(self, ref: str, line: int) -> _StageState:
        """The stage ``ref``, once it is built (for an instruction at ``line`` that reads it)."""
        state = self.stage_named(ref)
        index = state.stage.index
        assert self.finished[index].wait(900), f"line {line}: stage {ref} never finished"
        assert index not in self.failed, f"line {line}: stage {ref} failed"
        return state

    def base_env(self, state: _StageState, home: str) -> dict[str, str]:
        """The environment of a container of this stage: the python image's, then ENV."""
        env = {k: v for k, v in os.environ.items() if k.startswith(_PASSED_ENV)}
        env.update(
            PATH=f"{state.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            LANG="C.UTF-8",
            HOME=str(self.mapped(state, home)),
        )
        for key, value in state.env.items():
            env[key] = str(self.mapped(state, value)) if value.startswith("/") else value
        return env

    def run_stage(self, index: int) -> _StageState:
        """Replay one stage: its FROM ancestors' instructions, then its own, in its own root."""
        state = self.states[index]
        for stage in state.stage.chain():
            for inst in stage.instructions[1:]:
                self._instruction(state, stage, inst)
        return state

    def _instruction(self, state: _StageState, stage: Stage, inst: Instruction) -> None:
        variables = {**stage.args, **state.env}
        if inst.cmd == "ENV":
            for key, raw in _pairs(inst.args):
                state.env[key] = expand(_unquote(raw), {**stage.args, **state.env})
        elif inst.cmd == "WORKDIR":
            state.workdir = os.path.normpath(
                os.path.join(state.workdir, expand(inst.args[0], variables))
            )
            self.mapped(state, ".").mkdir(parents=True, exist_ok=True)
        elif inst.cmd == "COPY":
            self._copy(state, inst, variables)
        elif inst.cmd == "RUN":
            self._run(state, stage, inst)
        elif inst.cmd in ("ARG", "LABEL", "USER", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK"):
            pass  # image metadata: checked by the tests, nothing to build
        elif inst.cmd in ("ENTRYPOINT", "CMD"):
            pass
        else:
            raise AssertionError(f"line {inst.line}: {inst.cmd} is not replayed")

    def _copy(self, state: _StageState, inst: Instruction, variables: dict[str, str]) -> None:
        words = [expand(w, variables) for w in inst.args]
        *sources, dest = words
        if any(ch in s for s in sources for ch in "*?["):
            raise AssertionError(f"line {inst.line}: wildcards in COPY are not replayed")
        source_stage = inst.flag("from")
        into_dir = dest.endswith("/") or len(sources) > 1
        target = self.mapped(state, dest)
        for source in sources:
            if source_stage is not None:
                src_root = self._built(source_stage, inst.line).root
                found = src_root / source.lstrip("/")
                pairs = (
                    [(p, p.relative_to(found)) for p in found.rglob("*") if p.is_file()]
                    if found.is_dir()
                    else [(found, Path(found.name))]
                )
            else:
                rel = os.path.normpath(source).lstrip("/")
                if rel in self.context_files:
                    pairs = [(self.context / rel, Path(os.path.basename(rel)))]
                else:
                    under = [f for f in self.context_files if f.startswith(rel + "/")]
                    if not under:
                        raise AssertionError(
                            f"line {inst.line}: COPY {source}: not in the build context "
                            "(missing, or excluded by .dockerignore)"
                        )
                    pairs = [(self.context / f, Path(f[len(rel) + 1 :])) for f in under]
                    into_dir = True
            for src, rel_dest in pairs:
                out = target / rel_dest if into_dir or len(pairs) > 1 else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)

    def _mounts(self, state: _StageState, inst: Instruction) -> list[Path]:
        links: list[Path] = []
        for item in inst.flags:
            if not item.startswith("--mount="):
                raise AssertionError(f"line {inst.line}: RUN flag {item} is not replayed")
            opts = dict(kv.split("=", 1) for kv in item[len("--mount=") :].split(","))
            target = self.mapped(state, opts["target"])
            if opts.get("type") == "cache" and opts["target"].endswith("/.cache/pip"):
                source = self.pip_cache
                source.mkdir(parents=True, exist_ok=True)
            elif opts.get("type") == "bind" and "from" in opts:
                built = self._built(opts["from"], inst.line)
                source = built.root / opts.get("source", "/").lstrip("/")
            else:
                raise AssertionError(f"line {inst.line}: mount {item} is not replayed")
            assert not target.exists(), f"line {inst.line}: mount target {target} exists"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source, target_is_directory=True)
            links.append(target)
        return links

    def _segment(self, state: _StageState, words: list[str], line: int) -> str | None:
        """The shell text to run for one simple command, or None when it is skipped."""
        name = words[0]
        if name in RUN_SKIPPED or (
            name == "rm" and all(w.startswith(_APT_PATHS) for w in words[1:] if w[0] != "-")
        ):
            if name == "useradd":
                self._record_useradd(words)
            if name == "useradd":
                self.user_ids[words[-1]] = self.uid
            elif name == "groupadd":
                self.group_ids[words[-1]] = self.gid
            self.skipped.append(" ".join(words))
            return None
        if name in RUN_EMULATED:
            words = list(words)
            for i, w in enumerate(words[:-1]):
                if name == "install" and w in ("-o", "-g"):
                    ids = self.user_ids if w == "-o" else self.group_ids
                    owner = words[i + 1]
                    assert owner in ids or owner.isdigit(), f"line {line}: unknown owner {owner}"
                    words[i + 1] = str(ids.get(owner, self.uid if w == "-o" else self.gid))
        elif name not in RUN_EXECUTED:
            raise AssertionError(
                f"line {line}: RUN uses {name!r}, which this replay neither runs nor checks; "
                "teach tests/helpers/container_image.py about it"
            )
        rendered = [w if w in _OPERATORS else shlex.quote(self._map_word(state, w)) for w in words]
        return " ".join(rendered)

    def _record_useradd(self, words: list[str]) -> None:
        opts: dict[str, str] = {}
        i = 1
        while i < len(words) - 1:
            w = words[i]
            if w.startswith("--") and "=" in w:
                key, value = w[2:].split("=", 1)
                opts[key] = value
            elif w in ("--uid", "-u", "--gid", "-g", "--home-dir", "-d", "--shell", "-s"):
                opts[w.lstrip("-")] = words[i + 1]
                i += 1
            else:
                opts[w.lstrip("-")] = ""
            i += 1
        self.users[words[-1]] = opts

    def _run(self, state: _StageState, stage: Stage, inst: Instruction) -> None:
        if inst.json:
            raise AssertionError(f"line {inst.line}: exec-form RUN is not replayed")
        command = " ".join(inst.args)
        parts = [self._segment(state, seg, inst.line) for seg in shell_segments(command)]
        script = " && ".join(p for p in parts if p is not None)
        if not script:
            return
        links = self._mounts(state, inst)
        try:
            env = self.base_env(state, "/root")
            env.update(stage.args)  # build arguments are in RUN's environment
            self.log(f"RUN (line {inst.line}): {script}")
            result = subprocess.run(
                ["bash", "-c", script],
                cwd=self.mapped(state, "."),
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            self.log(result.stdout[-4000:] + result.stderr[-4000:])
            assert result.returncode == 0, (
                f"line {inst.line}: RUN failed ({result.returncode}): {script}\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        finally:
            for link in links:
                link.unlink()
