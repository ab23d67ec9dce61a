"""The two read paths behind the v1 reads: one query per read.

- LEGACY computes on read from the facts (`daily_checkins`) with gaps and islands, as
  the service did before v2. Its queries never name the `runs` table.
- PROJECTION reads the stored `runs` only (nothing on this path is computed from the
  facts).

Both give the same shapes (domain/reads.py). The user's zone comes from `users` on
both. Every call is bounded by the caller's Deadline and goes through db_call (retries
and error mapping), like RunsRepository's.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.domain.model import Run
from potato_runs.domain.reads import CurrentRead, ReadSource, StatsRead
from potato_runs.storage import db_call
from potato_runs.storage.active_run import active_run_lateral
from potato_runs.storage.db_call import RetryPolicy

T = TypeVar("T")

# Gaps and islands: consecutive dates minus their rank give one constant per island.
_ISLANDS = """
    WITH c AS (SELECT checkin_date,
                      checkin_date - (row_number() OVER (ORDER BY checkin_date))::int AS grp
                 FROM daily_checkins WHERE user_id = $1),
         i AS (SELECT min(checkin_date) AS start_date, max(checkin_date) AS end_date,
                      count(*)::int AS n
                 FROM c GROUP BY grp)"""

_USER = """(SELECT $1::uuid AS user_id) q LEFT JOIN users u ON u.user_id = q.user_id"""

QUERIES: dict[tuple[ReadSource, str], str] = {
    (ReadSource.LEGACY, "current"): _ISLANDS + f"""
        SELECT u.time_zone, l.start_date, l.end_date, l.start_date IS NOT NULL AS active
          FROM {_USER}
          LEFT JOIN LATERAL (SELECT start_date, end_date FROM i
                              ORDER BY end_date DESC LIMIT 1) l ON true""",
    (ReadSource.LEGACY, "runs"): _ISLANDS + """
        SELECT start_date, end_date, end_date = max(end_date) OVER () AS active
          FROM i ORDER BY end_date DESC LIMIT $2""",
    (ReadSource.LEGACY, "stats"): _ISLANDS + f"""
        SELECT u.time_zone, s.total_days, s.longest_run_days, s.run_count,
               l.start_date, l.end_date, l.start_date IS NOT NULL AS active
          FROM {_USER}
         CROSS JOIN (SELECT coalesce(sum(n), 0)::int AS total_days,
                            coalesce(max(n), 0)::int AS longest_run_days,
                            count(*)::int AS run_count FROM i) s
          LEFT JOIN LATERAL (SELECT start_date, end_date FROM i
                              ORDER BY end_date DESC LIMIT 1) l ON true""",
    (ReadSource.PROJECTION, "current"): f"""
        SELECT u.time_zone, r.start_date, r.end_date, r.active
          FROM {_USER}
          {active_run_lateral("q.user_id")}""",
    (ReadSource.PROJECTION, "runs"): """
        SELECT start_date, end_date, active FROM runs
         WHERE user_id = $1 ORDER BY end_date DESC LIMIT $2""",
    (ReadSource.PROJECTION, "stats"): f"""
        SELECT u.time_zone, s.total_days, s.longest_run_days, s.run_count,
               r.start_date, r.end_date, r.active
          FROM {_USER}
         CROSS JOIN LATERAL (SELECT coalesce(sum(day_count), 0)::int AS total_days,
                                    coalesce(max(day_count), 0)::int AS longest_run_days,
                                    count(*)::int AS run_count
                               FROM runs WHERE user_id = q.user_id) s
          {active_run_lateral("q.user_id")}""",
}
"""(source, read) -> SQL. Legacy's never name `runs`; the projection's never name
`daily_checkins` (tests/integration/test_v1.py proves both with privileges)."""


def _run(user_id: uuid.UUID, rec: Mapping[str, Any]) -> Run | None:
    if rec["start_date"] is None:
        return None
    return Run(user_id=user_id, start_date=rec["start_date"], end_date=rec["end_date"],
               active=bool(rec["active"]))


class Reader:
    """The reads on one connection; each statement is bounded by the deadline."""

    def __init__(self, conn: asyncpg.Connection, deadline: Deadline) -> None:
        self._conn = conn
        self._deadline = deadline

    async def current(self, source: ReadSource, user_id: uuid.UUID) -> CurrentRead:
        rec = await self._conn.fetchrow(QUERIES[source, "current"], user_id,
                                        timeout=self._deadline.timeout())
        assert rec is not None
        return CurrentRead(time_zone=rec["time_zone"], run=_run(user_id, rec))

    async def runs(self, source: ReadSource, user_id: uuid.UUID, limit: int) -> list[Run]:
        rows = await self._conn.fetch(QUERIES[source, "runs"], user_id, limit,
                                      timeout=self._deadline.timeout())
        return [r for r in (_run(user_id, rec) for rec in rows) if r is not None]

    async def stats(self, source: ReadSource, user_id: uuid.UUID) -> StatsRead:
        rec = await self._conn.fetchrow(QUERIES[source, "stats"], user_id,
                                        timeout=self._deadline.timeout())
        assert rec is not None
        return StatsRead(time_zone=rec["time_zone"], total_days=rec["total_days"],
                         longest_run_days=rec["longest_run_days"], run_count=rec["run_count"],
                         latest=_run(user_id, rec))


class ReadPaths:
    def __init__(self, pool: asyncpg.Pool, retry: RetryPolicy | None = None) -> None:
        self._pool = pool
        self._retry = retry or RetryPolicy()

    async def read(self, deadline: Deadline, fn: Callable[[Reader], Awaitable[T]]) -> T:
        """`fn` on one pooled connection (autocommit: one query is one snapshot)."""
        async def op(conn: asyncpg.Connection, _timeout: float) -> T:
            return await fn(Reader(conn, deadline))

        return await db_call.call(self._pool, self._retry, deadline, "user_id", op)

    async def snapshot(self, deadline: Deadline, fn: Callable[[Reader], Awaitable[T]]) -> T:
        """`fn` in one REPEATABLE READ, READ ONLY transaction: every read it makes sees
        the same snapshot, so two paths read there cannot differ by a write between."""
        async def op(conn: asyncpg.Connection, _timeout: float) -> T:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(Reader(conn, deadline))

        return await db_call.call(self._pool, self._retry, deadline, "user_id", op)

    async def current(self, source: ReadSource, user_id: uuid.UUID,
                      deadline: Deadline) -> CurrentRead:
        return await self.read(deadline, lambda r: r.current(source, user_id))

    async def runs(self, source: ReadSource, user_id: uuid.UUID, limit: int,
                   deadline: Deadline) -> list[Run]:
        return await self.read(deadline, lambda r: r.runs(source, user_id, limit))

    async def stats(self, source: ReadSource, user_id: uuid.UUID,
                    deadline: Deadline) -> StatsRead:
        return await self.read(deadline, lambda r: r.stats(source, user_id))
