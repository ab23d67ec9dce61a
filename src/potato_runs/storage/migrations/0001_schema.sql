-- 0001_schema.sql: check-in facts, the runs projection and its event log.
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- One row per user; time_zone is the IANA zone in force for new writes.
CREATE TABLE users (
    user_id    uuid PRIMARY KEY,
    time_zone  text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The facts: one check-in per user and local date. The source of truth.
CREATE TABLE daily_checkins (
    user_id      uuid NOT NULL REFERENCES users (user_id),
    checkin_date date NOT NULL,
    time_zone    text NOT NULL,   -- the zone in force when the day was marked
    source       text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, checkin_date),
    CONSTRAINT checkin_date_not_before_launch CHECK (checkin_date >= DATE '2025-01-01')
);

-- The projection: maximal islands of consecutive check-in dates.
CREATE TABLE runs (
    run_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (user_id),
    start_date       date NOT NULL,
    end_date         date NOT NULL,
    day_count        integer NOT NULL,
    active           boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_extended_at timestamptz,
    CONSTRAINT runs_end_not_before_start CHECK (end_date >= start_date),
    CONSTRAINT runs_day_count_matches CHECK (day_count = end_date - start_date + 1),
    CONSTRAINT runs_no_overlap EXCLUDE USING gist
        (user_id WITH =, daterange(start_date, end_date, '[]') WITH &&)
        DEFERRABLE INITIALLY IMMEDIATE,
    -- Runs that touch must have been merged: [1,3] and [4,6] are one run.
    CONSTRAINT runs_no_touch EXCLUDE USING gist
        (user_id WITH =, daterange(start_date, end_date, '[]') WITH -|-)
        DEFERRABLE INITIALLY IMMEDIATE
);
CREATE UNIQUE INDEX runs_one_active_per_user ON runs (user_id) WHERE active;
CREATE INDEX runs_user_end_desc ON runs (user_id, end_date DESC);

-- Every change to the projection, written in the same transaction.
CREATE TABLE run_events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN (
                    'run_created', 'run_extended', 'run_merged', 'run_split',
                    'run_shrunk', 'run_deleted', 'run_deactivated', 'run_activated',
                    'run_rebuilt')),
    cause       text NOT NULL,     -- mark | unmark | backfill | rebuild
    before      jsonb,
    after       jsonb,
    occurred_at timestamptz NOT NULL,
    request_id  text
);
CREATE INDEX run_events_user ON run_events (user_id, event_id);
CREATE INDEX run_events_time ON run_events (occurred_at);
