"""RunsRepository over a real pool: deadlines bound every wait; retries only 40001 and
40P01, a bounded number of times."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from asyncpg import exceptions as pgx

from potato_runs.deadline import Deadline
from potato_runs.domain.errors import DomainError, ErrorKind, Reason
from potato_runs.storage.pool import create_pool
from potato_runs.storage.runs_repo import RetryPolicy, RunsRepository

from .helpers import settle_advisory_waiters


@pytest.fixture
async def repo(pg_dsn: str) -> AsyncIterator[RunsRepository]:
    pool = await create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        yield RunsRepository(pool, RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002))
    finally:
        await pool.close()


def failing(errors: list[Exception]):  # type: ignore[no-untyped-def]
    """An operation on a real connection that first raises each of `errors`."""
    calls: list[int] = []

    async def op(conn: asyncpg.Connection, timeout: float) -> int:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return int(await conn.fetchval("SELECT 42", timeout=timeout))

    return op, calls


@pytest.mark.parametrize("error", [pgx.DeadlockDetectedError, pgx.SerializationError])
async def test_deadlocks_and_serialization_failures_are_retried(
        repo: RunsRepository, error: type[Exception]) -> None:
    op, calls = failing([error("first"), error("second")])
    assert await repo._run(Deadline.after(5), "local_date", op) == 42
    assert len(calls) == 3


async def test_retries_are_bounded(repo: RunsRepository) -> None:
    op, calls = failing([pgx.DeadlockDetectedError(str(i)) for i in range(10)])
    with pytest.raises(DomainError) as err:
        await repo._run(Deadline.after(5), "local_date", op)
    assert (err.value.kind, err.value.reason) == (ErrorKind.ABORTED, Reason.CONTENTION)
    assert len(calls) == 3


@pytest.mark.parametrize("error", [pgx.UniqueViolationError, pgx.LockNotAvailableError,
                                   pgx.QueryCanceledError])
async def test_other_errors_are_not_retried(repo: RunsRepository,
                                            error: type[Exception]) -> None:
    op, calls = failing([error("once")])
    with pytest.raises(DomainError):
        await repo._run(Deadline.after(5), "local_date", op)
    assert len(calls) == 1


async def test_the_deadline_bounds_the_wait_for_the_users_lock(repo: RunsRepository,
                                                               pg_dsn: str) -> None:
    import datetime as dt
    import uuid

    user = uuid.uuid4()
    holder = await asyncpg.connect(pg_dsn)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))", user)
    try:
        with pytest.raises(DomainError) as err:
            await repo.mark_day(user, dt.date(2025, 6, 1), None, "UTC", "",
                                dt.datetime(2025, 7, 1, tzinfo=dt.UTC), None, Deadline.after(0.3))
        assert err.value.kind is ErrorKind.DEADLINE_EXCEEDED
        # The statement was cancelled in PostgreSQL, not left waiting for lock_timeout.
        assert await settle_advisory_waiters(holder, polls=100) == 0
    finally:
        await tx.rollback()
        await holder.close()
