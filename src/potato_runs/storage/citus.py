"""The schema on Citus: every table of user data distributed by user_id, co-located with
`users`; the flags and their audit as reference tables; every function propagated to the
workers, and every function with a `p_user` argument delegated to the worker that holds
that user (docs/decisions.adrs.md, ADR-0006).

`distribute()` runs after the migrations (`potato-runs migrate --citus`, and every later
`migrate` on a database that has the citus extension, so a table or function a later
migration adds is distributed too). It is idempotent: what is distributed already is left
as it is. It needs the citus extension in the database (CREATE EXTENSION citus is a
superuser's step: docs/playbooks.md "Move from single PostgreSQL to Citus"), and a role
that owns the tables and can log in to the workers.

What stays on the coordinator, as plain local tables: the tables with no user data, which
only the coordinator's sessions read and write (schema_migrations, shadow_comparisons,
totals_reconcile_runs, invariant_check_runs, run_events_retention, runs_rebuilds).
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

CITUS_SCHEMA = Path(__file__).with_name("citus_schema.sql")

DISTRIBUTED_TABLES = ("users", "daily_checkins", "runs", "run_events", "run_totals",
                      "user_totals", "request_ids", "shadow_mismatches",
                      "invariant_violations", "potato_event_probes")
"""By user_id, co-located with the first (`users`): one user's rows of every table are
on one shard group, hence on one worker."""
REFERENCE_TABLES = ("feature_flags", "feature_flag_changes")
"""A copy on every node: read everywhere, written rarely (a flag change)."""
COLOCATE_WITH = DISTRIBUTED_TABLES[0]
DISTRIBUTION_ARGUMENT = "p_user"
FORCE_DELEGATION = frozenset({"potato_lock_user(uuid)", "potato_set_run_checks(uuid,boolean)"})
"""Delegated even inside a transaction block, which they pin to the user's worker
(migration 0013): the first statements of the admin paths' multi-statement writes."""

# Triggers a Citus deployment drops: a trigger on a distributed or reference table runs on
# its shards, where Citus cannot vouch for what it does (citus.enable_unsafe_triggers).
#  - run_events_xid_first (0009) assigns the transaction id before an event id is drawn:
#    potato_event_id() does that itself on Citus.
#  - feature_flags_notify (0003) NOTIFYs flag changes: a reference table is written with
#    two-phase commit, which refuses a transaction that NOTIFYs; the writer NOTIFYs after
#    its commit instead (storage/flags_repo.py).
DROPPED_TRIGGERS = (("run_events", "run_events_xid_first"),
                    ("feature_flags", "feature_flags_notify"))


class CitusError(RuntimeError):
    pass


async def has_citus(conn: asyncpg.Connection) -> bool:
    """Whether the database has the citus extension."""
    return bool(await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'citus'"))


async def is_distributed(conn: asyncpg.Connection) -> bool:
    """Whether the schema is distributed (run_events, the last table whose layout Citus
    changes, is a distributed table)."""
    if not await has_citus(conn):
        return False
    return bool(await conn.fetchval(
        "SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass('run_events')"))


async def distribute(conn: asyncpg.Connection, *, shard_count: int | None = None,
                     timeout: float = 600.0) -> list[str]:
    """Distributes what is not distributed yet; returns what it did, one line each."""
    if not await has_citus(conn):
        raise CitusError(
            "the citus extension is not in this database; as a superuser, run "
            "CREATE EXTENSION citus on the coordinator and every worker and add the workers "
            "(docs/playbooks.md, 'Move from single PostgreSQL to Citus')")
    done: list[str] = []
    if shard_count is not None:
        await conn.execute(f"SET citus.shard_count = {int(shard_count)}")
    distributed = {r[0] for r in await conn.fetch(
        "SELECT logicalrelid::regclass::text FROM pg_dist_partition")}

    async with conn.transaction():
        await conn.execute(CITUS_SCHEMA.read_text(encoding="utf-8"), timeout=timeout)
        for table, trigger in DROPPED_TRIGGERS:
            if await conn.fetchval("SELECT 1 FROM pg_trigger WHERE tgname = $1 AND "
                                   "tgrelid = to_regclass($2)", trigger, table):
                await conn.execute(f"DROP TRIGGER {trigger} ON {table}", timeout=timeout)
                done.append(f"dropped trigger {trigger} on {table}")
        if "run_events" not in distributed and await conn.fetchval(
                "SELECT attidentity <> '' FROM pg_attribute WHERE attrelid = 'run_events'::regclass"
                " AND attname = 'event_id'"):
            await conn.execute("""
                ALTER TABLE run_events ALTER COLUMN event_id DROP IDENTITY;
                CREATE SEQUENCE IF NOT EXISTS potato_event_counter AS bigint;
                ALTER TABLE run_events ALTER COLUMN event_id
                    SET DEFAULT potato_event_id(nextval('potato_event_counter'))""",
                               timeout=timeout)
            done.append("run_events.event_id: time-first ids (potato_event_id)")

    # The functions the tables' defaults call first: a worker must have them.
    for signature in ("potato_node_group()", "potato_event_id(bigint)"):
        await _distribute_function(conn, signature, None, timeout)

    for table in DISTRIBUTED_TABLES:
        if table in distributed:
            continue
        if table == COLOCATE_WITH:
            await conn.execute("SELECT create_distributed_table($1, 'user_id')", table,
                               timeout=timeout)
        else:
            await conn.execute("SELECT create_distributed_table($1, 'user_id', "
                               "colocate_with => $2)", table, COLOCATE_WITH, timeout=timeout)
        done.append(f"distributed {table} by user_id")
    for table in REFERENCE_TABLES:
        if table not in distributed:
            await conn.execute("SELECT create_reference_table($1)", table, timeout=timeout)
            done.append(f"reference table {table}")
            # Citus restarts an identity column's sequence on the coordinator, where a
            # reference table is written: on from the largest id it holds, not 1 again.
            for column, sequence in await conn.fetch(
                    """SELECT a.attname, pg_get_serial_sequence($1, a.attname)
                         FROM pg_attribute a
                        WHERE a.attrelid = $1::regclass AND a.attidentity <> ''""", table):
                await conn.execute(
                    f"SELECT setval($1, m) FROM (SELECT max({column}) AS m FROM {table}) t "
                    f"WHERE m IS NOT NULL", sequence, timeout=timeout)
    # One probe row per shard (citus_schema.sql): random ids until every shard has one.
    added = await conn.fetchval(_FILL_PROBES, timeout=timeout)
    if added:
        done.append(f"{added} event stream probes (one per shard)")
    # Distributing a table that holds rows copies them into the shards and leaves the
    # coordinator's own copy behind, hidden: truncate it (after all the tables, since
    # the foreign keys to `users` must be distributed too first).
    for table in (*DISTRIBUTED_TABLES, *REFERENCE_TABLES):
        if table not in distributed and await conn.fetchval(
                "SELECT pg_relation_size($1::regclass) > 0", table):
            await conn.execute("SELECT truncate_local_data_after_distributing_table($1)",
                               table, timeout=timeout)
    # A shard move (the rebalancer: docs/playbooks.md "Scale out") copies a shard with
    # logical replication, which needs a replica identity on every co-located table: a
    # table with no primary key (invariant_violations) identifies its rows in full.
    for table in DISTRIBUTED_TABLES:
        if await conn.fetchval(
                """SELECT c.relreplident = 'd' AND NOT EXISTS (
                              SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                                 AND i.indisprimary)
                     FROM pg_class c WHERE c.oid = $1::regclass""", table):
            await conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL", timeout=timeout)
            done.append(f"replica identity full on {table} (shard moves)")

    for signature, by_user in await conn.fetch(_FUNCTIONS, DISTRIBUTION_ARGUMENT):
        if await _distribute_function(conn, signature,
                                      DISTRIBUTION_ARGUMENT if by_user else None, timeout):
            done.append(f"{'delegated' if by_user else 'propagated'} {signature}")
    return done


_FILL_PROBES = """
WITH shards AS (
    SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'potato_event_probes'::regclass
), taken AS (
    SELECT get_shard_id_for_distribution_column('potato_event_probes', user_id) AS shardid
      FROM potato_event_probes
), picked AS (
    SELECT DISTINCT ON (s.shardid) s.u
      FROM (SELECT g.u, get_shard_id_for_distribution_column('potato_event_probes', g.u)
                       AS shardid
              FROM (SELECT gen_random_uuid() AS u
                      FROM generate_series(1, 64 * (SELECT count(*) FROM shards))) g) s
     WHERE s.shardid NOT IN (SELECT shardid FROM taken)
     ORDER BY s.shardid
), ins AS (
    INSERT INTO potato_event_probes (user_id) SELECT u FROM picked
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT count(*) FROM ins
"""
"""64 random ids per shard: a shard is left out with probability e^-64."""

_FUNCTIONS = """
SELECT p.oid::regprocedure::text,
       coalesce($1 = ANY (p.proargnames) AND
                (SELECT t FROM unnest(p.proargtypes::oid[], p.proargnames) AS a(t, n)
                  WHERE n = $1) = 'uuid'::regtype, false)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = current_schema() AND p.prokind = 'f' AND p.proname LIKE 'potato\\_%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                      AND d.deptype = 'e')
 ORDER BY 1
"""
"""The service's functions, and whether each is keyed on a `p_user uuid` argument."""


async def _distribute_function(conn: asyncpg.Connection, signature: str, argument: str | None,
                               timeout: float) -> bool:
    """create_distributed_function unless done; True when it was called."""
    current = await conn.fetchrow(
        """SELECT distribution_argument_index FROM pg_dist_object
            WHERE classid = 'pg_proc'::regclass AND objid = $1::regprocedure""", signature)
    if current is not None and (argument is None or
                                current["distribution_argument_index"] is not None):
        return False
    if argument is None:
        await conn.execute("SELECT create_distributed_function($1)", signature,
                           timeout=timeout)
    elif signature in FORCE_DELEGATION:
        await conn.execute("SELECT create_distributed_function($1, $2, colocate_with => $3, "
                           "force_delegation => true)",
                           signature, argument, COLOCATE_WITH, timeout=timeout)
    else:
        await conn.execute("SELECT create_distributed_function($1, $2, colocate_with => $3)",
                           signature, argument, COLOCATE_WITH, timeout=timeout)
    return True
