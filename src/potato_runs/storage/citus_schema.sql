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
-- transaction id when T was read, and the stream's horizon (potato_event_horizon)
-- finds it in progress or finished, never not yet started.
CREATE OR REPLACE FUNCTION potato_event_id(p_counter bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN ((floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1735689600000) << 22)
           | ((potato_node_group()::bigint & 1023) << 12)
           | (p_counter & 4095);
END $$;

-- The stream's horizon on this node: the node's clock T (as the millisecond part of an
-- event id), returned once every transaction in progress at T has ended, so every event
-- id below T << 22 drawn on this node is visible or will never be. NULL when one of them
-- is still running after p_wait_ms (a long transaction): the stream tries again.
-- The transactions are found by their exclusive locks on their own ids (pg_locks), not
-- from a snapshot, whose xip list omits a writer that got its id after the snapshot's
-- xmax. PostgreSQL has no SQL call that waits for another transaction to end: this
-- polls pg_locks, 1 ms apart, doubling to 20 ms.
CREATE OR REPLACE FUNCTION potato_event_horizon(p_wait_ms integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t      bigint;
    xids   bigint[];
    pause  double precision := 0.001;
    waited double precision := 0;
BEGIN
    t := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1735689600000;
    SELECT coalesce(array_agg(transactionid::text::bigint), '{}') INTO xids
      FROM pg_locks
     WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted
       AND pid <> pg_backend_pid();
    WHILE cardinality(xids) > 0 LOOP
        SELECT coalesce(array_agg(transactionid::text::bigint), '{}') INTO xids
          FROM pg_locks
         WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted
           AND transactionid::text::bigint = ANY (xids);
        EXIT WHEN cardinality(xids) = 0;
        IF waited * 1000 >= p_wait_ms THEN
            RETURN NULL;
        END IF;
        PERFORM pg_sleep(pause);
        waited := waited + pause;
        pause := least(pause * 2, 0.02);
    END LOOP;
    RETURN t;
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
