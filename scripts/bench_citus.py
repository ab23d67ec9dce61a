#!/usr/bin/env python
"""Single PostgreSQL against the embedded Citus cluster, in one run (issue 10, figures).

Two deployments, both durable (fsync and synchronous_commit on), on this machine:

  single  one EmbeddedPostgres, the schema migrated;
  citus   an EmbeddedCitus: a coordinator and two workers on 127.0.0.1, the schema
          distributed by `migrate --citus` (storage/citus.py; --shard-count shards).

Each gets one `potato-runs serve --dsn <superuser dsn>` process (bench.py's `start`),
the server's own interpreter. Then:

1. Throughput: bench_ab.py's load (--concurrency calls in flight on one channel, random
   users of --users and random days of 2025), --calls per round, --rounds rounds per
   method, the two deployments alternating (and the order swapped every round); prints
   each round and the median calls/s per deployment for MarkDay and GetActiveRun, and
   the ratio citus/single.
2. Run-event delivery latency: one WatchRunEvents stream over all users (opened, and
   live, before the writes); --events MarkDay calls for fresh users (so each makes one
   event), --event-writers in flight; for each, the time from the client seeing the
   MarkDay acknowledged to the client receiving its event on the stream. A negative
   value is possible (the event came before the response) and is kept. Median, p95
   and max per deployment.

Three PostgreSQL servers on two cores measure Citus's overhead (the coordinator's
planning and routing, the hop to the worker, two-phase metadata), not its scale: every
node competes for the same cores as the single server alone has.

Usage: .venv/bin/python scripts/bench_citus.py [--calls 2000] [--rounds 5] [--events 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import grpc
from bench import start
from bench_ab import load
from bench_events import METADATA, TOKEN, pct

from potato.runs.v2 import run_events_service_pb2 as epb
from potato.runs.v2 import run_events_service_pb2_grpc, runs_service_pb2_grpc
from potato.runs.v2 import runs_service_pb2 as pb
from potato_runs.app import Migrator
from potato_runs.cli._common import ClientTls
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.embedded_citus import EmbeddedCitus, chmod_base
from potato_runs.storage.migrate import ensure_database

SERVER_ENV = {"POTATO_ADMIN_TOKEN": TOKEN, "POTATO_INVARIANT_CHECK_INTERVAL": "0",
              "POTATO_TOTALS_RECONCILE_AT": ""}
PLAIN = ClientTls(None, None, None, None)


def serve(dsn: str) -> tuple[subprocess.Popen[str], str]:
    return start(["-m", "potato_runs.cli", "serve", "--port", "0", "--dsn", dsn], SERVER_ENV)


async def delivery(target: str, dsn: str, events: int, writers: int) -> list[float]:
    """Seconds from each MarkDay's acknowledgement to its event on a live stream."""
    users = [str(uuid.uuid4()) for _ in range(events)]
    wanted = set(users)
    acked: dict[str, float] = {}
    arrived: dict[str, float] = {}
    conn = await asyncpg.connect(dsn)
    try:   # the stream starts at the newest event: nothing older is replayed
        after = int(await conn.fetchval("SELECT coalesce(max(event_id), 0) FROM run_events"))
    finally:
        await conn.close()
    probe = str(uuid.uuid4())
    live, all_in = asyncio.Event(), asyncio.Event()
    async with grpc.aio.insecure_channel(target) as ch:
        runs = runs_service_pb2_grpc.RunsServiceStub(ch)
        watch = run_events_service_pb2_grpc.RunEventsServiceStub(ch).WatchRunEvents(
            epb.WatchRunEventsRequest(after_event_id=after), metadata=METADATA)

        async def read() -> None:
            async for message in watch:
                user = message.event.user_id
                if user == probe:
                    live.set()
                elif user in wanted:
                    arrived.setdefault(user, time.perf_counter())
                    if len(arrived) == len(wanted):
                        all_in.set()
                        return

        reader = asyncio.ensure_future(read())
        # The stream is live once it delivered an event written after it opened.
        await runs.MarkDay(pb.MarkDayRequest(user_id=probe, local_date="2025-06-01",
                                             time_zone="UTC"), timeout=30)
        await asyncio.wait_for(live.wait(), 30)
        it = iter(users)

        async def writer() -> None:
            for user in it:
                await runs.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2025-06-01",
                                                     time_zone="UTC"), timeout=30)
                acked[user] = time.perf_counter()

        await asyncio.gather(*(writer() for _ in range(writers)))
        await asyncio.wait_for(all_in.wait(), 60)
        watch.cancel()
        reader.cancel()
    return [arrived[u] - acked[u] for u in users]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--event-writers", type=int, default=4)
    ap.add_argument("--shard-count", type=int, default=32)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="potato-bench-citus-"))
    chmod_base(base)
    single = EmbeddedPostgres(base / "single", fast_unsafe=False)
    citus = EmbeddedCitus(base / "citus", workers=2, fast_unsafe=False)
    procs: list[subprocess.Popen[str]] = []
    t_start = time.perf_counter()
    try:
        single.start()
        asyncio.run(ensure_database(single.dsn("postgres"), "bench"))
        t0 = time.perf_counter()
        citus.start()
        done = asyncio.run(Migrator(citus.dsn()).run(citus=True, shard_count=args.shard_count))
        setup = time.perf_counter() - t0
        sides: dict[str, str] = {}
        for name, dsn in (("single", single.dsn("bench")), ("citus", citus.dsn())):
            proc, target = serve(dsn)
            procs.append(proc)
            sides[name] = target
        print(f"durable (fsync on); {os.cpu_count()} cores; citus: coordinator + "
              f"{len(citus.workers)} workers, {args.shard_count} shards per table "
              f"(started and distributed in {setup:.1f} s, {len(done)} steps); "
              f"{args.calls} calls per round, {args.concurrency} in flight, "
              f"{args.users} users")
        users = [str(uuid.uuid4()) for _ in range(args.users)]
        medians: dict[tuple[str, str], float] = {}
        for method in ("MarkDay", "GetActiveRun"):
            got: dict[str, list[float]] = {k: [] for k in sides}
            for r in range(args.rounds):
                order = list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))
                for name, target in order:
                    got[name].append(asyncio.run(load(target, method, args.calls,
                                                      args.concurrency, users, r, PLAIN)))
            for name, values in got.items():
                medians[method, name] = statistics.median(values)
                print(f"{method:13s} {name:7s} " + "  ".join(f"{v:7.0f}" for v in values)
                      + f"   median {medians[method, name]:7.0f} calls/s")
            print(f"{method:13s} citus/single = "
                  f"{medians[method, 'citus'] / medians[method, 'single']:.3f}")
        dsns = {"single": single.dsn("bench"), "citus": citus.dsn()}
        for name, target in sides.items():
            lags = [s * 1000 for s in asyncio.run(delivery(target, dsns[name], args.events,
                                                           args.event_writers))]
            print(f"events {name:7s}: {len(lags)} events, ack -> stream median "
                  f"{statistics.median(lags):6.1f} ms, p95 {pct(lags, 95):6.1f} ms, "
                  f"max {max(lags):6.1f} ms ({args.event_writers} writers in flight)")
        print(f"total {time.perf_counter() - t_start:.0f} s")
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        citus.stop()
        single.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
