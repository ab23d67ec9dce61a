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

# The users come as an array parameter, not a sub-select: only then can PostgreSQL read
# run_totals/user_totals through their primary keys (with a sub-select it scanned the
# whole of run_totals for every batch). The computed sides are the bodies of
# potato_computed_month_totals / potato_computed_user_totals (0004), written out: Citus
# cannot plan a parameterised SQL function that reads distributed tables, and PostgreSQL
# inlined them anyway. A key (user, month; the lifetime row: month 0) has drifted when
# its stored row is missing, extra or different: full joins on the key, so one row per
# key, as EXCEPT ALL both ways then UNION gave. Every part is joined and grouped by
# user_id: on Citus the whole scan runs inside each shard (one task per shard) and only
# the drifted users' counts come back.
TOTALS_DRIFT_SQL = """
SELECT d.user_id, count(*)::integer AS n
  FROM (SELECT coalesce(c.user_id, t.user_id) AS user_id
          FROM (SELECT i.user_id, i.yyyymm, max(i.n)::integer AS streak_days,
                       sum(i.n)::integer AS total_days
                  FROM (SELECT c.user_id, potato_yyyymm(c.checkin_date) AS yyyymm, count(*) AS n
                          FROM (SELECT c.user_id, c.checkin_date,
                                       c.checkin_date - (row_number() OVER (
                                           PARTITION BY c.user_id, date_trunc('month', c.checkin_date)
                                           ORDER BY c.checkin_date))::integer AS grp
                                  FROM daily_checkins c
                                 WHERE c.user_id = ANY ($1::uuid[])) c
                         GROUP BY c.user_id, potato_yyyymm(c.checkin_date), c.grp) i
                 GROUP BY i.user_id, i.yyyymm) c
          FULL JOIN (SELECT t.user_id, t.yyyymm, t.streak_days, t.total_days
                       FROM run_totals t WHERE t.user_id = ANY ($1::uuid[])) t
            ON t.user_id = c.user_id AND t.yyyymm = c.yyyymm
         WHERE (c.streak_days, c.total_days) IS DISTINCT FROM (t.streak_days, t.total_days)
        UNION ALL
        SELECT coalesce(c.user_id, t.user_id)
          FROM (SELECT u.user_id,      -- zeros for a user without check-ins
                       coalesce(l.total_days, 0) AS total_days,
                       coalesce(l.run_count, 0) AS run_count,
                       coalesce(l.longest_run_days, 0) AS longest_run_days
                  FROM users u
                  LEFT JOIN (SELECT i.user_id, sum(i.n)::integer AS total_days,
                                    count(*)::integer AS run_count,
                                    max(i.n)::integer AS longest_run_days
                               FROM (SELECT c.user_id, count(*) AS n
                                       FROM (SELECT c.user_id, c.checkin_date,
                                                    c.checkin_date - (row_number() OVER (
                                                        PARTITION BY c.user_id
                                                        ORDER BY c.checkin_date))::integer AS grp
                                               FROM daily_checkins c
                                              WHERE c.user_id = ANY ($1::uuid[])) c
                                      GROUP BY c.user_id, c.grp) i
                              GROUP BY i.user_id) l ON l.user_id = u.user_id
                 WHERE u.user_id = ANY ($1::uuid[])) c
          FULL JOIN (SELECT t.user_id, t.total_days, t.run_count, t.longest_run_days
                       FROM user_totals t WHERE t.user_id = ANY ($1::uuid[])) t
            ON t.user_id = c.user_id
         WHERE (c.total_days, c.run_count, c.longest_run_days)
               IS DISTINCT FROM (t.total_days, t.run_count, t.longest_run_days)) d
 GROUP BY d.user_id
 ORDER BY d.user_id
"""
"""The drifted rows of the users $1 (existing users), per user, in user_id order."""

MONTHS_SQL = """
SELECT ARRAY(SELECT make_date(t.yyyymm / 100, t.yyyymm % 100, 1)
               FROM run_totals t WHERE t.user_id = $1
             UNION
             SELECT DISTINCT date_trunc('month', c.checkin_date)::date
               FROM daily_checkins c WHERE c.user_id = $1)
"""
"""Every month of user $1, stored or in the facts."""

REPAIR_SQL = "SELECT potato_refresh_totals($1, $2::date[], $3)"
"""Recomputes the months $2 of user $1 and the lifetime row. Plain arguments (the months
read first, in the same transaction under the user's lock): on Citus the call is then
delegated whole to the user's worker, like the write functions' calls."""


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
                    rows = await conn.fetch(TOTALS_DRIFT_SQL, users, timeout=budget.timeout())
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        return TotalsDriftScan(users_checked=len(users), last_user=users[-1],
                               drifted=tuple((r["user_id"], int(r["n"])) for r in rows))

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
                    await conn.execute("SELECT potato_lock_user($1)", user_id,
                                       timeout=budget.timeout())   # migration 0013
                    months = await conn.fetchval(MONTHS_SQL, user_id,
                                                 timeout=budget.timeout())
                    repaired = await conn.fetchval(REPAIR_SQL, user_id, months, now,
                                                   timeout=budget.timeout())
                    left = await conn.fetch(TOTALS_DRIFT_SQL, [user_id],
                                            timeout=budget.timeout())
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        return TotalsRepair(rows_repaired=int(repaired or 0),
                            rows_still_drifted=sum(int(r["n"]) for r in left))

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
