"""A real server with its Prometheus endpoint, driven through every kind of metric.

`scrape_after_traffic(pg_dsn)` is the base of the tests that read `/metrics`: the metric
contract (tests/integration/test_metrics.py) and "every metric the dashboard and the
alert rules name is exported" (deploy/). It starts a ServerThread on a database of its
own (`potato_metrics`: the invariant violation it provokes must not reach the suite's
shared database) with `metrics_port=0`, drives representative traffic over gRPC, then
polls `/metrics` until every domain family has appeared (the shadow comparison runs after
its response) and returns the exposition text.

Traffic: v2 writes (a merge, a split, a backfill), v2 reads, TotalsService reads, v1
reads for a user in the shadow sample of ff.potato.runs_v2 (flag evaluations and a
shadow comparison), a check-in without a run that the invariant monitor (a full pass every
second) exports as a violation, a rebuild of that user, a totals reconciliation, and one
refused call (an error outcome).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import grpc
from google.protobuf import field_mask_pb2
from prometheus_client.parser import text_string_to_metric_families

from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato.runs.v2 import admin_service_pb2 as admin
from potato.runs.v2 import admin_service_pb2_grpc as admin_grpc
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as runs_grpc
from potato.runs.v2 import totals_service_pb2 as totals
from potato.runs.v2 import totals_service_pb2_grpc as totals_grpc
from potato_runs.clock import FixedClock
from potato_runs.domain.flags import RUNS_V2
from support import ADMIN_METADATA, DEFAULT_NOW, ServerThread, fresh_database

METRICS_DATABASE = "potato_metrics"

DOMAIN_FAMILIES = (
    "potato_runs_events",
    "potato_runs_operation_duration_seconds",
    "potato_runs_merges",
    "potato_runs_invariant_violations",
    "potato_runs_rebuild_duration_seconds",
    "potato_runs_rebuild_changes",
    "potato_runs_rebuild_failures",
    "potato_flags_evaluations",
    "potato_shadow_comparisons",
    "potato_totals_reconcile_drift",
    "potato_totals_reconcile_repaired",
    "potato_totals_reconcile_duration_seconds",
    "potato_db_pool_connections",
    "potato_db_pool_wait_seconds",
)
"""The domain metric families as prometheus_client's parser names them (counters without
their `_total` suffix, which the samples carry)."""


def scrape(url: str, timeout: float = 5.0) -> str:
    """GET `url` (the /metrics endpoint): the exposition text."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read()).decode()


def families(text: str) -> dict[str, Any]:
    """The exposition parsed: family name -> prometheus_client Metric (with .samples)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample (name, labels, value) whose sample name is `name` or starts with
    `name_` (buckets, sums, counts, totals)."""
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name or s.name.startswith(name + "_")]


@contextmanager
def metrics_server(pg_dsn: str, database: str = METRICS_DATABASE, orphan: str | None = None,
                   **settings: Any) -> Iterator[tuple[ServerThread, str]]:
    """A ServerThread on `database` (fresh_database) with the Prometheus endpoint on a free
    port; yields it and the endpoint's URL. With `orphan` (a user id), that user gets a
    check-in without a run before the server starts, and the invariant monitor runs a full
    pass every second (it finds CHECKIN_NOT_COVERED until the user is rebuilt)."""
    dsn = fresh_database(pg_dsn, database)
    if orphan is not None:
        _orphan_checkin(dsn, orphan)
        settings = {"invariant_check_interval": 1.0, "invariant_full_check_interval": 1.0,
                    **settings}
    server = ServerThread(dsn, FixedClock(DEFAULT_NOW), metrics_port=0, shadow_workers=1,
                          **settings).start()
    try:
        assert server.app is not None and server.app.providers.metrics_endpoint is not None
        endpoint = server.app.providers.metrics_endpoint
        yield server, f"http://{endpoint.host}:{endpoint.port}/metrics"
    finally:
        server.stop()


def _set_shadow_sample(server: ServerThread, stub: admin_grpc.AdminServiceStub,
                       user: str) -> None:
    """ff.potato.runs_v2: `user` in the shadow sample (its allow list with 100 % shadow),
    and waits (bounded) until the server's flag store has it."""
    flag = admin.Flag(name=RUNS_V2, enabled=True, shadow_percent=100.0)
    stub.UpdateFlag(admin.UpdateFlagRequest(
        flag=flag, update_mask=field_mask_pb2.FieldMask(paths=["enabled", "shadow_percent"]),
        reason="metrics test: shadow sample"), metadata=ADMIN_METADATA, timeout=10)
    assert server.app is not None
    deadline = time.monotonic() + 10
    while True:
        state = server.app.flags.get(RUNS_V2)
        if state is not None and state.enabled and state.shadow_percent >= 100.0:
            return
        assert time.monotonic() < deadline, "the flag store did not reload the flag"
        time.sleep(0.02)


def _orphan_checkin(dsn: str, user: str) -> None:
    """A check-in without a run (written as the superuser, past the write path): the full
    check reports CHECKIN_NOT_COVERED for it, and a rebuild repairs it."""
    async def write() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("INSERT INTO users (user_id, time_zone, updated_at) "
                               "VALUES ($1, 'UTC', now())", uuid.UUID(user))
            await conn.execute("INSERT INTO daily_checkins (user_id, checkin_date, time_zone, "
                               "source, created_at) VALUES ($1, '2025-05-01', 'UTC', 'test', "
                               "now())", uuid.UUID(user))
        finally:
            await conn.close()

    asyncio.run(write())


def until_exported(url: str, check: Callable[[str], bool], what: str,
                   bound: float = 15.0) -> str:
    """Scrapes `url` until `check(text)` holds (50 ms apart); fails after `bound` s."""
    deadline = time.monotonic() + bound
    while True:
        text = scrape(url)
        if check(text):
            return text
        assert time.monotonic() < deadline, f"never exported: {what}"
        time.sleep(0.05)


def violations_of(text: str, invariant: str) -> float:
    return sum(v for name, labels, v in samples(text, "potato_runs_invariant_violations")
               if name == "potato_runs_invariant_violations"
               and labels.get("invariant") == invariant)


def drive_traffic(server: ServerThread, url: str, broken: str) -> None:
    """One call of every kind of metric (see the module docstring), synchronously.
    `broken`: the user of metrics_server's `orphan`, rebuilt here once the monitor has
    exported its violation."""
    user, other = (str(uuid.uuid4()) for _ in range(2))
    with grpc.insecure_channel(server.target) as channel:
        runs = runs_grpc.RunsServiceStub(channel)
        legacy = v1_grpc.RunsServiceStub(channel)
        sums = totals_grpc.TotalsServiceStub(channel)
        ops = admin_grpc.AdminServiceStub(channel)
        for day in ("2025-06-01", "2025-06-03", "2025-06-02"):   # created, created, merged
            runs.MarkDay(pb.MarkDayRequest(user_id=user, local_date=day, time_zone="UTC"),
                         timeout=10)
        runs.UnmarkDay(pb.UnmarkDayRequest(user_id=user, local_date="2025-06-02"), timeout=10)
        runs.BackfillDays(pb.BackfillDaysRequest(user_id=other, time_zone="UTC",
                                                 local_dates=["2025-06-01", "2025-06-02"]),
                          timeout=10)
        try:   # an error outcome: a date in the future
            runs.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2099-01-01"), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        runs.GetActiveRun(pb.GetActiveRunRequest(user_id=user), timeout=10)
        runs.ListRuns(pb.ListRunsRequest(user_id=user), timeout=10)
        sums.GetTotals(totals.GetTotalsRequest(user_id=user), timeout=10)
        sums.ListMonthlyTotals(totals.ListMonthlyTotalsRequest(user_id=user), timeout=10)
        _set_shadow_sample(server, ops, user)
        legacy.GetCurrentRun(v1.GetCurrentRunRequest(user_id=user), timeout=10)
        legacy.ListRuns(v1.ListRunsRequest(user_id=user), timeout=10)
        checked = ops.CheckInvariants(admin.CheckInvariantsRequest(), metadata=ADMIN_METADATA,
                                      timeout=60)
        assert any(v.code == "CHECKIN_NOT_COVERED" for v in checked.violations)
        until_exported(url, lambda text: violations_of(text, "CHECKIN_NOT_COVERED") >= 1,
                       "the monitor's CHECKIN_NOT_COVERED violation")
        ops.RebuildUserRuns(admin.RebuildUserRunsRequest(user_id=broken),
                            metadata=ADMIN_METADATA, timeout=60)
        ops.ReconcileTotals(admin.ReconcileTotalsRequest(), metadata=ADMIN_METADATA,
                            timeout=60)


def scrape_after_traffic(pg_dsn: str, bound: float = 15.0) -> str:
    """Starts a server with metrics (metrics_server), drives `drive_traffic`, and returns
    the /metrics text once every family of DOMAIN_FAMILIES is in it (polled, at most
    `bound` seconds: the shadow comparison is recorded after its response)."""
    broken = str(uuid.uuid4())
    with metrics_server(pg_dsn, orphan=broken) as (server, url):
        drive_traffic(server, url, broken)
        return until_exported(
            url, lambda text: (all(f in families(text) for f in DOMAIN_FAMILIES)
                               and bool(samples(text, "potato_shadow_comparisons_total"))),
            f"one of {DOMAIN_FAMILIES}", bound)
