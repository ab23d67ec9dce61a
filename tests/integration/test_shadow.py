"""Online shadow comparisons: after the response, bounded, counted, stored (capped).

Each test runs its own App (tiny queue, one worker, a small mismatch cap) on the
suite's PostgreSQL, with a clock in an hour of its own, so its counts in
`shadow_comparisons` are its alone. Workers are held up for real: a transaction of the
test holds an ACCESS EXCLUSIVE lock on `runs`, which the projection read waits for
while the legacy read (which never touches `runs`) answers the caller.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato_runs.app import App, Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.deadline import Deadline
from potato_runs.domain.flags import RUNS_V2
from potato_runs.domain.reads import CurrentRunAnswer, ReadSource
from potato_runs.observability import build_providers
from potato_runs.service.shadow import ShadowComparer, ShadowJob
from potato_runs.service.v1_runs import CurrentRunQuery
from potato_runs.storage.pool import create_pool
from potato_runs.storage.read_paths import ReadPaths
from potato_runs.storage.shadow_repo import CountKey, Mismatch, ShadowRepository
from support import app_dsn

from .helpers import NY
from .v1_support import SHADOW_ALL, forget, read, until

CAP = 3


@dataclasses.dataclass
class Shadowed:
    app: App
    stub: v1_grpc.RunsServiceStub
    reader: InMemoryMetricReader
    hour: dt.datetime

    @property
    def shadow(self) -> ShadowComparer:
        assert self.app.shadow is not None
        return self.app.shadow


@pytest.fixture
async def shadowed(pg_dsn: str) -> AsyncIterator[Shadowed]:
    # An hour nobody else uses: this app's counts are the only ones under it.
    hour = dt.datetime(2040, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=random.randrange(10**6))
    reader = InMemoryMetricReader()
    providers = build_providers("none", extra_reader=reader)
    dsn = app_dsn(pg_dsn)   # the least-privilege role, as every test server
    pool = await create_pool(dsn, min_size=1, max_size=4)
    settings = Settings(port=0, dsn=dsn, invariant_check_interval=0, health_probe_interval=0,
                        shadow_workers=1, shadow_queue_size=2, shadow_mismatch_cap=CAP)
    app = await build_app(settings, clock=FixedClock(hour + dt.timedelta(minutes=30)),
                          database=Database(dsn=dsn, pool=pool), providers=providers)
    assert app.v1 is not None
    app.v1.flags = SHADOW_ALL
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            yield Shadowed(app, v1_grpc.RunsServiceStub(ch), reader, hour)
    finally:
        await app.stop(0)
        await pool.close()


@pytest.fixture
async def user(shadowed: Shadowed, db: asyncpg.Connection) -> AsyncIterator[str]:
    uid = str(uuid.uuid4())
    for day in ("2025-06-01", "2025-06-02", "2025-06-04", "2025-06-05"):
        await shadowed.stub.MarkDay(v1.MarkDayRequest(user_id=uid, date=day, time_zone=NY))
    try:
        yield uid
    finally:
        await forget(db, uid)


async def counts(db: asyncpg.Connection, s: Shadowed) -> dict[tuple[str, str], int]:
    rows = await db.fetch("SELECT method, result, count FROM shadow_comparisons "
                          "WHERE flag = $1 AND hour = $2", RUNS_V2, s.hour)
    return {(r["method"], r["result"]): r["count"] for r in rows}


async def get_current(s: Shadowed, uid: str) -> Any:
    res, source = await read(s.stub.GetCurrentRun, v1.GetCurrentRunRequest(user_id=uid))
    assert source == "legacy"
    return res


def otel_counts(reader: InMemoryMetricReader) -> dict[tuple[str, str, str], int]:
    data = reader.get_metrics_data()
    assert data is not None
    return {(p.attributes["flag"], p.attributes["method"], p.attributes["result"]): p.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == "potato.shadow.comparisons" for p in m.data.data_points}


async def lock_runs(db: asyncpg.Connection) -> Any:
    tx = db.transaction()
    await tx.start()
    await db.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
    return tx


async def test_healthy_projection_counts_matches(shadowed: Shadowed, db: asyncpg.Connection,
                                                 user: str) -> None:
    await get_current(shadowed, user)
    await read(shadowed.stub.ListRuns, v1.ListRunsRequest(user_id=user))
    await read(shadowed.stub.GetStats, v1.GetStatsRequest(user_id=user))
    expected = {("GetCurrentRun", "match"): 1, ("ListRuns", "match"): 1,
                ("GetStats", "match"): 1}

    async def counted() -> bool:
        return await counts(db, shadowed) == expected

    await until(counted, "three matches in shadow_comparisons")
    assert await db.fetchval("SELECT count(*) FROM shadow_mismatches WHERE user_id = $1",
                             uuid.UUID(user)) == 0
    assert otel_counts(shadowed.reader) == {(RUNS_V2, m, r): n for (m, r), n in expected.items()}


async def test_damaged_projection_stores_mismatches_with_both_answers(
        shadowed: Shadowed, db: asyncpg.Connection, user: str) -> None:
    await db.execute("UPDATE runs SET end_date = end_date - 1, day_count = day_count - 1 "
                     "WHERE user_id = $1 AND active", uuid.UUID(user))
    served = await get_current(shadowed, user)
    assert (served.run.start_date, served.run.end_date) == ("2025-06-04", "2025-06-05")
    await read(shadowed.stub.GetStats, v1.GetStatsRequest(user_id=user))

    async def counted() -> bool:
        return await counts(db, shadowed) == {("GetCurrentRun", "mismatch"): 1,
                                              ("GetStats", "mismatch"): 1}

    await until(counted, "two mismatches in shadow_comparisons")
    rows = await db.fetch("SELECT flag, method, legacy, projection, observed_at "
                          "FROM shadow_mismatches WHERE user_id = $1 ORDER BY mismatch_id",
                          uuid.UUID(user))
    assert [(r["flag"], r["method"]) for r in rows] == [(RUNS_V2, "GetCurrentRun"),
                                                        (RUNS_V2, "GetStats")]
    current = rows[0]
    legacy, projection = json.loads(current["legacy"]), json.loads(current["projection"])
    assert legacy["run"] == {"start_date": "2025-06-04", "end_date": "2025-06-05",
                             "day_count": 2, "active": True}
    assert projection["run"] == {"start_date": "2025-06-04", "end_date": "2025-06-04",
                                 "day_count": 1, "active": True}
    stats = json.loads(rows[1]["legacy"]), json.loads(rows[1]["projection"])
    assert (stats[0]["total_days"], stats[1]["total_days"]) == (4, 3)
    assert current["observed_at"] == shadowed.hour + dt.timedelta(minutes=30)
    assert otel_counts(shadowed.reader)[(RUNS_V2, "GetCurrentRun", "mismatch")] == 1


async def test_the_response_is_sent_before_the_comparison_runs(
        shadowed: Shadowed, db: asyncpg.Connection, user: str) -> None:
    tx = await lock_runs(db)   # the projection read (the comparison) waits for this
    try:
        res = await get_current(shadowed, user)   # answered while the comparison waits
        assert res.current_streak_days == 0 and res.run.day_count == 2
        assert shadowed.shadow.totals["match"] == 0
    finally:
        await tx.rollback()

    async def compared() -> bool:
        return shadowed.shadow.totals["match"] == 1

    await until(compared, "the comparison to run once the lock is gone")


async def test_a_full_queue_drops_and_counts(shadowed: Shadowed, db: asyncpg.Connection,
                                             user: str) -> None:
    tx = await lock_runs(db)
    try:
        await get_current(shadowed, user)      # the one worker takes it and waits

        async def taken() -> bool:
            return shadowed.shadow.pending() == 0

        await until(taken, "the worker to take the first comparison")
        for _ in range(2 + 3):                 # 2 fill the queue, 3 are dropped
            await get_current(shadowed, user)

        async def dropped() -> bool:
            return shadowed.shadow.totals["dropped"] == 3

        await until(dropped, "three dropped comparisons")
        assert shadowed.shadow.pending() == 2
    finally:
        await tx.rollback()

    async def counted() -> bool:
        return await counts(db, shadowed) == {("GetCurrentRun", "match"): 3,
                                              ("GetCurrentRun", "dropped"): 3}

    await until(counted, "3 matches and 3 drops in shadow_comparisons")
    assert otel_counts(shadowed.reader)[(RUNS_V2, "GetCurrentRun", "dropped")] == 3


async def test_stop_drops_what_it_cannot_finish_and_does_not_hang(
        shadowed: Shadowed, db: asyncpg.Connection, user: str) -> None:
    shadowed.shadow.settings = dataclasses.replace(shadowed.shadow.settings, drain_timeout=0.2)
    tx = await lock_runs(db)
    try:
        for _ in range(3):   # one held by the worker, two queued
            await get_current(shadowed, user)

        async def queued() -> bool:
            return shadowed.shadow.pending() == 2

        await until(queued, "two queued comparisons")
        await shadowed.shadow.stop()
    finally:
        await tx.rollback()
    assert shadowed.shadow.totals == {"dropped": 3}
    assert await counts(db, shadowed) == {("GetCurrentRun", "dropped"): 3}
    await get_current(shadowed, user)   # still served; its comparison is dropped

    async def dropped() -> bool:
        return shadowed.shadow.totals == {"dropped": 4}

    await until(dropped, "the late comparison to be dropped")


async def test_mismatch_storage_is_capped(shadowed: Shadowed, db: asyncpg.Connection,
                                          user: str) -> None:
    await db.execute("DELETE FROM runs WHERE user_id = $1 AND NOT active", uuid.UUID(user))
    for _ in range(CAP + 2):
        await read(shadowed.stub.ListRuns, v1.ListRunsRequest(user_id=user))

        async def caught_up() -> bool:   # one at a time: the one-slot queue never drops
            return shadowed.shadow.pending() == 0

        await until(caught_up, "the queue to drain")

    async def counted() -> bool:
        return await counts(db, shadowed) == {("ListRuns", "mismatch"): CAP + 2}

    await until(counted, f"{CAP + 2} mismatches counted")
    assert await db.fetchval("SELECT count(*) FROM shadow_mismatches") == CAP
    assert await db.fetchval("SELECT count(*) FROM shadow_mismatches WHERE user_id = $1",
                             uuid.UUID(user)) == CAP


async def test_repository_keeps_the_newest_rows_up_to_the_cap(
        pg_dsn: str, db: asyncpg.Connection) -> None:
    pool = await create_pool(pg_dsn, min_size=0, max_size=1)
    try:
        repo = ShadowRepository(pool)
        now = dt.datetime(2041, 1, 1, tzinfo=dt.UTC)
        uid = uuid.uuid4()

        def m(i: int) -> Mismatch:
            return Mismatch(uid, RUNS_V2, "GetStats", {"i": i}, {"i": -i}, now)

        key = CountKey(RUNS_V2, "GetStats", "mismatch", now)
        await repo.flush({key: 2}, [m(1), m(2)], 3, Deadline.after(5))
        await repo.flush({key: 3}, [m(3), m(4), m(5)], 3, Deadline.after(5))
        rows = await db.fetch("SELECT legacy FROM shadow_mismatches ORDER BY mismatch_id")
        assert [json.loads(r["legacy"])["i"] for r in rows] == [3, 4, 5]
        await repo.flush({}, [m(i) for i in range(6, 11)], 3, Deadline.after(5))
        rows = await db.fetch("SELECT legacy FROM shadow_mismatches ORDER BY mismatch_id")
        assert [json.loads(r["legacy"])["i"] for r in rows] == [8, 9, 10]
        assert await db.fetchval("SELECT count FROM shadow_comparisons WHERE hour = $1",
                                 now) == 5
    finally:
        await db.execute("DELETE FROM shadow_mismatches WHERE user_id = $1", uid)
        await pool.close()


async def test_a_write_between_the_reads_is_not_a_mismatch(
        shadowed: Shadowed, db: asyncpg.Connection, user: str) -> None:
    """The served answer predates a write; the re-read in one snapshot sees both paths
    agree, so the comparison is a match. A real difference stays a mismatch."""
    assert shadowed.app.v1 is not None
    paths = ReadPaths(shadowed.app.database.pool)
    query = CurrentRunQuery(uuid.UUID(user))
    now = shadowed.hour

    async def legacy_now() -> CurrentRunAnswer:
        return await paths.read(Deadline.after(5),
                                lambda r: query.answer(r, ReadSource.LEGACY, now))

    stale = await legacy_now()
    await shadowed.stub.MarkDay(v1.MarkDayRequest(user_id=user, date="2025-06-06"))
    assert await legacy_now() != stale
    assert await shadowed.shadow.compare(ShadowJob(RUNS_V2, query, stale)) == "match"

    await db.execute("UPDATE runs SET end_date = end_date - 2, day_count = day_count - 2 "
                     "WHERE user_id = $1 AND active", uuid.UUID(user))
    assert await shadowed.shadow.compare(ShadowJob(RUNS_V2, query, stale)) == "mismatch"
    assert shadowed.shadow.totals == {"match": 1, "mismatch": 1}
