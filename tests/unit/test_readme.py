"""The README's configuration table and test command stay true."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_table() -> str:
    spec = importlib.util.spec_from_file_location("config_table", ROOT / "scripts/config_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.table())


def test_config_table_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- CONFIG-TABLE:START -->") + len("<!-- CONFIG-TABLE:START -->")
    end = readme.index("<!-- CONFIG-TABLE:END -->")
    assert readme[start:end].strip() == load_table().strip(), (
        "README configuration table is stale: run scripts/config_table.py"
    )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in readme
    assert command in ci
