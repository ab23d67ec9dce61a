"""`pg_terminate_backend` of every session of the server, once a second, under load.

Unlike test_backend_kill.py (an in-process server, kill waves every 50 ms), the server
here is a real `serve` process with its own database, and the writers' model proves that
no acknowledged write is lost and no `not_applied` write was applied. Seconds:
load.SIZES (3 by default, 20 with POTATO_FAULTS=1).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from faults.load import (
    RECOVERY_BOUND,
    SIZES,
    ServerProcess,
    Workload,
    assert_clean,
    now,
    report,
    running,
    seconds,
    verify,
)

ACCEPTABLE = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"}
KILL = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
           WHERE datname = current_database() AND application_name = 'potato-runs'
             AND pid <> pg_backend_pid()"""


async def test_terminated_backends_lose_no_write_and_recover(fault_dsn: str,
                                                             tmp_path: Path) -> None:
    server = ServerProcess(fault_dsn, tmp_path)
    waves: list[float] = []
    kills = 0
    try:
        await server.start()
        load = Workload(server.target, SIZES.workers, SIZES.users_per_worker)
        db = await asyncpg.connect(fault_dsn)
        try:
            async with running(load):
                await load.calls.wait_ok_after(now())
                for _ in range(SIZES.terminate_seconds):
                    waves.append(now())
                    kills += int(await db.fetchval(KILL))
                    await asyncio.sleep(1.0)   # the fault schedule: one wave a second
                await load.calls.wait_ok_after(waves[-1])
        finally:
            await db.close()
        recoveries = [r for t in waves if (r := load.calls.first_ok_after(t)) is not None]
        assert await server.stop() == 0, server.log_tail()
        verdict = await verify(fault_dsn, load.model)
        alarms = server.alarms()
        report(f"pg_terminate_backend every 1 s for {SIZES.terminate_seconds} s", load.calls,
               verdict, f"wave to first OK: {seconds(recoveries)}",
               f"{kills} backends terminated in {len(waves)} waves")
        assert kills > 0
        assert set(load.calls.codes) <= ACCEPTABLE, (load.calls.codes, load.calls.samples)
        assert not alarms, alarms[:10]
        assert len(recoveries) == len(waves) and max(recoveries) < RECOVERY_BOUND, recoveries
        assert_clean(verdict, server)
    finally:
        await server.close()
