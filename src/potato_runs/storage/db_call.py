"""One database call under a Deadline: pool acquire and statement bounded by it,
bounded jittered retries of 40001/40P01, and every failure mapped to a DomainError
(storage/errors.map_db_error). Every repository's calls go through here."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.domain.errors import Reason
from potato_runs.storage.errors import (
    DB_FAILURES,
    RETRYABLE_SQLSTATES,
    map_db_error,
    with_write_outcome,
)
from potato_runs.storage.pool import give_back, take

T = TypeVar("T")

Op = Callable[[asyncpg.Connection, float], Awaitable[T]]
"""One unit of database work on one connection, given the seconds it may take."""


class Observer(Protocol):
    """Sees every call's outcome on a pool (service/database_probe.DatabaseProbe)."""

    def succeeded(self) -> None: ...

    def connection_failed(self) -> None: ...


_observers: dict[int, tuple[asyncpg.Pool, Observer]] = {}
"""Pool (by id; the entry holds the pool, so its id cannot be reused) -> its observer.
A registry rather than a constructor argument: every repository reaches the database
through `call`, and none of them need to know that health watches."""


def observe(pool: asyncpg.Pool, observer: Observer) -> None:
    """From now on, `observer` sees the outcome of every call on `pool`."""
    _observers[id(pool)] = (pool, observer)


def unobserve(pool: asyncpg.Pool) -> None:
    _observers.pop(id(pool), None)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded, jittered retries for 40001 and 40P01 only."""

    attempts: int = 3
    base_delay: float = 0.01
    max_delay: float = 0.2


async def call(pool: asyncpg.Pool, retry: RetryPolicy, deadline: Deadline, date_field: str,
               op: Op[T], zone_given: bool = False, write: bool = False) -> T:
    """Runs `op` on a pooled connection within the deadline; see the module docstring.

    A connection that fails under `op` is not reused (`pool.give_back`).
    For a `write`, the error says whether it may have been applied (`write_outcome`)."""
    attempt = 0
    while True:
        attempt += 1
        sent = False
        try:
            conn = await take(pool, deadline.timeout())
            sent = True
            try:
                result = await op(conn, deadline.timeout())
            except BaseException as exc:
                await give_back(pool, conn, exc)
                raise
            await give_back(pool, conn)
            if (seen := _observers.get(id(pool))) is not None:
                seen[1].succeeded()
            return result
        except DB_FAILURES as exc:
            if (isinstance(exc, asyncpg.PostgresError)
                    and exc.sqlstate in RETRYABLE_SQLSTATES
                    and attempt < retry.attempts):
                delay = min(retry.max_delay, retry.base_delay * 2 ** attempt)
                await asyncio.sleep(random.uniform(0, delay))
                continue
            err = map_db_error(exc, date_field, zone_given)
            if (err.reason is Reason.DATABASE_UNAVAILABLE
                    and (seen := _observers.get(id(pool))) is not None):
                seen[1].connection_failed()
            if write:
                err = with_write_outcome(err, "unknown" if sent else "not_applied")
            raise err from exc
