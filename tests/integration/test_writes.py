"""Unmark, backfill, zones and DST, events: the write path over gRPC."""

from __future__ import annotations

import datetime as dt
import json

import asyncpg
import grpc
import pytest

from potato.runs.v2 import run_pb2 as C
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from support import rich_status

from .helpers import NY, backfill, checkins, mark, mark_at, span, stored_runs, unmark


async def _run_of_five(stub: RunsServiceStub, user: str) -> None:
    await backfill(stub, user, [f"2025-03-0{d}" for d in range(1, 6)], tz=NY)


async def test_unmark_first_day_shrinks(stub: RunsServiceStub, db: asyncpg.Connection,
                                        user_id: str) -> None:
    await _run_of_five(stub, user_id)
    res = await unmark(stub, user_id, "2025-03-01")
    assert (res.removed, res.change) == (True, C.RUN_CHANGE_SHRUNK)
    assert [span(r) for r in res.runs] == [("2025-03-02", "2025-03-05", 4, True)]
    assert await stored_runs(db, user_id) == [("2025-03-02", "2025-03-05", 4, True)]


async def test_unmark_last_day_shrinks(stub: RunsServiceStub, db: asyncpg.Connection,
                                       user_id: str) -> None:
    await _run_of_five(stub, user_id)
    res = await unmark(stub, user_id, "2025-03-05")
    assert res.change == C.RUN_CHANGE_SHRUNK
    assert await stored_runs(db, user_id) == [("2025-03-01", "2025-03-04", 4, True)]


async def test_unmark_middle_day_splits_and_later_piece_stays_active(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    await _run_of_five(stub, user_id)
    res = await unmark(stub, user_id, "2025-03-03")
    assert res.change == C.RUN_CHANGE_SPLIT
    assert [span(r) for r in res.runs] == [("2025-03-04", "2025-03-05", 2, True),
                                           ("2025-03-01", "2025-03-02", 2, False)]
    assert await stored_runs(db, user_id) == [("2025-03-01", "2025-03-02", 2, False),
                                              ("2025-03-04", "2025-03-05", 2, True)]
    event = await db.fetchrow("SELECT kind, before, after FROM run_events WHERE user_id = $1 "
                              "ORDER BY event_id DESC LIMIT 1", user_id)
    assert event["kind"] == "run_split"
    before, after = json.loads(event["before"]), json.loads(event["after"])
    assert before["day_count"] == 5 and [a["day_count"] for a in after] == [2, 2]


async def test_unmark_only_day_deletes_and_previous_run_becomes_active(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    await mark(stub, user_id, "2025-03-01")
    await mark(stub, user_id, "2025-03-10")
    res = await unmark(stub, user_id, "2025-03-10")
    assert (res.removed, res.change, list(res.runs)) == (True, C.RUN_CHANGE_DELETED, [])
    assert await stored_runs(db, user_id) == [("2025-03-01", "2025-03-01", 1, True)]
    kinds = [r[0] for r in await db.fetch(
        "SELECT kind FROM run_events WHERE user_id = $1 AND cause = 'unmark' ORDER BY event_id",
        user_id)]
    assert kinds == ["run_deleted", "run_activated"]
    res = await unmark(stub, user_id, "2025-03-01")
    assert res.change == C.RUN_CHANGE_DELETED
    assert await stored_runs(db, user_id) == []
    active = await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=user_id))
    assert not active.HasField("run")


async def test_unmark_unmarked_day_is_a_noop(stub: RunsServiceStub, db: asyncpg.Connection,
                                             user_id: str) -> None:
    await mark(stub, user_id, "2025-03-01")
    res = await unmark(stub, user_id, "2025-03-02")
    assert (res.removed, res.change) == (False, C.RUN_CHANGE_NONE)
    assert await stored_runs(db, user_id) == [("2025-03-01", "2025-03-01", 1, True)]
    # A user we have never seen: also a no-op, not an error.
    import uuid
    res = await unmark(stub, str(uuid.uuid4()), "2025-03-02")
    assert res.removed is False


@pytest.mark.parametrize(("zone", "instants", "dates"), [
    # New York spring forward (2025-03-09 has 23 hours) and fall back (2025-11-02, 25 hours).
    (NY, ["2025-03-08T23:30:00-05:00", "2025-03-09T23:30:00-04:00", "2025-03-10T00:30:00-04:00"],
     ["2025-03-08", "2025-03-09", "2025-03-10"]),
    (NY, ["2025-11-01T23:59:00-04:00", "2025-11-02T01:30:00-05:00", "2025-11-02T23:30:00-05:00",
          "2025-11-03T00:01:00-05:00"],
     ["2025-11-01", "2025-11-02", "2025-11-02", "2025-11-03"]),
    # London: 2025-03-30 (23 hours) and 2025-10-26 (25 hours).
    ("Europe/London", ["2025-03-29T23:30:00+00:00", "2025-03-30T23:30:00+01:00",
                       "2025-03-31T00:30:00+01:00"],
     ["2025-03-29", "2025-03-30", "2025-03-31"]),
    ("Europe/London", ["2025-10-25T23:30:00+01:00", "2025-10-26T01:30:00+00:00",
                       "2025-10-26T23:30:00+00:00", "2025-10-27T00:30:00+00:00"],
     ["2025-10-25", "2025-10-26", "2025-10-26", "2025-10-27"]),
])
async def test_dst_days_are_one_day_each(stub: RunsServiceStub, db: asyncpg.Connection,
                                         user_id: str, zone: str, instants: list[str],
                                         dates: list[str]) -> None:
    got = []
    for i, raw in enumerate(instants):
        res = await mark_at(stub, user_id, dt.datetime.fromisoformat(raw),
                            tz=zone if i == 0 else None)
        got.append(res.local_date)
    assert got == dates
    distinct = sorted(set(dates))
    assert await stored_runs(db, user_id) == [(distinct[0], distinct[-1], len(distinct), True)]


async def test_zone_change_is_stored_and_each_checkin_keeps_its_zone(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    await mark(stub, user_id, "2025-05-01", tz=NY)
    await mark(stub, user_id, "2025-05-02", tz="Asia/Kathmandu")
    await mark(stub, user_id, "2025-05-03", tz=None)
    assert await db.fetchval("SELECT time_zone FROM users WHERE user_id = $1",
                             user_id) == "Asia/Kathmandu"
    rows = await db.fetch("SELECT checkin_date, time_zone FROM daily_checkins "
                          "WHERE user_id = $1 ORDER BY 1", user_id)
    assert [r["time_zone"] for r in rows] == [NY, "Asia/Kathmandu", "Asia/Kathmandu"]
    assert await stored_runs(db, user_id) == [("2025-05-01", "2025-05-03", 3, True)]


async def test_backfill_is_all_or_nothing(stub: RunsServiceStub, db: asyncpg.Connection,
                                          user_id: str) -> None:
    await mark(stub, user_id, "2025-04-01")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await backfill(stub, user_id, ["2025-04-02", "2024-12-31", "2099-01-01"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(err.value)
    assert info is not None and info.reason == "DATE_BEFORE_LAUNCH"
    assert bad is not None
    assert [(v.field, v.reason) for v in bad.field_violations] == [
        ("local_dates[1]", "DATE_BEFORE_LAUNCH"), ("local_dates[2]", "DATE_IN_FUTURE")]
    assert await checkins(db, user_id) == ["2025-04-01"]


async def test_backfill_counts_new_days_and_ignores_duplicates(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    await mark(stub, user_id, "2025-04-02")
    res = await backfill(stub, user_id, ["2025-04-01", "2025-04-02", "2025-04-01", "2025-04-05"])
    assert res.added_days == 2
    assert [span(r) for r in res.runs] == [("2025-04-05", "2025-04-05", 1, True),
                                           ("2025-04-01", "2025-04-02", 2, False)]


async def test_request_id_is_recorded_on_events(stub: RunsServiceStub, db: asyncpg.Connection,
                                                user_id: str) -> None:
    req = pb.MarkDayRequest(user_id=user_id, local_date="2025-04-01", time_zone=NY)
    await stub.MarkDay(req, metadata=(("x-request-id", "req-123"),))
    row = await db.fetchrow("SELECT kind, cause, request_id, after FROM run_events "
                            "WHERE user_id = $1", user_id)
    assert (row["kind"], row["cause"], row["request_id"]) == ("run_created", "mark", "req-123")
    assert json.loads(row["after"])["start_date"] == "2025-04-01"


async def test_timestamps_come_from_the_injected_clock(stub: RunsServiceStub, clock: object,
                                                       user_id: str) -> None:
    res = await mark(stub, user_id, "2025-04-01")
    assert res.run.create_time.ToDatetime(tzinfo=dt.UTC) == clock.now()  # type: ignore[attr-defined]
    assert res.run.last_extend_time == res.run.create_time


async def test_travel_west_keeps_the_streak_and_the_day_removable(
        stub: RunsServiceStub, clock: object, user_id: str) -> None:
    # 2026-11-21 12:00 UTC: already 2026-11-22 in Kiritimati (+14), still 11-21 in Pago Pago.
    await mark(stub, user_id, "2026-11-21", tz="Pacific/Kiritimati")
    await mark(stub, user_id, "2026-11-22", tz=None)   # the stored zone: Kiritimati
    res = await mark(stub, user_id, "2026-11-20", tz="Pacific/Pago_Pago")
    assert span(res.run) == ("2026-11-20", "2026-11-22", 3, True)
    active = await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=user_id))
    assert active.current and active.current_streak_days == 3
    res2 = await unmark(stub, user_id, "2026-11-22")   # "tomorrow" in Pago Pago
    assert res2.change == C.RUN_CHANGE_SHRUNK


async def _events(db: asyncpg.Connection, user_id: str) -> list[tuple[str, str, object, object]]:
    rows = await db.fetch("SELECT kind, cause, before, after FROM run_events WHERE user_id = $1 "
                          "ORDER BY event_id", user_id)
    return [(r["kind"], r["cause"], json.loads(r["before"]) if r["before"] else None,
             json.loads(r["after"]) if r["after"] else None) for r in rows]


def _dates(run: object) -> tuple[str, str, int]:
    assert isinstance(run, dict)
    return (run["start_date"], run["end_date"], run["day_count"])


async def test_backfill_of_separate_dates_records_only_the_runs_it_created(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    """The net change (migration 0008): N separate dates into an empty user are N
    run_created, not N run_created and N-1 run_deactivated of the intermediate states."""
    days = ["2025-03-01", "2025-03-03", "2025-03-05", "2025-03-07"]
    await backfill(stub, user_id, days, tz=NY)
    events = await _events(db, user_id)
    assert [(k, c) for k, c, _, _ in events] == [("run_created", "backfill")] * 4
    assert [_dates(after) for _, _, before, after in events if before is None] == [
        (d, d, 1) for d in days]
    assert [a["active"] for _, _, _, a in events] == [False, False, False, True]  # type: ignore[index]


async def test_backfill_bridging_two_runs_records_one_merge(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    await backfill(stub, user_id, ["2025-03-01", "2025-03-02"], tz=NY)
    await mark(stub, user_id, "2025-03-06")
    first = len(await _events(db, user_id))
    res = await backfill(stub, user_id, ["2025-03-03", "2025-03-04", "2025-03-05"])
    assert res.added_days == 3
    events = (await _events(db, user_id))[first:]
    assert len(events) == 1
    kind, cause, before, after = events[0]
    assert (kind, cause) == ("run_merged", "backfill")
    assert isinstance(before, list)
    assert [_dates(b) for b in before] == [("2025-03-01", "2025-03-02", 2),
                                           ("2025-03-06", "2025-03-06", 1)]
    assert _dates(after) == ("2025-03-01", "2025-03-06", 6)
    assert after["active"] is True  # type: ignore[index]


async def test_backfill_net_events_extend_deactivate_and_skip_unchanged_runs(
        stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    """Extending the active run and starting a later one: run_deactivated (the old active
    run as it was, and as it is now) and run_extended, then run_created; a run in the range
    the backfill did not touch, and dates already marked, record nothing."""
    await backfill(stub, user_id, ["2025-03-01", "2025-03-05", "2025-03-06"], tz=NY)
    first = len(await _events(db, user_id))
    res = await backfill(stub, user_id, ["2025-03-01", "2025-03-07", "2025-03-10"])
    assert res.added_days == 2
    events = (await _events(db, user_id))[first:]
    assert [e[0] for e in events] == ["run_deactivated", "run_extended", "run_created"]
    _, _, before, after = events[0]
    assert _dates(before) == ("2025-03-05", "2025-03-06", 2) and before["active"] is True  # type: ignore[index]
    assert _dates(after) == ("2025-03-05", "2025-03-07", 3) and after["active"] is False  # type: ignore[index]
    assert _dates(events[1][2]) == ("2025-03-05", "2025-03-06", 2)
    assert _dates(events[1][3]) == ("2025-03-05", "2025-03-07", 3)
    assert _dates(events[2][3]) == ("2025-03-10", "2025-03-10", 1)
    again = await backfill(stub, user_id, ["2025-03-07", "2025-03-10"])
    assert again.added_days == 0
    assert len(await _events(db, user_id)) == first + 3
