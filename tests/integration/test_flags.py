"""Feature flags over the real server: the admin RPCs, the audit trail, the token,
and the in-memory store's refresh (NOTIFY, another replica, a dropped connection).

Each test works on a flag of its own (`ff.test.*`, inserted by SQL), so the seeded
ff.potato.* flags that other tests read are never touched.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.admin_service_pb2_grpc import AdminServiceStub
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.clock import SystemClock
from potato_runs.domain.flags import FlagState, Variant
from potato_runs.service.flags import (
    LISTEN_APPLICATION_NAME,
    MAX_ACTOR_CHARS,
    MAX_FLAG_USER_IDS,
    FlagService,
    FlagStore,
    FlagUpdate,
)
from potato_runs.storage.flags_repo import FlagsRepository
from potato_runs.storage.pool import create_pool
from support import ADMIN_TOKEN, ServerThread, app_dsn, rich_status

VISIBLE_WITHIN = 1.0
"""Seconds within which every replica must see a flag change (issue 6, section 3)."""
A, B, C = (str(uuid.UUID(int=i)) for i in (1, 2, 3))


@pytest.fixture
async def flag(db: asyncpg.Connection) -> AsyncIterator[str]:
    """A flag of this test only (disabled, 0 %), removed afterwards."""
    name = f"ff.test.f{uuid.uuid4().hex[:12]}"
    await db.execute("INSERT INTO feature_flags (name, updated_by, update_reason) "
                     "VALUES ($1, 'test', 'created by the test')", name)
    yield name
    await db.execute("DELETE FROM feature_flag_changes WHERE name = $1", name)
    await db.execute("DELETE FROM feature_flags WHERE name = $1", name)


def store_of(server: ServerThread) -> FlagStore:
    assert server.app is not None
    return server.app.flags


async def seen_within(store: FlagStore, name: str, cond: Callable[[FlagState], bool],
                      bound: float = VISIBLE_WITHIN) -> float | None:
    """Seconds until the store's snapshot of `name` satisfies `cond`; None if it did not
    within `bound` (a bounded poll: the change travels NOTIFY -> reload)."""
    start = time.monotonic()
    while True:
        state = store.flags.get(name)
        if state is not None and cond(state):
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            return None
        await asyncio.sleep(0.005)


async def until(cond: Callable[[], bool], bound: float = 30.0) -> None:
    """Polls `cond` every 10 ms until it holds or `bound` seconds pass."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.01)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def update(stub: AdminServiceStub, flag: apb.Flag, *paths: str, reason: str = "test",
                 metadata: tuple[tuple[str, str], ...] = ()) -> apb.Flag:
    res = await stub.UpdateFlag(apb.UpdateFlagRequest(flag=flag, update_mask=mask(*paths),
                                                      reason=reason),
                                timeout=10, metadata=metadata)
    return res.flag


async def changes(db: asyncpg.Connection, name: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT changed_by, reason, before::text AS before, "
                          "after::text AS after, changed_at FROM feature_flag_changes "
                          "WHERE name = $1 ORDER BY change_id", name)


# --------------------------------------------------------------------------- RPCs
async def test_get_and_list(admin_stub: AdminServiceStub, flag: str) -> None:
    got = (await admin_stub.GetFlag(apb.GetFlagRequest(name=flag), timeout=10)).flag
    assert (got.name, got.enabled, got.rollout_percent, got.shadow_percent) == (flag, False, 0, 0)
    assert got.update_reason == "created by the test" and got.update_time.seconds > 0
    listed = (await admin_stub.ListFlags(apb.ListFlagsRequest(), timeout=10)).flags
    names = [f.name for f in listed]
    assert names == sorted(names)
    assert {"ff.potato.runs_v2", "ff.potato.totals_v2", flag} <= set(names)


async def test_update_sets_only_the_masked_fields_and_audits(
        admin_stub: AdminServiceStub, server: ServerThread, db: asyncpg.Connection,
        flag: str) -> None:
    before_rev = await db.fetchval("SELECT revision FROM feature_flags WHERE name = $1", flag)
    out = await update(admin_stub, apb.Flag(name=flag, enabled=True, rollout_percent=12.34,
                                            shadow_percent=50, allow_user_ids=[A]),
                       "rollout_percent", reason="ramp to 12.34",
                       metadata=(("x-potato-actor", "alice@host" + "x" * 300),))
    # Only rollout_percent was in the mask: enabled, shadow and the lists are unchanged.
    assert (out.enabled, out.rollout_percent, out.shadow_percent) == (False, 12.34, 0)
    assert list(out.allow_user_ids) == [] and out.update_reason == "ramp to 12.34"
    row = await db.fetchrow("SELECT * FROM feature_flags WHERE name = $1", flag)
    assert row["rollout_basis_points"] == 1234 and row["revision"] == before_rev + 1
    alice = "alice@host" + "x" * (MAX_ACTOR_CHARS - len("alice@host"))   # bounded
    assert row["updated_by"].startswith(alice + " (ipv")   # then the peer
    # The server's own store was refreshed before the call returned (no waiting).
    assert store_of(server).flags[flag].rollout_basis_points == 1234

    # Empty mask: the fields set (non-default) in the message.
    out = await update(admin_stub, apb.Flag(name=flag, enabled=True, deny_user_ids=[B]))
    assert out.enabled and list(out.deny_user_ids) == [B] and out.rollout_percent == 12.34
    # "*": every field, so unset ones go back to their defaults.
    out = await update(admin_stub, apb.Flag(name=flag, shadow_percent=100, allow_user_ids=[C]),
                       "*", reason="reset")
    assert (out.enabled, out.rollout_percent, out.shadow_percent) == (False, 0, 100)
    assert (list(out.allow_user_ids), list(out.deny_user_ids)) == ([C], [])

    audit = await changes(db, flag)
    assert [a["reason"] for a in audit] == ["ramp to 12.34", "test", "reset"]
    first = audit[0]
    assert first["changed_by"].startswith(alice + " (") and "127.0.0.1" in first["changed_by"]
    assert '"rollout_basis_points": 0' in first["before"]
    assert '"rollout_basis_points": 1234' in first["after"]
    assert audit[1]["changed_by"].startswith("admin-token (")   # no x-potato-actor
    assert f'"allow_user_ids": ["{C}"]' in audit[2]["after"]


async def test_rollback_disables_and_keeps_the_rest(
        admin_stub: AdminServiceStub, server: ServerThread, db: asyncpg.Connection,
        flag: str) -> None:
    await update(admin_stub, apb.Flag(name=flag, enabled=True, rollout_percent=100,
                                      allow_user_ids=[A]), "*")
    user = uuid.uuid4()
    assert store_of(server).variant(flag, user) is Variant.V2
    res = await admin_stub.RollbackFlag(apb.RollbackFlagRequest(name=flag, reason="p99 up"),
                                        timeout=10)
    f = res.flag
    assert (f.enabled, f.rollout_percent, list(f.allow_user_ids), f.update_reason) == \
        (False, 100, [A], "p99 up")
    assert store_of(server).variant(flag, user) is Variant.LEGACY   # at once, on this replica
    audit = await changes(db, flag)
    assert audit[-1]["reason"] == "p99 up"
    assert '"enabled": true' in audit[-1]["before"] and '"enabled": false' in audit[-1]["after"]


async def test_bad_updates_are_invalid_argument_and_write_nothing(
        admin_stub: AdminServiceStub, db: asyncpg.Connection, flag: str) -> None:
    cases: list[tuple[apb.UpdateFlagRequest, set[str]]] = [
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, rollout_percent=100.5),
                               update_mask=mask("rollout_percent"), reason="r"),
         {"flag.rollout_percent"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, rollout_percent=12.345,
                                             shadow_percent=-1),
                               update_mask=mask("rollout_percent", "shadow_percent"), reason="r"),
         {"flag.rollout_percent", "flag.shadow_percent"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, shadow_percent=math.nan),
                               update_mask=mask("shadow_percent"), reason="r"),
         {"flag.shadow_percent"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, allow_user_ids=[A, "nope", A.upper()
                                                                        .replace("-", "")]),
                               update_mask=mask("allow_user_ids"), reason="r"),
         {"flag.allow_user_ids[1]", "flag.allow_user_ids[2]"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, allow_user_ids=[A], deny_user_ids=[A]),
                               update_mask=mask("allow_user_ids", "deny_user_ids"), reason="r"),
         {"flag.allow_user_ids"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, enabled=True),
                               update_mask=mask("enabled", "name"), reason="r"),
         {"update_mask.paths"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, enabled=True),
                               update_mask=mask("*", "enabled"), reason="r"),
         {"update_mask"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag), reason="r"), {"update_mask"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, enabled=True),
                               update_mask=mask("enabled")), {"reason"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, enabled=True),
                               update_mask=mask("enabled"), reason="   "), {"reason"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, enabled=True),
                               update_mask=mask("enabled"), reason="x" * 501), {"reason"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, enabled=True),
                               update_mask=mask("enabled"), reason="a\nb"), {"reason"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(enabled=True), update_mask=mask("enabled"),
                               reason="r"), {"flag.name"}),
        (apb.UpdateFlagRequest(flag=apb.Flag(name=flag, deny_user_ids=[
            str(uuid.UUID(int=i)) for i in range(MAX_FLAG_USER_IDS + 1)]),
            update_mask=mask("deny_user_ids"), reason="r"), {"flag.deny_user_ids"}),
    ]
    for request, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin_stub.UpdateFlag(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        info, bad, _ = rich_status(err.value)
        assert info is not None and info.domain == "runs.potato.app"
        assert bad is not None and {v.field for v in bad.field_violations} == fields, \
            (fields, bad)
    # A user already denied cannot be allowed by an update of allow_user_ids alone.
    await update(admin_stub, apb.Flag(name=flag, deny_user_ids=[B]), "deny_user_ids")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(admin_stub, apb.Flag(name=flag, allow_user_ids=[B]), "allow_user_ids")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and B in (err.value.details() or "")
    assert [a["reason"] for a in await changes(db, flag)] == ["test"]   # the one good update
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin_stub.RollbackFlag(apb.RollbackFlagRequest(name=flag), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_flags_are_not_found(admin_stub: AdminServiceStub) -> None:
    calls = [
        admin_stub.GetFlag(apb.GetFlagRequest(name="ff.no.such_flag"), timeout=10),
        admin_stub.UpdateFlag(apb.UpdateFlagRequest(
            flag=apb.Flag(name="ff.no.such_flag", enabled=True), update_mask=mask("enabled"),
            reason="r"), timeout=10),
        admin_stub.RollbackFlag(apb.RollbackFlagRequest(name="ff.no.such_flag", reason="r"),
                                timeout=10),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        info, _, _ = rich_status(err.value)
        assert info is not None and info.reason == "FLAG_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin_stub.GetFlag(apb.GetFlagRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_admin_calls_need_the_token_other_services_do_not(
        channel: grpc.aio.Channel, user_id: str) -> None:
    bare = AdminServiceStub(channel)
    wrong = [(), (("authorization", "Bearer wrong-token-0123456789"),),
             (("authorization", f"Basic {ADMIN_TOKEN}"),),
             (("authorization", ADMIN_TOKEN),),
             (("authorization", f"Bearer {ADMIN_TOKEN}x"),),
             (("authorization", f"Bearer {ADMIN_TOKEN}"), ("authorization", "Bearer other"))]
    for metadata in wrong:
        for call in (bare.ListFlags(apb.ListFlagsRequest(), timeout=10, metadata=metadata),
                     bare.CheckInvariants(apb.CheckInvariantsRequest(user_id=user_id),
                                          timeout=10, metadata=metadata)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            info, _, _ = rich_status(err.value)
            assert info is not None
            assert (info.reason, info.domain) == ("UNAUTHENTICATED", "runs.potato.app")
    # The scheme is case-insensitive (RFC 7235); the right token passes.
    ok = await bare.ListFlags(apb.ListFlagsRequest(), timeout=10,
                              metadata=(("authorization", f"bearer {ADMIN_TOKEN}"),))
    assert ok.flags
    # RunsService and health stay open.
    await RunsServiceStub(channel).GetActiveRun(pb.GetActiveRunRequest(user_id=user_id),
                                                timeout=10)
    res = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert res.status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------- refresh
async def test_a_direct_sql_change_is_seen_within_a_second(
        server: ServerThread, db: asyncpg.Connection, flag: str) -> None:
    store = store_of(server)
    assert await seen_within(store, flag, lambda f: not f.enabled, bound=10)
    await db.execute("UPDATE feature_flags SET enabled = true, rollout_basis_points = 4321 "
                     "WHERE name = $1", flag)
    took = await seen_within(store, flag, lambda f: f.enabled and f.rollout_basis_points == 4321)
    assert took is not None, "the server's store did not see the SQL change within 1 s"


@pytest.fixture
async def replica(pg_dsn: str) -> AsyncIterator[tuple[FlagStore, FlagService]]:
    """A second replica's flag store and use cases on the same database (no polling
    fallback within the test: reload_interval is long)."""
    dsn = app_dsn(pg_dsn)   # the least-privilege role, as every test server
    pool = await create_pool(dsn, min_size=1, max_size=2)
    store = FlagStore(dsn, pool, reload_interval=600)
    await store.start()
    try:
        yield store, FlagService(FlagsRepository(pool), store, SystemClock())
    finally:
        await store.stop()
        await pool.close()


async def test_a_change_through_another_replica_is_seen_within_a_second(
        server: ServerThread, admin_stub: AdminServiceStub, flag: str,
        replica: tuple[FlagStore, FlagService]) -> None:
    other_store, other = replica
    assert other_store.domain != store_of(server).domain
    user = uuid.uuid4()
    await other.update(flag, FlagUpdate(enabled=True, allow_user_ids=frozenset({user})),
                       actor="replica-b", reason="allow one user")
    assert other_store.variant(flag, user) is Variant.V2   # the writer, at once
    took = await seen_within(store_of(server), flag, lambda f: user in f.allow_user_ids)
    assert took is not None, "the server's store did not see the replica's change within 1 s"
    assert store_of(server).variant(flag, user) is Variant.V2
    # And the other way round: a rollback through the server reaches the replica.
    await admin_stub.RollbackFlag(apb.RollbackFlagRequest(name=flag, reason="back"), timeout=10)
    assert await seen_within(other_store, flag, lambda f: not f.enabled) is not None
    assert other_store.variant(flag, user) is Variant.LEGACY


async def test_the_store_reconnects_after_its_connection_is_killed(
        replica: tuple[FlagStore, FlagService], db: asyncpg.Connection, flag: str) -> None:
    store, _ = replica
    pid = store.listen_pid
    assert pid is not None
    assert await db.fetchval("SELECT application_name FROM pg_stat_activity WHERE pid = $1",
                             pid) == LISTEN_APPLICATION_NAME
    connects, reloads = store.connects, store.reloads
    assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
    # Reconnected, and the catch-up reload after the reconnect is done.
    await until(lambda: store.connects > connects and store.listening and store.reloads > reloads)
    assert store.listening and store.listen_pid not in (None, pid) and store.reloads > reloads
    # Changes after the reconnect arrive by NOTIFY again (reload_interval is 600 s).
    await db.execute("UPDATE feature_flags SET shadow_basis_points = 777 WHERE name = $1", flag)
    assert await seen_within(store, flag, lambda f: f.shadow_basis_points == 777) is not None
