"""Server plumbing: health, reflection, database outages and deadlines."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.app import Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.storage.embedded import free_port
from potato_runs.storage.pool import create_pool
from support import app_dsn, rich_status

from .helpers import settle_advisory_waiters


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "potato.runs.v2.RunsService", "potato.runs.v2.AdminService"):
        res = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert res.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = []
    async for res in stub.ServerReflectionInfo(requests()):
        names = [s.name for s in res.list_services_response.service]
    assert "potato.runs.v2.RunsService" in names and "grpc.health.v1.Health" in names


async def test_unreachable_database_gives_unavailable() -> None:
    dsn = f"postgresql://potato@127.0.0.1:{free_port()}/nothing"
    pool = await create_pool(dsn, min_size=0, max_size=2)
    app = await build_app(Settings(port=0, dsn=dsn), clock=FixedClock(
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC)), database=Database(dsn=dsn, pool=pool))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = runs_service_pb2_grpc.RunsServiceStub(ch)
            for call in (stub.MarkDay(pb.MarkDayRequest(
                    user_id="6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99", local_date="2025-06-01",
                    time_zone="UTC")),
                    stub.GetActiveRun(pb.GetActiveRunRequest(
                        user_id="6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99"))):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                info, _, _ = rich_status(err.value)
                assert info is not None and info.reason == "DATABASE_UNAVAILABLE"
            # Health follows: a readiness probe can take this replica out of rotation.
            assert await app.probe.probe_once() is False
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "potato.runs.v2.RunsService"):
                res = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert res.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.stop(0)


async def test_the_client_deadline_bounds_the_database_wait(
        stub: runs_service_pb2_grpc.RunsServiceStub, pg_dsn: str, user_id: str) -> None:
    """A write stuck behind the user's lock ends with DEADLINE_EXCEEDED at the client's
    deadline (well before the pool's 5 s lock_timeout), writes nothing, and leaves no
    waiting statement or connection behind. (grpc cancels the handler at the deadline;
    the repository's own deadline-derived timeouts are tested in test_runs_repo.py.)"""
    import uuid

    import asyncpg

    holder = await asyncpg.connect(pg_dsn)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))",
                         uuid.UUID(user_id))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.MarkDay(pb.MarkDayRequest(user_id=user_id, local_date="2025-06-01",
                                                 time_zone="UTC"), timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server gave up too: its statement no longer waits on the lock, long before
        # lock_timeout (5 s) would have ended it. (Bounded poll, not a sleep.)
        assert await settle_advisory_waiters(holder) == 0
    finally:
        await tx.rollback()
    try:
        assert await holder.fetchval(
            "SELECT count(*) FROM daily_checkins WHERE user_id = $1", uuid.UUID(user_id)) == 0
        # The cancelled statement did not keep the user's lock or a connection.
        res = await stub.MarkDay(pb.MarkDayRequest(user_id=user_id, local_date="2025-06-01",
                                                   time_zone="UTC"), timeout=10)
        assert res.run.day_count == 1
    finally:
        await holder.close()


async def test_invariant_violations_turn_the_invariants_health_not_serving(pg_dsn: str) -> None:
    import uuid

    import asyncpg

    from potato_runs.app import INVARIANTS_HEALTH
    from potato_runs.storage.migrate import ensure_database, migrate

    name = f"scratch_{uuid.uuid4().hex[:8]}"
    admin_dsn = pg_dsn.rsplit("/", 1)[0] + "/postgres"
    await ensure_database(admin_dsn, name)
    owner = await asyncpg.connect(pg_dsn.rsplit("/", 1)[0] + "/" + name)
    try:   # migrated by the superuser, served as potato_app
        await migrate(owner)
    finally:
        await owner.close()
    dsn = app_dsn(pg_dsn.rsplit("/", 1)[0] + "/" + name)
    pool = await create_pool(dsn, min_size=1, max_size=4)
    app = await build_app(Settings(port=0, dsn=dsn, invariant_check_interval=0),
                          clock=FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
                          database=Database(dsn=dsn, pool=pool))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)

            async def status() -> int:
                res = await health.Check(health_pb2.HealthCheckRequest(service=INVARIANTS_HEALTH))
                return int(res.status)

            assert await app.monitor.check_once() == 0
            assert await status() == health_pb2.HealthCheckResponse.SERVING
            user = uuid.uuid4()
            async with pool.acquire() as conn:   # a fact the projection does not know about
                await conn.execute("INSERT INTO users (user_id, time_zone) VALUES ($1, 'UTC')", user)
                await conn.execute("INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
                                   "VALUES ($1, '2025-03-01', 'UTC')", user)
            assert await app.monitor.check_once() > 0
            assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
            # Serving traffic is unaffected; only the invariants service reports the problem.
            overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert overall.status == health_pb2.HealthCheckResponse.SERVING
            await app.admin.rebuild_user(user, None, None, False)
            assert await app.monitor.check_once() == 0
            assert await status() == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop(0)
        conn2 = await asyncpg.connect(admin_dsn)
        await conn2.execute(f'DROP DATABASE "{name}"')
        await conn2.close()


async def test_a_second_server_on_a_busy_port_fails_instead_of_sharing_it(
        server: object, pg_dsn: str) -> None:
    from potato_runs.app import StartupError

    busy = server.port  # type: ignore[attr-defined]
    pool = await create_pool(app_dsn(pg_dsn), min_size=0, max_size=1)
    with pytest.raises(StartupError):
        await build_app(Settings(port=busy, dsn=app_dsn(pg_dsn), invariant_check_interval=0),
                        database=Database(dsn=app_dsn(pg_dsn), pool=pool))
    await pool.close()
