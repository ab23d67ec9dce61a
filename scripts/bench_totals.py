#!/usr/bin/env python
"""TotalsService cost: computed on read vs stored, at 100, 365 and 3,650 days of history.

One run, one throwaway PostgreSQL: starts an embedded cluster (durable unless --fast),
starts the server in a child process (this script with --child) whose clock stands at
2035-01-15 (so ten years of history fit after the 2025-01-01 launch), and seeds, through
v2 BackfillDays, U users per tier whose history spans 100, 365 and 3,650 days up to
yesterday (check-ins on ~90 % of the days: runs of 1..30 days, gaps of 1..3). Then, per
tier and method (GetTotals; ListMonthlyTotals, first page of 24 months), it alternates
rounds of the computed path and the stored path (ff.potato.totals_v2 switched in the
child between rounds), each round measuring

- serial latency (one call in flight: p50/p95 over gRPC),
- throughput at C calls in flight,
- the SQL alone (the read's one query, serial, on a direct connection: p50),

and prints one table with the computed/stored ratios. The answers of both paths are
checked equal for every seeded user before measuring.

Usage: .venv/bin/python scripts/bench_totals.py [--users 60] [--calls 1500]
       [--serial 200] [--concurrency 16] [--rounds 3] [--fast]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncpg
import grpc

from potato.runs.v2 import runs_service_pb2 as rpb
from potato.runs.v2 import runs_service_pb2_grpc as rgrpc
from potato.runs.v2 import totals_service_pb2 as pb
from potato.runs.v2 import totals_service_pb2_grpc as tgrpc
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database

NOW = dt.datetime(2035, 1, 15, 12, 0, tzinfo=dt.UTC)
TIERS = (100, 365, 3650)
PATHS = ("computed", "stored")
METHODS = ("GetTotals", "ListMonthlyTotals")


# -- the server (child process) ----------------------------------------------------------


async def child(dsn: str) -> None:
    from potato_runs.app import build_app
    from potato_runs.clock import FixedClock
    from potato_runs.config import Settings
    from potato_runs.domain.flags import TOTALS_V2, FlagState, StaticFlags

    app = await build_app(Settings.from_env(port=0, dsn=dsn, invariant_check_interval=0),
                          clock=FixedClock(NOW))
    assert app.totals is not None
    print(f"port {app.port}", flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line:
                break
            if line[0] == "path":   # computed: flag off; stored: everyone v2
                app.totals.flags = StaticFlags(FlagState(
                    TOTALS_V2, enabled=line[1] == "stored",
                    rollout_basis_points=10_000 if line[1] == "stored" else 0))
            print("ok", flush=True)
    finally:
        await app.stop(2)


# -- the client ---------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def history(span: int, rng: random.Random) -> list[str]:
    """Check-ins on ~90 % of the `span` days up to yesterday (runs and short gaps)."""
    end = NOW.date() - dt.timedelta(days=1)
    d = end - dt.timedelta(days=span - 1)
    days: list[str] = []
    while d <= end:
        for _ in range(rng.randrange(1, 31)):
            if d > end:
                break
            days.append(d.isoformat())
            d += dt.timedelta(days=1)
        d += dt.timedelta(days=rng.randrange(1, 4))
    return days


async def seed(target: str, users: int, rng: random.Random) -> dict[int, list[str]]:
    tiers = {span: [str(uuid.uuid4()) for _ in range(users)] for span in TIERS}
    todo = iter([(uid, history(span, rng)) for span, ids in tiers.items() for uid in ids])

    async def worker(stub: rgrpc.RunsServiceStub) -> None:
        for uid, days in todo:
            for i in range(0, len(days), 500):
                await stub.BackfillDays(rpb.BackfillDaysRequest(
                    user_id=uid, local_dates=days[i:i + 500], time_zone="UTC"), timeout=60)

    async with grpc.aio.insecure_channel(target) as ch:
        stub = rgrpc.RunsServiceStub(ch)
        await asyncio.gather(*(worker(stub) for _ in range(8)))
    return tiers


async def ensure_stored(dsn: str) -> str:
    """Makes the stored totals right when the write path does not keep them yet."""
    conn = await asyncpg.connect(dsn)
    try:
        drift = await conn.fetchval("""
            SELECT count(*) FROM potato_computed_month_totals(ARRAY(SELECT user_id FROM users)) c
              FULL JOIN run_totals t USING (user_id, yyyymm)
             WHERE (c.streak_days, c.total_days) IS DISTINCT FROM (t.streak_days, t.total_days)""")
        if drift == 0:
            return "kept by the write path"
        # the write path should have kept them: say so in the output when it did not.
        await conn.execute("""
            SELECT potato_refresh_totals(u.user_id, ARRAY(
                       SELECT DISTINCT date_trunc('month', c.checkin_date)::date
                         FROM daily_checkins c WHERE c.user_id = u.user_id), $1)
              FROM users u""", NOW)
        return f"filled by potato_refresh_totals ({drift} month rows were missing)"
    finally:
        await conn.close()


def request(method: str, uid: str) -> Any:
    return (pb.GetTotalsRequest(user_id=uid) if method == "GetTotals"
            else pb.ListMonthlyTotalsRequest(user_id=uid))


async def call(stub: tgrpc.TotalsServiceStub, method: str, uid: str) -> tuple[Any, str]:
    c = getattr(stub, method)(request(method, uid), timeout=30)
    md = await c.initial_metadata()
    return await c, dict(md)["potato-read-source"]


async def check_equal(target: str, tiers: dict[int, list[str]],
                      command: Any) -> int:
    """Both paths' answers for every user (update_time left out); returns users checked."""
    seen: dict[str, dict[str, Any]] = {}
    async with grpc.aio.insecure_channel(target) as ch:
        stub = tgrpc.TotalsServiceStub(ch)
        for path in PATHS:
            command(f"path {path}")
            for ids in tiers.values():
                for uid in ids:
                    t, s1 = await call(stub, "GetTotals", uid)
                    m, s2 = await call(stub, "ListMonthlyTotals", uid)
                    assert {s1, s2} == {path}, (s1, s2, path)
                    tt = t.totals
                    seen.setdefault(uid, {})[path] = (
                        (tt.total_days, tt.run_count, tt.longest_run_days,
                         tt.current_streak_days),
                        [(x.month, x.total_days, x.streak_days) for x in m.monthly_totals],
                        m.next_page_token)
    for uid, answers in seen.items():
        assert answers["computed"] == answers["stored"], (uid, answers)
    return len(seen)


async def grpc_round(target: str, method: str, ids: list[str], serial: int, calls: int,
                     concurrency: int, rng: random.Random,
                     path: str) -> tuple[list[float], float]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = tgrpc.TotalsServiceStub(ch)
        for uid in ids[:20]:   # warm-up (and the source check)
            _, source = await call(stub, method, uid)
            assert source == path
        fn: Any = getattr(stub, method)
        lat = []
        for _ in range(serial):
            r = request(method, rng.choice(ids))
            t0 = time.perf_counter()
            await fn(r, timeout=30)
            lat.append((time.perf_counter() - t0) * 1000)
        reqs = iter([request(method, rng.choice(ids)) for _ in range(calls)])

        async def worker() -> int:
            n = 0
            for r in reqs:
                await fn(r, timeout=30)
                n += 1
            return n

        t0 = time.perf_counter()
        done = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
        return lat, done / (time.perf_counter() - t0)


async def sql_round(dsn: str, method: str, path: str, ids: list[str], n: int,
                    rng: random.Random) -> list[float]:
    """The path's one query alone (what the database spends), serial."""
    from potato_runs.deadline import Deadline
    from potato_runs.domain.totals_answers import MonthRange, TotalsSource
    from potato_runs.storage.totals_reads import TotalsReader

    conn = await asyncpg.connect(dsn)
    try:
        source = TotalsSource(path)
        reader = TotalsReader(conn, Deadline.after(3600))
        every = MonthRange(None, None)
        for uid in ids[:10]:
            await reader.lifetime(source, uuid.UUID(uid))
        lat = []
        for _ in range(n):
            uid = uuid.UUID(rng.choice(ids))
            t0 = time.perf_counter()
            if method == "GetTotals":
                await reader.lifetime(source, uid)
            else:
                await reader.months(source, uid, every, 25)
            lat.append((time.perf_counter() - t0) * 1000)
        return lat
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=60, help="users per tier")
    ap.add_argument("--calls", type=int, default=1500, help="calls per throughput round")
    ap.add_argument("--serial", type=int, default=200, help="serial calls per round")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per path (alternating)")
    ap.add_argument("--fast", action="store_true", help="fsync off (like the test suite)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        asyncio.run(child(args.child))
        return

    base = Path(tempfile.mkdtemp(prefix="potato-bench-totals-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=args.fast)
    cluster.start()
    server = None
    try:
        asyncio.run(ensure_database(cluster.dsn("postgres"), "bench"))
        dsn = cluster.dsn("bench")
        env = {**os.environ, "POTATO_ADMIN_TOKEN": secrets.token_hex(16),
               "POTATO_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, __file__, "--child", dsn], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert server.stdin is not None and server.stdout is not None
        target = f"127.0.0.1:{server.stdout.readline().split()[1]}"

        def command(text: str) -> str:
            assert server is not None and server.stdin and server.stdout
            server.stdin.write(text + "\n")
            server.stdin.flush()
            return server.stdout.readline().strip()

        rng = random.Random(7)
        t0 = time.perf_counter()
        tiers = asyncio.run(seed(target, args.users, rng))
        seeded = time.perf_counter() - t0
        stored = asyncio.run(ensure_stored(dsn))

        async def facts() -> dict[int, tuple[float, float]]:
            conn = await asyncpg.connect(dsn)
            try:
                out = {}
                for span, ids in tiers.items():
                    rows = await conn.fetch(
                        "SELECT (SELECT count(*) FROM daily_checkins c WHERE c.user_id = u) AS n,"
                        " (SELECT count(*) FROM runs r WHERE r.user_id = u) AS r "
                        "FROM unnest($1::uuid[]) u", [uuid.UUID(i) for i in ids])
                    out[span] = (statistics.mean(r["n"] for r in rows),
                                 statistics.mean(r["r"] for r in rows))
                await conn.execute("VACUUM ANALYZE")
                return out
            finally:
                await conn.close()

        shape = asyncio.run(facts())
        checked = asyncio.run(check_equal(target, tiers, command))
        print(f"postgres {'fsync off' if args.fast else 'durable (fsync on)'}; clock {NOW:%Y-%m-%d}; "
              f"{args.users} users per tier seeded in {seeded:.1f} s; stored totals {stored}; "
              f"both paths agree for all {checked} users")
        for span, (n, r) in shape.items():
            print(f"  {span:5d}-day history: {n:7.0f} check-ins, {r:5.0f} runs per user (mean)")
        print(f"per round: {args.serial} serial calls, {args.calls} calls at "
              f"{args.concurrency} in flight, {args.serial} serial SQL-only reads; "
              f"{args.rounds} rounds per path, alternating")

        res: dict[tuple[int, str, str], dict[str, list[Any]]] = {}
        for span, ids in tiers.items():
            for method in METHODS:
                for r in range(args.rounds):
                    order = PATHS if r % 2 == 0 else PATHS[::-1]
                    for path in order:
                        command(f"path {path}")
                        lat, thr = asyncio.run(grpc_round(target, method, ids, args.serial,
                                                          args.calls, args.concurrency, rng,
                                                          path))
                        sql = asyncio.run(sql_round(dsn, method, path, ids, args.serial, rng))
                        cell = res.setdefault((span, method, path),
                                              {"lat": [], "thr": [], "sql": []})
                        cell["lat"] += lat
                        cell["thr"].append(thr)
                        cell["sql"] += sql
                        print(f"  {span:5d} {method:17} {path:8} round {r + 1}: "
                              f"p50 {pct(lat, 50):6.2f} ms  {thr:6.0f} calls/s  "
                              f"sql p50 {pct(sql, 50):6.3f} ms", flush=True)

        print()
        head = (f"{'history':>8} {'method':17} {'path':8} {'p50 ms':>7} {'p95 ms':>7} "
                f"{'calls/s':>8} {'sql p50 ms':>10} {'sql p95 ms':>10}")
        print(head)
        print("-" * len(head))
        for span in TIERS:
            for method in METHODS:
                for path in PATHS:
                    c = res[(span, method, path)]
                    print(f"{span:>5d} d  {method:17} {path:8} {pct(c['lat'], 50):7.2f} "
                          f"{pct(c['lat'], 95):7.2f} {statistics.median(c['thr']):8.0f} "
                          f"{pct(c['sql'], 50):10.3f} {pct(c['sql'], 95):10.3f}")
                comp, sto = res[(span, method, "computed")], res[(span, method, "stored")]
                print(f"{'':8} {method:17} {'ratio':8} "
                      f"{pct(comp['lat'], 50) / pct(sto['lat'], 50):6.2f}x "
                      f"{'':7} {statistics.median(sto['thr']) / statistics.median(comp['thr']):7.2f}x"
                      f" {pct(comp['sql'], 50) / pct(sto['sql'], 50):9.2f}x   "
                      f"(computed / stored; calls/s stored / computed)")
    finally:
        if server is not None:
            if server.stdin:
                server.stdin.close()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
