"""Reconciliation of the stored totals (run_totals, user_totals) with the facts.

The scan is set-based over a batch of users in user_id order (like DRIFT_SQL and the
population diff in admin_repo.py): the stored rows are compared both ways (EXCEPT ALL)
with potato_computed_month_totals / potato_computed_user_totals, so a missing, an extra
and a wrong row each count once. The repair is per user: one short transaction that
takes the user's advisory lock first and recomputes every month of the user (the
stored months and the months of the facts) with potato_refresh_totals.

Lifetime rows: potato_refresh_totals always writes one, zeros for a user without
check-ins, so the computed side has a row for every user of the batch (zeros when the
user has no check-ins) and a user without a lifetime row has drifted.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.storage.admin_repo import AdminRepository
from potato_runs.storage.errors import DB_FAILURES, map_db_error
from potato_runs.storage.pool import acquire

BATCH_USERS_SQL = """
SELECT user_id FROM users WHERE ($1::uuid IS NULL OR user_id > $1) ORDER BY user_id LIMIT $2
"""
"""The users of one batch ($1: the last user of the previous batch or NULL, $2: size)."""

# The users come as an array parameter, not a sub-select: only then can PostgreSQL
# inline the SQL functions and read run_totals/user_totals through their primary keys
# (with a sub-select it scanned the whole of run_totals for every batch).
TOTALS_DRIFT_SQL = """
WITH batch AS MATERIALIZED (
    SELECT DISTINCT unnest($1::uuid[]) AS user_id
), computed_months AS MATERIALIZED (
    SELECT c.user_id, c.yyyymm, c.streak_days, c.total_days
      FROM potato_computed_month_totals($1::uuid[]) c
), stored_months AS MATERIALIZED (
    SELECT t.user_id, t.yyyymm, t.streak_days, t.total_days
      FROM run_totals t WHERE t.user_id = ANY ($1::uuid[])
), computed_lifetime AS MATERIALIZED (   -- zeros for a user without check-ins
    SELECT b.user_id, coalesce(c.total_days, 0) AS total_days,
           coalesce(c.run_count, 0) AS run_count,
           coalesce(c.longest_run_days, 0) AS longest_run_days
      FROM batch b
      LEFT JOIN potato_computed_user_totals($1::uuid[]) c USING (user_id)
), stored_lifetime AS MATERIALIZED (
    SELECT u.user_id, u.total_days, u.run_count, u.longest_run_days
      FROM user_totals u WHERE u.user_id = ANY ($1::uuid[])
), drift AS (    -- (user, month) keys; a wrong row is on both sides and counts once
    SELECT user_id, yyyymm
      FROM ((SELECT * FROM computed_months EXCEPT ALL SELECT * FROM stored_months)
            UNION ALL
            (SELECT * FROM stored_months EXCEPT ALL SELECT * FROM computed_months)) m
    UNION
    SELECT user_id, 0   -- the lifetime row's key
      FROM ((SELECT * FROM computed_lifetime EXCEPT ALL SELECT * FROM stored_lifetime)
            UNION ALL
            (SELECT * FROM stored_lifetime EXCEPT ALL SELECT * FROM computed_lifetime)) l
), per_user AS (
    SELECT user_id, count(*)::integer AS n FROM drift GROUP BY user_id
)
SELECT ARRAY(SELECT user_id FROM per_user ORDER BY user_id) AS users,
       ARRAY(SELECT n FROM per_user ORDER BY user_id) AS rows
"""
"""The drifted rows of the users $1 (existing users), per user."""

REPAIR_SQL = """
SELECT potato_refresh_totals($1, ARRAY(
           SELECT make_date(t.yyyymm / 100, t.yyyymm % 100, 1)
             FROM run_totals t WHERE t.user_id = $1
           UNION
           SELECT DISTINCT date_trunc('month', c.checkin_date)::date
             FROM daily_checkins c WHERE c.user_id = $1), $2)
"""
"""Recomputes every month of user $1 (stored or in the facts) and the lifetime row."""


@dataclass(frozen=True)
class TotalsDriftScan:
    """One batch of the scan."""

    users_checked: int
    last_user: uuid.UUID | None
    """The cursor for the next batch; None when the batch was empty."""
    drifted: tuple[tuple[uuid.UUID, int], ...]
    """Users whose stored totals differ from the facts, with the rows that differ
    (missing, extra or wrong months, plus the lifetime row), in user_id order."""

    @property
    def rows_drifted(self) -> int:
        return sum(n for _, n in self.drifted)


@dataclass(frozen=True)
class TotalsRepair:
    rows_repaired: int
    """Rows potato_refresh_totals rewrote, inserted or deleted."""
    rows_still_drifted: int
    """Rows that still differ from the facts after the repair (0 unless the user's runs
    drift from the check-ins: the lifetime row is kept from the runs)."""


class TotalsRepository:
    def __init__(self, pool: asyncpg.Pool, *, jit: bool = False, work_mem_mb: int = 64,
                 lock_timeout: float | None = None) -> None:
        """`jit=False` turns JIT off for the scan and `work_mem_mb` lets its sorts stay in
        memory (both measured in scripts/bench_totals_reconcile.py); `lock_timeout`
        (seconds) overrides the pool's wait for a user's lock during a repair
        (CONTENTION past it)."""
        self._pool = pool
        self._jit = jit
        self._work_mem_mb = int(work_mem_mb)
        self._lock_timeout = lock_timeout

    async def drift_batch(self, after: uuid.UUID | None, batch: int,
                          timeout: float = 300.0) -> TotalsDriftScan:
        """The stored totals of the `batch` users after `after` against the facts."""
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                async with conn.transaction(readonly=True):
                    users = [r[0] for r in await conn.fetch(BATCH_USERS_SQL, after, batch,
                                                            timeout=budget.timeout())]
                    if not users:
                        return TotalsDriftScan(users_checked=0, last_user=None, drifted=())
                    await conn.execute(
                        f"SET LOCAL jit = {'on' if self._jit else 'off'}; "
                        f"SET LOCAL work_mem = '{self._work_mem_mb}MB'", timeout=budget.timeout())
                    row = await conn.fetchrow(TOTALS_DRIFT_SQL, users,
                                              timeout=budget.timeout())
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        assert row is not None
        return TotalsDriftScan(
            users_checked=len(users), last_user=users[-1],
            drifted=tuple(zip(row["users"], (int(n) for n in row["rows"]), strict=True)))

    async def repair_user(self, user_id: uuid.UUID, now: dt.datetime,
                          timeout: float = 60.0) -> TotalsRepair:
        """Recomputes all of one user's totals under the user's lock (one transaction),
        then checks them against the facts in the same transaction."""
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                async with conn.transaction():
                    if self._lock_timeout is not None:
                        await conn.execute(
                            f"SET LOCAL lock_timeout = '{int(self._lock_timeout * 1000)}ms'",
                            timeout=budget.timeout())
                    await conn.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))",
                                       user_id, timeout=budget.timeout())
                    repaired = await conn.fetchval(REPAIR_SQL, user_id, now,
                                                   timeout=budget.timeout())
                    left = await conn.fetchrow(TOTALS_DRIFT_SQL, [user_id],
                                               timeout=budget.timeout())
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        assert left is not None
        return TotalsRepair(rows_repaired=int(repaired or 0),
                            rows_still_drifted=sum(int(n) for n in left["rows"]))

    async def count_users(self, timeout: float = 60.0) -> int:
        return await AdminRepository(self._pool).count_users(timeout=timeout)

    # -- the daily claim (one replica per day) ------------------------------------
    async def claim_day(self, day: dt.date, replica: str, now: dt.datetime,
                        timeout: float = 10.0) -> bool:
        """Claims `day`'s run for `replica`; False when another replica has it."""
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                got = await conn.fetchval(
                    """INSERT INTO totals_reconcile_runs (day, replica, started_at)
                       VALUES ($1, $2, $3) ON CONFLICT (day) DO NOTHING RETURNING true""",
                    day, replica, now, timeout=budget.timeout())
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        return bool(got)

    async def finish_day(self, day: dt.date, now: dt.datetime, *, users_checked: int,
                         rows_drifted: int, rows_repaired: int, users_failed: int,
                         error: str | None, timeout: float = 10.0) -> None:
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                await conn.execute(
                    """UPDATE totals_reconcile_runs
                          SET finished_at = greatest($2, started_at), users_checked = $3,
                              rows_drifted = $4, rows_repaired = $5, users_failed = $6,
                              error = $7
                        WHERE day = $1""",
                    day, now, users_checked, rows_drifted, rows_repaired, users_failed, error,
                    timeout=budget.timeout())
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
