#!/usr/bin/env python
"""What the load shedder costs an accepted call, two ways, in one run.

1. The wrapper alone: `LoadShedder.intercept` around a coroutine that returns at once,
   awaited N times, against the bare coroutine: nanoseconds per call.
2. End to end: one embedded PostgreSQL (fsync off), two servers built by `build_app` in
   this process on two databases, one of them with the shedder replaced by a pass-through
   (no limit), rounds alternating between them with the same load (C calls in flight on
   one channel) for v2 MarkDay and GetActiveRun; prints calls/s per round, the medians
   and the difference in µs per call (noise included: compare it with the spread of the
   rounds).

Usage: .venv/bin/python scripts/bench_shedding.py [--calls 3000] [--concurrency 16] [--rounds 4]
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
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc

import potato_runs.app as app_module
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.app import App, Database, build_app
from potato_runs.config import Settings
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database
from potato_runs.storage.pool import create_pool
from potato_runs.transport.shedding import LoadShedder

TOKEN = "bench-admin-token-0123456789"


async def wrapper_cost(n: int) -> None:
    async def behavior(request: Any, context: Any) -> Any:
        return request

    wrapped = LoadShedder(1_000_000).intercept("/x.Y/Z", behavior)
    results = {}
    for _ in range(3):
        for name, fn in (("bare", behavior), ("wrapped", wrapped)):
            t0 = time.perf_counter()
            for i in range(n):
                await fn(i, None)
            results.setdefault(name, []).append((time.perf_counter() - t0) / n * 1e9)
    bare, wrapped_ns = min(results["bare"]), min(results["wrapped"])
    print(f"wrapper alone: bare {bare:.0f} ns, wrapped {wrapped_ns:.0f} ns per await "
          f"-> {wrapped_ns - bare:+.0f} ns per accepted call")


class _PassThrough:
    """Stands in for LoadShedder in the `without` server: wraps nothing."""

    def __init__(self, limit: int, **_: Any) -> None:
        self.limit = limit

    def intercept(self, method: str, behavior: Any) -> Any:
        return behavior


async def _app(dsn: str, shedding: bool) -> App:
    pool = await create_pool(dsn, min_size=2, max_size=16)
    settings = Settings(host="127.0.0.1", port=0, dsn=dsn, admin_token=TOKEN,
                        invariant_check_interval=0, health_probe_interval=0,
                        totals_reconcile_at=None)
    original = app_module.LoadShedder
    if not shedding:
        app_module.LoadShedder = _PassThrough  # type: ignore[assignment,misc]
    try:
        return await build_app(settings, database=Database(dsn=dsn, pool=pool))
    finally:
        app_module.LoadShedder = original  # type: ignore[misc]


async def _round(port: int, method: str, calls: int, concurrency: int, users: list[str],
                 seed: int) -> float:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        if method == "MarkDay":
            reqs: list[Any] = [pb.MarkDayRequest(
                user_id=rng.choice(users), time_zone="UTC",
                local_date=(dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(365))).isoformat())
                for _ in range(calls)]
            fn = stub.MarkDay
        else:
            reqs = [pb.GetActiveRunRequest(user_id=rng.choice(users)) for _ in range(calls)]
            fn = stub.GetActiveRun
        it = iter(reqs)

        async def worker() -> None:
            for r in it:
                await fn(r, timeout=30)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls / (time.perf_counter() - t0)


async def end_to_end(cluster: EmbeddedPostgres, calls: int, concurrency: int,
                     rounds: int) -> None:
    apps = {}
    for name in ("without", "with"):
        await ensure_database(cluster.dsn("postgres"), f"shed_{name}")
        apps[name] = await _app(cluster.dsn(f"shed_{name}"), name == "with")
    users = [str(uuid.uuid4()) for _ in range(2000)]
    try:
        for method in ("MarkDay", "GetActiveRun"):
            got: dict[str, list[float]] = {k: [] for k in apps}
            for r in range(rounds):
                order = list(apps.items()) if r % 2 == 0 else list(reversed(apps.items()))
                for name, app in order:
                    got[name].append(await _round(app.port, method, calls, concurrency,
                                                  users, r))
            for name, values in got.items():
                print(f"{method:13s} {name:8s} shedder " + "  ".join(f"{v:6.0f}" for v in values)
                      + f"   median {statistics.median(values):6.0f} calls/s")
            per_call = {k: 1e6 / statistics.median(v) for k, v in got.items()}
            print(f"{method:13s} with - without = {per_call['with'] - per_call['without']:+.1f} "
                  f"µs per call (server time per call {per_call['without']:.0f} µs)")
    finally:
        for app in apps.values():
            await app.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--awaits", type=int, default=200_000)
    args = ap.parse_args()
    asyncio.run(wrapper_cost(args.awaits))
    base = Path(tempfile.mkdtemp(prefix="potato-bench-shed-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=True)
    cluster.start()
    try:
        from potato_runs.storage.migrate import migrate

        async def prepare() -> None:
            import asyncpg

            for name in ("without", "with"):
                await ensure_database(cluster.dsn("postgres"), f"shed_{name}")
                conn = await asyncpg.connect(cluster.dsn(f"shed_{name}"))
                try:
                    await migrate(conn)
                finally:
                    await conn.close()

        asyncio.run(prepare())
        asyncio.run(end_to_end(cluster, args.calls, args.concurrency, args.rounds))
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
