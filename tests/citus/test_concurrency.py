"""Concurrency on Citus (issue 10): the writers of tests/integration/test_concurrency.py
(their seeded MarkDay/UnmarkDay/BackfillDays mixes, error capture and report) through the
real server on the coordinator, every write a call delegated to the user's worker, where
the per-user advisory lock is taken.

Afterwards, as on one PostgreSQL: no call failed (the repository's retries are off, so a
deadlock could not hide), the invariant checker finds nothing, a dry-run rebuild finds
nothing to change, and projection == rebuild: the stored runs equal the runs recomputed
from daily_checkins, both by the SQL below (gaps and islands, in the database) and by the
test-only oracle. And every user's rows live on exactly one worker, the one Citus places
its shard group on.

Mid-flight audits differ from the one-PostgreSQL test: the admin rebuild takes the user's
advisory lock on the coordinator, and a delegated writer takes it on the worker, so a
dry-run rebuild there would read the check-ins and the runs in two statements (two
snapshots) between writes. The audit here is one statement per question instead: the
rebuild comparison below, and each invariant query of the checker, both routed whole to
the user's shard group (one snapshot on one worker).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from typing import Any

import asyncpg
from integration.test_concurrency import (
    CALL_TIMEOUT,
    MAX_IN_FLIGHT,
    SEED,
    ZONES,
    Outcome,
    assert_no_client_errors,
    no_retries,
    on_server,
    report,
    stored_state,
    window,
    writer,
)
from oracle import expected_runs

from citus.conftest import Cluster
from citus.helpers import homes, placement
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub

__all__ = ["no_retries"]   # the fixture, imported for the tests below

ONE_USER_WRITERS = 32
ONE_USER_OPS = int(os.environ.get("POTATO_CITUS_ONE_USER_OPS") or 60)
"""32 x 60 = 1,920 writes on one user by default, serialized by its lock on the worker (a
delegated call is ~3x one PostgreSQL's on two cores); POTATO_CITUS_ONE_USER_OPS=200 runs
the issue's 32 x 200."""
MANY_USERS = 200
MANY_WRITERS = 8
MANY_OPS = int(os.environ.get("POTATO_CITUS_MANY_OPS") or 3)
"""Ops per writer of the many-users test: 200 x 8 x 3 = 4,800 calls by default (the
one-PostgreSQL test makes 12 each: POTATO_CITUS_MANY_OPS=12)."""
MAX_IN_FLIGHT_CITUS = min(MAX_IN_FLIGHT, 200)
"""Calls in flight at once: the server's pool (20) queues the rest, and with 800 queued a
few calls outlived their 30 s deadline on a loaded two-core box (DEADLINE_EXCEEDED)."""
AUDIT_PACE = 0.05
"""Seconds between mid-flight audit rounds: pacing, so the audits do not take the CPU the
writers need (no result depends on it)."""

# The users among $1 whose stored runs differ from the runs their check-ins give (gaps
# and islands: a run is a maximal set of consecutive dates, the latest one active). One
# statement; for one user Citus routes it whole to that user's shard group.
REBUILD_DIFF_SQL = """
WITH facts AS (
    SELECT user_id, checkin_date,
           checkin_date - (row_number() OVER (PARTITION BY user_id
                                              ORDER BY checkin_date))::int AS grp
      FROM daily_checkins WHERE user_id = ANY ($1::uuid[])
), islands AS (
    SELECT user_id, min(checkin_date) AS s, max(checkin_date) AS e
      FROM facts GROUP BY user_id, grp
), rebuilt AS (
    SELECT user_id, array_agg(ROW(s, e, e - s + 1, e = last) ORDER BY s) AS runs
      FROM (SELECT i.*, max(e) OVER (PARTITION BY user_id) AS last FROM islands i) x
     GROUP BY user_id
), stored AS (
    SELECT user_id, array_agg(ROW(start_date, end_date, day_count, active)
                              ORDER BY start_date) AS runs
      FROM runs WHERE user_id = ANY ($1::uuid[]) GROUP BY user_id
)
SELECT coalesce(r.user_id, s.user_id) AS user_id
  FROM rebuilt r FULL JOIN stored s ON s.user_id = r.user_id
 WHERE r.runs IS DISTINCT FROM s.runs
"""
ONE_USER_DIFF_SQL = REBUILD_DIFF_SQL.replace("= ANY ($1::uuid[])", "= $1::uuid")


async def rebuild_differs(db: asyncpg.Connection, users: list[uuid.UUID]) -> list[uuid.UUID]:
    return [r[0] for r in await db.fetch(REBUILD_DIFF_SQL, users)]


async def auditor(server: Any, db: asyncpg.Connection, user: uuid.UUID, done: asyncio.Event,
                  found: list[str]) -> int:
    """While writers run: the rebuild comparison and the checker find nothing."""
    rounds = 0
    while not done.is_set():
        if await db.fetch(ONE_USER_DIFF_SQL, user):
            found.append("mid-flight: stored runs differ from the rebuild")
        violations, _ = await on_server(server, server.app.admin.check(user, 100))
        found.extend(f"mid-flight {v.code}: {v.detail}" for v in violations)
        rounds += 1
        await asyncio.sleep(AUDIT_PACE)
    return rounds


async def assert_one_home_each(cluster: Cluster, db: asyncpg.Connection,
                               users: list[uuid.UUID]) -> None:
    """Every user's rows (users, daily_checkins, runs, run_events) are in the shards of
    exactly one node, the worker that holds its shard group; the coordinator has none."""
    coordinator = int(cluster.dsn.split("@")[1].split("/")[0].split(":")[1])
    found = await homes(db, cluster.dsn, [coordinator, *cluster.worker_ports()], users)
    expected = {u: await placement(db, u) for u in users}
    assert {p for p in expected.values()} <= set(cluster.worker_ports())
    wrong = {u: sorted(found[u]) for u in users if found[u] != {expected[u]}}
    assert wrong == {}, f"{len(wrong)} users not on exactly their one worker"
    spread = {p: sum(1 for u in users if expected[u] == p) for p in cluster.worker_ports()}
    print(f"[placement] users per worker: {spread}")


async def test_32_writers_on_one_user(citus_cluster: Cluster, server: Any, stub: RunsServiceStub,
                                      db: asyncpg.Connection, clock: Any,
                                      no_retries: None) -> None:
    user = uuid.uuid4()
    days = window(75)
    await stub.MarkDay(pb.MarkDayRequest(user_id=str(user), local_date=days[0].isoformat(),
                                         time_zone=ZONES[0]), timeout=CALL_TIMEOUT)
    outcome = Outcome()
    done = asyncio.Event()
    mid_flight: list[str] = []
    audit_conn = await asyncpg.connect(citus_cluster.dsn)
    try:
        audit = asyncio.create_task(auditor(server, audit_conn, user, done, mid_flight))
        started = time.perf_counter()
        try:
            await asyncio.gather(*(
                writer(stub, str(user), random.Random(f"{SEED}:one:{w}"), ONE_USER_OPS, days,
                       outcome)
                for w in range(ONE_USER_WRITERS)))
        finally:
            done.set()
        seconds = time.perf_counter() - started
        audit_rounds = await audit
    finally:
        await audit_conn.close()

    violations, _ = await on_server(server, server.app.admin.check(user, 100))
    plan = await on_server(server, server.app.admin.rebuild_user(user, None, None, True))
    differs = await rebuild_differs(db, [user])
    runs, dates = await stored_state(db, [user])
    report("citus one user", 1, ONE_USER_WRITERS, outcome, seconds, len(violations),
           f" mid-flight audits={audit_rounds} final runs={len(runs[user])} "
           f"check-ins={len(dates[user])} projection==rebuild={not differs}")

    assert_no_client_errors(outcome)
    assert outcome.ok >= ONE_USER_WRITERS * ONE_USER_OPS
    assert not mid_flight, mid_flight[:10]
    assert violations == [], violations[:10]
    assert plan.diff.empty, plan.diff
    assert differs == []
    assert runs[user] == expected_runs(dates[user])
    await assert_one_home_each(citus_cluster, db, [user])


async def test_200_users_with_8_writers_each(citus_cluster: Cluster, server: Any,
                                             stub: RunsServiceStub, db: asyncpg.Connection,
                                             clock: Any, no_retries: None) -> None:
    users = [uuid.uuid4() for _ in range(MANY_USERS)]
    days = window(40)
    await asyncio.gather(*(
        stub.MarkDay(pb.MarkDayRequest(user_id=str(u), local_date=days[0].isoformat(),
                                       time_zone=ZONES[i % len(ZONES)]), timeout=CALL_TIMEOUT)
        for i, u in enumerate(users)))
    outcome = Outcome()
    gate = asyncio.Semaphore(MAX_IN_FLIGHT_CITUS)
    started = time.perf_counter()
    await asyncio.gather(*(
        writer(stub, str(u), random.Random(f"{SEED}:many:{i}:{w}"), MANY_OPS, days, outcome,
               gate)
        for i, u in enumerate(users) for w in range(MANY_WRITERS)))
    seconds = time.perf_counter() - started

    violations = []
    for u in users:
        found, _ = await on_server(server, server.app.admin.check(u, 100))
        violations.extend(found)
    plans = [await on_server(server, server.app.admin.rebuild_user(u, None, None, True))
             for u in users]
    differs = await rebuild_differs(db, users)
    runs, dates = await stored_state(db, users)
    report("citus many users", MANY_USERS, MANY_USERS * MANY_WRITERS, outcome, seconds,
           len(violations), f" projection!=rebuild={len(differs)} max in flight={MAX_IN_FLIGHT_CITUS}")

    assert_no_client_errors(outcome)
    assert outcome.ok >= MANY_USERS * MANY_WRITERS * MANY_OPS
    assert violations == [], violations[:10]
    assert [u for u, p in zip(users, plans, strict=True) if not p.diff.empty] == []
    assert differs == []
    wrong = [u for u in users if runs[u] != expected_runs(dates[u])]
    assert wrong == [], f"{len(wrong)} users' runs are not the islands of their check-ins"
    assert sum(len(d) for d in dates.values()) > 0
    await assert_one_home_each(citus_cluster, db, users)

