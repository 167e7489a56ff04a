"""Run a test module on both backends: ``from tests.helpers.backends import anyio_backend``.

The server runs on asyncio with uvloop by default and on trio with ``--backend trio``; the
transport and interop suites import this fixture so that every one of their tests runs on both.
"""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["anyio_backend"]


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    backend: tuple[str, dict[str, Any]] = request.param
    return backend
