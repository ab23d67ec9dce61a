"""The population diff (legacy gaps-and-islands vs the stored runs), its RPCs and
RebuildRunsBatch / GetShadowStats over the real server.

Each difference class is produced on purpose: damage the constraints allow is
committed in a scratch database of the test's own; damage they forbid is made in
a transaction that drops or defers the guard, diffed on that same connection
(OneConnectionPool) and rolled back. The current-streak rule in SQL is held equal
to the Python one (domain.rules) by a property over zones and instants around
midnight.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2.admin_service_pb2_grpc import AdminServiceStub
from potato_runs.clock import FixedClock
from potato_runs.domain import rules
from potato_runs.domain.flags import RUNS_V2
from potato_runs.domain.model import Run
from potato_runs.domain.rollout import DIFF_CLASSES, DiffBatch
from potato_runs.service.admin_service import AdminService
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.admin_repo import AdminRepository, current_streak_sql
from potato_runs.storage.pool import create_pool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import DEFAULT_NOW, OneConnectionPool, app_dsn, rich_status

from .test_rebuild_check import create_scratch, drop_scratch, seed, span

NOW = DEFAULT_NOW                      # 2026-11-21 12:00 UTC
BASE = ["2026-06-01", "2026-06-02", "2026-06-03", "2026-06-10", "2026-06-11", "2026-06-12"]
RECENT = span("2026-11-15", "2026-11-20")   # current at NOW (ends yesterday, UTC)


@pytest.fixture
async def fresh(pg_dsn: str) -> AsyncIterator[tuple[asyncpg.Connection, AdminService, str]]:
    """A database of its own (the diff covers everyone): (connection, service, dsn)."""
    dsn = await create_scratch(pg_dsn)
    pool = await create_pool(app_dsn(dsn), min_size=1, max_size=4)   # as the server would
    conn = await asyncpg.connect(dsn)
    try:
        yield conn, AdminService(AdminRepository(pool), FixedClock(NOW), Telemetry()), dsn
    finally:
        await conn.close()
        await pool.close()
        await drop_scratch(dsn)


def on(conn: asyncpg.Connection) -> AdminService:
    """The service on one connection (inside the transaction the test has open)."""
    return AdminService(AdminRepository(OneConnectionPool(conn)), FixedClock(NOW), Telemetry())


def classes(batch: DiffBatch) -> dict[str, tuple[int, tuple[uuid.UUID, ...]]]:
    return {c.name: (c.users, c.examples) for c in batch.classes}


# name -> (guards to drop/defer, damage statements ($1 = user), seed days, expected classes)
DAMAGE: dict[str, tuple[list[str], list[str], list[str], set[str]]] = {
    "day_count_mismatch: a wrong day_count": (
        ["ALTER TABLE runs DROP CONSTRAINT runs_day_count_matches"],
        ["UPDATE runs SET day_count = day_count + 1 WHERE user_id = $1 AND start_date = '2026-06-01'"],
        BASE, {"day_count_mismatch"}),
    "day_count_mismatch: other bounds (and an uncovered day)": (
        [], ["UPDATE runs SET end_date = '2026-06-02', day_count = 2 "
             "WHERE user_id = $1 AND start_date = '2026-06-01'"],
        BASE, {"day_count_mismatch", "uncovered_day"}),
    "missing_run": (
        [], ["DELETE FROM runs WHERE user_id = $1 AND start_date = '2026-06-01'"],
        BASE, {"missing_run", "uncovered_day"}),
    "extra_run": (
        [], ["INSERT INTO runs (user_id, start_date, end_date, day_count) "
             "VALUES ($1, '2026-06-20', '2026-06-21', 2)"],
        BASE, {"extra_run"}),
    "overlap": (
        ["SET CONSTRAINTS runs_no_overlap DEFERRED"],
        ["INSERT INTO runs (user_id, start_date, end_date, day_count) "
         "VALUES ($1, '2026-06-02', '2026-06-03', 2)"],
        BASE, {"overlap", "day_count_mismatch"}),
    "overlap: runs that touch": (
        ["SET CONSTRAINTS runs_no_touch DEFERRED"],
        ["INSERT INTO runs (user_id, start_date, end_date, day_count) "
         "VALUES ($1, '2026-06-04', '2026-06-05', 2)"],
        BASE, {"overlap", "extra_run"}),
    "uncovered_day: a check-in between runs": (
        [], ["INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
             "VALUES ($1, '2026-06-06', 'UTC')"],
        BASE, {"uncovered_day", "missing_run"}),
    "active_mismatch: the flags flipped": (
        [], ["UPDATE runs SET active = false WHERE user_id = $1 AND active",
             "UPDATE runs SET active = true WHERE user_id = $1 AND start_date = '2026-06-01'"],
        BASE, {"active_mismatch"}),
    "active_mismatch: two active runs": (
        ["DROP INDEX runs_one_active_per_user"],
        ["UPDATE runs SET active = true WHERE user_id = $1 AND start_date = '2026-06-01'"],
        BASE, {"active_mismatch"}),
    "current_streak_mismatch (and active_mismatch)": (
        [], ["UPDATE runs SET active = false WHERE user_id = $1 AND active",
             "UPDATE runs SET active = true WHERE user_id = $1 AND start_date = '2026-06-01'"],
        BASE[:3] + RECENT, {"active_mismatch", "current_streak_mismatch"}),
    "current_streak_mismatch: the current run cut short": (
        [], ["UPDATE runs SET end_date = '2026-11-19', day_count = 5 WHERE user_id = $1 AND active"],
        BASE[:3] + RECENT, {"day_count_mismatch", "uncovered_day", "active_mismatch",
                            "current_streak_mismatch"}),
    "a wrong stored day_count is not a different streak (served from the dates)": (
        ["ALTER TABLE runs DROP CONSTRAINT runs_day_count_matches"],
        ["UPDATE runs SET day_count = 1 WHERE user_id = $1 AND active"],
        BASE[:3] + RECENT, {"day_count_mismatch"}),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
async def test_each_class_is_detected_with_its_example_user(
        fresh: tuple[asyncpg.Connection, AdminService, str], name: str) -> None:
    conn, _service, _ = fresh
    guards, damage, days, expected = DAMAGE[name]
    healthy = [uuid.uuid4() for _ in range(3)]
    damaged = uuid.uuid4()
    for user in [*healthy, damaged]:
        await seed(conn, user, days)
    assert classes(await on(conn).diff_batch(None, 100)) == {}

    tx = conn.transaction()
    await tx.start()
    try:
        for stmt in guards:
            await conn.execute(stmt)
        for stmt in damage:
            await conn.execute(stmt, damaged)
        batch = await on(conn).diff_batch(None, 100)
    finally:
        await tx.rollback()
    assert set(classes(batch)) == expected, classes(batch)
    assert all(v == (1, (damaged,)) for v in classes(batch).values()), classes(batch)
    assert batch.users_scanned == 4 and batch.users_different == 1
    assert batch.checkins_scanned == 4 * len(days) + (1 if "between runs" in name else 0)
    # The rollback put everything back: the population is clean again.
    assert (await on(conn).diff_batch(None, 100)).users_different == 0


async def test_a_clean_population_has_no_differences(
        fresh: tuple[asyncpg.Connection, AdminService, str]) -> None:
    conn, service, _ = fresh
    histories = [BASE, RECENT, BASE + RECENT, ["2026-02-28", "2026-03-01"], span("2026-01-01",
                 "2026-03-31"), ["2026-11-21"]]
    for days in histories:
        await seed(conn, uuid.uuid4(), days)
    await conn.execute("INSERT INTO users (user_id, time_zone) VALUES ($1, 'UTC')",
                       uuid.uuid4())   # a user without check-ins
    diff = await service.diff_population(batch=2)
    assert diff.users_scanned == len(histories) + 1 and diff.batches == 4
    assert diff.users_different == 0 and all(diff.counts[c] == 0 for c in DIFF_CLASSES)
    assert diff.checkins_scanned == sum(len(set(h)) for h in histories)


async def test_batches_visit_every_user_including_the_nil_uuid(
        fresh: tuple[asyncpg.Connection, AdminService, str]) -> None:
    conn, service, _ = fresh
    users = [uuid.UUID(int=0), uuid.UUID(int=1), *sorted(uuid.uuid4() for _ in range(7)),
             uuid.UUID(int=2**128 - 1)]
    for user in users:
        await seed(conn, user, BASE)
    damaged = [users[0], users[5], users[-1]]   # first, middle and last in user_id order
    for user in damaged:
        await conn.execute("DELETE FROM runs WHERE user_id = $1 AND NOT active", user)
    seen: list[DiffBatch] = []
    diff = await service.diff_population(batch=3, progress=seen.append)
    assert [b.users_scanned for b in seen] == [3, 3, 3, 1]
    assert diff.users_scanned == len(users) and diff.users_different == 3
    assert diff.counts["missing_run"] == 3 and diff.examples["missing_run"] == damaged
    assert diff.rate("missing_run") == pytest.approx(3 / len(users))
    # A sample is the first N users in user_id order.
    sample = await service.diff_population(batch=2, sample=5)
    assert sample.users_scanned == 5 and sample.examples["missing_run"] == [users[0]]


async def test_examples_are_capped_at_five_per_class(
        fresh: tuple[asyncpg.Connection, AdminService, str]) -> None:
    conn, service, _ = fresh
    users = sorted(uuid.uuid4() for _ in range(8))
    for user in users:
        await seed(conn, user, BASE)
        await conn.execute("DELETE FROM runs WHERE user_id = $1 AND NOT active", user)
    one = await service.diff_batch(None, 100)
    assert classes(one)["missing_run"] == (8, tuple(users[:5]))
    diff = await service.diff_population(batch=3)
    assert diff.counts["missing_run"] == 8 and diff.examples["missing_run"] == users[:5]


# --------------------------------------------------------------------------- current streak rule
ZONES = ["Pacific/Kiritimati", "Pacific/Pago_Pago", "Australia/Lord_Howe", "America/New_York",
         "Europe/London", "Asia/Kathmandu", "UTC"]


@st.composite
def around_midnight(draw: st.DrawFn) -> tuple[str, dt.datetime, dt.date, int]:
    zone = draw(st.sampled_from(ZONES))
    day = draw(st.dates(dt.date(2025, 1, 1), dt.date(2030, 12, 31)))
    local_midnight = dt.datetime.combine(day, dt.time(0), tzinfo=zoneinfo.ZoneInfo(zone))
    now = local_midnight.astimezone(dt.UTC) + dt.timedelta(
        seconds=draw(st.integers(-3 * 3600, 3 * 3600)))
    end = day + dt.timedelta(days=draw(st.integers(-4, 3)))
    return zone, now, end, draw(st.integers(1, 400))


def test_the_sql_current_streak_rule_equals_the_python_one(pg_dsn: str) -> None:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(pg_dsn))
    sql = "SELECT " + current_streak_sql("$1::date", "$2::int", "$3::text", "$4::timestamptz")

    @given(around_midnight())
    def prop(case: tuple[str, dt.datetime, dt.date, int]) -> None:
        zone, now, end, days = case
        run = Run(uuid.UUID(int=0), end - dt.timedelta(days=days - 1), end, True)
        _, expected = rules.current_streak(run, zone, now)
        got = loop.run_until_complete(conn.fetchval(sql, end, days, zone, now))
        assert got == expected, (zone, now, end, rules.today_in(now, zone))

    try:
        prop()
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


async def test_current_streak_uses_the_users_zone(
        fresh: tuple[asyncpg.Connection, AdminService, str]) -> None:
    """At 2026-11-21 12:00 UTC it is already 11-22 in Kiritimati (UTC+14) and still 11-21
    in New York. Both projections end a day early (11-19): in New York legacy (ends 11-20,
    current) says 6 and the projection 0; in Kiritimati both say 0 (neither is current)."""
    conn, _service, _ = fresh
    east, west = uuid.uuid4(), uuid.uuid4()
    for user, zone in ((east, "Pacific/Kiritimati"), (west, "America/New_York")):
        await conn.fetchval("SELECT potato_backfill_days($1, $2::date[], $3, 'test', $4, NULL)",
                            user, [dt.date.fromisoformat(d) for d in RECENT], zone, NOW)
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("UPDATE runs SET end_date = '2026-11-19', day_count = 5 WHERE active")
        batch = await on(conn).diff_batch(None, 10)
    finally:
        await tx.rollback()
    assert classes(batch)["current_streak_mismatch"] == (1, (west,))
    assert classes(batch)["day_count_mismatch"][0] == 2


# --------------------------------------------------------------------------- RPCs (real server)
async def walk_diff(admin_stub: AdminServiceStub, size: int) -> list[apb.DiffPopulationResponse]:
    pages, token = [], ""
    while True:
        res = await admin_stub.DiffPopulation(
            apb.DiffPopulationRequest(page_size=size, page_token=token), timeout=60)
        pages.append(res)
        token = res.next_page_token
        if not token:
            return pages


def counts(pages: Sequence[apb.DiffPopulationResponse]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in pages:
        for c in p.classes:
            out[c.difference_class] = out.get(c.difference_class, 0) + c.users
    return out


async def test_diff_population_rpc_pages_over_everyone(
        admin_stub: AdminServiceStub, db: asyncpg.Connection) -> None:
    user = uuid.uuid4()
    await seed(db, user, BASE)
    total = await db.fetchval("SELECT count(*) FROM users")
    before = await walk_diff(admin_stub, 7)
    assert before[0].total_users == total and all(p.total_users == 0 for p in before[1:])
    assert sum(p.users_scanned for p in before) == total
    assert sum(p.checkins_scanned for p in before) == await db.fetchval(
        "SELECT count(*) FROM daily_checkins")

    await db.execute("DELETE FROM runs WHERE user_id = $1 AND NOT active", user)
    try:
        after = await walk_diff(admin_stub, 1000)
        grown = {k: v - counts(before).get(k, 0) for k, v in counts(after).items()}
        assert {k: v for k, v in grown.items() if v} == {"missing_run": 1, "uncovered_day": 1}
        if counts(before).get("missing_run", 0) == 0:   # the only one: it is the example
            assert [ex for p in after for c in p.classes if c.difference_class == "missing_run"
                    for ex in c.example_user_ids] == [str(user)]
    finally:
        await admin_stub.RebuildUserRuns(apb.RebuildUserRunsRequest(user_id=str(user)),
                                         timeout=30)
    assert counts(await walk_diff(admin_stub, 1000)) == counts(before)


@pytest.mark.parametrize("token", ["nonsense", "e30", "eyJ2IjoxLCJhIjoieCJ9", "x" * 300])
async def test_batch_rpcs_refuse_a_forged_page_token(admin_stub: AdminServiceStub,
                                                     token: str) -> None:
    for call in (lambda: admin_stub.DiffPopulation(
                     apb.DiffPopulationRequest(page_token=token), timeout=10),
                 lambda: admin_stub.RebuildRunsBatch(
                     apb.RebuildRunsBatchRequest(page_token=token, dry_run=True), timeout=10)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info, bad, _ = rich_status(caught.value)
        assert info is not None and info.reason == "INVALID_PAGE_TOKEN"
        assert bad is not None and bad.field_violations[0].field == "page_token"


async def test_batch_rpcs_refuse_a_negative_page_size(admin_stub: AdminServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin_stub.DiffPopulation(apb.DiffPopulationRequest(page_size=-1), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, _, _ = rich_status(caught.value)
    assert info is not None and info.reason == "INVALID_PAGE_SIZE"


async def test_rebuild_runs_batch_rpc_repairs_page_by_page(
        admin_stub: AdminServiceStub, db: asyncpg.Connection) -> None:
    damaged = uuid.uuid4()
    await seed(db, damaged, BASE)
    await db.execute("DELETE FROM runs WHERE user_id = $1 AND NOT active", damaged)
    total = await db.fetchval("SELECT count(*) FROM users")
    for dry_run in (True, False):
        token, scanned, drifted, first = "", 0, [], True
        while True:
            res = await admin_stub.RebuildRunsBatch(apb.RebuildRunsBatchRequest(
                page_size=5, page_token=token, dry_run=dry_run), timeout=60)
            assert res.total_users == (total if first else 0)
            first = False
            scanned += res.users_scanned
            drifted += [(d.user_id, d.runs_added) for d in res.drifted_users]
            assert not res.failed_users
            token = res.next_page_token
            if not token:
                break
        assert scanned == total
        assert (str(damaged), 1) in drifted
    assert await db.fetchval("SELECT count(*) FROM runs WHERE user_id = $1", damaged) == 2
    res = await admin_stub.RebuildRunsBatch(apb.RebuildRunsBatchRequest(page_size=10_000),
                                            timeout=60)
    assert str(damaged) not in [d.user_id for d in res.drifted_users]


async def test_get_shadow_stats_reads_the_window(admin_stub: AdminServiceStub,
                                                 db: asyncpg.Connection) -> None:
    flag = "ff.potato.test_shadow_stats"   # a flag of this test's own (no other writer)
    hour = dt.datetime(2026, 11, 21, 11, tzinfo=dt.UTC)   # NOW is 12:00
    rows = [("GetCurrentRun", "match", hour, 990), ("GetCurrentRun", "mismatch", hour, 3),
            ("ListRuns", "match", hour - dt.timedelta(hours=3), 40),
            ("ListRuns", "dropped", hour, 2),
            ("GetCurrentRun", "mismatch", hour - dt.timedelta(hours=30), 500)]   # outside 24 h
    user = uuid.uuid4()
    async with db.transaction():
        await db.executemany("INSERT INTO shadow_comparisons (flag, method, result, hour, count) "
                             "VALUES ($1, $2, $3, $4, $5)", [(flag, *r) for r in rows])
        await db.execute("INSERT INTO shadow_mismatches (user_id, flag, method, legacy, projection,"
                         " observed_at) VALUES ($1, $2, 'GetCurrentRun', '{}', '{}', $3)",
                         user, flag, hour)
    try:
        res = await admin_stub.GetShadowStats(apb.GetShadowStatsRequest(flag=flag), timeout=10)
        assert {(s.method, s.result): s.count for s in res.stats} == {
            ("GetCurrentRun", "match"): 990, ("GetCurrentRun", "mismatch"): 3,
            ("ListRuns", "match"): 40, ("ListRuns", "dropped"): 2}
        assert res.stored_mismatches == 1
        wide = await admin_stub.GetShadowStats(
            apb.GetShadowStatsRequest(flag=flag, window_hours=48), timeout=10)
        assert sum(s.count for s in wide.stats if s.result == "mismatch") == 503
        other = await admin_stub.GetShadowStats(apb.GetShadowStatsRequest(flag=RUNS_V2),
                                                timeout=10)
        assert all(s.count < 500 for s in other.stats)
    finally:
        await db.execute("DELETE FROM shadow_comparisons WHERE flag = $1", flag)
        await db.execute("DELETE FROM shadow_mismatches WHERE flag = $1", flag)
    for bad in (apb.GetShadowStatsRequest(), apb.GetShadowStatsRequest(flag="Not A Flag"),
                apb.GetShadowStatsRequest(flag=RUNS_V2, window_hours=-1)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_stub.GetShadowStats(bad, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
