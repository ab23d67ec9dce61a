"""One user's trouble must not become everyone's: a user whose lock is held (a slow
rebuild, a stuck session) queues its own writes, and other users are still served."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub

from .helpers import NY, advisory_waiters


async def test_a_locked_user_holds_one_connection_and_others_are_served(
        stub: RunsServiceStub, db: asyncpg.Connection, pg_dsn: str) -> None:
    stuck, other = str(uuid.uuid4()), str(uuid.uuid4())
    await stub.MarkDay(pb.MarkDayRequest(user_id=stuck, local_date="2025-01-01", time_zone=NY))
    holder = await asyncpg.connect(pg_dsn)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))", uuid.UUID(stuck))
    try:
        # More writes for the stuck user than the server's pool has connections (20).
        burst = [asyncio.ensure_future(stub.MarkDay(
            pb.MarkDayRequest(user_id=stuck, local_date=f"2025-02-{d:02d}"), timeout=60))
            for d in range(1, 26)]
        for _ in range(1000):   # bounded: until the first of them waits in PostgreSQL
            if await advisory_waiters(db) >= 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("no write ever waited on the user's lock")
        # Another user is served although 25 writes of the stuck user are pending
        # (the deadline is below the pool's 5 s lock_timeout: without the per-user
        # queue, those writes would hold every pooled connection until then).
        res = await stub.MarkDay(pb.MarkDayRequest(user_id=other, local_date="2025-01-01",
                                                   time_zone=NY), timeout=3)
        assert res.run.day_count == 1
        active = await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=other), timeout=3)
        assert active.run.start_date == "2025-01-01"
        # Only one connection of the stuck user is in PostgreSQL, waiting.
        assert await advisory_waiters(db) == 1
    finally:
        await tx.rollback()
        await holder.close()
    results = await asyncio.gather(*burst)
    assert max(r.run.day_count for r in results) == 25
