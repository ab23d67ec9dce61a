-- citus_schema.sql: what a Citus deployment needs beyond the migrations, applied by
-- storage/citus.py (`potato-runs migrate --citus`) before the tables are distributed.
-- Idempotent: every statement may run again. docs/decisions.adrs.md ADR-0006 explains the design.

-- The node group this runs on: 0 on the coordinator, 1.. on the workers
-- (pg_dist_local_group, one row on every node).
CREATE OR REPLACE FUNCTION potato_node_group() RETURNS integer
LANGUAGE sql STABLE AS $$ SELECT groupid FROM pg_dist_local_group $$;

-- Event ids on Citus: time first, then the node, then a counter (the Snowflake layout).
--
--   bit 62..22  milliseconds since 2025-01-01 UTC (41 bits: until 2094)
--   bit 21..12  the node group (10 bits: 1,024 nodes)
--   bit 11..0   potato_event_counter modulo 4,096
--
-- A plain sequence cannot serve: Citus gives each node its own range of a distributed
-- sequence (node group << 48 on), so ids drawn on worker 2 would all sort after every id
-- of worker 1, and the event stream, which hands events out in id order, could never
-- hand out worker 1's new events. Time-first ids sort across nodes by when they were
-- drawn. They are unique while a node draws fewer than 4,096 ids in one millisecond
-- (4 million a second: more than a node writes), and the primary key
-- (user_id, event_id) still refuses a duplicate within one user.
--
-- The transaction id comes first (pg_current_xact_id), then the clock: so every
-- transaction that draws an id below a node's clock reading T already held its
-- transaction id when T was read, and the stream's horizon (potato_event_snapshot)
-- finds it in progress or finished, never not yet started.
CREATE OR REPLACE FUNCTION potato_event_id(p_counter bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN ((floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1735689600000) << 22)
           | ((potato_node_group()::bigint & 1023) << 12)
           | (p_counter & 4095);
END $$;

-- One row in each shard of the co-location group (storage/citus.py fills it): a query
-- on it runs once in every shard, hence on every node that holds shards, over the
-- coordinator's cached connections (run_command_on_all_nodes opens new, authenticated
-- connections on every call: about 30 ms for three nodes, measured). The event stream
-- reads the workers' horizons through it (storage/run_events_repo.py HORIZON_SQL). Not
-- user data: the user_ids are random values picked to land one in each shard.
CREATE TABLE IF NOT EXISTS potato_event_probes (user_id uuid PRIMARY KEY);

-- The stream's view of this node, for its horizon (storage/run_events_repo.py
-- CitusEventTail): ARRAY[node group, the node's clock T as the millisecond part of an
-- event id, the ids of the transactions in progress at T...]. Once those have ended,
-- every event id below T << 22 drawn on this node is visible or never will be. The
-- transactions are found by their exclusive locks on their own ids (pg_locks), not from
-- a snapshot, whose xip list omits a writer that got its id after the snapshot's xmax.
-- It does not wait: the stream polls potato_event_xids_running, without holding a
-- backend of the node meanwhile (one probe per shard would otherwise wait in turn).
CREATE OR REPLACE FUNCTION potato_event_snapshot() RETURNS bigint[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t bigint;
BEGIN
    t := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1735689600000;
    RETURN ARRAY[potato_node_group()::bigint, t] || ARRAY(
        SELECT transactionid::text::bigint
          FROM pg_locks
         WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted
           AND pid <> pg_backend_pid());
END $$;

-- How many of the transactions (p_groups[i], p_xids[i]) of this node are still running.
CREATE OR REPLACE FUNCTION potato_event_xids_running(p_groups bigint[], p_xids bigint[])
RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT count(*)
      FROM pg_locks l
      JOIN unnest(p_groups, p_xids) AS w(g, x) ON w.x = l.transactionid::text::bigint
     WHERE w.g = potato_node_group()
       AND l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
$$;

-- potato_run_json for a row of a runs shard. A delegated write function runs on the
-- worker, where Citus rewrites each query's `runs` to the user's shard (runs_102008...):
-- a whole-row reference there (`SELECT jsonb_agg(potato_run_json(r)) FROM runs r`, in
-- potato_backfill_days) has the shard's row type, which potato_run_json(runs) does not
-- take. This overload turns such a row into a `runs` (same columns, same order) and
-- calls the original; a `runs` argument still picks the original (the exact match).
CREATE OR REPLACE FUNCTION potato_run_json(r record) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN potato_run_json(jsonb_populate_record(NULL::runs, to_jsonb(r)));
END $$;

-- potato_run_json for a row of a runs shard. A delegated write function runs on the
-- worker, where Citus rewrites each query's `runs` to the user's shard (runs_102008...):
-- a whole-row reference there (`SELECT jsonb_agg(potato_run_json(r)) FROM runs r`, in
-- potato_backfill_days) has the shard's row type, which potato_run_json(runs) does not
-- take. This overload turns such a row into a `runs` (same columns, same order) and
-- calls the original; a `runs` argument still picks the original (the exact match).
CREATE OR REPLACE FUNCTION potato_run_json(r record) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN potato_run_json(jsonb_populate_record(NULL::runs, to_jsonb(r)));
END $$;
