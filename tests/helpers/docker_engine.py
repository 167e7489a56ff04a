"""A Docker engine for the container tests (``tests/container``): the one this machine runs, or
one started here for the run.

No image registry is reachable from the CI machine and its engine runs without a bridge network:
a daemon started here is Debian's ``dockerd`` with ``--iptables=false --bridge=none`` (containers
and ``RUN`` steps use the host's network), its data and runtime directories under one temporary
directory, and a bounded lifetime (``timeout`` stops it after ``max_lifetime_s`` whatever happens
to the process that started it). It is stopped by its PID and its directory removed.

``.ci/run`` uses the same code from the shell::

    DOCKER_HOST=$(python -m tests.helpers.docker_engine start DIR)   # nothing if one runs
    python -m tests.helpers.docker_engine stop DIR                   # only what start started
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "INSTALL",
    "Engine",
    "StartedDaemon",
    "docker_cli",
    "engine_env",
    "reachable",
    "start_daemon",
    "stop_daemon",
]

INSTALL = "apt-get install -y --no-install-recommends docker.io mmdebstrap"
#: A daemon started here never outlives this, seconds (CI's whole run is bounded by 30 minutes).
MAX_LIFETIME_S = 3600
_PID_FILE = "launcher.pid"  # the PID of `timeout dockerd ...`, which forwards signals to dockerd


def docker_cli() -> str:
    """The Docker client. Debian's ``docker.io`` client (``/usr/bin/docker``) runs BuildKit
    builds by itself; a newer client needs the buildx plugin for them, so Debian's comes first
    (``OPAMP_FAST_TEST_DOCKER`` names another)."""
    chosen = os.environ.get("OPAMP_FAST_TEST_DOCKER")
    if chosen:
        return chosen
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if found is None:
        raise AssertionError(f"the Docker client is not installed; install it with: {INSTALL}")
    return found


def engine_env(docker_host: str | None = None) -> dict[str, str]:
    """The environment of Docker client commands: BuildKit on, and the daemon to talk to."""
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    return env


def reachable(env: Mapping[str, str], docker: str | None = None) -> bool:
    """Whether a daemon answers the client with this environment."""
    try:
        result = subprocess.run(
            [docker or docker_cli(), "version", "--format", "{{.Server.Version}}"],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


class StartedDaemon:
    """A ``dockerd`` this run started, in ``workdir`` (``process``: when this process started
    it, the child to reap)."""

    def __init__(self, workdir: Path, process: subprocess.Popen[bytes] | None = None) -> None:
        self.workdir = workdir
        self.process = process
        self.host = f"unix://{workdir / 'docker.sock'}"
        self.log = workdir / "dockerd.log"

    @property
    def pid(self) -> int | None:
        path = self.workdir / _PID_FILE
        return int(path.read_text()) if path.exists() else None


def _dockerd() -> str:
    found = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if found is None:
        raise AssertionError(f"dockerd is not installed; install it with: {INSTALL}")
    return found


def start_daemon(workdir: Path, max_lifetime_s: int = MAX_LIFETIME_S) -> StartedDaemon:
    """Start ``dockerd`` in ``workdir`` (as root) and wait until it answers."""
    if os.geteuid() != 0:
        raise AssertionError(
            "no Docker engine answers and only root can start one here: start one (and set "
            "DOCKER_HOST if it is not at the default socket), or run the tests as root"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    host = StartedDaemon(workdir).host
    argv = [
        "timeout", "--kill-after=30", str(max_lifetime_s), _dockerd(),
        "--iptables=false", "--ip6tables=false", "--bridge=none",
        "--data-root", str(workdir / "data"), "--exec-root", str(workdir / "exec"),
        "--pidfile", str(workdir / "dockerd.pid"), "--host", host,
    ]  # fmt: skip
    with open(workdir / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    (workdir / _PID_FILE).write_text(str(proc.pid))
    daemon = StartedDaemon(workdir, proc)
    env = engine_env(daemon.host)
    deadline = time.monotonic() + 60
    while not reachable(env):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = daemon.log.read_text(errors="replace")[-3000:]
            stop_daemon(daemon)
            raise AssertionError(f"dockerd did not start ({' '.join(argv)}):\n{tail}")
        time.sleep(0.2)
    return daemon


def _running(daemon: StartedDaemon, pid: int) -> bool:
    if daemon.process is not None:  # our child: poll() reaps it
        return daemon.process.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # not our child: reaped by init only later, and a zombie has stopped
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_daemon(daemon: StartedDaemon | Path, timeout_s: float = 60) -> None:
    """Stop a daemon ``start_daemon`` started (SIGTERM by its PID, SIGKILL after
    ``timeout_s``), then remove its directory. A directory where none was started is left."""
    if isinstance(daemon, Path):
        daemon = StartedDaemon(daemon)
    pid = daemon.pid
    if pid is None:
        return
    # `timeout` passes SIGTERM on to dockerd; SIGKILL goes to the session start_daemon made
    # for them (its id is the launcher's PID), which `timeout` cannot pass on.
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if not _running(daemon, pid):
            break
        if sig == signal.SIGKILL:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _running(daemon, pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    # dockerd unmounts what it mounted on the way out; what a killed one left is unmounted here.
    workdir = str(daemon.workdir) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(workdir)), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False)
    shutil.rmtree(daemon.workdir)


class Engine:
    """The Docker client bound to one daemon, and what this test session made on it: every
    container, volume and compose project is named with ``prefix``, every image labelled
    ``LABEL``, so that ``cleanup`` removes exactly those."""

    LABEL = "org.opamp-fast.test"

    def __init__(self, env: Mapping[str, str], prefix: str, docker: str | None = None) -> None:
        self.env = dict(env)
        self.prefix = prefix
        self.docker = docker or docker_cli()
        self.images: list[str] = []  # tags this session built, removed by cleanup
        self.timings: dict[str, float] = {}  # what took how long, seconds (for the docs)

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.docker, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
            input=input,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, (
                f"docker {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def image_exists(self, tag: str) -> bool:
        return self("image", "inspect", tag, check=False).returncode == 0

    def inspect(self, container: str, template: str) -> str:
        return self("inspect", "--format", template, container).stdout.strip()

    def _named(self, *listing: str) -> list[str]:
        out = self(*listing, "--filter", f"name={self.prefix}-").stdout
        return [name for name in out.split() if name.startswith(self.prefix + "-")]

    def containers(self) -> list[str]:
        """This session's containers (compose's too: their project is named with the prefix)."""
        return self._named("ps", "--all", "--format", "{{.Names}}")

    def volumes(self) -> list[str]:
        return self._named("volume", "ls", "--format", "{{.Name}}")

    def logs(self, container: str, tail: int = 200) -> str:
        result = self("logs", "--tail", str(tail), container, check=False)
        return result.stdout + result.stderr

    def all_logs(self) -> str:
        """The logs of every container of this session that still exists (failure reports)."""
        parts = []
        for container in self.containers():
            state = self.inspect(container, "{{.State.Status}} exit={{.State.ExitCode}}")
            parts.append(f"----- {container} ({state})\n{self.logs(container)}")
        return "\n".join(parts)

    def cleanup(self, *, images: bool = True) -> None:
        """Remove this session's containers, volumes and (``images``) the images it built."""
        containers = self.containers()
        if containers:
            self("rm", "--force", "--volumes", *containers, timeout=120)
        volumes = self.volumes()
        if volumes:
            self("volume", "rm", "--force", *volumes)
        if images and self.images:
            self("image", "rm", "--force", *self.images, check=False)
            self.images.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.docker_engine")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("dir", type=Path, help="the daemon's directory (created by start)")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop_daemon(args.dir)
        return 0
    if reachable(engine_env()):
        return 0  # one runs already: start none, print nothing
    # The daemon outlives this process on purpose: `stop` ends it, by the PID in the directory.
    warnings.filterwarnings("ignore", "subprocess .* is still running", ResourceWarning)
    print(start_daemon(args.dir).host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
