"""The blue/green full rebuild (storage/blue_green.py, AdminService.RebuildAllRuns).

Each test has a database of its own (fresh_database + the embedded cluster's role setup:
potato_owner owns everything, the server connects as potato_app) and, where it calls the
server, a real gRPC server on port 0 whose owner connection is the test cluster's
superuser acting as potato_owner (as on the embedded cluster).

Covered: a rebuild of a correct projection changes nothing (ids, timestamps, zero events);
of a drifted one repairs it with one run_rebuilt event per changed user; writers through
the gRPC server all through a rebuild (catch-up users, a write held by the swap's lock,
writes after the old table is gone) lose nothing; the swapped table is catalog-identical
to a freshly migrated one; the owner connection terminated mid-build or inside the swap
leaves the live table untouched; the RPC's preconditions (no owner connection, confirm,
blue_green).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2 import runs_service_pb2 as rpb
from potato.runs.v2.admin_service_pb2_grpc import AdminServiceStub
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.clock import FixedClock
from potato_runs.service.blue_green import BlueGreenService
from potato_runs.storage.blue_green import CONFIRM, BlueGreenReport, BlueGreenSettings
from potato_runs.storage.pool import create_pool
from potato_runs.storage.roles import OWNER_ROLE
from support import (
    ADMIN_METADATA,
    DEFAULT_NOW,
    ServerThread,
    fresh_database,
    prepare_roles,
    rich_status,
)

USERS = 60
FIRST_DAY = dt.date(2026, 6, 1)
LAST_DAY = dt.date(2026, 11, 20)


def _db(pg_dsn: str) -> str:
    dsn = fresh_database(pg_dsn, f"potato_bg_{uuid.uuid4().hex[:10]}")
    asyncio.run(prepare_roles(dsn))
    return dsn


def _user(i: int) -> uuid.UUID:
    return uuid.UUID(f"00000000-0000-4000-8000-{i:012d}")


SEED = """
SELECT count(potato_backfill_days(
           u, ARRAY(SELECT d::date FROM generate_series($2::date, $3::date, '1 day') d
                     WHERE (hashtext(u::text || d::text) & 7) < 5),
           'UTC', 'seed', $4, NULL))
  FROM unnest($1::uuid[]) AS u
"""


async def seed(dsn: str, users: int = USERS) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SEED, [_user(i) for i in range(users)], FIRST_DAY, LAST_DAY,
                           DEFAULT_NOW)
    finally:
        await conn.close()


def islands(dates: list[dt.date]) -> list[tuple[dt.date, dt.date, int, bool]]:
    """The runs of a user's check-ins, computed here (not by the code under test)."""
    out: list[list[dt.date]] = []
    for d in sorted(dates):
        if out and out[-1][1] + dt.timedelta(days=1) == d:
            out[-1][1] = d
        else:
            out.append([d, d])
    return [(s, e, (e - s).days + 1, i == len(out) - 1) for i, (s, e) in enumerate(out)]


async def projection_matches_facts(conn: asyncpg.Connection) -> None:
    facts: dict[uuid.UUID, list[dt.date]] = {}
    for r in await conn.fetch("SELECT user_id, checkin_date FROM daily_checkins"):
        facts.setdefault(r["user_id"], []).append(r["checkin_date"])
    runs: dict[uuid.UUID, list[tuple[dt.date, dt.date, int, bool]]] = {}
    for r in await conn.fetch("SELECT user_id, start_date, end_date, day_count, active "
                              "FROM runs ORDER BY user_id, start_date"):
        runs.setdefault(r["user_id"], []).append(tuple(r[1:]))  # type: ignore[arg-type]
    assert runs == {u: islands(d) for u, d in facts.items()}


async def violations(dsn: str) -> list[Any]:
    from potato_runs.storage.admin_repo import AdminRepository

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        found, _ = await AdminRepository(pool).check(None, 100)
        return found
    finally:
        await pool.close()


ALL_RUNS = "SELECT * FROM runs ORDER BY run_id"


@pytest.fixture
def bg(pg_dsn: str) -> Iterator[tuple[str, ServerThread]]:
    dsn = _db(pg_dsn)
    asyncio.run(seed(dsn))
    server = ServerThread(dsn, FixedClock(DEFAULT_NOW), owner=True).start()
    try:
        yield dsn, server
    finally:
        server.stop()


def rebuild_rpc(server: ServerThread, **fields: Any) -> apb.RebuildAllRunsResponse:
    with grpc.insecure_channel(server.target) as channel:
        res: apb.RebuildAllRunsResponse = AdminServiceStub(channel).RebuildAllRuns(
            apb.RebuildAllRunsRequest(**{"blue_green": True, "confirm": CONFIRM, **fields}),
            metadata=ADMIN_METADATA, timeout=300)
        return res


# ---------------------------------------------------------------------- (a) drift / no-op
async def test_a_correct_projection_is_rebuilt_without_a_visible_change(
        bg: tuple[str, ServerThread]) -> None:
    dsn, server = bg
    conn = await asyncpg.connect(dsn)
    try:
        before = [tuple(r) for r in await conn.fetch(ALL_RUNS)]
        events = await conn.fetchval("SELECT coalesce(max(event_id), 0) FROM run_events")
        res = await asyncio.to_thread(rebuild_rpc, server)
        assert [tuple(r) for r in await conn.fetch(ALL_RUNS)] == before
        assert await conn.fetchval("SELECT count(*) FROM run_events WHERE event_id > $1",
                                   events) == 0
        assert (res.users_changed, res.runs, res.runs_kept) == (0, len(before), len(before))
        assert res.users == USERS and res.facts > 0 and res.old_table_dropped
        assert [p.name for p in res.phases] == ["build", "index", "catchup", "swap", "drop"]
        row = await conn.fetchrow("SELECT * FROM runs_rebuilds WHERE rebuild_id = $1",
                                  res.rebuild_id)
        assert row is not None and row["status"] == "swapped" and row["error"] is None
        assert (row["runs"], row["users_changed"], row["old_table_dropped"]) == (
            len(before), 0, True)
        assert await conn.fetchval("SELECT to_regclass('runs_bg_new') IS NULL "
                                   "AND to_regclass('runs_bg_old') IS NULL")
        assert await violations(dsn) == []
    finally:
        await conn.close()


async def test_a_drifted_projection_is_repaired_with_one_event_per_changed_user(
        bg: tuple[str, ServerThread]) -> None:
    dsn, server = bg
    conn = await asyncpg.connect(dsn)
    try:
        users = [_user(i) for i in range(4)]
        # Damage four users: a run deleted, the active flag moved, a run shortened (its
        # last day uncovered), a run invented on a day without a check-in.
        await conn.execute("DELETE FROM runs WHERE run_id = (SELECT min(run_id) FROM runs "
                           "WHERE user_id = $1)", users[0])
        await conn.execute("UPDATE runs SET active = false WHERE user_id = $1 AND active",
                           users[1])
        await conn.execute("""UPDATE runs SET end_date = end_date - 1, day_count = day_count - 1
                               WHERE run_id = (SELECT run_id FROM runs WHERE user_id = $1
                                                 AND day_count > 1 ORDER BY start_date LIMIT 1)""",
                           users[2])
        await conn.execute("""INSERT INTO runs (user_id, start_date, end_date, day_count, active)
                              VALUES ($1, DATE '2026-01-10', DATE '2026-01-10', 1, false)""",
                           users[3])
        assert {v.user_id for v in await violations(dsn)} == set(users)
        untouched = [tuple(r) for r in await conn.fetch(
            "SELECT * FROM runs WHERE NOT user_id = ANY($1::uuid[]) ORDER BY run_id", users)]
        max_id = await conn.fetchval("SELECT max(run_id) FROM runs")
        events = await conn.fetchval("SELECT coalesce(max(event_id), 0) FROM run_events")
        stored = {u: [dict(r) for r in await conn.fetch(
            "SELECT * FROM runs WHERE user_id = $1 ORDER BY start_date", u)] for u in users}

        res = await asyncio.to_thread(rebuild_rpc, server)

        assert res.users_changed == 4
        assert await violations(dsn) == []
        await projection_matches_facts(conn)
        assert [tuple(r) for r in await conn.fetch(
            "SELECT * FROM runs WHERE NOT user_id = ANY($1::uuid[]) ORDER BY run_id",
            users)] == untouched
        # The re-created run of user 0 has a fresh id; no id is reused.
        assert await conn.fetchval("SELECT max(run_id) FROM runs WHERE user_id = $1",
                                   users[0]) > max_id
        rows = await conn.fetch("SELECT * FROM run_events WHERE event_id > $1 ORDER BY user_id",
                                events)
        assert [(r["user_id"], r["kind"], r["cause"]) for r in rows] == [
            (u, "run_rebuilt", "rebuild") for u in sorted(users)]
        import json
        for r in rows:
            before = json.loads(r["before"])
            after = json.loads(r["after"])
            assert [b["run_id"] for b in before] == [s["run_id"] for s in stored[r["user_id"]]]
            now = await conn.fetch("SELECT run_id, start_date, end_date, active FROM runs "
                                   "WHERE user_id = $1 ORDER BY start_date", r["user_id"])
            assert [(a["run_id"], a["start_date"], a["end_date"], a["active"]) for a in after] == [
                (n["run_id"], n["start_date"].isoformat(), n["end_date"].isoformat(), n["active"])
                for n in now]
        # A second rebuild finds nothing to do.
        again = await asyncio.to_thread(rebuild_rpc, server)
        assert again.users_changed == 0
    finally:
        await conn.close()


def test_the_rpc_refuses_without_owner_connection_confirm_or_blue_green(
        server: ServerThread) -> None:
    """The session's test server serves as potato_app and has no owner connection."""
    with grpc.insecure_channel(server.target) as channel:
        stub = AdminServiceStub(channel)
        for req, code, reason in (
                (apb.RebuildAllRunsRequest(blue_green=True, confirm=CONFIRM),
                 grpc.StatusCode.FAILED_PRECONDITION, "OWNER_CONNECTION_REQUIRED"),
                (apb.RebuildAllRunsRequest(blue_green=True, validate_only=True),
                 grpc.StatusCode.FAILED_PRECONDITION, "OWNER_CONNECTION_REQUIRED"),
                (apb.RebuildAllRunsRequest(blue_green=True),
                 grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD"),
                (apb.RebuildAllRunsRequest(blue_green=True, confirm="yes"),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VALUE"),
                (apb.RebuildAllRunsRequest(confirm=CONFIRM),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VALUE")):
            with pytest.raises(grpc.RpcError) as err:
                stub.RebuildAllRuns(req, metadata=ADMIN_METADATA, timeout=30)
            assert err.value.code() == code  # type: ignore[attr-defined]
            info, _, status = rich_status(err.value)
            assert info is not None and info.reason == reason, status
            if reason == "OWNER_CONNECTION_REQUIRED":
                assert "--blue-green --dsn" in status.message


def test_validate_only_counts_and_changes_nothing(bg: tuple[str, ServerThread]) -> None:
    _, server = bg
    res = rebuild_rpc(server, validate_only=True, confirm="")
    assert res.validate_only and res.rebuild_id == 0 and res.users == USERS
    assert res.facts > 0 and res.runs > 0 and not res.phases


# ---------------------------------------------------------------------- (b) writers
@dataclass
class Writer:
    """One thread writing (and reading) through the gRPC server for its own users; it keeps
    a model of the facts it was told were written (every acknowledged write)."""

    stub: RunsServiceStub
    users: list[uuid.UUID]
    rng: random.Random
    model: dict[uuid.UUID, set[dt.date]] = field(default_factory=dict)
    acked: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)

    def call(self, method: Any, request: Any) -> Any:
        for _ in range(50):
            try:
                return method(request, timeout=30)
            except grpc.RpcError as exc:
                info, _, status = rich_status(exc)
                code = exc.code()  # type: ignore[attr-defined]
                outcome = info.metadata.get("write_outcome") if info is not None else None
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED,
                            grpc.StatusCode.DEADLINE_EXCEEDED) and outcome != "unknown":
                    self.retried += 1
                    continue
                meta = dict(info.metadata) if info is not None else {}
                self.failures.append(f"{code.name}: {status.message} {meta}")
                return None
        self.failures.append("gave up after 50 retryable failures")
        return None

    def one(self) -> None:
        user = self.rng.choice(self.users)
        days = self.model.setdefault(user, set())
        day = FIRST_DAY + dt.timedelta(days=self.rng.randrange((LAST_DAY - FIRST_DAY).days + 1))
        op = self.rng.random()
        if self.rng.random() < 0.2:   # reads too: they wait for the swap like writes
            if self.call(self.stub.ListRuns, rpb.ListRunsRequest(user_id=str(user))) is None:
                return
            if self.call(self.stub.GetActiveRun,
                         rpb.GetActiveRunRequest(user_id=str(user))) is None:
                return
        if op < 0.5:
            if self.call(self.stub.MarkDay, rpb.MarkDayRequest(
                    user_id=str(user), local_date=day.isoformat(), time_zone="UTC")) is not None:
                days.add(day)
                self.acked += 1
        elif op < 0.8:
            if self.call(self.stub.UnmarkDay, rpb.UnmarkDayRequest(
                    user_id=str(user), local_date=day.isoformat())) is not None:
                days.discard(day)
                self.acked += 1
        else:
            dates = sorted({day + dt.timedelta(days=k) for k in range(self.rng.randrange(1, 6))
                            if day + dt.timedelta(days=k) <= LAST_DAY})
            if self.call(self.stub.BackfillDays, rpb.BackfillDaysRequest(
                    user_id=str(user), local_dates=[d.isoformat() for d in dates],
                    time_zone="UTC")) is not None:
                days.update(dates)
                self.acked += 1


async def facts_of(conn: asyncpg.Connection, users: list[uuid.UUID]) -> dict[uuid.UUID,
                                                                              set[dt.date]]:
    out: dict[uuid.UUID, set[dt.date]] = {u: set() for u in users}
    for r in await conn.fetch("SELECT user_id, checkin_date FROM daily_checkins "
                              "WHERE user_id = ANY($1::uuid[])", users):
        out[r["user_id"]].add(r["checkin_date"])
    return out


def owner_connect(dsn: str, pids: list[int]) -> Any:
    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn)
        await conn.execute(f"SET ROLE {OWNER_ROLE}")
        pids.append(conn.get_server_pid())
        return conn
    return connect


async def waiting_on_checkins(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'daily_checkins'::regclass "
            "AND NOT granted)"))
    finally:
        await conn.close()


async def test_writers_lose_nothing_through_a_rebuild(bg: tuple[str, ServerThread]) -> None:
    """Six writers (MarkDay, UnmarkDay, BackfillDays over gRPC, on pooled connections whose
    write functions are compiled and whose plans are cached) write before, during and after
    the rebuild. Three more writes are placed by the rebuild's progress hooks: one after
    the build snapshot (a catch-up pass must pick it up), one between the last pass and
    the swap (the swap's own catch-up), one held by the swap's lock (it must land in the
    new table after the commit). Writes keep going after the old table is dropped."""
    dsn, server = bg
    channel = grpc.insecure_channel(server.target)
    stub = RunsServiceStub(channel)
    seeded = [_user(i) for i in range(USERS)]
    writers = [Writer(stub, [*seeded[i::6][:5], _user(1000 + i)], random.Random(i))
               for i in range(6)]
    # Start from the facts as they are, so the model is the whole truth for these users.
    conn = await asyncpg.connect(dsn)
    start = await facts_of(conn, [u for w in writers for u in w.users])
    for w in writers:
        w.model = {u: set(start[u]) for u in w.users}
    stop = threading.Event()
    warm = threading.Event()
    after_rebuild = threading.Event()
    counts_after: list[int] = [0] * len(writers)

    def loop(i: int) -> None:
        w = writers[i]
        while not stop.is_set() or counts_after[i] < 20:
            w.one()
            if w.acked >= 5:
                warm.set()
            if after_rebuild.is_set():
                counts_after[i] += 1
            if counts_after[i] >= 20:
                return

    hook_users = {"index": _user(2000), "swap": _user(2001), "locked": _user(2002)}
    hook_day = dt.date(2026, 11, 1)
    held: list[Future[Any]] = []
    hook_pool = ThreadPoolExecutor(1)

    def mark(user: uuid.UUID) -> Any:
        return stub.MarkDay(rpb.MarkDayRequest(user_id=str(user), local_date=hook_day.isoformat(),
                                               time_zone="UTC"), timeout=60)

    phases: list[tuple[str, int]] = []

    def progress(phase: str, rows: int) -> None:
        phases.append((phase, rows))
        if rows != -1 or phase not in hook_users or any(p == phase for p, _ in phases[:-1]):
            return
        if phase == "locked":
            # A write held by the swap's LOCK: submitted now, seen waiting, then released
            # by the commit.
            held.append(hook_pool.submit(mark, hook_users[phase]))
            while not server.run(waiting_on_checkins(dsn)):
                pass
        else:
            mark(hook_users[phase])   # acknowledged before the rebuild goes on

    pids: list[int] = []
    # Two build sessions on one exported snapshot (the default on more than 2 cores).
    service = BlueGreenService(owner_connect(dsn, pids), FixedClock(DEFAULT_NOW),
                               BlueGreenSettings(build_sessions=2))
    with ThreadPoolExecutor(len(writers)) as pool:
        futures = [pool.submit(loop, i) for i in range(len(writers))]
        # The writers are under way before the rebuild starts.
        assert await asyncio.to_thread(warm.wait, 60)
        try:
            report: BlueGreenReport = await service.rebuild_all(progress=progress)
        finally:
            after_rebuild.set()
            stop.set()
        for f in futures:
            f.result()
    held_response = held[0].result()
    hook_pool.shutdown()
    channel.close()
    try:
        failures = [f for w in writers for f in w.failures]
        assert failures == []
        # Not even a retryable failure (ABORTED/UNAVAILABLE with write_outcome not_applied,
        # which the writers would have retried): nobody saw the rebuild.
        assert sum(w.retried for w in writers) == 0
        assert all(n >= 20 for n in counts_after)   # writes after the old table was dropped
        # The catch-up found the hook users (and the writers'): the pass after the build
        # and the swap's own pass recomputed someone.
        assert report.catchup_users[0] >= 1 and report.catchup_users[-1] >= 1, report
        assert report.old_table_dropped and report.max_write_block_seconds > 0
        assert held_response is not None
        # Every acknowledged write is in the facts, and nothing else.
        users = [u for w in writers for u in w.users]
        assert await facts_of(conn, users) == {u: m for w in writers for u, m in w.model.items()}
        for user in hook_users.values():
            assert await conn.fetchval(
                "SELECT count(*) FROM runs WHERE user_id = $1 AND start_date <= $2 "
                "AND end_date >= $2", user, hook_day) == 1
        await projection_matches_facts(conn)
        assert await violations(dsn) == []
        assert await conn.fetchval("SELECT to_regclass('runs_bg_old') IS NULL")
    finally:
        await conn.close()


# ---------------------------------------------------------------------- (c) catalog
CATALOG = {
    "table": """SELECT c.relkind, c.relpersistence, pg_get_userbyid(c.relowner),
                       c.relacl::text, c.reloptions, c.relname
                  FROM pg_class c WHERE c.oid = 'runs'::regclass""",
    "columns": """SELECT attnum, attname, format_type(atttypid, atttypmod), attnotnull,
                         attidentity, attgenerated, atthasdef, attstorage, attcompression,
                         pg_get_expr(d.adbin, d.adrelid)
                    FROM pg_attribute a LEFT JOIN pg_attrdef d
                         ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                   WHERE attrelid = 'runs'::regclass AND attnum > 0 AND NOT attisdropped
                   ORDER BY attnum""",
    "constraints": """SELECT conname, contype, condeferrable, condeferred, convalidated,
                             pg_get_constraintdef(oid), coalesce(conindid::regclass::text, '')
                        FROM pg_constraint WHERE conrelid = 'runs'::regclass ORDER BY conname""",
    "indexes": """SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisunique,
                         i.indisprimary, i.indisexclusion, i.indimmediate, i.indisvalid,
                         pg_get_userbyid(c.relowner)
                    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                   WHERE i.indrelid = 'runs'::regclass ORDER BY c.relname""",
    "sequence": """SELECT c.relname, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmax,
                          s.seqmin, s.seqcache, s.seqcycle, pg_get_userbyid(c.relowner),
                          c.relacl::text, pg_get_serial_sequence('runs', 'run_id')
                     FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
                    WHERE s.seqrelid = pg_get_serial_sequence('runs', 'run_id')::regclass""",
    "functions": """SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text,
                           pg_get_userbyid(p.proowner)
                      FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
                       AND p.proname LIKE 'potato\\_%' ORDER BY 1""",
    "relations": """SELECT relname, relkind FROM pg_class
                     WHERE relnamespace = 'public'::regnamespace ORDER BY relname""",
    "type": """SELECT t.typname, t.typtype, t.typowner::regrole::text FROM pg_type t
                WHERE t.oid = (SELECT reltype FROM pg_class WHERE oid = 'runs'::regclass)""",
}


async def catalog(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {k: [tuple(r) for r in await conn.fetch(q)] for k, q in CATALOG.items()}
    finally:
        await conn.close()


async def test_the_swapped_table_is_catalog_identical_to_a_migrated_one(
        pg_dsn: str, bg: tuple[str, ServerThread]) -> None:
    dsn, server = bg
    reference = await asyncio.to_thread(_db, pg_dsn)
    before = await catalog(dsn)
    assert before == await catalog(reference)
    for _ in range(2):   # twice: the second swaps a table the first one built
        await asyncio.to_thread(rebuild_rpc, server)
        assert await catalog(dsn) == await catalog(reference)


# ---------------------------------------------------------------------- (d) failure
async def terminate(dsn: str, pid: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


@pytest.mark.parametrize("phase", ["index", "pass", "locked"])
async def test_the_owner_connection_killed_mid_way_leaves_the_live_table_untouched(
        bg: tuple[str, ServerThread], phase: str) -> None:
    dsn, server = bg
    conn = await asyncpg.connect(dsn)
    try:
        oid = await conn.fetchval("SELECT 'runs'::regclass::oid")
        before = [tuple(r) for r in await conn.fetch(ALL_RUNS)]
        pids: list[int] = []
        fired = itertools.count()

        def progress(name: str, rows: int) -> None:
            if name == phase and next(fired) == 0:
                server.run(terminate(dsn, pids[0]))

        service = BlueGreenService(owner_connect(dsn, pids), FixedClock(DEFAULT_NOW))
        from potato_runs.domain.errors import DomainError, ErrorKind

        with pytest.raises(DomainError) as err:
            await service.rebuild_all(progress=progress)
        assert err.value.kind == ErrorKind.UNAVAILABLE
        assert await conn.fetchval("SELECT 'runs'::regclass::oid") == oid
        assert [tuple(r) for r in await conn.fetch(ALL_RUNS)] == before
        assert await conn.fetchval("SELECT to_regclass('runs_bg_new') IS NULL "
                                   "AND to_regclass('runs_bg_old') IS NULL")
        row = await conn.fetchrow("SELECT status, error FROM runs_rebuilds")
        assert row is not None and row["status"] == "failed" and row["error"]
        # The server writes on, and the next rebuild goes through.
        with grpc.insecure_channel(server.target) as channel:
            RunsServiceStub(channel).MarkDay(rpb.MarkDayRequest(
                user_id=str(_user(3000)), local_date="2026-11-02", time_zone="UTC"), timeout=30)
        res = await asyncio.to_thread(rebuild_rpc, server)
        assert res.users_changed == 0
        assert await violations(dsn) == []
    finally:
        await conn.close()



async def test_an_old_table_still_in_use_aborts_before_the_build(
        bg: tuple[str, ServerThread]) -> None:
    """A kept runs_bg_old (an earlier rebuild could not drop it) that a transaction still
    uses: the swap could not rename the live table to it, so the rebuild stops before
    building, with ABORTED (CONTENTION) rather than INTERNAL, the live table unchanged.
    A transaction in another database does not hold it up."""
    from potato_runs.domain.errors import DomainError, ErrorKind, Reason

    dsn, _ = bg
    conn, holder, other = (await asyncpg.connect(dsn), await asyncpg.connect(dsn),
                           await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres"))
    try:
        await conn.execute(f"SET ROLE {OWNER_ROLE}; CREATE TABLE runs_bg_old (LIKE runs)")
        oid = await conn.fetchval("SELECT 'runs'::regclass::oid")
        before = [tuple(r) for r in await conn.fetch(ALL_RUNS)]
        other_tx = other.transaction()
        await other_tx.start()
        await other.fetchval("SELECT 1")
        holder_tx = holder.transaction()
        await holder_tx.start()
        await holder.fetchval("SELECT count(*) FROM runs_bg_old")
        service = BlueGreenService(owner_connect(dsn, []), FixedClock(DEFAULT_NOW),
                                   BlueGreenSettings(drain_timeout=0.3))
        with pytest.raises(DomainError) as err:
            await service.rebuild_all()
        assert (err.value.kind, err.value.reason) == (ErrorKind.ABORTED, Reason.CONTENTION)
        assert "runs_bg_old" in str(err.value)
        assert await conn.fetchval("SELECT 'runs'::regclass::oid") == oid
        assert [tuple(r) for r in await conn.fetch(ALL_RUNS)] == before
        await holder_tx.rollback()
        report = await service.rebuild_all()   # the other database's transaction is open
        assert report.old_table_dropped and report.users_changed == 0
        await other_tx.rollback()
    finally:
        for c in (conn, holder, other):
            await c.close()
