"""Atomicity under cancellation (issue 8, item 7).

Large BackfillDays requests (up to 500 dates, filling the gaps between a user's existing
check-ins, so every one merges many runs) are cancelled at random moments: by the client
(`call.cancel()` after a random delay) and by client deadlines that expire mid-call. The
delays are drawn around the measured duration of an uncancelled backfill, so cancels land
before the call reaches the database, while the statement runs, and after it committed.

On the server, grpc.aio cancels the handler task; asyncpg then cancels the statement
(a cancel request to PostgreSQL) and the pool waits for that cancellation and rolls back
before it hands the connection out again (storage/pool.acquire only terminates
connections that failed; a cancelled one is kept, by design). A deadline bounds the
statement itself (statement timeout, SQLSTATE 57014 or asyncpg's TimeoutError).

Each request's dates are its own (disjoint from the user's seed and from the other
requests), so after the server settles each request is judged alone: its dates are all
check-ins or none is, and an OK request is fully applied. Then the whole database (its own,
`faults_cancellation`) is checked: no invariant violation, projection = rebuild, stored
totals = computed totals, and every pooled connection is usable and outside a transaction.

The same for RebuildUserRuns (one multi-statement transaction on the admin pool) of users
whose projection was damaged first: afterwards the runs are the damaged ones or the
rebuilt ones, never a mix.

POTATO_FAULTS=1 runs more rounds.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from oracle import expected_runs

from potato.runs.v2 import admin_service_pb2 as admin_pb
from potato.runs.v2 import admin_service_pb2_grpc as admin_grpc
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as pb_grpc
from potato_runs.clock import FixedClock
from potato_runs.domain.model import LAUNCH_DATE
from support import (
    ADMIN_METADATA,
    DEFAULT_NOW,
    TOTALS_DRIFT,
    BearerInterceptor,
    ServerThread,
    fresh_database,
    rich_status,
)

FULL = bool(os.environ.get("POTATO_FAULTS"))
BACKFILL_ROUNDS = 40 if FULL else 5
USERS_PER_ROUND = 4
REBUILD_ROUNDS = 30 if FULL else 6
TODAY = DEFAULT_NOW.date()
WINDOW = [LAUNCH_DATE + dt.timedelta(days=i) for i in range((TODAY - LAUNCH_DATE).days + 1)]
ACCEPTABLE = {"OK", "CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "ABORTED"}
"""What a cancelled or expiring write may answer; never INTERNAL or UNKNOWN."""


@pytest.fixture(scope="module")
def cancel_server(pg_dsn: str) -> Iterator[ServerThread]:
    """A server over a database of its own: the final whole-database checks see only
    this scenario."""
    srv = ServerThread(fresh_database(pg_dsn, "faults_cancellation"),
                       FixedClock(DEFAULT_NOW)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def conn(cancel_server: ServerThread) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(cancel_server.dsn)
    try:
        yield c
    finally:
        await c.close()


@dataclass
class Attempt:
    user: str
    dates: frozenset[dt.date]
    mode: str          # cancel | deadline | none
    delay: float
    code: str = ""
    added: int | None = None


async def settle(conn: asyncpg.Connection, timeout: float = 60.0) -> None:
    """Polls (bounded) until no server session is busy or inside a transaction on three
    polls in a row: a cancelled call's statement reaches PostgreSQL's cancel (or its
    commit) asynchronously, after the client already saw CANCELLED."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3:
        busy = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name = 'potato-runs' "
            "AND state <> 'idle'")
        quiet = quiet + 1 if busy == 0 else 0
        assert time.monotonic() < deadline, f"{busy} server sessions still busy"
        await asyncio.sleep(0.02)


async def facts(conn: asyncpg.Connection, user: str) -> set[dt.date]:
    return {r[0] for r in await conn.fetch(
        "SELECT checkin_date FROM daily_checkins WHERE user_id = $1", uuid.UUID(user))}


async def stored(conn: asyncpg.Connection, user: str) -> list[tuple[dt.date, dt.date, int, bool]]:
    return [tuple(r) for r in await conn.fetch(  # type: ignore[misc]
        "SELECT start_date, end_date, day_count, active FROM runs WHERE user_id = $1 "
        "ORDER BY start_date", uuid.UUID(user))]


def _request(user: str, dates: list[dt.date]) -> pb.BackfillDaysRequest:
    return pb.BackfillDaysRequest(user_id=user, local_dates=[d.isoformat() for d in dates],
                                  time_zone="UTC", source="cancellation")


async def _send(stub: pb_grpc.RunsServiceStub, a: Attempt, rng: random.Random,
                reasons: collections.Counter[str]) -> None:
    dates = list(a.dates)
    rng.shuffle(dates)
    call = stub.BackfillDays(_request(a.user, dates),
                             timeout=a.delay if a.mode == "deadline" else 60)
    if a.mode == "cancel":
        await asyncio.sleep(a.delay)   # the fault itself: a random moment, not a wait for state
        call.cancel()
    try:
        a.added = (await call).added_days
        a.code = "OK"
    except asyncio.CancelledError:   # grpc.aio: awaiting a call we cancelled
        a.code = "CANCELLED"
    except grpc.RpcError as exc:
        a.code = exc.code().name
        if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            info, _, _ = rich_status(exc)
            reasons[info.reason if info else "?"] += 1


def _partition(free: list[dt.date], rng: random.Random) -> list[frozenset[dt.date]]:
    """1 to 3 disjoint date sets of up to 500 dates: random subsets (spread over the
    whole history) or contiguous slices."""
    pool = list(free)
    if rng.random() < 0.5:
        rng.shuffle(pool)
    k = rng.choice([1, 2, 3])
    out, at = [], 0
    for _ in range(k):
        size = min(500, len(pool) - at, rng.randint(100, 500))
        if size <= 0:
            break
        out.append(frozenset(pool[at:at + size]))
        at += size
    return out


def check_pool(server: ServerThread) -> None:
    """Every connection of the server's pool, taken at once, is usable and outside a
    transaction (none came back mid-cancellation or with a transaction open)."""
    assert server.app is not None
    pool = server.app.database.pool

    async def probe() -> None:
        size = pool.get_max_size()
        conns = [await pool.acquire(timeout=10) for _ in range(size)]
        try:
            for c in conns:
                assert not c.is_in_transaction()
                assert await c.fetchval("SELECT 1", timeout=5) == 1
        finally:
            for c in conns:
                await pool.release(c)

    server.run(probe(), timeout=60)


def assert_database_clean(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        admin = admin_grpc.AdminServiceStub(channel)
        check = admin.CheckInvariants(admin_pb.CheckInvariantsRequest(limit=20),
                                      metadata=ADMIN_METADATA, timeout=300)
        assert list(check.violations) == [], check.violations
        token = ""
        while True:
            step = admin.RebuildRunsBatch(admin_pb.RebuildRunsBatchRequest(
                page_size=5000, page_token=token, dry_run=True), metadata=ADMIN_METADATA,
                timeout=300)
            assert list(step.drifted_users) == [] and list(step.failed_users) == [], step
            token = step.next_page_token
            if not token:
                break

    async def drift() -> int:
        c = await asyncpg.connect(server.dsn)
        try:
            return int(await c.fetchval(TOTALS_DRIFT))
        finally:
            await c.close()

    assert server.run(drift()) == 0


async def _seed(stub: pb_grpc.RunsServiceStub, user: str, every: int) -> list[dt.date]:
    seed = WINDOW[::every]
    for i in range(0, len(seed), 500):
        await stub.BackfillDays(_request(user, seed[i:i + 500]), timeout=60)
    return seed


async def test_cancelled_backfills_are_all_or_nothing(cancel_server: ServerThread,
                                                      conn: asyncpg.Connection) -> None:
    rng = random.Random(int(os.environ.get("POTATO_FAULTS_SEED", "8")))
    reasons: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(cancel_server.target) as channel:
        stub = pb_grpc.RunsServiceStub(channel)
        # How long an uncancelled 500-date backfill takes here: cancels are spread over it.
        took = []
        for _ in range(3):
            user = str(uuid.uuid4())
            seed = await _seed(stub, user, 4)
            free = [d for d in WINDOW if d not in set(seed)][:500]
            started = time.perf_counter()
            await stub.BackfillDays(_request(user, free), timeout=60)
            took.append(time.perf_counter() - started)
        typical = statistics.median(took)

        attempts: list[Attempt] = []
        for _ in range(BACKFILL_ROUNDS):
            users = [str(uuid.uuid4()) for _ in range(USERS_PER_ROUND)]
            seeds = await asyncio.gather(*(_seed(stub, u, rng.choice([3, 4, 7])) for u in users))
            round_attempts = []
            for user, seed in zip(users, seeds, strict=True):
                free = [d for d in WINDOW if d not in set(seed)]
                for dates in _partition(free, rng):
                    mode = rng.choices(["cancel", "deadline", "none"], [45, 45, 10])[0]
                    delay = rng.choice([0.0, rng.uniform(0, 1.5 * typical)])
                    round_attempts.append(Attempt(user, dates, mode,
                                                  max(delay, 0.001) if mode == "deadline"
                                                  else delay))
            await asyncio.gather(*(_send(stub, a, rng, reasons) for a in round_attempts))
            attempts += round_attempts

    await settle(conn)
    tally: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for a in attempts:
        present = await facts(conn, a.user) & a.dates
        applied = "applied" if present == a.dates else "absent" if not present else "PARTIAL"
        tally[(a.mode, a.code, applied)] += 1
        assert applied != "PARTIAL", (a.mode, a.code, len(present), len(a.dates))
        assert a.code in ACCEPTABLE, (a.code, reasons)
        if a.code == "OK":
            assert applied == "applied" and a.added == len(a.dates), a
    print(f"\ncancelled backfills: {len(attempts)} requests in {BACKFILL_ROUNDS} rounds "
          f"(an uncancelled 500-date backfill takes {typical * 1000:.0f} ms); "
          f"(mode, code, outcome): {dict(sorted(tally.items()))}; other reasons: {dict(reasons)}")
    assert any(k[2] == "absent" for k in tally), "every cancel came too late to matter"
    check_pool(cancel_server)   # blocks this loop: nothing else runs on it now
    assert_database_clean(cancel_server)


async def test_cancelled_rebuilds_leave_the_old_or_the_new_projection(
        cancel_server: ServerThread, conn: asyncpg.Connection) -> None:
    rng = random.Random(int(os.environ.get("POTATO_FAULTS_SEED", "8")) + 1)
    outcomes: collections.Counter[tuple[str, str, str]] = collections.Counter()
    async with grpc.aio.insecure_channel(cancel_server.target) as runs_ch, \
            grpc.aio.insecure_channel(cancel_server.target,
                                      interceptors=[BearerInterceptor()]) as admin_ch:
        stub, admin = pb_grpc.RunsServiceStub(runs_ch), admin_grpc.AdminServiceStub(admin_ch)
        users = [str(uuid.uuid4()) for _ in range(REBUILD_ROUNDS)]
        truth = {}
        for user in users:
            truth[user] = [(s, e, n, a) for s, e, n, a in expected_runs(await _seed(stub, user, 2))]

        async def damage(user: str) -> list[tuple[dt.date, dt.date, int, bool]]:
            """Deletes the runs from a random point on (the rebuild must add them back)."""
            cut = rng.choice(WINDOW[: len(WINDOW) // 2])
            await conn.execute("DELETE FROM runs WHERE user_id = $1 AND start_date >= $2",
                               uuid.UUID(user), cut)
            return await stored(conn, user)

        took = []
        for user in users[:2]:
            await damage(user)
            started = time.perf_counter()
            await admin.RebuildUserRuns(admin_pb.RebuildUserRunsRequest(user_id=user), timeout=60)
            took.append(time.perf_counter() - started)
        typical = statistics.median(took)

        async def cancel_one(user: str) -> None:
            old = await damage(user)
            mode = rng.choice(["cancel", "deadline"])
            delay = max(0.001, rng.uniform(0, 1.5 * typical))
            call = admin.RebuildUserRuns(admin_pb.RebuildUserRunsRequest(user_id=user),
                                         timeout=delay if mode == "deadline" else 60)
            if mode == "cancel":
                await asyncio.sleep(delay)   # the fault: a random moment
                call.cancel()
            try:
                await call
                code = "OK"
            except asyncio.CancelledError:
                code = "CANCELLED"
            except grpc.RpcError as exc:
                code = exc.code().name
            await settle(conn)
            now = await stored(conn, user)
            result = "new" if now == truth[user] else "old" if now == old else "MIXED"
            outcomes[(mode, code, result)] += 1
            assert result != "MIXED", (user, mode, code)
            assert code in ACCEPTABLE, code
            if code == "OK":
                assert result == "new"

        for user in users:
            await cancel_one(user)
        # Leave everyone rebuilt: the whole-database checks below then see a sound state.
        for user in users:
            await admin.RebuildUserRuns(admin_pb.RebuildUserRunsRequest(user_id=user), timeout=60)
    print(f"\ncancelled rebuilds: {len(users)} (an uncancelled one takes "
          f"{typical * 1000:.0f} ms); (mode, code, projection): {dict(sorted(outcomes.items()))}")
    check_pool(cancel_server)   # blocks this loop: nothing else runs on it now
    assert_database_clean(cancel_server)
