#!/usr/bin/env python
"""MarkDay latency and throughput against a real server process and PostgreSQL.

Starts an embedded PostgreSQL (durable settings unless --fast), starts
`potato-runs serve --port 0` as a separate process, then:
  1. latency: N sequential MarkDay calls (mixed: new days, extensions, repeats),
     printing p50/p95/p99;
  2. throughput: the same mix from C concurrent clients, printing calls/s.

Usage: .venv/bin/python scripts/bench_markday.py [--calls 3000] [--concurrency 16] [--fast]

`--target HOST:PORT` measures a server that is already running instead. The client TLS
flags of the CLI (--tls-ca, --tls-cert, --tls-key, --tls-server-name; POTATO_TLS_CA, ...)
make the connection TLS; the server this script starts inherits the environment, so
POTATO_TLS_CERT/POTATO_TLS_KEY (and POTATO_TLS_CLIENT_CA) make it serve TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncpg

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.cli._common import ClientTls, add_tls_arguments, client_tls, open_aio_channel
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database

START = dt.date(2025, 1, 1)


def requests(n: int, users: int, seed: int) -> list[pb.MarkDayRequest]:
    rng = random.Random(seed)
    ids = [str(uuid.uuid4()) for _ in range(users)]
    out = []
    for _ in range(n):
        day = START + dt.timedelta(days=rng.randrange(600))
        out.append(pb.MarkDayRequest(user_id=rng.choice(ids), local_date=day.isoformat(),
                                     time_zone="America/New_York"))
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def bench(target: str, calls: int, concurrency: int, tls: ClientTls) -> None:
    async with open_aio_channel(target, tls, options=()) as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        for r in requests(200, 50, 1):  # warm-up
            await stub.MarkDay(r)
        lat = []
        for r in requests(calls, 200, 2):
            t0 = time.perf_counter()
            await stub.MarkDay(r, timeout=10)
            lat.append((time.perf_counter() - t0) * 1000)
        print(f"sequential MarkDay: {calls} calls  p50 {pct(lat, 50):.2f} ms  "
              f"p95 {pct(lat, 95):.2f} ms  p99 {pct(lat, 99):.2f} ms  "
              f"mean {statistics.mean(lat):.2f} ms")

        reqs = requests(calls * 2, 2000, 3)
        queue = iter(reqs)

        async def worker() -> list[float]:
            mine = []
            for r in queue:
                t0 = time.perf_counter()
                await stub.MarkDay(r, timeout=10)
                mine.append((time.perf_counter() - t0) * 1000)
            return mine

        t0 = time.perf_counter()
        results = await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        allv = [x for part in results for x in part]
        print(f"concurrent MarkDay: {len(allv)} calls from {concurrency} clients in {wall:.2f} s "
              f"= {len(allv) / wall:.0f} calls/s  p50 {pct(allv, 50):.2f} ms  "
              f"p95 {pct(allv, 95):.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--fast", action="store_true", help="fsync off (like the test suite)")
    ap.add_argument("--dsn", help="use this PostgreSQL instead of an embedded one")
    ap.add_argument("--target", help="measure this running server (HOST:PORT) instead")
    add_tls_arguments(ap)
    args = ap.parse_args()
    if args.target:
        print(f"server: {args.target} (already running)")
        asyncio.run(bench(args.target, args.calls, args.concurrency, client_tls(args)))
        return
    base = Path(tempfile.mkdtemp(prefix="potato-bench-"))
    os.chmod(base, 0o755)
    cluster = None
    dsn = args.dsn
    if dsn is None:
        cluster = EmbeddedPostgres(base / "pg", fast_unsafe=args.fast)
        cluster.start()
        asyncio.run(ensure_database(cluster.dsn("postgres"), "bench"))
        dsn = cluster.dsn("bench")
    exe = str(Path(sys.executable).parent / "potato-runs")
    env = {**os.environ, "POTATO_ADMIN_TOKEN": uuid.uuid4().hex}   # required with --dsn
    server = subprocess.Popen([exe, "serve", "--port", "0", "--dsn", dsn],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        target = line.split(" on ")[1].split()[0]
        print(f"server: {target}  postgres: {'fsync off' if args.fast else 'durable (fsync on)'}")
        asyncio.run(bench(target, args.calls, args.concurrency, client_tls(args)))

        async def sizes() -> None:
            conn = await asyncpg.connect(dsn)
            n = await conn.fetchval("SELECT count(*) FROM daily_checkins")
            r = await conn.fetchval("SELECT count(*) FROM runs")
            await conn.close()
            print(f"rows: {n} check-ins, {r} runs")

        asyncio.run(sizes())
    finally:
        server.terminate()
        server.wait(10)
        if cluster:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
