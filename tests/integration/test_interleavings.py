"""Scripted interleavings, in the style of PostgreSQL's isolation tester.

Each test drives 2-3 raw asyncpg sessions step by step. A step that must block
is started as a task, and a third session proves *why* it is blocked by
polling pg_stat_activity and pg_locks (bounded polling: the poll gives up after
a fixed number of attempts; nothing waits on a sleep to make progress). Then
the blocking session commits and the blocked step completes.

Covered:
(a) a writer waits on another session's per-user advisory lock, and only on
    that user's; the rebuild takes the same lock;
(b) a direct SQL write that skips the lock is refused by a constraint with its
    specific SQLSTATE (23P01 exclusion, 23505 unique, 23514 check), also when it
    races an uncommitted write, also with the constraints DEFERRED until commit,
    and the data stays intact (the checker finds nothing);
(c) a mark and an unmark of the same day from two sessions serialize: the
    result is one of the two serial orders, and the runs match the check-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest
from oracle import expected_strings as islands

from potato_runs.storage.admin_repo import AdminRepository
from potato_runs.storage.pool import create_pool
from support import OneConnectionPool

from .helpers import checkin_dates as checkins_of
from .helpers import stored_rows as runs_full
from .helpers import stored_runs as runs_of

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
ZONE = "America/New_York"
D = dt.date.fromisoformat
ONE_DAY = dt.timedelta(days=1)
POLL_ATTEMPTS = 2000   # x 5 ms: a bound on how long we look, not a synchronisation
POLL_INTERVAL = 0.005
GUARD = 30.0           # a hang guard for awaits that must finish; never asserted on


# --------------------------------------------------------------------------- sessions
@pytest.fixture
async def sessions(pg_dsn: str) -> AsyncIterator[tuple[asyncpg.Connection, ...]]:
    """Three independent sessions: A, B and an observer C."""
    conns = [await asyncpg.connect(pg_dsn, server_settings={"application_name": f"iso-{n}"})
             for n in "ABC"]
    try:
        yield tuple(conns)
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                await c.close()


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[AdminRepository]:
    pool = await create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        yield AdminRepository(pool)
    finally:
        await pool.close()


@pytest.fixture
def uid() -> uuid.UUID:
    return uuid.uuid4()


# --------------------------------------------------------------------------- steps
async def mark(conn: asyncpg.Connection, user: uuid.UUID, day: str) -> dict[str, Any]:
    raw = await conn.fetchval("SELECT potato_mark_day($1, $2, NULL, $3, 'iso', $4, NULL)",
                              user, D(day), ZONE, NOW)
    return json.loads(raw)


async def unmark(conn: asyncpg.Connection, user: uuid.UUID, day: str) -> dict[str, Any]:
    raw = await conn.fetchval("SELECT potato_unmark_day($1, $2, $3, NULL)", user, D(day), NOW)
    return json.loads(raw)


async def backfill(conn: asyncpg.Connection, user: uuid.UUID, days: Sequence[str]) -> dict[str, Any]:
    raw = await conn.fetchval("SELECT potato_backfill_days($1, $2::date[], $3, 'iso', $4, NULL)",
                              user, [D(d) for d in days], ZONE, NOW)
    return json.loads(raw)


async def assert_consistent(conn: asyncpg.Connection, admin: AdminRepository,
                            user: uuid.UUID) -> None:
    assert await runs_of(conn, user) == islands(await checkins_of(conn, user))
    violations, _ = await admin.check(user, 100)
    assert violations == []


# --------------------------------------------------------------------------- observation
async def poll(observer: asyncpg.Connection, sql: str, *args: Any, what: str) -> asyncpg.Record:
    """Bounded polling: returns the first row the query yields, or fails."""
    for _ in range(POLL_ATTEMPTS):
        row = await observer.fetchrow(sql, *args)
        if row is not None:
            return row
        await asyncio.sleep(POLL_INTERVAL)
    pytest.fail(f"never observed: {what}")


async def wait_blocked_on_advisory(observer: asyncpg.Connection, waiter: int | None,
                                   holder: int, user: uuid.UUID) -> asyncpg.Record:
    """Until `waiter` (or any backend, when None) waits for `user`'s advisory lock held by
    `holder`, as pg_stat_activity and pg_locks report it."""
    row = await poll(observer, """
        SELECT a.pid, a.wait_event_type, a.wait_event, l.locktype, l.mode,
               pg_blocking_pids(a.pid) AS blockers
          FROM pg_stat_activity a
          JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted
         WHERE ($1::int IS NULL OR a.pid = $1)
           AND a.wait_event_type = 'Lock' AND a.wait_event = 'advisory'
           AND l.locktype = 'advisory' AND l.objsubid = 1
           AND ((l.classid::bigint << 32) | l.objid::bigint) = potato_lock_key($2)
        """, waiter, user, what=f"a backend waiting on the advisory lock of {user}")
    assert row["blockers"] == [holder]
    assert row["mode"] == "ExclusiveLock"
    return row


async def wait_blocked_on_transaction(observer: asyncpg.Connection, waiter: int,
                                      holder: int) -> asyncpg.Record:
    """Until `waiter` waits for `holder`'s transaction to end (a row-level conflict)."""
    row = await poll(observer, """
        SELECT a.wait_event_type, a.wait_event, pg_blocking_pids(a.pid) AS blockers
          FROM pg_stat_activity a
         WHERE a.pid = $1 AND a.wait_event_type = 'Lock' AND a.wait_event = 'transactionid'
        """, waiter, what=f"backend {waiter} waiting on a transaction")
    assert row["blockers"] == [holder]
    return row


async def holds_advisory(observer: asyncpg.Connection, pid: int, user: uuid.UUID) -> bool:
    return bool(await observer.fetchval("""
        SELECT EXISTS (SELECT 1 FROM pg_locks l
                        WHERE l.pid = $1 AND l.granted AND l.locktype = 'advisory'
                          AND ((l.classid::bigint << 32) | l.objid::bigint) = potato_lock_key($2))
        """, pid, user))


# --------------------------------------------------------------------------- (a) lock waits
WRITES: dict[str, Callable[[asyncpg.Connection, uuid.UUID], Awaitable[dict[str, Any]]]] = {
    "mark": lambda c, u: mark(c, u, "2026-06-13"),
    "unmark": lambda c, u: unmark(c, u, "2026-06-11"),
    "backfill": lambda c, u: backfill(c, u, ["2026-06-14", "2026-06-13"]),
}
EXPECTED_AFTER = {
    "mark": [("2026-06-10", "2026-06-13", 4, True)],
    "unmark": [("2026-06-10", "2026-06-10", 1, False), ("2026-06-12", "2026-06-12", 1, True)],
    "backfill": [("2026-06-10", "2026-06-14", 5, True)],
}


@pytest.mark.parametrize("write", sorted(WRITES))
async def test_a_writer_waits_on_the_users_advisory_lock(
        sessions: tuple[asyncpg.Connection, ...], admin: AdminRepository, uid: uuid.UUID,
        write: str) -> None:
    a, b, c = sessions
    await backfill(a, uid, ["2026-06-10", "2026-06-11", "2026-06-12"])
    before = await runs_full(a, uid)

    # A: BEGIN; take the user's lock (as a writer in the middle of its transaction would).
    tx = a.transaction()
    await tx.start()
    await a.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))", uid)
    assert await holds_advisory(c, a.get_server_pid(), uid)

    # B: the write function must block on that lock, before it changes anything.
    step_b = asyncio.create_task(WRITES[write](b, uid))
    await wait_blocked_on_advisory(c, b.get_server_pid(), a.get_server_pid(), uid)
    assert not step_b.done()
    assert await runs_full(c, uid) == before

    # A: COMMIT releases the lock; B completes, with the right result.
    await tx.commit()
    result = await asyncio.wait_for(step_b, GUARD)
    if write == "mark":
        assert (result["change"], result["run"]["end_date"]) == ("extended", "2026-06-13")
    elif write == "unmark":
        assert (result["removed"], result["change"]) == (True, "split")
    else:
        assert result["added_days"] == 2
    assert await runs_of(c, uid) == EXPECTED_AFTER[write]
    assert not await holds_advisory(c, b.get_server_pid(), uid)  # released at B's commit
    await assert_consistent(c, admin, uid)


async def test_the_lock_is_per_user(sessions: tuple[asyncpg.Connection, ...],
                                    admin: AdminRepository) -> None:
    a, b, c = sessions
    held, other = uuid.uuid4(), uuid.uuid4()
    tx = a.transaction()
    await tx.start()
    await a.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))", held)
    try:
        # Another user's write goes through while A still holds its lock.
        result = await asyncio.wait_for(mark(b, other, "2026-06-10"), GUARD)
        assert result["change"] == "created"
        assert a.is_in_transaction() and await holds_advisory(c, a.get_server_pid(), held)
    finally:
        await tx.rollback()
    await assert_consistent(c, admin, other)


async def test_two_writers_queue_behind_the_lock_and_both_apply(
        sessions: tuple[asyncpg.Connection, ...], admin: AdminRepository, uid: uuid.UUID,
        pg_dsn: str) -> None:
    a, b, c = sessions
    await backfill(a, uid, ["2026-06-10", "2026-06-12"])
    d = await asyncpg.connect(pg_dsn)
    try:
        tx = a.transaction()
        await tx.start()
        await a.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))", uid)
        step_b = asyncio.create_task(mark(b, uid, "2026-06-11"))      # would merge
        await wait_blocked_on_advisory(c, b.get_server_pid(), a.get_server_pid(), uid)
        step_d = asyncio.create_task(unmark(d, uid, "2026-06-12"))    # would shrink or delete
        row = await poll(c, "SELECT 1 FROM pg_stat_activity WHERE pid = $1 "
                         "AND wait_event = 'advisory'", d.get_server_pid(),
                         what="the second writer waiting too")
        assert row is not None and not step_b.done() and not step_d.done()
        await tx.commit()
        rb, rd = await asyncio.wait_for(asyncio.gather(step_b, step_d), GUARD)
    finally:
        await d.close()
    # Whatever order the lock granted them, the outcome is one of the serial ones.
    assert (rb["change"], rd["change"]) in {("merged", "shrunk"), ("extended", "deleted")}
    assert await checkins_of(c, uid) == [D("2026-06-10"), D("2026-06-11")]
    await assert_consistent(c, admin, uid)


async def test_rebuild_waits_on_the_writers_lock(sessions: tuple[asyncpg.Connection, ...],
                                                 admin: AdminRepository, uid: uuid.UUID) -> None:
    a, _, c = sessions
    await backfill(a, uid, ["2026-06-10", "2026-06-11"])
    tx = a.transaction()
    await tx.start()
    # A is a writer in flight: it holds the lock and has not committed its mark.
    pending = await mark(a, uid, "2026-06-12")
    assert pending["change"] == "extended"
    rebuild = asyncio.create_task(admin.rebuild_user(uid, None, None, False, NOW, "iso"))
    await wait_blocked_on_advisory(c, None, a.get_server_pid(), uid)
    assert not rebuild.done()
    await tx.commit()
    plan = await asyncio.wait_for(rebuild, GUARD)
    # The rebuild read the committed mark under the lock: nothing to repair.
    assert plan.diff.empty
    assert await runs_of(c, uid) == [("2026-06-10", "2026-06-12", 3, True)]
    await assert_consistent(c, admin, uid)


# --------------------------------------------------------------------------- (b) skipping the lock
SEED_DAYS = ["2026-06-10", "2026-06-11", "2026-06-12", "2026-06-20", "2026-06-21", "2026-06-22"]

# (name, SQL with $1 = user, SQLSTATE, constraint)
BYPASSES = [
    ("overlapping run",
     "INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ($1, '2026-06-11', '2026-06-15', 5)", "23P01", "runs_no_overlap"),
    ("run touching the earlier run",
     "INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ($1, '2026-06-13', '2026-06-14', 2)", "23P01", "runs_no_touch"),
    ("run touching the later run",
     "INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ($1, '2026-06-15', '2026-06-19', 5)", "23P01", "runs_no_touch"),
    ("run extended over its neighbour",
     "UPDATE runs SET end_date = '2026-06-25', day_count = 16 "
     "WHERE user_id = $1 AND start_date = '2026-06-10'", "23P01", "runs_no_overlap"),
    ("second active run",
     "INSERT INTO runs (user_id, start_date, end_date, day_count, active) "
     "VALUES ($1, '2026-06-01', '2026-06-02', 2, true)", "23505", "runs_one_active_per_user"),
    ("older run flipped active",
     "UPDATE runs SET active = true WHERE user_id = $1 AND start_date = '2026-06-10'",
     "23505", "runs_one_active_per_user"),
    ("wrong day_count",
     "INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ($1, '2026-06-01', '2026-06-02', 5)", "23514", "runs_day_count_matches"),
    ("day_count edited",
     "UPDATE runs SET day_count = day_count + 1 WHERE user_id = $1 AND active",
     "23514", "runs_day_count_matches"),
    ("end before start",
     "INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ($1, '2026-06-05', '2026-06-03', -1)", "23514", "runs_end_not_before_start"),
    ("check-in before launch",
     "INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
     "VALUES ($1, '2024-12-31', 'UTC')", "23514", "checkin_date_not_before_launch"),
    ("duplicate check-in",
     "INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
     "VALUES ($1, '2026-06-10', 'UTC')", "23505", "daily_checkins_pkey"),
]


@pytest.mark.parametrize(("name", "sql", "sqlstate", "constraint"), BYPASSES,
                         ids=[b[0].replace(" ", "-") for b in BYPASSES])
async def test_a_write_that_skips_the_lock_is_refused(
        sessions: tuple[asyncpg.Connection, ...], admin: AdminRepository, uid: uuid.UUID,
        name: str, sql: str, sqlstate: str, constraint: str) -> None:
    a, b, _ = sessions
    await backfill(a, uid, SEED_DAYS)
    runs_before, facts_before = await runs_full(a, uid), await checkins_of(a, uid)
    with pytest.raises(asyncpg.PostgresError) as caught:
        await b.execute(sql, uid)
    assert (caught.value.sqlstate, caught.value.constraint_name) == (sqlstate, constraint), name
    assert await runs_full(a, uid) == runs_before
    assert await checkins_of(a, uid) == facts_before
    await assert_consistent(a, admin, uid)


async def test_deferring_the_exclusion_constraints_only_moves_the_refusal_to_commit(
        sessions: tuple[asyncpg.Connection, ...], admin: AdminRepository, uid: uuid.UUID) -> None:
    a, b, _ = sessions
    await backfill(a, uid, SEED_DAYS)
    before = await runs_full(a, uid)
    tx = b.transaction()
    await tx.start()
    await b.execute("SET CONSTRAINTS runs_no_overlap, runs_no_touch DEFERRED")
    await b.execute("INSERT INTO runs (user_id, start_date, end_date, day_count) "
                    "VALUES ($1, '2026-06-12', '2026-06-14', 3)", uid)
    with pytest.raises(asyncpg.PostgresError) as caught:
        await tx.commit()
    assert caught.value.sqlstate == "23P01"
    assert caught.value.constraint_name in {"runs_no_overlap", "runs_no_touch"}
    assert not b.is_in_transaction()
    assert await runs_full(a, uid) == before
    await assert_consistent(a, admin, uid)


async def test_a_lockless_write_racing_a_locked_writer_waits_then_is_refused(
        sessions: tuple[asyncpg.Connection, ...], admin: AdminRepository, uid: uuid.UUID) -> None:
    a, b, c = sessions
    await backfill(a, uid, SEED_DAYS)
    # A: BEGIN; mark 2026-06-13 through the write path (extends 06-10..12, uncommitted).
    tx = a.transaction()
    await tx.start()
    assert (await mark(a, uid, "2026-06-13"))["change"] == "extended"
    # B skips the lock and inserts a run that would touch A's uncommitted run. The
    # exclusion constraint cannot decide until A's transaction ends: B waits on it.
    step_b = asyncio.create_task(b.execute(
        "INSERT INTO runs (user_id, start_date, end_date, day_count) "
        "VALUES ($1, '2026-06-14', '2026-06-15', 2)", uid))
    await wait_blocked_on_transaction(c, b.get_server_pid(), a.get_server_pid())
    assert not step_b.done()
    await tx.commit()
    with pytest.raises(asyncpg.PostgresError) as caught:
        await asyncio.wait_for(step_b, GUARD)
    assert (caught.value.sqlstate, caught.value.constraint_name) == ("23P01", "runs_no_touch")
    assert await runs_of(c, uid) == [("2026-06-10", "2026-06-13", 4, False),
                                     ("2026-06-20", "2026-06-22", 3, True)]
    await assert_consistent(c, admin, uid)


async def test_a_lockless_write_the_constraints_allow_is_still_caught_by_the_checker(
        sessions: tuple[asyncpg.Connection, ...], admin: AdminRepository, uid: uuid.UUID) -> None:
    """The constraints guard the shape of the runs, not their agreement with the facts:
    a well-formed run without check-ins gets past them. The checker reports it (seen
    from inside B's transaction, which is then rolled back)."""
    a, b, _ = sessions
    await backfill(a, uid, SEED_DAYS)
    tx = b.transaction()
    await tx.start()
    try:
        await b.execute("INSERT INTO runs (user_id, start_date, end_date, day_count) "
                        "VALUES ($1, '2026-06-15', '2026-06-16', 2)", uid)
        violations, _ = await AdminRepository(OneConnectionPool(b)).check(uid, 100)
        assert sorted(v.code for v in violations) == ["RUN_DAY_WITHOUT_CHECKIN"] * 2
    finally:
        await tx.rollback()
    await assert_consistent(a, admin, uid)


# --------------------------------------------------------------------------- (c) mark vs unmark
@pytest.mark.parametrize("first", ["mark", "unmark"])
async def test_mark_and_unmark_of_the_same_day_serialize(
        sessions: tuple[asyncpg.Connection, ...], admin: AdminRepository, uid: uuid.UUID,
        first: str) -> None:
    a, b, c = sessions
    day = "2026-06-11"
    seed = ["2026-06-10", "2026-06-12"] + ([day] if first == "unmark" else [])
    await backfill(a, uid, seed)
    tx = a.transaction()
    await tx.start()
    if first == "mark":
        ra = await mark(a, uid, day)          # merges 06-10 and 06-12, uncommitted
        step_b = asyncio.create_task(unmark(b, uid, day))
    else:
        ra = await unmark(a, uid, day)        # splits 06-10..12, uncommitted
        step_b = asyncio.create_task(mark(b, uid, day))
    await wait_blocked_on_advisory(c, b.get_server_pid(), a.get_server_pid(), uid)
    await tx.commit()
    rb = await asyncio.wait_for(step_b, GUARD)
    if first == "mark":
        # B ran after A's commit and saw A's check-in (a fresh snapshot under the lock).
        assert ra["change"] == "merged"
        assert (rb["removed"], rb["change"]) == (True, "split")
        assert await checkins_of(c, uid) == [D("2026-06-10"), D("2026-06-12")]
    else:
        assert (ra["removed"], ra["change"]) == (True, "split")
        assert rb["change"] == "merged"
        assert await checkins_of(c, uid) == [D("2026-06-10"), D(day), D("2026-06-12")]
    await assert_consistent(c, admin, uid)


async def test_free_races_of_mark_and_unmark_end_in_a_serial_outcome(
        sessions: tuple[asyncpg.Connection, ...], admin: AdminRepository) -> None:
    """No script: both statements are sent at once, many times. Each outcome must be
    one of the two serial orders, and never anything in between."""
    a, b, c = sessions
    seen = set()
    for _ in range(40):
        user = uuid.uuid4()
        await backfill(a, user, ["2026-06-10", "2026-06-12"])
        rm, ru = await asyncio.wait_for(asyncio.gather(mark(b, user, "2026-06-11"),
                                                       unmark(c, user, "2026-06-11")), GUARD)
        facts = await checkins_of(a, user)
        if ru["removed"]:   # mark, then unmark
            assert (rm["change"], ru["change"]) == ("merged", "split")
            assert facts == [D("2026-06-10"), D("2026-06-12")]
            seen.add("mark-first")
        else:               # unmark (a no-op), then mark
            assert (rm["change"], ru["change"]) == ("merged", "none")
            assert facts == [D("2026-06-10"), D("2026-06-11"), D("2026-06-12")]
            seen.add("unmark-first")
        await assert_consistent(a, admin, user)
    print(f"\nfree races: orders seen {sorted(seen)}")
