#!/usr/bin/env python
"""The server-side cost of totals maintenance on MarkDay, in one database and one run.

Migrates a throwaway embedded PostgreSQL, then defines `potato_mark_day_nototals`: the
MarkDay function of migration 0002 (before totals) under another name. Rounds alternate
between it and today's `potato_mark_day` on fresh users, in two loads:
  scattered: random users, random days of 2025 (mostly a first check-in in its month,
             and many first check-ins of a user: the slower paths);
  daily:     every user marks the next day (the common case: the month row exists).
Prints microseconds per call (one connection, prepared statement, so it is the database's
time plus one local round trip), then pg_stat_user_functions per function (track_functions).

  .venv/bin/python scripts/bench_totals_write.py [--calls 6000] [--users 2000] [--durable]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import MIGRATIONS_DIR, ensure_database, migrate

SCATTERED = """SELECT {fn}(($1::text || lpad(floor(random() * $2)::int::text, 12, '0'))::uuid,
                           DATE '2025-01-01' + floor(random() * 365)::int,
                           NULL, 'UTC', 'bench', now(), NULL)"""
DAILY = """SELECT {fn}(($1::text || lpad(($3::int % $2)::text, 12, '0'))::uuid,
                       DATE '2025-01-01' + ($3::int / $2), NULL, 'UTC', 'bench', now(), NULL)"""


async def run(dsn: str, calls: int, users: int, rounds: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute("SET track_functions = 'all'")
        old = (MIGRATIONS_DIR / "0002_write_functions.sql").read_text(encoding="utf-8")
        match = re.search(r"CREATE FUNCTION potato_mark_day\(.*?END \$\$;", old, re.S)
        assert match is not None
        await conn.execute(match.group(0).replace("FUNCTION potato_mark_day(",
                                                  "FUNCTION potato_mark_day_nototals("))
        for load, sql in (("scattered", SCATTERED), ("daily", DAILY)):
            got: dict[str, list[float]] = {"potato_mark_day_nototals": [], "potato_mark_day": []}
            for r in range(rounds):
                for fn in (list(got) if r % 2 == 0 else list(reversed(got))):
                    prefix = str(uuid.uuid4())[:24]          # fresh users every round
                    stmt = await conn.prepare(sql.format(fn=fn))
                    t0 = time.perf_counter()
                    for i in range(calls):
                        args = (prefix, users) if load == "scattered" else (prefix, users, i)
                        await stmt.fetchval(*args)
                    got[fn].append(1e6 * (time.perf_counter() - t0) / calls)
            for fn, values in got.items():
                print(f"{load:9s} {fn:26s} " + " ".join(f"{v:6.0f}" for v in values)
                      + f"   median {statistics.median(values):6.0f} us/call")
        await asyncio.sleep(0.6)           # the statistics collector's flush
        print("\nper function (all loads): calls, mean total us, mean self us")
        for r in await conn.fetch(
                "SELECT funcname, calls, total_time / calls * 1000 AS total_us, "
                "self_time / calls * 1000 AS self_us FROM pg_stat_user_functions "
                "WHERE calls > 100 ORDER BY total_time DESC"):
            print(f"  {r['funcname']:32s} {r['calls']:8d} {r['total_us']:8.0f} {r['self_us']:8.0f}")
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=6000)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--durable", action="store_true", help="fsync on")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="potato-totals-bench-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=not args.durable)
    cluster.start()
    try:
        asyncio.run(ensure_database(cluster.dsn("postgres"), "bench"))
        print(f"postgres: {'durable' if args.durable else 'fsync off'}; {args.calls} calls per "
              f"round, {args.users} users")
        asyncio.run(run(cluster.dsn("bench"), args.calls, args.users, args.rounds))
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
