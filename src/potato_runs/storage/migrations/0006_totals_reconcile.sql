-- 0006_totals_reconcile.sql: the nightly reconciliation of stored totals (issue 7).
--
-- One row per UTC day: the replica that inserts it (INSERT ... ON CONFLICT DO NOTHING)
-- runs that day's reconciliation; every other replica sees the row and skips. The
-- repairs themselves take each user's advisory lock, so a manual `potato-runs totals
-- reconcile` running at the same time is safe too. No user data: no user_id.
CREATE TABLE totals_reconcile_runs (
    day           date PRIMARY KEY,
    replica       text NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    users_checked bigint,
    rows_drifted  bigint,
    rows_repaired bigint,
    users_failed  integer,
    error         text,
    CONSTRAINT totals_reconcile_runs_finished_after_start
        CHECK (finished_at IS NULL OR finished_at >= started_at)
);
