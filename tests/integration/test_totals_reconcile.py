"""Nightly reconciliation of the stored totals (run_totals, user_totals) with the facts.

A database of its own: the reconciliation scans every user, so it must see only this
module's users. Stored totals are filled from potato_computed_* (as migration 0004
does) before each test, then damaged with raw SQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2 import admin_service_pb2_grpc, runs_service_pb2_grpc
from potato_runs.app import App, Database, build_app
from potato_runs.clock import FixedClock, SystemClock
from potato_runs.config import Settings
from potato_runs.observability import build_providers
from potato_runs.service.admin_service import AdminService
from potato_runs.service.telemetry import Telemetry
from potato_runs.service.totals_reconcile import TotalsReconciler
from potato_runs.storage.admin_repo import AdminRepository
from potato_runs.storage.pool import create_pool
from potato_runs.storage.totals_repo import TotalsRepository
from support import (
    ADMIN_TOKEN,
    DEFAULT_NOW,
    FILL_TOTALS,
    TOTALS_DRIFT,
    BearerInterceptor,
    ServerThread,
    app_dsn,
    fresh_database,
    rich_status,
)

from .helpers import backfill, mark, unmark

A, B, C, D = (str(uuid.uuid5(uuid.NAMESPACE_URL, f"potato-reconcile-{x}")) for x in "ABCD")
HISTORY = {
    # A run from Jan 25 to Feb 3 (January 7, February 3), March islands, a year end.
    A: [f"2026-01-{d}" for d in range(25, 32)] + ["2026-02-01", "2026-02-02", "2026-02-03",
                                                  "2026-03-02", "2026-03-03", "2026-03-05"],
    C: ["2025-12-30", "2025-12-31", "2026-01-01", "2026-01-02"],
    D: ["2026-06-10", "2026-06-11", "2026-06-12", "2026-07-01"],
}

STORED_EQUALS_COMPUTED = f"SELECT ({TOTALS_DRIFT}) = 0"


@pytest.fixture(scope="module")
def rdsn(pg_dsn: str) -> str:
    return fresh_database(pg_dsn, "potato_reconcile")


@pytest.fixture(scope="module")
def replica(rdsn: str) -> Iterator[ServerThread]:
    srv = ServerThread(rdsn, FixedClock(DEFAULT_NOW)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def rdb(rdsn: str, replica: ServerThread) -> AsyncIterator[asyncpg.Connection]:
    """The module's database with its users seeded and right stored totals."""
    async with grpc.aio.insecure_channel(replica.target) as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        for user, days in HISTORY.items():
            await backfill(stub, user, days, "America/New_York")
        await mark(stub, B, "2026-05-05")   # B: a user without check-ins
        await unmark(stub, B, "2026-05-05")
    conn = await asyncpg.connect(rdsn)
    await conn.execute("TRUNCATE totals_reconcile_runs")
    await conn.execute(FILL_TOTALS)   # a known starting point: stored = computed
    assert await conn.fetchval(STORED_EQUALS_COMPUTED)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def reconciler(rdsn: str) -> AsyncIterator[TotalsReconciler]:
    pool = await create_pool(rdsn, min_size=1, max_size=2)
    try:
        yield TotalsReconciler(TotalsRepository(pool, lock_timeout=0.3),
                               FixedClock(DEFAULT_NOW), Telemetry())
    finally:
        await pool.close()


async def snapshot(conn: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
    """Every column of both tables (updated_at included): equal means untouched."""
    return ([tuple(r) for r in await conn.fetch("SELECT * FROM run_totals ORDER BY 1, 2")],
            [tuple(r) for r in await conn.fetch("SELECT * FROM user_totals ORDER BY 1")])


async def damage(conn: asyncpg.Connection) -> dict[str, int]:
    """Wrong figures, a missing row, an extra row and broken lifetime rows; returns the
    drifted rows per user."""
    await conn.execute("UPDATE run_totals SET streak_days = 1 WHERE user_id = $1 "
                       "AND yyyymm = 202602", A)                          # wrong
    await conn.execute("DELETE FROM run_totals WHERE user_id = $1 AND yyyymm = 202603", A)
    await conn.execute("INSERT INTO run_totals VALUES ($1, 202506, 2, 3, now())", A)  # extra
    await conn.execute("UPDATE user_totals SET total_days = total_days + 1 WHERE user_id = $1",
                       A)                                                 # wrong lifetime
    await conn.execute("DELETE FROM user_totals WHERE user_id = $1", B)  # missing zeros row
    await conn.execute("UPDATE run_totals SET streak_days = 1 "
                       "WHERE user_id = $1 AND yyyymm = 202512", C)   # was 2
    return {A: 4, B: 1, C: 1}


async def test_dry_run_reports_missing_extra_and_wrong_rows_and_changes_nothing(
        rdb: asyncpg.Connection, reconciler: TotalsReconciler) -> None:
    clean = await reconciler.reconcile_all(batch=2, dry_run=True)
    assert (clean.users_checked, clean.rows_drifted, clean.failed) == (4, 0, [])
    expected = await damage(rdb)
    before = await snapshot(rdb)
    seen: list[tuple[uuid.UUID, int]] = []
    report = await reconciler.reconcile_all(batch=2, dry_run=True,
                                            progress=lambda b: seen.extend(b.drifted))
    assert await snapshot(rdb) == before
    assert {str(u): n for u, n in seen} == expected
    assert report.users_checked == 4
    assert report.rows_drifted == sum(expected.values())
    assert report.rows_repaired == 0 and report.failed == []
    assert [str(u) for u in report.examples] == sorted(expected)
    assert not report.complete


async def test_repair_rewrites_exactly_the_drifted_rows(
        rdb: asyncpg.Connection, reconciler: TotalsReconciler) -> None:
    expected = await damage(rdb)
    untouched = await rdb.fetch("SELECT * FROM run_totals WHERE user_id = $1", D)
    report = await reconciler.reconcile_all(batch=3)
    assert report.rows_drifted == sum(expected.values())
    assert report.rows_repaired == sum(expected.values())
    assert report.failed == [] and report.complete
    assert await rdb.fetchval(STORED_EQUALS_COMPUTED)
    # A user without check-ins gets its lifetime row of zeros back, and no months.
    assert tuple(await rdb.fetchrow(
        "SELECT total_days, run_count, longest_run_days FROM user_totals WHERE user_id = $1",
        B)) == (0, 0, 0)
    assert await rdb.fetch("SELECT * FROM run_totals WHERE user_id = $1", D) == untouched
    feb = await rdb.fetchrow("SELECT streak_days, total_days FROM run_totals "
                             "WHERE user_id = $1 AND yyyymm = 202602", A)
    assert tuple(feb) == (3, 3)
    again = await reconciler.reconcile_all(batch=3, dry_run=True)
    assert (again.rows_drifted, again.rows_repaired) == (0, 0)


async def test_a_busy_lock_is_listed_and_the_run_goes_on(
        rdb: asyncpg.Connection, reconciler: TotalsReconciler, rdsn: str) -> None:
    await damage(rdb)
    holder = await asyncpg.connect(rdsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))", A)
        report = await reconciler.reconcile_all(batch=10)
        await tx.rollback()
    finally:
        await holder.close()
    assert [str(u) for u, _ in report.failed] == [A]
    assert "locked" in report.failed[0][1]
    assert report.rows_repaired == 2   # B and C were repaired all the same
    assert not report.complete
    again = await reconciler.reconcile_all(batch=10)
    assert again.rows_drifted == 4 and again.rows_repaired == 4 and again.failed == []


async def test_runs_that_drift_from_the_facts_are_reported_with_the_rebuild_hint(
        rdb: asyncpg.Connection, reconciler: TotalsReconciler, rdsn: str) -> None:
    # D's older run disappears: the lifetime row, kept from the runs, cannot be repaired.
    await rdb.execute("DELETE FROM runs WHERE user_id = $1 AND NOT active", D)
    await rdb.execute("UPDATE user_totals SET run_count = 9 WHERE user_id = $1", D)
    report = await reconciler.reconcile_all(batch=10)
    assert [str(u) for u, _ in report.failed] == [D]
    assert f"potato-runs rebuild --user {D}" in report.failed[0][1]
    pool = await create_pool(rdsn, min_size=1, max_size=2)
    try:
        admin = AdminService(AdminRepository(pool), SystemClock(), Telemetry())
        await admin.rebuild_user(uuid.UUID(D), None, None, dry_run=False)
    finally:
        await pool.close()
    fixed = await reconciler.reconcile_all(batch=10)
    assert fixed.failed == [] and await rdb.fetchval(STORED_EQUALS_COMPUTED)


async def test_metrics_and_the_warning_with_example_users(
        rdb: asyncpg.Connection, rdsn: str, caplog: pytest.LogCaptureFixture) -> None:
    expected = await damage(rdb)
    reader = InMemoryMetricReader()
    providers = build_providers("none", extra_reader=reader)
    pool = await create_pool(rdsn, min_size=1, max_size=2)
    try:
        reconciler = TotalsReconciler(TotalsRepository(pool), FixedClock(DEFAULT_NOW),
                                      Telemetry(providers.tracer(), providers.meter()))
        with caplog.at_level(logging.WARNING, "potato_runs.service.totals_reconcile"):
            await reconciler.reconcile_all(batch=100)
    finally:
        await pool.close()
    data = reader.get_metrics_data()
    assert data is not None
    found = {m.name: m.data.data_points for rm in data.resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert sum(p.value for p in found["potato.totals.reconcile.drift"]) == 6
    assert sum(p.value for p in found["potato.totals.reconcile.repaired"]) == 6
    scopes = {p.attributes["scope"]: p.count for p in found["potato.totals.reconcile.duration"]}
    assert scopes == {"batch": 2, "run": 1}   # one batch of 4 users, then the empty one
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "6 row(s) of 3 user(s)" in warning
    assert all(u in warning for u in expected)
    providers.shutdown()


# --------------------------------------------------------------------------- AdminService
@pytest.fixture
async def admin(replica: ServerThread) -> AsyncIterator[admin_service_pb2_grpc.AdminServiceStub]:
    async with grpc.aio.insecure_channel(replica.target,
                                         interceptors=[BearerInterceptor()]) as ch:
        yield admin_service_pb2_grpc.AdminServiceStub(ch)


async def test_reconcile_totals_rpc_pages_through_every_user(
        rdb: asyncpg.Connection, admin: admin_service_pb2_grpc.AdminServiceStub) -> None:
    expected = await damage(rdb)
    before = await snapshot(rdb)
    pages: list[apb.ReconcileTotalsResponse] = []
    token = ""
    while True:
        res = await admin.ReconcileTotals(apb.ReconcileTotalsRequest(
            dry_run=True, page_size=3, page_token=token), timeout=60)
        pages.append(res)
        token = res.next_page_token
        if not token:
            break
    assert await snapshot(rdb) == before
    assert [p.total_users for p in pages] == [4, 0]
    assert [p.users_checked for p in pages] == [3, 1]
    assert {d.user_id: d.rows_drifted for p in pages for d in p.drifted_users} == expected
    assert sum(p.rows_drifted for p in pages) == 6
    assert sum(p.rows_repaired for p in pages) == 0
    fixed = await admin.ReconcileTotals(apb.ReconcileTotalsRequest(page_size=10), timeout=60)
    assert (fixed.rows_drifted, fixed.rows_repaired, fixed.next_page_token) == (6, 6, "")
    assert await rdb.fetchval(STORED_EQUALS_COMPUTED)


@pytest.mark.parametrize("request_kw, field", [({"page_size": -1}, "page_size"),
                                               ({"page_token": "nope"}, "page_token")])
async def test_reconcile_totals_rpc_refuses_bad_input(
        admin: admin_service_pb2_grpc.AdminServiceStub, request_kw: dict[str, Any],
        field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.ReconcileTotals(apb.ReconcileTotalsRequest(**request_kw), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    _, bad, _ = rich_status(err.value)
    assert bad is not None and [v.field for v in bad.field_violations] == [field]


async def test_reconcile_totals_rpc_needs_the_admin_token(replica: ServerThread) -> None:
    async with grpc.aio.insecure_channel(replica.target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin_service_pb2_grpc.AdminServiceStub(ch).ReconcileTotals(
                apb.ReconcileTotalsRequest(dry_run=True), timeout=10)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- the schedule
async def _replica(rdsn: str, clock: FixedClock, at: dt.time | None) -> App:
    dsn = app_dsn(rdsn)   # the least-privilege role, as every test server
    pool = await create_pool(dsn, min_size=1, max_size=4)
    settings = Settings(port=0, dsn=dsn, invariant_check_interval=0, health_probe_interval=0,
                        admin_token=ADMIN_TOKEN, totals_reconcile_at=at,
                        totals_reconcile_poll=0.02)
    return await build_app(settings, clock=clock, database=Database(dsn=dsn, pool=pool))


async def until(check: Any, bound: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        assert loop.time() - start < bound, f"{what} took more than {bound} s"
        await asyncio.sleep(0.02)


async def test_exactly_one_replica_runs_the_day_and_repairs(
        rdb: asyncpg.Connection, rdsn: str) -> None:
    clock = FixedClock(dt.datetime(2026, 11, 22, 3, 59, tzinfo=dt.UTC))
    apps = [await _replica(rdsn, clock, dt.time(4, 0)) for _ in range(2)]
    try:
        await damage(rdb)
        before = await snapshot(rdb)
        # Both loops look at the clock every 20 ms; before 04:00 neither claims the day.
        scheds = [a.totals_reconcile for a in apps]
        for s in scheds:
            assert s is not None and await s.tick() is None
        assert await rdb.fetchval("SELECT count(*) FROM totals_reconcile_runs") == 0
        assert await snapshot(rdb) == before

        clock.set(dt.datetime(2026, 11, 22, 4, 0, 30, tzinfo=dt.UTC))

        async def both_saw_the_day() -> bool:
            return all(s is not None and s.last is not None
                       and s.last.day == dt.date(2026, 11, 22) for s in scheds)

        await until(both_saw_the_day, 60, "both replicas to take their turn")
        outcomes = [s.last for s in scheds if s is not None]
        assert sorted(o.ran for o in outcomes if o is not None) == [False, True]
        winner = next(o for o in outcomes if o is not None and o.ran)
        assert winner.report is not None and winner.error is None
        assert (winner.report.rows_drifted, winner.report.rows_repaired) == (6, 6)
        rows = await rdb.fetch("SELECT * FROM totals_reconcile_runs")
        assert len(rows) == 1
        row = rows[0]
        assert row["day"] == dt.date(2026, 11, 22) and row["finished_at"] is not None
        assert (row["users_checked"], row["rows_drifted"], row["rows_repaired"],
                row["users_failed"]) == (4, 6, 6, 0)
        assert await rdb.fetchval(STORED_EQUALS_COMPUTED)
        # The same day again (both replicas): nothing more runs.
        for s in scheds:
            assert s is not None and await s.tick() is None
        # Past the catch-up window the next day is skipped; the day after runs again.
        clock.set(dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC))
        for s in scheds:
            assert s is not None and await s.tick() is None
        clock.set(dt.datetime(2026, 11, 24, 4, 5, tzinfo=dt.UTC))

        async def next_day_done() -> bool:
            return await rdb.fetchval(
                "SELECT finished_at IS NOT NULL FROM totals_reconcile_runs "
                "WHERE day = '2026-11-24'") is True

        await until(next_day_done, 60, "the next day's run")
        assert await rdb.fetchval("SELECT count(*) FROM totals_reconcile_runs") == 2
    finally:
        for a in apps:
            await a.stop(0)


async def test_an_empty_setting_disables_the_schedule(rdb: asyncpg.Connection,
                                                      rdsn: str) -> None:
    clock = FixedClock(dt.datetime(2026, 11, 22, 4, 0, tzinfo=dt.UTC))
    app = await _replica(rdsn, clock, None)
    try:
        assert app.totals_reconcile is not None
        assert await app.totals_reconcile.tick() is None
        assert await rdb.fetchval("SELECT count(*) FROM totals_reconcile_runs") == 0
    finally:
        await app.stop(0)

