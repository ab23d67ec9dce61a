"""What the dashboard and the alert rules read: their PromQL expressions and the metric
names in them, for the tests of deploy/.

The name extractor is a few regular expressions, not a PromQL parser (promtool parses;
see test_grafana_dashboard.test_every_dashboard_expression_parses). It removes what
cannot be a metric name (string literals, label matchers, range and subquery brackets,
`by`/`without`/`on`/`ignoring`/`group_*` label lists, `offset`/`@` modifiers, Grafana
variables such as `$__rate_interval`), then keeps every identifier that is neither a
function call nor a keyword. A name with a colon is a recording rule (defined in
rules.yml, not exported); every other name must be in a server's /metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests"
DASHBOARD = ROOT / "deploy" / "grafana" / "potato-runs.json"

KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2", "start", "end",
})
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
                         re.IGNORECASE)
_MODIFIER = re.compile(r"\boffset\s+-?\w+|@\s*[\w.()]+", re.IGNORECASE)
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names an expression selects."""
    s = _STRING.sub('""', expr)
    s = _GRAFANA_VAR.sub(" ", s)
    s = _MATCHERS.sub(" ", s)
    s = _RANGE.sub(" ", s)
    s = _LABEL_LIST.sub(" ", s)
    s = _MODIFIER.sub(" ", s)
    names: set[str] = set()
    for m in _IDENT.finditer(s):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


_SELECTOR = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def labels_used(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The labels an expression relies on: per selected metric, the labels its matchers
    name (`m{a="x"}` -> {m: {a}}), and the labels of its `by`/`without`/`on`/`ignoring`/
    `group_*` lists (not tied to one metric)."""
    s = _STRING.sub('""', expr)
    s = _GRAFANA_VAR.sub(" ", s)
    matched: dict[str, set[str]] = {}
    for m in _SELECTOR.finditer(s):
        matched.setdefault(m.group(1), set()).update(_MATCHER_LABEL.findall(m.group(2)))
    grouped: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)",
                         s, re.IGNORECASE):
        grouped.update(x.strip() for x in m.group(1).split(",") if x.strip())
    return matched, grouped


def is_recording_rule(name: str) -> bool:
    return ":" in name


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def rules() -> Iterator[dict[str, Any]]:
    for group in rule_groups():
        yield from group["rules"]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def dashboard() -> dict[str, Any]:
    d: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return d


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, rows' collapsed children included."""
    out: list[dict[str, Any]] = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of the dashboard."""
    return [(p.get("title", ""), t["expr"]) for p in dashboard_panels()
            for t in p.get("targets", []) if t.get("expr")]


def rule_exprs() -> list[tuple[str, str]]:
    """(rule name, expression) for every recording rule and alert."""
    return [(r.get("record") or r["alert"], r["expr"]) for r in rules()]


def exported_names() -> dict[str, set[str]]:
    """Every name a server must export -> where it is read (panel titles, rule names)."""
    used: dict[str, set[str]] = {}
    for where, expr in [*dashboard_exprs(), *rule_exprs()]:
        for name in metric_names(expr):
            if not is_recording_rule(name):
                used.setdefault(name, set()).add(where)
    return used
