"""Base images for the container tests, made here from Debian packages (no image registry is
reachable from the CI machine).

A :class:`RootFS` is a Debian bookworm root file system made by ``mmdebstrap`` and turned into an
image by ``docker import``; a :class:`Derived` image adds an entry point (and the little an
official image sets up) to one with a Dockerfile built from no context. Every tag ends with a
digest of everything that makes the image (packages, options, hooks, files, Dockerfile), so an
engine that already holds it (a developer's long-running daemon) is not asked again, and a
changed recipe is never mistaken for an old one.

* ``python``: what the project's Dockerfile needs from ``python:3.X-slim``: python3 with its
  headers (the Cython build), pip, venv, ``python`` on PATH, CA certificates, and no
  ``EXTERNALLY-MANAGED`` marker (pip installs into the system Python, as in the official image).
* ``services``: Debian's ``postgresql-15``, ``prometheus`` and ``haproxy`` in one file system,
  imported once; ``postgres``, ``prometheus`` and ``haproxy`` are that image with the command,
  user and directories of the official images that compose.yaml and compose-cluster.yaml use.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.docker_engine import INSTALL, Engine

__all__ = ["HAPROXY", "POSTGRES", "PROMETHEUS", "PYTHON", "SERVICES", "Derived", "RootFS"]

FILES = Path(__file__).resolve().parents[1] / "container" / "files"
SUITE = "bookworm"
#: As Debian's slim images: no documentation, manual pages or translations.
SLIM = (
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class RootFS:
    name: str
    packages: tuple[str, ...]
    hooks: tuple[str, ...] = ()  # mmdebstrap --customize-hook shell commands ("$1": the root)
    copy_in: tuple[str, ...] = ()  # files of tests/container/files put into /usr/local/bin
    changes: tuple[str, ...] = ()  # docker import --change instructions
    options: tuple[str, ...] = field(default=SLIM)

    def argv(self, out: str) -> list[str]:
        argv = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(self.packages)]
        argv += self.options
        argv += [f"--customize-hook=copy-in {FILES / name} /usr/local/bin" for name in self.copy_in]
        argv += [f"--customize-hook={hook}" for hook in self.hooks]
        argv.append('--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*')
        return [*argv, SUITE, out]

    @property
    def tag(self) -> str:
        files = [(FILES / name).read_bytes() for name in self.copy_in]
        argv = " ".join(self.argv("-")).replace(str(FILES), "files")  # not where the tree is
        recipe = _digest(argv, *self.changes, *files)
        return f"opamp-fast-test/{self.name}:{recipe}"

    def ensure(self, engine: Engine, workdir: Path) -> str:
        """The image's tag, made unless the engine has it: mmdebstrap's tar stream straight
        into ``docker import`` (nothing written to disk but the image)."""
        tag = self.tag
        if engine.image_exists(tag):
            return tag
        log = workdir / f"mmdebstrap-{self.name}.log"
        changes = [arg for change in self.changes for arg in ("--change", change)]
        started = time.monotonic()
        with open(log, "wb") as out:
            try:
                bootstrap = subprocess.Popen(
                    self.argv("-"), stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL
                )
            except FileNotFoundError:
                raise AssertionError(
                    f"mmdebstrap is not installed; install it with: {INSTALL}"
                ) from None
            with bootstrap:
                imported = subprocess.run(
                    [engine.docker, "import", *changes, "--change", f"LABEL {Engine.LABEL}=base",
                     "-", tag],
                    stdin=bootstrap.stdout, env=engine.env, capture_output=True, text=True,
                    timeout=900,
                )  # fmt: skip
                assert bootstrap.stdout is not None
                bootstrap.stdout.close()
                status = bootstrap.wait(60)
        assert status == 0 and imported.returncode == 0, (
            f"base image {self.name}: mmdebstrap exited {status}, docker import "
            f"{imported.returncode}: {imported.stderr[-2000:]}\n"
            + log.read_text(errors="replace")[-4000:]
        )
        engine.timings[f"base image {self.name}"] = time.monotonic() - started
        return tag


@dataclass(frozen=True)
class Derived:
    name: str
    base: RootFS
    dockerfile: str  # "FROM {base}" first

    @property
    def tag(self) -> str:
        return f"opamp-fast-test/{self.name}:{_digest(self.base.tag, self.dockerfile)}"

    def ensure(self, engine: Engine) -> str:
        tag = self.tag
        if not engine.image_exists(tag):
            text = self.dockerfile.format(base=self.base.tag)
            engine("build", "--network", "host", "--label", f"{Engine.LABEL}=base", "--tag",
                   tag, "-", input=text, timeout=300)  # fmt: skip
        return tag


PYTHON = RootFS(
    "python",
    ("python3", "python3-dev", "python3-pip", "python3-venv", "python-is-python3",
     "ca-certificates"),
    hooks=('rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',),
    changes=("ENV LANG=C.UTF-8", 'CMD ["python3"]'),
)  # fmt: skip

SERVICES = RootFS(
    "services",
    ("postgresql-15", "prometheus", "haproxy", "ca-certificates"),
    options=(*SLIM, "--dpkgopt=path-exclude=/usr/share/javascript/moment-timezone/data/*"),
    copy_in=("postgres-entrypoint",),
    # The cluster the package creates on install is not wanted: the entry point makes its own.
    hooks=('rm -rf "$1"/var/lib/postgresql/15 "$1"/etc/postgresql/15',),
    changes=("ENV LANG=C.UTF-8",),
)

POSTGRES = Derived(
    "postgres",
    SERVICES,
    """FROM {base}
RUN install -d -o postgres -g postgres -m 2775 /run/postgresql \\
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PGDATA=/var/lib/postgresql/data
USER postgres
ENTRYPOINT ["postgres-entrypoint"]
CMD ["postgres"]
STOPSIGNAL SIGINT
""",
)

PROMETHEUS = Derived(
    "prometheus",
    SERVICES,
    """FROM {base}
RUN install -d -o nobody -g nogroup /prometheus
USER nobody
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
""",
)

HAPROXY = Derived(
    "haproxy",
    SERVICES,
    """FROM {base}
RUN install -d /usr/local/etc/haproxy
USER haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
""",
)
