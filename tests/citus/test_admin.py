"""Set-based admin work on Citus (issue 10): the checker and the invariant monitor, the
rebuild (per user and by batch), the totals reconciliation, the population diff behind
`shadow diff`, the run-events retention purge, and the blue/green rebuild's refusal, all
through the real server on the coordinator of tests/citus/conftest.py. The main
set-based queries are shown pushed down: one task per shard (8) with the aggregation
inside the task, no Distributed Subplan pulling raw rows to the coordinator."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter

import asyncpg
import grpc
import pytest
from integration.helpers import mark, stored_runs

from citus.conftest import SHARDS, Cluster
from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2.admin_service_pb2_grpc import AdminServiceStub
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.clock import FixedClock
from potato_runs.deadline import Deadline
from potato_runs.storage.admin_repo import (
    BATCH_USERS_SQL,
    DRIFT_SQL,
    INVARIANT_QUERIES,
    POPULATION_DIFF_CITUS_SQL,
    AdminRepository,
    invariant_sql,
)
from potato_runs.storage.blue_green import CONFIRM
from potato_runs.storage.invariant_repo import InvariantChecksRepository
from potato_runs.storage.pool import create_pool
from potato_runs.storage.run_events_repo import PURGE_BATCH_SQL, RunEventsRepository
from potato_runs.storage.totals_repo import TOTALS_DRIFT_SQL
from support import ADMIN_METADATA, ServerThread

DAYS = ["2025-06-10", "2025-06-11", "2025-06-12"]


async def seeded(stub: RunsServiceStub, user: str) -> None:
    for day in DAYS:
        await mark(stub, user, day)


async def on_worker(cluster: Cluster, db: asyncpg.Connection, table: str, user: str,
                    sql: str) -> str:
    """Runs `sql` ({t}: the user's shard of `table`) directly on the worker holding it."""
    row = await db.fetchrow(
        """SELECT shard_name, nodeport FROM citus_shards
            WHERE table_name = $1::regclass
              AND shardid = get_shard_id_for_distribution_column($1, $2::uuid)""",
        table, uuid.UUID(user))
    assert row is not None and row["nodeport"] in cluster.worker_ports()
    dsn = cluster.dsn.replace(cluster.dsn.split("@")[1].split("/")[0],
                              f"127.0.0.1:{row['nodeport']}")
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.execute(sql.replace("{t}", row["shard_name"]), uuid.UUID(user)))
    finally:
        await conn.close()


async def plan(db: asyncpg.Connection, sql: str, *args: object) -> str:
    return "\n".join(r[0] for r in await db.fetch("EXPLAIN (VERBOSE) " + sql, *args))


def assert_pushed_down(text: str, *inside: str, every_shard: bool = True) -> None:
    """One task per shard (or per shard of the users named), no intermediate results,
    `inside` in the task's query."""
    assert (f"Task Count: {SHARDS}" if every_shard else "Task Count: ") in text, text
    assert "Distributed Subplan" not in text and "Repartition" not in text, text
    assert "intermediate_result" not in text, text
    tasks = [line for line in text.splitlines() if line.strip().startswith("Query: ")]
    assert tasks, text
    for part in inside:
        assert part in tasks[0], (part, tasks[0])


# ------------------------------------------------------------------ the checker
async def test_the_checker_and_the_monitor_find_damage_made_on_a_workers_shard(
        citus_cluster: Cluster, stub: RunsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, user_id: str) -> None:
    await seeded(stub, user_id)
    # Behind the coordinator's back: the middle check-in, deleted in the worker's shard.
    assert await on_worker(citus_cluster, db, "daily_checkins", user_id,
                           "DELETE FROM {t} WHERE user_id = $1 AND checkin_date = "
                           "'2025-06-11'") == "DELETE 1"
    one = await admin_stub.CheckInvariants(apb.CheckInvariantsRequest(user_id=user_id),
                                           timeout=60)
    assert [(v.code, v.detail) for v in one.violations] == [
        ("RUN_DAY_WITHOUT_CHECKIN", "run day 2025-06-11 has no check-in")]
    everyone = await admin_stub.CheckInvariants(apb.CheckInvariantsRequest(limit=1000),
                                                timeout=120)
    assert ("RUN_DAY_WITHOUT_CHECKIN", user_id) in {(v.code, v.user_id)
                                                    for v in everyone.violations}

    # The invariant monitor's full pass writes the violations into the distributed
    # invariant_violations (INSERT ... SELECT pushed down), then its incremental pass.
    pool = await create_pool(citus_cluster.app_dsn, max_size=2)
    try:
        repo = InvariantChecksRepository(pool)
        async with repo.exclusive() as session:
            assert session is not None
            counts = await session.check(None, dt.datetime.now(dt.UTC), Deadline.after(120))
            assert counts.get("RUN_DAY_WITHOUT_CHECKIN", 0) >= 1
            high, touched = await session.touched_users(0)
            assert high > 0 and uuid.UUID(user_id) in touched
            counts = await session.check([uuid.UUID(user_id)], dt.datetime.now(dt.UTC),
                                         Deadline.after(60))
            assert counts.get("RUN_DAY_WITHOUT_CHECKIN", 0) >= 1
            found = await db.fetch("SELECT code FROM invariant_violations WHERE user_id = $1",
                                   uuid.UUID(user_id))
            assert [r["code"] for r in found] == ["RUN_DAY_WITHOUT_CHECKIN"]

            # The per-user rebuild (delegated statements on the user's shard) repairs it.
            rebuilt = await admin_stub.RebuildUserRuns(
                apb.RebuildUserRunsRequest(user_id=user_id), timeout=60)
            assert len(rebuilt.changed) + len(rebuilt.added) >= 1
            assert await stored_runs(db, user_id) == [("2025-06-10", "2025-06-10", 1, False),
                                                      ("2025-06-12", "2025-06-12", 1, True)]
            await session.check([uuid.UUID(user_id)], dt.datetime.now(dt.UTC),
                                Deadline.after(60))
            assert await db.fetchval("SELECT count(*) FROM invariant_violations "
                                     "WHERE user_id = $1", uuid.UUID(user_id)) == 0
    finally:
        await pool.close()
    again = await admin_stub.CheckInvariants(apb.CheckInvariantsRequest(user_id=user_id),
                                             timeout=60)
    assert list(again.violations) == []


@pytest.mark.parametrize("code", list(INVARIANT_QUERIES))
async def test_every_invariant_query_runs_inside_the_shards(
        citus_cluster: Cluster, db: asyncpg.Connection, code: str) -> None:
    text = await plan(db, invariant_sql(code, False))
    assert_pushed_down(text)
    some = await plan(db, invariant_sql(code, False, some_users=True),
                      [uuid.uuid4(), uuid.uuid4()])
    assert_pushed_down(some, every_shard=False)


async def test_the_drift_and_totals_scans_aggregate_inside_the_shards(
        citus_cluster: Cluster, db: asyncpg.Connection) -> None:
    # Existing users and enough others that every shard holds some of them.
    users = sorted([r[0] for r in await db.fetch(BATCH_USERS_SQL, None, 1000)]
                   + [uuid.uuid4() for _ in range(256)])
    assert_pushed_down(await plan(db, DRIFT_SQL, users),
                       "row_number() OVER (PARTITION BY", "GROUP BY",
                       "FULL JOIN")
    assert_pushed_down(await plan(db, TOTALS_DRIFT_SQL, users),
                       "row_number() OVER (PARTITION BY", "GROUP BY", "UNION ALL")
    assert_pushed_down(await plan(db, invariant_sql("MULTIPLE_ACTIVE_RUNS", False)),
                       "GROUP BY user_id HAVING")


# ------------------------------------------------------------------ rebuild by batch
async def test_the_batch_rebuild_finds_and_repairs_a_drifted_user(
        citus_cluster: Cluster, stub: RunsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, user_id: str) -> None:
    await seeded(stub, user_id)
    good = await stored_runs(db, user_id)
    await db.execute("DELETE FROM runs WHERE user_id = $1", uuid.UUID(user_id))
    token, found, scanned = "", set(), 0
    while True:
        res = await admin_stub.RebuildRunsBatch(
            apb.RebuildRunsBatchRequest(page_size=50, page_token=token), timeout=120)
        scanned += res.users_scanned
        found |= {d.user_id for d in res.drifted_users}
        assert list(res.failed_users) == []
        token = res.next_page_token
        if not token:
            break
    assert user_id in found and scanned >= 1
    assert await stored_runs(db, user_id) == good


# ------------------------------------------------------------------ totals reconcile
async def test_totals_reconcile_repairs_drift_planted_on_the_shards(
        citus_cluster: Cluster, stub: RunsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, user_id: str) -> None:
    await seeded(stub, user_id)
    u = uuid.UUID(user_id)
    good = [tuple(r) for r in await db.fetch(
        "SELECT yyyymm, streak_days, total_days FROM run_totals WHERE user_id = $1", u)]
    assert good == [(202506, 3, 3)]
    await db.execute("UPDATE run_totals SET streak_days = 1 WHERE user_id = $1", u)   # wrong
    await db.execute("INSERT INTO run_totals VALUES ($1, 202501, 1, 1, now())", u)    # extra
    await db.execute("DELETE FROM user_totals WHERE user_id = $1", u)                 # missing

    async def sweep(dry_run: bool) -> dict[str, int]:
        token, drifted = "", {}
        while True:
            res = await admin_stub.ReconcileTotals(apb.ReconcileTotalsRequest(
                dry_run=dry_run, page_size=50, page_token=token), timeout=120)
            drifted.update({d.user_id: d.rows_drifted for d in res.drifted_users})
            assert list(res.failed_users) == []
            token = res.next_page_token
            if not token:
                return drifted

    assert (await sweep(True)).get(user_id) == 3
    assert (await sweep(False)).get(user_id) == 3
    assert user_id not in await sweep(True)
    assert [tuple(r) for r in await db.fetch(
        "SELECT yyyymm, streak_days, total_days FROM run_totals WHERE user_id = $1", u)] == good
    assert tuple(await db.fetchrow("SELECT total_days, run_count, longest_run_days "
                                   "FROM user_totals WHERE user_id = $1", u)) == (3, 1, 3)


# ------------------------------------------------------------------ shadow diff
async def test_the_population_diff_reports_a_planted_difference(
        citus_cluster: Cluster, stub: RunsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, user_id: str) -> None:
    async def diff() -> tuple[Counter[str], set[str]]:
        token, classes, examples = "", Counter[str](), set()
        while True:
            res = await admin_stub.DiffPopulation(apb.DiffPopulationRequest(
                page_size=100, page_token=token), timeout=120)
            for c in res.classes:
                classes[c.difference_class] += c.users
                examples |= set(c.example_user_ids)
            token = res.next_page_token
            if not token or res.users_scanned == 0:
                return classes, examples

    await seeded(stub, user_id)
    before, _ = await diff()
    await db.execute("DELETE FROM runs WHERE user_id = $1", uuid.UUID(user_id))
    after, examples = await diff()
    assert after["missing_run"] == before["missing_run"] + 1
    assert user_id in examples
    await admin_stub.RebuildUserRuns(apb.RebuildUserRunsRequest(user_id=user_id), timeout=60)
    assert (await diff())[0] == before


# ------------------------------------------------------------------ retention purge
async def test_the_retention_purge_deletes_on_the_shards_and_raises_the_watermark(
        citus_cluster: Cluster, db: asyncpg.Connection, user_id: str) -> None:
    u = uuid.UUID(user_id)
    await db.execute("INSERT INTO users (user_id, time_zone) VALUES ($1, 'UTC')", u)
    await db.execute("INSERT INTO run_events (user_id, kind, cause, occurred_at) "
                     "SELECT $1, 'run_created', 'test', timestamptz '2000-01-01' "
                     "FROM generate_series(1, 3)", u)
    ids = sorted(r[0] for r in await db.fetch(
        "SELECT event_id FROM run_events WHERE user_id = $1", u))
    kept = await db.fetchval("SELECT purged_through FROM run_events_retention")
    pool = await create_pool(citus_cluster.app_dsn, max_size=2)
    try:
        repo = RunEventsRepository(pool)
        now = dt.datetime.now(dt.UTC)
        cutoff = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
        assert await repo.purge_batch(cutoff, 2, now, Deadline.after(30)) == 2
        assert await db.fetchval("SELECT purged_through FROM run_events_retention") == ids[1]
        assert await repo.purge_batch(cutoff, 2, now, Deadline.after(30)) == 1
        assert await repo.purge_batch(cutoff, 2, now, Deadline.after(30)) == 0
        assert await db.fetchval("SELECT purged_through FROM run_events_retention") == ids[2]
        assert await db.fetchval("SELECT count(*) FROM run_events WHERE user_id = $1", u) == 0
    finally:
        await pool.close()
        # The session's other tests replay the stream: the watermark goes back.
        await db.execute("UPDATE run_events_retention SET purged_through = $1", kept)
    assert "Task Count" in await plan(db, PURGE_BATCH_SQL, cutoff, 2, now)


# ------------------------------------------------------------------ blue/green
def test_the_blue_green_rebuild_refuses_a_distributed_schema(
        citus_cluster: Cluster, test_clock: FixedClock) -> None:
    srv = ServerThread(citus_cluster.dsn, test_clock, owner=True).start()
    try:
        with grpc.insecure_channel(srv.target) as channel:
            with pytest.raises(grpc.RpcError) as err:
                AdminServiceStub(channel).RebuildAllRuns(
                    apb.RebuildAllRunsRequest(blue_green=True, confirm=CONFIRM),
                    metadata=ADMIN_METADATA, timeout=60)
    finally:
        srv.stop()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details() or ""
    assert "Citus" in details and "rebuild --all" in details and "\n" not in details


# ------------------------------------------------------------------ population diff plan
async def test_the_population_diff_runs_inside_the_shards(
        citus_cluster: Cluster, stub: RunsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, user_id: str) -> None:
    await seeded(stub, user_id)
    await db.execute("DELETE FROM runs WHERE user_id = $1", uuid.UUID(user_id))
    try:
        # A real batch (as diff_batch picks it) and enough others that every shard has some.
        users = sorted([r[0] for r in await db.fetch(BATCH_USERS_SQL, None, 1000)]
                       + [uuid.uuid4() for _ in range(256)])
        now = dt.datetime.now(dt.UTC)
        text = await plan(db, POPULATION_DIFF_CITUS_SQL, users, now)
        # One task per shard doing the gaps and islands, the overlaps and the per-class
        # partial aggregate; the coordinator only combines a few rows per shard.
        assert_pushed_down(text, "row_number() OVER (PARTITION BY", "daily_checkins",
                           "runs_", "array_agg(", "GROUP BY")
        assert "read_intermediate_result" not in text, text
        assert "array_cat_agg(remote_scan.user_ids)" in text, text
        # The repository picks that text on Citus and finds the planted difference.
        pool = await create_pool(citus_cluster.app_dsn, max_size=2)
        try:
            batch = await AdminRepository(pool).diff_batch(None, 100_000, now)
        finally:
            await pool.close()
        found = {c.name: c for c in batch.classes}
        assert batch.users_scanned >= 1 and batch.checkins_scanned >= len(DAYS)
        assert "missing_run" in found and batch.users_different >= 1
        direct = await db.fetch(POPULATION_DIFF_CITUS_SQL, [uuid.UUID(user_id)], now)
        assert {r["cls"]: (r["users"], r["user_ids"]) for r in direct} == {
            "": (1, None), **{c: (1, [uuid.UUID(user_id)])
                              for c in ("missing_run", "uncovered_day", "active_mismatch")}}
    finally:
        await admin_stub.RebuildUserRuns(apb.RebuildUserRunsRequest(user_id=user_id), timeout=60)
