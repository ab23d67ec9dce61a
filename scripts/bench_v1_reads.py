#!/usr/bin/env python
"""v1 read throughput and latency with online shadow comparisons at 0 % and 100 %.

One run, one throwaway PostgreSQL: starts an embedded cluster (durable unless --fast),
starts the server in a child process (this script with --child, so the flag evaluator
can be switched between rounds), seeds N users with history through v2 BackfillDays,
then alternates rounds of shadow 0 % and shadow 100 % (and, for reference, rollout
100 %: projection reads) for GetCurrentRun and GetStats at C calls in flight, and prints
throughput, p50/p95 and the shadow overhead. Between rounds it waits for the shadow
queue to drain, so one round's comparisons do not run during the next.

Usage: .venv/bin/python scripts/bench_v1_reads.py [--users 2000] [--calls 4000]
       [--concurrency 32] [--rounds 3] [--fast]
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

import grpc

from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato.runs.v2 import runs_service_pb2 as v2
from potato.runs.v2 import runs_service_pb2_grpc as v2_grpc
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database

MODES = {"shadow0": (0, 0), "shadow100": (10_000, 0), "projection": (0, 10_000)}
"""mode -> (shadow basis points, rollout basis points) of ff.potato.runs_v2."""


# -- the server (child process) ----------------------------------------------------------


async def child(dsn: str) -> None:
    from potato_runs.app import build_app
    from potato_runs.config import Settings
    from potato_runs.domain.flags import RUNS_V2, FlagState, StaticFlags

    app = await build_app(Settings.from_env(port=0, dsn=dsn, invariant_check_interval=0))
    assert app.v1 is not None and app.shadow is not None
    print(f"port {app.port}", flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line:
                break
            if line[0] == "mode":
                shadow, rollout = MODES[line[1]]
                app.v1.flags = StaticFlags(FlagState(RUNS_V2, enabled=True,
                                                     shadow_basis_points=shadow,
                                                     rollout_basis_points=rollout))
            elif line[0] == "drain":
                await app.shadow.idle()
            totals = dict(app.shadow.totals)
            print("ok " + " ".join(f"{k}={v}" for k, v in sorted(totals.items())), flush=True)
    finally:
        await app.stop(2)


# -- the client ---------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def seed(target: str, users: int, rng: random.Random) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(users)]
    todo = iter(ids)
    today = dt.date.today()

    async def worker(stub: v2_grpc.RunsServiceStub) -> None:
        for uid in todo:
            # ~120 days over the last ~200, in runs of 1..15 days with gaps.
            days: list[str] = []
            d = today - dt.timedelta(days=200 + rng.randrange(30))
            while d < today and len(days) < 400:
                for _ in range(rng.randrange(1, 16)):
                    if d >= today:
                        break
                    days.append(d.isoformat())
                    d += dt.timedelta(days=1)
                d += dt.timedelta(days=rng.randrange(1, 5))
            await stub.BackfillDays(v2.BackfillDaysRequest(user_id=uid, local_dates=days,
                                                           time_zone="UTC"), timeout=30)

    async with grpc.aio.insecure_channel(target) as ch:
        stub = v2_grpc.RunsServiceStub(ch)
        await asyncio.gather(*(worker(stub) for _ in range(16)))
    return ids


async def round_(target: str, method: str, ids: list[str], calls: int, concurrency: int,
                 rng: random.Random) -> tuple[float, list[float]]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = v1_grpc.RunsServiceStub(ch)
        fn: Any = getattr(stub, method)
        make: Any = (v1.GetCurrentRunRequest if method == "GetCurrentRun"
                     else v1.GetStatsRequest)
        reqs = iter([make(user_id=rng.choice(ids)) for _ in range(calls)])
        for r in [make(user_id=i) for i in ids[:50]]:   # warm-up
            await fn(r, timeout=10)

        async def worker() -> list[float]:
            mine = []
            for r in reqs:
                t0 = time.perf_counter()
                await fn(r, timeout=10)
                mine.append((time.perf_counter() - t0) * 1000)
            return mine

        t0 = time.perf_counter()
        parts = await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = [x for p in parts for x in p]
    return len(lat) / wall, lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--calls", type=int, default=4000, help="calls per round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per mode and method")
    ap.add_argument("--fast", action="store_true", help="fsync off (like the test suite)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        asyncio.run(child(args.child))
        return

    base = Path(tempfile.mkdtemp(prefix="potato-bench-v1-"))
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
        ids = asyncio.run(seed(target, args.users, rng))
        print(f"server {target}, postgres {'fsync off' if args.fast else 'durable'}; seeded "
              f"{len(ids)} users in {time.perf_counter() - t0:.1f} s; "
              f"{args.calls} calls per round at {args.concurrency} in flight, "
              f"{args.rounds} rounds per mode (alternating)")
        results: dict[tuple[str, str], list[tuple[float, list[float]]]] = {}
        for method in ("GetCurrentRun", "GetStats"):
            for r in range(args.rounds):
                for mode in ("shadow0", "shadow100", "projection"):
                    command(f"mode {mode}")
                    before = command("drain")
                    thr, lat = asyncio.run(round_(target, method, ids, args.calls,
                                                  args.concurrency, rng))
                    t1 = time.perf_counter()
                    after = command("drain")
                    backlog = time.perf_counter() - t1
                    results.setdefault((method, mode), []).append((thr, lat))
                    print(f"  {method:13} {mode:10} round {r + 1}: {thr:7.0f} calls/s  "
                          f"p50 {pct(lat, 50):6.2f} ms  p95 {pct(lat, 95):6.2f} ms   "
                          f"shadow totals {before.removeprefix('ok ') or '-'} -> "
                          f"{after.removeprefix('ok ') or '-'} "
                          f"(backlog drained {backlog * 1000:.0f} ms after the round)")
        print()
        for method in ("GetCurrentRun", "GetStats"):
            summary = {}
            for mode in ("shadow0", "shadow100", "projection"):
                rows = results[(method, mode)]
                thr = statistics.median(t for t, _ in rows)
                lat = [x for _, ls in rows for x in ls]
                summary[mode] = thr
                print(f"{method:13} {mode:10}: median {thr:7.0f} calls/s  "
                      f"p50 {pct(lat, 50):6.2f} ms  p95 {pct(lat, 95):6.2f} ms")
            overhead = (summary["shadow0"] - summary["shadow100"]) / summary["shadow0"] * 100
            print(f"{method:13} shadow 100 % vs 0 %: throughput {overhead:+.1f} % lower")
        print(f"final shadow totals: {command('drain').removeprefix('ok ')}")
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
