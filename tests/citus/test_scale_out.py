"""The "Scale out" playbook (docs/playbooks.md), run under load on a cluster of its own.

A coordinator and two workers with the schema distributed (8 shards per table, as the
tier's shared cluster, which this test leaves alone), a real server, and writers calling
MarkDay for many users over gRPC all along, every acknowledged (user, day) recorded.
Then the playbook: `potato-runs check`; the administrator's steps (a third worker,
`citus_add_node`, then `SELECT citus_rebalance_start()` followed with
its status to the end), with the writes going on; `potato-runs health` and
`potato-runs check`. Afterwards:

- the third worker holds shards (citus_shards);
- every acknowledged write is in daily_checkins (lost: 0);
- the runs projection equals a rebuild from the facts (a dry-run rebuild of everyone
  changes nothing, and each user's runs are the islands of their check-ins, computed by
  the test's own model), and the invariant checker finds nothing.

A shard move copies the shard with logical replication while it is written and switches
over under a short lock, so a write may wait at the cutover; a client that sees
UNAVAILABLE or ABORTED retries (MarkDay is idempotent), every error a client saw is
counted by status code and phase, and none may be of another code. Run with `-s` for
the figures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from e2e.test_playbooks import playbook, run_cli
from oracle import expected_runs

from citus.conftest import distribute_schema
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.clock import FixedClock
from potato_runs.storage.embedded_citus import EmbeddedCitus, chmod_base
from potato_runs.storage.roles import OWNER_ROLE
from support import DEFAULT_NOW, ServerThread

T = TypeVar("T")

USERS = 400
WRITERS = 16
"""MarkDay calls in flight, all the time."""
LAST_DAY = dt.date(2026, 11, 21)   # DEFAULT_NOW's date: today in UTC
DAYS = [LAST_DAY - dt.timedelta(days=i) for i in range(240)]
WARM_UP = 300
"""Acknowledged writes before the worker is added, and again after the rebalance."""
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
ATTEMPTS = 5
OWNER_PASSWORD = "potato-owner-scale-out-password"
CALL_TIMEOUT = 30.0   # the server caps deadlines at 30 s; this is no timed assertion


@dataclass
class Scale:
    citus: EmbeddedCitus
    server: ServerThread

    @property
    def dsn(self) -> str:
        return self.citus.dsn()


@pytest.fixture(scope="module")
def scale() -> Iterator[Scale]:
    """A cluster of this module's own (it grows a worker), built as the tier's is."""
    base = Path(tempfile.mkdtemp(prefix="potato-citus-scale-"))
    chmod_base(base)
    citus = EmbeddedCitus(base, workers=2)
    server: ServerThread | None = None
    try:
        citus.start()
        asyncio.run(distribute_schema(citus))
        asyncio.run(owner_logs_in(citus))
        server = ServerThread(citus.dsn(), FixedClock(DEFAULT_NOW)).start()
        yield Scale(citus, server)
    finally:
        if server is not None:
            server.stop()
        citus.stop()
        shutil.rmtree(base, ignore_errors=True)


async def owner_logs_in(citus: EmbeddedCitus) -> None:
    """A shard copy (the rebalancer's reference-table copy and shard moves) connects to
    the target node as the table's owner: the owner role must log in to every node with
    a password, as a real deployment's owner (POTATO_MIGRATE_DSN) does. The embedded
    cluster's potato_owner is NOLOGIN (the superuser migrates through SET ROLE); here it
    gets a password and its node-to-node entry in pg_dist_authinfo, the playbook's
    prerequisite (ALTER ROLE propagates to the workers, and to a worker added later;
    EmbeddedCitus.authorize gives every node, a later one too, the entry)."""
    conn = await asyncpg.connect(citus.dsn())
    try:
        await conn.execute(f"ALTER ROLE {OWNER_ROLE} LOGIN PASSWORD '{OWNER_PASSWORD}'")
    finally:
        await conn.close()
    await citus.authorize(OWNER_ROLE, OWNER_PASSWORD)


async def rebalance(conn: asyncpg.Connection) -> asyncpg.Record:
    """`SELECT citus_rebalance_start()`, then its status followed to the end (what
    citus_rebalance_wait() does, but a task that keeps failing, and so retrying for
    ever, fails the test with its message)."""
    await conn.fetchval("SELECT citus_rebalance_start()")
    while True:
        status = await conn.fetchrow("SELECT job_id, state, details FROM citus_rebalance_status()")
        if status["state"] not in ("scheduled", "running", "cancelling", "failing"):
            return status
        stuck = await conn.fetch("SELECT task_id, retry_count, message, command "
                                 "FROM pg_dist_background_task WHERE job_id = $1 "
                                 "AND retry_count >= 3", status["job_id"])
        assert not stuck, [dict(r) for r in stuck]
        await asyncio.sleep(0.5)   # polling a background job's state


@dataclass
class Load:
    users: list[uuid.UUID]
    phase: str = "before"
    acks: int = 0
    acked: set[tuple[uuid.UUID, dt.date]] = field(default_factory=set)
    errors: dict[str, Counter[str]] = field(default_factory=dict)
    """Every failed call a client saw, by phase, then by gRPC status code."""
    failed: list[str] = field(default_factory=list)
    """Calls given up on (not acknowledged): a code that is not retried, or no attempt left."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def reached(self, acks: int) -> None:
        async with self.progress:
            await self.progress.wait_for(lambda: self.acks >= acks or bool(self.failed))

    async def writer(self, stub: RunsServiceStub, rng: random.Random) -> None:
        """MarkDay on random users and days until `stop`, or a call given up on."""
        while not self.stop.is_set():
            if not await self.mark(stub, rng.choice(self.users), rng.choice(DAYS)):
                return

    async def mark(self, stub: RunsServiceStub, user: uuid.UUID, day: dt.date) -> bool:
        """One MarkDay, retried on UNAVAILABLE/ABORTED; whether it was acknowledged."""
        req = pb.MarkDayRequest(user_id=str(user), local_date=day.isoformat(),
                                time_zone="UTC")
        for attempt in range(1, ATTEMPTS + 1):
            try:
                res = await stub.MarkDay(req, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                self.errors.setdefault(self.phase, Counter())[exc.code().name] += 1
                if exc.code() in RETRYABLE and attempt < ATTEMPTS:
                    await asyncio.sleep(0.05 * attempt)   # back-off, not synchronisation
                    continue
                self.failed.append(f"{exc.code().name}: {exc.details()}")
                async with self.progress:
                    self.progress.notify_all()
                return False
            assert res.local_date == day.isoformat()
            self.acked.add((user, day))
            async with self.progress:
                self.acks += 1
                self.progress.notify_all()
            return True
        raise AssertionError("unreachable")


async def on_server(server: ServerThread, coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine on the server's loop without blocking the test's loop."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, server.loop))


async def placements(conn: asyncpg.Connection) -> dict[int, int]:
    """Every shard (of every distributed table) and the port of the node holding it."""
    return {r[0]: r[1] for r in await conn.fetch(
        "SELECT shardid, nodeport FROM citus_shards WHERE citus_table_type = 'distributed'")}


async def test_scale_out_playbook_adds_a_worker_under_load_and_loses_nothing(
        scale: Scale) -> None:
    commands = playbook("scale-out")
    assert commands == ["potato-runs check", "potato-runs health", "potato-runs check"]
    server = scale.server
    conn = await asyncpg.connect(scale.dsn)
    try:
        before = await placements(conn)
        groups_before = int(await conn.fetchval(
            "SELECT count(*) FROM citus_shards WHERE table_name = 'runs'::regclass"))
        load = Load([uuid.uuid4() for _ in range(USERS)])
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = RunsServiceStub(channel)
            # Every user has a run; then 1. sound before (exit 0). Not under the load:
            # the coverage checks are not one snapshot on Citus (see the report).
            for i in range(0, USERS, WRITERS):
                await asyncio.gather(*(load.mark(stub, u, DAYS[-1])
                                       for u in load.users[i:i + WRITERS]))
            code, out, err = await run_cli(commands[0], server.target)
            assert code == 0, out + err
            writers = [asyncio.create_task(load.writer(stub, random.Random(f"scale:{w}")))
                       for w in range(WRITERS)]
            try:
                await load.reached(load.acks + WARM_UP)
                # 2. (administrator) a new worker, added to the cluster.
                load.phase = "move"
                acks_before, started = load.acks, time.perf_counter()
                worker = await asyncio.to_thread(scale.citus.add_worker)
                added = time.perf_counter() - started
                # 3. (administrator) the rebalance, followed to its end.
                status = await rebalance(conn)
                seconds = time.perf_counter() - started
                acks_during = load.acks - acks_before
                load.phase = "after"
                await load.reached(load.acks + WARM_UP)
            finally:
                load.stop.set()
                await asyncio.gather(*writers)
        # 4. After the rebalance: serving (exit 0) and sound (exit 0), the load over.
        results = [await run_cli(c, server.target) for c in commands[1:]]
        after = await placements(conn)
        on_new = int(await conn.fetchval(
            "SELECT count(*) FROM citus_shards WHERE nodeport = $1", worker.port))
        groups_on_new = int(await conn.fetchval(
            "SELECT count(*) FROM citus_shards WHERE nodeport = $1 "
            "AND table_name = 'runs'::regclass", worker.port))
        stored = {(r[0], r[1]) for r in await conn.fetch(
            "SELECT user_id, checkin_date FROM daily_checkins WHERE user_id = ANY($1::uuid[])",
            load.users)}
        runs: dict[uuid.UUID, list[Any]] = {u: [] for u in load.users}
        for r in await conn.fetch(
                "SELECT user_id, start_date, end_date, day_count, active FROM runs "
                "WHERE user_id = ANY($1::uuid[]) ORDER BY user_id, start_date", load.users):
            runs[r[0]].append((r[1], r[2], r[3], r[4]))
        dates: dict[uuid.UUID, list[dt.date]] = {u: [] for u in load.users}
        for user, day in stored:
            dates[user].append(day)
    finally:
        await conn.close()

    violations, _ = await on_server(server, server.app.admin.check(None, 10_000))  # type: ignore[union-attr]
    drift = await on_server(server, server.app.admin.rebuild_all(  # type: ignore[union-attr]
        batch=64, dry_run=True))
    lost = load.acked - stored
    moved = sorted(s for s, port in after.items() if before.get(s) != port)
    wrong = [u for u in load.users if runs[u] != expected_runs(dates[u])]
    print(f"\n[scale out] users={USERS} writers in flight={WRITERS} "
          f"writes acknowledged={load.acks} (distinct user-days {len(load.acked)}) "
          f"during the move={acks_during} lost={len(lost)} "
          f"errors by phase and code={ {p: dict(c) for p, c in load.errors.items()} } "
          f"given up={len(load.failed)} shards moved={len(moved)} "
          f"(shard groups {groups_on_new} of {groups_before}, on the new worker: "
          f"{on_new} shards) worker added in {added:.1f}s, add+rebalance {seconds:.1f}s "
          f"job={status['job_id']} state={status['state']} drifted={len(drift.drifted)} "
          f"of {drift.users_scanned} violations={len(violations)}")

    assert status["state"] == "finished", dict(status)
    for command, (code, out, err) in zip(commands[1:], results, strict=True):
        assert code == 0, (command, out + err)
    assert on_new > 0 and groups_on_new > 0
    assert set(moved) <= {s for s, port in after.items() if port == worker.port}
    assert load.failed == [], load.failed[:10]
    unexpected = {code for phase in load.errors.values() for code in phase} - \
        {c.name for c in RETRYABLE}
    assert not unexpected, load.errors
    assert acks_during > 0   # the writes went on through the move
    assert lost == set(), sorted(lost)[:10]
    assert violations == [], violations[:10]
    assert drift.drifted == [] and drift.users_scanned >= USERS
    assert wrong == [], f"{len(wrong)} users' runs are not the islands of their check-ins"
