"""The ``.pyi`` stubs of the Cython extensions match the compiled modules (mypy's stubtest).

Type checkers see the pure-Python twins; the stubs are the contract of the compiled modules,
and this keeps them from drifting when a ``.pyx`` changes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EXTENSIONS = [
    "opamp_fast.native._heartbeat",
    "opamp_fast.native._wsframe",
    "opamp_fast.native._pbscan",
]


@pytest.mark.skipif(
    bool(os.environ.get("OPAMP_FAST_NO_EXTENSIONS")), reason="extensions disabled on purpose"
)
def test_extension_stubs_match_the_compiled_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", *EXTENSIONS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
