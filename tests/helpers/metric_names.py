"""The metric names the shipped monitoring files query (the Grafana dashboard, the Prometheus
alert rules), the names opamp-fast declares, and the names a ``/metrics`` text announces: what
the container tests compare (statically, and against a running server)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DASHBOARD",
    "dashboard_exprs",
    "declared_metric_names",
    "exposition_names",
    "promql_metric_names",
    "queried_metric_names",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "opamp-fast-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2", "e",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (enough PromQL for our queries)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables outside selectors
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    """The PromQL expression of every panel target of the dashboard."""
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()).get("panels", []))
    return exprs


def queried_metric_names() -> set[str]:
    exprs = dashboard_exprs()
    dashboard = json.loads(DASHBOARD.read_text())
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = re.fullmatch(r"label_values\((\w+)\s*,\s*\w+\)", text)
        if match:
            exprs.append(match.group(1))
    rules = yaml.safe_load(ALERTS.read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert exprs
    return set().union(*(promql_metric_names(e) for e in exprs))


def _sample_names(name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {name if name.endswith("_total") else name + "_total"}
    if kind == "histogram":
        return {name + "_bucket", name + "_sum", name + "_count"}
    if kind == "info":
        return {name + "_info"}
    return {name}


def declared_metric_names() -> set[str]:
    """Sample names of METRICS, plus prometheus_client's process collector (``process_*``)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    from opamp_fast.observability.metrics import METRICS

    names = set().union(*(_sample_names(s.name, s.kind) for s in METRICS.values()))
    collector = ProcessCollector(registry=CollectorRegistry())
    for family in collector.collect():
        names |= {sample.name for sample in family.samples}
    return names


def exposition_names(text: str) -> set[str]:
    """Every sample name a /metrics text announces (families without samples included)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= _sample_names(name, kind)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
