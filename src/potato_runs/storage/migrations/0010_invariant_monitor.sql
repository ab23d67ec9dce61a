-- 0010_invariant_monitor.sql: the invariant monitor's passes and open violations (issue 11).
--
-- The monitor (service/invariant_monitor.py) runs in every replica, but one pass runs at a
-- time (a session advisory lock); each pass checks either everyone (full) or the users
-- touched since an earlier pass (incremental: users with run_events after a stored
-- high_event_id, plus the users with open violations), and records itself here. Every
-- replica sets its potato.runs.v2.Invariants health from the latest row, so a replica
-- that did not run the pass reports the same status. No index or column is added to the
-- write path: the touched users come from run_events' primary key (a range scan on
-- event_id), which every write that changes facts or runs already writes.

-- One row per pass. No user data: no user_id.
CREATE TABLE invariant_check_runs (
    pass_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope          text NOT NULL CHECK (scope IN ('full', 'incremental')),
    replica        text NOT NULL,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL,
    -- incremental: the users of events with event_id > after_event_id were checked
    after_event_id bigint,
    -- the highest run_events.event_id visible when the pass read the touched users
    -- (a full pass: when it started); a later pass's after_event_id comes from it
    high_event_id  bigint NOT NULL,
    users_checked  bigint NOT NULL,
    -- open violations after the pass (the whole invariant_violations table), by code
    violations     jsonb NOT NULL DEFAULT '{}',
    error          text,
    CONSTRAINT invariant_check_runs_finished_after_start CHECK (finished_at >= started_at),
    CONSTRAINT invariant_check_runs_incremental_has_base
        CHECK ((scope = 'incremental') = (after_event_id IS NOT NULL))
);
CREATE INDEX invariant_check_runs_started ON invariant_check_runs (started_at DESC);

-- The violations found and not yet seen fixed: a full pass replaces every row, an
-- incremental pass the rows of the users it checked. An incremental pass re-checks these
-- users whether or not they were touched, so a violation found by a full pass stays
-- counted until a pass sees it gone.
CREATE TABLE invariant_violations (
    user_id   uuid NOT NULL,
    code      text NOT NULL,
    detail    text NOT NULL,
    found_at  timestamptz NOT NULL
);
CREATE INDEX invariant_violations_user ON invariant_violations (user_id, code);
