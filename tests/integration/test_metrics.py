"""The metric contract, as Prometheus scrapes it: a real server with `--metrics-port 0`,
traffic through every kind of metric (observability_support.scrape_after_traffic), then
`/metrics` over HTTP. docs/observability.md#metrics lists the same names."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from observability_support import samples, scrape, scrape_after_traffic
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from potato_runs.config import Settings
from potato_runs.observability import ObservabilityError, build_providers, start_metrics_endpoint


@pytest.fixture(scope="module")
def exposition(pg_dsn: str) -> str:
    return scrape_after_traffic(pg_dsn)


def labels_of(text: str, sample: str) -> list[dict[str, str]]:
    return [labels for name, labels, _ in samples(text, sample) if name == sample]


def value(text: str, sample: str, **want: str) -> float:
    """The one sample `sample` whose labels include `want`."""
    found = [v for name, labels, v in samples(text, sample)
             if name == sample and want.items() <= labels.items()]
    assert len(found) == 1, (sample, want, found)
    return found[0]


def test_operation_latency_by_operation_kind_and_outcome(exposition: str) -> None:
    seen = {(x["operation"], x["kind"], x["outcome"])
            for x in labels_of(exposition, "potato_runs_operation_duration_seconds_count")}
    assert {("MarkDay", "write", "ok"), ("MarkDay", "write", "error"),
            ("UnmarkDay", "write", "ok"), ("BackfillDays", "write", "ok"),
            ("GetActiveRun", "read", "ok"), ("ListRuns", "read", "ok"),
            ("GetTotals", "read", "ok"), ("ListMonthlyTotals", "read", "ok"),
            ("v1.GetCurrentRun", "read", "ok"), ("v1.ListRuns", "read", "ok")} <= seen
    assert value(exposition, "potato_runs_operation_duration_seconds_count",
                 operation="MarkDay", outcome="ok") == 3
    # The SLO reads the 50 ms bucket: it must be a boundary.
    assert value(exposition, "potato_runs_operation_duration_seconds_bucket",
                 operation="MarkDay", outcome="ok", le="0.05") <= 3
    assert not samples(exposition, "potato_runs_write_duration_milliseconds")   # removed


def test_run_events_and_merges(exposition: str) -> None:
    kinds = {x["kind"] for x in labels_of(exposition, "potato_runs_events_total")}
    assert {"run_created", "run_merged", "run_split", "run_deactivated"} <= kinds
    assert value(exposition, "potato_runs_merges_total") >= 1


def test_invariant_violations_by_invariant(exposition: str) -> None:
    """Every invariant has its series (the helper saw CHECKIN_NOT_COVERED >= 1 before it
    rebuilt the user; the monitor's next pass may already have cleared it)."""
    invariants = {x["invariant"] for x in labels_of(exposition,
                                                     "potato_runs_invariant_violations")}
    assert {"RUNS_OVERLAP", "CHECKIN_NOT_COVERED", "DAY_COUNT_MISMATCH"} <= invariants
    assert value(exposition, "potato_runs_invariant_violations", invariant="RUNS_OVERLAP") == 0
    assert not samples(exposition, "potato_runs_invariant_violations_bucket")   # not a histogram


def test_rebuild_duration_changes_and_failures(exposition: str) -> None:
    assert value(exposition, "potato_runs_rebuild_duration_seconds_count", scope="user") >= 1
    assert value(exposition, "potato_runs_rebuild_changes_total", change="added") >= 1
    assert value(exposition, "potato_runs_rebuild_failures_total") == 0   # exists at 0


def test_flags_and_shadow(exposition: str) -> None:
    assert value(exposition, "potato_flags_evaluations_total", flag="ff.potato.runs_v2",
                 variant="shadow") >= 2
    assert any(x["flag"] == "ff.potato.totals_v2"
               for x in labels_of(exposition, "potato_flags_evaluations_total"))
    results = labels_of(exposition, "potato_shadow_comparisons_total")
    assert any(x["flag"] == "ff.potato.runs_v2" and x["method"] and x["result"]
               for x in results)


def test_totals_reconciliation(exposition: str) -> None:
    for dry_run in ("false", "true"):   # both exist from the start (alerts use increase())
        assert value(exposition, "potato_totals_reconcile_drift_total", dry_run=dry_run) >= 0
    assert value(exposition, "potato_totals_reconcile_repaired_total", dry_run="false") >= 0
    assert value(exposition, "potato_totals_reconcile_duration_seconds_count",
                 dry_run="false", scope="batch") >= 1   # the RPC reconciles one page


def test_pool_use_and_wait(exposition: str) -> None:
    for pool in ("serving", "admin", "shadow"):
        for state in ("used", "idle"):
            assert value(exposition, "potato_db_pool_connections", pool=pool, state=state) >= 0
    assert value(exposition, "potato_db_pool_wait_seconds_count", pool="serving") >= 1


def test_rpc_metrics_are_exported_beside_the_domain_ones(exposition: str) -> None:
    assert any(x.get("rpc_method") == "MarkDay"
               for x in labels_of(exposition, "rpc_server_duration_seconds_count"))


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_busy_metrics_port_is_refused(busy_port: int) -> None:
    with pytest.raises(ObservabilityError, match="could not bind the metrics endpoint"):
        start_metrics_endpoint("127.0.0.1", busy_port)


def test_prometheus_and_another_reader_coexist() -> None:
    """The endpoint is one more reader: OTLP (or any reader) still gets every metric."""
    other = InMemoryMetricReader()
    providers = build_providers("none", extra_reader=other,
                                metrics_endpoint=start_metrics_endpoint("127.0.0.1", 0))
    try:
        assert providers.metrics_endpoint is not None
        providers.meter().create_counter("potato.test.coexist").add(2)
        text = scrape(f"http://127.0.0.1:{providers.metrics_endpoint.port}/metrics")
        assert value(text, "potato_test_coexist_total") == 2
        data = other.get_metrics_data()
        assert data is not None and any(
            m.name == "potato.test.coexist" for rm in data.resource_metrics
            for sm in rm.scope_metrics for m in sm.metrics)
    finally:
        providers.shutdown()


def test_metrics_port_setting() -> None:
    settings = Settings.from_env({"POTATO_METRICS_PORT": "0", "POTATO_METRICS_HOST": "::1"})
    assert (settings.metrics_port, settings.metrics_host) == (0, "::1")
    assert Settings.from_env({}).metrics_port is None
    with pytest.raises(ValueError, match="POTATO_METRICS_PORT"):
        Settings.from_env({"POTATO_METRICS_PORT": "70000"})
