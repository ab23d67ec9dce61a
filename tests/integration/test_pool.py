"""storage/pool.py: take within a bound, give back, and a broken connection dropped."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from potato_runs.storage.errors import CONNECTION_FAILURES
from potato_runs.storage.pool import acquire, create_pool, give_back, take


async def test_take_is_bounded_and_a_cancelled_wait_keeps_no_slot(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        held = await take(pool, 5)
        with pytest.raises(TimeoutError):
            await take(pool, 0.05)   # the only connection is out
        waiter = asyncio.ensure_future(take(pool, 5))
        await asyncio.sleep(0)       # let it queue (not a synchronization: cancelled below)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await give_back(pool, held)
        again = await take(pool, 5)  # the slot came back: neither wait kept it
        assert again is held or await again.fetchval("SELECT 1") == 1
        await give_back(pool, again)
        assert pool.get_idle_size() == 1
    finally:
        await pool.close()


async def test_a_connection_that_failed_is_not_handed_out_again(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn, min_size=1, max_size=1)
    admin = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises((asyncpg.PostgresError, *CONNECTION_FAILURES)):
            async with acquire(pool, 5) as conn:
                pid = conn.get_server_pid()
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
                await conn.fetchval("SELECT 1")
        async with acquire(pool, 5) as conn:
            assert conn.get_server_pid() != pid
            assert await conn.fetchval("SELECT 1") == 1
        timed_out = await take(pool, 5)
        kept = timed_out.get_server_pid()
        with pytest.raises(TimeoutError):
            await timed_out.fetchval("SELECT pg_sleep(5)", timeout=0.05)
        await give_back(pool, timed_out, TimeoutError())   # a timeout is not a broken one
        async with acquire(pool, 5) as conn:
            assert conn.get_server_pid() == kept
    finally:
        await admin.close()
        await pool.close()
