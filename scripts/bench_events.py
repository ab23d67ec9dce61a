#!/usr/bin/env python
"""The run event stream under write load: delivery rate to one watcher, and its lag.

One embedded PostgreSQL (fsync off unless --durable), one `potato-runs serve` process
(its own interpreter: the clients here do not share its GIL), W writers calling MarkDay
on random users and days for --seconds, and one WatchRunEvents stream over all users
opened before the writes start. Prints, per round:

- events written per second (rows of run_events in the window) and delivered per second
  to the watcher (the same events, counted until the last one arrives);
- the lag of each event: receipt time minus its event_time (the write's start on the
  server's clock, so it includes the write itself), p50 / p95 / p99 / max;
- whether the watcher got exactly the table's ids, in order.

First (before any stream, so the server's tail is not running) why no trigger notifies:
MarkDay calls/s with a per-row NOTIFY trigger on run_events (the first design, created
for the round and dropped after it) and without (the shipped design: the server's
after-commit EventNotifier), rounds alternating; the watched rounds' MarkDay/s, compared
with "without", give what one watcher (the server's tail reads and the stream) costs the
writers.

Usage: .venv/bin/python scripts/bench_events.py [--writers 16] [--seconds 10] [--rounds 3]
       [--durable]
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

from potato.runs.v2 import run_events_service_pb2 as epb
from potato.runs.v2 import run_events_service_pb2_grpc, runs_service_pb2_grpc
from potato.runs.v2 import runs_service_pb2 as pb
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database, migrate

TOKEN = "bench-admin-token-0123456789"
METADATA = (("authorization", f"Bearer {TOKEN}"),)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def write_load(target: str, writers: int, seconds: float, users: list[str],
                     seed: int) -> int:
    rng = random.Random(seed)
    stop_at = time.monotonic() + seconds
    calls = 0
    async with grpc.aio.insecure_channel(target) as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)

        async def worker() -> None:
            nonlocal calls
            while time.monotonic() < stop_at:
                day = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(600))
                await stub.MarkDay(pb.MarkDayRequest(user_id=rng.choice(users),
                                                     local_date=day.isoformat(),
                                                     time_zone="UTC"), timeout=30)
                calls += 1

        await asyncio.gather(*(worker() for _ in range(writers)))
    return calls


async def watched_round(target: str, dsn: str, writers: int, seconds: float,
                        users: list[str], seed: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        start = int(await conn.fetchval("SELECT coalesce(max(event_id), 0) FROM run_events"))
        got: list[int] = []
        lags: list[float] = []
        async with grpc.aio.insecure_channel(target) as ch:
            stub = run_events_service_pb2_grpc.RunEventsServiceStub(ch)
            call = stub.WatchRunEvents(epb.WatchRunEventsRequest(after_event_id=start),
                                       metadata=METADATA)
            done_writing = asyncio.Event()
            expected: list[int] = []

            async def read() -> None:
                async for message in call:
                    now = time.time()
                    event = message.event
                    got.append(event.event_id)
                    lags.append(now - event.event_time.ToDatetime(dt.UTC).timestamp())
                    if done_writing.is_set() and len(got) >= len(expected):
                        return

            reader = asyncio.ensure_future(read())
            await asyncio.sleep(0.2)   # the stream is open and live before the writes
            t0 = time.perf_counter()
            calls = await write_load(target, writers, seconds, users, seed)
            t_write = time.perf_counter() - t0
            expected = [r[0] for r in await conn.fetch(
                "SELECT event_id FROM run_events WHERE event_id > $1 ORDER BY event_id",
                start)]
            done_writing.set()
            if len(got) < len(expected):
                try:
                    await asyncio.wait_for(reader, 60)
                except TimeoutError:
                    missing = sorted(set(expected) - set(got))[:5]
                    print("STALL", len(got), len(expected), got[-3:], missing)
                    for row in await conn.fetch(
                            "SELECT pid, application_name, state, backend_xid, backend_xmin, "
                            "now() - xact_start AS age, left(query, 80) AS q "
                            "FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
                            "OR backend_xmin IS NOT NULL"):
                        print("  ", dict(row))
                    raise
            t_read = time.perf_counter() - t0
            call.cancel()
            reader.cancel()
        exact = got[:len(expected)] == expected
        print(f"writers {writers:3d}: {calls / t_write:7.0f} MarkDay/s, "
              f"{len(expected) / t_write:7.0f} events/s written, "
              f"{len(got) / t_read:7.0f} events/s delivered ({len(got)} of {len(expected)}, "
              f"{'exact, in order' if exact else 'MISMATCH'}); lag p50 "
              f"{pct(lags, 50) * 1000:6.1f} ms, p95 {pct(lags, 95) * 1000:6.1f} ms, "
              f"p99 {pct(lags, 99) * 1000:6.1f} ms, max {max(lags) * 1000:6.1f} ms")
    finally:
        await conn.close()


async def notify_cost(target: str, dsn: str, writers: int, seconds: float,
                      users: list[str], rounds: int) -> None:
    conn = await asyncpg.connect(dsn)
    got: dict[str, list[float]] = {"row trigger": [], "without": []}
    try:
        await conn.execute(ROW_TRIGGER_FUNCTION)
        for r in range(rounds):
            order = ["row trigger", "without"] if r % 2 == 0 else ["without", "row trigger"]
            for state in order:
                if state == "row trigger":
                    await conn.execute(ROW_TRIGGER)
                t0 = time.perf_counter()
                calls = await write_load(target, writers, seconds, users, 1000 + r)
                got[state].append(calls / (time.perf_counter() - t0))
                await conn.execute("DROP TRIGGER IF EXISTS bench_row_notify ON run_events")
    finally:
        await conn.execute("DROP TRIGGER IF EXISTS bench_row_notify ON run_events")
        await conn.execute("DROP FUNCTION IF EXISTS bench_row_notify()")
        await conn.close()
    for state, values in got.items():
        print(f"NOTIFY {state:11s}: " + "  ".join(f"{v:6.0f}" for v in values)
              + f"   median {statistics.median(values):6.0f} MarkDay/s (no watcher)")


ROW_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_row_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('potato_run_events', NEW.user_id::text); RETURN NULL; END $$"""
ROW_TRIGGER = """CREATE TRIGGER bench_row_notify AFTER INSERT ON run_events
    FOR EACH ROW EXECUTE FUNCTION bench_row_notify()"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--durable", action="store_true", help="fsync and synchronous_commit on")
    ap.add_argument("--server-log", type=Path, help="the server's stderr to this file")
    ap.add_argument("--skip-notify-cost", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="potato-bench-events-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=not args.durable)
    cluster.start()
    server = None
    try:
        dsn = cluster.dsn("bench_events")

        async def prepare() -> None:
            await ensure_database(cluster.dsn("postgres"), "bench_events")
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
            finally:
                await conn.close()

        asyncio.run(prepare())
        env = {**os.environ, "POTATO_ADMIN_TOKEN": TOKEN, "POTATO_INVARIANT_CHECK_INTERVAL": "0",
               "POTATO_TOTALS_RECONCILE_AT": "", "POTATO_LOG_LEVEL": "INFO"}
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "potato-runs"), "serve", "--port", "0",
             "--dsn", dsn], stdout=subprocess.PIPE, text=True, env=env,
            stderr=args.server_log.open("w") if args.server_log else subprocess.DEVNULL)
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "serving on" in line, line
        target = line.split(" on ")[1].split()[0]
        users = [str(uuid.uuid4()) for _ in range(args.users)]
        print(f"{'durable' if args.durable else 'fsync off'}; one watcher over all users; "
              f"{args.seconds:.0f} s of MarkDay per round")
        # First, before any stream (the server's tail has never started): the trigger alone.
        if not args.skip_notify_cost:
            asyncio.run(notify_cost(target, dsn, args.writers, args.seconds, users,
                                    args.rounds))
        for r in range(args.rounds):
            asyncio.run(watched_round(target, dsn, args.writers, args.seconds, users, r))
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
