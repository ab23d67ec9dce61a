#!/usr/bin/env python
"""A/B: this checkout's server against another revision's, in one run.

The hot path is measured beside the version without the change: one embedded
PostgreSQL (fsync on unless --fast), one database per side, the two servers as
separate processes (`python -m potato_runs.cli serve --dsn ...`, the baseline with
PYTHONPATH=<its src>). Rounds alternate between the two, with the same load: C calls
in flight on one channel, users with random days of 2025. Prints per round and the
median throughput per side for v2 MarkDay and GetActiveRun, and the ratio.

Make the baseline with a git worktree, e.g.:
  git worktree add /tmp/potato-base <rev>
  .venv/bin/python scripts/bench_ab.py --base-src /tmp/potato-base/src

TLS: both servers inherit the environment, so POTATO_TLS_CERT/POTATO_TLS_KEY make them
serve TLS (the baseline must support it); the client TLS flags of the CLI (--tls-ca,
--tls-cert, --tls-key, --tls-server-name; POTATO_TLS_CA, ...) make the load TLS too.
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

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.cli._common import ClientTls, add_tls_arguments, client_tls, open_aio_channel
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database

HERE = Path(__file__).resolve().parents[1] / "src"


def start(src: Path, dsn: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(src), "POTATO_ADMIN_TOKEN": uuid.uuid4().hex,
           "GRPC_ENABLE_FORK_SUPPORT": "false", "POTATO_INVARIANT_CHECK_INTERVAL": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "potato_runs.cli", "serve", "--port", "0",
                             "--dsn", dsn], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving on" in line, line
    return proc, line.split(" on ")[1].split()[0]


async def load(target: str, method: str, calls: int, concurrency: int, users: list[str],
               seed: int, tls: ClientTls) -> float:
    rng = random.Random(seed)
    async with open_aio_channel(target, tls, options=()) as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        if method == "MarkDay":
            reqs: list[object] = [pb.MarkDayRequest(
                user_id=rng.choice(users), time_zone="America/New_York",
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-src", type=Path, required=True, help="the baseline's src/ directory")
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--fast", action="store_true", help="fsync off")
    add_tls_arguments(ap)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="potato-ab-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=args.fast)
    cluster.start()
    procs = []
    try:
        sides = {}
        for name, src in (("baseline", args.base_src.resolve()), ("this", HERE)):
            asyncio.run(ensure_database(cluster.dsn("postgres"), f"ab_{name}"))
            proc, target = start(src, cluster.dsn(f"ab_{name}"))
            procs.append(proc)
            sides[name] = target
        users = [str(uuid.uuid4()) for _ in range(args.users)]
        print(f"postgres: {'fsync off' if args.fast else 'durable'}; {args.calls} calls per round, "
              f"{args.concurrency} in flight, {args.users} users")
        for method in ("MarkDay", "GetActiveRun"):
            got: dict[str, list[float]] = {k: [] for k in sides}
            for r in range(args.rounds):
                for name, target in (sides.items() if r % 2 == 0 else reversed(sides.items())):
                    got[name].append(asyncio.run(load(target, method, args.calls,
                                                      args.concurrency, users, r,
                                                      client_tls(args))))
            for name, values in got.items():
                print(f"{method:13s} {name:9s} " + "  ".join(f"{v:7.0f}" for v in values)
                      + f"   median {statistics.median(values):7.0f} calls/s")
            ratio = statistics.median(got["this"]) / statistics.median(got["baseline"])
            print(f"{method:13s} this/baseline = {ratio:.3f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
