#!/usr/bin/env python
"""Side by side: the project server, a bare reference server and a gRPC echo, in one run.

One throwaway embedded PostgreSQL with fsync on (unless --fast), one database per
database-backed server, and three servers as separate processes:

  project  `python -m potato_runs.cli serve --port 0 --dsn <db>`, as users start it
  bare     grpc.aio + asyncpg (this file, `--serve-bare <dsn>`): MarkDay makes the same
           single `SELECT potato_mark_day($1..$7)` the project makes and turns its jsonb
           into the response; GetActiveRun makes the project's single read. No
           validation, no telemetry, the default asyncio loop.
  echo     the transport floor (this file, `--serve-echo asyncio`; `echo-uv` is the same
           on uvloop, the project's loop, measured on GetActiveRun): a generic handler on
           GetActiveRun, ListRuns and GetTotals returning a fixed, pre-serialized
           response of the right type (a real response of the project's, taken after the
           MarkDay rounds, so the bytes on the wire are the same size).

The load is the same for every server: --concurrency calls in flight on one channel
(--channels spreads them over several connections, for a group of workers),
--users users, random days of 2025; the rounds alternate the order of the servers.
Per method and server it prints the median over rounds of throughput, p50/p95/p99
latency, the server process's CPU µs per call (utime+stime from /proc over the round)
and the database's (the postmaster and all its children), then the ratios that count on
a noisy machine: MarkDay project/bare, and GetActiveRun, ListRuns and GetTotals
project/echo. Then flat reads: the same three reads for --history-users users with 100
and with 3,650 check-ins (written set-based as the owner), long/short. Last, each
server's resident memory (peak and now).

GetTotals reads the stored totals (ff.potato.totals_v2 at 100 %, set through the CLI):
the end state of the cutover; `--totals computed` keeps the flag off.

  .venv/bin/python scripts/bench.py                 # defaults: about two and a half minutes on 2 cores
  .venv/bin/python scripts/bench.py --calls 10000 --rounds 5
  .venv/bin/python scripts/bench.py --project-args "--workers 2"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from potato.runs.v2 import run_pb2, runs_service_pb2_grpc, totals_service_pb2_grpc
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import totals_service_pb2 as tpb
from potato_runs.cli._common import ClientTls, add_tls_arguments, client_tls, open_aio_channel
from potato_runs.event_loop import run as run_loop
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database, migrate
from potato_runs.storage.runs_repo import ACTIVE_SQL  # the bare server makes the project's read

SRC = Path(__file__).resolve().parents[1] / "src"
READS = ("GetActiveRun", "ListRuns", "GetTotals")
SERVICE = {"MarkDay": "potato.runs.v2.RunsService", "GetActiveRun": "potato.runs.v2.RunsService",
           "ListRuns": "potato.runs.v2.RunsService", "GetTotals": "potato.runs.v2.TotalsService"}

# --- the bare reference server -------------------------------------------------------

CHANGE = {"none": run_pb2.RUN_CHANGE_NONE, "created": run_pb2.RUN_CHANGE_CREATED,
          "extended": run_pb2.RUN_CHANGE_EXTENDED, "merged": run_pb2.RUN_CHANGE_MERGED}
def _stamp(value: Any) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value))
    return ts


def _run(user_id: str, r: Any) -> run_pb2.Run:
    start, end = str(r["start_date"]), str(r["end_date"])
    count = r.get("day_count") if isinstance(r, dict) else r["day_count"]
    if count is None:
        count = (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days + 1
    return run_pb2.Run(user_id=user_id, start_date=start, end_date=end, day_count=int(count),
                       active=bool(r["active"]), create_time=_stamp(r["created_at"]),
                       update_time=_stamp(r["updated_at"]),
                       last_extend_time=_stamp(r["last_extended_at"]))


async def serve_bare(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=16)

    class Bare(runs_service_pb2_grpc.RunsServiceServicer):
        async def MarkDay(self, request: pb.MarkDayRequest,
                          context: grpc.aio.ServicerContext) -> pb.MarkDayResponse:
            async with pool.acquire() as conn:
                raw = await conn.fetchval(
                    "SELECT potato_mark_day($1, $2, $3, $4, $5, $6, $7)",
                    uuid.UUID(request.user_id), dt.date.fromisoformat(request.local_date), None,
                    request.time_zone, request.source or "api",
                    dt.datetime.now(dt.UTC), request.request_id or None)
            res = json.loads(raw)
            return pb.MarkDayResponse(run=_run(request.user_id, res["run"]),
                                      local_date=str(res["local_date"]),
                                      change=CHANGE.get(res["change"], 0),
                                      time_zone=str(res["time_zone"]))

        async def GetActiveRun(self, request: pb.GetActiveRunRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetActiveRunResponse:
            async with pool.acquire() as conn:
                rec = await conn.fetchrow(ACTIVE_SQL, uuid.UUID(request.user_id))
            return pb.GetActiveRunResponse(
                run=_run(request.user_id, rec) if rec["has_run"] else None,
                time_zone=rec["time_zone"] or "")

    server = grpc.aio.server()
    runs_service_pb2_grpc.add_RunsServiceServicer_to_server(Bare(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"serving on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


# --- the echo (transport floor) ------------------------------------------------------

async def serve_echo(responses: dict[str, bytes]) -> None:
    def fixed(payload: bytes) -> grpc.RpcMethodHandler:
        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return payload
        return grpc.unary_unary_rpc_method_handler(handler)   # raw bytes in and out

    server = grpc.aio.server()
    for service in sorted({SERVICE[m] for m in responses}):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {m: fixed(b) for m, b in responses.items() if SERVICE[m] == service}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"serving on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


# --- the driver ----------------------------------------------------------------------

def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == parent:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` and of its live child processes: the workers of a `serve
    --workers N` group (a lone server has none), the backends and helpers of a
    PostgreSQL postmaster (those that ended during a round are not counted; the pools
    keep theirs)."""
    pids = [pid, *_children(pid)]
    total = 0
    for p in pids:
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def start(argv: list[str], env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "GRPC_ENABLE_FORK_SUPPORT": "false",
           **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving on" in line, line
    return proc, line.split(" on ")[1].split()[0]


def requests(method: str, calls: int, users: list[str], seed: int) -> list[Any]:
    rng = random.Random(seed)
    if method == "MarkDay":
        return [pb.MarkDayRequest(
            user_id=rng.choice(users), time_zone="America/New_York",
            local_date=(dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(365))).isoformat())
            for _ in range(calls)]
    if method == "GetActiveRun":
        return [pb.GetActiveRunRequest(user_id=rng.choice(users)) for _ in range(calls)]
    if method == "ListRuns":
        return [pb.ListRunsRequest(user_id=rng.choice(users), page_size=10) for _ in range(calls)]
    return [tpb.GetTotalsRequest(user_id=rng.choice(users)) for _ in range(calls)]


def stub_method(ch: grpc.aio.Channel, method: str) -> Callable[..., Awaitable[Any]]:
    stub: Any = (totals_service_pb2_grpc.TotalsServiceStub(ch) if method == "GetTotals"
                 else runs_service_pb2_grpc.RunsServiceStub(ch))
    return getattr(stub, method)  # type: ignore[no-any-return]


async def load(target: str, method: str, reqs: list[Any], concurrency: int, pid: int,
               tls: ClientTls, postmaster: int,
               channels: int = 1) -> tuple[float, float, float, list[float]]:
    """(calls/s, server CPU µs per call, database CPU µs per call, latencies in ms).
    The calls in flight are spread over `channels` channels (each its own connection:
    the kernel spreads connections, not calls, over the workers of a group)."""
    async with contextlib.AsyncExitStack() as stack:
        chans = [await stack.enter_async_context(
            open_aio_channel(target, tls, options=(("grpc.use_local_subchannel_pool", 1),)))
            for _ in range(channels)]
        fns = [stub_method(ch, method) for ch in chans]
        for fn in fns:
            await fn(reqs[0], timeout=30)   # connected before the clock starts
        it = iter(reqs)
        latencies: list[float] = []

        async def worker(fn: Callable[..., Awaitable[Any]]) -> None:
            for r in it:
                t0 = time.perf_counter()
                await fn(r, timeout=30)
                latencies.append((time.perf_counter() - t0) * 1000)

        db0, cpu0, t0 = cpu_seconds(postmaster), cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(worker(fns[i % channels]) for i in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        db = cpu_seconds(postmaster) - db0
        return len(reqs) / elapsed, cpu / len(reqs) * 1e6, db / len(reqs) * 1e6, latencies


async def sample_responses(target: str, users: list[str], tls: ClientTls) -> dict[str, bytes]:
    """The project's responses for the user with the most runs: what the echo returns."""
    async with open_aio_channel(target, tls, options=()) as ch:
        best: tuple[int, str] = (-1, users[0])
        for u in users[:200]:
            page = await stub_method(ch, "ListRuns")(pb.ListRunsRequest(user_id=u, page_size=10))
            best = max(best, (len(page.runs), u))
        out = {}
        for m in READS:
            resp = await stub_method(ch, m)(requests(m, 1, [best[1]], 0)[0], timeout=30)
            out[m] = resp.SerializeToString()
        return out


HISTORY_SQL = """
    WITH u AS (SELECT unnest($1::uuid[]) AS user_id)
    INSERT INTO daily_checkins (user_id, checkin_date, time_zone, source)
    SELECT u.user_id, DATE '2025-01-01' + g, 'UTC', 'bench'
      FROM u, generate_series(0, $2::int * 7 / 6) g
     WHERE g % 7 <> 6"""
RUNS_SQL = """
    INSERT INTO runs (user_id, start_date, end_date, day_count, active)
    SELECT user_id, min(checkin_date), max(checkin_date), count(*)::int,
           max(checkin_date) = max(max(checkin_date)) OVER (PARTITION BY user_id)
      FROM (SELECT user_id, checkin_date,
                   checkin_date - (row_number() OVER (PARTITION BY user_id
                                                      ORDER BY checkin_date))::int AS grp
              FROM daily_checkins WHERE user_id = ANY($1::uuid[])) c
     GROUP BY user_id, grp"""


async def seed_history(dsn: str, cohorts: dict[int, list[str]]) -> None:
    """Users with `days` check-ins each (six days on, one off: a run a week), their runs
    and stored totals, written set-based as the owner (not through the write path: a
    history of 3,650 days reaches past today, which MarkDay refuses)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for days, users in cohorts.items():
                ids = [uuid.UUID(u) for u in users]
                await conn.execute("INSERT INTO users (user_id, time_zone) "
                                   "SELECT unnest($1::uuid[]), 'UTC'", ids)
                await conn.execute(HISTORY_SQL, ids, days)
                await conn.execute(RUNS_SQL, ids)
                await conn.execute(
                    "INSERT INTO user_totals SELECT user_id, total_days, run_count, "
                    "longest_run_days, now() FROM potato_computed_user_totals($1)", ids)
                await conn.execute(
                    "INSERT INTO run_totals SELECT user_id, yyyymm, streak_days, total_days, "
                    "now() FROM potato_computed_month_totals($1)", ids)
        # Settled before the rounds: no autovacuum of the new rows counted in them.
        await conn.execute("VACUUM (ANALYZE) daily_checkins, runs, users, user_totals, "
                           "run_totals")
    finally:
        await conn.close()


def rss_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident set in MB (VmHWM, VmRSS) of the largest process among
    `pid` and its children (a group's workers: each is its own Python)."""
    best = (0.0, 0.0)
    for p in [pid, *_children(pid)]:
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        best = max(best, (int(fields["VmHWM"].split()[0]) / 1024,
                          int(fields["VmRSS"].split()[0]) / 1024))
    return best


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000, help="calls per round")
    ap.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--channels", type=int, default=1,
                    help="channels (connections) the calls in flight are spread over; more "
                         "than one to load every worker of `--project-args '--workers N'`")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--fast", action="store_true", help="fsync off (not the reference figures)")
    ap.add_argument("--history", default="100,3650", metavar="SHORT,LONG",
                    help="check-ins per user of the two cohorts whose reads are compared "
                         "(flat reads); empty skips it")
    ap.add_argument("--history-users", type=int, default=200, help="users per cohort")
    ap.add_argument("--totals", choices=("stored", "computed"), default="stored",
                    help="GetTotals path of the project: stored (ff.potato.totals_v2 at 100 %%, "
                         "the end of the cutover) or computed (the flag off)")
    ap.add_argument("--project-args", default="", metavar="ARGS",
                    help="extra arguments for the project's `serve`, e.g. '--workers 2'")
    ap.add_argument("--serve-bare", metavar="DSN", help=argparse.SUPPRESS)
    ap.add_argument("--serve-echo", choices=("asyncio", "uvloop"), help=argparse.SUPPRESS)
    add_tls_arguments(ap)
    args = ap.parse_args()
    if args.serve_bare:
        asyncio.run(serve_bare(args.serve_bare))
        return
    if args.serve_echo:
        payloads = json.loads(sys.stdin.readline())
        run_loop(serve_echo({m: bytes.fromhex(h) for m, h in payloads.items()}), args.serve_echo)
        return
    tls = client_tls(args)
    base = Path(tempfile.mkdtemp(prefix="potato-bench-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=args.fast)
    cluster.start()
    procs: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        for name in ("project", "bare"):
            asyncio.run(ensure_database(cluster.dsn("postgres"), f"bench_{name}"))

        async def migrate_bare() -> None:
            conn = await asyncpg.connect(cluster.dsn("bench_bare"))
            try:
                await migrate(conn)
            finally:
                await conn.close()

        asyncio.run(migrate_bare())
        admin_token = uuid.uuid4().hex
        procs["project"] = start(
            ["-m", "potato_runs.cli", "serve", "--port", "0", "--dsn", cluster.dsn("bench_project"),
             *shlex.split(args.project_args)],
            {"POTATO_ADMIN_TOKEN": admin_token, "POTATO_INVARIANT_CHECK_INTERVAL": "0",
             "POTATO_LOG_LEVEL": "WARNING"})
        procs["bare"] = start([__file__, "--serve-bare", cluster.dsn("bench_bare")])
        if args.totals == "stored":
            subprocess.run([sys.executable, "-m", "potato_runs.cli", "flags", "set",
                            "ff.potato.totals_v2", "--enable", "--rollout", "100",
                            "--reason", "benchmark: the end state of the cutover",
                            "--target", procs["project"][1]], check=True,
                           stdout=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONPATH": str(SRC),
                                "POTATO_ADMIN_TOKEN": admin_token})
        users = [str(uuid.uuid4()) for _ in range(args.users)]
        postmaster = int((cluster.data_dir / "data" / "postmaster.pid").read_text().split()[0])
        print(f"postgres: {'fsync off' if args.fast else 'fsync on'}; {args.rounds} rounds of "
              f"{args.calls} calls, {args.concurrency} in flight on {args.channels} channel(s); "
              f"{args.users} users, random days of 2025; GetTotals {args.totals}; "
              f"project: serve {args.project_args or '(defaults)'}", flush=True)
        results: dict[tuple[str, str], dict[str, list[float]]] = {}

        def rounds(method: str, servers: list[str],
                   cohort: dict[str, list[str]] | None = None) -> None:
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for name in order:
                    who = (cohort or {}).get(name, users)
                    reqs = requests(method, args.calls, who, seed=r * 7 + len(method))
                    proc, target = procs[name.split("@")[0]]
                    rate, cpu, db, lat = asyncio.run(load(target, method, reqs,
                                                          args.concurrency, proc.pid, tls,
                                                          postmaster, args.channels))
                    got = results.setdefault((method, name), {"rate": [], "cpu": [], "db": [],
                                                              "p50": [], "p95": [], "p99": []})
                    got["rate"].append(rate)
                    got["cpu"].append(cpu)
                    got["db"].append(db)
                    for q in (50, 95, 99):
                        got[f"p{q}"].append(pct(lat, q / 100))

        rounds("MarkDay", ["project", "bare"])
        samples = asyncio.run(sample_responses(procs["project"][1], users, tls))
        for name, loop in (("echo", "asyncio"), ("echo-uv", "uvloop")):
            echo = subprocess.Popen([sys.executable, __file__, "--serve-echo", loop],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONPATH": str(SRC)})
            assert echo.stdin is not None and echo.stdout is not None
            echo.stdin.write(json.dumps({m: b.hex() for m, b in samples.items()}) + "\n")
            echo.stdin.flush()
            line = echo.stdout.readline()
            assert "serving on" in line, line
            procs[name] = (echo, line.split(" on ")[1].split()[0])
        print("echo responses (bytes): " + ", ".join(f"{m} {len(b)}" for m, b in samples.items()))
        rounds("GetActiveRun", ["project", "bare", "echo", "echo-uv"])
        rounds("ListRuns", ["project", "echo"])
        rounds("GetTotals", ["project", "echo"])
        cohorts: dict[str, list[str]] = {}
        if args.history:
            short, long = (int(x) for x in args.history.split(","))
            cohorts = {f"project@{d}": [str(uuid.uuid4()) for _ in range(args.history_users)]
                       for d in (short, long)}
            asyncio.run(seed_history(cluster.dsn("bench_project"),
                                     {int(k.split("@")[1]): v for k, v in cohorts.items()}))
            for m in READS:
                rounds(m, list(cohorts), cohorts)
        rss = {name: rss_mb(proc.pid) for name, (proc, _) in procs.items()}

        med = statistics.median
        print()
        print(f"{'method':13s} {'server':8s} {'calls/s':>8s} {'p50 ms':>7s} {'p95 ms':>7s} "
              f"{'p99 ms':>7s} {'CPU µs/call':>11s} {'DB µs/call':>10s}   calls/s per round")
        for (method, name), got in results.items():
            print(f"{method:13s} {name:8s} {med(got['rate']):8.0f} {med(got['p50']):7.1f} "
                  f"{med(got['p95']):7.1f} {med(got['p99']):7.1f} {med(got['cpu']):11.0f} "
                  f"{med(got['db']):10.0f}   "
                  + " ".join(f"{v:.0f}" for v in got["rate"]))
        print()

        def ratio(method: str, a: str, b: str) -> None:
            x, y = results[(method, a)], results[(method, b)]
            print(f"{method:13s} {a}/{b}: throughput {med(x['rate']) / med(y['rate']):.2f}x, "
                  f"p95 {med(x['p95']) / med(y['p95']):.2f}x, "
                  f"CPU/call {med(x['cpu']) / med(y['cpu']):.2f}x")

        ratio("MarkDay", "project", "bare")
        for m in READS:
            ratio(m, "project", "echo")
        ratio("GetActiveRun", "bare", "echo")
        ratio("GetActiveRun", "project", "echo-uv")
        if cohorts:
            a, b = list(cohorts)
            print()
            print(f"flat reads: {args.history_users} users with {a.split('@')[1]} and with "
                  f"{b.split('@')[1]} check-ins (a run a week)")
            for m in READS:
                ratio(m, b, a)
        print()
        print("server RSS after the load (peak, now): " + ", ".join(
            f"{name} {peak:.0f} MB, {now:.0f} MB" for name, (peak, now) in rss.items()))
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
