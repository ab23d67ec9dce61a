"""The run event stream's after-commit wake-up (storage/run_events_repo.EventNotifier):
a committed write of RunsRepository pokes it, a failed one does not, and the pokes of one
window share one NOTIFY on `potato_run_events`, sent outside the write's transaction."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from potato_runs.deadline import Deadline
from potato_runs.domain.errors import DomainError
from potato_runs.storage.pool import create_pool
from potato_runs.storage.run_events_repo import NOTIFY_CHANNEL, EventNotifier
from potato_runs.storage.runs_repo import RunsRepository
from support import DEFAULT_NOW, app_dsn

BOUND = 10.0


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(app_dsn(pg_dsn), min_size=1, max_size=4)
    try:
        yield p
    finally:
        await p.close()


async def _listen(pg_dsn: str) -> tuple[asyncpg.Connection, list[str]]:
    got: list[str] = []
    conn = await asyncpg.connect(pg_dsn)
    await conn.add_listener(NOTIFY_CHANNEL, lambda *args: got.append(args[3]))
    return conn, got


async def _until(cond: object, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + BOUND
    while not cond():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_pokes_of_one_window_share_one_notify(pg_dsn: str, pool: asyncpg.Pool) -> None:
    listener, got = await _listen(pg_dsn)
    notifier = EventNotifier(pool, window=0.2)
    try:
        for _ in range(20):
            notifier.poke()
        await _until(lambda: got, "no NOTIFY after the pokes")
        notifier.poke()   # a new window, a new wake-up
        await _until(lambda: len(got) >= 2, "no NOTIFY for the second window")
        # One session's notifications arrive in commit order: had the first window sent
        # more than one, they would all be here before the second window's.
        assert got == ["", ""]
    finally:
        await notifier.stop()
        await listener.close()


async def test_a_committed_write_pokes_and_a_refused_one_does_not(pool: asyncpg.Pool) -> None:
    pokes: list[int] = []
    repo = RunsRepository(pool, written=lambda: pokes.append(1))
    user = uuid.uuid4()
    await repo.mark_day(user, dt.date(2025, 6, 1), None, "UTC", "test", DEFAULT_NOW,
                        None, Deadline.after(5))
    assert pokes == [1]
    with pytest.raises(DomainError):   # a future date: refused by the write function
        await repo.mark_day(user, DEFAULT_NOW.date() + dt.timedelta(days=30), None, "UTC",
                            "test", DEFAULT_NOW, None, Deadline.after(5))
    assert pokes == [1]


async def test_a_failed_notify_is_swallowed(pg_dsn: str) -> None:
    """Best effort: with its pool closed the wake-up fails quietly (listeners poll)."""
    p = await create_pool(app_dsn(pg_dsn), min_size=0, max_size=1)
    await p.close()
    notifier = EventNotifier(p, window=0.0)
    notifier.poke()
    task = notifier._task
    assert task is not None
    await asyncio.wait_for(task, BOUND)
    assert task.exception() is None
