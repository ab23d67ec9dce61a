"""TotalsService over the real server: the definitions on both paths, pagination,
validation, and ff.potato.totals_v2 (off, shadow and on give the same answers, each with
its `potato-read-source`; shadow counts matches, and a mismatch when the stored totals
are damaged, stored with both answers).

Each test sets ff.potato.totals_v2 through AdminService.UpdateFlag (the real FlagStore)
and leaves it disabled again.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from potato.runs.v2 import runs_service_pb2 as rpb
from potato.runs.v2 import totals_service_pb2 as pb
from potato.runs.v2 import totals_service_pb2_grpc
from potato.runs.v2.admin_service_pb2_grpc import AdminServiceStub
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato.runs.v2.totals_service_pb2_grpc import TotalsServiceStub
from potato_runs.app import Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.deadline import Deadline
from potato_runs.domain.errors import DomainError
from potato_runs.domain.flags import TOTALS_V2, FlagState, StaticFlags, Variant
from potato_runs.domain.rules import encode_month_token, encode_page_token
from potato_runs.domain.totals_answers import MonthRange, TotalsSource
from potato_runs.storage.embedded import free_port
from potato_runs.storage.pool import create_pool
from potato_runs.storage.totals_reads import TotalsReads
from support import DEFAULT_NOW, OneConnectionPool, ServerThread, rich_status

from .helpers import NY, backfill, mark, unmark
from .totals_support import assert_stored_totals_right, forget, monthly, read, route
from .v1_support import until

JAN_FEB = [f"2025-01-{d:02d}" for d in range(25, 32)] + ["2025-02-01", "2025-02-02",
                                                          "2025-02-03"]
APRIL = ["2025-04-10", "2025-04-11", "2025-04-20"]


@pytest.fixture
def totals_stub(channel: grpc.aio.Channel) -> TotalsServiceStub:
    return TotalsServiceStub(channel)


@pytest.fixture
async def flag_off(admin_stub: AdminServiceStub) -> AsyncIterator[None]:
    """ff.potato.totals_v2 disabled before and after the test."""
    await route(admin_stub, enabled=False)
    yield
    await route(admin_stub, enabled=False)


@pytest.fixture
async def user(db: asyncpg.Connection, flag_off: None) -> AsyncIterator[str]:
    uid = str(uuid.uuid4())
    yield uid
    await forget(db, uid)


PATHS = ["computed", "stored"]


async def serve_from(admin: AdminServiceStub, path: str, *users: str) -> None:
    """computed: the flag is off; stored: the users are in its allow list."""
    if path == "computed":
        await route(admin, enabled=False)
    else:
        await route(admin, enabled=True, allow=users)


async def totals(stub: TotalsServiceStub, user: str, path: str) -> pb.Totals:
    res, source = await read(stub.GetTotals, pb.GetTotalsRequest(user_id=user))
    assert source == path
    return res.totals


async def months(stub: TotalsServiceStub, user: str, path: str,
                 **kw: Any) -> pb.ListMonthlyTotalsResponse:
    res, source = await read(stub.ListMonthlyTotals,
                             pb.ListMonthlyTotalsRequest(user_id=user, **kw))
    assert source == path
    return res


def figures(t: pb.Totals) -> tuple[int, int, int, int]:
    return (t.total_days, t.run_count, t.longest_run_days, t.current_streak_days)


# -- definitions ------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_a_run_across_a_month_end_counts_in_both_months(
        stub: RunsServiceStub, totals_stub: TotalsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, user: str, path: str) -> None:
    await backfill(stub, user, JAN_FEB + APRIL, tz=NY)
    await assert_stored_totals_right(db, user)
    await serve_from(admin_stub, path, user)
    t = await totals(totals_stub, user, path)
    assert figures(t) == (13, 3, 10, 0)   # Jan 25..Feb 3, Apr 10..11, Apr 20; not current
    assert t.HasField("update_time")
    res = await months(totals_stub, user, path)
    # January 7 and February 3 (the run's days inside each month); March is not listed.
    assert monthly(res) == [("2025-04", 3, 2), ("2025-02", 3, 3), ("2025-01", 7, 7)]
    assert res.next_page_token == ""
    assert all(m.HasField("update_time") for m in res.monthly_totals)


@pytest.mark.parametrize("path", PATHS)
async def test_a_user_without_check_ins_has_zero_totals_and_no_months(
        totals_stub: TotalsServiceStub, admin_stub: AdminServiceStub, user: str,
        path: str) -> None:
    await serve_from(admin_stub, path, user)
    t = await totals(totals_stub, user, path)
    assert figures(t) == (0, 0, 0, 0) and not t.HasField("update_time")
    res = await months(totals_stub, user, path)
    assert list(res.monthly_totals) == [] and res.next_page_token == ""


@pytest.mark.parametrize("path", PATHS)
async def test_current_streak_follows_get_active_run(
        stub: RunsServiceStub, totals_stub: TotalsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, clock: FixedClock, user: str, path: str) -> None:
    # DEFAULT_NOW is 2026-11-21 07:00 in New York: a run ending the 20th is current.
    await backfill(stub, user, ["2026-11-01", "2026-11-18", "2026-11-19", "2026-11-20"], tz=NY)
    await assert_stored_totals_right(db, user)
    await serve_from(admin_stub, path, user)
    active = await stub.GetActiveRun(rpb.GetActiveRunRequest(user_id=user))
    t = await totals(totals_stub, user, path)
    assert figures(t) == (4, 2, 3, 3) and active.current_streak_days == 3
    clock.set(DEFAULT_NOW + dt.timedelta(days=2))   # the 23rd: the streak is broken
    active = await stub.GetActiveRun(rpb.GetActiveRunRequest(user_id=user))
    t = await totals(totals_stub, user, path)
    assert figures(t) == (4, 2, 3, 0) and active.current_streak_days == 0


@pytest.mark.parametrize("path", PATHS)
async def test_a_merge_and_a_split_change_the_months_they_touch(
        stub: RunsServiceStub, totals_stub: TotalsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, user: str, path: str) -> None:
    # Dec 30 .. Jan 1 and Jan 3 .. Feb 2: marking Jan 2 merges them across a year end.
    days = ["2025-12-30", "2025-12-31", "2026-01-01"] + [
        (dt.date(2026, 1, 3) + dt.timedelta(days=i)).isoformat() for i in range(31)]
    await backfill(stub, user, days, tz=NY)
    await assert_stored_totals_right(db, user)
    await serve_from(admin_stub, path, user)
    assert monthly(await months(totals_stub, user, path)) == [
        ("2026-02", 2, 2), ("2026-01", 30, 29), ("2025-12", 2, 2)]
    await mark(stub, user, "2026-01-02")
    await assert_stored_totals_right(db, user)
    assert monthly(await months(totals_stub, user, path)) == [
        ("2026-02", 2, 2), ("2026-01", 31, 31), ("2025-12", 2, 2)]
    assert figures(await totals(totals_stub, user, path))[:3] == (35, 1, 35)
    await unmark(stub, user, "2026-01-15")
    await assert_stored_totals_right(db, user)
    assert monthly(await months(totals_stub, user, path)) == [
        ("2026-02", 2, 2), ("2026-01", 30, 16), ("2025-12", 2, 2)]
    # Dec 30 .. Jan 14 (16 days) and Jan 16 .. Feb 2 (18 days).
    assert figures(await totals(totals_stub, user, path))[:3] == (34, 2, 18)


@pytest.mark.parametrize("path", PATHS)
async def test_bounds_are_inclusive_and_pages_visit_every_month_once(
        stub: RunsServiceStub, totals_stub: TotalsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, user: str, path: str) -> None:
    # 2025-01 .. 2026-10 except 2025-07: 21 months, the 1st and the 2nd of each.
    firsts = [dt.date(2025 + i // 12, i % 12 + 1, 1) for i in range(22) if i != 6]
    await backfill(stub, user, [d.isoformat() for d in firsts] +
                   [(d + dt.timedelta(days=1)).isoformat() for d in firsts], tz=NY)
    await assert_stored_totals_right(db, user)
    await serve_from(admin_stub, path, user)
    every = [f"{d.year:04d}-{d.month:02d}" for d in reversed(firsts)]
    res = await months(totals_stub, user, path)   # page_size 0: 24
    assert [m.month for m in res.monthly_totals] == every and res.next_page_token == ""
    assert {(m.total_days, m.streak_days) for m in res.monthly_totals} == {(2, 2)}

    res = await months(totals_stub, user, path, start_month="2025-06", end_month="2025-09")
    assert [m.month for m in res.monthly_totals] == ["2025-09", "2025-08", "2025-06"]
    res = await months(totals_stub, user, path, start_month="2025-08", end_month="2025-08")
    assert [m.month for m in res.monthly_totals] == ["2025-08"]
    res = await months(totals_stub, user, path, start_month="2026-09")
    assert [m.month for m in res.monthly_totals] == ["2026-10", "2026-09"]
    res = await months(totals_stub, user, path, end_month="2025-02")
    assert [m.month for m in res.monthly_totals] == ["2025-02", "2025-01"]

    for size, bounds in [(1, {}), (4, {}), (7, {}), (5, {"start_month": "2025-03",
                                                         "end_month": "2026-08"}),
                         (3, {"start_month": "2025-08"}), (21, {}), (20, {})]:
        seen: list[str] = []
        token, pages = "", 0
        while True:
            res = await months(totals_stub, user, path, page_size=size, page_token=token,
                               **bounds)
            pages += 1
            assert 0 < len(res.monthly_totals) <= size
            seen += [m.month for m in res.monthly_totals]
            token = res.next_page_token
            if not token:
                break
        expected = [m for m in every if bounds.get("start_month", "0000") <= m <=
                    bounds.get("end_month", "9999")]
        assert seen == expected, (size, bounds)
        # A full final page carries no token: exactly ceil(n / size) pages.
        assert pages == -(-len(expected) // size), (size, bounds)


async def test_page_size_is_capped_at_120(
        stub: RunsServiceStub, totals_stub: TotalsServiceStub, admin_stub: AdminServiceStub,
        db: asyncpg.Connection, clock: FixedClock, user: str) -> None:
    now = dt.datetime(2035, 6, 1, 12, tzinfo=dt.UTC)
    clock.set(now)
    firsts = [dt.date(2025 + i // 12, i % 12 + 1, 1).isoformat() for i in range(123)]
    await backfill(stub, user, firsts, tz=NY)
    await assert_stored_totals_right(db, user, now)
    for path in PATHS:
        await serve_from(admin_stub, path, user)
        res = await months(totals_stub, user, path, page_size=1000)
        assert len(res.monthly_totals) == 120 and res.next_page_token
        assert res.monthly_totals[0].month == "2035-03"
        rest = await months(totals_stub, user, path, page_size=1000,
                            page_token=res.next_page_token)
        assert [m.month for m in rest.monthly_totals] == ["2025-03", "2025-02", "2025-01"]
        assert len((await months(totals_stub, user, path)).monthly_totals) == 24


# -- validation -------------------------------------------------------------------------

U = "6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99"
OTHER = "0a1b2c3d-0000-4000-8000-000000000001"
U_ID = uuid.UUID(U)


def _list(**kw: Any) -> pb.ListMonthlyTotalsRequest:
    return pb.ListMonthlyTotalsRequest(**{"user_id": U, **kw})


BAD = [
    ("GetTotals", pb.GetTotalsRequest(user_id=""), "INVALID_USER_ID", "user_id"),
    ("GetTotals", pb.GetTotalsRequest(user_id="nope"), "INVALID_USER_ID", "user_id"),
    ("GetTotals", pb.GetTotalsRequest(user_id="{" + U + "}"), "INVALID_USER_ID", "user_id"),
    ("GetTotals", pb.GetTotalsRequest(user_id="urn:uuid:" + U), "INVALID_USER_ID", "user_id"),
    ("GetTotals", pb.GetTotalsRequest(user_id=U.replace("-", "")), "INVALID_USER_ID",
     "user_id"),
    ("ListMonthlyTotals", _list(user_id="q" * 9000), "INVALID_USER_ID", "user_id"),
    ("ListMonthlyTotals", _list(page_size=-1), "INVALID_PAGE_SIZE", "page_size"),
    ("ListMonthlyTotals", _list(start_month="2025-13"), "INVALID_DATE", "start_month"),
    ("ListMonthlyTotals", _list(start_month="2025-00"), "INVALID_DATE", "start_month"),
    ("ListMonthlyTotals", _list(end_month="2025-1"), "INVALID_DATE", "end_month"),
    ("ListMonthlyTotals", _list(end_month="2025-01-01"), "INVALID_DATE", "end_month"),
    ("ListMonthlyTotals", _list(end_month="2025-01\n"), "INVALID_DATE", "end_month"),
    ("ListMonthlyTotals", _list(end_month="٢٠٢٥-٠١"), "INVALID_DATE", "end_month"),
    ("ListMonthlyTotals", _list(end_month="0000-01"), "INVALID_DATE", "end_month"),
    ("ListMonthlyTotals", _list(start_month="2025-07", end_month="2025-06"), "INVALID_RANGE",
     "start_month"),
    ("ListMonthlyTotals", _list(page_token="garbage"), "INVALID_PAGE_TOKEN", "page_token"),
    ("ListMonthlyTotals", _list(page_token="W" * 70000), "INVALID_PAGE_TOKEN", "page_token"),
    # A token of another user, of other bounds, or of ListRuns.
    ("ListMonthlyTotals", _list(page_token=encode_month_token(uuid.UUID(OTHER), None, None,
                                                              202503)),
     "INVALID_PAGE_TOKEN", "page_token"),
    ("ListMonthlyTotals", _list(page_token=encode_month_token(U_ID, 202501, None, 202503)),
     "INVALID_PAGE_TOKEN", "page_token"),
    ("ListMonthlyTotals", _list(start_month="2025-02", page_token=encode_month_token(
        U_ID, 202501, None, 202503)), "INVALID_PAGE_TOKEN", "page_token"),
    ("ListMonthlyTotals", _list(page_token=encode_page_token(U_ID, dt.date(2025, 3, 1))),
     "INVALID_PAGE_TOKEN", "page_token"),
]


@pytest.mark.parametrize(("method", "request_", "reason", "field"), BAD)
async def test_bad_requests_are_invalid_argument_with_details(
        totals_stub: TotalsServiceStub, method: str, request_: Any, reason: str,
        field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(totals_stub, method)(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(err.value)
    assert info is not None and info.reason == reason and info.domain == "runs.potato.app"
    assert bad is not None and next(v.field for v in bad.field_violations) == field
    assert bad.field_violations[0].reason == reason


async def test_every_violation_is_reported_at_once(totals_stub: TotalsServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await totals_stub.ListMonthlyTotals(pb.ListMonthlyTotalsRequest(
            user_id="x", page_size=-5, start_month="2025-99", end_month="May"), timeout=10)
    info, bad, _ = rich_status(err.value)
    assert bad is not None and info is not None
    assert [(v.field, v.reason) for v in bad.field_violations] == [
        ("user_id", "INVALID_USER_ID"), ("page_size", "INVALID_PAGE_SIZE"),
        ("start_month", "INVALID_DATE"), ("end_month", "INVALID_DATE")]
    assert info.metadata["field_violations"] == "4"


async def test_a_valid_token_of_this_user_and_bounds_is_accepted(
        totals_stub: TotalsServiceStub, flag_off: None) -> None:
    token = encode_month_token(U_ID, 202501, 202512, 202503)
    res, source = await read(totals_stub.ListMonthlyTotals, _list(
        start_month="2025-01", end_month="2025-12", page_token=token))
    assert source == "computed" and list(res.monthly_totals) == []


@settings(max_examples=80)
@given(user=st.one_of(st.text(max_size=40), st.uuids().map(str)),
       size=st.integers(min_value=-2**31, max_value=2**31 - 1),
       token=st.one_of(st.just(""), st.text(max_size=60),
                       st.builds(lambda u, s, e, m: encode_month_token(u, s, e, m),
                                 st.uuids(), st.sampled_from([None, 202501, 999912]),
                                 st.sampled_from([None, 202612, 101]),
                                 st.integers(min_value=-5, max_value=10**7))),
       start=st.one_of(st.just(""), st.text(max_size=9),
                       st.from_regex(r"\A[0-9]{4}-[0-9]{2}\Z")),
       end=st.one_of(st.just(""), st.text(max_size=9),
                     st.from_regex(r"\A[0-9]{4}-[0-9]{2}\Z")))
def test_fuzzed_requests_never_fail_internally(server: ServerThread, user: str, size: int,
                                               token: str, start: str, end: str) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = totals_service_pb2_grpc.TotalsServiceStub(channel)
        for call in (lambda: stub.GetTotals(pb.GetTotalsRequest(user_id=user), timeout=10),
                     lambda: stub.ListMonthlyTotals(pb.ListMonthlyTotalsRequest(
                         user_id=user, page_size=size, page_token=token, start_month=start,
                         end_month=end), timeout=10)):
            try:
                call()
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()  # type: ignore[attr-defined]


# -- the flag ---------------------------------------------------------------------------


async def shadow_count(db: asyncpg.Connection, method: str, result: str,
                       at: dt.datetime = DEFAULT_NOW) -> int:
    """This flag's count for the hour of `at` (the server clock's when it is counted)."""
    hour = at.replace(minute=0, second=0, microsecond=0)
    n = await db.fetchval("SELECT count FROM shadow_comparisons WHERE flag = $1 AND "
                          "method = $2 AND result = $3 AND hour = $4",
                          TOTALS_V2, method, result, hour)
    return int(n or 0)


async def both_reads(stub: TotalsServiceStub, user: str) -> tuple[Any, set[str]]:
    t, s1 = await read(stub.GetTotals, pb.GetTotalsRequest(user_id=user))
    m, s2 = await read(stub.ListMonthlyTotals,
                       pb.ListMonthlyTotalsRequest(user_id=user, page_size=2))
    return (figures(t.totals), monthly(m), bool(m.next_page_token)), {s1, s2}


async def test_off_shadow_and_on_give_the_same_answers_with_their_source(
        server: ServerThread, stub: RunsServiceStub, totals_stub: TotalsServiceStub,
        admin_stub: AdminServiceStub, db: asyncpg.Connection, user: str) -> None:
    assert server.app is not None
    store = server.app.flags
    await backfill(stub, user, JAN_FEB + APRIL + ["2026-11-20", "2026-11-21"], tz=NY)
    await assert_stored_totals_right(db, user)
    before = {m: await shadow_count(db, m, "match") for m in ("GetTotals", "ListMonthlyTotals")}

    await route(admin_stub, enabled=False)
    assert store.variant(TOTALS_V2, uuid.UUID(user)) is Variant.LEGACY
    off, sources = await both_reads(totals_stub, user)
    assert sources == {"computed"}
    assert off == ((15, 4, 10, 2), [("2026-11", 2, 2), ("2025-04", 3, 2)], True)

    await route(admin_stub, enabled=True, shadow=100.0)
    assert store.variant(TOTALS_V2, uuid.UUID(user)) is Variant.SHADOW
    shadow, sources = await both_reads(totals_stub, user)
    assert sources == {"computed"} and shadow == off

    async def matched() -> bool:
        return all([await shadow_count(db, m, "match") == before[m] + 1 for m in before])

    await until(matched, "a match for each read in shadow_comparisons")

    await route(admin_stub, enabled=True, allow=(user,))
    assert store.variant(TOTALS_V2, uuid.UUID(user)) is Variant.V2
    on, sources = await both_reads(totals_stub, user)
    assert sources == {"stored"} and on == off

    await route(admin_stub, enabled=True, deny=(user,), shadow=100.0)   # deny wins
    _, sources = await both_reads(totals_stub, user)
    assert sources == {"computed"}
    # The v2 RunsService and the v1 flag are untouched by this flag.
    assert store.variant("ff.potato.runs_v2", uuid.UUID(user)) is Variant.LEGACY


async def test_damaged_stored_totals_are_a_mismatch_stored_with_both_answers(
        server: ServerThread, stub: RunsServiceStub, totals_stub: TotalsServiceStub,
        admin_stub: AdminServiceStub, db: asyncpg.Connection, clock: FixedClock,
        user: str) -> None:
    uid = uuid.UUID(user)
    await backfill(stub, user, [*JAN_FEB, "2026-11-19", "2026-11-20"], tz=NY)
    await assert_stored_totals_right(db, user)
    await db.execute("UPDATE run_totals SET total_days = 6, streak_days = 6 "
                     "WHERE user_id = $1 AND yyyymm = 202501", uid)
    await db.execute("UPDATE user_totals SET total_days = total_days + 1 WHERE user_id = $1",
                     uid)
    later = DEFAULT_NOW + dt.timedelta(days=2)
    before = await shadow_count(db, "ListMonthlyTotals", "mismatch", later)
    await route(admin_stub, enabled=True, shadow=100.0)
    # Hold the comparison back (the stored read waits for this lock), move the clock by
    # two days, then let it run: it must judge the answer at the request's now.
    tx = db.transaction()
    await tx.start()
    await db.execute("LOCK TABLE user_totals, run_totals IN ACCESS EXCLUSIVE MODE")
    try:
        t, source = await read(totals_stub.GetTotals, pb.GetTotalsRequest(user_id=user))
        assert source == "computed" and figures(t.totals) == (12, 2, 10, 2)
        m, source = await read(totals_stub.ListMonthlyTotals,
                               pb.ListMonthlyTotalsRequest(user_id=user))
        assert source == "computed"
        assert monthly(m) == [("2026-11", 2, 2), ("2025-02", 3, 3), ("2025-01", 7, 7)]
        clock.set(later)
    finally:
        await tx.rollback()

    async def stored() -> bool:
        return await db.fetchval("SELECT count(*) FROM shadow_mismatches WHERE user_id = $1",
                                 uid) == 2

    await until(stored, "two mismatches in shadow_mismatches")
    rows = {r["method"]: r for r in await db.fetch(
        "SELECT flag, method, legacy, projection FROM shadow_mismatches WHERE user_id = $1",
        uid)}
    assert {r["flag"] for r in rows.values()} == {TOTALS_V2}
    served, compared = (json.loads(rows["GetTotals"][k]) for k in ("legacy", "projection"))
    # Both at the request's now (the 21st): a current streak of 2, not the 23rd's 0.
    assert served == {"total_days": 12, "run_count": 2, "longest_run_days": 10,
                      "current_streak_days": 2}
    assert compared == {**served, "total_days": 13}
    served, compared = (json.loads(rows["ListMonthlyTotals"][k])
                        for k in ("legacy", "projection"))
    assert served["months"][2] == {"month": "2025-01", "total_days": 7, "streak_days": 7}
    assert compared["months"][2] == {"month": "2025-01", "total_days": 6, "streak_days": 6}
    assert served["months"][:2] == compared["months"][:2]

    async def counted() -> bool:
        return await shadow_count(db, "ListMonthlyTotals", "mismatch", later) == before + 1

    await until(counted, "the mismatch counted in shadow_comparisons")


# -- the paths read only their own tables -----------------------------------------------


@pytest.mark.parametrize(("readable", "allowed", "denied"), [
    ("users, daily_checkins", TotalsSource.COMPUTED, TotalsSource.STORED),
    ("users, user_totals, run_totals, runs", TotalsSource.STORED, TotalsSource.COMPUTED),
])
async def test_each_path_reads_only_its_own_tables(
        stub: RunsServiceStub, db: asyncpg.Connection, user: str, readable: str,
        allowed: TotalsSource, denied: TotalsSource) -> None:
    await backfill(stub, user, JAN_FEB, tz=NY)
    await assert_stored_totals_right(db, user)
    uid = uuid.UUID(user)
    reads = TotalsReads(OneConnectionPool(db))  # type: ignore[arg-type]
    everything = MonthRange(None, None)
    tx = db.transaction()
    await tx.start()
    try:
        await db.execute("CREATE ROLE potato_totals_probe NOLOGIN")
        await db.execute(f"GRANT SELECT ON {readable} TO potato_totals_probe")
        # PUBLIC has no USAGE on the schema nor EXECUTE on the service's functions
        # (storage/roles.py): the probe needs its own.
        await db.execute("GRANT USAGE ON SCHEMA public TO potato_totals_probe")
        await db.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO potato_totals_probe")
        await db.execute("SET LOCAL ROLE potato_totals_probe")
        life = await reads.read(Deadline.after(5), lambda r: r.lifetime(allowed, uid))
        rows = await reads.read(Deadline.after(5), lambda r: r.months(allowed, uid, everything,
                                                                       10))
        assert (life.total_days, life.run_count, life.longest_run_days) == (10, 1, 10)
        assert [(m.month, m.total_days) for m in rows] == [("2025-02", 3), ("2025-01", 7)]
        for denied_read in (lambda r: r.lifetime(denied, uid),
                            lambda r: r.months(denied, uid, everything, 10)):
            with pytest.raises(DomainError):
                async with db.transaction():   # a savepoint: the refusal aborts only it
                    await reads.read(Deadline.after(5), denied_read)
    finally:
        await tx.rollback()


# -- serving plumbing -------------------------------------------------------------------


async def test_totals_service_is_in_health_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    res = await health.Check(health_pb2.HealthCheckRequest(
        service="potato.runs.v2.TotalsService"))
    assert res.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: list[str] = []
    async for r in stub.ServerReflectionInfo(requests()):
        names = [s.name for s in r.list_services_response.service]
    assert "potato.runs.v2.TotalsService" in names


async def test_unreachable_database_gives_unavailable_on_both_paths() -> None:
    dsn = f"postgresql://potato@127.0.0.1:{free_port()}/nothing"
    pool = await create_pool(dsn, min_size=0, max_size=2)
    app = await build_app(Settings(port=0, dsn=dsn, health_probe_interval=0,
                                   invariant_check_interval=0),
                          clock=FixedClock(DEFAULT_NOW), database=Database(dsn=dsn, pool=pool))
    try:
        assert app.totals is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = TotalsServiceStub(ch)
            for evaluator in (StaticFlags(FlagState(TOTALS_V2, shadow_basis_points=10_000,
                                                    enabled=True)),
                              StaticFlags(FlagState(TOTALS_V2, enabled=True,
                                                    allow_user_ids=frozenset([U_ID])))):
                app.totals.flags = evaluator
                for call in (stub.GetTotals(pb.GetTotalsRequest(user_id=U)),
                             stub.ListMonthlyTotals(pb.ListMonthlyTotalsRequest(user_id=U))):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                    info, _, _ = rich_status(err.value)
                    assert info is not None and info.reason == "DATABASE_UNAVAILABLE"
            assert await app.probe.probe_once() is False
            res = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(
                service="potato.runs.v2.TotalsService"))
            assert res.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.stop(0)
