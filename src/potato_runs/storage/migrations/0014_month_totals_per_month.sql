-- 0014_month_totals_per_month.sql: potato_refresh_month_totals (0005) month by month, in
-- statements that each name the user (issue 10, Citus).
--
-- Why. UnmarkDay calls it on every call, BackfillDays and the rebuild too, and MarkDay
-- when it repairs a drifted month row. Its 0005 body is one statement whose CTEs join an
-- unnest() of the months (a function in FROM, not a table of the user's shard) with the
-- user's check-ins and then DELETE and INSERT from the result. On one PostgreSQL that is
-- one plan; inside a function delegated to a Citus worker, Citus cannot run it in the
-- user's shard alone: it plans the CTEs apart and ships their results through
-- connections of its own to the nodes (the worker logging in to other nodes as
-- potato_app on every UnmarkDay). Here each month is one SELECT on the user's check-ins
-- and one DELETE or upsert of the user's row: router statements, run in the shard.
-- Same contract: the given months (any day of them) recomputed from the facts, a month
-- without check-ins deleted, a row rewritten only when its figures change; the number of
-- rows changed is returned. A month reads at most 31 check-ins through the primary key.
CREATE OR REPLACE FUNCTION potato_refresh_month_totals(p_user uuid, p_months date[], p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_changed integer := 0;
    v_first   date;
    v_streak  integer;
    v_total   integer;
    n         integer;
BEGIN
    FOR v_first IN SELECT DISTINCT date_trunc('month', x)::date FROM unnest(p_months) AS x LOOP
        SELECT coalesce(max(s.n), 0)::integer, coalesce(sum(s.n), 0)::integer
          INTO v_streak, v_total
          FROM (SELECT count(*) AS n
                  FROM (SELECT c.checkin_date
                               - (row_number() OVER (ORDER BY c.checkin_date))::integer AS grp
                          FROM daily_checkins c
                         WHERE c.user_id = p_user
                           AND c.checkin_date >= v_first
                           AND c.checkin_date < (v_first + interval '1 month')::date) d
                 GROUP BY d.grp) s;
        IF v_total = 0 THEN
            DELETE FROM run_totals
             WHERE user_id = p_user AND yyyymm = potato_yyyymm(v_first);
        ELSE
            INSERT INTO run_totals AS t (user_id, yyyymm, streak_days, total_days, updated_at)
            VALUES (p_user, potato_yyyymm(v_first), v_streak, v_total, p_now)
            ON CONFLICT (user_id, yyyymm) DO UPDATE
               SET streak_days = EXCLUDED.streak_days, total_days = EXCLUDED.total_days,
                   updated_at = EXCLUDED.updated_at
             WHERE (t.streak_days, t.total_days) IS DISTINCT FROM
                   (EXCLUDED.streak_days, EXCLUDED.total_days);
        END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        v_changed := v_changed + n;
    END LOOP;
    RETURN v_changed;
END $$;
