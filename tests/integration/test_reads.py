"""GetActiveRun and ListRuns."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.clock import FixedClock
from support import rich_status

from .helpers import NY, backfill, mark


@pytest.mark.parametrize(("days_ago", "current"), [(0, True), (1, True), (2, False)])
async def test_active_run_is_current_when_it_ends_today_or_yesterday(
        stub: RunsServiceStub, clock: FixedClock, user_id: str, days_ago: int,
        current: bool) -> None:
    # 03:00 UTC is still the previous evening in New York.
    clock.set(dt.datetime(2026, 3, 10, 3, 0, tzinfo=dt.UTC))
    today = dt.date(2026, 3, 9)
    end = today - dt.timedelta(days=days_ago)
    await backfill(stub, user_id, [(end - dt.timedelta(days=i)).isoformat() for i in range(3)],
                   tz=NY)
    res = await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=user_id))
    assert res.run.end_date == end.isoformat() and res.run.active
    assert res.current is current
    assert res.current_streak_days == (3 if current else 0)
    assert res.time_zone == NY


async def test_active_run_unset_for_unknown_user(stub: RunsServiceStub, user_id: str) -> None:
    res = await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=user_id))
    assert not res.HasField("run")
    assert (res.current, res.current_streak_days) == (False, 0)


async def test_list_runs_pages_newest_first(stub: RunsServiceStub, user_id: str) -> None:
    days = [dt.date(2025, 1, 1) + dt.timedelta(days=2 * i) for i in range(7)]
    await backfill(stub, user_id, [d.isoformat() for d in days], tz=NY)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        res = await stub.ListRuns(pb.ListRunsRequest(user_id=user_id, page_size=3,
                                                     page_token=token))
        pages += 1
        seen += [r.start_date for r in res.runs]
        token = res.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [d.isoformat() for d in reversed(days)]
    assert [r.active for r in (await stub.ListRuns(
        pb.ListRunsRequest(user_id=user_id))).runs] == [True] + [False] * 6


async def test_list_runs_page_size_default_and_cap(stub: RunsServiceStub, user_id: str) -> None:
    days = [dt.date(2025, 1, 1) + dt.timedelta(days=2 * i) for i in range(260)]
    for chunk in range(0, 260, 130):
        await backfill(stub, user_id, [d.isoformat() for d in days[chunk:chunk + 130]], tz=NY)
    default = await stub.ListRuns(pb.ListRunsRequest(user_id=user_id, page_size=0))
    assert len(default.runs) == 50 and default.next_page_token
    capped = await stub.ListRuns(pb.ListRunsRequest(user_id=user_id, page_size=100000))
    assert len(capped.runs) == 260 and capped.next_page_token == ""


@pytest.mark.parametrize(("size", "token", "reason", "field"), [
    (-1, "", "INVALID_PAGE_SIZE", "page_size"),
    (10, "not-a-token", "INVALID_PAGE_TOKEN", "page_token"),
])
async def test_list_runs_rejects_bad_paging(stub: RunsServiceStub, user_id: str, size: int,
                                            token: str, reason: str, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListRuns(pb.ListRunsRequest(user_id=user_id, page_size=size, page_token=token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(err.value)
    assert info is not None and info.reason == reason
    assert bad is not None and bad.field_violations[0].field == field


async def test_page_token_of_another_user_is_rejected(stub: RunsServiceStub, user_id: str) -> None:
    import uuid
    other = str(uuid.uuid4())
    await backfill(stub, other, ["2025-01-01", "2025-01-03"], tz=NY)
    res = await stub.ListRuns(pb.ListRunsRequest(user_id=other, page_size=1))
    assert res.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListRuns(pb.ListRunsRequest(user_id=user_id, page_size=1,
                                               page_token=res.next_page_token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await mark(stub, user_id, "2025-01-01")
