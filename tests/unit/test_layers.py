"""The package's architecture, as its imports draw it: rooms in layers, imports pointing down.

Every import counts, wherever it is written (module level, ``TYPE_CHECKING`` blocks, inside
functions): an import is a dependency whether or not it runs at import time. The layers are
those of ``docs/architecture.md``; a module may import its own layer and those below it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import opamp_fast

PACKAGE = Path(opamp_fast.__file__).parent

#: Lowest first. A name is a module or a package (a package stands for all its modules unless a
#: module of it is named itself).
LAYERS: list[set[str]] = [
    {"", "_proto", "errors", "strictint", "redaction", "settings", "ticks"},
    {"protocol", "native", "auth"},
    {"transport"},
    {
        "remote_config.model",
        "packages.semver",
        "packages.signing",
        "packages.store",
        "connection_settings.model",
        "connection_settings.ca",
    },
    {"storage"},
    {"fleet"},
    {"remote_config", "packages", "connection_settings"},
    {"observability"},
    {"services"},
    {"api"},
    {"server", "supervisor"},
    {"sim"},
    {"cli", "__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("opamp_fast."):
                    yield alias.name.removeprefix("opamp_fast.")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("opamp_fast"):
                    continue
                base = (node.module or "").removeprefix("opamp_fast").lstrip(".")
            else:
                up = package.split(".") if package else []
                up = up[: len(up) - (node.level - 1)] if node.level > 1 else up
                base = ".".join([*up, *([node.module] if node.module else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                yield candidate if candidate in MODULES else base


MODULES = {
    module_name(p) for p in PACKAGE.rglob("*.py") if "_proto" not in p.relative_to(PACKAGE).parts
}


def graph() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "_proto" in path.relative_to(PACKAGE).parts:
            continue
        name = module_name(path)
        targets = {t for t in imports_of(path, name) if t in MODULES and t != name}
        out[name] = targets
    return out


def layer_of(name: str) -> int:
    best, best_len = None, -1
    for index, names in enumerate(LAYERS):
        for room in names:
            matches = name == room or name.startswith(room + ".") or (room == "" and name == "")
            if matches and len(room) > best_len:
                best, best_len = index, len(room)
    assert best is not None, f"{name!r} is in no layer: add it to LAYERS (and to the docs)"
    return best


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_imports_point_down() -> None:
    upward = sorted(
        f"{source} (layer {layer_of(source)}) -> {target} (layer {layer_of(target)})"
        for source, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(source)
    )
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"
