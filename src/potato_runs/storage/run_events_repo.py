"""run_events for the event stream: pages of stored events, the live tail on a LISTEN
connection of its own, the after-commit wake-up of listeners (EventNotifier), and the
retention purge (migration 0009 explains why no trigger notifies).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.domain.run_events import RunEvent, runs_from_json
from potato_runs.storage import db_call
from potato_runs.storage.db_call import RetryPolicy
from potato_runs.storage.pool import _init_connection, acquire

NOTIFY_CHANNEL = "potato_run_events"
NOTIFY_WINDOW = 0.025
"""Seconds a wake-up waits for more writes to share it (one NOTIFY for all of them).
Measured with scripts/bench_ab.py (MarkDay, 32 in flight, fsync on, against the code
without the stream): every 5 ms cost about 7 % of MarkDay throughput (0.89 against 0.96
without any NOTIFY); every 25 ms, 0.95, within that run's noise."""
log = logging.getLogger(__name__)
LISTEN_APPLICATION_NAME = "potato-runs-events"
"""application_name of the stream's LISTEN connection (find it in pg_stat_activity)."""

_COLUMNS = "e.event_id, e.user_id, e.kind, e.cause, e.before, e.after, e.occurred_at, e.request_id"

PAGE_SQL = f"""
SELECT {_COLUMNS}, r.purged_through
  FROM run_events_retention r
  LEFT JOIN LATERAL (
        SELECT * FROM run_events e
         WHERE e.event_id > $1 AND e.event_id <= $2 AND ($3::uuid IS NULL OR e.user_id = $3)
         ORDER BY e.event_id LIMIT $4) e ON true
 ORDER BY e.event_id
"""
"""One page of a replay and, read in the same snapshot, the retention watermark (one row
with NULL event columns when the page is empty)."""

TAIL_SQL = f"""
SELECT {_COLUMNS}
  FROM run_events e
 WHERE e.event_id > $1
 ORDER BY e.event_id
 LIMIT $2
"""

HEAD_SQL = "SELECT coalesce(max(event_id), 0) FROM run_events"

IN_PROGRESS_SQL = """
SELECT coalesce(array_agg(transactionid::text::bigint), '{}')
  FROM pg_locks
 WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted
"""
"""Every transaction (and subtransaction) id in progress now, in the whole cluster: each
holds the exclusive lock on its own id from the moment it is assigned to its end. Not the
snapshot's xip list: a snapshot lists only xids below its xmax (the latest completed xid
+ 1), and a writer that got its xid after that is in progress but not listed."""

RUNNING_SQL = """
SELECT count(*)
  FROM pg_locks
 WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted
   AND transactionid::text::bigint = ANY($1::bigint[])
"""

PURGE_BATCH_SQL = """
WITH gone AS (
    DELETE FROM run_events
     WHERE event_id IN (SELECT event_id FROM run_events
                         WHERE occurred_at < $1 ORDER BY event_id LIMIT $2)
    RETURNING event_id),
mark AS (
    UPDATE run_events_retention
       SET purged_through = greatest(purged_through, m.max_id), updated_at = $3
      FROM (SELECT max(event_id) AS max_id FROM gone) m
     WHERE m.max_id IS NOT NULL)
SELECT count(*) FROM gone
"""
"""Deletes the oldest events (by id) recorded before the cutoff, at most $2, and raises
the watermark to the largest id deleted, in one transaction."""


def event_from_row(row: Any) -> RunEvent:
    user = row["user_id"]
    return RunEvent(event_id=row["event_id"], user_id=user, kind=row["kind"],
                    cause=row["cause"], before=runs_from_json(user, row["before"]),
                    after=runs_from_json(user, row["after"]), occurred_at=row["occurred_at"],
                    request_id=row["request_id"])


class RunEventsRepository:
    """Reads of stored events (the serving pool) and the retention purge (the admin pool)."""

    def __init__(self, pool: asyncpg.Pool, retry: RetryPolicy | None = None) -> None:
        self._pool = pool
        self._retry = retry or RetryPolicy()

    async def page(self, after: int, through: int, user_id: uuid.UUID | None, limit: int,
                   deadline: Deadline) -> tuple[list[RunEvent], int]:
        """(events with after < event_id <= through, of `user_id` or everyone, oldest
        first, at most `limit`; the retention watermark in the same snapshot)."""
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            return await conn.fetch(PAGE_SQL, after, through, user_id, limit, timeout=timeout)

        rows = await db_call.call(self._pool, self._retry, deadline, "event", op)
        purged = int(rows[0]["purged_through"]) if rows else 0
        return [event_from_row(r) for r in rows if r["event_id"] is not None], purged

    async def purged_through(self, deadline: Deadline) -> int:
        """The largest event_id the retention deleted (0: none)."""
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            return await conn.fetchval("SELECT purged_through FROM run_events_retention",
                                       timeout=timeout)

        return int(await db_call.call(self._pool, self._retry, deadline, "event", op) or 0)

    async def purge_batch(self, older_than: dt.datetime, limit: int, now: dt.datetime,
                          deadline: Deadline) -> int:
        """Deletes at most `limit` events recorded before `older_than` (one short
        transaction); returns how many."""
        async def op(conn: asyncpg.Connection, timeout: float) -> Any:
            return await conn.fetchval(PURGE_BATCH_SQL, older_than, limit, now,
                                       timeout=timeout)

        return int(await db_call.call(self._pool, self._retry, deadline, "event", op))


class EventTail:
    """The one LISTEN connection of a server's event stream, not from any pool: it
    listens on potato_run_events and runs the tail's reads (a busy pool can never delay
    live delivery). `on_notify` is called for every notification, `on_lost` when the
    connection ends. Raises the driver's errors (storage.errors.DB_FAILURES)."""

    reads_settled = False
    """after() may return events below which another is still being written (the hub
    settles gaps with in_progress/running)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @classmethod
    async def connect(cls, dsn: str, on_notify: Callable[[], None],
                      on_lost: Callable[[], None], timeout: float) -> EventTail:
        conn = await asyncpg.connect(dsn, timeout=timeout, server_settings={
            "application_name": LISTEN_APPLICATION_NAME, "TimeZone": "UTC"})
        try:
            await _init_connection(conn)
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: on_notify())
            conn.add_termination_listener(lambda _c: on_lost())
        except BaseException:
            conn.terminate()
            raise
        return cls(conn)

    @property
    def closed(self) -> bool:
        return bool(self._conn.is_closed())

    def terminate(self) -> None:
        if not self._conn.is_closed():
            self._conn.terminate()

    async def head(self, timeout: float) -> int:
        """The largest visible event_id (0: none)."""
        return int(await self._conn.fetchval(HEAD_SQL, timeout=timeout))

    async def after(self, settled: int, limit: int, timeout: float) -> list[RunEvent]:
        """Events with event_id > settled, oldest first, at most `limit`."""
        rows = await self._conn.fetch(TAIL_SQL, settled, limit, timeout=timeout)
        return [event_from_row(r) for r in rows]

    async def in_progress(self, timeout: float) -> list[int]:
        """The ids of every transaction in progress now (IN_PROGRESS_SQL)."""
        return list(await self._conn.fetchval(IN_PROGRESS_SQL, timeout=timeout))

    async def running(self, xids: Sequence[int], timeout: float) -> int:
        """How many of `xids` are still in progress."""
        return int(await self._conn.fetchval(RUNNING_SQL, list(xids), timeout=timeout))


class EventNotifier:
    """Wakes the stream's listeners (every replica's EventHub) after this replica's
    writes, outside their transactions.

    A NOTIFY inside the write transaction would hold PostgreSQL's notification-queue lock
    through the commit's WAL flush and serialize every writer's commit (migration 0009:
    2.3x fewer MarkDays at 32 connections). Here `poke()` (called once a write has
    committed: a flag test on the hot path) schedules one `pg_notify` on the pool
    `NOTIFY_WINDOW` seconds later, shared by every write of that window; the NOTIFY's
    own transaction writes nothing, so its commit is quick. A failed NOTIFY is only
    logged: listeners also re-read the table every second."""

    def __init__(self, pool: asyncpg.Pool, window: float = NOTIFY_WINDOW) -> None:
        self._pool = pool
        self._window = window
        self._pending = False
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def poke(self) -> None:
        if self._pending or self._stopped:
            return
        self._pending = True
        self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            await asyncio.sleep(self._window)   # let the writes of this window join in
            self._pending = False
            async with acquire(self._pool, timeout=2.0) as conn:   # a broken one is dropped
                await conn.execute(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')", timeout=2.0)
        except Exception as exc:   # best effort: any failure (even asyncpg's
            # InternalClientError of a killed backend) only delays events to the next poll
            log.debug("run events: wake-up NOTIFY failed (listeners poll): %r", exc)
        finally:
            self._pending = False

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


HORIZON_LOCAL_SQL = """
SELECT potato_event_snapshot(),
       (SELECT count(*) FROM pg_dist_shard
         WHERE logicalrelid = 'potato_event_probes'::regclass)
"""
"""The coordinator's own view (an insert it routes to a shard draws its event id on the
coordinator), and how many shards the probes must answer from."""

HORIZON_SQL = "SELECT potato_event_snapshot() FROM potato_event_probes"
"""Every shard's node's view (storage/citus_schema.sql): the probe table has one row per
shard, so the query runs once in each, on the node that holds it, over the coordinator's
cached connections (run_command_on_all_nodes opens new ones: about 30 ms a call)."""

RUNNING_LOCAL_SQL = "SELECT potato_event_xids_running($1::bigint[], $2::bigint[])"
RUNNING_PROBES_SQL = """
SELECT coalesce(sum(potato_event_xids_running($1::bigint[], $2::bigint[])), 0)
  FROM potato_event_probes
"""

CITUS_TAIL_SQL = f"""
SELECT {_COLUMNS}
  FROM run_events e
 WHERE e.event_id > $1 AND e.event_id < $3
 ORDER BY e.event_id
 LIMIT $2
"""

HORIZON_WAIT_MS = 2000
"""How long a node waits for its transactions in progress before the tail tries again."""


class CitusEventTail(EventTail):
    """The tail on Citus (docs/decisions.adrs.md ADR-0006, "Run events"). Events are written on
    the workers, in transactions the coordinator's pg_locks does not list, with
    time-first ids (potato_event_id). Each read first takes the cluster's horizon: every
    node's clock, once the transactions in progress there at that moment have ended (the
    coordinator's, and the workers' through one row per shard of potato_event_probes); the
    smallest, H, bounds the read (event_id < H << 22), and every event below that bound
    is visible or never will be. So after() returns settled events only, in id order,
    and the hub hands them out as they come. Wake-ups are as on one PostgreSQL: the
    writing replica NOTIFYs the coordinator after its commit, and the hub polls anyway."""

    reads_settled = True

    @classmethod
    async def connect(cls, dsn: str, on_notify: Callable[[], None],
                      on_lost: Callable[[], None], timeout: float) -> EventTail:
        tail = await super().connect(dsn, on_notify, on_lost, timeout)
        try:
            # One connection per worker for the tail's multi-shard reads: the coordinator
            # keeps one per worker between queries (citus.max_cached_conns_per_worker),
            # and any more it opened for a query's parallel tasks would be opened, and
            # authenticated, again on every read (a read's tasks are tiny).
            await tail._conn.execute("SET citus.max_adaptive_executor_pool_size = 1",
                                     timeout=timeout)
        except BaseException:
            tail.terminate()
            raise
        return tail

    async def _horizon(self, timeout: float) -> int | None:
        """The cluster's horizon as an event id bound: the smallest of every node's
        clock, returned once the transactions in progress at those readings have ended;
        None when one is still running after HORIZON_WAIT_MS or a shard did not answer."""
        local, shards = await self._conn.fetchrow(HORIZON_LOCAL_SQL, timeout=timeout)
        views = [local, *(r[0] for r in await self._conn.fetch(HORIZON_SQL, timeout=timeout))]
        if len(views) != shards + 1:
            return None
        bound = min(v[1] for v in views)
        waits = {(v[0], x) for v in views for x in v[2:]}
        groups, xids = [g for g, _ in waits], [x for _, x in waits]
        deadline = time.monotonic() + HORIZON_WAIT_MS / 1000
        pause = 0.001
        while waits:
            running = (await self._conn.fetchval(RUNNING_LOCAL_SQL, groups, xids,
                                                 timeout=timeout)
                       + await self._conn.fetchval(RUNNING_PROBES_SQL, groups, xids,
                                                   timeout=timeout))
            if not running:
                break
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        return int(bound) << 22

    async def head(self, timeout: float) -> int:
        """Every id below the horizon is settled: the hub starts after them."""
        bound = await self._horizon(timeout)
        if bound is None:
            raise TimeoutError("run events: a Citus node did not settle its transactions")
        return bound - 1

    async def after(self, settled: int, limit: int, timeout: float) -> list[RunEvent]:
        bound = await self._horizon(timeout)
        if bound is None:   # a long transaction on a node: the next wake-up tries again
            return []
        rows = await self._conn.fetch(CITUS_TAIL_SQL, settled, limit, bound, timeout=timeout)
        return [event_from_row(r) for r in rows]

    async def in_progress(self, timeout: float) -> list[int]:
        return []   # after() has waited for them, node by node

    async def running(self, xids: Sequence[int], timeout: float) -> int:
        return 0
