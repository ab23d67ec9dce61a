"""Idempotent retries by request id (AIP-155): v2's `request_id` field, v1's
`potato-request-id` metadata, the fingerprint, concurrency, and the purge after the
retention. Real server on port 0, real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato.runs.v2 import run_pb2 as C
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.clock import FixedClock
from potato_runs.service.retention import RetentionPurge
from potato_runs.storage.pool import create_pool
from potato_runs.storage.request_ids_repo import RequestIdsRepository
from support import ServerThread, rich_status

from .helpers import NY, backfill, checkins, mark, stored_runs

V1_KEY = "potato-request-id"


def rid() -> str:
    return str(uuid.uuid4())


async def unmark_with(stub: RunsServiceStub, user: str, day: str,
                      request_id: str) -> pb.UnmarkDayResponse:
    return await stub.UnmarkDay(pb.UnmarkDayRequest(user_id=user, local_date=day,
                                                    request_id=request_id), timeout=10)


async def backfill_with(stub: RunsServiceStub, user: str, days: list[str],
                        request_id: str) -> pb.BackfillDaysResponse:
    return await stub.BackfillDays(pb.BackfillDaysRequest(
        user_id=user, local_dates=days, time_zone=NY, request_id=request_id), timeout=30)


async def recorded(db: asyncpg.Connection, user: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM request_ids WHERE user_id = $1", user))


async def events(db: asyncpg.Connection, user: str) -> list[str]:
    return [r[0] for r in await db.fetch(
        "SELECT kind FROM run_events WHERE user_id = $1 ORDER BY event_id", user)]


async def assert_reused(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info, bad, _ = rich_status(err.value)
    assert info is not None and info.reason == "REQUEST_ID_REUSED"
    assert info.domain == "runs.potato.app"
    assert bad is None


async def assert_invalid_id(call: object, field: str = "request_id") -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(err.value)
    assert info is not None and info.reason == "INVALID_REQUEST_ID"
    assert bad is not None
    assert [(v.field, v.reason) for v in bad.field_violations] == [(field, "INVALID_REQUEST_ID")]


# -- v2 MarkDay -----------------------------------------------------------------------


async def test_a_retried_mark_returns_the_original_response(
        stub: RunsServiceStub, db: asyncpg.Connection, clock: FixedClock,
        user_id: str) -> None:
    key = rid()
    first = await mark(stub, user_id, "2025-06-01", request_id=key)
    assert first.change == C.RUN_CHANGE_CREATED
    clock.advance(dt.timedelta(minutes=5))
    again = await mark(stub, user_id, "2025-06-01", request_id=key)
    assert again == first   # RUN_CHANGE_CREATED, not NONE; the same run, timestamps included
    # Without a request id the same retry answers from the current state.
    plain = await mark(stub, user_id, "2025-06-01")
    assert plain.change == C.RUN_CHANGE_NONE
    assert await events(db, user_id) == ["run_created"]
    assert await recorded(db, user_id) == 1


async def test_the_replay_is_the_original_response_even_after_later_writes(
        stub: RunsServiceStub, user_id: str) -> None:
    key = rid()
    first = await mark(stub, user_id, "2025-06-01", request_id=key)
    extended = await mark(stub, user_id, "2025-06-02")
    assert extended.run.day_count == 2
    again = await mark(stub, user_id, "2025-06-01", request_id=key)
    assert again == first and again.run.day_count == 1


async def test_the_same_id_for_another_mark_is_already_exists(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    key = rid()
    await mark(stub, user_id, "2025-06-01", request_id=key)
    await assert_reused(mark(stub, user_id, "2025-06-02", request_id=key))   # another date
    await assert_reused(mark(stub, user_id, "2025-06-01", request_id=key,    # another source
                             source="import"))
    await assert_reused(mark(stub, user_id, "2025-06-01", request_id=key,    # another zone
                             tz="Europe/Paris"))
    await assert_reused(unmark_with(stub, user_id, "2025-06-01", key))      # another method
    assert await checkins(db, user_id) == ["2025-06-01"]   # none of them wrote
    assert await recorded(db, user_id) == 1


async def test_one_id_is_independent_between_users(stub: RunsServiceStub,
                                                   db: asyncpg.Connection) -> None:
    key = rid()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    ra = await mark(stub, a, "2025-06-01", request_id=key)
    rb = await mark(stub, b, "2025-06-05", request_id=key)   # another request, another user
    assert (ra.change, rb.change) == (C.RUN_CHANGE_CREATED, C.RUN_CHANGE_CREATED)
    assert (ra.local_date, rb.local_date) == ("2025-06-01", "2025-06-05")
    assert await mark(stub, a, "2025-06-01", request_id=key) == ra
    assert await mark(stub, b, "2025-06-05", request_id=key) == rb


async def test_a_failed_write_records_nothing(stub: RunsServiceStub, db: asyncpg.Connection,
                                              user_id: str) -> None:
    key = rid()
    with pytest.raises(grpc.aio.AioRpcError) as err:   # a new user has no stored zone
        await mark(stub, user_id, "2025-06-01", tz=None, request_id=key)
    info, _, _ = rich_status(err.value)
    assert info is not None and info.reason == "TIME_ZONE_REQUIRED"
    assert await recorded(db, user_id) == 0
    done = await mark(stub, user_id, "2025-06-01", request_id=key)   # runs as a new request
    assert done.change == C.RUN_CHANGE_CREATED


async def test_concurrent_retries_of_one_id_write_once(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    key = rid()
    await mark(stub, user_id, "2025-06-03")   # a run to extend: the change is not "created"
    replies = await asyncio.gather(
        *(mark(stub, user_id, "2025-06-02", request_id=key) for _ in range(8)))
    assert all(r == replies[0] for r in replies)
    assert replies[0].change == C.RUN_CHANGE_EXTENDED
    assert await events(db, user_id) == ["run_created", "run_extended"]
    assert await recorded(db, user_id) == 1
    assert await stored_runs(db, user_id) == [("2025-06-02", "2025-06-03", 2, True)]


async def test_a_mark_time_request_replays(stub: RunsServiceStub, user_id: str) -> None:
    key = rid()
    req = pb.MarkDayRequest(user_id=user_id, time_zone=NY, request_id=key)
    req.mark_time.FromDatetime(dt.datetime(2025, 6, 1, 15, 0))
    first = await stub.MarkDay(req, timeout=10)
    assert (first.change, first.local_date) == (C.RUN_CHANGE_CREATED, "2025-06-01")
    assert await stub.MarkDay(req, timeout=10) == first
    other = pb.MarkDayRequest(user_id=user_id, time_zone=NY, request_id=key)
    other.mark_time.FromDatetime(dt.datetime(2025, 6, 1, 15, 0, 1))   # another instant
    await assert_reused(stub.MarkDay(other, timeout=10))


@pytest.mark.parametrize("bad", ["not-a-uuid", "{6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99}",
                                 "6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99\n",
                                 "6f1c3a528a414d8e9c3e3b7c2a1d0e99", "x" * 5000])
async def test_a_malformed_request_id_is_invalid_argument(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str, bad: str) -> None:
    await assert_invalid_id(mark(stub, user_id, "2025-06-01", request_id=bad))
    await assert_invalid_id(unmark_with(stub, user_id, "2025-06-01", bad))
    await assert_invalid_id(backfill_with(stub, user_id, ["2025-06-01"], bad))
    assert await checkins(db, user_id) == []


# -- v2 UnmarkDay and BackfillDays -------------------------------------------------------


async def test_a_retried_unmark_returns_the_original_response(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    await backfill(stub, user_id, ["2025-06-01", "2025-06-02", "2025-06-03"], tz=NY)
    key = rid()
    first = await unmark_with(stub, user_id, "2025-06-02", key)
    assert (first.removed, first.change) == (True, C.RUN_CHANGE_SPLIT)
    again = await unmark_with(stub, user_id, "2025-06-02", key)
    assert again == first   # removed = true and SPLIT, not a no-op
    await assert_reused(unmark_with(stub, user_id, "2025-06-03", key))
    await assert_reused(mark(stub, user_id, "2025-06-02", request_id=key))
    assert await checkins(db, user_id) == ["2025-06-01", "2025-06-03"]


async def test_a_retried_backfill_returns_the_original_response(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    key = rid()
    days = ["2025-06-01", "2025-06-02", "2025-06-05"]
    first = await backfill_with(stub, user_id, days, key)
    assert first.added_days == 3
    # The dates are a set: another order and a duplicate are the same request.
    again = await backfill_with(stub, user_id, ["2025-06-05", "2025-06-01", "2025-06-02",
                                                "2025-06-01"], key)
    assert again == first
    await assert_reused(backfill_with(stub, user_id, [*days, "2025-06-06"], key))
    await assert_reused(backfill_with(stub, user_id, days[:2], key))
    assert await checkins(db, user_id) == days
    assert await recorded(db, user_id) == 1


async def test_a_retry_the_checks_would_now_refuse_still_replays(
        stub: RunsServiceStub, clock: FixedClock, user_id: str) -> None:
    """A backfill of today in Tokyo (the stored zone); the user's zone then moves to Los
    Angeles, where that date has not begun. The retry answers as the first attempt did."""
    clock.set(dt.datetime(2026, 11, 21, 20, 0, tzinfo=dt.UTC))   # Tokyo: 11-22, LA: 11-21
    await mark(stub, user_id, "2026-11-01", tz="Asia/Tokyo")
    key = rid()
    req = pb.BackfillDaysRequest(user_id=user_id, local_dates=["2026-11-22"], request_id=key)
    first = await stub.BackfillDays(req, timeout=10)
    assert first.added_days == 1
    await mark(stub, user_id, "2026-11-02", tz="America/Los_Angeles")
    assert await stub.BackfillDays(req, timeout=10) == first
    fresh = pb.BackfillDaysRequest(user_id=user_id, local_dates=["2026-11-22"])
    with pytest.raises(grpc.aio.AioRpcError) as err:   # without the id: judged anew
        await stub.BackfillDays(fresh, timeout=10)
    info, _, _ = rich_status(err.value)
    assert info is not None and info.reason == "DATE_IN_FUTURE"


# -- v1: the request id in the metadata ----------------------------------------------------


@pytest.fixture
async def v1_stub(channel: grpc.aio.Channel) -> v1_grpc.RunsServiceStub:
    return v1_grpc.RunsServiceStub(channel)


async def v1_mark(stub: v1_grpc.RunsServiceStub, user: str, day: str,
                  key: str) -> v1.MarkDayResponse:
    return await stub.MarkDay(v1.MarkDayRequest(user_id=user, date=day, time_zone=NY),
                              metadata=((V1_KEY, key),), timeout=10)


async def test_v1_mark_with_a_request_id_replays(
        v1_stub: v1_grpc.RunsServiceStub, stub: RunsServiceStub, db: asyncpg.Connection,
        user_id: str) -> None:
    key = rid()
    first = await v1_mark(v1_stub, user_id, "2025-06-01", key)
    await mark(stub, user_id, "2025-06-02")   # the run grows meanwhile
    again = await v1_mark(v1_stub, user_id, "2025-06-01", key)
    assert again == first and again.run.day_count == 1   # the original response
    await assert_reused(v1_mark(v1_stub, user_id, "2025-06-03", key))
    # v1 and v2 share the write path: the same write (v1 MarkDay is source "v1") replays,
    # with its original change.
    through_v2 = await mark(stub, user_id, "2025-06-01", request_id=key, source="v1")
    assert through_v2.change == C.RUN_CHANGE_CREATED
    assert await events(db, user_id) == ["run_created", "run_extended"]


async def test_v1_unmark_with_a_request_id_replays(
        v1_stub: v1_grpc.RunsServiceStub, stub: RunsServiceStub, user_id: str) -> None:
    await mark(stub, user_id, "2025-06-01")
    key = rid()
    req = v1.UnmarkDayRequest(user_id=user_id, date="2025-06-01")
    first = await v1_stub.UnmarkDay(req, metadata=((V1_KEY, key),), timeout=10)
    again = await v1_stub.UnmarkDay(req, metadata=((V1_KEY, key),), timeout=10)
    assert first.removed is True and again.removed is True
    plain = await v1_stub.UnmarkDay(req, timeout=10)
    assert plain.removed is False


async def test_v1_malformed_request_id_metadata_is_invalid_argument(
        v1_stub: v1_grpc.RunsServiceStub, user_id: str) -> None:
    await assert_invalid_id(v1_mark(v1_stub, user_id, "2025-06-01", "nope"), V1_KEY)
    twice = ((V1_KEY, rid()), (V1_KEY, rid()))   # two ids: refused, not one picked
    await assert_invalid_id(v1_stub.MarkDay(
        v1.MarkDayRequest(user_id=user_id, date="2025-06-01", time_zone=NY),
        metadata=twice, timeout=10), V1_KEY)
    await assert_invalid_id(v1_stub.UnmarkDay(
        v1.UnmarkDayRequest(user_id=user_id, date="2025-06-01"),
        metadata=((V1_KEY, "nope"),), timeout=10), V1_KEY)


# -- retention and purge -------------------------------------------------------------------


async def test_ids_are_kept_for_the_retention_then_purged(
        server: ServerThread, stub: RunsServiceStub, db: asyncpg.Connection,
        clock: FixedClock, user_id: str) -> None:
    assert server.app is not None and server.app.request_id_purge is not None
    purge = server.app.request_id_purge
    key = rid()
    first = await mark(stub, user_id, "2025-06-01", request_id=key)
    clock.advance(dt.timedelta(hours=23))
    server.run(purge.purge_once())
    assert await mark(stub, user_id, "2025-06-01", request_id=key) == first
    clock.advance(dt.timedelta(hours=1, seconds=1))
    server.run(purge.purge_once())
    assert await recorded(db, user_id) == 0
    # Forgotten: the id is free again (a new request).
    fresh = await mark(stub, user_id, "2025-06-05", request_id=key)
    assert fresh.change == C.RUN_CHANGE_CREATED


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(pg_dsn, min_size=0, max_size=2)
    try:
        yield p
    finally:
        await p.close()


async def test_the_purge_deletes_old_ids_in_batches_and_keeps_young_ones(
        pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    now = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)   # later than any other test's ids
    user = uuid.uuid4()
    ages = {"old": [dt.timedelta(hours=h) for h in (24.001, 25, 48, 24 * 30, 24 * 300)],
            "young": [dt.timedelta(hours=h) for h in (0, 1, 23.99)]}
    ids: dict[str, list[uuid.UUID]] = {"old": [], "young": []}
    for kind, deltas in ages.items():
        for delta in deltas:
            key = uuid.uuid4()
            ids[kind].append(key)
            await db.execute(
                "INSERT INTO request_ids (user_id, request_id, fingerprint, response, "
                "created_at) VALUES ($1, $2, $3, '{}'::jsonb, $4)",
                user, key, b"\0" * 32, now - delta)
    purge = RetentionPurge("request-id-purge", "request ids",
                           RequestIdsRepository(pool).purge_batch, FixedClock(now),
                           retention=86_400, interval=60, batch_size=2, max_batches=100)
    deleted = await purge.purge_once()
    assert deleted >= len(ids["old"])   # others' ids older than a day go too
    left = {r[0] for r in await db.fetch(
        "SELECT request_id FROM request_ids WHERE user_id = $1", user)}
    assert left == set(ids["young"])
    assert await db.fetchval("SELECT count(*) FROM request_ids WHERE created_at < $1",
                             now - dt.timedelta(days=1)) == 0
