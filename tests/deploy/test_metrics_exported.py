"""Every metric the dashboard and the alert rules read is exported by a real server, so
a rename can never silently blank a panel or mute an alert.

One server with its Prometheus endpoint, driven through every kind of metric
(observability_support.scrape_after_traffic); the names come from the PromQL of
deploy/grafana/potato-runs.json and deploy/prometheus/rules.yml (deploy/promql.py).
Recording-rule names (with a colon) are defined by rules.yml, not exported.
"""

from __future__ import annotations

import pytest
from observability_support import scrape_after_traffic
from prometheus_client.parser import text_string_to_metric_families

from deploy.promql import (
    dashboard_exprs,
    exported_names,
    is_recording_rule,
    labels_used,
    metric_names,
    rule_exprs,
)


@pytest.fixture(scope="module")
def exposition(pg_dsn: str) -> str:
    return scrape_after_traffic(pg_dsn)


def sample_names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_the_dashboard_and_rules_read_is_exported(exposition: str) -> None:
    used = exported_names()
    assert len(used) >= 15   # the extractor found the names (not an empty, vacuous check)
    exported = sample_names(exposition)
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert missing == {}, "read by the dashboard or the rules, not exported"


def test_every_label_they_select_or_group_by_is_exported(exposition: str) -> None:
    """A renamed attribute blanks a panel as surely as a renamed metric: every label a
    matcher names is on that metric, and every label of a `by (...)`/`on (...)` list is
    on some exported metric the expression reads."""
    labels: dict[str, set[str]] = {}
    for f in text_string_to_metric_families(exposition):
        for sample in f.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    wrong: list[str] = []
    for where, expr in [*dashboard_exprs(), *rule_exprs()]:
        matched, grouped = labels_used(expr)
        for name, names in matched.items():
            if not is_recording_rule(name) and names - labels.get(name, set()):
                wrong.append(f"{where}: {name} has no {sorted(names - labels.get(name, set()))}")
        read = [n for n in metric_names(expr) if not is_recording_rule(n)]
        if read:
            have = set().union(*(labels.get(n, set()) for n in read))
            if grouped - have:
                wrong.append(f"{where}: no metric of {read} has {sorted(grouped - have)}")
    assert wrong == []


def test_the_write_latency_slo_bucket_is_exported(exposition: str) -> None:
    """The latency SLO reads le="0.05" of the writes' histogram: 50 ms is a boundary."""
    buckets = [s for f in text_string_to_metric_families(exposition) for s in f.samples
               if s.name == "potato_runs_operation_duration_seconds_bucket"
               and s.labels.get("kind") == "write"]
    assert buckets
    assert {s.labels["le"] for s in buckets} >= {"0.05"}


def test_the_availability_slo_labels_are_exported(exposition: str) -> None:
    """The availability rules select on rpc_service and rpc_grpc_status_code (numeric)."""
    calls = [s.labels for f in text_string_to_metric_families(exposition) for s in f.samples
             if s.name == "rpc_server_duration_seconds_count"]
    services = {c["rpc_service"] for c in calls}
    assert {"potato.runs.v2.RunsService", "potato.runs.v2.TotalsService"} <= services
    codes = {c["rpc_grpc_status_code"] for c in calls}
    assert {"0", "3"} <= codes   # OK and the INVALID_ARGUMENT the traffic provokes
