"""Health follows the database: NOT_SERVING after one failed call, SERVING once it is back.

A PostgreSQL cluster of its own (it is stopped and started again) on a fixed port; the
server's periodic probe is set to 60 s, so what turns health around is the request path
(a connection-level failure makes the probe ping at once) and the fast ping while down
(every 0.5 s), not the probe interval. A slow call ending DEADLINE_EXCEEDED changes
nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as pb_grpc
from potato_runs.app import App, Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.pool import create_pool
from support import ADMIN_TOKEN, DEFAULT_NOW, app_dsn, rich_status, stoppable_cluster

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BOUND = 10.0
"""Seconds a poll may take before the test fails: far below the 60 s probe interval."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedPostgres]:
    with stoppable_cluster("test-outage", "potato_outage") as pg:
        yield pg


@pytest.fixture
async def app(cluster: EmbeddedPostgres) -> AsyncIterator[App]:
    dsn = app_dsn(cluster.dsn("potato_outage"))   # serves as potato_app
    pool = await create_pool(dsn, min_size=1, max_size=4)
    app = await build_app(Settings(port=0, dsn=dsn, admin_token=ADMIN_TOKEN,
                                   health_probe_interval=60, invariant_check_interval=0,
                                   totals_reconcile_at=None),
                          clock=FixedClock(DEFAULT_NOW), database=Database(dsn=dsn, pool=pool))
    try:
        yield app
    finally:
        await app.stop(0)
        await pool.close()


async def _status(ch: grpc.aio.Channel, name: str = "") -> int:
    res = await health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service=name), timeout=5)
    return int(res.status)


async def _until(ch: grpc.aio.Channel, status: int) -> float:
    """Polls health until every database-backed name has `status`; the seconds it took."""
    start = time.monotonic()
    names = ("", "potato.runs.v2.RunsService", "potato.runs.v2.TotalsService")
    while [await _status(ch, n) for n in names] != [status] * len(names):
        assert time.monotonic() - start < BOUND, f"health did not turn {status}"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_health_follows_a_stopped_and_restarted_database(
        app: App, cluster: EmbeddedPostgres) -> None:
    user = str(uuid.uuid4())
    mark = pb.MarkDayRequest(user_id=user, local_date="2025-06-01", time_zone="UTC")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}",
                                         options=[("grpc.enable_retries", 0)]) as ch:
        stub = pb_grpc.RunsServiceStub(ch)
        await stub.MarkDay(mark, timeout=10)
        assert await _status(ch) == SERVING

        await asyncio.to_thread(cluster.stop)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:   # one failed call
                await stub.MarkDay(mark, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            info, _, _ = rich_status(err.value)
            assert info is not None and info.reason == "DATABASE_UNAVAILABLE"
            down = await _until(ch, NOT_SERVING)
        finally:
            await asyncio.to_thread(cluster.start)
        up = await _until(ch, SERVING)   # no call made: the ping while down sees it
        print(f"\nNOT_SERVING {down * 1000:.0f} ms after the failed call; "
              f"SERVING {up * 1000:.0f} ms after the database started")
        res = await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2025-06-02",
                                                   time_zone="UTC"), timeout=10)
        assert res.run.day_count == 2


async def test_a_slow_call_that_runs_out_of_time_does_not_change_health(
        app: App, cluster: EmbeddedPostgres) -> None:
    """The user's advisory lock is held elsewhere: the write waits and ends
    DEADLINE_EXCEEDED; the database is fine, and health stays SERVING."""
    user = str(uuid.uuid4())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}",
                                         options=[("grpc.enable_retries", 0)]) as ch:
        stub = pb_grpc.RunsServiceStub(ch)
        await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2025-06-01",
                                             time_zone="UTC"), timeout=10)
        conn = await asyncpg.connect(cluster.dsn("potato_outage"))
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE",
                                   uuid.UUID(user))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.MarkDay(pb.MarkDayRequest(
                        user_id=user, local_date="2025-06-02", time_zone="UTC"), timeout=0.5)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            await conn.close()
        assert app.probe.last is not False
        assert await _status(ch) == SERVING
