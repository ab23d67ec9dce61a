#!/usr/bin/env python
"""What the domain metrics of issue 11 add per call (service/telemetry.py), in one run.

Part 1, Python: the calls a MarkDay and a GetActiveRun now make, timed in a loop with the
default no-op providers (POTATO_OTEL_EXPORTER=none, no --metrics-port) and with an SDK
MeterProvider read by the Prometheus reader (what --metrics-port gives):
  MarkDay       write_span + add_run_events (one run_created) + record_events + pool wait
  GetActiveRun  timed() + pool wait
  flag          FlagStore's record_flag (every v1 / totals read evaluates one flag)
Prints ns per call, the median of --rounds rounds of --calls calls.

Part 2, SQL: what migration 0008 adds to potato_mark_day (`changes`: the call's run events
read back, potato_latest_changes), server-side on an embedded PostgreSQL (fsync off):
potato_latest_changes alone for a user with ~300 events, then 0005's potato_mark_day
(loaded beside it under another name) against 0008's, in alternating blocks of new users
(a created and an extended day each), in one database; the backend's CPU time per call
(/proc), which other load on the machine does not inflate as it does wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry

from potato_runs.domain.model import Run, RunChange
from potato_runs.service.telemetry import Telemetry


class _Pool:
    """Stands in for an asyncpg pool in potato.db.pool.connections."""

    def get_size(self) -> int:
        return 2

    def get_idle_size(self) -> int:
        return 1


def per_call(fn: Callable[[], None], calls: int, rounds: int) -> float:
    results = []
    for _ in range(rounds):
        started = time.thread_time_ns()
        for _ in range(calls):
            fn()
        results.append((time.thread_time_ns() - started) / calls)
    return statistics.median(results)


def python_costs(calls: int, rounds: int) -> None:
    user = uuid.uuid4()
    run = Run(user, dt.date(2025, 6, 1), dt.date(2025, 6, 1), True)
    changes = (RunChange("run_created", (), (run,)),)
    sdk = Telemetry(meter=MeterProvider(metric_readers=[PrometheusMetricReader(
        registry=CollectorRegistry())]).get_meter("potato_runs"))
    for name, telemetry in (("no-op providers", Telemetry()), ("SDK + Prometheus", sdk)):
        wait = telemetry.observe_pool("serving", _Pool())

        def mark_day(t: Telemetry = telemetry, wait: Callable[[float], None] = wait) -> None:
            with t.write_span("MarkDay", user) as span:
                wait(0.0001)
                t.add_run_events(span, changes, "req")
            t.record_events(("run_created",))

        def get_active(t: Telemetry = telemetry, wait: Callable[[float], None] = wait) -> None:
            with t.timed("GetActiveRun"):
                wait(0.0001)

        def flag(t: Telemetry = telemetry) -> None:
            t.record_flag("ff.potato.runs_v2", "legacy")

        def nothing() -> None:
            pass

        base = per_call(nothing, calls, rounds)
        print(f"{name:18} MarkDay {per_call(mark_day, calls, rounds) - base:7.0f} ns   "
              f"GetActiveRun {per_call(get_active, calls, rounds) - base:7.0f} ns   "
              f"flag {per_call(flag, calls, rounds) - base:6.0f} ns")


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process so far, from /proc: the backend's own work,
    whatever else the machine runs (wall time is not, on a shared 2-core machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mark_day_before_0008() -> str:
    """0005's potato_mark_day, renamed potato_mark_day_0005."""
    text = (Path(__file__).resolve().parents[1] / "src/potato_runs/storage/migrations"
            / "0005_totals_write_path.sql").read_text()
    start = text.index("CREATE OR REPLACE FUNCTION potato_mark_day(")
    end = text.index("END $$;", start) + len("END $$;")
    return text[start:end].replace("FUNCTION potato_mark_day(", "FUNCTION potato_mark_day_0005(")


async def sql_costs(calls: int, rounds: int) -> None:
    import asyncpg

    from potato_runs.storage.embedded import EmbeddedPostgres
    from potato_runs.storage.migrate import ensure_database, migrate

    base = Path(tempfile.mkdtemp(prefix="potato-bench-metrics-"))
    os.chmod(base, 0o755)   # the cluster may run as nobody (root)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=True)
    cluster.start()
    try:
        await ensure_database(cluster.dsn("postgres"), "bench")
        conn = await asyncpg.connect(cluster.dsn("bench"))
        try:
            await migrate(conn)
            user = uuid.uuid4()
            now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
            for i in range(0, 300, 2):   # 150 separate days: 150 created + 149 deactivated
                await conn.execute("SELECT potato_mark_day($1, $2, NULL, 'UTC', 'b', $3, NULL)",
                                   user, dt.date(2025, 1, 1) + dt.timedelta(days=i), now)
            for n in (1, 2):
                started = time.perf_counter()
                await conn.execute(f"""
                    DO $$
                    DECLARE j jsonb;
                    BEGIN
                        FOR i IN 1..{calls} LOOP
                            j := potato_latest_changes('{user}', {n});
                        END LOOP;
                    END $$""")
                us = (time.perf_counter() - started) / calls * 1e6
                print(f"potato_latest_changes(user, {n}) (MarkDay's `changes`, {n} event(s)): "
                      f"{us:.1f} us per call, server side")
            # potato_mark_day as 0005 defined it (no `changes`) beside 0008's, same database,
            # alternating blocks of new users' first and second days (created, extended).
            await conn.execute(_mark_day_before_0008())
            times: dict[str, list[float]] = {"0005": [], "0008": []}
            pid = conn.get_server_pid()
            for block in range(rounds * 2):
                fn = ("potato_mark_day_0005", "potato_mark_day")[block % 2]
                started = _cpu_seconds(pid)
                await conn.execute(f"""
                    DO $$
                    DECLARE u uuid; j jsonb;
                    BEGIN
                        FOR i IN 1..{calls // 10} LOOP
                            u := gen_random_uuid();
                            j := {fn}(u, DATE '2025-03-01', NULL, 'UTC', 'b', now(), NULL);
                            j := {fn}(u, DATE '2025-03-02', NULL, NULL, 'b', now(), NULL);
                        END LOOP;
                    END $$""")
                times[("0005", "0008")[block % 2]].append(
                    (_cpu_seconds(pid) - started) / (calls // 10 * 2) * 1e6)
            before, after = statistics.median(times["0005"]), statistics.median(times["0008"])
            print(f"potato_mark_day backend CPU: 0005 {before:.1f} us, 0008 {after:.1f} us "
                  f"({after - before:+.1f} us per call; median of {rounds} blocks each)")
        finally:
            await conn.close()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sql-calls", type=int, default=20_000)
    args = ap.parse_args()
    python_costs(args.calls, args.rounds)
    asyncio.run(sql_costs(args.sql_calls, args.rounds))


if __name__ == "__main__":
    main()
