-- 0004_totals.sql: stored totals (Phase 7A), kept in the same transaction as every write.
--
-- Definitions (one home in SQL; domain/totals.py holds the same arithmetic in Python and a
-- property test holds the two equal):
--   a month's total_days  = the check-ins dated in that month;
--   a month's streak_days = the longest run counting only its days inside that month,
--                           i.e. the longest stretch of consecutive check-ins within it;
--   lifetime total_days   = all check-ins; run_count and longest_run_days over the runs.
-- A month without check-ins has no row.

CREATE FUNCTION potato_yyyymm(p_day date) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (extract(year FROM p_day) * 100 + extract(month FROM p_day))::integer
$$;

CREATE TABLE run_totals (
    user_id     uuid NOT NULL REFERENCES users (user_id),
    yyyymm      integer NOT NULL CHECK (yyyymm % 100 BETWEEN 1 AND 12 AND yyyymm >= 202501),
    streak_days integer NOT NULL CHECK (streak_days BETWEEN 1 AND 31),
    total_days  integer NOT NULL CHECK (total_days BETWEEN 1 AND 31),
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, yyyymm),
    CONSTRAINT run_totals_streak_within_total CHECK (streak_days <= total_days)
);

-- The lifetime totals, so that GetTotals on the stored path is one row (plus the active
-- run for the current streak, which depends on today).
CREATE TABLE user_totals (
    user_id          uuid PRIMARY KEY REFERENCES users (user_id),
    total_days       integer NOT NULL CHECK (total_days >= 0),
    run_count        integer NOT NULL CHECK (run_count >= 0),
    longest_run_days integer NOT NULL CHECK (longest_run_days >= 0),
    updated_at       timestamptz NOT NULL,
    CONSTRAINT user_totals_longest_within_total CHECK (longest_run_days <= total_days)
);

-- Monthly totals computed from the facts of the given users (all months), set-based:
-- gaps and islands per (user, month). The reconciliation compares run_totals with this.
CREATE FUNCTION potato_computed_month_totals(p_users uuid[])
RETURNS TABLE (user_id uuid, yyyymm integer, streak_days integer, total_days integer)
LANGUAGE sql STABLE AS $$
    SELECT i.user_id, i.yyyymm, max(i.n)::integer, sum(i.n)::integer
      FROM (SELECT c.user_id, potato_yyyymm(c.checkin_date) AS yyyymm, count(*) AS n
              FROM (SELECT c.user_id, c.checkin_date,
                           c.checkin_date - (row_number() OVER (
                               PARTITION BY c.user_id, date_trunc('month', c.checkin_date)
                               ORDER BY c.checkin_date))::integer AS grp
                      FROM daily_checkins c
                     WHERE c.user_id = ANY (p_users)) c
             GROUP BY c.user_id, potato_yyyymm(c.checkin_date), c.grp) i
     GROUP BY i.user_id, i.yyyymm
$$;

-- Lifetime totals computed from the facts of the given users (islands of check-ins).
CREATE FUNCTION potato_computed_user_totals(p_users uuid[])
RETURNS TABLE (user_id uuid, total_days integer, run_count integer, longest_run_days integer)
LANGUAGE sql STABLE AS $$
    SELECT i.user_id, sum(i.n)::integer, count(*)::integer, max(i.n)::integer
      FROM (SELECT c.user_id, count(*) AS n
              FROM (SELECT c.user_id, c.checkin_date,
                           c.checkin_date - (row_number() OVER (
                               PARTITION BY c.user_id ORDER BY c.checkin_date))::integer AS grp
                      FROM daily_checkins c
                     WHERE c.user_id = ANY (p_users)) c
             GROUP BY c.user_id, c.grp) i
     GROUP BY i.user_id
$$;

-- Recomputes the given months of one user (first days, or any day of them) and the
-- lifetime row. Callers hold the user's advisory lock (the write functions, the rebuild
-- and the reconciliation). A month reads at most 31 check-ins through the primary key;
-- the lifetime row reads the user's runs. Rows are rewritten only when they change, so
-- updated_at says when the figures last changed.
CREATE FUNCTION potato_refresh_totals(p_user uuid, p_months date[], p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_changed integer := 0;
    n integer;
BEGIN
    WITH m AS (
        SELECT DISTINCT date_trunc('month', x)::date AS first FROM unnest(p_months) AS x
    ), calc AS (
        SELECT m.first, potato_yyyymm(m.first) AS yyyymm,
               coalesce(max(s.n), 0)::integer AS streak_days,
               coalesce(sum(s.n), 0)::integer AS total_days
          FROM m
          LEFT JOIN LATERAL (
               SELECT count(*) AS n
                 FROM (SELECT c.checkin_date - (row_number() OVER (ORDER BY c.checkin_date))::integer AS grp
                         FROM daily_checkins c
                        WHERE c.user_id = p_user
                          AND c.checkin_date >= m.first
                          AND c.checkin_date < (m.first + interval '1 month')::date) d
                GROUP BY d.grp) s ON true
         GROUP BY m.first
    ), gone AS (
        DELETE FROM run_totals t USING calc
         WHERE t.user_id = p_user AND t.yyyymm = calc.yyyymm AND calc.total_days = 0
        RETURNING 1
    ), put AS (
        INSERT INTO run_totals AS t (user_id, yyyymm, streak_days, total_days, updated_at)
        SELECT p_user, calc.yyyymm, calc.streak_days, calc.total_days, p_now
          FROM calc WHERE calc.total_days > 0
        ON CONFLICT (user_id, yyyymm) DO UPDATE
           SET streak_days = EXCLUDED.streak_days, total_days = EXCLUDED.total_days,
               updated_at = EXCLUDED.updated_at
         WHERE (t.streak_days, t.total_days) IS DISTINCT FROM
               (EXCLUDED.streak_days, EXCLUDED.total_days)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM put) INTO v_changed;

    INSERT INTO user_totals AS t (user_id, total_days, run_count, longest_run_days, updated_at)
    SELECT p_user, coalesce(sum(r.day_count), 0), count(*), coalesce(max(r.day_count), 0), p_now
      FROM runs r WHERE r.user_id = p_user
    ON CONFLICT (user_id) DO UPDATE
       SET total_days = EXCLUDED.total_days, run_count = EXCLUDED.run_count,
           longest_run_days = EXCLUDED.longest_run_days, updated_at = EXCLUDED.updated_at
     WHERE (t.total_days, t.run_count, t.longest_run_days) IS DISTINCT FROM
           (EXCLUDED.total_days, EXCLUDED.run_count, EXCLUDED.longest_run_days);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN v_changed + n;
END $$;

-- The data that exists when this migration runs gets its totals now.
INSERT INTO run_totals (user_id, yyyymm, streak_days, total_days, updated_at)
SELECT t.user_id, t.yyyymm, t.streak_days, t.total_days, now()
  FROM potato_computed_month_totals(ARRAY(SELECT user_id FROM users)) t;
INSERT INTO user_totals (user_id, total_days, run_count, longest_run_days, updated_at)
SELECT u.user_id, coalesce(t.total_days, 0), coalesce(t.run_count, 0),
       coalesce(t.longest_run_days, 0), now()
  FROM users u
  LEFT JOIN potato_computed_user_totals(ARRAY(SELECT user_id FROM users)) t USING (user_id);
