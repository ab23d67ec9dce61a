-- 0011_blue_green_rebuild.sql: the record of every blue/green full rebuild (issue 9, item 4).
--
-- `potato-runs rebuild --all --blue-green` (AdminService.RebuildAllRuns) builds a new runs
-- table set-based from daily_checkins, catches up on the writes made meanwhile and swaps
-- the tables in one short transaction (storage/blue_green.py has the whole protocol). The
-- per-user changes go to run_events ('run_rebuilt', cause 'rebuild'); this table records
-- the rebuild itself. No user data: no user_id.

CREATE TABLE runs_rebuilds (
    rebuild_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    method            text NOT NULL DEFAULT 'blue_green' CHECK (method IN ('blue_green')),
    -- running: in progress (or its process died: a later rebuild marks it failed);
    -- swapped: the new table is live; failed: the live table was left untouched
    status            text NOT NULL CHECK (status IN ('running', 'swapped', 'failed')),
    replica           text NOT NULL,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    facts             bigint,        -- check-ins read by the build
    runs              bigint,        -- runs in the table that went live
    runs_kept         bigint,        -- of those, runs that kept their run_id
    users_changed     bigint,        -- users with a run_rebuilt event
    catchup_users     integer[] NOT NULL DEFAULT '{}',   -- users recomputed per catch-up pass
    swap_attempts     integer NOT NULL DEFAULT 0,
    -- the longest time writes were held back: the final transaction, lock waits included
    max_write_block_seconds double precision,
    phase_seconds     jsonb NOT NULL DEFAULT '{}',       -- {"build": 1.2, "index": 2.3, ...}
    old_table_dropped boolean NOT NULL DEFAULT false,
    error             text,
    CONSTRAINT runs_rebuilds_finished_after_start
        CHECK (finished_at IS NULL OR finished_at >= started_at),
    CONSTRAINT runs_rebuilds_failed_has_error CHECK ((status = 'failed') = (error IS NOT NULL))
);
CREATE INDEX runs_rebuilds_started ON runs_rebuilds (started_at DESC);
