"""SIGKILL of the server process under load, restarted on the same database each time.

Writers own their users and record every write's outcome (load.Model). At a random
moment the `serve` process gets SIGKILL, mid-call; a new one starts on the same port and
database, and the clients carry on. At the end every acknowledged write is in the
database, every `not_applied` one is not, the checker is clean and the projection equals
a rebuild from the facts. Rounds: load.SIZES (2 by default, 10 with POTATO_FAULTS=1).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from faults.load import (
    SEED,
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


async def test_sigkill_under_load_loses_no_acknowledged_write(fault_dsn: str,
                                                              tmp_path: Path) -> None:
    server = ServerProcess(fault_dsn, tmp_path)
    rng = random.Random(SEED)
    recoveries: list[float] = []
    restarts: list[float] = []
    try:
        await server.start()
        load = Workload(server.target, SIZES.workers, SIZES.users_per_worker)
        async with running(load):
            for _ in range(SIZES.sigkill_rounds):
                await load.calls.wait_ok_after(now())   # traffic flows before each kill
                await asyncio.sleep(rng.uniform(*SIZES.load_before_fault))   # the moment
                killed = now()
                await server.kill()
                restarts.append(await server.start())
                recoveries.append(await load.calls.wait_ok_after(killed))
        assert await server.stop() == 0, server.log_tail()
        verdict = await verify(fault_dsn, load.model)
        alarms = server.alarms()
        report(f"SIGKILL x{SIZES.sigkill_rounds}", load.calls, verdict,
               f"kill to first OK: {seconds(recoveries)}",
               f"restart to serving: {seconds(restarts)}")
        assert set(load.calls.codes) <= ACCEPTABLE, (load.calls.codes, load.calls.samples)
        assert not alarms, alarms[:10]
        assert_clean(verdict, server)
    finally:
        await server.close()
