"""Contract tests across API versions over the golden user set (golden_users.json).

Each golden user is replayed against the real server (writes through v1, or v2 where
v1 has no such call: mark_time and backfill), with the injected clock at the user's
`now`. Then every read path must give the file's expected answers:

- v1 on legacy (ff.potato.runs_v2 disabled: the kill switch),
- v1 on projection (the users on the flag's allow list),
- v1 in shadow (shadow 100 %: served legacy, compared with the projection afterwards,
  and every comparison must match),
- v2 GetActiveRun and ListRuns, mapped to the same shape;
- v2 TotalsService.GetTotals on the computed and on the stored path, against the
  expected v1 GetStats figures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato.runs.v2 import admin_service_pb2 as admin
from potato.runs.v2 import runs_service_pb2 as v2
from potato.runs.v2 import runs_service_pb2_grpc as v2_grpc
from potato.runs.v2 import totals_service_pb2 as totals
from potato.runs.v2 import totals_service_pb2_grpc as totals_grpc
from potato_runs.clock import FixedClock
from support import rich_status

GOLDEN = json.loads((Path(__file__).parent / "golden_users.json").read_text())
USERS: list[dict[str, Any]] = GOLDEN["users"]
FLAG = "ff.potato.runs_v2"
TOTALS_FLAG = "ff.potato.totals_v2"
READ_SOURCE = "potato-read-source"
TABLES = ("shadow_mismatches", "run_events", "run_totals", "user_totals", "runs",
          "daily_checkins", "users")


def test_the_golden_set_covers_what_the_contract_promises() -> None:
    names = {u["name"] for u in USERS}
    assert len(USERS) >= 25
    for case in range(1, 10):
        assert any(n.startswith(f"case_{case}_") for n in names), case
    for needed in ("split_middle", "shrink_end", "shrink_start", "case_4_month_boundary",
                   "leap_day_today", "dst_spring_forward", "dst_fall_back",
                   "zone_change_mid_run", "travels_west"):
        assert needed in names
    assert len({u["user_id"] for u in USERS}) == len(USERS)


def _run(r: Any) -> dict[str, Any]:
    return {"start_date": r.start_date, "end_date": r.end_date, "day_count": r.day_count,
            "active": r.active}


async def _replay(user: dict[str, Any], v1_stub: v1_grpc.RunsServiceStub,
                  v2_stub: v2_grpc.RunsServiceStub) -> None:
    uid = user["user_id"]
    for step in user["steps"]:
        op = step["op"]
        if op == "mark":
            req = v1.MarkDayRequest(user_id=uid, date=step["date"])
            if step.get("time_zone"):
                req.time_zone = step["time_zone"]
            res = await v1_stub.MarkDay(req, timeout=10)
            assert res.run.start_date <= step["date"] <= res.run.end_date
        elif op == "mark_at":
            req2 = v2.MarkDayRequest(user_id=uid, time_zone=step["time_zone"])
            req2.mark_time.FromDatetime(dt.datetime.fromisoformat(step["time"]))
            await v2_stub.MarkDay(req2, timeout=10)
        elif op == "backfill":
            req3 = v2.BackfillDaysRequest(user_id=uid, local_dates=step["dates"])
            if step.get("time_zone"):
                req3.time_zone = step["time_zone"]
            await v2_stub.BackfillDays(req3, timeout=10)
        elif op == "unmark":
            await v1_stub.UnmarkDay(v1.UnmarkDayRequest(user_id=uid, date=step["date"]), timeout=10)
        elif op == "mark_rejected":
            req = v1.MarkDayRequest(user_id=uid, date=step["date"])
            if step.get("time_zone"):
                req.time_zone = step["time_zone"]
            with pytest.raises(grpc.RpcError) as err:
                await v1_stub.MarkDay(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info, bad, _ = rich_status(err.value)
            assert info is not None and info.reason == step["reason"]
            assert bad is not None and bad.field_violations
        else:
            raise AssertionError(f"unknown op {op}")


async def _v1_answers(stub: v1_grpc.RunsServiceStub, uid: str) -> tuple[dict[str, Any], set[str]]:
    sources: set[str] = set()

    async def call(method: Callable[..., Any], req: Any) -> Any:
        c = method(req, timeout=10)
        md = await c.initial_metadata()
        sources.update(v for k, v in md if k == READ_SOURCE)
        assert sum(1 for k, _ in md if k == READ_SOURCE) == 1, md
        return await c

    cur = await call(stub.GetCurrentRun, v1.GetCurrentRunRequest(user_id=uid))
    lst = await call(stub.ListRuns, v1.ListRunsRequest(user_id=uid, limit=100))
    st = await call(stub.GetStats, v1.GetStatsRequest(user_id=uid))
    return {
        "current_run": _run(cur.run) if cur.HasField("run") else None,
        "current_streak_days": cur.current_streak_days,
        "runs": [_run(r) for r in lst.runs],
        "stats": {"total_days": st.total_days, "longest_run_days": st.longest_run_days,
                  "current_streak_days": st.current_streak_days, "run_count": st.run_count},
    }, sources


def _expected_v1(user: dict[str, Any]) -> dict[str, Any]:
    e = user["expect"]
    return {k: e[k] for k in ("current_run", "current_streak_days", "runs", "stats")}


async def _v2_answers(stub: v2_grpc.RunsServiceStub, uid: str) -> dict[str, Any]:
    active = await stub.GetActiveRun(v2.GetActiveRunRequest(user_id=uid), timeout=10)
    listed = await stub.ListRuns(v2.ListRunsRequest(user_id=uid, page_size=500), timeout=10)
    return {"current_run": _run(active.run) if active.HasField("run") else None,
            "current_streak_days": active.current_streak_days,
            "runs": [_run(r) for r in listed.runs], "time_zone": active.time_zone or None}


async def _set_flag(admin_stub: Any, reason: str, **fields: Any) -> None:
    flag = admin.Flag(name=FLAG, **fields)
    mask = field_mask_pb2.FieldMask(paths=["enabled", "rollout_percent", "shadow_percent",
                                           "allow_user_ids", "deny_user_ids"])
    await admin_stub.UpdateFlag(admin.UpdateFlagRequest(flag=flag, update_mask=mask, reason=reason),
                                timeout=10)


async def _until(check: Callable[[], Awaitable[bool]], what: str, bound: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + bound
    while not await check():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def golden(channel: grpc.aio.Channel, db: asyncpg.Connection, clock: FixedClock,
                 admin_stub: Any) -> AsyncIterator[None]:
    """Replays every golden user once (from scratch) and puts the flag back afterwards."""
    ids = [u["user_id"] for u in USERS]
    for table in TABLES:
        await db.execute(f"DELETE FROM {table} WHERE user_id = ANY($1::uuid[])", ids)
    v1_stub, v2_stub = v1_grpc.RunsServiceStub(channel), v2_grpc.RunsServiceStub(channel)
    await _set_flag(admin_stub, "contract test: legacy while replaying")
    for user in USERS:
        clock.set(dt.datetime.fromisoformat(user["now"]))
        await _replay(user, v1_stub, v2_stub)
    try:
        yield
    finally:
        await _set_flag(admin_stub, "contract test: back to disabled")


async def _assert_v1_everywhere(channel: grpc.aio.Channel, clock: FixedClock,
                                source: str) -> None:
    stub = v1_grpc.RunsServiceStub(channel)
    for user in USERS:
        clock.set(dt.datetime.fromisoformat(user["now"]))
        got, sources = await _v1_answers(stub, user["user_id"])
        assert sources == {source}, (user["name"], sources)
        assert got == _expected_v1(user), user["name"]


async def test_v1_on_legacy_gives_the_expected_answers(golden: None, channel: grpc.aio.Channel,
                                                       clock: FixedClock) -> None:
    await _assert_v1_everywhere(channel, clock, "legacy")


async def test_v1_on_projection_gives_the_expected_answers(
        golden: None, channel: grpc.aio.Channel, clock: FixedClock, admin_stub: Any) -> None:
    await _set_flag(admin_stub, "contract test: golden users on projection", enabled=True,
                    allow_user_ids=[u["user_id"] for u in USERS])
    await _assert_v1_everywhere(channel, clock, "projection")


async def test_v1_in_shadow_gives_the_expected_answers_and_every_comparison_matches(
        golden: None, channel: grpc.aio.Channel, clock: FixedClock, admin_stub: Any,
        db: asyncpg.Connection) -> None:
    async def matches() -> int:
        return int(await db.fetchval(
            "SELECT coalesce(sum(count), 0) FROM shadow_comparisons "
            "WHERE flag = $1 AND result = 'match'", FLAG))

    before = await matches()
    await _set_flag(admin_stub, "contract test: shadow everyone", enabled=True, shadow_percent=100.0)
    await _assert_v1_everywhere(channel, clock, "legacy")
    calls = 3 * len(USERS)

    async def compared() -> bool:
        return await matches() - before >= calls

    await _until(compared, f"{calls} shadow matches to be counted")
    ids = [u["user_id"] for u in USERS]
    stored = await db.fetch("SELECT user_id, method, legacy, projection FROM shadow_mismatches "
                            "WHERE user_id = ANY($1::uuid[])", ids)
    assert stored == []


async def test_v2_gives_the_same_answers(golden: None, channel: grpc.aio.Channel,
                                         clock: FixedClock) -> None:
    stub = v2_grpc.RunsServiceStub(channel)
    for user in USERS:
        clock.set(dt.datetime.fromisoformat(user["now"]))
        got = await _v2_answers(stub, user["user_id"])
        e = user["expect"]
        assert got == {"current_run": e["current_run"],
                       "current_streak_days": e["current_streak_days"],
                       "runs": e["runs"], "time_zone": e["time_zone"]}, user["name"]


async def _set_totals_flag(admin_stub: Any, reason: str, **fields: Any) -> None:
    mask = field_mask_pb2.FieldMask(paths=["enabled", "rollout_percent", "shadow_percent",
                                           "allow_user_ids", "deny_user_ids"])
    await admin_stub.UpdateFlag(admin.UpdateFlagRequest(
        flag=admin.Flag(name=TOTALS_FLAG, **fields), update_mask=mask, reason=reason), timeout=10)


@pytest.mark.parametrize(("fields", "source"), [
    ({}, "computed"),
    ({"enabled": True, "allow_user_ids": [u["user_id"] for u in USERS]}, "stored"),
])
async def test_totals_agree_with_the_golden_stats_on_both_paths(
        golden: None, channel: grpc.aio.Channel, clock: FixedClock, admin_stub: Any,
        fields: dict[str, Any], source: str) -> None:
    stub = totals_grpc.TotalsServiceStub(channel)
    await _set_totals_flag(admin_stub, f"contract test: golden users on {source}", **fields)
    try:
        for user in USERS:
            clock.set(dt.datetime.fromisoformat(user["now"]))
            call = stub.GetTotals(totals.GetTotalsRequest(user_id=user["user_id"]), timeout=10)
            md = await call.initial_metadata()
            res = await call
            assert [v for k, v in md if k == READ_SOURCE] == [source], user["name"]
            got = {"total_days": res.totals.total_days,
                   "longest_run_days": res.totals.longest_run_days,
                   "current_streak_days": res.totals.current_streak_days,
                   "run_count": res.totals.run_count}
            assert got == user["expect"]["stats"], (user["name"], source)
    finally:
        await _set_totals_flag(admin_stub, "contract test: totals flag back to disabled")
