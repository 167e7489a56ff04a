"""Print the README's configuration table from ``opamp_fast.config.OPTIONS``.

``tests/unit/test_readme.py`` fails when README.md and this output drift apart; regenerate with
``python scripts/config_table.py`` and paste between the CONFIG-TABLE markers.
"""

from __future__ import annotations

import dataclasses

from opamp_fast.config import OPTIONS, Settings


def default_text(name: str) -> str:
    field = Settings.__dataclass_fields__[name]
    if field.default_factory is not dataclasses.MISSING:
        return {"data_dir": "`<user data dir>/opamp-fast/postgres`", "instance_id": "host name"}[
            name
        ]
    if field.default is None:
        return "unset"
    return f"`{field.default}`"


def table() -> str:
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for opt in OPTIONS:
        lines.append(f"| `{opt.flag}` | `{opt.env}` | {default_text(opt.name)} | {opt.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
