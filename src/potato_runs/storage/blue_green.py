"""The blue/green full rebuild of the runs projection (issue 9, item 4), on an owner
connection: build a new table set-based, catch up, swap in one short transaction.

Why a new table: replaying users one by one (RebuildRunsBatch) costs a locked transaction
per user (33.8 s for 1M check-ins on the development machine), and rewriting the live
table in place would hold every write for as long as that takes. Here the runs are
computed once with gaps and islands into a table nobody reads yet; only the final swap
holds writes, for a short, bounded time.

The protocol (every step on the owner connection, DDL included; potato_app never runs DDL):

1. **Prepare.** A session advisory lock (one blue/green rebuild at a time); leftovers of a
   failed rebuild are dropped (`runs_bg_new`, and a `runs_bg_old` whose drop was skipped);
   a `runs_rebuilds` row (0011) records the rebuild.
2. **Build.** `CREATE TABLE runs_bg_new (LIKE runs INCLUDING DEFAULTS INCLUDING IDENTITY
   ...)`: the same columns, NOT NULLs, defaults and identity; no constraint and no index
   before the load (why: `_build`). `build_sessions` sessions share
   one exported REPEATABLE READ snapshot S0 and each runs the gaps-and-islands
   `INSERT ... SELECT` from daily_checkins for a range of user ids,
   LEFT JOINed to the live runs on (user_id, start_date, end_date): a run the facts still
   give keeps its run_id, created_at, updated_at and last_extended_at, so a rebuild of a
   correct projection changes nothing visible. A new run draws its id from the live
   table's identity sequence (never reused, unique across both tables); created_at =
   updated_at = now, last_extended_at NULL, like rebuild_user. A kept run whose active
   flag or day_count was wrong gets updated_at = now. `active` is the rule of the write
   functions: a user's latest run (the one with the greatest end_date).
3. **Index.** The live table's constraints and indexes are copied from the catalog
   (pg_get_constraintdef / pg_get_indexdef: a later migration that changes `runs` is
   followed without touching this file): primary key, CHECKs, the two GiST exclusion
   constraints, the foreign key (NOT
   VALID, then VALIDATE: adding it takes a SHARE ROW EXCLUSIVE lock on `users`, which
   every write's zone upsert needs, so that lock is held for no scan; the validation only
   takes ROW SHARE), the partial unique index and the other indexes. Constraints and
   indexes that live in the relation namespace (those with an index) get temporary names
   (`<name>_bgn`); CHECKs and the foreign key take their final names at once (their names
   are per table). Owner = the live table's owner; grants from
   storage/roles.grant_app_privileges (what migrate() gives). ANALYZE.
4. **Catch-up.** Which users were written since a snapshot: run_events, by a watermark.
   Every write that changes facts or runs writes run events in its transaction, and (0009)
   has its transaction id before it draws an event id. So: read the event sequence's
   last value P, then the in-progress transaction ids X, wait until every X ended, then
   take the snapshot S. Any event with id <= P was drawn by a transaction that had an xid
   before P was read, so it ended before S: committed events <= P are all visible in S,
   and every write S does not see has events > P. A pass takes a new watermark P' and
   snapshot, recomputes in runs_bg_new the users of events > P (delete + the same
   islands INSERT restricted to them), and goes on from P'. A run_events scan on its
   primary key; no trigger and no DDL on the hot tables, nothing added to the write path.
   Passes repeat until one recomputes at most `catchup_target` users. One pass also
   diffs the whole tables (FULL JOIN on run_id, in its snapshot): the users whose runs
   the swap changes, with before/after JSON for their events; later passes re-diff the
   users they recompute.
5. **Swap**, one transaction, `lock_timeout` bounding every lock wait: the migration
   advisory lock (no migration meanwhile); `LOCK daily_checkins IN SHARE MODE` (waits for
   the writes in flight, which took ROW EXCLUSIVE on the facts before touching runs, and
   holds new writes at their first fact statement; reads go on); `LOCK runs IN ACCESS
   EXCLUSIVE MODE` (readers and rebuild_user, which writes runs without touching facts).
   Then the last catch-up (users of events > the last P: complete, since no writer is in
   flight), the new identity sequence set to the old one's position, the renames (runs ->
   runs_bg_old with its constraints, indexes and sequence suffixed `_bgo`; runs_bg_new ->
   runs with the final names), the functions whose signature names the row type `runs`
   (potato_run_json, potato_backfill_net_events: their argument type is the old table's
   type by OID, now runs_bg_old) created again for the new type, and every PL/pgSQL
   function whose body names `runs` replaced by itself (same text): its pg_proc row
   changes, so each session recompiles it at its next call and its `runs` variables get
   the new row type. Then one run_rebuilt event per changed user (cause 'rebuild', before
   and after = the user's runs as potato_run_json arrays, by start_date), their lifetime
   totals recomputed from the new runs, the runs_rebuilds row; commit. A lock timeout
   rolls the attempt back (the live table untouched), runs another catch-up pass and
   tries again, `swap_attempts` times, then gives up (ABORTED, CONTENTION).
   Writes held at the LOCK continue after the commit: their cached plans name the old
   table's OID, the rename invalidated them, and the re-plan resolves `runs` to the new
   table (tests/integration/test_blue_green_rebuild.py shows every acknowledged write in
   the new table).
6. **Drop.** A call that began before the commit may still run PL/pgSQL compiled against
   the old row type (a write held at the LOCK, or queued on a user's advisory lock behind
   one). The old table (and its type, and the old-typed functions) is dropped once every
   transaction open at the commit has ended (their virtualxid locks, pg_locks; bounded by
   `drain_timeout`, else the old table is kept and the next rebuild drops it).

On any failure before the swap commits, runs_bg_new is dropped (on a new connection when
the owner connection died) and the row says failed: the live table is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from potato_runs.domain.errors import DomainError, ErrorKind, Reason
from potato_runs.storage.citus import is_distributed
from potato_runs.storage.errors import DB_FAILURES, map_db_error
from potato_runs.storage.migrate import _MIGRATION_LOCK
from potato_runs.storage.roles import grant_app_privileges

log = logging.getLogger(__name__)

OwnerConnect = Callable[[], Awaitable[asyncpg.Connection]]
"""Opens a connection that acts as the schema's owner (app.Migrator.connect)."""
Progress = Callable[[str, int], None]
"""progress(phase, rows): a phase (build, index, catchup, swap, drop) started (rows -1) or
ended with `rows` rows; also ("pass", users) after each catch-up pass and ("locked", -1)
inside the swap once its locks are held (writes wait until it commits)."""

LIVE = "runs"
NEW = "runs_bg_new"
OLD = "runs_bg_old"
NEW_SUFFIX = "_bgn"
OLD_SUFFIX = "_bgo"
REBUILD_LOCK_KEY = "potato-runs blue-green rebuild"
CONFIRM = "rebuild-all-runs"
"""What RebuildAllRunsRequest.confirm must say for a real (not validate_only) rebuild."""

DISTRIBUTED_HINT = ("the blue/green rebuild swaps the runs table by DDL, which a Citus "
                    "(distributed) schema refuses; rebuild per user instead, which runs on "
                    "the user's worker: `potato-runs rebuild --all` (without --blue-green)")

OWNER_HINT = ("the blue/green rebuild runs DDL, and this server's database role (potato_app) "
              "cannot: serve with --migrate-dsn (POTATO_MIGRATE_DSN) of the owner role, or on "
              "the embedded cluster, or run it offline: `potato-runs rebuild --all --blue-green "
              "--dsn <owner dsn>`")

RUN_JSON = ("jsonb_build_object('run_id', {a}.run_id, 'start_date', {a}.start_date, "
            "'end_date', {a}.end_date, 'day_count', {a}.day_count, 'active', {a}.active, "
            "'created_at', {a}.created_at, 'updated_at', {a}.updated_at, "
            "'last_extended_at', {a}.last_extended_at)")
"""potato_run_json() (0002) for a row of either table."""

RUN_COLS = ("run_id, user_id, start_date, end_date, day_count, active, created_at, "
            "updated_at, last_extended_at")

ISLANDS_SQL = """
SELECT user_id, s, e, e = max(e) OVER (PARTITION BY user_id) AS active
  FROM (SELECT user_id, min(checkin_date) AS s, max(checkin_date) AS e
          FROM (SELECT user_id, checkin_date,
                       checkin_date - (row_number() OVER (PARTITION BY user_id
                                                          ORDER BY checkin_date))::int AS grp
                  FROM daily_checkins {facts_filter}) f
         GROUP BY user_id, grp) i
"""
"""The runs the facts give (gaps and islands), `active` = the user's latest run."""

BARE_SELECT_SQL = ("SELECT count(*), coalesce(sum(e - s + 1), 0) FROM ("
                   + ISLANDS_SQL.format(facts_filter="") + ") t")
"""The bare gaps-and-islands SELECT over every fact (scripts/bench_bluegreen.py's yardstick)."""

FILL_SQL = """
INSERT INTO {new} (run_id, user_id, start_date, end_date, day_count, active,
                   created_at, updated_at, last_extended_at)
OVERRIDING SYSTEM VALUE
SELECT coalesce(l.run_id, nextval($1::text::regclass)), t.user_id, t.s, t.e, t.e - t.s + 1, t.active,
       coalesce(l.created_at, $2),
       CASE WHEN l.run_id IS NULL OR l.active IS DISTINCT FROM t.active
                 OR l.day_count IS DISTINCT FROM t.e - t.s + 1 THEN $2
            ELSE l.updated_at END,
       l.last_extended_at
  FROM ({islands}) t
  LEFT JOIN {live} l ON l.user_id = t.user_id AND l.start_date = t.s AND l.end_date = t.e
                    {live_filter}
"""
"""$1 the live identity sequence, $2 now; with a user filter, $3 uuid[]."""


def _fill_sql(some_users: bool, part: bool = False) -> str:
    """The fill of everyone, of the users $3 (catch-up), or of one range of users
    (`part`: $3 <= user_id < $4, NULL for an open end; the parallel build)."""
    where = ""
    if some_users:
        where = "user_id = ANY($3::uuid[])"
    elif part:
        where = "($3::uuid IS NULL OR user_id >= $3) AND ($4::uuid IS NULL OR user_id < $4)"
    return FILL_SQL.format(
        new=NEW, live=LIVE,
        islands=ISLANDS_SQL.format(facts_filter=f"WHERE {where}" if where else ""),
        live_filter=f"AND {where.replace('user_id', 'l.user_id')}" if where else "")


FULL_DIFF_SQL = f"""
SELECT count(*) FILTER (WHERE l.run_id IS NOT NULL AND n.run_id IS NOT NULL) AS kept,
       coalesce(array_agg(DISTINCT coalesce(l.user_id, n.user_id)) FILTER (
           WHERE ({', '.join('l.' + c for c in RUN_COLS.split(', '))})
                 IS DISTINCT FROM ({', '.join('n.' + c for c in RUN_COLS.split(', '))})),
                '{{}}') AS users
  FROM {LIVE} l FULL JOIN {NEW} n ON n.run_id = l.run_id
"""
"""Runs that kept their id, and the users whose runs differ between the tables."""

USERS_DIFF_SQL = f"""
SELECT array(SELECT DISTINCT user_id FROM (
    (SELECT {RUN_COLS} FROM {LIVE} WHERE user_id = ANY($1::uuid[])
     EXCEPT ALL SELECT {RUN_COLS} FROM {NEW} WHERE user_id = ANY($1::uuid[]))
    UNION ALL
    (SELECT {RUN_COLS} FROM {NEW} WHERE user_id = ANY($1::uuid[])
     EXCEPT ALL SELECT {RUN_COLS} FROM {LIVE} WHERE user_id = ANY($1::uuid[]))) d)
"""

EVENT_ROWS_SQL = f"""
SELECT u.user_id,
       (SELECT coalesce(jsonb_agg({RUN_JSON.format(a='r')} ORDER BY r.start_date), '[]')
          FROM {LIVE} r WHERE r.user_id = u.user_id)::text AS before,
       (SELECT coalesce(jsonb_agg({RUN_JSON.format(a='n')} ORDER BY n.start_date), '[]')
          FROM {NEW} n WHERE n.user_id = u.user_id)::text AS after
  FROM unnest($1::uuid[]) AS u(user_id)
"""


@dataclass(frozen=True)
class BlueGreenSettings:
    lock_timeout: float = 0.4
    """Seconds any one lock wait of the swap may take (writes queue behind it)."""
    swap_attempts: int = 8
    catchup_target: int = 500
    """Catch-up passes repeat until one recomputes at most this many users."""
    max_catchup_passes: int = 6
    settle_timeout: float = 60.0
    """Seconds to wait for the transactions open at a watermark (else the rebuild fails)."""
    drain_timeout: float = 30.0
    """Seconds to wait, after the swap, for the transactions open at its commit."""
    build_sessions: int = 1
    """Sessions that fill the new table in parallel, each a range of users, on one exported
    snapshot. One: two made the fill faster (0.9 s against 1.4 s for 120k runs) but the
    constraints after it slower (5.5 s against 4.4 s: the heap interleaved two ranges of
    users), on the 2-core development machine (scripts/bench_bluegreen.py)."""
    work_mem: str = "256MB"
    maintenance_work_mem: str = "512MB"


@dataclass
class BlueGreenReport:
    rebuild_id: int = 0
    validate_only: bool = False
    facts: int = 0
    users: int = 0
    runs: int = 0
    runs_kept: int = 0
    """Runs that kept their run_id (counted at the full diff, before the last catch-ups)."""
    users_changed: int = 0
    catchup_users: list[int] = field(default_factory=list)
    swap_attempts: int = 0
    max_write_block_seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    old_table_dropped: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class _SwapBusy(Exception):
    """A lock of the swap was not granted within lock_timeout (the attempt rolled back)."""


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tmp(name: str, suffix: str) -> str:
    return (name[: 63 - len(suffix)] + suffix)


@dataclass
class _State:
    now: dt.datetime
    seq: str = ""                 # the live identity sequence (regclass text)
    watermark: int = 0
    diffed: bool = False
    events: dict[uuid.UUID, tuple[str, str]] = field(default_factory=dict)
    # (temporary name, final name) of the new table's constraints and indexes
    con_names: list[tuple[str, str]] = field(default_factory=list)
    idx_names: list[tuple[str, str]] = field(default_factory=list)


class BlueGreenRebuild:
    """One blue/green rebuild; `run()` is the whole protocol (module docstring)."""

    def __init__(self, connect: OwnerConnect, *, now: dt.datetime, replica: str,
                 settings: BlueGreenSettings | None = None,
                 progress: Progress | None = None, request_id: str | None = None) -> None:
        self._connect = connect
        self._settings = settings or BlueGreenSettings()
        self._progress = progress or (lambda phase, rows: None)
        self._replica = replica
        self._request_id = request_id
        self._state = _State(now=now)
        self.report = BlueGreenReport()

    # ------------------------------------------------------------------ entry point
    async def run(self, *, validate_only: bool = False) -> BlueGreenReport:
        started = time.perf_counter()
        self.report.validate_only = validate_only
        try:
            conn = await self._connect()
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        try:
            if await is_distributed(conn):
                # Tried on the Citus tier: the new table would be a coordinator-local
                # table and the swap fails (tests/citus/test_admin.py).
                raise DomainError(ErrorKind.FAILED_PRECONDITION, Reason.DISTRIBUTED_SCHEMA,
                                  DISTRIBUTED_HINT)
            await self._prepare(conn)
            if validate_only:
                await self._count(conn)
                return self.report
            await self._drop_leftovers(conn)
            await self._begin_record(conn)
            try:
                await self._phase("build", self._build(conn))
                await self._phase("index", self._index(conn))
                await self._catch_up_and_swap(conn)
            except BaseException as exc:
                await self._abandon(conn, exc)
                raise
            try:   # the new table is live: what follows cannot fail the rebuild any more
                await self._phase("drop", self._drop_old(conn))
                self.report.runs = int(await conn.fetchval(f"SELECT count(*) FROM {LIVE}"))
            except DB_FAILURES as exc:
                log.warning("blue/green rebuild %d swapped; dropping %s failed (the next "
                            "rebuild drops it): %s", self.report.rebuild_id, OLD, exc)
            self.report.seconds = round(time.perf_counter() - started, 3)
            await self._finish_record(conn)
            return self.report
        except _SwapBusy as exc:
            raise DomainError(ErrorKind.ABORTED, Reason.CONTENTION,
                              f"the tables stayed busy through {self.report.swap_attempts} swap "
                              f"attempts ({exc}); the live runs table is unchanged: retry when "
                              "no long read (a full check or diff) is running") from exc
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        finally:
            await _close(conn)

    async def _phase(self, name: str, work: Awaitable[int]) -> None:
        self._progress(name, -1)
        t0 = time.perf_counter()
        rows = await work
        self.report.phase_seconds[name] = round(
            self.report.phase_seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
        self._progress(name, rows)

    # ------------------------------------------------------------------ prepare
    async def _prepare(self, conn: asyncpg.Connection) -> None:
        owner = await conn.fetchval(
            """SELECT pg_has_role(current_user, c.relowner, 'USAGE')
                      AND has_schema_privilege(c.relnamespace, 'CREATE')
                 FROM pg_class c WHERE c.oid = to_regclass($1)""", LIVE)
        if not owner:
            raise DomainError(ErrorKind.FAILED_PRECONDITION, Reason.OWNER_CONNECTION_REQUIRED,
                              "no connection as the owner of the runs table: " + OWNER_HINT)
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))",
                                   REBUILD_LOCK_KEY):
            raise DomainError(ErrorKind.ABORTED, Reason.REBUILD_IN_PROGRESS,
                              "another blue/green rebuild is running; wait for it to finish")
        await conn.execute(f"SET work_mem = '{self._settings.work_mem}'; "
                           f"SET maintenance_work_mem = '{self._settings.maintenance_work_mem}'; "
                           "SET jit = off")
        self._state.seq = str(await conn.fetchval(
            "SELECT pg_get_serial_sequence($1, 'run_id')", LIVE))

    async def _drop_leftovers(self, conn: asyncpg.Connection) -> None:
        """Leftovers of an earlier rebuild: we hold the rebuild lock, so nobody builds
        them; a kept old table is dropped once the transactions open now have ended."""
        await conn.execute(f"DROP TABLE IF EXISTS {NEW}")
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", OLD):
            if not await self._drain(conn, await self._open_vxids(conn)):
                # The swap renames the live table to OLD: it cannot while OLD exists.
                raise DomainError(
                    ErrorKind.ABORTED, Reason.CONTENTION,
                    f"the old table of an earlier rebuild ({OLD}) is still in use by a "
                    f"transaction open for over {self._settings.drain_timeout:.0f} s; the "
                    "live runs table is unchanged: run the rebuild again when it has ended")
            await self._drop_old_objects(conn)

    async def _count(self, conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow(
            f"""SELECT (SELECT count(*) FROM daily_checkins) AS facts,
                       (SELECT count(*) FROM users) AS users,
                       (SELECT count(*) FROM {LIVE}) AS runs""")
        assert row is not None
        self.report.facts, self.report.users, self.report.runs = (
            int(row["facts"]), int(row["users"]), int(row["runs"]))

    async def _begin_record(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            """UPDATE runs_rebuilds SET status = 'failed', finished_at = now(),
                      error = 'abandoned: its process ended before it finished'
                WHERE status = 'running'""")
        self.report.rebuild_id = int(await conn.fetchval(
            """INSERT INTO runs_rebuilds (status, replica, started_at)
               VALUES ('running', $1, now()) RETURNING rebuild_id""", self._replica))

    # ------------------------------------------------------------------ watermark
    async def _watermark(self, conn: asyncpg.Connection) -> int:
        """P such that every committed run event with id <= P is visible to any snapshot
        taken after this returns (module docstring, step 4)."""
        seq = await conn.fetchval("SELECT pg_get_serial_sequence('run_events', 'event_id')")
        p = int(await conn.fetchval(
            f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {seq}"))
        # In-progress transactions of this database (a snapshot lists the whole cluster's;
        # a transaction of another database writes no run event here).
        xids = list(await conn.fetchval(
            """SELECT array(
                   SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) x
                    WHERE NOT EXISTS (
                          SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                           WHERE l.locktype = 'transactionid' AND l.granted
                             AND l.mode = 'ExclusiveLock'
                             AND l.transactionid::text = (x::text::bigint % 4294967296)::text
                             AND a.datname IS DISTINCT FROM current_database()))"""))
        deadline = time.monotonic() + self._settings.settle_timeout
        while xids:
            xids = list(await conn.fetchval(
                "SELECT array(SELECT x FROM unnest($1::text[]) x "
                "WHERE pg_xact_status(x::xid8) = 'in progress')", xids))
            if xids and time.monotonic() > deadline:
                raise DomainError(ErrorKind.ABORTED, Reason.CONTENTION,
                                  f"{len(xids)} transaction(s) older than the rebuild stayed "
                                  f"open for {self._settings.settle_timeout:.0f} s; the live "
                                  "runs table is unchanged")
            if xids:
                await asyncio.sleep(0.005)
        return p

    # ------------------------------------------------------------------ build
    async def _constraints(self, conn: asyncpg.Connection) -> list[Any]:
        """The live table's constraints."""
        return list(await conn.fetch(
            """SELECT conname, contype, pg_get_constraintdef(oid) AS def,
                       contype IN ('p', 'u', 'x') AS indexed
                  FROM pg_constraint WHERE conrelid = to_regclass($1)
                 ORDER BY CASE contype WHEN 'p' THEN 0 WHEN 'c' THEN 1 WHEN 'u' THEN 2
                                       WHEN 'x' THEN 3 ELSE 4 END, conname""", LIVE))

    async def _add_constraint(self, conn: asyncpg.Connection, c: Any) -> str:
        name: str = c["conname"]
        if c["indexed"]:
            name = _tmp(c["conname"], NEW_SUFFIX)
            self._state.con_names.append((name, c["conname"]))
        if c["contype"] == "f":
            await self._with_lock_retries(
                conn, f"ALTER TABLE {NEW} ADD CONSTRAINT {_q(name)} {c['def']} NOT VALID")
        else:
            await conn.execute(f"ALTER TABLE {NEW} ADD CONSTRAINT {_q(name)} {c['def']}")
        return name

    async def _build(self, conn: asyncpg.Connection) -> int:
        """The table without constraints, and the fill in `build_sessions` parallel
        sessions sharing one exported REPEATABLE READ snapshot (each a range of users).

        Why no constraint before the load: the two GiST exclusion constraints dominate
        the rebuild either way, and they cost less after it. For 120k runs (1M check-ins,
        fsync on, the 2-core development machine, scripts/bench_bluegreen.py): a fill into
        a table that has them took 6.3 s; a fill into the bare table 1.4 s, then the
        constraints (each builds its GiST index, about 1.1 s, and probes it once per row)
        and the other indexes 4.4 s: 5.8 s. Two fill sessions made the fill 0.9 s but the
        constraints 5.5 s (the heap no longer in user order); GiST `buffering=off` did not
        help."""
        await conn.execute(
            f"CREATE TABLE {NEW} (LIKE {LIVE} INCLUDING DEFAULTS INCLUDING IDENTITY "
            "INCLUDING STORAGE INCLUDING COMPRESSION)")
        self._state.watermark = await self._watermark(conn)
        parts = max(1, self._settings.build_sessions)
        # Ranges of user_id of about equal size: each session reads its facts through the
        # primary key and inserts its users in order, into its own part of the GiST trees.
        users = int(await conn.fetchval("SELECT count(*) FROM users"))
        bounds: list[uuid.UUID | None] = [None]
        for k in range(1, parts):
            bounds.append(await conn.fetchval(
                "SELECT user_id FROM users ORDER BY user_id OFFSET $1 LIMIT 1",
                users * k // parts))
        bounds.append(None)
        helpers = [await self._connect() for _ in range(parts - 1)]
        try:
            for h in helpers:
                await h.execute(f"SET work_mem = '{self._settings.work_mem}'; SET jit = off")
            txs = [c.transaction(isolation="repeatable_read") for c in (conn, *helpers)]
            for tx in txs:
                await tx.start()
            try:
                snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
                for h in helpers:
                    await h.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                statuses = await asyncio.gather(*(
                    c.execute(_fill_sql(False, part=True), self._state.seq, self._state.now,
                              bounds[k], bounds[k + 1])
                    for k, c in enumerate((conn, *helpers))))
                row = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM daily_checkins) AS facts, "
                    "(SELECT count(*) FROM users) AS users")
            except BaseException:
                for tx in txs:
                    with contextlib.suppress(*DB_FAILURES):
                        await tx.rollback()
                raise
            for tx in reversed(txs):   # the helpers' parts first: the main one commits last
                await tx.commit()
        finally:
            for h in helpers:
                await _close(h)
        assert row is not None
        self.report.facts, self.report.users = int(row["facts"]), int(row["users"])
        self.report.runs = sum(int(st.split()[-1]) for st in statuses)
        return self.report.runs

    # ------------------------------------------------------------------ index
    async def _index(self, conn: asyncpg.Connection) -> int:
        schema = await conn.fetchval("SELECT current_schema()")
        cons = await self._constraints(conn)
        fks = [await self._add_constraint(conn, c) for c in cons]
        fks = [name for name, c in zip(fks, cons, strict=True) if c["contype"] == "f"]
        for name in fks:
            await conn.execute(f"ALTER TABLE {NEW} VALIDATE CONSTRAINT {_q(name)}")
        indexes = await conn.fetch(
            """SELECT c.relname, pg_get_indexdef(i.indexrelid) AS def
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = to_regclass($1)
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                                                   AND k.conrelid = i.indrelid)
                ORDER BY c.relname""", LIVE)
        pattern = re.compile(r"^(CREATE (?:UNIQUE )?INDEX )(\S+)( ON )(?:ONLY )?(\S+)( USING .*)$",
                             re.S)
        for ix in indexes:
            m = pattern.match(ix["def"])
            if m is None:
                raise DomainError(ErrorKind.FAILED_PRECONDITION, Reason.PROJECTION_INCONSISTENT,
                                  f"the runs table has an index this rebuild cannot copy: "
                                  f"{ix['def']}; the live runs table is unchanged")
            tmp = _tmp(ix["relname"], NEW_SUFFIX)
            self._state.idx_names.append((tmp, ix["relname"]))
            await conn.execute(f"{m[1]}{_q(tmp)}{m[3]}{_q(schema)}.{NEW}{m[5]}")
        live_owner = await conn.fetchval(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass($1)", LIVE)
        if live_owner != await conn.fetchval("SELECT current_user::text"):
            await conn.execute(f"ALTER TABLE {NEW} OWNER TO {_q(live_owner)}")
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:   # concurrent GRANTs on one object fail: under the migration lock, like migrate()
            await grant_app_privileges(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.execute(f"ANALYZE {NEW}")
        return len(cons) + len(indexes)

    async def _with_lock_retries(self, conn: asyncpg.Connection, sql: str) -> None:
        """A statement that locks a table writes use, with lock_timeout and retries."""
        for attempt in range(self._settings.swap_attempts):
            try:
                async with conn.transaction():
                    await conn.execute(
                        f"SET LOCAL lock_timeout = '{int(self._settings.lock_timeout * 1000)}ms'")
                    await conn.execute(sql)
                return
            except asyncpg.LockNotAvailableError:
                if attempt + 1 == self._settings.swap_attempts:
                    raise _SwapBusy("the users table stayed locked") from None
                await asyncio.sleep(0.05 * (attempt + 1))

    # ------------------------------------------------------------------ catch-up
    async def _recompute(self, conn: asyncpg.Connection, users: list[uuid.UUID]) -> None:
        if users:
            await conn.execute(f"DELETE FROM {NEW} WHERE user_id = ANY($1::uuid[])", users)
            await conn.execute(_fill_sql(True), self._state.seq, self._state.now, users)

    async def _event_rows(self, conn: asyncpg.Connection,
                          users: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str]]:
        if not users:
            return {}
        rows = await conn.fetch(EVENT_ROWS_SQL, users)
        return {r["user_id"]: (r["before"], r["after"]) for r in rows}

    async def _rediff(self, conn: asyncpg.Connection, users: list[uuid.UUID]) -> None:
        """The events of `users` (just recomputed) from the tables as they are now."""
        for u in users:
            self._state.events.pop(u, None)
        if users:
            changed = list(await conn.fetchval(USERS_DIFF_SQL, users))
            self._state.events.update(await self._event_rows(conn, changed))

    async def _touched(self, conn: asyncpg.Connection, after: int) -> list[uuid.UUID]:
        return list(await conn.fetchval(
            "SELECT array(SELECT DISTINCT user_id FROM run_events WHERE event_id > $1)", after))

    async def _catch_up_pass(self, conn: asyncpg.Connection) -> int:
        nxt = await self._watermark(conn)
        async with conn.transaction(isolation="repeatable_read"):
            users = await self._touched(conn, self._state.watermark)
            await self._recompute(conn, users)
            if self._state.diffed:
                await self._rediff(conn, users)
            else:
                row = await conn.fetchrow(FULL_DIFF_SQL)
                assert row is not None
                self.report.runs_kept = int(row["kept"])
                self._state.events = await self._event_rows(conn, list(row["users"]))
                self._state.diffed = True
        self._state.watermark = nxt
        self.report.catchup_users.append(len(users))
        self._progress("pass", len(users))
        return len(users)

    def _add_time(self, phase: str, since: float) -> None:
        self.report.phase_seconds[phase] = round(
            self.report.phase_seconds.get(phase, 0.0) + time.perf_counter() - since, 3)

    async def _catch_up_and_swap(self, conn: asyncpg.Connection) -> None:
        """Catch-up passes, then a swap attempt; after a refused attempt, more of both."""
        passes = 0
        for attempt in range(self._settings.swap_attempts):
            self._progress("catchup", -1)
            t0 = time.perf_counter()
            while True:
                n = await self._catch_up_pass(conn)
                passes += 1
                if n <= self._settings.catchup_target or (  # the first pass diffed
                        passes >= self._settings.max_catchup_passes):
                    break
            self._add_time("catchup", t0)
            self.report.swap_attempts = attempt + 1
            self._progress("swap", -1)
            t0 = time.perf_counter()
            saved = dict(self._state.events)
            try:
                await self._swap(conn)
                self._add_time("swap", t0)
                self._progress("swap", self.report.users_changed)
                return
            except _SwapBusy as exc:
                self._add_time("swap", t0)
                self._state.events = saved
                log.info("blue/green swap attempt %d: %s", attempt + 1, exc)
                await asyncio.sleep(0.05 * (attempt + 1))
        raise _SwapBusy("locks not granted within lock_timeout")

    # ------------------------------------------------------------------ swap
    async def _swap(self, conn: asyncpg.Connection) -> None:
        st = self._state
        blocked_from = time.perf_counter()
        try:
            async with conn.transaction():
                await conn.execute(
                    f"SET LOCAL lock_timeout = '{int(self._settings.lock_timeout * 1000)}ms'")
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                           _MIGRATION_LOCK):
                    raise _SwapBusy("a migration is running")
                blocked_from = time.perf_counter()
                await conn.execute("LOCK TABLE daily_checkins IN SHARE MODE")
                await conn.execute(f"LOCK TABLE {LIVE} IN ACCESS EXCLUSIVE MODE")
                self._progress("locked", -1)   # writes wait from here to the commit
                # The last catch-up: no write is in flight, so this one is complete.
                users = await self._touched(conn, st.watermark)
                await self._recompute(conn, users)
                await self._rediff(conn, users)
                self.report.catchup_users.append(len(users))
                await self._rename(conn)
                await self._retype_functions(conn)
                changed = sorted(st.events)
                if changed:
                    await conn.execute(
                        """INSERT INTO run_events (user_id, kind, cause, before, after,
                                                   occurred_at, request_id)
                           SELECT u.user_id, 'run_rebuilt', 'rebuild', u.b::jsonb, u.a::jsonb,
                                  $4, $5
                             FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(user_id, b, a)""",
                        changed, [st.events[u][0] for u in changed],
                        [st.events[u][1] for u in changed], st.now, self._request_id)
                    # Lifetime totals count runs (monthly totals come from the facts).
                    await conn.execute(
                        "SELECT potato_refresh_lifetime_totals(u, $2) "
                        "FROM unnest($1::uuid[]) AS u ORDER BY u", changed, st.now)
                self.report.users_changed = len(changed)
                await self._update_record(conn, "swapped")
            self.report.max_write_block_seconds = max(
                self.report.max_write_block_seconds, round(time.perf_counter() - blocked_from, 4))
        except asyncpg.LockNotAvailableError as exc:
            self.report.max_write_block_seconds = max(
                self.report.max_write_block_seconds, round(time.perf_counter() - blocked_from, 4))
            raise _SwapBusy(str(exc)) from exc

    async def _rename(self, conn: asyncpg.Connection) -> None:
        st = self._state
        old_seq = st.seq
        new_seq = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'run_id')", NEW)
        # The new identity continues after every id the old one gave (never reused).
        await conn.execute(f"SELECT setval($1::text::regclass, s.last_value, s.is_called) "
                           f"FROM {old_seq} s", new_seq)
        live_cons = [r[0] for r in await conn.fetch(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass($1) "
            "AND contype IN ('p', 'u', 'x')", LIVE)]
        live_idx = [r[0] for r in await conn.fetch(
            """SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = to_regclass($1)
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                                                   AND k.conrelid = i.indrelid)""",
            LIVE)]
        old_seq_name = await conn.fetchval("SELECT relname FROM pg_class WHERE oid = $1::text::regclass",
                                           old_seq)
        new_seq_name = await conn.fetchval("SELECT relname FROM pg_class WHERE oid = $1::text::regclass",
                                           new_seq)
        stmts = [f"ALTER TABLE {LIVE} RENAME TO {OLD}"]
        stmts += [f"ALTER TABLE {OLD} RENAME CONSTRAINT {_q(c)} TO {_q(_tmp(c, OLD_SUFFIX))}"
                  for c in live_cons]
        stmts += [f"ALTER INDEX {_q(i)} RENAME TO {_q(_tmp(i, OLD_SUFFIX))}" for i in live_idx]
        stmts.append(f"ALTER SEQUENCE {_q(old_seq_name)} RENAME TO {_q(OLD + '_run_id_seq')}")
        stmts.append(f"ALTER TABLE {NEW} RENAME TO {LIVE}")
        stmts += [f"ALTER TABLE {LIVE} RENAME CONSTRAINT {_q(t)} TO {_q(f)}"
                  for t, f in st.con_names]
        stmts += [f"ALTER INDEX {_q(t)} RENAME TO {_q(f)}" for t, f in st.idx_names]
        stmts.append(f"ALTER SEQUENCE {_q(new_seq_name)} RENAME TO {_q(old_seq_name)}")
        await conn.execute(";\n".join(stmts))

    async def _retype_functions(self, conn: asyncpg.Connection) -> None:
        """Functions whose signature names the old row type get a twin for the new one;
        PL/pgSQL functions whose body names `runs` are replaced by themselves (recompiled
        by every session at its next call). Grants as migrate() gives them."""
        typed = await conn.fetch(
            """SELECT p.oid, pg_get_functiondef(p.oid) AS def, pg_get_userbyid(p.proowner) AS owner
                 FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
                WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_type'::regclass
                  AND d.refobjid = (SELECT reltype FROM pg_class WHERE oid = to_regclass($1))""",
            OLD)
        me = await conn.fetchval("SELECT current_user::text")
        header_type = re.compile(rf"\b{OLD}\b")
        for f in typed:
            # The old function replaced by itself: the cached plans that call it (in calls
            # in flight across the swap, whose `runs` variables PL/pgSQL re-looks-up by
            # name after the rename) are invalidated and re-planned for the new type.
            await conn.execute(f["def"])
            head, sep, body = f["def"].partition("\nAS ")
            await conn.execute(header_type.sub(LIVE, head) + sep + body)
            if f["owner"] != me:
                ident = header_type.sub(LIVE, await conn.fetchval(
                    "SELECT $1::oid::regprocedure::text", f["oid"]))
                await conn.execute(f"ALTER FUNCTION {ident} OWNER TO {_q(f['owner'])}")
        bodies = await conn.fetch(
            r"""SELECT pg_get_functiondef(p.oid) AS def
                  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                 WHERE l.lanname = 'plpgsql' AND p.pronamespace = current_schema()::regnamespace
                   AND p.prosrc ~ '\mruns\M' AND NOT p.oid = ANY($1::oid[])""",
            [f["oid"] for f in typed])
        for b in bodies:
            await conn.execute(b["def"])
        await grant_app_privileges(conn)

    # ------------------------------------------------------------------ drop
    async def _open_vxids(self, conn: asyncpg.Connection) -> list[str]:
        """The transactions open now in this database (their virtualxid locks). Not
        filtered on pg_stat_activity.backend_type: the owner role (no pg_read_all_stats)
        sees NULL there for potato_app's sessions, the very ones to wait for; datname it
        sees. A background worker's transaction may be waited for too (bounded)."""
        return list(await conn.fetchval(
            """SELECT array(SELECT l.virtualxid FROM pg_locks l
                             JOIN pg_stat_activity a ON a.pid = l.pid
                            WHERE l.locktype = 'virtualxid' AND l.granted
                              AND l.pid <> pg_backend_pid()
                              AND a.datname = current_database())"""))

    async def _drain(self, conn: asyncpg.Connection, vxids: list[str]) -> bool:
        deadline = time.monotonic() + self._settings.drain_timeout
        while vxids:
            vxids = list(await conn.fetchval(
                "SELECT array(SELECT virtualxid FROM pg_locks WHERE locktype = 'virtualxid' "
                "AND virtualxid = ANY($1::text[]))", vxids))
            if not vxids:
                break
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _drop_old_objects(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute(
                f"SET LOCAL lock_timeout = '{int(self._settings.lock_timeout * 1000)}ms'")
            for f in await conn.fetch(
                    """SELECT p.oid::regprocedure::text AS ident
                         FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
                        WHERE d.classid = 'pg_proc'::regclass
                          AND d.refclassid = 'pg_type'::regclass
                          AND d.refobjid = (SELECT reltype FROM pg_class
                                             WHERE oid = to_regclass($1))""", OLD):
                await conn.execute(f"DROP FUNCTION {f['ident']}")
            await conn.execute(f"DROP TABLE {OLD}")

    async def _drop_old(self, conn: asyncpg.Connection) -> int:
        vxids = await self._open_vxids(conn)
        if not await self._drain(conn, vxids):
            log.warning("blue/green rebuild %d: transactions older than the swap are still "
                        "open; %s is kept (the next rebuild drops it)", self.report.rebuild_id,
                        OLD)
            return 0
        try:
            await self._drop_old_objects(conn)
        except asyncpg.LockNotAvailableError:
            log.warning("blue/green rebuild %d: %s is busy; kept (the next rebuild drops it)",
                        self.report.rebuild_id, OLD)
            return 0
        self.report.old_table_dropped = True
        return 1

    # ------------------------------------------------------------------ record
    async def _update_record(self, conn: asyncpg.Connection, status: str,
                             error: str | None = None) -> None:
        r = self.report
        await conn.execute(
            """UPDATE runs_rebuilds SET status = $2, finished_at = now(), facts = $3, runs = $4,
                      runs_kept = $5, users_changed = $6, catchup_users = $7, swap_attempts = $8,
                      max_write_block_seconds = $9, phase_seconds = $10::jsonb,
                      old_table_dropped = $11, error = $12
                WHERE rebuild_id = $1""",
            r.rebuild_id, status, r.facts, r.runs, r.runs_kept, r.users_changed,
            r.catchup_users, r.swap_attempts, r.max_write_block_seconds,
            json.dumps(r.phase_seconds), r.old_table_dropped, error)

    async def _finish_record(self, conn: asyncpg.Connection) -> None:
        try:
            await self._update_record(conn, "swapped")
        except DB_FAILURES as exc:   # the swap is done; the record is best effort now
            log.warning("blue/green rebuild %d: could not update its record: %s",
                        self.report.rebuild_id, exc)

    async def _abandon(self, conn: asyncpg.Connection, exc: BaseException) -> None:
        """Before the swap committed: drop the half-built table, record the failure. On a
        new connection when this one is broken (e.g. its backend was terminated)."""
        error = str(exc) or type(exc).__name__
        for attempt in range(2):
            c = conn
            try:
                if attempt == 1 or conn.is_closed():
                    c = await self._connect()
                if c.is_in_transaction():
                    raise asyncpg.InterfaceError("connection still in a transaction")
                await c.execute(f"DROP TABLE IF EXISTS {NEW}")
                if self.report.rebuild_id:
                    await c.execute(
                        "UPDATE runs_rebuilds SET status = 'failed', finished_at = now(), "
                        "error = $2 WHERE rebuild_id = $1 AND status = 'running'",
                        self.report.rebuild_id, error[:2000])
                return
            except DB_FAILURES as cleanup:
                log.warning("blue/green rebuild %d: cleanup attempt %d failed: %s",
                            self.report.rebuild_id, attempt + 1, cleanup)
            finally:
                if c is not conn:
                    await _close(c)


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5)
    except (*DB_FAILURES, asyncio.CancelledError):
        conn.terminate()
