"""The totals arithmetic in SQL (migration 0004) equals the Python one (domain/totals.py),
and the write functions (migration 0005) keep the stored totals equal to both.

One home per rule: the SQL functions `potato_computed_month_totals`,
`potato_computed_user_totals` and `potato_refresh_totals` are held equal to
`monthly_totals` / `lifetime_totals` here, for random sets of dates written through the
real write functions (backfill, mark, unmark) in random order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
from hypothesis import given, note
from hypothesis import strategies as st

from potato_runs.domain.totals import (
    NO_TOTALS,
    LifetimeTotals,
    first_day,
    lifetime_totals,
    month_end,
    monthly_totals,
    yyyymm,
)
from potato_runs.storage.admin_repo import AdminRepository
from support import OneConnectionPool

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
FIRST, LAST = dt.date(2025, 1, 1), dt.date(2029, 12, 31)
ONE = dt.timedelta(days=1)

EDGES = [month_end(dt.date(y, m, 1)) for y in (2025, 2027, 2028) for m in range(1, 13)]
days = st.one_of(st.dates(FIRST, LAST),
                 st.builds(lambda e, o: min(max(e + dt.timedelta(days=o), FIRST), LAST),
                           st.sampled_from(EDGES), st.integers(-3, 3)))
day_sets = st.one_of(
    st.sets(days, max_size=60),
    # Long stretches: runs over several months and year ends.
    # Long stretches with holes every k days: runs over several months and year ends,
    # and one-day gaps that a mark merges.
    st.builds(lambda s, n, k: {s + dt.timedelta(days=i) for i in range(n) if i % k},
              st.dates(FIRST, dt.date(2029, 6, 1)), st.integers(1, 200), st.integers(2, 40)))
ops = st.lists(st.one_of(
    st.tuples(st.just("mark"), days),
    st.tuples(st.just("unmark"), days),
    st.tuples(st.just("backfill"), st.sets(days, min_size=1, max_size=20)),
    # A day next to the check-ins (a one-day gap first: a merge), or one of them.
    st.tuples(st.just("mark_near"), st.integers(0, 10_000)),
    st.tuples(st.just("unmark_one"), st.integers(0, 10_000)),
), max_size=12)


def near(dates: set[dt.date], i: int) -> dt.date:
    gaps = sorted(d + ONE for d in dates if d + ONE not in dates and d + 2 * ONE in dates)
    edges = sorted({d + ONE for d in dates if d + ONE not in dates and d + ONE <= LAST})
    pool = gaps or edges or [FIRST]
    return pool[i % len(pool)]


async def stored(conn: asyncpg.Connection, user: uuid.UUID
                 ) -> tuple[dict[int, tuple[int, int]], LifetimeTotals | None]:
    months = {r[0]: (r[1], r[2]) for r in await conn.fetch(
        "SELECT yyyymm, streak_days, total_days FROM run_totals WHERE user_id = $1", user)}
    row = await conn.fetchrow(
        "SELECT total_days, run_count, longest_run_days FROM user_totals WHERE user_id = $1",
        user)
    return months, (LifetimeTotals(*row) if row else None)


async def computed(conn: asyncpg.Connection, user: uuid.UUID
                   ) -> tuple[dict[int, tuple[int, int]], LifetimeTotals]:
    months = {r[0]: (r[1], r[2]) for r in await conn.fetch(
        "SELECT yyyymm, streak_days, total_days FROM potato_computed_month_totals($1)", [user])}
    row = await conn.fetchrow(
        "SELECT total_days, run_count, longest_run_days FROM potato_computed_user_totals($1)",
        [user])
    return months, (LifetimeTotals(*row) if row else NO_TOTALS)


def expected(dates: set[dt.date]) -> tuple[dict[int, tuple[int, int]], LifetimeTotals]:
    return ({k: (t.streak_days, t.total_days) for k, t in monthly_totals(dates).items()},
            lifetime_totals(dates))


async def check(conn: asyncpg.Connection, user: uuid.UUID, dates: set[dt.date]) -> None:
    want = expected(dates)
    assert await computed(conn, user) == want
    # Every known user has a lifetime row (zeros without check-ins); an unknown one none.
    known = await conn.fetchval("SELECT count(*) FROM users WHERE user_id = $1", user)
    assert await stored(conn, user) == (want if known else (want[0], None))


def test_sql_totals_equal_python_and_every_write_keeps_them(pg_dsn: str) -> None:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(pg_dsn))

    @given(day_sets, ops)
    def prop(initial: set[dt.date], steps: list[tuple[str, object]]) -> None:
        user = uuid.uuid4()
        dates: set[dt.date] = set()

        async def run() -> None:
            nonlocal dates
            if initial:
                await conn.fetchval(
                    "SELECT potato_backfill_days($1, $2::date[], 'UTC', 'test', $3, NULL)",
                    user, sorted(initial), NOW)
                dates |= initial
                await check(conn, user, dates)
            for kind, arg in steps:
                if kind == "mark_near":
                    assert isinstance(arg, int)
                    kind, arg = "mark", near(dates, arg)
                elif kind == "unmark_one":
                    assert isinstance(arg, int)
                    kind, arg = "unmark", sorted(dates)[arg % len(dates)] if dates else FIRST
                note(f"{kind} {arg}")
                if kind == "mark":
                    assert isinstance(arg, dt.date)
                    await conn.fetchval(
                        "SELECT potato_mark_day($1, $2, NULL, 'UTC', 'test', $3, NULL)",
                        user, arg, NOW)
                    dates.add(arg)
                elif kind == "unmark":
                    assert isinstance(arg, dt.date)
                    await conn.fetchval("SELECT potato_unmark_day($1, $2, $3, NULL)",
                                        user, arg, NOW)
                    dates.discard(arg)
                else:
                    assert isinstance(arg, set)
                    await conn.fetchval(
                        "SELECT potato_backfill_days($1, $2::date[], 'UTC', 'test', $3, NULL)",
                        user, sorted(arg), NOW)
                    dates |= arg
                await check(conn, user, dates)
            if not await conn.fetchval("SELECT count(*) FROM users WHERE user_id = $1", user):
                return          # the user was never created
            # potato_refresh_totals rebuilds wiped rows (and months without check-ins,
            # asked for too, get none), and a second refresh changes nothing.
            months = sorted({yyyymm(d) for d in dates} | {202501, 202902})
            await conn.execute("DELETE FROM run_totals WHERE user_id = $1", user)
            await conn.execute("DELETE FROM user_totals WHERE user_id = $1", user)
            args = (user, [first_day(m) for m in months], NOW)
            n = await conn.fetchval("SELECT potato_refresh_totals($1, $2::date[], $3)", *args)
            assert n == len(monthly_totals(dates)) + 1
            await check(conn, user, dates)
            assert await conn.fetchval("SELECT potato_refresh_totals($1, $2::date[], $3)",
                                       *args) == 0

        loop.run_until_complete(run())

    try:
        prop()
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


async def test_drifted_rows_never_fail_a_write_and_are_recomputed(
        db: asyncpg.Connection) -> None:
    """A stored row that an increment would push outside its CHECKs (or a missing one) is
    recomputed from the facts by the write instead of failing it."""
    user = uuid.uuid4()
    march = {dt.date(2026, 3, d) for d in range(1, 11)}
    await db.fetchval("SELECT potato_backfill_days($1, $2::date[], 'UTC', 't', $3, NULL)",
                      user, sorted(march), NOW)
    await db.execute("UPDATE run_totals SET total_days = 1, streak_days = 1 WHERE user_id = $1",
                     user)
    await db.execute("UPDATE user_totals SET total_days = 0, run_count = 0, longest_run_days = 0"
                     " WHERE user_id = $1", user)
    await db.fetchval("SELECT potato_mark_day($1, $2, NULL, NULL, 't', $3, NULL)",
                      user, dt.date(2026, 3, 11), NOW)
    march.add(dt.date(2026, 3, 11))
    await check(db, user, march)
    await db.execute("DELETE FROM run_totals WHERE user_id = $1", user)
    await db.execute("DELETE FROM user_totals WHERE user_id = $1", user)
    await db.fetchval("SELECT potato_unmark_day($1, $2, $3, NULL)", user, dt.date(2026, 3, 5),
                      NOW)
    march.discard(dt.date(2026, 3, 5))
    await check(db, user, march)


async def test_a_rebuild_refreshes_the_totals_of_the_months_of_its_runs(
        db: asyncpg.Connection) -> None:
    """Runs damaged and totals damaged: a rebuild recomputes, in its transaction, the
    months of the runs it removed, added or changed, and the lifetime row; a dry run
    writes nothing, and a month outside those runs is left to the reconciliation."""
    user = uuid.uuid4()
    dates = {dt.date(2026, 1, 25) + i * ONE for i in range(10)} | {
        dt.date(2026, 4, d) for d in (1, 2, 3)}
    await db.fetchval("SELECT potato_backfill_days($1, $2::date[], 'UTC', 't', $3, NULL)",
                      user, sorted(dates), NOW)
    await check(db, user, dates)
    await db.execute("DELETE FROM runs WHERE user_id = $1 AND start_date = '2026-01-25'", user)
    await db.execute("UPDATE run_totals SET streak_days = 1, total_days = 1 WHERE user_id = $1",
                     user)
    await db.execute("UPDATE user_totals SET total_days = 3, run_count = 1, longest_run_days = 3"
                     " WHERE user_id = $1", user)
    damaged = await stored(db, user)
    repo = AdminRepository(OneConnectionPool(db))
    dry = await repo.rebuild_user(user, None, None, True, NOW, None)
    assert [r.key()[:2] for r in dry.diff.added] == [(dt.date(2026, 1, 25), dt.date(2026, 2, 3))]
    assert await stored(db, user) == damaged
    await repo.rebuild_user(user, None, None, False, NOW, None)
    months, life = await stored(db, user)
    assert months == {202601: (7, 7), 202602: (3, 3), 202604: (1, 1)}   # April: not rebuilt
    assert life == LifetimeTotals(13, 2, 10)
