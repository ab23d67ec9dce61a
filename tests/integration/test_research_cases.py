"""The research doc's test cases 1-9, sample scenarios 1-3 and the multi-gap merge."""

from __future__ import annotations

import datetime as dt

import asyncpg
import grpc
import pytest

from potato.runs.v2 import run_pb2
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.clock import FixedClock
from support import rich_status

from .helpers import NY, backfill, checkins, mark, mark_at, span, stored_runs

C = run_pb2


async def test_case_1_single_day_run(stub: RunsServiceStub, db: asyncpg.Connection,
                                     user_id: str) -> None:
    res = await mark(stub, user_id, "2025-06-15")
    assert res.change == C.RUN_CHANGE_CREATED
    assert span(res.run) == ("2025-06-15", "2025-06-15", 1, True)
    assert await stored_runs(db, user_id) == [("2025-06-15", "2025-06-15", 1, True)]


async def test_case_2_consecutive_day_extension(stub: RunsServiceStub, db: asyncpg.Connection,
                                                user_id: str) -> None:
    await mark(stub, user_id, "2025-06-15")
    res = await mark(stub, user_id, "2025-06-16")
    assert res.change == C.RUN_CHANGE_EXTENDED
    assert span(res.run) == ("2025-06-15", "2025-06-16", 2, True)
    assert await stored_runs(db, user_id) == [("2025-06-15", "2025-06-16", 2, True)]


async def test_case_3_gap_filling_merges(stub: RunsServiceStub, db: asyncpg.Connection,
                                         user_id: str) -> None:
    await mark(stub, user_id, "2025-06-15")
    await mark(stub, user_id, "2025-06-17")
    assert await stored_runs(db, user_id) == [("2025-06-15", "2025-06-15", 1, False),
                                              ("2025-06-17", "2025-06-17", 1, True)]
    res = await mark(stub, user_id, "2025-06-16")
    assert res.change == C.RUN_CHANGE_MERGED
    assert span(res.run) == ("2025-06-15", "2025-06-17", 3, True)
    assert await stored_runs(db, user_id) == [("2025-06-15", "2025-06-17", 3, True)]
    kinds = [r[0] for r in await db.fetch(
        "SELECT kind FROM run_events WHERE user_id = $1 ORDER BY event_id", user_id)]
    assert kinds == ["run_created", "run_deactivated", "run_created", "run_merged"]


async def test_case_4_cross_month_boundary(stub: RunsServiceStub, db: asyncpg.Connection,
                                           user_id: str) -> None:
    await mark(stub, user_id, "2025-06-30")
    res = await mark(stub, user_id, "2025-07-01")
    assert span(res.run) == ("2025-06-30", "2025-07-01", 2, True)


@pytest.mark.parametrize("days", [
    ["2025-12-31", "2026-01-01"],            # year end
    ["2025-01-31", "2025-02-01"],
    ["2025-02-28", "2025-03-01"],            # not a leap year: consecutive
    ["2025-04-30", "2025-05-01"],
])
async def test_month_and_year_boundaries_are_consecutive(stub: RunsServiceStub, user_id: str,
                                                         days: list[str]) -> None:
    await mark(stub, user_id, days[0])
    res = await mark(stub, user_id, days[1])
    assert res.change == C.RUN_CHANGE_EXTENDED
    assert res.run.day_count == 2


async def test_case_5_leap_day_with_injected_clock(stub: RunsServiceStub, db: asyncpg.Connection,
                                                   user_id: str, clock: FixedClock) -> None:
    # The research doc's 2024 dates are before launch; 2028 is the next leap year.
    clock.set(dt.datetime(2028, 3, 1, 18, 0, tzinfo=dt.UTC))
    for d in ("2028-02-28", "2028-03-01", "2028-02-29"):
        res = await mark(stub, user_id, d)
    assert res.change == C.RUN_CHANGE_MERGED
    assert await stored_runs(db, user_id) == [("2028-02-28", "2028-03-01", 3, True)]
    active = await stub.GetActiveRun(__import__("potato.runs.v2.runs_service_pb2",
                                                fromlist=["x"]).GetActiveRunRequest(
        user_id=user_id))
    assert active.current and active.current_streak_days == 3


async def test_leap_day_is_today_and_tomorrow_is_future(stub: RunsServiceStub, user_id: str,
                                                        clock: FixedClock) -> None:
    clock.set(dt.datetime(2028, 2, 29, 12, 0, tzinfo=dt.UTC))
    res = await mark(stub, user_id, "2028-02-29")
    assert res.change == C.RUN_CHANGE_CREATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mark(stub, user_id, "2028-03-01")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, _, _ = rich_status(err.value)
    assert info is not None and info.reason == "DATE_IN_FUTURE"


async def test_case_6_timezone_aware_consecutive(stub: RunsServiceStub, db: asyncpg.Connection,
                                                 user_id: str) -> None:
    # 23:00 EDT on June 15 is 03:00 UTC June 16; two hours later it is 01:00 EDT
    # on June 16 (05:00 UTC): the next local day, though the same UTC date.
    late = dt.datetime(2025, 6, 16, 3, 0, tzinfo=dt.UTC)
    early = dt.datetime(2025, 6, 16, 5, 0, tzinfo=dt.UTC)
    a = await mark_at(stub, user_id, late, tz=NY)
    b = await mark_at(stub, user_id, early)  # the stored zone is used
    assert (a.local_date, b.local_date) == ("2025-06-15", "2025-06-16")
    assert b.change == C.RUN_CHANGE_EXTENDED
    assert await stored_runs(db, user_id) == [("2025-06-15", "2025-06-16", 2, True)]


async def test_case_6_same_utc_date_different_local_days(stub: RunsServiceStub,
                                                         user_id: str) -> None:
    # 23:00 and 01:00 local on consecutive nights can share a UTC date.
    a = await mark_at(stub, user_id, dt.datetime(2025, 1, 10, 4, 0, tzinfo=dt.UTC), tz=NY)
    b = await mark_at(stub, user_id, dt.datetime(2025, 1, 10, 6, 0, tzinfo=dt.UTC))
    assert (a.local_date, b.local_date) == ("2025-01-09", "2025-01-10")
    assert b.run.day_count == 2


async def test_case_7_multiple_time_zones(stub: RunsServiceStub) -> None:
    import uuid
    instant = dt.datetime(2025, 6, 15, 10, 30, tzinfo=dt.UTC)
    kiritimati = await mark_at(stub, str(uuid.uuid4()), instant, tz="Pacific/Kiritimati")
    pago = await mark_at(stub, str(uuid.uuid4()), instant, tz="Pacific/Pago_Pago")
    assert kiritimati.local_date == "2025-06-16"   # UTC+14: 00:30 next day
    assert pago.local_date == "2025-06-14"         # UTC-11: 23:30 previous day


async def test_case_8_future_date_rejected_and_nothing_written(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str, clock: FixedClock) -> None:
    tomorrow = (clock.now().astimezone(__import__("zoneinfo").ZoneInfo(NY)).date()
                + dt.timedelta(days=1)).isoformat()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mark(stub, user_id, tomorrow)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(err.value)
    assert info is not None and info.reason == "DATE_IN_FUTURE"
    assert bad is not None and bad.field_violations[0].field == "local_date"
    assert await checkins(db, user_id) == []
    assert await stored_runs(db, user_id) == []
    assert await db.fetchval("SELECT count(*) FROM users WHERE user_id = $1", user_id) == 0


async def test_case_9_idempotent_marking(stub: RunsServiceStub, db: asyncpg.Connection,
                                         user_id: str) -> None:
    first = await mark(stub, user_id, "2025-06-15")
    events_before = await db.fetchval("SELECT count(*) FROM run_events WHERE user_id = $1", user_id)
    again = await mark(stub, user_id, "2025-06-15")
    assert again.change == C.RUN_CHANGE_NONE
    assert span(again.run) == span(first.run)
    assert again.run.update_time == first.run.update_time
    assert await checkins(db, user_id) == ["2025-06-15"]
    assert await db.fetchval("SELECT count(*) FROM run_events WHERE user_id = $1",
                             user_id) == events_before


async def test_scenario_1_basic_progression(stub: RunsServiceStub, db: asyncpg.Connection,
                                            user_id: str) -> None:
    changes = [(await mark(stub, user_id, d)).change
               for d in ("2025-06-15", "2025-06-16", "2025-06-18", "2025-06-17")]
    assert changes == [C.RUN_CHANGE_CREATED, C.RUN_CHANGE_EXTENDED, C.RUN_CHANGE_CREATED,
                       C.RUN_CHANGE_MERGED]
    assert await stored_runs(db, user_id) == [("2025-06-15", "2025-06-18", 4, True)]


async def test_scenario_2_month_boundary(stub: RunsServiceStub, db: asyncpg.Connection,
                                         user_id: str) -> None:
    await mark(stub, user_id, "2025-06-30")
    await mark(stub, user_id, "2025-07-01")
    assert await stored_runs(db, user_id) == [("2025-06-30", "2025-07-01", 2, True)]


async def test_scenario_3_complex_merging(stub: RunsServiceStub, db: asyncpg.Connection,
                                          user_id: str) -> None:
    for d in ("2025-08-01", "2025-08-03", "2025-08-05", "2025-08-07"):
        await mark(stub, user_id, d)
    assert len(await stored_runs(db, user_id)) == 4
    for d in ("2025-08-02", "2025-08-04", "2025-08-06"):
        res = await mark(stub, user_id, d)
        assert res.change == C.RUN_CHANGE_MERGED
    assert await stored_runs(db, user_id) == [("2025-08-01", "2025-08-07", 7, True)]


async def test_multi_gap_merge_by_marks(stub: RunsServiceStub, db: asyncpg.Connection,
                                        user_id: str) -> None:
    for d in ("2025-06-10", "2025-06-11", "2025-06-12", "2025-06-20", "2025-06-21", "2025-06-22"):
        await mark(stub, user_id, d)
    changes = [(await mark(stub, user_id, f"2025-06-{d}")).change for d in range(13, 20)]
    assert changes == [C.RUN_CHANGE_EXTENDED] * 6 + [C.RUN_CHANGE_MERGED]
    assert await stored_runs(db, user_id) == [("2025-06-10", "2025-06-22", 13, True)]


async def test_multi_gap_merge_by_backfill(stub: RunsServiceStub, db: asyncpg.Connection,
                                           user_id: str) -> None:
    await backfill(stub, user_id, ["2025-06-10", "2025-06-11", "2025-06-12"], tz=NY)
    await backfill(stub, user_id, ["2025-06-20", "2025-06-21", "2025-06-22"])
    res = await backfill(stub, user_id, [f"2025-06-{d}" for d in range(19, 12, -1)])
    assert res.added_days == 7
    assert [span(r) for r in res.runs] == [("2025-06-10", "2025-06-22", 13, True)]
    assert await stored_runs(db, user_id) == [("2025-06-10", "2025-06-22", 13, True)]
    kinds = [r[0] for r in await db.fetch(
        "SELECT kind FROM run_events WHERE user_id = $1 AND cause = 'backfill' "
        "ORDER BY event_id", user_id)]
    assert kinds.count("run_merged") == 1
