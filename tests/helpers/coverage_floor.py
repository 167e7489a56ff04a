"""The coverage floor (``fail_under`` in ``[tool.coverage.report]``) holds for the whole suite.

``python -m pytest`` measures coverage on every run (pyproject's addopts). A run of part of the
suite (paths on the command line, ``-k``, ``-m``, ``--deselect``) still prints its report but
is not held to the whole suite's floor; an explicit ``--cov-fail-under`` on the command line
still applies. ``--no-cov`` turns measuring off.
"""

from __future__ import annotations

import pytest

_DESELECTED = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_DESELECTED] = 0


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        config = items[0].config
        config.stash[_DESELECTED] = config.stash.get(_DESELECTED, 0) + len(items)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    plugin = config.pluginmanager.get_plugin("_cov")  # pytest-cov's, when measuring
    if plugin is None or config.option.cov_fail_under is not None:
        return
    whole = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.stash.get(
        _DESELECTED, 0
    )
    if not whole:
        plugin.options.cov_fail_under = None
