"""RunsRepository: the write functions and the read queries."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.domain.model import (
    BackfillResult,
    Change,
    MarkResult,
    Run,
    RunChange,
    UnmarkResult,
)
from potato_runs.domain.request_ids import RequestKey
from potato_runs.storage import db_call
from potato_runs.storage.active_run import active_run_lateral
from potato_runs.storage.db_call import RetryPolicy
from potato_runs.storage.errors import map_db_error

T = TypeVar("T")


def _ts(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def run_from_json(user_id: uuid.UUID, data: Mapping[str, Any]) -> Run:
    return Run(
        user_id=user_id,
        start_date=_date(data["start_date"]),
        end_date=_date(data["end_date"]),
        active=bool(data["active"]),
        created_at=_ts(data.get("created_at")),
        updated_at=_ts(data.get("updated_at")),
        last_extended_at=_ts(data.get("last_extended_at")),
        run_id=int(data["run_id"]) if data.get("run_id") is not None else None,
    )


def run_from_record(rec: Mapping[str, Any]) -> Run:
    return run_from_json(rec["user_id"], rec)


def _events(res: Mapping[str, Any]) -> tuple[str, ...]:
    """The events a write caused; none for a replay (they were counted the first time)."""
    return () if res.get("replayed") else tuple(res["events"] or ())


def _runs_of(user_id: uuid.UUID, value: Any) -> tuple[Run, ...]:
    """A run event's `before`/`after`: null, one run, or an array of runs."""
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(run_from_json(user_id, r) for r in value)
    return (run_from_json(user_id, value),)


def _changes(user_id: uuid.UUID, res: Mapping[str, Any],
             derive: Callable[[str], RunChange | None]) -> tuple[RunChange, ...]:
    """The run events a write wrote, with their runs: migration 0008's `changes` when the
    write function returned them, else (a MarkDay or UnmarkDay of one event, where the
    function saves the read-back) derived from the result by `derive`. None for a replay
    (it wrote nothing)."""
    if res.get("replayed"):
        return ()
    listed = res.get("changes")
    if listed is not None:
        return tuple(RunChange(str(c["kind"]), _runs_of(user_id, c.get("before")),
                               _runs_of(user_id, c.get("after"))) for c in listed)
    return tuple(c for kind in _events(res) if (c := derive(kind)) is not None)


def _span(run: Run, start: dt.date, end: dt.date) -> Run:
    """`run`'s identity with other dates: a run before a one-day change (its dates are
    what telemetry reports; the timestamps are the result's)."""
    return dataclasses.replace(run, start_date=start, end_date=end)


def _mark_change(kind: str, run: Run, day: dt.date) -> RunChange | None:
    """The one event of a MarkDay that added `day` to `run` (now holding it)."""
    one = dt.timedelta(days=1)
    if kind == "run_created":
        return RunChange(kind, (), (run,))
    if kind == "run_extended":
        before = (_span(run, day + one, run.end_date) if day == run.start_date
                  else _span(run, run.start_date, day - one))
        return RunChange(kind, (before,), (run,))
    if kind == "run_merged":
        return RunChange(kind, (_span(run, run.start_date, day - one),
                                _span(run, day + one, run.end_date)), (run,))
    return None


def _unmark_change(kind: str, runs: tuple[Run, ...], user_id: uuid.UUID,
                   day: dt.date) -> RunChange | None:
    """The one event of an UnmarkDay that removed `day`; `runs` is its result's runs
    (the shrunk run; the split's right then left piece; none when deleted)."""
    one = dt.timedelta(days=1)
    if kind == "run_deleted":
        return RunChange(kind, (Run(user_id, day, day, False),), ())
    if kind == "run_shrunk" and len(runs) == 1:
        after = runs[0]
        before = (_span(after, day, after.end_date) if day == after.start_date - one
                  else _span(after, after.start_date, day))
        return RunChange(kind, (before,), (after,))
    if kind == "run_split" and len(runs) == 2:
        right, left = runs
        return RunChange(kind, (_span(left, left.start_date, right.end_date),), (left, right))
    return None


def mark_result(user_id: uuid.UUID, res: Mapping[str, Any]) -> MarkResult:
    """A MarkResult from potato_mark_day's jsonb (or its recorded copy)."""
    run = run_from_json(user_id, res["run"])
    day = _date(res["local_date"])
    return MarkResult(
        run=run,
        local_date=day,
        change=Change(res["change"]),
        time_zone=str(res["time_zone"]),
        events=_events(res),
        changes=_changes(user_id, res, lambda kind: _mark_change(kind, run, day)),
    )


def unmark_result(user_id: uuid.UUID, res: Mapping[str, Any],
                  day: dt.date | None = None) -> UnmarkResult:
    """An UnmarkResult from potato_unmark_day's jsonb (or its recorded copy); `day`, the
    unmarked date, lets a one-event result describe its run event (none without it)."""
    runs = tuple(run_from_json(user_id, r) for r in res["runs"])
    return UnmarkResult(
        removed=bool(res["removed"]),
        change=Change(res["change"]),
        runs=runs,
        events=_events(res),
        changes=_changes(user_id, res, lambda kind: None if day is None
                         else _unmark_change(kind, runs, user_id, day)),
    )


def backfill_result(user_id: uuid.UUID, res: Mapping[str, Any]) -> BackfillResult:
    """A BackfillResult from potato_backfill_days's jsonb (or its recorded copy)."""
    return BackfillResult(
        added_days=int(res["added_days"]),
        runs=tuple(run_from_json(user_id, r) for r in res["runs"]),
        time_zone=str(res["time_zone"]),
        events=_events(res),
        changes=_changes(user_id, res, lambda _kind: None),   # always listed (0008)
    )


RUN_COLUMNS = ("run_id, user_id, start_date, end_date, day_count, active, created_at, updated_at, "
                "last_extended_at")

ACTIVE_SQL = f"""SELECT u.time_zone, r.start_date IS NOT NULL AS has_run,
                       {", ".join("r." + c.strip() for c in RUN_COLUMNS.split(","))}
                  FROM (SELECT $1::uuid AS user_id) q
                  LEFT JOIN users u ON u.user_id = q.user_id
                  {active_run_lateral("q.user_id")}"""
"""The stored zone and active run of one user (GetActiveRun)."""

Active = tuple[str | None, Run | None]


class RunsRepository:
    def __init__(self, pool: asyncpg.Pool, retry: RetryPolicy | None = None,
                 written: Callable[[], None] | None = None) -> None:
        """`written` is called after each write that committed (the run event stream's
        after-commit wake-up, run_events_repo.EventNotifier)."""
        self._pool = pool
        self._retry = retry or RetryPolicy()
        self._written = written
        self._user_locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    @contextlib.asynccontextmanager
    async def _one_writer_per_user(self, user_id: uuid.UUID,
                                   deadline: Deadline) -> AsyncIterator[None]:
        """Writes of one user queue here, in the process, before taking a pooled
        connection: a burst for one user (or a user whose database lock is stuck)
        then holds at most one connection, not the whole pool. The database's
        advisory lock still serializes writers across processes."""
        lock = self._user_locks.get(user_id)
        if lock is None:
            lock = self._user_locks[user_id] = asyncio.Lock()
        if lock.locked():   # else acquire() returns at once: no timer needed
            try:
                async with asyncio.timeout(deadline.timeout()):
                    await lock.acquire()
            except TimeoutError as exc:
                raise map_db_error(exc) from exc
        else:
            await lock.acquire()
        try:
            yield
        finally:
            lock.release()
        if self._written is not None:   # the body returned: its write committed
            self._written()

    async def _run(self, deadline: Deadline, date_field: str,
                   op: Callable[[asyncpg.Connection, float], Awaitable[T]],
                   zone_given: bool = False, write: bool = False) -> T:
        return await db_call.call(self._pool, self._retry, deadline, date_field, op, zone_given,
                                  write)

    async def mark_day(self, user_id: uuid.UUID, local_date: dt.date | None,
                       mark_time: dt.datetime | None, time_zone: str | None, source: str,
                       now: dt.datetime, request_id: str | None,
                       deadline: Deadline, key: RequestKey | None = None) -> MarkResult:
        """With `key` (an AIP-155 request id): the lookup, the write and the record of
        its response in the same statement (migration 0007); a replay returns the
        recorded result. Without it, the same call as before request ids existed."""
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            if key is None:
                return await conn.fetchval(
                    "SELECT potato_mark_day($1, $2, $3, $4, $5, $6, $7)",
                    user_id, local_date, mark_time, time_zone, source, now, request_id,
                    timeout=timeout)
            return await conn.fetchval(
                "SELECT potato_mark_day_once($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                user_id, local_date, mark_time, time_zone, source, now, request_id,
                key.request_id, key.fingerprint, timeout=timeout)

        field = "local_date" if local_date is not None else "mark_time"
        async with self._one_writer_per_user(user_id, deadline):
            res = await self._run(deadline, field, op, zone_given=time_zone is not None,
                                  write=True)
        return mark_result(user_id, res)

    async def unmark_day(self, user_id: uuid.UUID, local_date: dt.date, now: dt.datetime,
                         request_id: str | None, deadline: Deadline,
                         key: RequestKey | None = None) -> UnmarkResult:
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            if key is None:
                return await conn.fetchval("SELECT potato_unmark_day($1, $2, $3, $4)",
                                           user_id, local_date, now, request_id,
                                           timeout=timeout)
            return await conn.fetchval("SELECT potato_unmark_day_once($1, $2, $3, $4, $5, $6)",
                                       user_id, local_date, now, request_id, key.request_id,
                                       key.fingerprint, timeout=timeout)

        async with self._one_writer_per_user(user_id, deadline):
            res = await self._run(deadline, "local_date", op, write=True)
        return unmark_result(user_id, res, local_date)

    async def backfill_days(self, user_id: uuid.UUID, dates: Sequence[dt.date],
                            time_zone: str | None, source: str, now: dt.datetime,
                            request_id: str | None, deadline: Deadline,
                            key: RequestKey | None = None) -> BackfillResult:
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            if key is None:
                return await conn.fetchval(
                    "SELECT potato_backfill_days($1, $2::date[], $3, $4, $5, $6)",
                    user_id, list(dates), time_zone, source, now, request_id, timeout=timeout)
            return await conn.fetchval(
                "SELECT potato_backfill_days_once($1, $2::date[], $3, $4, $5, $6, $7, $8)",
                user_id, list(dates), time_zone, source, now, request_id, key.request_id,
                key.fingerprint, timeout=timeout)

        async with self._one_writer_per_user(user_id, deadline):
            res = await self._run(deadline, "local_dates", op, zone_given=time_zone is not None,
                                  write=True)
        return backfill_result(user_id, res)

    async def recorded(self, user_id: uuid.UUID, key: RequestKey,
                       deadline: Deadline) -> Mapping[str, Any] | None:
        """The response recorded for `key` when it was recorded for the same request
        (same fingerprint), else None. No lock: a recorded response never changes. For
        a retry that the service's own checks would now refuse (e.g. its date is in the
        future in a zone stored since): it must still get the original response."""
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            return await conn.fetchval(
                "SELECT response || jsonb_build_object('replayed', true) FROM request_ids "
                "WHERE user_id = $1 AND request_id = $2 AND fingerprint = $3",
                user_id, key.request_id, key.fingerprint, timeout=timeout)

        res = await self._run(deadline, "request_id", op)
        return None if res is None else dict(res)

    async def get_zone(self, user_id: uuid.UUID, deadline: Deadline) -> str | None:
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            return await conn.fetchval("SELECT time_zone FROM users WHERE user_id = $1",
                                       user_id, timeout=timeout)

        zone = await self._run(deadline, "user_id", op)
        return str(zone) if zone is not None else None

    async def get_active(self, user_id: uuid.UUID, deadline: Deadline) -> Active:
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            return await conn.fetchrow(ACTIVE_SQL, user_id, timeout=timeout)

        rec = await self._run(deadline, "user_id", op)
        return rec["time_zone"], run_from_record(rec) if rec["has_run"] else None

    async def list_runs(self, user_id: uuid.UUID, before_end: dt.date | None, limit: int,
                        deadline: Deadline) -> list[Run]:
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            return await conn.fetch(
                f"""SELECT {RUN_COLUMNS} FROM runs
                     WHERE user_id = $1 AND ($2::date IS NULL OR end_date < $2)
                     ORDER BY end_date DESC LIMIT $3""",
                user_id, before_end, limit, timeout=timeout)

        rows = await self._run(deadline, "user_id", op)
        return [run_from_record(r) for r in rows]

    async def ping(self, deadline: Deadline) -> bool:
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            return await conn.fetchval("SELECT 1", timeout=timeout)

        return bool(await self._run(deadline, "request", op) == 1)
