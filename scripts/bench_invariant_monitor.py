#!/usr/bin/env python
"""What an invariant monitor pass costs: incremental (N touched users) vs full.

Seeds USERS users with about CHECKINS check-ins (bench_rebuild_check.seed_population),
then times, on one embedded cluster:
  - the old round (AdminService.check of everyone, what every replica ran every 5 min),
  - a full pass of the monitor (the same queries, results written to invariant_violations),
  - incremental passes after N users were touched (N run_events rows, as N writes leave),
  - a replica's round that runs no pass (read the stored result: what the others do).
Each figure is the median of --repeat runs.

Usage: .venv/bin/python scripts/bench_invariant_monitor.py [--users 10000]
       [--checkins 1000000] [--touched 1,10,100,1000] [--repeat 5] [--fast]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rebuild_check import seed_population

from potato_runs.clock import FixedClock, SystemClock
from potato_runs.service.admin_service import AdminService
from potato_runs.service.invariant_monitor import InvariantMonitor, Scope
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.admin_repo import AdminRepository
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.invariant_repo import InvariantChecksRepository
from potato_runs.storage.migrate import ensure_database, migrate
from potato_runs.storage.pool import create_pool

TOUCH = """
INSERT INTO run_events (user_id, kind, cause, occurred_at)
SELECT user_id, 'run_extended', 'mark', now()
  FROM (SELECT user_id FROM users ORDER BY random() LIMIT $1) u
"""


async def median(repeat: int, step: Callable[[], Awaitable[Any]],
                 before: Callable[[], Awaitable[Any]] | None = None) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        if before is not None:
            await before()
        t0 = time.perf_counter()
        result = await step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


async def run(dsn: str, users: int, checkins: int, touched: list[int], repeat: int) -> None:
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await seed_population(conn, users, checkins)
    pool = await create_pool(dsn, min_size=1, max_size=2, command_timeout=600)
    clock = FixedClock(dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    monitor = InvariantMonitor(InvariantChecksRepository(pool), clock, interval=300,
                               full_interval=21_600, report=lambda _: None, replica="bench",
                               grace=dt.timedelta(0))
    admin = AdminService(AdminRepository(pool), SystemClock(), Telemetry())

    print(f"{'round':<52} {'median':>9}  users checked")
    s, _ = await median(repeat, lambda: admin.check(None, 1000))
    print(f"{'old: full check (AdminService.check, everyone)':<52} {s * 1000:7.1f} ms  {users}")

    async def full() -> Any:
        clock.advance(dt.timedelta(seconds=300))
        return await monitor.run_pass(Scope.FULL)

    s, res = await median(repeat, full)
    print(f"{'full pass':<52} {s * 1000:7.1f} ms  {res.record.users_checked}")
    for n in touched:
        async def touch(n: int = n) -> None:
            await conn.execute(TOUCH, n)
            clock.advance(dt.timedelta(seconds=300))

        s, res = await median(repeat, lambda: monitor.run_pass(Scope.INCREMENTAL), touch)
        assert res.record.scope == "incremental"
        print(f"{f'incremental pass, {n} touched user(s)':<52} {s * 1000:7.1f} ms  "
              f"{res.record.users_checked}")
    s, _ = await median(repeat, monitor.refresh)
    print(f"{'a replica that runs no pass: read the stored result':<52} {s * 1000:7.1f} ms")
    events = await conn.fetchval("SELECT count(*) FROM run_events")
    print(f"(run_events rows at the end: {events})")
    await pool.close()
    await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--checkins", type=int, default=1_000_000)
    ap.add_argument("--touched", default="1,10,100,1000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fast", action="store_true", help="fsync off")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="potato-bench-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=args.fast)
    cluster.start()
    try:
        name = f"bench_{uuid.uuid4().hex[:6]}"
        asyncio.run(ensure_database(cluster.dsn("postgres"), name))
        asyncio.run(run(cluster.dsn(name), args.users, args.checkins,
                        [int(n) for n in args.touched.split(",")], args.repeat))
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
