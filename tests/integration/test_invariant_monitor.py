"""The invariant monitor (service/invariant_monitor.py) on a real PostgreSQL.

Each test has a database of its own (every pass reads everyone), where damage is
committed on purpose. Passes are triggered directly (`run_pass`, `tick`, `refresh`) with
an injected clock: nothing waits on the loop's timer.

Covered: an incremental pass checks only the users touched since the last pass (plus the
users with open violations) and finds damage made by a write; damage made outside the
service stays invisible to incremental passes and is found by the full pass, which the
schedule runs every full interval; every write kind (mark, unmark, backfill, rebuild)
touches its user; an event id taken before a pass and committed after it is still checked
(the grace); two monitors on one database run one pass at a time and report the same
health, over gRPC too; a stale or failed result is UNKNOWN.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from potato_runs.app import INVARIANTS_HEALTH, Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.service.invariant_monitor import (
    Health,
    InvariantMonitor,
    InvariantStatus,
    Scope,
)
from potato_runs.storage.admin_repo import AdminRepository
from potato_runs.storage.invariant_repo import LOCK_KEYS, InvariantChecksRepository
from potato_runs.storage.migrate import ensure_database, migrate
from potato_runs.storage.pool import create_pool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import DEFAULT_NOW, app_dsn

D = dt.date.fromisoformat
NOW = DEFAULT_NOW
INTERVAL = 300.0
FULL_INTERVAL = 6 * 3600.0
DAYS = [D("2026-06-01") + dt.timedelta(days=i) for i in range(5)]   # one run: 06-01..06-05


@dataclass
class Db:
    superuser: asyncpg.Connection
    superuser_dsn: str
    pool: asyncpg.Pool
    dsn: str
    """potato_app's DSN (what a server uses)."""
    clock: FixedClock = field(default_factory=lambda: FixedClock(NOW))
    pools: list[asyncpg.Pool] = field(default_factory=list)

    async def another_pool(self) -> asyncpg.Pool:
        """A second replica's admin pool."""
        pool = await create_pool(self.dsn, min_size=0, max_size=2)
        self.pools.append(pool)
        return pool

    def monitor(self, pool: asyncpg.Pool | None = None, replica: str = "a",
                grace: dt.timedelta = dt.timedelta(0)) -> tuple[InvariantMonitor,
                                                                list[InvariantStatus]]:
        reports: list[InvariantStatus] = []
        return InvariantMonitor(InvariantChecksRepository(pool or self.pool), self.clock,
                                interval=INTERVAL, full_interval=FULL_INTERVAL,
                                report=reports.append, replica=replica,
                                grace=grace), reports


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Db]:
    name = f"potato_scratch_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(pg_dsn)
    await ensure_database(urlunsplit(parts._replace(path="/postgres")), name)
    dsn = urlunsplit(parts._replace(path=f"/{name}"))
    superuser = await asyncpg.connect(dsn)
    await migrate(superuser)
    pool = await create_pool(app_dsn(dsn), min_size=0, max_size=2)
    state = Db(superuser, dsn, pool, app_dsn(dsn))
    try:
        yield state
    finally:
        for p in (pool, *state.pools):
            await p.close()
        await superuser.close()
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def seed(conn: asyncpg.Connection, n: int) -> list[uuid.UUID]:
    """n users with one run each, through the real write path (one backfill each)."""
    users = sorted(uuid.uuid4() for _ in range(n))
    for user in users:
        await conn.fetchval("SELECT potato_backfill_days($1, $2::date[], 'UTC', 'test', $3, "
                            "NULL)", user, DAYS, NOW)
    return users


async def damage_silently(conn: asyncpg.Connection, user: uuid.UUID) -> None:
    """Damage from outside the service (no run event): a check-in inside a run is gone."""
    await conn.execute("DELETE FROM daily_checkins WHERE user_id = $1 "
                       "AND checkin_date = '2026-06-03'", user)


async def damage_by_a_write(conn: asyncpg.Connection, user: uuid.UUID) -> None:
    """What a broken write would commit: the fact is gone but the run was not split,
    with the write's run event in the same transaction."""
    async with conn.transaction():
        await conn.execute("SET CONSTRAINTS runs_no_overlap, runs_no_touch DEFERRED")
        await damage_silently(conn, user)
        await conn.execute("INSERT INTO run_events (user_id, kind, cause, occurred_at) "
                           "VALUES ($1, 'run_shrunk', 'unmark', $2)", user, NOW)


async def mark(conn: asyncpg.Connection, user: uuid.UUID, day: str) -> None:
    await conn.fetchval("SELECT potato_mark_day($1, $2, NULL, 'UTC', 'test', $3, NULL)",
                        user, D(day), NOW)


async def pass_rows(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM invariant_check_runs"))


# --------------------------------------------------------------------------- incremental
async def test_an_incremental_pass_checks_only_touched_users_and_finds_their_damage(
        db: Db) -> None:
    users = await seed(db.superuser, 30)
    monitor, reports = db.monitor()
    first = await monitor.run_pass()
    assert first is not None and first.record.scope == "full"
    assert first.record.users_checked == 30 and first.record.total == 0 and first.users is None
    assert (await monitor.refresh()).health is Health.SERVING

    broken, written, hidden = users[0], users[1], users[2]
    await damage_by_a_write(db.superuser, broken)
    await mark(db.superuser, written, "2026-06-20")   # a healthy write
    await damage_silently(db.superuser, hidden)        # no event: not touched

    db.clock.advance(dt.timedelta(seconds=INTERVAL))
    second = await monitor.run_pass()
    assert second is not None and second.record.scope == "incremental"
    assert second.record.after_event_id == first.record.high_event_id
    assert set(second.users or ()) == {broken, written}   # the 28 others were not scanned
    assert second.record.users_checked == 2
    assert second.record.violations == {"RUN_DAY_WITHOUT_CHECKIN": 1}
    status = await monitor.refresh()
    assert status.health is Health.NOT_SERVING and reports[-1] == status
    found = await db.superuser.fetch("SELECT user_id, code FROM invariant_violations")
    assert [(r["user_id"], r["code"]) for r in found] == [(broken, "RUN_DAY_WITHOUT_CHECKIN")]

    # Nothing written since: the next pass re-checks only the user with an open violation.
    db.clock.advance(dt.timedelta(seconds=INTERVAL))
    third = await monitor.run_pass()
    assert third is not None and third.users == (broken,)
    assert third.record.violations == {"RUN_DAY_WITHOUT_CHECKIN": 1}

    # Repaired by a rebuild (which writes events): the next pass sees it gone.
    await AdminRepository(db.pool).rebuild_user(broken, None, None, False, NOW, None)
    db.clock.advance(dt.timedelta(seconds=INTERVAL))
    fourth = await monitor.run_pass()
    assert fourth is not None and fourth.record.scope == "incremental"
    assert fourth.users == (broken,) and fourth.record.total == 0
    assert (await monitor.refresh()).health is Health.SERVING   # `hidden` still unseen


async def test_damage_outside_the_service_is_found_by_the_scheduled_full_pass(db: Db) -> None:
    users = await seed(db.superuser, 10)
    monitor, _ = db.monitor()
    assert (await monitor.tick()).health is Health.SERVING   # the first pass is full
    hidden = users[5]
    await damage_silently(db.superuser, hidden)

    db.clock.advance(dt.timedelta(seconds=INTERVAL))
    status = await monitor.tick()
    assert status.record is not None and status.record.scope == "incremental"
    assert status.record.users_checked == 0 and status.health is Health.SERVING

    db.clock.advance(dt.timedelta(seconds=FULL_INTERVAL))   # the full pass is due
    status = await monitor.tick()
    assert status.record is not None and status.record.scope == "full"
    assert status.record.users_checked == 10
    assert status.violations == {"RUN_DAY_WITHOUT_CHECKIN": 1}
    assert status.health is Health.NOT_SERVING

    # From then on incremental passes keep the violation open until it is repaired.
    db.clock.advance(dt.timedelta(seconds=INTERVAL))
    status = await monitor.tick()
    assert status.record is not None and status.record.scope == "incremental"
    assert status.health is Health.NOT_SERVING and status.record.users_checked == 1


async def test_every_write_kind_touches_its_user(db: Db) -> None:
    users = await seed(db.superuser, 6)
    monitor, _ = db.monitor()
    await monitor.run_pass()
    marked, unmarked, backfilled, rebuilt, replayed, _idle = users
    await mark(db.superuser, marked, "2026-06-06")
    await db.superuser.fetchval("SELECT potato_unmark_day($1, '2026-06-03', $2, NULL)",
                                unmarked, NOW)
    await db.superuser.fetchval("SELECT potato_backfill_days($1, $2::date[], 'UTC', 'test', "
                                "$3, NULL)", backfilled, [D("2026-07-01")], NOW)
    await db.superuser.execute("DELETE FROM daily_checkins WHERE user_id = $1 "
                               "AND checkin_date = '2026-06-05'", rebuilt)
    await AdminRepository(db.pool).rebuild_user(rebuilt, None, None, False, NOW, None)
    await mark(db.superuser, replayed, "2026-06-02")   # already marked: no change, no event
    db.clock.advance(dt.timedelta(seconds=INTERVAL))
    result = await monitor.run_pass()
    assert result is not None and result.record.scope == "incremental"
    assert set(result.users or ()) == {marked, unmarked, backfilled, rebuilt}
    assert result.record.total == 0


async def test_an_event_committed_after_a_pass_that_saw_later_ids_is_still_checked(
        db: Db) -> None:
    """Event ids are taken at insert and become visible at commit, out of order. With the
    grace (longer than any write transaction) a pass looks after the high mark of a pass
    that finished `grace` before the previous one began: late commits are not skipped."""
    users = await seed(db.superuser, 4)
    late, early = users[0], users[1]
    monitor, _ = db.monitor(grace=dt.timedelta(minutes=2))
    step = dt.timedelta(seconds=INTERVAL)
    assert (await monitor.run_pass()) is not None          # full, t0
    db.clock.advance(step)
    assert (await monitor.run_pass()) is not None          # no pass 2 min before: full again
    slow = await asyncpg.connect(db.superuser_dsn)
    try:
        tx = slow.transaction()
        await tx.start()
        await damage_by_a_write(slow, late)                 # its event id is taken now...
        await mark(db.superuser, early, "2026-06-20")       # ...a later id commits first
        db.clock.advance(step)
        third = await monitor.run_pass()
        assert third is not None and third.record.scope == "incremental"
        assert early in (third.users or ()) and late not in (third.users or ())
        await tx.commit()                                   # ...and commits after the pass
    finally:
        await slow.close()
    late_id = await db.superuser.fetchval(
        "SELECT max(event_id) FROM run_events WHERE user_id = $1", late)
    assert late_id < third.record.high_event_id   # below the high mark, unseen by the pass
    db.clock.advance(step)
    fourth = await monitor.run_pass()
    assert fourth is not None and fourth.record.scope == "incremental"
    assert late in (fourth.users or ())
    assert fourth.record.violations == {"RUN_DAY_WITHOUT_CHECKIN": 1}


# --------------------------------------------------------------------------- single runner
async def test_one_pass_at_a_time_and_every_monitor_reports_the_stored_result(db: Db) -> None:
    users = await seed(db.superuser, 8)
    a, reports_a = db.monitor(replica="a")
    b, reports_b = db.monitor(await db.another_pool(), replica="b")

    # Another replica is in the middle of a pass: neither runs one.
    await db.superuser.execute("SELECT pg_advisory_lock($1, $2)", *LOCK_KEYS)
    assert await a.run_pass() is None and await b.run_pass() is None
    assert (await b.tick()).health is Health.UNKNOWN   # nothing stored yet
    await db.superuser.execute("SELECT pg_advisory_unlock($1, $2)", *LOCK_KEYS)
    assert await pass_rows(db.superuser) == 0

    # Both due at once: one runs the pass; the other finds the lock taken, or the pass
    # stored and not due, and reports what is stored (its next round reads the result).
    await asyncio.gather(a.tick(), b.tick())
    assert await pass_rows(db.superuser) == 1
    sa, sb = await a.refresh(), await b.refresh()
    assert sa.health is sb.health is Health.SERVING
    assert sa.record == sb.record and sa.record is not None

    await damage_by_a_write(db.superuser, users[3])
    db.clock.advance(dt.timedelta(seconds=INTERVAL))
    sb = await b.tick()   # b runs this one
    sa = await a.tick()   # a: not due any more, reads b's result
    assert await pass_rows(db.superuser) == 2
    assert sb.record is not None and sb.record.replica == "b"
    assert sa.record == sb.record and sa.health is sb.health is Health.NOT_SERVING
    assert reports_a[-1] == sa and reports_b[-1] == sb


async def test_a_stale_or_failed_result_is_unknown(db: Db) -> None:
    await seed(db.superuser, 3)
    a, _ = db.monitor(replica="a")
    b, _ = db.monitor(await db.another_pool(), replica="b")
    assert (await a.tick()).health is Health.SERVING
    db.clock.advance(dt.timedelta(seconds=3 * INTERVAL))
    assert (await b.refresh()).health is Health.SERVING     # exactly at the limit
    db.clock.advance(dt.timedelta(seconds=1))
    stale = await b.refresh()
    assert stale.health is Health.UNKNOWN and "finished at" in stale.reason
    # Passes resume (here in b): known again.
    assert (await b.tick()).health is Health.SERVING

    # A pass that fails is stored as failed: every replica says UNKNOWN.
    await db.superuser.execute("REVOKE SELECT ON daily_checkins FROM potato_app")
    try:
        db.clock.advance(dt.timedelta(seconds=INTERVAL))
        failed = await a.tick()
        assert failed.health is Health.UNKNOWN and "failed" in failed.reason
        assert (await b.refresh()).health is Health.UNKNOWN
    finally:
        await db.superuser.execute("GRANT SELECT ON daily_checkins TO potato_app")
    db.clock.advance(dt.timedelta(seconds=INTERVAL))
    assert (await b.tick()).health is Health.SERVING


async def test_two_servers_on_one_database_report_the_same_invariants_health(db: Db) -> None:
    users = await seed(db.superuser, 5)
    apps = []
    try:
        for _ in range(2):
            pool = await db.another_pool()
            apps.append(await build_app(
                Settings(port=0, dsn=db.dsn, invariant_check_interval=3600,
                         health_probe_interval=0, totals_reconcile_at=None,
                         admin_token="test-admin-token-0123456789"),
                clock=db.clock, database=Database(dsn=db.dsn, pool=pool)))

        async def health_of(port: int) -> int:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                res = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=INVARIANTS_HEALTH), timeout=10)
                return int(res.status)

        # Both loops ran their first round at start: one pass, both SERVING.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while any(app.monitor.last_status is None for app in apps):
            assert loop.time() < deadline, "the monitors never reported"
            await asyncio.sleep(0.05)
        assert await pass_rows(db.superuser) == 1
        for app in apps:   # what the next round does (the one that found the lock
            await app.monitor.refresh()   # taken may have read before the result landed)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert [await health_of(app.port) for app in apps] == [serving, serving]

        await damage_by_a_write(db.superuser, users[0])
        db.clock.advance(dt.timedelta(seconds=3600))
        ran = await apps[0].monitor.run_pass(Scope.AUTO, only_if_due=True)
        assert ran is not None and ran.record.total == 1
        await apps[0].monitor.refresh()
        await apps[1].monitor.refresh()   # what its next round does
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert [await health_of(app.port) for app in apps] == [not_serving, not_serving]
    finally:
        for app in apps:
            await app.stop(0)
