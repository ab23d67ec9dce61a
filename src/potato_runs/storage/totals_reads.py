"""The two read paths behind the TotalsService: one query per read.

- COMPUTED answers on read from the facts (`daily_checkins`) with gaps and islands, the
  same arithmetic as migration 0004's `potato_computed_user_totals` and
  `potato_computed_month_totals`, for one user, with the month bounds and the page
  cursor pushed into the query. Its queries never name `runs` or the totals tables.
- STORED reads `user_totals` (+ the active run, for the current streak) and
  `run_totals`; nothing on this path is computed from the facts.

Both give the same shapes (domain/totals_answers.py). The user's zone comes from
`users` on both. Every call is bounded by the caller's Deadline and goes through
db_call (retries and error mapping), like storage/read_paths.py.
"""

from __future__ import annotations

import calendar
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.domain.model import Run
from potato_runs.domain.totals_answers import LifetimeRead, MonthRange, MonthRow, TotalsSource
from potato_runs.storage import db_call
from potato_runs.storage.active_run import active_run_lateral
from potato_runs.storage.db_call import RetryPolicy

T = TypeVar("T")

_USER = """(SELECT $1::uuid AS user_id) q LEFT JOIN users u ON u.user_id = q.user_id"""

# Lifetime, computed: islands of consecutive check-ins (consecutive dates minus their
# rank give one constant per island); the latest island is the active run.
_COMPUTED_LIFETIME = f"""
    WITH c AS (SELECT checkin_date, created_at,
                      checkin_date - (row_number() OVER (ORDER BY checkin_date))::int AS grp
                 FROM daily_checkins WHERE user_id = $1),
         i AS (SELECT min(checkin_date) AS start_date, max(checkin_date) AS end_date,
                      count(*)::int AS n, max(created_at) AS last
                 FROM c GROUP BY grp)
    SELECT u.time_zone, s.total_days, s.run_count, s.longest_run_days, s.updated_at,
           l.start_date, l.end_date, l.start_date IS NOT NULL AS active
      FROM {_USER}
     CROSS JOIN (SELECT coalesce(sum(n), 0)::int AS total_days, count(*)::int AS run_count,
                        coalesce(max(n), 0)::int AS longest_run_days,
                        max(last) AS updated_at FROM i) s
      LEFT JOIN LATERAL (SELECT start_date, end_date FROM i
                          ORDER BY end_date DESC LIMIT 1) l ON true"""

# Lifetime, stored: one user_totals row and the active run (partial unique index).
_STORED_LIFETIME = f"""
    SELECT u.time_zone, coalesce(t.total_days, 0) AS total_days,
           coalesce(t.run_count, 0) AS run_count,
           coalesce(t.longest_run_days, 0) AS longest_run_days, t.updated_at,
           r.start_date, r.end_date, r.active
      FROM {_USER}
      LEFT JOIN user_totals t ON t.user_id = q.user_id
      {active_run_lateral("q.user_id")}"""

# Months, computed. $2/$3: the first and last day of the range (inclusive); $4: how many
# months (page_size + 1). A skip scan first finds the $4 newest months with check-ins in
# the range (one primary-key probe per month), so only those months' check-ins are read,
# however long the history. Then gaps and islands per month: a month's streak_days is
# its longest stretch of consecutive check-ins, total_days their sum.
_COMPUTED_MONTHS = """
    WITH RECURSIVE m AS (
        SELECT (SELECT max(checkin_date) FROM daily_checkins
                 WHERE user_id = $1 AND checkin_date BETWEEN $2 AND $3) AS last_day, 1 AS k
        UNION ALL
        SELECT (SELECT max(d.checkin_date) FROM daily_checkins d
                 WHERE d.user_id = $1 AND d.checkin_date >= $2
                   AND d.checkin_date < date_trunc('month', m.last_day::timestamp)::date),
               m.k + 1
          FROM m WHERE m.last_day IS NOT NULL AND m.k < $4),
    c AS (SELECT checkin_date, created_at, potato_yyyymm(checkin_date) AS yyyymm,
                 checkin_date - (row_number() OVER (PARTITION BY potato_yyyymm(checkin_date)
                                                    ORDER BY checkin_date))::int AS grp
            FROM daily_checkins
           WHERE user_id = $1 AND checkin_date <= $3
             AND checkin_date >= (SELECT date_trunc('month', min(last_day)::timestamp)::date
                                    FROM m))
    SELECT i.yyyymm, sum(i.n)::int AS total_days, max(i.n)::int AS streak_days,
           max(i.last) AS updated_at
      FROM (SELECT yyyymm, count(*) AS n, max(created_at) AS last
              FROM c GROUP BY yyyymm, grp) i
     GROUP BY i.yyyymm ORDER BY i.yyyymm DESC LIMIT $4"""

# Months, stored: the run_totals rows in the range (primary key order, backwards).
_STORED_MONTHS = """
    SELECT yyyymm, total_days, streak_days, updated_at FROM run_totals
     WHERE user_id = $1 AND yyyymm BETWEEN $2 AND $3
     ORDER BY yyyymm DESC LIMIT $4"""

QUERIES: dict[tuple[TotalsSource, str], str] = {
    (TotalsSource.COMPUTED, "lifetime"): _COMPUTED_LIFETIME,
    (TotalsSource.COMPUTED, "months"): _COMPUTED_MONTHS,
    (TotalsSource.STORED, "lifetime"): _STORED_LIFETIME,
    (TotalsSource.STORED, "months"): _STORED_MONTHS,
}
"""(source, read) -> SQL. The computed ones read only `users` and `daily_checkins`; the
stored ones never name `daily_checkins` (tests/integration/test_totals_service.py
proves both with privileges)."""

FIRST_DAY = dt.date(1, 1, 1)
LAST_DAY = dt.date(9999, 12, 31)
LOWEST_MONTH, HIGHEST_MONTH = 101, 999912


def _first_day(key: int) -> dt.date:
    return dt.date(key // 100, key % 100, 1)


def _last_day(key: int) -> dt.date:
    year, month = key // 100, key % 100
    return dt.date(year, month, calendar.monthrange(year, month)[1])


def _run(user_id: uuid.UUID, rec: Mapping[str, Any]) -> Run | None:
    if rec["start_date"] is None:
        return None
    return Run(user_id=user_id, start_date=rec["start_date"], end_date=rec["end_date"],
               active=bool(rec["active"]))


class TotalsReader:
    """The reads on one connection; each statement is bounded by the deadline."""

    def __init__(self, conn: asyncpg.Connection, deadline: Deadline) -> None:
        self._conn = conn
        self._deadline = deadline

    async def lifetime(self, source: TotalsSource, user_id: uuid.UUID) -> LifetimeRead:
        rec = await self._conn.fetchrow(QUERIES[source, "lifetime"], user_id,
                                        timeout=self._deadline.timeout())
        assert rec is not None
        return LifetimeRead(time_zone=rec["time_zone"], total_days=rec["total_days"],
                            run_count=rec["run_count"],
                            longest_run_days=rec["longest_run_days"],
                            latest=_run(user_id, rec), updated_at=rec["updated_at"])

    async def months(self, source: TotalsSource, user_id: uuid.UUID, months: MonthRange,
                     limit: int) -> list[MonthRow]:
        """Up to `limit` months with check-ins inside `months`, newest first."""
        if months.empty:
            return []
        if source is TotalsSource.COMPUTED:
            low: Any = FIRST_DAY if months.low is None else _first_day(months.low)
            high: Any = LAST_DAY if months.high is None else _last_day(months.high)
        else:
            low = LOWEST_MONTH if months.low is None else months.low
            high = HIGHEST_MONTH if months.high is None else months.high
        rows = await self._conn.fetch(QUERIES[source, "months"], user_id, low, high, limit,
                                      timeout=self._deadline.timeout())
        return [MonthRow(yyyymm=r["yyyymm"], total_days=r["total_days"],
                         streak_days=r["streak_days"], updated_at=r["updated_at"])
                for r in rows]


class TotalsReads:
    def __init__(self, pool: asyncpg.Pool, retry: RetryPolicy | None = None) -> None:
        self._pool = pool
        self._retry = retry or RetryPolicy()

    async def read(self, deadline: Deadline, fn: Callable[[TotalsReader], Awaitable[T]]) -> T:
        """`fn` on one pooled connection (autocommit: one query is one snapshot)."""
        async def op(conn: asyncpg.Connection, _timeout: float) -> T:
            return await fn(TotalsReader(conn, deadline))

        return await db_call.call(self._pool, self._retry, deadline, "user_id", op)

    async def snapshot(self, deadline: Deadline,
                       fn: Callable[[TotalsReader], Awaitable[T]]) -> T:
        """`fn` in one REPEATABLE READ, READ ONLY transaction (one snapshot)."""
        async def op(conn: asyncpg.Connection, _timeout: float) -> T:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(TotalsReader(conn, deadline))

        return await db_call.call(self._pool, self._retry, deadline, "user_id", op)
