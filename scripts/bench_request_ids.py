#!/usr/bin/env python
"""MarkDay with and without an AIP-155 request_id, on one server, in one run.

Starts an embedded PostgreSQL (durable unless --fast) and `potato-runs serve --port 0`
as a separate process. Rounds alternate between the two variants with the same load
(new random days of 2025 for random users; each variant has its own users):
  - sequential: N calls one after another -> p50/p95 latency;
  - concurrent: N calls from C clients -> calls/s.
With a request_id every call carries a fresh UUID (generated before timing), so each one
looks its id up, writes and records it. A last round retries the recorded ids (replays).
Server-side time per write function comes from pg_stat_user_functions (track_functions).

Usage: .venv/bin/python scripts/bench_request_ids.py [--calls 2000] [--rounds 3]
       [--concurrency 16] [--fast]
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
import grpc

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database

START = dt.date(2025, 1, 1)


def requests(n: int, users: int, rng: random.Random,
             with_id: bool) -> list[pb.MarkDayRequest]:
    ids = [str(uuid.uuid4()) for _ in range(users)]
    out = []
    for _ in range(n):
        day = START + dt.timedelta(days=rng.randrange(365))
        req = pb.MarkDayRequest(user_id=rng.choice(ids), local_date=day.isoformat(),
                                time_zone="America/New_York")
        if with_id:
            req.request_id = str(uuid.uuid4())
        out.append(req)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def sequential(stub: runs_service_pb2_grpc.RunsServiceStub,
                     reqs: list[pb.MarkDayRequest]) -> list[float]:
    lat = []
    for r in reqs:
        t0 = time.perf_counter()
        await stub.MarkDay(r, timeout=10)
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


async def concurrent(stub: runs_service_pb2_grpc.RunsServiceStub,
                     reqs: list[pb.MarkDayRequest], clients: int) -> float:
    queue = iter(reqs)

    async def worker() -> None:
        for r in queue:
            await stub.MarkDay(r, timeout=10)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return len(reqs) / (time.perf_counter() - t0)


async def bench(target: str, calls: int, rounds: int, clients: int) -> list[pb.MarkDayRequest]:
    rng = random.Random(7)
    seq: dict[bool, list[float]] = {False: [], True: []}
    tput: dict[bool, list[float]] = {False: [], True: []}
    replayable: list[pb.MarkDayRequest] = []
    async with grpc.aio.insecure_channel(target) as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        for with_id in (False, True):   # warm-up, both variants
            await sequential(stub, requests(200, 50, rng, with_id))
        for n in range(rounds):
            for with_id in ((False, True) if n % 2 == 0 else (True, False)):
                reqs = requests(calls, 200, rng, with_id)
                seq[with_id] += await sequential(stub, reqs)
                if with_id:
                    replayable += reqs
                many = requests(calls, 2000, rng, with_id)
                tput[with_id].append(await concurrent(stub, many, clients))
        for with_id in (False, True):
            label = "with request_id   " if with_id else "without request_id"
            lat = seq[with_id]
            print(f"MarkDay {label}: sequential {len(lat)} calls  p50 {pct(lat, 50):.3f} ms  "
                  f"p95 {pct(lat, 95):.3f} ms  mean {statistics.mean(lat):.3f} ms | "
                  f"concurrent ({clients} clients) median "
                  f"{statistics.median(tput[with_id]):.0f} calls/s "
                  f"(rounds: {', '.join(f'{x:.0f}' for x in tput[with_id])})")
        sample = replayable[:calls]
        lat = await sequential(stub, sample)
        print(f"MarkDay replays (same request_id again): {len(lat)} calls  "
              f"p50 {pct(lat, 50):.3f} ms  p95 {pct(lat, 95):.3f} ms")
    return replayable


MARK = "SELECT potato_mark_day($1, $2, NULL, 'America/New_York', '', now(), NULL)"
MARK_ONCE = ("SELECT potato_mark_day_once($1, $2, NULL, 'America/New_York', '', now(), NULL, "
             "$3, $4)")


async def sql_level(dsn: str, calls: int) -> None:
    """The write call alone on one connection (round trip + function + commit), calls
    with and without a request id alternating, each on a new user and day: the database
    cost of a request id without gRPC in the way."""
    conn = await asyncpg.connect(dsn)
    rng = random.Random(11)
    lat: dict[bool, list[float]] = {False: [], True: []}
    plain, once = await conn.prepare(MARK), await conn.prepare(MARK_ONCE)
    for i in range(calls * 2):
        with_id = i % 2 == 1
        user = uuid.uuid4()
        day = START + dt.timedelta(days=rng.randrange(365))
        t0 = time.perf_counter()
        if with_id:
            await once.fetchval(user, day, uuid.uuid4(), os.urandom(32))
        else:
            await plain.fetchval(user, day)
        lat[with_id].append((time.perf_counter() - t0) * 1000)
    await conn.close()
    for with_id in (False, True):
        name = "potato_mark_day_once" if with_id else "potato_mark_day     "
        v = lat[with_id]
        print(f"SQL {name}: {len(v)} calls  p50 {pct(v, 50) * 1000:.0f} us  "
              f"p95 {pct(v, 95) * 1000:.0f} us  mean {statistics.mean(v) * 1000:.0f} us")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--fast", action="store_true", help="fsync off (like the test suite)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="potato-bench-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=args.fast)
    cluster.start()
    dsn = cluster.dsn("bench")

    async def prepare() -> None:
        await ensure_database(cluster.dsn("postgres"), "bench")
        conn = await asyncpg.connect(cluster.dsn("postgres"))
        await conn.execute("ALTER DATABASE bench SET track_functions = 'pl'")
        await conn.close()

    asyncio.run(prepare())
    exe = str(Path(sys.executable).parent / "potato-runs")
    env = {**os.environ, "POTATO_ADMIN_TOKEN": uuid.uuid4().hex,
           "POTATO_INVARIANT_CHECK_INTERVAL": "0"}
    server = subprocess.Popen([exe, "serve", "--port", "0", "--dsn", dsn],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        target = line.split(" on ")[1].split()[0]
        print(f"server: {target}  postgres: {'fsync off' if args.fast else 'durable (fsync on)'}"
              f"  calls per round and variant: {args.calls}, rounds: {args.rounds}")
        asyncio.run(bench(target, args.calls, args.rounds, args.concurrency))

        async def server_side() -> None:
            conn = await asyncpg.connect(dsn)
            rows = {r["funcname"]: r for r in await conn.fetch(
                "SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions "
                "WHERE funcname IN ('potato_mark_day', 'potato_mark_day_once', "
                "'potato_request_replay', 'potato_request_record')")}
            n = await conn.fetchval("SELECT count(*) FROM request_ids")
            await conn.close()
            for name, r in sorted(rows.items()):
                print(f"server time {name}: {r['calls']} calls, mean "
                      f"{r['total_time'] / r['calls'] * 1000:.0f} us (nested calls included)")
            once = rows.get("potato_mark_day_once")
            if once is not None:
                # What request ids add to one call: the wrapper's own time, the lookup and
                # the record (the write itself is the nested potato_mark_day).
                extra = once["self_time"] + sum(rows[f]["total_time"] for f in (
                    "potato_request_replay", "potato_request_record") if f in rows)
                print(f"server time in the request_id steps: {extra / once['calls'] * 1000:.0f} "
                      f"us per call (wrapper + lookup + record, replays included; the wrapper "
                      f"takes the user's lock first, so waits for it count here under load)")
            print(f"rows: {n} request ids recorded")

        asyncio.run(server_side())
        asyncio.run(sql_level(dsn, args.calls * args.rounds))
    finally:
        server.terminate()
        server.wait(10)
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
