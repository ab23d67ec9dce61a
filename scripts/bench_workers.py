#!/usr/bin/env python
"""`serve --workers N` side by side: one server per N (default 1 and 2), on one throwaway
embedded PostgreSQL (fsync on), the same load on each, rounds alternating the servers.

The load is what multi-process serving needs to show anything: `--channels` channels,
each its own TCP connection (the kernel spreads connections over the workers, never the
calls of one connection), `--concurrency` calls in flight spread over them (scripts/bench.py
does the same with `--channels N`, beside the bare server and the echo). Per server and method it prints
the median calls/s and p95 over rounds, and CPU µs per call of the whole process tree
(supervisor and workers; utime+stime from /proc) and of PostgreSQL.

  .venv/bin/python scripts/bench_workers.py                  # about a minute on 2 cores
  .venv/bin/python scripts/bench_workers.py --workers 1,2,4 --channels 16
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
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncpg
import grpc

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as pb_grpc
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database, migrate

SRC = Path(__file__).resolve().parents[1] / "src"


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and every process below it (live ones)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf(
                "SC_CLK_TCK")
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        total += times.get(pid, 0.0)
        frontier += [p for p, parent in parents.items() if parent == pid]
    return total


def requests(method: str, calls: int, users: list[str], seed: int) -> list[Any]:
    rng = random.Random(seed)
    if method == "MarkDay":
        return [pb.MarkDayRequest(user_id=rng.choice(users), time_zone="America/New_York",
                                  local_date=(dt.date(2025, 1, 1) + dt.timedelta(
                                      days=rng.randrange(365))).isoformat())
                for _ in range(calls)]
    return [pb.GetActiveRunRequest(user_id=rng.choice(users)) for _ in range(calls)]


async def load(target: str, method: str, reqs: list[Any], channels: int, concurrency: int,
               pid: int, postmaster: int) -> tuple[float, float, float, float]:
    """(calls/s, p95 ms, server CPU µs/call, PostgreSQL CPU µs/call)."""
    chans = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    try:
        fns = [getattr(pb_grpc.RunsServiceStub(ch), method) for ch in chans]
        for fn in fns:   # every connection is up before the clock starts
            await fn(reqs[0], timeout=30)
        it = iter(reqs)
        latencies: list[float] = []

        async def caller(i: int) -> None:
            fn = fns[i % channels]
            for r in it:
                t0 = time.perf_counter()
                await fn(r, timeout=30)
                latencies.append((time.perf_counter() - t0) * 1000)

        cpu0, db0, t0 = tree_cpu(pid), tree_cpu(postmaster), time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - t0
        cpu, db = tree_cpu(pid) - cpu0, tree_cpu(postmaster) - db0
        latencies.sort()
        return (len(reqs) / elapsed, latencies[int(0.95 * len(latencies))],
                cpu / len(reqs) * 1e6, db / len(reqs) * 1e6)
    finally:
        for ch in chans:
            await ch.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--calls", type=int, default=4000, help="calls per round")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=32, help="calls in flight in all")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=10_000)
    args = ap.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    base = Path(tempfile.mkdtemp(prefix="potato-bench-workers-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg")
    cluster.start()
    servers: dict[int, tuple[subprocess.Popen[str], str]] = {}
    try:
        for n in counts:
            asyncio.run(ensure_database(cluster.dsn("postgres"), f"bench_w{n}"))

            async def prepare(name: str) -> None:
                conn = await asyncpg.connect(cluster.dsn(name))
                try:
                    await migrate(conn)
                finally:
                    await conn.close()

            asyncio.run(prepare(f"bench_w{n}"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "potato_runs.cli", "serve", "--port", "0", "--dsn",
                 cluster.dsn(f"bench_w{n}"), "--workers", str(n)], stdout=subprocess.PIPE,
                text=True, env={**os.environ, "PYTHONPATH": str(SRC),
                                "POTATO_ADMIN_TOKEN": uuid.uuid4().hex,
                                "POTATO_INVARIANT_CHECK_INTERVAL": "0",
                                "POTATO_LOG_LEVEL": "ERROR"})
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "serving on" in line, line
            servers[n] = (proc, line.split(" on ")[1].split()[0])
        postmaster = int((cluster.data_dir / "data" / "postmaster.pid").read_text().split()[0])
        users = [str(uuid.uuid4()) for _ in range(args.users)]
        print(f"postgres: fsync on; {os.cpu_count()} cores; {args.rounds} rounds of "
              f"{args.calls} calls, {args.concurrency} in flight over {args.channels} "
              f"connections", flush=True)
        results: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
        for method in ("MarkDay", "GetActiveRun"):
            for r in range(args.rounds):
                reqs = requests(method, args.calls, users, seed=r)
                for n in counts if r % 2 == 0 else counts[::-1]:
                    proc, target = servers[n]
                    results.setdefault((method, n), []).append(asyncio.run(load(
                        target, method, reqs, args.channels, args.concurrency, proc.pid,
                        postmaster)))
        med = statistics.median
        print(f"\n{'method':13s} {'workers':>7s} {'calls/s':>8s} {'p95 ms':>7s} "
              f"{'CPU µs/call':>11s} {'DB µs/call':>10s}   calls/s per round")
        for (method, n), got in results.items():
            print(f"{method:13s} {n:7d} {med(g[0] for g in got):8.0f} "
                  f"{med(g[1] for g in got):7.1f} {med(g[2] for g in got):11.0f} "
                  f"{med(g[3] for g in got):10.0f}   " + " ".join(f"{g[0]:.0f}" for g in got))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
