"""The legacy v1 RunsService: writes through the v2 write path, reads from the path the
flag picks (with `potato-read-source`), and the two read paths agree on real histories."""

from __future__ import annotations

import datetime as dt
import random
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

from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1 import runs_service_pb2_grpc as v1_grpc
from potato.runs.v2 import runs_service_pb2 as v2
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.app import Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.deadline import Deadline
from potato_runs.domain.errors import DomainError
from potato_runs.domain.reads import ReadSource
from potato_runs.storage.embedded import free_port
from potato_runs.storage.pool import create_pool
from potato_runs.storage.read_paths import ReadPaths
from support import OneConnectionPool, ServerThread, rich_status

from .helpers import NY, backfill, checkins, stored_runs
from .v1_support import (
    LEGACY,
    SHADOW_ALL,
    answers,
    flags,
    forget,
    projection_for,
    read,
    run_tuple,
    using_flags,
)

U = "6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99"


@pytest.fixture
async def v1_stub(channel: grpc.aio.Channel) -> v1_grpc.RunsServiceStub:
    return v1_grpc.RunsServiceStub(channel)


async def v1_mark(stub: v1_grpc.RunsServiceStub, user: str, day: str,
                  tz: str | None = NY) -> v1.MarkDayResponse:
    req = v1.MarkDayRequest(user_id=user, date=day)
    if tz is not None:
        req.time_zone = tz
    return await stub.MarkDay(req, timeout=10)


# -- writes -------------------------------------------------------------------------


async def test_v1_writes_land_in_facts_and_projection(
        v1_stub: v1_grpc.RunsServiceStub, stub: RunsServiceStub, db: asyncpg.Connection,
        user_id: str) -> None:
    for day in ("2025-06-01", "2025-06-03"):
        await v1_mark(v1_stub, user_id, day)
    merged = await v1_mark(v1_stub, user_id, "2025-06-02", tz=None)
    assert run_tuple(merged.run) == ("2025-06-01", "2025-06-03", 3, True)
    again = await v1_mark(v1_stub, user_id, "2025-06-02", tz=None)   # idempotent
    assert run_tuple(again.run) == ("2025-06-01", "2025-06-03", 3, True)
    removed = await v1_stub.UnmarkDay(v1.UnmarkDayRequest(user_id=user_id, date="2025-06-02"))
    assert removed.removed is True
    not_marked = await v1_stub.UnmarkDay(v1.UnmarkDayRequest(user_id=user_id, date="2025-06-02"))
    assert not_marked.removed is False

    assert await checkins(db, user_id) == ["2025-06-01", "2025-06-03"]
    assert await stored_runs(db, user_id) == [("2025-06-01", "2025-06-01", 1, False),
                                              ("2025-06-03", "2025-06-03", 1, True)]
    listed = await stub.ListRuns(v2.ListRunsRequest(user_id=user_id))   # v2 sees them
    assert [(r.start_date, r.end_date) for r in listed.runs] == [
        ("2025-06-03", "2025-06-03"), ("2025-06-01", "2025-06-01")]
    events = await db.fetch("SELECT kind FROM run_events WHERE user_id = $1 ORDER BY event_id",
                            uuid.UUID(user_id))
    assert [e["kind"] for e in events] == ["run_created", "run_deactivated", "run_created",
                                           "run_merged", "run_split"]


V1_ERRORS = [
    ("MarkDay", v1.MarkDayRequest(user_id="nope", date="2025-06-01", time_zone=NY),
     "INVALID_USER_ID", "user_id"),
    ("MarkDay", v1.MarkDayRequest(user_id=U, date="2025-02-29", time_zone=NY),
     "INVALID_DATE", "date"),
    ("MarkDay", v1.MarkDayRequest(user_id=U, date="", time_zone=NY), "MISSING_FIELD", "date"),
    ("MarkDay", v1.MarkDayRequest(user_id=U, date="2024-12-31", time_zone=NY),
     "DATE_BEFORE_LAUNCH", "date"),
    ("MarkDay", v1.MarkDayRequest(user_id=U, date="2099-01-01", time_zone=NY),
     "DATE_IN_FUTURE", "date"),
    ("MarkDay", v1.MarkDayRequest(user_id=U, date="2025-06-01", time_zone="CET"),
     "INVALID_TIME_ZONE", "time_zone"),
    ("UnmarkDay", v1.UnmarkDayRequest(user_id=U, date="yesterday"), "INVALID_DATE", "date"),
    ("UnmarkDay", v1.UnmarkDayRequest(user_id=U, date="2024-12-31"),
     "DATE_BEFORE_LAUNCH", "date"),
    ("UnmarkDay", v1.UnmarkDayRequest(user_id="{" + U + "}", date="2025-06-01"),
     "INVALID_USER_ID", "user_id"),
    ("GetCurrentRun", v1.GetCurrentRunRequest(user_id="123"), "INVALID_USER_ID", "user_id"),
    ("ListRuns", v1.ListRunsRequest(user_id=U, limit=-1), "INVALID_PAGE_SIZE", "limit"),
    ("ListRuns", v1.ListRunsRequest(user_id=""), "INVALID_USER_ID", "user_id"),
    ("GetStats", v1.GetStatsRequest(user_id=U.upper() + "0"), "INVALID_USER_ID", "user_id"),
]


@pytest.mark.parametrize(("method", "request_", "reason", "field"), V1_ERRORS,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(V1_ERRORS)])
async def test_v1_bad_input_gets_rich_invalid_argument(
        v1_stub: v1_grpc.RunsServiceStub, method: str, request_: Any, reason: str,
        field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(v1_stub, method)(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(err.value)
    assert info is not None and info.reason == reason and info.domain == "runs.potato.app"
    assert bad is not None and bad.field_violations[0].field == field
    assert bad.field_violations[0].reason == reason


async def test_v1_new_user_without_zone_gets_time_zone_required(
        v1_stub: v1_grpc.RunsServiceStub, user_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await v1_mark(v1_stub, user_id, "2025-06-01", tz=None)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(err.value)
    assert info is not None and info.reason == "TIME_ZONE_REQUIRED"
    assert bad is not None and bad.field_violations[0].field == "time_zone"


async def test_v1_future_date_in_stored_zone_names_date(
        v1_stub: v1_grpc.RunsServiceStub, user_id: str) -> None:
    """Checked by the database under the lock (the zone is stored, not given)."""
    await v1_mark(v1_stub, user_id, "2025-06-01")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await v1_mark(v1_stub, user_id, "2099-06-01", tz=None)
    info, bad, status = rich_status(err.value)
    assert info is not None and info.reason == "DATE_IN_FUTURE"
    assert info.metadata["time_zone"] == NY
    assert bad is not None and bad.field_violations[0].field == "date"
    assert "local_date" not in status.message


@settings(max_examples=40)
@given(user=st.one_of(st.text(max_size=40), st.uuids().map(str)),
       day=st.text(max_size=12), zone=st.one_of(st.none(), st.text(max_size=80)),
       limit=st.integers(min_value=-(2**31), max_value=2**31 - 1),
       method=st.sampled_from(["MarkDay", "UnmarkDay", "GetCurrentRun", "ListRuns",
                               "GetStats"]))
def test_fuzzed_v1_requests_never_fail_internally(server: ServerThread, user: str, day: str,
                                                  zone: str | None, limit: int,
                                                  method: str) -> None:
    req: Any
    if method == "MarkDay":
        req = v1.MarkDayRequest(user_id=user, date=day)
        if zone is not None:
            req.time_zone = zone
    elif method == "UnmarkDay":
        req = v1.UnmarkDayRequest(user_id=user, date=day)
    elif method == "ListRuns":
        req = v1.ListRunsRequest(user_id=user, limit=limit)
    elif method == "GetStats":
        req = v1.GetStatsRequest(user_id=user)
    else:
        req = v1.GetCurrentRunRequest(user_id=user)
    with grpc.insecure_channel(server.target) as channel:
        stub = v1_grpc.RunsServiceStub(channel)
        try:
            getattr(stub, method)(req, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()  # type: ignore[attr-defined]


async def test_bytes_that_are_not_a_v1_message_are_invalid_argument(
        channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/potato.runs.v1.RunsService/GetStats",
                               request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"\x0a\x03\xff\xfe\xfd", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, _, _ = rich_status(err.value)
    assert info is not None and info.reason == "MALFORMED_REQUEST"


# -- reads: source and limits ----------------------------------------------------------


@pytest.mark.parametrize(("which", "source"), [
    ("disabled", "legacy"), ("denied", "legacy"), ("shadow", "legacy"), ("allowed", "projection"),
])
async def test_every_v1_read_names_the_path_the_flag_picked(
        server: ServerThread, v1_stub: v1_grpc.RunsServiceStub, user_id: str, which: str,
        source: str) -> None:
    await v1_mark(v1_stub, user_id, "2025-06-01")
    evaluator = {"disabled": LEGACY, "denied": flags(shadow=10_000, deny=(user_id,)),
                 "shadow": SHADOW_ALL, "allowed": projection_for(user_id)}[which]
    with using_flags(server, evaluator):
        got, sources = await answers(v1_stub, user_id)
    assert sources == {source}
    assert got["current"] == ("2025-06-01", "2025-06-01", 1, True)


async def test_list_runs_limit_default_and_cap(server: ServerThread,
                                               v1_stub: v1_grpc.RunsServiceStub,
                                               stub: RunsServiceStub, user_id: str) -> None:
    days = [dt.date(2025, 1, 1) + dt.timedelta(days=2 * i) for i in range(130)]
    await backfill(stub, user_id, [d.isoformat() for d in days], tz=NY)
    for evaluator in (LEGACY, projection_for(user_id)):
        with using_flags(server, evaluator):
            default, _ = await read(v1_stub.ListRuns, v1.ListRunsRequest(user_id=user_id))
            capped, _ = await read(v1_stub.ListRuns,
                                   v1.ListRunsRequest(user_id=user_id, limit=2**31 - 1))
            three, _ = await read(v1_stub.ListRuns, v1.ListRunsRequest(user_id=user_id, limit=3))
        assert len(default.runs) == 20 and len(capped.runs) == 100
        assert [r.start_date for r in three.runs] == [d.isoformat() for d in days[:-4:-1]]
        assert [r.active for r in capped.runs] == [True] + [False] * 99


async def test_unknown_user_reads_are_empty_on_both_paths(
        server: ServerThread, v1_stub: v1_grpc.RunsServiceStub, user_id: str) -> None:
    for evaluator, source in ((LEGACY, "legacy"), (projection_for(user_id), "projection")):
        with using_flags(server, evaluator):
            got, sources = await answers(v1_stub, user_id)
        assert sources == {source}
        assert got == {"current": None, "current_streak_days": 0, "runs": [],
                       "stats": (0, 0, 0, 0)}


# -- legacy == projection ------------------------------------------------------------


async def both_paths(server: ServerThread, stub: v1_grpc.RunsServiceStub,
                     user: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with using_flags(server, LEGACY):
        legacy, s1 = await answers(stub, user)
    with using_flags(server, projection_for(user)):
        projection, s2 = await answers(stub, user)
    assert (s1, s2) == ({"legacy"}, {"projection"})
    return legacy, projection


async def test_split_merge_and_month_end_agree_and_are_right(
        server: ServerThread, v1_stub: v1_grpc.RunsServiceStub, clock: FixedClock,
        user_id: str) -> None:
    clock.set(dt.datetime(2025, 2, 3, 15, tzinfo=dt.UTC))   # 10:00 in New York
    for day in ("2025-01-28", "2025-01-29", "2025-01-31", "2025-02-01", "2025-02-02"):
        await v1_mark(v1_stub, user_id, day)
    await v1_mark(v1_stub, user_id, "2025-01-30")                  # merge over month end
    await v1_stub.UnmarkDay(v1.UnmarkDayRequest(user_id=user_id, date="2025-01-29"))  # split
    legacy, projection = await both_paths(server, v1_stub, user_id)
    assert legacy == projection
    assert legacy == {
        "current": ("2025-01-30", "2025-02-02", 4, True),
        "current_streak_days": 4,   # ends yesterday in New York
        "runs": [("2025-01-30", "2025-02-02", 4, True), ("2025-01-28", "2025-01-28", 1, False)],
        "stats": (5, 4, 4, 2),
    }
    clock.set(dt.datetime(2025, 2, 5, 15, tzinfo=dt.UTC))   # two days later: streak over
    legacy, projection = await both_paths(server, v1_stub, user_id)
    assert legacy == projection
    assert legacy["current_streak_days"] == 0 and legacy["stats"] == (5, 4, 0, 2)


async def test_travel_west_keeps_the_streak_on_both_paths(
        server: ServerThread, v1_stub: v1_grpc.RunsServiceStub, clock: FixedClock,
        user_id: str) -> None:
    # 2025-06-10 20:00 UTC: already the 11th in Tokyo, still the 10th in Los Angeles.
    clock.set(dt.datetime(2025, 6, 10, 20, tzinfo=dt.UTC))
    for day in ("2025-06-09", "2025-06-10", "2025-06-11"):
        await v1_mark(v1_stub, user_id, day, tz="Asia/Tokyo")
    await v1_mark(v1_stub, user_id, "2025-06-10", tz="America/Los_Angeles")   # flies west
    legacy, projection = await both_paths(server, v1_stub, user_id)
    assert legacy == projection
    assert legacy["current"] == ("2025-06-09", "2025-06-11", 3, True)
    assert legacy["current_streak_days"] == 3   # ends after "today": still current


@pytest.mark.parametrize("seed", range(6))
async def test_random_histories_agree(server: ServerThread, v1_stub: v1_grpc.RunsServiceStub,
                                      stub: RunsServiceStub, clock: FixedClock,
                                      seed: int) -> None:
    rng = random.Random(seed)
    user = str(uuid.uuid4())
    start = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(300))
    days = sorted({start + dt.timedelta(days=rng.randrange(60)) for _ in range(rng.randrange(1, 45))})
    await backfill(stub, user, [d.isoformat() for d in days], tz=rng.choice([NY, "Europe/Paris"]))
    for d in rng.sample(days, k=len(days) // 4):
        await v1_stub.UnmarkDay(v1.UnmarkDayRequest(user_id=user, date=d.isoformat()))
    for d in rng.sample(days, k=len(days) // 8):
        await v1_mark(v1_stub, user, d.isoformat(), tz=None)
    clock.set(dt.datetime.combine(days[-1] + dt.timedelta(days=rng.randrange(3)),
                                  dt.time(12), tzinfo=dt.UTC))
    legacy, projection = await both_paths(server, v1_stub, user)
    assert legacy == projection
    for limit in (1, 5):
        with using_flags(server, LEGACY):
            a, _ = await read(v1_stub.ListRuns, v1.ListRunsRequest(user_id=user, limit=limit))
        with using_flags(server, projection_for(user)):
            b, _ = await read(v1_stub.ListRuns, v1.ListRunsRequest(user_id=user, limit=limit))
        assert [run_tuple(r) for r in a.runs] == [run_tuple(r) for r in b.runs]


# -- legacy never reads runs; the projection reads nothing else ----------------------


@pytest.fixture
async def damaged_user(v1_stub: v1_grpc.RunsServiceStub, db: asyncpg.Connection,
                       user_id: str) -> AsyncIterator[str]:
    for day in ("2025-06-01", "2025-06-02", "2025-06-04", "2025-06-05", "2025-06-06"):
        await v1_mark(v1_stub, user_id, day)
    try:
        yield user_id
    finally:
        await forget(db, user_id)


async def test_damaged_runs_change_projection_answers_but_not_legacy(
        server: ServerThread, v1_stub: v1_grpc.RunsServiceStub, stub: RunsServiceStub,
        db: asyncpg.Connection, damaged_user: str) -> None:
    user = damaged_user
    before_legacy, before_projection = await both_paths(server, v1_stub, user)
    assert before_legacy == before_projection
    # Damage the projection directly: shorten the active run, drop the older one.
    await db.execute("UPDATE runs SET end_date = end_date - 1, day_count = day_count - 1 "
                     "WHERE user_id = $1 AND active", uuid.UUID(user))
    await db.execute("DELETE FROM runs WHERE user_id = $1 AND NOT active", uuid.UUID(user))
    after_legacy, after_projection = await both_paths(server, v1_stub, user)
    assert after_legacy == before_legacy
    assert after_projection == {
        "current": ("2025-06-04", "2025-06-05", 2, True),
        "current_streak_days": 0,
        "runs": [("2025-06-04", "2025-06-05", 2, True)],
        "stats": (2, 2, 0, 1),
    }
    # v2 always reads the projection, whatever the flag says.
    with using_flags(server, LEGACY):
        active = await stub.GetActiveRun(v2.GetActiveRunRequest(user_id=user))
    assert active.run.end_date == "2025-06-05"
    # And deleting every run leaves legacy untouched too.
    await db.execute("DELETE FROM runs WHERE user_id = $1", uuid.UUID(user))
    with using_flags(server, LEGACY):
        assert (await answers(v1_stub, user))[0] == before_legacy


@pytest.mark.parametrize(("readable", "allowed", "denied"), [
    ("users, daily_checkins", ReadSource.LEGACY, ReadSource.PROJECTION),
    ("users, runs", ReadSource.PROJECTION, ReadSource.LEGACY),
])
async def test_each_path_reads_only_its_own_tables(
        v1_stub: v1_grpc.RunsServiceStub, db: asyncpg.Connection, damaged_user: str,
        readable: str, allowed: ReadSource, denied: ReadSource) -> None:
    """A role that may read only one path's tables: that path answers, the other is
    refused by PostgreSQL (so the queries provably touch nothing else)."""
    user = uuid.UUID(damaged_user)
    paths = ReadPaths(OneConnectionPool(db))  # type: ignore[arg-type]
    tx = db.transaction()
    await tx.start()
    try:
        await db.execute("CREATE ROLE potato_read_probe NOLOGIN")
        await db.execute(f"GRANT SELECT ON {readable} TO potato_read_probe")
        # PUBLIC has no USAGE on the schema (storage/roles.py): the probe needs its own.
        await db.execute("GRANT USAGE ON SCHEMA public TO potato_read_probe")
        await db.execute("SET LOCAL ROLE potato_read_probe")
        current = await paths.current(allowed, user, Deadline.after(5))
        runs = await paths.runs(allowed, user, 10, Deadline.after(5))
        stats = await paths.stats(allowed, user, Deadline.after(5))
        assert current.time_zone == NY and current.run is not None
        assert [(r.start_date.isoformat(), r.end_date.isoformat()) for r in runs] == [
            ("2025-06-04", "2025-06-06"), ("2025-06-01", "2025-06-02")]
        assert (stats.total_days, stats.longest_run_days, stats.run_count) == (5, 3, 2)
        for read_denied in (lambda: paths.current(denied, user, Deadline.after(5)),
                            lambda: paths.runs(denied, user, 10, Deadline.after(5)),
                            lambda: paths.stats(denied, user, Deadline.after(5))):
            with pytest.raises(DomainError):
                async with db.transaction():   # a savepoint: the refusal aborts only it
                    await read_denied()
    finally:
        await tx.rollback()


# -- serving plumbing ------------------------------------------------------------------


async def test_v1_is_in_health_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    res = await health.Check(health_pb2.HealthCheckRequest(service="potato.runs.v1.RunsService"))
    assert res.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: list[str] = []
    async for r in stub.ServerReflectionInfo(requests()):
        names = [s.name for s in r.list_services_response.service]
    assert "potato.runs.v1.RunsService" in names and "potato.runs.v2.RunsService" in names


async def test_unreachable_database_gives_unavailable_on_v1() -> None:
    dsn = f"postgresql://potato@127.0.0.1:{free_port()}/nothing"
    pool = await create_pool(dsn, min_size=0, max_size=2)
    app = await build_app(Settings(port=0, dsn=dsn, health_probe_interval=0,
                                   invariant_check_interval=0),
                          clock=FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
                          database=Database(dsn=dsn, pool=pool))
    try:
        assert app.v1 is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = v1_grpc.RunsServiceStub(ch)
            for evaluator in (LEGACY, SHADOW_ALL, projection_for(U)):
                app.v1.flags = evaluator
                for call in (stub.GetCurrentRun(v1.GetCurrentRunRequest(user_id=U)),
                             stub.ListRuns(v1.ListRunsRequest(user_id=U)),
                             stub.GetStats(v1.GetStatsRequest(user_id=U)),
                             stub.MarkDay(v1.MarkDayRequest(user_id=U, date="2025-06-01",
                                                            time_zone="UTC"))):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                    info, _, _ = rich_status(err.value)
                    assert info is not None and info.reason == "DATABASE_UNAVAILABLE"
            assert await app.probe.probe_once() is False
            health = health_pb2_grpc.HealthStub(ch)
            res = await health.Check(health_pb2.HealthCheckRequest(
                service="potato.runs.v1.RunsService"))
            assert res.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.stop(0)
