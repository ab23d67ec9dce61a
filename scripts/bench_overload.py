#!/usr/bin/env python
"""Overload: a server with a small concurrency limit, clients at a multiple of it.

Starts an embedded PostgreSQL (fsync off) and `potato-runs serve --port 0` as a separate
process with POTATO_MAX_CONCURRENT_RPCS=--limit, then for --seconds keeps --factor x
limit calls in flight (v2 MarkDay and GetActiveRun, alternating, 5 s deadline, on 4
channels, no client retries) while a probe loop asks the health service ("") every
100 ms (1 s deadline). Prints the status codes seen, how many failed calls came without
a `grpc-status-details-bin` trailer, how many RESOURCE_EXHAUSTED carried
`grpc-retry-pushback-ms`, p50/p95 latency of RESOURCE_EXHAUSTED and of OK answers, and
the health probes that failed (an error or not SERVING).

--src runs another revision's server (PYTHONPATH=<its src>), e.g. the last commit:
  mkdir /tmp/potato-base && git archive HEAD src | tar -x -C /tmp/potato-base
  .venv/bin/python scripts/bench_overload.py --src /tmp/potato-base/src

Usage: .venv/bin/python scripts/bench_overload.py [--limit 32] [--factor 3] [--seconds 10]
       [--pool 16]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database

HERE = Path(__file__).resolve().parents[1] / "src"
NO_RETRY = [("grpc.enable_retries", 0)]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def start(src: Path, dsn: str, limit: int,
          pool: int) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "POTATO_POOL_MAX_SIZE": str(pool), "PYTHONPATH": str(src),
           "POTATO_ADMIN_TOKEN": uuid.uuid4().hex,
           "GRPC_ENABLE_FORK_SUPPORT": "false", "POTATO_INVARIANT_CHECK_INTERVAL": "0",
           "POTATO_MAX_CONCURRENT_RPCS": str(limit), "POTATO_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "potato_runs.cli", "serve", "--port", "0",
                             "--dsn", dsn], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving on" in line, line
    return proc, line.split(" on ")[1].split()[0]


async def overload(target: str, in_flight: int, seconds: float) -> None:
    codes: collections.Counter[str] = collections.Counter()
    latency: dict[str, list[float]] = collections.defaultdict(list)
    no_details = pushback = 0
    health: collections.Counter[str] = collections.Counter()
    users = [str(uuid.uuid4()) for _ in range(500)]
    stop = time.monotonic() + seconds
    channels = [grpc.aio.insecure_channel(target, options=NO_RETRY) for _ in range(4)]
    stubs = [runs_service_pb2_grpc.RunsServiceStub(ch) for ch in channels]

    async def worker(i: int) -> None:
        nonlocal no_details, pushback
        rng = random.Random(i)
        stub = stubs[i % len(stubs)]
        n = 0
        while time.monotonic() < stop:
            n += 1
            user = rng.choice(users)
            t0 = time.perf_counter()
            try:
                if n % 2:
                    day = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(600))
                    await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date=day.isoformat(),
                                                         time_zone="UTC"), timeout=5)
                else:
                    await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=user), timeout=5)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                keys = {k for k, _ in exc.trailing_metadata() or ()}
                no_details += "grpc-status-details-bin" not in keys
                pushback += "grpc-retry-pushback-ms" in keys
            codes[code] += 1
            latency[code].append((time.perf_counter() - t0) * 1000)

    async def prober() -> None:
        async with grpc.aio.insecure_channel(target, options=NO_RETRY) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < stop:
                try:
                    res = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    health[health_pb2.HealthCheckResponse.ServingStatus.Name(res.status)] += 1
                except grpc.aio.AioRpcError as exc:
                    health[exc.code().name] += 1
                await asyncio.sleep(0.1)   # the probe period

    await asyncio.gather(prober(), *(worker(i) for i in range(in_flight)))
    for ch in channels:
        await ch.close()
    total = sum(codes.values())
    failed = total - codes["OK"]
    print(f"calls: {total} in {seconds:g} s  codes: {dict(codes.most_common())}")
    print(f"failed calls without grpc-status-details-bin: {no_details} of {failed}; "
          f"RESOURCE_EXHAUSTED with grpc-retry-pushback-ms: {pushback} of "
          f"{codes['RESOURCE_EXHAUSTED']}")
    for code in ("RESOURCE_EXHAUSTED", "OK", "CANCELLED"):
        if latency[code]:
            print(f"{code} latency: p50 {pct(latency[code], 50):.1f} ms  "
                  f"p95 {pct(latency[code], 95):.1f} ms  p99 {pct(latency[code], 99):.1f} ms")
    bad = sum(v for k, v in health.items() if k != "SERVING")
    print(f"health probes: {sum(health.values())}, failed {bad}: {dict(health)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--factor", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pool", type=int, default=16, help="POTATO_POOL_MAX_SIZE")
    ap.add_argument("--src", type=Path, default=HERE, help="the server's source tree")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="potato-bench-overload-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=True)
    cluster.start()
    server = None
    try:
        asyncio.run(ensure_database(cluster.dsn("postgres"), "bench"))
        server, target = start(args.src, cluster.dsn("bench"), args.limit, args.pool)
        in_flight = round(args.limit * args.factor)
        print(f"server {target} ({args.src}), limit {args.limit}, pool {args.pool}, "
              f"{in_flight} calls in flight")
        asyncio.run(overload(target, in_flight, args.seconds))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
