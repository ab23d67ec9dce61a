"""Small call helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub

NY = "America/New_York"


async def mark(stub: RunsServiceStub, user: str, day: str, tz: str | None = NY,
               **kw: Any) -> pb.MarkDayResponse:
    req = pb.MarkDayRequest(user_id=user, local_date=day, **kw)
    if tz is not None:
        req.time_zone = tz
    return await stub.MarkDay(req, timeout=10)


async def mark_at(stub: RunsServiceStub, user: str, instant: dt.datetime,
                  tz: str | None = None) -> pb.MarkDayResponse:
    req = pb.MarkDayRequest(user_id=user)
    req.mark_time.FromDatetime(instant.astimezone(dt.UTC))
    if tz is not None:
        req.time_zone = tz
    return await stub.MarkDay(req, timeout=10)


async def unmark(stub: RunsServiceStub, user: str, day: str) -> pb.UnmarkDayResponse:
    return await stub.UnmarkDay(pb.UnmarkDayRequest(user_id=user, local_date=day), timeout=10)


async def backfill(stub: RunsServiceStub, user: str, days: list[str],
                   tz: str | None = None) -> pb.BackfillDaysResponse:
    req = pb.BackfillDaysRequest(user_id=user, local_dates=days)
    if tz is not None:
        req.time_zone = tz
    return await stub.BackfillDays(req, timeout=30)


async def stored_runs(db: asyncpg.Connection,
                      user: str | uuid.UUID) -> list[tuple[str, str, int, bool]]:
    rows = await db.fetch(
        "SELECT start_date, end_date, day_count, active FROM runs WHERE user_id = $1 "
        "ORDER BY start_date", user)
    return [(r[0].isoformat(), r[1].isoformat(), r[2], r[3]) for r in rows]


async def stored_rows(db: asyncpg.Connection, user: str | uuid.UUID) -> list[tuple[Any, ...]]:
    """Every column of the user's runs, identity and timestamps included: equal rows
    before and after mean the runs were not touched at all."""
    return [tuple(r) for r in await db.fetch(
        "SELECT * FROM runs WHERE user_id = $1 ORDER BY start_date", user)]


async def checkin_dates(db: asyncpg.Connection, user: str | uuid.UUID) -> list[dt.date]:
    return [r[0] for r in await db.fetch(
        "SELECT checkin_date FROM daily_checkins WHERE user_id = $1 ORDER BY 1", user)]


async def checkins(db: asyncpg.Connection, user: str | uuid.UUID) -> list[str]:
    rows = await db.fetch("SELECT checkin_date FROM daily_checkins WHERE user_id = $1 "
                          "ORDER BY 1", user)
    return [r[0].isoformat() for r in rows]


def span(run: Any) -> tuple[str, str, int, bool]:
    return (run.start_date, run.end_date, run.day_count, run.active)


async def advisory_waiters(db: asyncpg.Connection) -> int:
    """Sessions waiting for an advisory lock (the per-user write lock) right now."""
    return int(await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))


async def settle_advisory_waiters(db: asyncpg.Connection, polls: int = 200) -> int:
    """Polls (bounded, 10 ms apart) until no session waits for an advisory lock; returns
    how many still wait at the end. Cancellation reaches PostgreSQL asynchronously."""
    waiting = await advisory_waiters(db)
    for _ in range(polls):
        if waiting == 0:
            break
        await asyncio.sleep(0.01)
        waiting = await advisory_waiters(db)
    return waiting
