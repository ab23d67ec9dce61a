"""The asyncpg pool: codecs and session settings for every connection."""

from __future__ import annotations

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


@contextlib.asynccontextmanager
async def acquire(pool: Any, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
    """`pool.acquire(timeout=...)`, except that a connection which fails under the caller
    (killed backend, broken protocol state: `errors.CONNECTION_FAILURES`) is terminated
    before it goes back, so the pool opens a fresh one instead of handing it out again.
    A timeout is not a broken connection (asyncpg cancelled the statement): kept.
    The wait for a connection is reported to the pool's wait observer, if any (an
    acquisition that times out is not: it shows as DEADLINE_EXCEEDED)."""
    seen = _wait_observers.get(id(pool))
    started = time.perf_counter()
    async with pool.acquire(timeout=timeout) as conn:
        if seen is not None:
            seen[1](time.perf_counter() - started)
        try:
            yield conn
        except CONNECTION_FAILURES as exc:
            if not isinstance(exc, TimeoutError):
                conn.terminate()
            raise
