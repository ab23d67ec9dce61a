"""The Citus tier's smoke subset (run by default): the schema is distributed and
co-located, a MarkDay is one delegated call executed on the worker that holds the user,
its rows live there and nowhere else, reads find them, and the event stream delivers
events written on the workers."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from integration.helpers import backfill, mark, span, stored_runs, unmark

from citus.conftest import Cluster
from citus.helpers import node_dsn, placement, rows_on
from potato.runs.v2 import run_events_service_pb2 as epb
from potato.runs.v2 import run_events_service_pb2_grpc, runs_service_pb2_grpc
from potato.runs.v2 import runs_service_pb2 as rpb
from potato_runs.storage.citus import DISTRIBUTED_TABLES, REFERENCE_TABLES
from potato_runs.storage.roles import APP_ROLE
from potato_runs.storage.run_events_repo import HORIZON_SQL
from support import ADMIN_METADATA, ServerThread

pytestmark = pytest.mark.citus_smoke

WAIT = 30.0


async def test_every_user_table_is_distributed_by_user_and_co_located(
        citus_cluster: Cluster, db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        """SELECT logicalrelid::regclass::text AS t, partmethod::text, colocationid,
                  column_to_column_name(logicalrelid, partkey) AS col
             FROM pg_dist_partition""")
    by_table = {r["t"]: r for r in rows}
    for table in DISTRIBUTED_TABLES:
        assert by_table[table]["partmethod"] == "h", table
        assert by_table[table]["col"] == "user_id", table
    assert len({by_table[t]["colocationid"] for t in DISTRIBUTED_TABLES}) == 1
    for table in REFERENCE_TABLES:
        assert by_table[table]["partmethod"] == "n", table
    # Every primary key, unique index and exclusion constraint includes user_id.
    missing = await db.fetch(
        """SELECT i.indexrelid::regclass::text AS idx
             FROM pg_index i
             JOIN pg_dist_partition p ON p.logicalrelid = i.indrelid AND p.partmethod = 'h'
            WHERE (i.indisunique OR i.indisexclusion)
              AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                               WHERE a.attrelid = i.indrelid AND a.attname = 'user_id'
                                 AND a.attnum = ANY (i.indkey))""")
    assert [r["idx"] for r in missing] == []
    # The write functions are delegated by their user argument.
    delegated = await db.fetchval(
        """SELECT count(*) FROM pg_dist_object
            WHERE classid = 'pg_proc'::regclass AND distribution_argument_index IS NOT NULL
              AND objid IN ('potato_mark_day(uuid,date,timestamptz,text,text,timestamptz,text)'
                            ::regprocedure)""")
    assert delegated == 1
    # The event stream's probes: one row in every shard, and the horizon runs in them.
    shards, probed = await db.fetchrow(
        """SELECT (SELECT count(*) FROM pg_dist_shard
                    WHERE logicalrelid = 'potato_event_probes'::regclass),
                  (SELECT count(DISTINCT get_shard_id_for_distribution_column(
                                             'potato_event_probes', user_id))
                     FROM potato_event_probes)""")
    assert probed == shards > 0
    plan = "\n".join(r[0] for r in await db.fetch("EXPLAIN (VERBOSE) " + HORIZON_SQL))
    assert f"Task Count: {shards}" in plan and "potato_event_snapshot()" in plan.split(
        "->  Task", 1)[1], plan


async def test_a_mark_day_is_one_call_run_on_the_users_worker(
        citus_cluster: Cluster, stub: runs_service_pb2_grpc.RunsServiceStub,
        db: asyncpg.Connection, user_id: str) -> None:
    res = await mark(stub, user_id, "2025-06-15")
    assert span(res.run) == ("2025-06-15", "2025-06-15", 1, True)
    await mark(stub, user_id, "2025-06-16")
    assert await stored_runs(db, user_id) == [("2025-06-15", "2025-06-16", 2, True)]
    home = await placement(db, user_id)
    assert home in citus_cluster.worker_ports()
    # The call the service makes is delegated whole: one task, on that worker.
    plan = "\n".join(r[0] for r in await db.fetch(
        "EXPLAIN (VERBOSE) SELECT potato_mark_day($1, DATE '2025-06-17', now(), "
        "'America/New_York', 'test', now(), '')", uuid.UUID(user_id)))
    assert "Task Count: 1" in plan
    assert f"port={home} " in plan
    assert "SELECT public.potato_mark_day(" in plan
    # Its rows live on that worker, none on the other.
    for port in citus_cluster.worker_ports():
        assert await rows_on(port, citus_cluster.dsn, user_id) == (1 if port == home else 0)


async def test_reads_route_to_one_shard(citus_cluster: Cluster,
                                        stub: runs_service_pb2_grpc.RunsServiceStub,
                                        db: asyncpg.Connection, user_id: str) -> None:
    await mark(stub, user_id, "2025-06-15")
    got = await stub.ListRuns(rpb.ListRunsRequest(user_id=user_id))
    assert [span(r) for r in got.runs] == [("2025-06-15", "2025-06-15", 1, True)]
    plan = "\n".join(r[0] for r in await db.fetch(
        "EXPLAIN SELECT * FROM runs WHERE user_id = $1 ORDER BY end_date DESC",
        uuid.UUID(user_id)))
    assert "Task Count: 1" in plan


async def test_the_event_stream_delivers_events_written_on_the_workers(
        server: ServerThread, stub: runs_service_pb2_grpc.RunsServiceStub) -> None:
    users = [str(uuid.uuid4()) for _ in range(6)]   # on both workers (8 shards)
    async with grpc.aio.insecure_channel(server.target) as channel:
        events = run_events_service_pb2_grpc.RunEventsServiceStub(channel)
        call = events.WatchRunEvents(epb.WatchRunEventsRequest(), metadata=ADMIN_METADATA)
        got: list[epb.RunEvent] = []

        async def read() -> None:
            async for message in call:
                got.append(message.event)

        reader = asyncio.ensure_future(read())
        try:
            for user in users:
                await mark(stub, user, "2025-06-15")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while {e.user_id for e in got} < set(users):
                assert not reader.done(), reader
                assert loop.time() < deadline, f"got {len(got)} events"
                await asyncio.sleep(0.01)
        finally:
            call.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    ids = [e.event_id for e in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_writes_stay_on_the_users_worker(citus_cluster: Cluster,
                                               stub: runs_service_pb2_grpc.RunsServiceStub,
                                               db: asyncpg.Connection) -> None:
    """No write opens a connection from the worker to another node: with potato_app's
    node-to-node password gone from the workers (the coordinator keeps its own, for the
    delegation), MarkDay, UnmarkDay and BackfillDays, a merge, a split and the month
    totals they recompute all still succeed, on new users."""
    workers = [node_dsn(citus_cluster.dsn, p) for p in citus_cluster.worker_ports()]
    saved: list[tuple[str, str]] = []
    for dsn in workers:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                "DELETE FROM pg_dist_authinfo WHERE rolename = $1 RETURNING authinfo", APP_ROLE)
            saved.append((dsn, row["authinfo"]))
        finally:
            await conn.close()
    try:
        for user in [str(uuid.uuid4()) for _ in range(6)]:   # on both workers
            await mark(stub, user, "2025-06-15")
            await backfill(stub, user, ["2025-06-17", "2025-07-02", "2025-06-16"])
            await unmark(stub, user, "2025-06-16")
            assert await stored_runs(db, user) == [
                ("2025-06-15", "2025-06-15", 1, False), ("2025-06-17", "2025-06-17", 1, False),
                ("2025-07-02", "2025-07-02", 1, True)]
    finally:
        for dsn, authinfo in saved:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) "
                                   "VALUES (0, $1, $2)", APP_ROLE, authinfo)
            finally:
                await conn.close()
