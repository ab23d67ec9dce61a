"""The run events a write returns for its span (RunChange) are the ones it stored.

A MarkDay or UnmarkDay of one event returns no `changes` (migration 0008 saves the
read-back) and storage/runs_repo.py derives them from the result; two-event calls and
backfills list them. Either way their runs' dates must be run_events' own, for every
kind of change. The write functions are called directly (no server): this is about what
they return.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg

from potato_runs.domain.model import Run, RunChange
from potato_runs.storage.runs_repo import backfill_result, mark_result, unmark_result

NOW = dt.datetime(2025, 7, 1, 12, tzinfo=dt.UTC)


def dates(runs: tuple[Run, ...]) -> list[tuple[str, str, int]]:
    return [(r.start_date.isoformat(), r.end_date.isoformat(), r.day_count) for r in runs]


def stored_dates(value: Any) -> list[tuple[str, str, int]]:
    if value is None:
        return []
    runs = json.loads(value)
    runs = runs if isinstance(runs, list) else [runs]
    return [(r["start_date"], r["end_date"], r["day_count"]) for r in runs]


async def stored(db: asyncpg.Connection, user: uuid.UUID, after_id: int) -> list[Any]:
    return list(await db.fetch("SELECT event_id, kind, before, after FROM run_events "
                               "WHERE user_id = $1 AND event_id > $2 ORDER BY event_id",
                               user, after_id))


async def last_id(db: asyncpg.Connection, user: uuid.UUID) -> int:
    return int(await db.fetchval("SELECT coalesce(max(event_id), 0) FROM run_events "
                                 "WHERE user_id = $1", user))


def assert_same(changes: tuple[RunChange, ...], rows: list[Any]) -> None:
    assert [c.kind for c in changes] == [r["kind"] for r in rows]
    for change, row in zip(changes, rows, strict=True):
        assert dates(change.before) == stored_dates(row["before"]), change.kind
        assert dates(change.after) == stored_dates(row["after"]), change.kind


async def test_every_kind_of_change_describes_the_stored_event(db: asyncpg.Connection) -> None:
    user = uuid.uuid4()
    day = dt.date(2025, 6, 1)

    async def mark(offset: int) -> None:
        before = await last_id(db, user)
        res = await db.fetchval("SELECT potato_mark_day($1, $2, NULL, 'UTC', 't', $3, NULL)",
                                user, day + dt.timedelta(days=offset), NOW)
        assert_same(mark_result(user, json.loads(res)).changes, await stored(db, user, before))

    async def unmark(offset: int) -> None:
        before = await last_id(db, user)
        d = day + dt.timedelta(days=offset)
        res = await db.fetchval("SELECT potato_unmark_day($1, $2, $3, NULL)", user, d, NOW)
        assert_same(unmark_result(user, json.loads(res), d).changes,
                    await stored(db, user, before))

    async def backfill(*offsets: int) -> None:
        before = await last_id(db, user)
        res = await db.fetchval(
            "SELECT potato_backfill_days($1, $2::date[], 'UTC', 't', $3, NULL)",
            user, [day + dt.timedelta(days=o) for o in offsets], NOW)
        assert_same(backfill_result(user, json.loads(res)).changes,
                    await stored(db, user, before))

    await mark(0)          # created
    await mark(1)          # extended forward
    await mark(-1)         # extended backward
    await mark(3)          # deactivated + created (listed)
    await mark(2)          # merged
    await unmark(3)        # shrunk at the end
    await unmark(-1)       # shrunk at the start
    await unmark(1)        # split
    await unmark(2)        # deleted + activated (listed)
    await unmark(0)        # deleted
    await backfill(5, 7, 8, 10)   # created x3 (net)
    await backfill(6, 9, 12)      # merged, deactivated, created
    await mark(12)                # already marked: nothing
