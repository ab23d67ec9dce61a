#!/usr/bin/env python
"""The blue/green full rebuild against the bare gaps-and-islands SELECT, in one run.

A throwaway embedded PostgreSQL (fsync on, the server's own setup: potato_owner owns the
schema, the server serves as potato_app and rebuilds on its owner connection), USERS
users with about CHECKINS check-ins generated set-based (streaks of 1-16 days, one per
56-day block) and their runs. Then, in the same run:

1. the bare gaps-and-islands SELECT over every fact (storage/blue_green.BARE_SELECT_SQL,
   aggregated on the server so no rows travel), median of 3;
2. the blue/green rebuild through the real server (AdminService.RebuildAllRuns), its
   phase times, and the ratio rebuild / bare SELECT (target <= 10, reported, never
   asserted);
3. meanwhile WRITERS writers mark and unmark days through the server's RunsService: writes
   acknowledged, lost (acknowledged but not in the facts afterwards: must be 0), failed,
   and the longest a write waited.

Usage: .venv/bin/python scripts/bench_bluegreen.py [--users 10000] [--checkins 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import grpc

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2 import runs_service_pb2 as rpb
from potato.runs.v2.admin_service_pb2_grpc import AdminServiceStub
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.app import build_app, open_database
from potato_runs.config import Settings
from potato_runs.storage.blue_green import BARE_SELECT_SQL, CONFIRM

TOKEN = "bench-bluegreen-token-0123456789"
LAUNCH = dt.date(2025, 1, 1)
BLOCK = 56

SEED_USERS = """
INSERT INTO users (user_id, time_zone)
SELECT gen_random_uuid(), 'UTC'
  FROM generate_series(1, $1) g
"""
SEED_CHECKINS = """
INSERT INTO daily_checkins (user_id, checkin_date, time_zone, source, created_at)
SELECT u.user_id, $1::date + (b * $2 + y.off + k), 'UTC', 'bench', now()
  FROM users u
 CROSS JOIN generate_series(0, $3 - 1) b
 CROSS JOIN LATERAL (SELECT hashtext(u.user_id::text || b::text) AS h) x
 CROSS JOIN LATERAL (SELECT (x.h >> 4) & 31 AS off, 1 + (x.h & 15) AS len) y
 CROSS JOIN LATERAL generate_series(0, y.len - 1) k
"""
SEED_RUNS = """
INSERT INTO runs (user_id, start_date, end_date, day_count, active, created_at, updated_at,
                  last_extended_at)
SELECT user_id, s, e, e - s + 1, e = max(e) OVER (PARTITION BY user_id), now(), now(), now()
  FROM (SELECT user_id, min(checkin_date) s, max(checkin_date) e
          FROM (SELECT user_id, checkin_date,
                       checkin_date - (row_number() OVER (PARTITION BY user_id
                                                          ORDER BY checkin_date))::int AS grp
                  FROM daily_checkins) f
         GROUP BY user_id, grp) i
"""


async def seed(dsn: str, users: int, checkins: int) -> tuple[int, int]:
    blocks = max(1, round(checkins / users / 8.5))
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        await conn.execute(SEED_USERS, users)
        await conn.execute(SEED_CHECKINS, LAUNCH, BLOCK, blocks)
        await conn.execute(SEED_RUNS)
        await conn.execute("VACUUM ANALYZE")
        n_c = int(await conn.fetchval("SELECT count(*) FROM daily_checkins"))
        n_r = int(await conn.fetchval("SELECT count(*) FROM runs"))
        print(f"seeded {users:,} users, {n_c:,} check-ins, {n_r:,} runs (set-based) in "
              f"{time.perf_counter() - t0:.1f} s; fsync "
              f"{await conn.fetchval('SHOW fsync')}")
        return n_c, n_r
    finally:
        await conn.close()


async def bare_select(dsn: str) -> list[float]:
    conn = await asyncpg.connect(dsn)
    try:   # the session settings the rebuild uses (storage/blue_green.BlueGreenSettings)
        await conn.execute("SET work_mem = '256MB'; SET jit = off")
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            await conn.fetchrow(BARE_SELECT_SQL)
            times.append(time.perf_counter() - t0)
        return times
    finally:
        await conn.close()


class Writer:
    def __init__(self, stub: RunsServiceStub, users: list[uuid.UUID], seed: int,
                 last_day: dt.date) -> None:
        self.stub, self.users, self.rng = stub, users, random.Random(seed)
        self.days = (last_day - LAUNCH).days
        self.model: dict[tuple[uuid.UUID, dt.date], bool] = {}
        self.acked = self.failed = 0
        self.longest = 0.0
        self.errors: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            user = self.rng.choice(self.users)
            day = LAUNCH + dt.timedelta(days=self.rng.randrange(self.days))
            mark = self.rng.random() < 0.6
            t0 = time.perf_counter()
            try:
                if mark:
                    await self.stub.MarkDay(rpb.MarkDayRequest(
                        user_id=str(user), local_date=day.isoformat(), time_zone="UTC"),
                        timeout=30)
                else:
                    await self.stub.UnmarkDay(rpb.UnmarkDayRequest(
                        user_id=str(user), local_date=day.isoformat()), timeout=30)
            except grpc.aio.AioRpcError as exc:
                self.failed += 1
                key = exc.code().name
                self.errors[key] = self.errors.get(key, 0) + 1
                continue
            finally:
                self.longest = max(self.longest, time.perf_counter() - t0)
            self.acked += 1
            self.model[(user, day)] = mark


async def lost_writes(dsn: str, writers: list[Writer]) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        lost = 0
        for w in writers:
            keys = list(w.model)
            present = {(r["user_id"], r["checkin_date"]) for r in await conn.fetch(
                "SELECT c.user_id, c.checkin_date FROM daily_checkins c "
                "JOIN unnest($1::uuid[], $2::date[]) AS k(u, d) "
                "ON c.user_id = k.u AND c.checkin_date = k.d",
                [k[0] for k in keys], [k[1] for k in keys])}
            lost += sum(1 for k, marked in w.model.items() if (k in present) != marked)
        return lost
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="potato-bench-bg-"))
    os.chmod(base, 0o755)
    settings = Settings(host="127.0.0.1", port=0, data_dir=base / "pgdata",
                        admin_token=TOKEN, invariant_check_interval=0, health_probe_interval=0,
                        totals_reconcile_at=None)
    db = await open_database(settings)   # embedded, fsync on; migrated as potato_owner
    try:
        assert db.embedded is not None
        su = db.embedded.dsn("potato")
        n_c, n_r = await seed(su, args.users, args.checkins)
        bare = await bare_select(su)
        app = await build_app(settings, database=db)
        try:
            target = f"127.0.0.1:{app.port}"
            async with grpc.aio.insecure_channel(target) as channel:
                runs = RunsServiceStub(channel)
                admin = AdminServiceStub(channel)
                ids = [uuid.UUID(f"00000000-0000-4000-8000-{i:012d}")
                       for i in range(1, args.users + 1)]
                last_day = dt.date.today() - dt.timedelta(days=1)
                writers = [Writer(runs, ids[i::args.writers], i, last_day)
                           for i in range(args.writers)]
                stop = asyncio.Event()
                tasks = [asyncio.create_task(w.run(stop)) for w in writers]
                t0 = time.perf_counter()
                res = await admin.RebuildAllRuns(
                    apb.RebuildAllRunsRequest(blue_green=True, confirm=CONFIRM),
                    metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=600)
                wall = time.perf_counter() - t0
                stop.set()
                await asyncio.gather(*tasks)
            lost = await lost_writes(su, writers)
            conn = await asyncpg.connect(su)
            try:
                runs_now = int(await conn.fetchval("SELECT count(*) FROM runs"))
            finally:
                await conn.close()
        finally:
            await app.stop(1.0)
    finally:
        await db.close()
        shutil.rmtree(base, ignore_errors=True)

    median = statistics.median(bare)
    phases = {p.name: p.seconds for p in res.phases}
    rows = [
        ("check-ins / users / runs before", f"{n_c:,} / {args.users:,} / {n_r:,}"),
        ("bare gaps-and-islands SELECT, 3 runs (s)", " ".join(f"{t:.3f}" for t in bare)),
        ("bare SELECT median (s)", f"{median:.3f}"),
        *((f"rebuild phase {k} (s)", f"{v:.3f}") for k, v in phases.items()),
        ("rebuild total, server side (s)", f"{res.seconds:.3f}"),
        ("rebuild RPC wall clock (s)", f"{wall:.3f}"),
        ("ratio rebuild / bare SELECT (target <= 10)", f"{res.seconds / median:.1f}x"),
        ("runs after (rebuild / now)", f"{res.runs:,} / {runs_now:,}"),
        ("runs that kept their run_id", f"{res.runs_kept:,}"),
        ("users changed (run_rebuilt events)", f"{res.users_changed:,}"),
        ("users per catch-up pass (last: in the swap)",
         " ".join(str(n) for n in res.catchup_users)),
        ("swap attempts", str(res.swap_attempts)),
        ("writes held by the swap, at most (s)", f"{res.max_write_block_seconds:.3f}"),
        (f"writes acknowledged during the rebuild ({args.writers} writers)",
         f"{sum(w.acked for w in writers):,}"),
        ("writes failed", f"{sum(w.failed for w in writers)} "
                          f"{ {k: v for w in writers for k, v in w.errors.items()} or ''}"),
        ("writes lost (must be 0)", str(lost)),
        ("longest write wait (s)", f"{max(w.longest for w in writers):.3f}"),
        ("old table dropped", str(res.old_table_dropped)),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 24}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--checkins", type=int, default=1_000_000)
    ap.add_argument("--writers", type=int, default=1)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
