"""deploy/grafana/potato-runs.json: a current-schema dashboard whose every query is valid
PromQL, reads the Prometheus chosen by its `datasource` variable, and covers every SLI.

The names each expression reads are listed (pytest -s prints them) and checked: a
recording rule must be defined in rules.yml; an exported name is checked against a real
server's /metrics by test_metrics_exported.py.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import yaml

from deploy.promql import (
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    is_recording_rule,
    metric_names,
    recorded_names,
)
from deploy.test_prometheus_rules import promtool

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What the issue asks the dashboard to show, and a name each must read.
REQUIRED = {
    "calc latency p95": "potato_runs_operation_duration_seconds_bucket",
    "merge rate": "potato_runs_merges_total",
    "invariant violations": "potato_runs_invariant_violations",
    "rebuild duration": "potato_runs_rebuild_duration_seconds_bucket",
    "traffic and errors by method": "rpc_server_duration_seconds_count",
    "latency by method": "rpc_server_duration_seconds_bucket",
    "flag evaluations by variant": "potato_flags_evaluations_total",
    "shadow comparisons": "potato_shadow_comparisons_total",
    "shadow mismatch rate": "potato_runs:shadow_mismatch:ratio_rate24h",
    "reconciliation drift": "potato_totals_reconcile_drift_total",
    "pool use": "potato_db_pool_connections",
    "pool wait": "potato_db_pool_wait_seconds_bucket",
    "availability burn rate": "potato_runs:slo_errors:ratio_rate1h",
    "write latency burn rate": "potato_runs:slo_slow_writes:ratio_rate1h",
}


def test_dashboard_is_current_schema_with_a_datasource_variable() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 39
    assert d["uid"] == "potato-runs" and d["title"] == "Potato Runs"
    assert d["id"] is None   # importable into any Grafana
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_panels_sit_in_rows_on_the_grid_and_read_the_chosen_datasource() -> None:
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert dashboard()["panels"][0]["type"] == "row"
    assert sum(p["type"] == "row" for p in panels) >= 5
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        assert p.get("description"), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]


def test_every_expression_names_its_metrics() -> None:
    defined = recorded_names()
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        print(f"{title}: {', '.join(sorted(names))}")
        assert names, f"{title}: no metric in {expr}"
        undefined = {n for n in names if is_recording_rule(n)} - defined
        assert undefined == set(), f"{title}: recording rules not in rules.yml: {undefined}"


def test_every_sli_has_a_panel() -> None:
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    missing = {what: name for what, name in REQUIRED.items() if name not in used}
    assert missing == {}


def test_every_dashboard_expression_parses() -> None:
    """promtool parses each query, as a recording rule, with Grafana's variables replaced
    by what Grafana would put there."""
    tool = promtool()
    rules = [{"record": f"dashboard:query:{i}",
              "expr": re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)}
             for i, (_, expr) in enumerate(dashboard_exprs())]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard_queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        done = subprocess.run([tool, "check", "rules", str(path)], capture_output=True,
                              text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
