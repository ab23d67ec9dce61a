-- 0003_rollout.sql: feature flags with their audit trail, and shadow comparison records.

-- Flags are evaluated in memory by every replica (service/flags.py); this table is
-- their source, and NOTIFY on potato_feature_flags tells replicas to reload.
-- Percentages are stored as basis points (0..10000): steps of 0.01 % are exact.
CREATE TABLE feature_flags (
    name                 text PRIMARY KEY CHECK (name ~ '^ff\.[a-z0-9_]+(\.[a-z0-9_]+)*$'),
    enabled              boolean NOT NULL DEFAULT false,
    rollout_basis_points integer NOT NULL DEFAULT 0
                         CHECK (rollout_basis_points BETWEEN 0 AND 10000),
    shadow_basis_points  integer NOT NULL DEFAULT 0
                         CHECK (shadow_basis_points BETWEEN 0 AND 10000),
    allow_user_ids       uuid[] NOT NULL DEFAULT '{}',
    deny_user_ids        uuid[] NOT NULL DEFAULT '{}',
    revision             bigint NOT NULL DEFAULT 1,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    updated_by           text NOT NULL DEFAULT '',
    update_reason        text NOT NULL DEFAULT ''
);

-- Every change: who, when, before and after, why. Written in the same transaction.
CREATE TABLE feature_flag_changes (
    change_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL REFERENCES feature_flags (name),
    changed_at timestamptz NOT NULL,
    changed_by text NOT NULL,
    reason     text NOT NULL,
    before     jsonb,
    after      jsonb NOT NULL
);
CREATE INDEX feature_flag_changes_name ON feature_flag_changes (name, change_id);

CREATE FUNCTION potato_notify_flag_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('potato_feature_flags', NEW.name);
    RETURN NULL;
END $$;

CREATE TRIGGER feature_flags_notify AFTER INSERT OR UPDATE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION potato_notify_flag_change();

INSERT INTO feature_flags (name, updated_by, update_reason) VALUES
    ('ff.potato.runs_v2', 'migration', 'created disabled by migration 0003'),
    ('ff.potato.totals_v2', 'migration', 'created disabled by migration 0003');
INSERT INTO feature_flag_changes (name, changed_at, changed_by, reason, before, after)
SELECT name, updated_at, updated_by, update_reason, NULL,
       jsonb_build_object('enabled', enabled, 'rollout_basis_points', rollout_basis_points,
                          'shadow_basis_points', shadow_basis_points,
                          'allow_user_ids', allow_user_ids, 'deny_user_ids', deny_user_ids)
  FROM feature_flags;

-- Online shadow comparisons, counted per flag, method, result and hour (every
-- replica adds its counts in small batches).
CREATE TABLE shadow_comparisons (
    flag   text NOT NULL,
    method text NOT NULL,
    result text NOT NULL CHECK (result IN ('match', 'mismatch', 'dropped', 'error')),
    hour   timestamptz NOT NULL,
    count  bigint NOT NULL CHECK (count >= 0),
    PRIMARY KEY (flag, method, result, hour)
);

-- The mismatches themselves: both answers as JSON. Capped: the writer deletes the
-- oldest rows beyond the cap, so a flood cannot fill the disk.
CREATE TABLE shadow_mismatches (
    user_id     uuid NOT NULL,
    mismatch_id bigint GENERATED ALWAYS AS IDENTITY,
    flag        text NOT NULL,
    method      text NOT NULL,
    legacy      jsonb NOT NULL,
    projection  jsonb NOT NULL,
    observed_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, mismatch_id)
);
CREATE INDEX shadow_mismatches_order ON shadow_mismatches (mismatch_id);
