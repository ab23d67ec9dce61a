#!/usr/bin/env python
"""The population diff (legacy gaps-and-islands vs the runs projection) over a large
population, with the GO / NO-GO verdict.

Seeds USERS users with about CHECKINS check-ins (bench_rebuild_check.seed_population)
in a throwaway PostgreSQL, then times:
  - the diff of everyone through the service layer (AdminService.diff_population),
    at two batch sizes, and the full verdict (diff + invariant check + shadow stats);
  - the same after damaging DAMAGED users (one run deleted each): NO-GO, with counts;
  - `potato-runs shadow diff --json` against a running server (`serve --dsn`), unless
    --no-cli.

The throwaway database has no traffic, so it holds synthetic online shadow counts
(--shadow-matches matches, no mismatches) for the shadow gate; say 0 to see that
gate fail.

Usage: .venv/bin/python scripts/bench_population_diff.py [--users 10000] [--checkins 1100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rebuild_check import seed_population

from potato_runs.clock import SystemClock
from potato_runs.domain import rollout
from potato_runs.domain.flags import RUNS_V2
from potato_runs.service.admin_service import AdminService
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.admin_repo import AdminRepository
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database, migrate
from potato_runs.storage.pool import create_pool


async def verdict(admin: AdminService, batch: int, label: str) -> rollout.Verdict:
    t0 = time.perf_counter()
    diff = await admin.diff_population(batch=batch)
    t_diff = time.perf_counter() - t0
    violations, truncated = await admin.check(None, 1000)
    shadow = await admin.shadow_stats(RUNS_V2)
    total = time.perf_counter() - t0
    v = rollout.verdict(diff, shadow, len(violations), violations_truncated=truncated)
    print(f"{label}: diff of {diff.users_scanned:,} users / {diff.checkins_scanned:,} check-ins "
          f"in {t_diff:.2f} s ({diff.batches} batches of {batch}); with the invariant check and "
          f"shadow stats {total:.2f} s")
    for c in rollout.DIFF_CLASSES:
        if diff.counts[c]:
            print(f"    {c:<24} {diff.counts[c]:>6,} users ({diff.rate(c) * 100:.2f} %), e.g. "
                  f"{diff.examples[c][0]}")
    for g in v.gates:
        print(f"    gate {g.name:<22} {'pass' if g.passed else 'FAIL'}  {g.figure}")
    print(f"    verdict: {v.label}")
    return v


async def run(dsn: str, users: int, checkins: int, damaged: int, matches: int) -> None:
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await seed_population(conn, users, checkins)
    if matches:
        await conn.execute(
            "INSERT INTO shadow_comparisons (flag, method, result, hour, count) "
            "VALUES ($1, 'GetCurrentRun', 'match', date_trunc('hour', now()), $2)", RUNS_V2, matches)
    pool = await create_pool(dsn, min_size=1, max_size=4)
    admin = AdminService(AdminRepository(pool), SystemClock(), Telemetry())
    for batch in (1000, 5000):
        await verdict(admin, batch, f"clean population, batch {batch}")
    await conn.execute(
        "DELETE FROM runs WHERE run_id IN (SELECT DISTINCT ON (user_id) run_id FROM runs "
        "WHERE user_id IN (SELECT user_id FROM users ORDER BY random() LIMIT $1) AND NOT active "
        "ORDER BY user_id, run_id)", damaged)
    await verdict(admin, 1000, f"{damaged} users damaged (one run deleted each)")
    await pool.close()
    await conn.close()


def cli_diff(dsn: str) -> None:
    exe = str(Path(sys.executable).parent / "potato-runs")
    env = {**os.environ, "POTATO_ADMIN_TOKEN": "bench-" + uuid.uuid4().hex,
           "POTATO_INVARIANT_CHECK_INTERVAL": "0", "GRPC_ENABLE_FORK_SUPPORT": "false"}
    proc = subprocess.Popen([exe, "serve", "--port", "0", "--dsn", dsn], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        target = line.split(" on ")[1].split()[0]
        t0 = time.perf_counter()
        res = subprocess.run([exe, "shadow", "diff", "--json", "--target", target], env=env,
                             capture_output=True, text=True, check=False, timeout=1800)
        took = time.perf_counter() - t0
        report = json.loads(res.stdout)
        print(f"CLI `shadow diff --json` against a running server: {took:.2f} s, exit "
              f"{res.returncode}, verdict {report['verdict']}, "
              f"{report['population']['users_different']:,} users different of "
              f"{report['population']['users_scanned']:,}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    # The generator lands about 7 % under its target: 1.1 M gives >= 1,000,000 check-ins.
    ap.add_argument("--checkins", type=int, default=1_100_000)
    ap.add_argument("--damaged", type=int, default=100)
    ap.add_argument("--shadow-matches", type=int, default=10_000)
    ap.add_argument("--no-cli", action="store_true")
    ap.add_argument("--fast", action="store_true", help="fsync off")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="potato-bench-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=args.fast)
    cluster.start()
    try:
        name = f"bench_{uuid.uuid4().hex[:6]}"
        asyncio.run(ensure_database(cluster.dsn("postgres"), name))
        asyncio.run(run(cluster.dsn(name), args.users, args.checkins, args.damaged,
                        args.shadow_matches))
        if not args.no_cli:
            cli_diff(cluster.dsn(name))
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
