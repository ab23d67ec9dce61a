"""PostgreSQL stopped under load (`pg_ctl stop -m fast`), then started again.

The scenario gets a PostgreSQL cluster of its own (durable: fsync and synchronous commit
on), so stopping it breaks no other test. While it is down every call must fail in a way
a client can act on (UNAVAILABLE, never INTERNAL or UNKNOWN); once it is back the
service answers OK again without a restart, no acknowledged write is lost, the checker is
clean and the projection equals a rebuild. Seconds down: load.SIZES (2 by default, 10
with POTATO_FAULTS=1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faults.load import (
    CHANNEL_OPTIONS,
    RECOVERY_BOUND,
    SIZES,
    ServerProcess,
    Workload,
    assert_clean,
    now,
    report,
    running,
    verify,
)
from potato_runs.storage.embedded import EmbeddedPostgres
from support import stoppable_cluster

ACCEPTABLE = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"}


@pytest.fixture
def own_cluster() -> Iterator[EmbeddedPostgres]:
    with stoppable_cluster("faults-pg", "potato", fast_unsafe=False) as cluster:
        yield cluster


async def serving_after(target: str, t: float) -> float:
    """Polls the overall health (50 ms) until SERVING; seconds since `t`."""
    deadline = now() + RECOVERY_BOUND
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                res = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if res.status == health_pb2.HealthCheckResponse.SERVING:
                    return now() - t
            except grpc.RpcError:
                pass
            assert now() < deadline, "health not SERVING again"
            await asyncio.sleep(0.05)


async def test_postgres_stopped_then_started_under_load(own_cluster: EmbeddedPostgres,
                                                        tmp_path: Path) -> None:
    dsn = own_cluster.dsn("potato")   # migrated; the server serves as potato_app
    server = ServerProcess(dsn, tmp_path)
    try:
        await server.start()
        load = Workload(server.target, SIZES.workers, SIZES.users_per_worker)
        async with running(load):
            await load.calls.wait_ok_after(now())
            await asyncio.sleep(SIZES.load_before_fault[1])   # load before the outage
            before = load.calls.codes.copy()
            stopped = now()
            await asyncio.to_thread(own_cluster.stop)
            await asyncio.sleep(SIZES.pg_stop_seconds)   # the outage
            await asyncio.to_thread(own_cluster.start, create=False)
            started = now()
            recovery = await load.calls.wait_ok_after(started)
            health = await serving_after(server.target, started)
        during = load.calls.codes - before
        assert await server.stop() == 0, server.log_tail()
        verdict = await verify(dsn, load.model)
        alarms = server.alarms()
        report(f"PostgreSQL stopped {SIZES.pg_stop_seconds:g} s", load.calls, verdict,
               f"start to first OK: {recovery:.2f} s; to health SERVING: {health:.2f} s",
               f"down {started - stopped:.1f} s (stop+outage+start)")
        assert set(load.calls.codes) <= ACCEPTABLE, (load.calls.codes, load.calls.samples)
        assert during["UNAVAILABLE"] > 0, during   # the outage was seen
        assert not alarms, alarms[:10]
        assert_clean(verdict, server)
    finally:
        await server.close()
