"""Overload at 3x the concurrency limit: shed cleanly, never refuse health or a rollback.

A server with POTATO_MAX_CONCURRENT_RPCS=16 and a 4-connection pool (so calls pile up
waiting for a connection, and the limit is surely reached) gets 48 calls in flight
(MarkDay, GetActiveRun, v1 GetStats), no client retries, while a health probe loop runs
and, once the shedder is at its limit, the admin rolls a flag back. Every call must end
OK or RESOURCE_EXHAUSTED with ErrorInfo OVERLOADED and a retry pushback (never
CANCELLED, UNKNOWN or INTERNAL), every health answer is SERVING, the rollback gets
through, and the checker is clean for every user afterwards. POTATO_FAULTS=1 runs longer.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import os
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato.runs.v2 import admin_service_pb2 as admin_pb
from potato.runs.v2 import admin_service_pb2_grpc as admin_grpc
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as pb_grpc
from potato_runs.app import App, Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.storage.admin_repo import INVARIANT_QUERIES, invariant_sql
from potato_runs.storage.pool import create_pool
from support import (
    ADMIN_METADATA,
    ADMIN_TOKEN,
    DEFAULT_NOW,
    app_dsn,
    fresh_database,
    rich_status,
)

LIMIT = 16
CALLS = 3_000 if os.environ.get("POTATO_FAULTS") else 480
NO_RETRIES = [("grpc.enable_retries", 0)]


@pytest.fixture
async def overloaded(pg_dsn: str) -> AsyncIterator[tuple[App, str]]:
    dsn = await asyncio.to_thread(fresh_database, pg_dsn, "potato_overload")
    pool = await create_pool(app_dsn(dsn), min_size=1, max_size=4)
    app = await build_app(Settings(port=0, dsn=app_dsn(dsn), max_concurrent_rpcs=LIMIT,
                                   admin_token=ADMIN_TOKEN, invariant_check_interval=0,
                                   health_probe_interval=0, totals_reconcile_at=None),
                          clock=FixedClock(DEFAULT_NOW), database=Database(dsn=app_dsn(dsn), pool=pool))
    try:
        yield app, dsn
    finally:
        await app.stop(0)
        await pool.close()


async def test_overload_is_shed_with_resource_exhausted_and_never_refuses_health(
        overloaded: tuple[App, str]) -> None:
    app, dsn = overloaded
    assert app.shedder is not None
    target = f"127.0.0.1:{app.port}"
    users = [str(uuid.uuid4()) for _ in range(24)]
    codes: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    pushbacks: list[int] = []
    health: collections.Counter[str] = collections.Counter()
    done = asyncio.Event()
    queue = itertools.count()
    rolled: asyncio.Task[admin_pb.RollbackFlagResponse] | None = None
    async with grpc.aio.insecure_channel(target, options=NO_RETRIES) as ch, \
            grpc.aio.insecure_channel(target, options=NO_RETRIES) as probe_ch:
        stub, old = pb_grpc.RunsServiceStub(ch), v1_grpc.RunsServiceStub(ch)
        admin = admin_grpc.AdminServiceStub(ch)
        # The flag exists and is on, so that the rollback below changes something.
        await admin.UpdateFlag(admin_pb.UpdateFlagRequest(
            flag=admin_pb.Flag(name="ff.potato.runs_v2", enabled=True, rollout_percent=50),
            reason="overload test"), metadata=ADMIN_METADATA, timeout=10)

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            for i in queue:
                # At least CALLS calls, and the load goes on until the rollback, sent at
                # the limit, has its answer (the poll below may miss a short peak).
                if i >= CALLS and rolled is not None and rolled.done():
                    break
                user = rng.choice(users)
                day = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(300))
                try:
                    if i % 3 == 0:
                        await stub.MarkDay(pb.MarkDayRequest(
                            user_id=user, local_date=day.isoformat(), time_zone="UTC"),
                            timeout=10)
                    elif i % 3 == 1:
                        await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=user), timeout=10)
                    else:
                        await old.GetStats(v1.GetStatsRequest(user_id=user), timeout=10)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        info, _, _ = rich_status(exc)
                        reasons[info.reason if info else "none"] += 1
                        trailers = dict(exc.trailing_metadata() or ())
                        pushbacks.append(int(trailers.get("grpc-retry-pushback-ms", "-2")))

        async def prober() -> None:
            hstub = health_pb2_grpc.HealthStub(probe_ch)
            while not done.is_set():
                for name in ("", "potato.runs.v2.RunsService"):
                    try:
                        res = await hstub.Check(health_pb2.HealthCheckRequest(service=name),
                                                timeout=5)
                        health[health_pb2.HealthCheckResponse.ServingStatus.Name(res.status)] += 1
                    except grpc.aio.AioRpcError as exc:
                        health[exc.code().name] += 1

        async def rollback() -> admin_pb.RollbackFlagResponse:
            end = asyncio.get_running_loop().time() + 30
            while app.shedder is not None and app.shedder.in_flight < LIMIT:
                assert asyncio.get_running_loop().time() < end, "the limit was never reached"
                await asyncio.sleep(0.001)   # poll: the rollback goes in at the limit
            assert app.shedder is not None and app.shedder.in_flight >= LIMIT
            return await admin.RollbackFlag(admin_pb.RollbackFlagRequest(
                name="ff.potato.runs_v2", reason="incident during overload"),
                metadata=ADMIN_METADATA, timeout=10)

        probing = asyncio.create_task(prober())
        rolled = asyncio.create_task(rollback())
        await asyncio.gather(*(worker(s) for s in range(3 * LIMIT)))
        done.set()
        await probing
        answer = await asyncio.wait_for(rolled, 10)
    print(f"\noverload at {3 * LIMIT} in flight, limit {LIMIT}: codes {dict(codes)}; "
          f"reasons {dict(reasons)}; pushback ms min {min(pushbacks, default=None)} "
          f"max {max(pushbacks, default=None)}; health {dict(health)}; "
          f"shed {app.shedder.shed}")
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, dict(codes)
    assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0, dict(codes)
    assert set(reasons) == {"OVERLOADED"}, dict(reasons)
    assert all(p == -1 or p > 0 for p in pushbacks), pushbacks
    assert set(health) == {"SERVING"}, dict(health)
    assert answer.flag.enabled is False
    db = await asyncpg.connect(dsn)
    try:
        for user in users:
            for code in INVARIANT_QUERIES:
                rows = await db.fetch(invariant_sql(code, True), uuid.UUID(user))
                assert rows == [], (code, rows)
    finally:
        await db.close()
