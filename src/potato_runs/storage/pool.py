"""The asyncpg pool: codecs and session settings for every connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from potato_runs.storage.errors import CONNECTION_FAILURES


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Replaces asyncpg's default reset query (advisory unlock, CLOSE ALL, UNLISTEN,
    RESET ALL), which costs one more round trip on every release: the service keeps
    no session state. Its locks are transaction-scoped (pg_advisory_xact_lock), its
    settings are SET LOCAL or per connection (server_settings), and asyncpg itself
    still rolls back any transaction left open before calling this."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                      command_timeout: float = 10.0, lock_timeout: float = 5.0) -> asyncpg.Pool:
    """A pool whose sessions run READ COMMITTED in UTC. `lock_timeout` bounds every
    lock wait, the per-user advisory lock included (SQLSTATE 55P03 past it): a user
    whose lock is stuck cannot pin connections for longer than that."""
    pool: Any = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        init=_init_connection,
        reset=_reset_connection,
        # The write path relies on READ COMMITTED + the per-user advisory lock;
        # pin it so a different database default cannot change the semantics.
        server_settings={"application_name": "potato-runs", "TimeZone": "UTC",
                         "default_transaction_isolation": "read committed",
                         "lock_timeout": f"{int(lock_timeout * 1000)}ms"},
    )
    assert pool is not None
    return pool


_wait_observers: dict[int, tuple[Any, Callable[[float], None]]] = {}
"""Pool (by id; the entry holds the pool, so its id cannot be reused) -> what records
the seconds each `acquire` waited for a connection (the composition root sets it:
service/telemetry.py's `potato.db.pool.wait`); storage knows nothing of telemetry."""


def observe_wait(pool: Any, record: Callable[[float], None]) -> None:
    _wait_observers[id(pool)] = (pool, record)


def unobserve_wait(pool: Any) -> None:
    _wait_observers.pop(id(pool), None)


async def take(pool: Any, timeout: float | None = None) -> asyncpg.Connection:
    """A connection from `pool` within `timeout` seconds (TimeoutError past it).

    asyncpg's own `acquire(timeout=...)` runs the wait in `wait_for`, a task of its own
    per call even when a connection is idle; here the wait is bounded by
    `asyncio.timeout` around the plain acquire, which asyncpg makes cancellation-safe
    (a cancelled wait puts its slot back). The wait is reported to the pool's wait
    observer, if any (an acquisition that times out is not: it shows as
    DEADLINE_EXCEEDED). Hand it back with `give_back`."""
    seen = _wait_observers.get(id(pool))
    started = time.perf_counter()
    if timeout is None:
        conn = await pool.acquire()
    else:
        async with asyncio.timeout(timeout):
            conn = await pool.acquire()
    if seen is not None:
        seen[1](time.perf_counter() - started)
    return conn


async def give_back(pool: Any, conn: asyncpg.Connection,
                    failure: BaseException | None = None) -> None:
    """Returns `conn` to `pool`. A connection that failed under its user (killed
    backend, broken protocol state: `errors.CONNECTION_FAILURES`) is terminated first,
    so the pool opens a fresh one instead of handing it out again. A timeout is not a
    broken connection (asyncpg cancelled the statement): kept."""
    if isinstance(failure, CONNECTION_FAILURES) and not isinstance(failure, TimeoutError):
        conn.terminate()
    await pool.release(conn)


@contextlib.asynccontextmanager
async def acquire(pool: Any, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
    """`take` and `give_back` as a context manager."""
    conn = await take(pool, timeout)
    try:
        yield conn
    except BaseException as exc:
        await give_back(pool, conn, exc)
        raise
    await give_back(pool, conn)
