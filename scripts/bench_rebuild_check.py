#!/usr/bin/env python
"""Full rebuild and full invariant check over a large population.

Seeds USERS users with about CHECKINS check-ins in total (set-based SQL), builds
the projection, then times:
  - `check` of everyone (set-based) and of one user (indexes; EXPLAIN printed),
  - `rebuild --all` when nothing drifted (set-based drift scan only),
  - `rebuild --all` after TRUNCATE runs (every user replayed from the facts),
  - `rebuild --all --force` (every user re-planned under its lock).

Usage: .venv/bin/python scripts/bench_rebuild_check.py [--users 10000] [--checkins 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from potato_runs.clock import SystemClock
from potato_runs.service.admin_service import AdminService
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.admin_repo import AdminRepository, invariant_sql
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database, migrate
from potato_runs.storage.pool import create_pool

DAYS = 700

SEED_RUNS = """
INSERT INTO runs (user_id, start_date, end_date, day_count, active, created_at, updated_at)
SELECT user_id, s, e, e - s + 1, e = max(e) OVER (PARTITION BY user_id), now(), now()
  FROM (SELECT user_id, min(checkin_date) s, max(checkin_date) e
          FROM (SELECT user_id, checkin_date,
                       checkin_date - (row_number() OVER (PARTITION BY user_id
                                                          ORDER BY checkin_date))::int AS grp
                  FROM daily_checkins) f
         GROUP BY user_id, grp) i
"""


async def timed(label: str, coro):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = await coro
    print(f"{label:<48} {time.perf_counter() - t0:8.2f} s")
    return result


async def seed_population(conn: asyncpg.Connection, users: int, checkins: int) -> None:
    """USERS users with about CHECKINS streaky check-ins in total, and their runs
    (set-based). Also used by bench_population_diff.py."""
    t0 = time.perf_counter()
    await conn.execute("INSERT INTO users (user_id, time_zone) SELECT gen_random_uuid(), "
                       "'America/New_York' FROM generate_series(1, $1)", users)
    ids = [r[0] for r in await conn.fetch("SELECT user_id FROM users")]
    # Streaky histories: streaks of mean length 8 separated by gaps sized so that
    # each user has about checkins/users days over DAYS days.
    rng = random.Random(42)
    per_user = checkins / users
    mean_gap = max(1.0, 8 * (DAYS - per_user) / per_user)
    launch = dt.date(2025, 1, 1)
    records = []
    for uid in ids:
        day = int(rng.expovariate(1 / mean_gap))
        while day < DAYS:
            for _ in range(1 + int(rng.expovariate(1 / 7))):
                if day >= DAYS:
                    break
                records.append((uid, launch + dt.timedelta(days=day), "America/New_York"))
                day += 1
            day += 1 + int(rng.expovariate(1 / mean_gap))
    await conn.copy_records_to_table("daily_checkins", records=records,
                                     columns=["user_id", "checkin_date", "time_zone"])
    await conn.execute(SEED_RUNS)
    await conn.execute("ANALYZE")
    n_c = await conn.fetchval("SELECT count(*) FROM daily_checkins")
    n_r = await conn.fetchval("SELECT count(*) FROM runs")
    print(f"seeded {users} users, {n_c} check-ins, {n_r} runs in {time.perf_counter() - t0:.1f} s")


async def run(dsn: str, users: int, checkins: int, batch: int) -> None:
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await seed_population(conn, users, checkins)
    one = await conn.fetchval("SELECT user_id FROM users LIMIT 1")
    plan = await conn.fetch("EXPLAIN " + invariant_sql("CHECKIN_NOT_COVERED", True), one)
    print("one-user CHECKIN_NOT_COVERED plan:")
    for r in plan:
        print("   ", r[0])
    await conn.close()

    pool = await create_pool(dsn, min_size=1, max_size=4)
    admin = AdminService(AdminRepository(pool), SystemClock(), Telemetry())
    v, _ = await timed("check (everyone)", admin.check(None, 1000))
    print(f"  violations: {len(v)}")
    t0 = time.perf_counter()
    for _ in range(100):
        await admin.check(one, 1000)
    print(f"{'check (one user), mean of 100':<48} {(time.perf_counter() - t0) * 10:8.2f} ms")
    rep = await timed("rebuild --all (nothing drifted)", admin.rebuild_all(batch=batch))
    print(f"  scanned {rep.users_scanned}, drifted {rep.users_drifted}")
    async with pool.acquire() as c:
        await c.execute("TRUNCATE runs, run_events")
    rep = await timed("rebuild --all after TRUNCATE runs (full replay)",
                      admin.rebuild_all(batch=batch))
    print(f"  scanned {rep.users_scanned}, rebuilt {rep.users_rebuilt}, runs added "
          f"{rep.runs_added}")
    rep = await timed("rebuild --all --force (every user re-planned)",
                      admin.rebuild_all(batch=batch, force=True))
    print(f"  scanned {rep.users_scanned}, drifted {rep.users_drifted}")
    v, _ = await timed("check (everyone) after the rebuilds", admin.check(None, 1000))
    print(f"  violations: {len(v)}")
    await pool.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--checkins", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--fast", action="store_true", help="fsync off")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="potato-bench-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=args.fast)
    cluster.start()
    try:
        name = f"bench_{uuid.uuid4().hex[:6]}"
        asyncio.run(ensure_database(cluster.dsn("postgres"), name))
        asyncio.run(run(cluster.dsn(name), args.users, args.checkins, args.batch))
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
