"""Print the README's configuration table from ``opamp_fast.settings.OPTIONS``.

``tests/unit/test_readme.py`` fails when README.md and this output drift apart; regenerate with
``python scripts/config_table.py --write`` (rewrites the table between the CONFIG-TABLE markers of
README.md), or print it with no argument.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from opamp_fast.settings import OPTIONS, Settings

START = "<!-- CONFIG-TABLE:START -->"
END = "<!-- CONFIG-TABLE:END -->"


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


def write_readme(path: Path) -> None:
    text = path.read_text()
    start = text.index(START) + len(START)
    end = text.index(END)
    path.write_text(text[:start] + "\n" + table() + "\n" + text[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_readme(Path(__file__).resolve().parent.parent / "README.md")
    else:
        print(table())
