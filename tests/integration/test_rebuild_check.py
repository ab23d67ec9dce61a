"""Rebuild and invariant checker: corruptions, repairs, the AdminService and the CLI.

Every corruption here is committed only in a scratch database (created next to
the shared test database with ensure_database + migrate, and dropped at the
end), never in the shared one. Corruptions that the constraints forbid are made
inside a transaction that drops the constraint and is rolled back; each such
test then proves the constraint is back.

Covered: the checker's exact codes for each kind of damage; that the CHECK and
exclusion constraints refuse what would otherwise be DAY_COUNT_MISMATCH,
RUNS_NOT_MERGED, RUNS_OVERLAP, MULTIPLE_ACTIVE_RUNS, END_BEFORE_START (and that
the checker still reports them if a constraint were missing); rebuild
--dry-run reports the diff and writes nothing; rebuild repairs and writes
run_events with cause 'rebuild'; partial rebuilds widen to whole runs and never
cut one; rebuild is deterministic in the facts; rebuild_all finds exactly the
drifted users; the AdminService over gRPC (including INVALID_ARGUMENT); and the
`potato-runs check` / `rebuild` CLI as subprocesses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from oracle import expected_strings as islands

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2.admin_service_pb2_grpc import AdminServiceStub
from potato_runs.clock import FixedClock
from potato_runs.service.admin_service import AdminService
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.admin_repo import (
    INVARIANT_QUERIES,
    AdminRepository,
    Violation,
    invariant_sql,
)
from potato_runs.storage.migrate import ensure_database, migrate
from potato_runs.storage.pool import create_pool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import (
    DEFAULT_NOW,
    BearerInterceptor,
    OneConnectionPool,
    ServerThread,
    app_dsn,
    rich_status,
)

from .helpers import checkin_dates as facts_of
from .helpers import stored_rows as runs_full
from .helpers import stored_runs as runs_of

T = TypeVar("T")
D = dt.date.fromisoformat
ONE_DAY = dt.timedelta(days=1)
NOW = DEFAULT_NOW


# --------------------------------------------------------------------------- scratch databases
def admin_dsn(dsn: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/postgres"))


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_scratch(base_dsn: str) -> str:
    name = f"potato_scratch_{uuid.uuid4().hex[:12]}"
    await ensure_database(admin_dsn(base_dsn), name)
    dsn = with_database(base_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


async def drop_scratch(dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    assert name.startswith("potato_scratch_")
    conn = await asyncpg.connect(admin_dsn(dsn))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a fresh thread, so sync fixtures never touch the test's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def scratch_dsn(pg_dsn: str) -> Iterator[str]:
    dsn = run_in_thread(create_scratch(pg_dsn))
    try:
        yield dsn
    finally:
        run_in_thread(drop_scratch(dsn))


@pytest.fixture(scope="module")
def scratch_server(scratch_dsn: str) -> Iterator[ServerThread]:
    srv = ServerThread(scratch_dsn, FixedClock(DEFAULT_NOW)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def sdb(scratch_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(scratch_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def admin(scratch_server: ServerThread) -> AdminService:
    assert scratch_server.app is not None
    return scratch_server.app.admin


async def on_server(server: ServerThread, coro: Coroutine[Any, Any, T]) -> T:
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, server.loop))


@pytest.fixture
async def admin_stub(scratch_server: ServerThread) -> AsyncIterator[AdminServiceStub]:
    async with grpc.aio.insecure_channel(scratch_server.target,
                                         interceptors=[BearerInterceptor()]) as ch:
        yield AdminServiceStub(ch)


@pytest.fixture
async def fresh(pg_dsn: str) -> AsyncIterator[tuple[str, asyncpg.Connection, AdminService]]:
    """A database of its own, for checks of everyone: (dsn, connection, AdminService)."""
    dsn = await create_scratch(pg_dsn)
    pool = await create_pool(app_dsn(dsn), min_size=1, max_size=4)   # as the server would
    conn = await asyncpg.connect(dsn)
    try:
        yield dsn, conn, AdminService(AdminRepository(pool), FixedClock(NOW), Telemetry())
    finally:
        await conn.close()
        await pool.close()
        await drop_scratch(dsn)


# --------------------------------------------------------------------------- data helpers
async def seed(conn: asyncpg.Connection, user: uuid.UUID, days: Iterable[str]) -> None:
    """Writes check-ins through the real write path (one backfill)."""
    await conn.fetchval("SELECT potato_backfill_days($1, $2::date[], 'UTC', 'test', $3, NULL)",
                        user, [D(d) for d in days], NOW)


def span(a: str, b: str) -> list[str]:
    lo, hi = D(a), D(b)
    return [(lo + ONE_DAY * i).isoformat() for i in range((hi - lo).days + 1)]


async def events_of(conn: asyncpg.Connection, user: uuid.UUID,
                    cause: str | None = None) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT kind, cause, before, after, request_id FROM run_events "
                            "WHERE user_id = $1 AND ($2::text IS NULL OR cause = $2) "
                            "ORDER BY event_id", user, cause)


def codes(violations: Sequence[Violation]) -> Counter[str]:
    return Counter(v.code for v in violations)


async def constraints_present(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT conname FROM pg_constraint WHERE conrelid IN "
                            "('runs'::regclass, 'daily_checkins'::regclass) "
                            "UNION SELECT indexname FROM pg_indexes WHERE tablename = 'runs'")
    return {r[0] for r in rows}


REQUIRED = {"runs_day_count_matches", "runs_end_not_before_start", "runs_no_overlap",
            "runs_no_touch", "runs_one_active_per_user", "checkin_date_not_before_launch"}

BASE = ["2026-06-01", "2026-06-02", "2026-06-03", "2026-06-10", "2026-06-11", "2026-06-12"]


# --------------------------------------------------------------------------- corruptions
# name -> (SQL statements with $1 = user, expected violation codes with counts)
CORRUPTIONS: dict[str, tuple[list[str], dict[str, int]]] = {
    "delete an older run": (
        ["DELETE FROM runs WHERE user_id = $1 AND start_date = '2026-06-01'"],
        {"CHECKIN_NOT_COVERED": 3}),
    "delete the active run": (
        ["DELETE FROM runs WHERE user_id = $1 AND active"],
        {"CHECKIN_NOT_COVERED": 3, "ACTIVE_RUN_NOT_LATEST": 1}),
    "shrink an older run": (
        ["UPDATE runs SET end_date = '2026-06-02', day_count = 2 "
         "WHERE user_id = $1 AND start_date = '2026-06-01'"],
        {"CHECKIN_NOT_COVERED": 1}),
    "shrink the active run at its end": (
        ["UPDATE runs SET end_date = '2026-06-11', day_count = 2 WHERE user_id = $1 AND active"],
        {"CHECKIN_NOT_COVERED": 1, "ACTIVE_END_NOT_LATEST_CHECKIN": 1}),
    "flip the active flags": (
        ["UPDATE runs SET active = false WHERE user_id = $1 AND active",
         "UPDATE runs SET active = true WHERE user_id = $1 AND start_date = '2026-06-01'"],
        {"ACTIVE_RUN_NOT_LATEST": 1, "ACTIVE_END_NOT_LATEST_CHECKIN": 1}),
    "check-ins without runs, between runs": (
        ["INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
         "VALUES ($1, '2026-06-06', 'UTC'), ($1, '2026-06-07', 'UTC')"],
        {"CHECKIN_NOT_COVERED": 2}),
    "a check-in without a run, after the active run": (
        ["INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
         "VALUES ($1, '2026-06-20', 'UTC')"],
        {"CHECKIN_NOT_COVERED": 1, "ACTIVE_END_NOT_LATEST_CHECKIN": 1}),
    "delete a check-in inside a run": (
        ["DELETE FROM daily_checkins WHERE user_id = $1 AND checkin_date = '2026-06-11'"],
        {"RUN_DAY_WITHOUT_CHECKIN": 1}),
    "delete the latest check-in": (
        ["DELETE FROM daily_checkins WHERE user_id = $1 AND checkin_date = '2026-06-12'"],
        {"RUN_DAY_WITHOUT_CHECKIN": 1, "ACTIVE_END_NOT_LATEST_CHECKIN": 1}),
    "a run with no check-ins": (
        ["INSERT INTO runs (user_id, start_date, end_date, day_count) "
         "VALUES ($1, '2026-06-06', '2026-06-07', 2)"],
        {"RUN_DAY_WITHOUT_CHECKIN": 2}),
}


async def corrupt(conn: asyncpg.Connection, user: uuid.UUID, statements: Sequence[str]) -> None:
    async with conn.transaction():   # several statements land in one commit
        for sql in statements:
            await conn.execute(sql, user)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
async def test_checker_reports_the_exact_codes_and_rebuild_repairs(
        sdb: asyncpg.Connection, admin: AdminService, scratch_server: ServerThread,
        name: str) -> None:
    user = uuid.uuid4()
    await seed(sdb, user, BASE)
    assert (await on_server(scratch_server, admin.check(user)))[0] == []
    statements, expected = CORRUPTIONS[name]
    await corrupt(sdb, user, statements)

    violations, truncated = await on_server(scratch_server, admin.check(user))
    assert codes(violations) == Counter(expected), [(v.code, v.detail) for v in violations]
    assert not truncated and all(v.user_id == user for v in violations)

    # Dry run: the diff is reported, and nothing at all is written.
    runs_before = await runs_full(sdb, user)
    events_before = len(await events_of(sdb, user))
    dry = await on_server(scratch_server, admin.rebuild_user(user, None, None, True))
    assert not dry.diff.empty
    assert await runs_full(sdb, user) == runs_before
    assert len(await events_of(sdb, user)) == events_before

    # The rebuild repairs, and says what it did in run_events (cause 'rebuild').
    plan = await on_server(scratch_server, admin.rebuild_user(user, None, None, False))
    assert [r.key() for r in plan.diff.added] == [r.key() for r in dry.diff.added]
    assert [r.key() for r in plan.diff.removed] == [r.key() for r in dry.diff.removed]
    assert await runs_of(sdb, user) == islands(await facts_of(sdb, user))
    assert (await on_server(scratch_server, admin.check(user)))[0] == []
    rebuilt = await events_of(sdb, user, "rebuild")
    d = plan.diff
    assert Counter(e["kind"] for e in rebuilt) == Counter(
        {"run_created": len(d.added), "run_deleted": len(d.removed),
         "run_rebuilt": len(d.changed)}) - Counter()
    assert len(rebuilt) == len(d.added) + len(d.removed) + len(d.changed) > 0

    # A second rebuild finds nothing and writes nothing.
    again = await on_server(scratch_server, admin.rebuild_user(user, None, None, False))
    assert again.diff.empty
    assert len(await events_of(sdb, user, "rebuild")) == len(rebuilt)


# code -> (how to get past the guard inside the rolled-back transaction: DROP it, or
# DEFER it, the SQL the guard refuses, its SQLSTATE, the codes the checker reports)
GUARDED_CORRUPTIONS: dict[str, tuple[list[str], str, str, set[str]]] = {
    "DAY_COUNT_MISMATCH": (
        ["ALTER TABLE runs DROP CONSTRAINT runs_day_count_matches"],
        "UPDATE runs SET day_count = day_count + 1 WHERE user_id = $1 AND active",
        "23514", {"DAY_COUNT_MISMATCH"}),
    "RUNS_NOT_MERGED": (
        ["SET CONSTRAINTS runs_no_touch DEFERRED"],
        "INSERT INTO runs (user_id, start_date, end_date, day_count) "
        "VALUES ($1, '2026-06-04', '2026-06-05', 2)",
        "23P01", {"RUNS_NOT_MERGED", "RUN_DAY_WITHOUT_CHECKIN"}),
    "RUNS_OVERLAP": (
        ["SET CONSTRAINTS runs_no_overlap DEFERRED"],
        "INSERT INTO runs (user_id, start_date, end_date, day_count) "
        "VALUES ($1, '2026-06-02', '2026-06-03', 2)",
        "23P01", {"RUNS_OVERLAP"}),
    "MULTIPLE_ACTIVE_RUNS": (
        ["DROP INDEX runs_one_active_per_user"],   # not deferrable: a unique index
        "UPDATE runs SET active = true WHERE user_id = $1 AND start_date = '2026-06-01'",
        "23505", {"MULTIPLE_ACTIVE_RUNS", "ACTIVE_END_NOT_LATEST_CHECKIN"}),
    "END_BEFORE_START": (
        # daterange() itself refuses lower > upper, so the exclusion constraints go too.
        ["ALTER TABLE runs DROP CONSTRAINT runs_end_not_before_start",
         "ALTER TABLE runs DROP CONSTRAINT runs_no_overlap",
         "ALTER TABLE runs DROP CONSTRAINT runs_no_touch"],
        "UPDATE runs SET start_date = '2026-06-03', end_date = '2026-06-01', day_count = -1 "
        "WHERE user_id = $1 AND start_date = '2026-06-01'",
        "23514", {"END_BEFORE_START", "CHECKIN_NOT_COVERED"}),
}


@pytest.mark.parametrize("code", sorted(GUARDED_CORRUPTIONS))
async def test_constraints_refuse_what_the_checker_would_report(
        sdb: asyncpg.Connection, code: str) -> None:
    bypass, sql, sqlstate, expected = GUARDED_CORRUPTIONS[code]
    user = uuid.uuid4()
    await seed(sdb, user, BASE)
    before = await runs_full(sdb, user)

    # With the constraints in place the write is refused: the violation cannot be produced.
    with pytest.raises(asyncpg.PostgresError) as caught:
        await sdb.execute(sql, user)
    assert caught.value.sqlstate == sqlstate
    assert await runs_full(sdb, user) == before

    # Defence in depth: were a guard missing (or deferred), the checker would still
    # report the damage. Scratch database; the DDL is rolled back with everything else.
    tx = sdb.transaction()
    await tx.start()
    try:
        for stmt in bypass:
            await sdb.execute(stmt)
        await sdb.execute(sql, user)
        repo = AdminRepository(OneConnectionPool(sdb))
        violations, _ = await repo.check(user, 100)
        assert set(codes(violations)) == expected, [(v.code, v.detail) for v in violations]
        if code in ("RUNS_NOT_MERGED", "RUNS_OVERLAP"):
            # ...and a rebuild in the same transaction repairs it, before the deferred
            # constraint is ever checked.
            await repo.rebuild_user(user, None, None, False, NOW, None)
            assert (await repo.check(user, 100))[0] == []
            assert await runs_of(sdb, user) == islands(await facts_of(sdb, user))
    finally:
        await tx.rollback()
    assert REQUIRED <= await constraints_present(sdb)
    assert await runs_full(sdb, user) == before


async def test_deferred_exclusion_is_seen_by_the_checker_and_refused_at_commit(
        sdb: asyncpg.Connection) -> None:
    user = uuid.uuid4()
    await seed(sdb, user, BASE)
    tx = sdb.transaction()
    await tx.start()
    await sdb.execute("SET CONSTRAINTS runs_no_overlap, runs_no_touch DEFERRED")
    await sdb.execute("INSERT INTO runs (user_id, start_date, end_date, day_count) "
                      "VALUES ($1, '2026-06-03', '2026-06-04', 2)", user)
    violations, _ = await AdminRepository(OneConnectionPool(sdb)).check(user, 100)
    assert {"RUNS_OVERLAP", "RUN_DAY_WITHOUT_CHECKIN"} <= set(codes(violations))
    with pytest.raises(asyncpg.PostgresError) as caught:
        await tx.commit()
    assert caught.value.sqlstate == "23P01"
    assert await runs_of(sdb, user) == islands(await facts_of(sdb, user))


# --------------------------------------------------------------------------- rebuild behaviour
async def test_rebuild_of_a_healthy_user_changes_nothing(
        sdb: asyncpg.Connection, admin: AdminService, scratch_server: ServerThread) -> None:
    user = uuid.uuid4()
    await seed(sdb, user, BASE)
    before, events = await runs_full(sdb, user), len(await events_of(sdb, user))
    for dry in (True, False):
        plan = await on_server(scratch_server, admin.rebuild_user(user, None, None, dry))
        assert plan.diff.empty and plan.window == (D("2026-06-01"), D("2026-06-12"))
    assert await runs_full(sdb, user) == before
    assert len(await events_of(sdb, user)) == events
    nobody = await on_server(scratch_server, admin.rebuild_user(uuid.uuid4(), None, None, False))
    assert nobody.diff.empty and nobody.window is None


async def test_partial_rebuild_widens_to_whole_runs(
        sdb: asyncpg.Connection, admin: AdminService, scratch_server: ServerThread) -> None:
    user = uuid.uuid4()
    await seed(sdb, user, span("2026-06-01", "2026-06-10") + span("2026-06-20", "2026-06-25"))
    later = await runs_full(sdb, user)
    later = [r for r in later if r[2] == D("2026-06-20")]
    # Damage: 06-01..10 became 06-01..04 + 06-06..10, with 06-05 uncovered.
    await corrupt(sdb, user, [
        "DELETE FROM runs WHERE user_id = $1 AND start_date = '2026-06-01'",
        "INSERT INTO runs (user_id, start_date, end_date, day_count) "
        "VALUES ($1, '2026-06-01', '2026-06-04', 4), ($1, '2026-06-06', '2026-06-10', 5)"])

    # A range inside one piece: widened to the piece, then to the whole island of facts.
    plan = await on_server(scratch_server, admin.rebuild_user(
        user, D("2026-06-07"), D("2026-06-08"), False))
    assert plan.window == (D("2026-06-01"), D("2026-06-10"))
    assert await runs_of(sdb, user) == [("2026-06-01", "2026-06-10", 10, False),
                                        ("2026-06-20", "2026-06-25", 6, True)]
    # The run outside the window was not touched at all (same row, same timestamps).
    assert [r for r in await runs_full(sdb, user) if r[2] == D("2026-06-20")] == later
    assert (await on_server(scratch_server, admin.check(user)))[0] == []

    # A range inside a healthy run: widened to that run, nothing to change.
    again = await on_server(scratch_server, admin.rebuild_user(
        user, D("2026-06-22"), D("2026-06-22"), True))
    assert again.window == (D("2026-06-20"), D("2026-06-25")) and again.diff.empty
    # A range with nothing in it.
    empty = await on_server(scratch_server, admin.rebuild_user(
        user, D("2026-06-14"), D("2026-06-16"), True))
    assert empty.diff.empty and empty.window is None


async def test_partial_rebuild_leaves_damage_outside_its_window(
        sdb: asyncpg.Connection, admin: AdminService, scratch_server: ServerThread) -> None:
    user = uuid.uuid4()
    await seed(sdb, user, [*BASE, "2026-06-20"])
    await corrupt(sdb, user, CORRUPTIONS["shrink an older run"][0])
    plan = await on_server(scratch_server, admin.rebuild_user(
        user, D("2026-06-11"), D("2026-06-20"), False))
    assert plan.diff.empty and plan.window == (D("2026-06-10"), D("2026-06-20"))
    assert codes((await on_server(scratch_server, admin.check(user)))[0]) == \
        Counter({"CHECKIN_NOT_COVERED": 1})
    full = await on_server(scratch_server, admin.rebuild_user(user, None, None, False))
    assert not full.diff.empty
    assert (await on_server(scratch_server, admin.check(user)))[0] == []


async def test_partial_rebuild_never_cuts_a_run(
        sdb: asyncpg.Connection, admin: AdminService, scratch_server: ServerThread) -> None:
    """For many random ranges over a damaged user, the window never ends inside (or
    next to) a stored run or an island of facts; then each applied rebuild leaves
    whole runs only."""
    rng = random.Random(20260611)
    print("\nnever-cuts seed: 20260611")
    days = sorted(rng.sample(span("2026-05-01", "2026-07-31"), 45))
    for round_ in range(6):
        user = uuid.uuid4()
        await seed(sdb, user, days)
        # Damage: drop some runs, shrink others, add facts without runs.
        await sdb.execute("DELETE FROM runs WHERE user_id = $1 AND start_date IN "
                          "(SELECT start_date FROM runs WHERE user_id = $1 AND NOT active "
                          "ORDER BY start_date LIMIT 2 OFFSET $2)", user, round_)
        await sdb.execute("INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
                          "SELECT $1, d::date, 'UTC' FROM generate_series($2::date, $3::date, "
                          "'1 day') d ON CONFLICT DO NOTHING", user,
                          D("2026-06-01") + ONE_DAY * round_, D("2026-06-04") + ONE_DAY * round_)
        stored = [(D(s), D(e)) for s, e, _, _ in await runs_of(sdb, user)]
        facts = [(D(s), D(e)) for s, e, _, _ in islands(await facts_of(sdb, user))]
        for _ in range(25):
            lo = D("2026-05-01") + ONE_DAY * rng.randrange(92)
            hi = lo + ONE_DAY * rng.randrange(20)
            plan = await on_server(scratch_server, admin.rebuild_user(user, lo, hi, True))
            if plan.window is None:
                continue
            wlo, whi = plan.window
            assert wlo <= lo and whi >= hi
            for s, e in stored + facts:
                inside = wlo <= s and e <= whi
                apart = e < wlo - ONE_DAY or s > whi + ONE_DAY
                assert inside or apart, f"[{lo}..{hi}] -> window {plan.window} cuts {s}..{e}"
        lo = D("2026-06-02") + ONE_DAY * round_
        await on_server(scratch_server, admin.rebuild_user(user, lo, lo, False))
        after = await runs_of(sdb, user)
        expected = islands(await facts_of(sdb, user))
        inside = [r for r in after if r in expected]
        assert any(s <= lo.isoformat() <= e for s, e, _, _ in inside), "window run not rebuilt"
        full = await on_server(scratch_server, admin.rebuild_user(user, None, None, False))
        assert await runs_of(sdb, user) == expected, full.diff


async def test_rebuild_is_deterministic_in_the_facts(
        sdb: asyncpg.Connection, admin: AdminService, scratch_server: ServerThread) -> None:
    rng = random.Random(7)
    days = sorted({*rng.sample(span("2026-01-01", "2026-03-31"), 50),
                   "2026-02-28", "2026-03-01", "2026-01-01"})
    users = [uuid.uuid4() for _ in range(5)]
    orders = [sorted(days), sorted(days, reverse=True), rng.sample(days, len(days)),
              rng.sample(days, len(days)), rng.sample(days, len(days))]
    # Through the write path, one mark at a time, in three different orders.
    for user, order in zip(users[:3], orders[:3], strict=True):
        for d in order:
            await sdb.fetchval("SELECT potato_mark_day($1, $2, NULL, 'UTC', 'test', $3, NULL)",
                               user, D(d), NOW)
    # As raw facts in other orders, with no runs, and with garbage runs.
    for user, order in zip(users[3:], orders[3:], strict=True):
        await sdb.execute("INSERT INTO users (user_id, time_zone) VALUES ($1, 'UTC')", user)
        for d in order:
            await sdb.execute("INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
                              "VALUES ($1, $2, 'UTC')", user, D(d))
    await sdb.execute("INSERT INTO runs (user_id, start_date, end_date, day_count, active) "
                      "VALUES ($1, '2026-01-05', '2026-02-20', 47, true), "
                      "($1, '2025-12-01', '2025-12-02', 2, false)", users[4])
    rows = []
    for user in users:
        await on_server(scratch_server, admin.rebuild_user(user, None, None, False))
        again = await on_server(scratch_server, admin.rebuild_user(user, None, None, False))
        assert again.diff.empty
        rows.append(await runs_of(sdb, user))
    assert all(r == rows[0] for r in rows)
    assert rows[0] == islands([D(d) for d in days])


async def test_rebuild_all_finds_exactly_the_drifted_users(
        fresh: tuple[str, asyncpg.Connection, AdminService]) -> None:
    _, conn, service = fresh
    clean = [uuid.uuid4() for _ in range(9)]
    drifted = {}
    for user in clean:
        await seed(conn, user, BASE)
    for name in ("delete an older run", "flip the active flags", "a run with no check-ins",
                 "delete the latest check-in", "check-ins without runs, between runs"):
        user = uuid.uuid4()
        await seed(conn, user, BASE)
        await corrupt(conn, user, CORRUPTIONS[name][0])
        drifted[user] = name
    snapshot = await conn.fetch("SELECT * FROM runs ORDER BY run_id")
    events = await conn.fetchval("SELECT count(*) FROM run_events")

    dry = await service.rebuild_all(batch=4, dry_run=True)
    assert set(dry.drifted) == set(drifted) and dry.users_drifted == len(drifted)
    assert dry.users_scanned == len(clean) + len(drifted) and dry.users_rebuilt == 0
    assert await conn.fetch("SELECT * FROM runs ORDER BY run_id") == snapshot
    assert await conn.fetchval("SELECT count(*) FROM run_events") == events

    done = await service.rebuild_all(batch=4)
    assert set(done.drifted) == set(drifted) and done.users_rebuilt == len(drifted)
    assert (await service.check(None))[0] == []
    assert (await service.rebuild_all(batch=3, dry_run=True)).drifted == []
    forced = await service.rebuild_all(batch=5, force=True, dry_run=True)
    assert forced.users_scanned == len(clean) + len(drifted) and forced.drifted == []
    for user in clean:   # clean users were never written to by the rebuild
        assert await events_of(conn, user, "rebuild") == []


async def test_rebuild_all_visits_the_nil_uuid_and_goes_on_past_a_busy_user(
        fresh: tuple[str, asyncpg.Connection, AdminService]) -> None:
    dsn, conn, service = fresh
    nil, busy, later = uuid.UUID(int=0), uuid.UUID(int=1), uuid.UUID(int=2)
    for user in (nil, busy, later):   # all three drifted: check-ins without runs
        await seed(conn, user, BASE)
        await corrupt(conn, user, CORRUPTIONS["check-ins without runs, between runs"][0])
    holder = await asyncpg.connect(dsn)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))", busy)
    try:
        report = await service.rebuild_all(batch=2)
    finally:
        await tx.rollback()
        await holder.close()
    # The busy user failed (its lock wait hit lock_timeout) and is reported; the
    # run went on, and the nil UUID, first in the order, was not skipped.
    assert [u for u, _ in report.failed] == [busy]
    assert "locked" in report.failed[0][1]
    assert set(report.drifted) == {nil, later} and report.users_rebuilt == 2
    assert [v.user_id for v in (await service.check(None))[0]] == [busy] * len(
        (await service.check(None))[0])
    assert (await service.rebuild_all(batch=2)).drifted == [busy]
    assert (await service.check(None))[0] == []


# --------------------------------------------------------------------------- AdminService gRPC
async def test_admin_grpc_rebuild_and_check(admin_stub: AdminServiceStub,
                                            sdb: asyncpg.Connection) -> None:
    user = uuid.uuid4()
    await seed(sdb, user, BASE)
    await corrupt(sdb, user, CORRUPTIONS["flip the active flags"][0]
                  + CORRUPTIONS["a run with no check-ins"][0])

    checked = await admin_stub.CheckInvariants(apb.CheckInvariantsRequest(user_id=str(user)),
                                               timeout=30)
    assert Counter(v.code for v in checked.violations) == Counter(
        {"ACTIVE_RUN_NOT_LATEST": 1, "ACTIVE_END_NOT_LATEST_CHECKIN": 1,
         "RUN_DAY_WITHOUT_CHECKIN": 2})
    assert {v.user_id for v in checked.violations} == {str(user)} and not checked.truncated
    cut = await admin_stub.CheckInvariants(apb.CheckInvariantsRequest(user_id=str(user), limit=1),
                                           timeout=30)
    assert len(cut.violations) == 1 and cut.truncated

    before = await runs_full(sdb, user)
    dry = await admin_stub.RebuildUserRuns(apb.RebuildUserRunsRequest(
        user_id=str(user), dry_run=True), timeout=30)
    assert dry.dry_run
    assert [(r.start_date, r.end_date) for r in dry.removed] == [("2026-06-06", "2026-06-07")]
    assert not dry.added
    assert sorted((c.before.start_date, c.before.active, c.after.active) for c in dry.changed) == [
        ("2026-06-01", True, False), ("2026-06-10", False, True)]
    assert (dry.rebuilt_from_date, dry.rebuilt_to_date) == ("2026-06-01", "2026-06-12")
    assert await runs_full(sdb, user) == before

    real = await admin_stub.RebuildUserRuns(apb.RebuildUserRunsRequest(user_id=str(user)),
                                            timeout=30, metadata=(("x-request-id", "op-42"),))
    assert not real.dry_run and len(real.removed) == 1 and len(real.changed) == 2
    assert await runs_of(sdb, user) == islands(await facts_of(sdb, user))
    rebuilt = await events_of(sdb, user, "rebuild")
    assert {e["request_id"] for e in rebuilt} == {"op-42"} and len(rebuilt) == 3
    ok = await admin_stub.CheckInvariants(apb.CheckInvariantsRequest(user_id=str(user)),
                                          timeout=30)
    assert list(ok.violations) == []

    partial = await admin_stub.RebuildUserRuns(apb.RebuildUserRunsRequest(
        user_id=str(user), from_date="2026-06-11", to_date="2026-06-11", dry_run=True), timeout=30)
    assert (partial.rebuilt_from_date, partial.rebuilt_to_date) == ("2026-06-10", "2026-06-12")
    assert not (partial.added or partial.removed or partial.changed)


BAD_ADMIN_CALLS = [
    ("RebuildUserRuns", apb.RebuildUserRunsRequest(), "user_id", "INVALID_USER_ID"),
    ("RebuildUserRuns", apb.RebuildUserRunsRequest(user_id="not-a-uuid"), "user_id",
     "INVALID_USER_ID"),
    ("RebuildUserRuns", apb.RebuildUserRunsRequest(user_id=str(uuid.uuid4()),
                                                   from_date="2026-13-01"), "from_date",
     "INVALID_DATE"),
    ("RebuildUserRuns", apb.RebuildUserRunsRequest(user_id=str(uuid.uuid4()),
                                                   to_date="20260601"), "to_date", "INVALID_DATE"),
    ("RebuildUserRuns", apb.RebuildUserRunsRequest(user_id=str(uuid.uuid4()),
                                                   from_date="2026-06-10", to_date="2026-06-01"),
     "to_date", "INVALID_RANGE"),
    # The ends of the calendar used to overflow while widening the range (INTERNAL).
    ("RebuildUserRuns", apb.RebuildUserRunsRequest(user_id=str(uuid.uuid4()),
                                                   from_date="0001-01-01"), "from_date",
     "INVALID_RANGE"),
    ("RebuildUserRuns", apb.RebuildUserRunsRequest(user_id=str(uuid.uuid4()),
                                                   to_date="9999-12-31"), "to_date", "INVALID_RANGE"),
    ("CheckInvariants", apb.CheckInvariantsRequest(user_id="nope"), "user_id", "INVALID_USER_ID"),
    ("CheckInvariants", apb.CheckInvariantsRequest(limit=-1), "limit", "INVALID_VALUE"),
]


@pytest.mark.parametrize(("method", "request_", "field", "reason"), BAD_ADMIN_CALLS,
                         ids=[f"{m}-{f}-{r}" for m, _, f, r in BAD_ADMIN_CALLS])
async def test_admin_grpc_rejects_bad_input(admin_stub: AdminServiceStub, method: str,
                                            request_: Any, field: str, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(admin_stub, method)(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(caught.value)
    assert info is not None and info.reason == reason
    assert bad is not None and [v.field for v in bad.field_violations] == [field]


# --------------------------------------------------------------------------- CLI
def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "GRPC_ENABLE_FORK_SUPPORT": "false"}
    env.pop("POTATO_DSN", None)
    return subprocess.run([sys.executable, "-m", "potato_runs.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


async def test_cli_check_and_rebuild(fresh: tuple[str, asyncpg.Connection, AdminService]) -> None:
    dsn, conn, _ = fresh
    good, bad = uuid.uuid4(), uuid.uuid4()
    await seed(conn, good, BASE)
    await seed(conn, bad, BASE)
    await corrupt(conn, bad, CORRUPTIONS["shrink the active run at its end"][0])

    out = await asyncio.to_thread(cli, "check", "--dsn", dsn, "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is False and not report["truncated"]
    assert Counter((v["code"], v["user_id"]) for v in report["violations"]) == Counter(
        {("CHECKIN_NOT_COVERED", str(bad)): 1, ("ACTIVE_END_NOT_LATEST_CHECKIN", str(bad)): 1})

    table = await asyncio.to_thread(cli, "check", "--user", str(bad), "--dsn", dsn)
    assert table.returncode == 1 and "CHECKIN_NOT_COVERED" in table.stdout
    fine = await asyncio.to_thread(cli, "check", "--user", str(good), "--dsn", dsn, "--json")
    assert fine.returncode == 0 and json.loads(fine.stdout)["ok"] is True

    before = await runs_full(conn, bad)
    dry = await asyncio.to_thread(cli, "rebuild", "--user", str(bad), "--dsn", dsn, "--dry-run",
                                  "--json")
    assert dry.returncode == 0, dry.stderr
    diff = json.loads(dry.stdout)
    assert diff["dry_run"] is True and diff["window"] == ["2026-06-01", "2026-06-12"]
    assert diff["changed"] == [{"before": ["2026-06-10", "2026-06-11", True],
                                "after": ["2026-06-10", "2026-06-12", True]}]
    assert diff["added"] == [] and diff["removed"] == []
    assert await runs_full(conn, bad) == before

    fixed = await asyncio.to_thread(cli, "rebuild", "--all", "--dsn", dsn, "--json")
    assert fixed.returncode == 0, fixed.stderr
    summary = json.loads(fixed.stdout)
    assert (summary["users_scanned"], summary["users_drifted"], summary["users_rebuilt"]) == (2, 1, 1)

    clean = await asyncio.to_thread(cli, "check", "--dsn", dsn, "--json")
    assert clean.returncode == 0, clean.stdout
    assert json.loads(clean.stdout) == {"ok": True, "truncated": False, "violations": []}

    refused = await asyncio.to_thread(cli, "rebuild", "--user", "not-a-uuid", "--dsn", dsn)
    assert refused.returncode == 2 and "UUID" in refused.stderr


def unfiltered_scans(plan: list[str]) -> list[str]:
    """Scan nodes on runs/daily_checkins whose own conditions do not name a user_id."""
    bad = []
    for i, line in enumerate(plan):
        if not re.search(r"Scan (using \S+ )?on (runs|daily_checkins)\b", line):
            continue
        depth = len(line) - len(line.lstrip())
        body = []
        for nxt in plan[i + 1:]:
            if len(nxt) - len(nxt.lstrip()) <= depth:
                break
            body.append(nxt)
        if not any(("Index Cond" in b or "Recheck Cond" in b) and "user_id = " in b
                   for b in body):
            bad.append(line.strip())
    return bad


@pytest.mark.parametrize("code", sorted(INVARIANT_QUERIES))
async def test_one_user_check_runs_on_the_user_id_indexes(db: asyncpg.Connection,
                                                          code: str) -> None:
    """With sequential scans priced out, every table scan of a one-user invariant query
    is an index scan bounded by user_id: a check of one user never reads everyone.
    (The same test on the everyone-queries finds unbounded scans: it can fail.)"""
    async with db.transaction():
        await db.execute("SET LOCAL enable_seqscan = off")
        one = [r[0] for r in await db.fetch("EXPLAIN " + invariant_sql(code, True),
                                            uuid.uuid4())]
        everyone = [r[0] for r in await db.fetch("EXPLAIN " + invariant_sql(code, False))]
    assert unfiltered_scans(one) == [], "\n".join(one)
    assert unfiltered_scans(everyone) != [], "\n".join(everyone)
