-- 0005_totals_write_path.sql: stored totals kept right by every write (issue 7).
--
-- potato_mark_day, potato_backfill_days and potato_unmark_day (0002) are replaced by
-- versions that, after changing the facts and the runs, update run_totals and
-- user_totals in the same statement, hence the same transaction, under the same
-- per-user advisory lock. The projection logic (potato_apply_mark and the unmark
-- branches) is unchanged; only the totals steps are new.
--
-- Which months a write touches. A month's totals (total_days, streak_days) are a
-- function of the check-ins dated in that month and of nothing else: total_days counts
-- them, and streak_days is the longest stretch of consecutive check-ins within the
-- month, which is the longest run counting only its days inside the month (a run's
-- pieces in different months are separate stretches). Hence:
--   * a write that adds or removes the check-ins D changes the totals of the months of D
--     and of no other month: every other month has the same check-ins before and after,
--     so the same totals, even when the write merges or splits a run that covers it
--     (the merged run's days in another month M are exactly the two old runs' days in M,
--     and their longest stretch in M is the same stretch);
--   * each month of D does change (its total_days moves by the days of D in it).
-- So the months touched are exactly {month(d) : d in D}, D being the days whose mark
-- changed (not the requested days that were already marked, or not marked). This is a
-- subset of "the months of the runs before and after the change" (the run that holds,
-- or held, d covers month(d)), and equal in what it rewrites: the other months of those
-- runs would be recomputed to the values they already have. A merge across months,
-- e.g. a backfill of Jan 31..Mar 1 between runs ending Jan 30 and starting Mar 2, changes
-- streak_days in January, February and March because it adds a day in each of them.
-- tests/integration/test_state_machine.py asserts stored == computed after every step.
--
-- Cost on the hot path (MarkDay): the month row and the lifetime row are updated
-- incrementally, one primary-key statement each, no scan:
--   month:    total_days + 1, streak_days = greatest(streak_days, the new run's days
--             inside the month) (adding a day only joins stretches, and the stretch that
--             holds the day is the only new one); a day alone in its month inserts (1, 1)
--             or adds one day;
--   lifetime: total_days + 1, run_count + 1 on created / - 1 on merged / 0 on extended,
--             longest_run_days = greatest(longest_run_days, the new run's days).
-- A row the increment would take outside its CHECKs, or a missing one (drift), is
-- recomputed instead (from the facts for a month, from the runs for the lifetime row),
-- so a drifted row never fails a write. (A month row missing while the month has other
-- check-ins, with the new day alone in its month, is inserted as (1, 1): that drift is
-- the nightly reconciliation's to repair.) Measured: about +120 us of server time per
-- call on a load of mostly new users and months (pg_stat_user_functions), and MarkDay
-- throughput over gRPC within noise of the version without totals (scripts/bench_ab.py).
-- Unmark recomputes its one month (<= 31 check-ins on the primary key) and updates the
-- lifetime row incrementally, reading the user's runs only when the run that lost the
-- day was a longest one. Backfill recomputes the months of the days it added, and
-- updates the lifetime row like MarkDay (runs only grow during a backfill).

-- The month part of potato_refresh_totals (0004), unchanged, now callable alone.
CREATE FUNCTION potato_refresh_month_totals(p_user uuid, p_months date[], p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_changed integer := 0;
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
    RETURN v_changed;
END $$;

-- The lifetime part of potato_refresh_totals (0004), unchanged: from the user's runs.
CREATE FUNCTION potato_refresh_lifetime_totals(p_user uuid, p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    INSERT INTO user_totals AS t (user_id, total_days, run_count, longest_run_days, updated_at)
    SELECT p_user, coalesce(sum(r.day_count), 0), count(*), coalesce(max(r.day_count), 0), p_now
      FROM runs r WHERE r.user_id = p_user
    ON CONFLICT (user_id) DO UPDATE
       SET total_days = EXCLUDED.total_days, run_count = EXCLUDED.run_count,
           longest_run_days = EXCLUDED.longest_run_days, updated_at = EXCLUDED.updated_at
     WHERE (t.total_days, t.run_count, t.longest_run_days) IS DISTINCT FROM
           (EXCLUDED.total_days, EXCLUDED.run_count, EXCLUDED.longest_run_days);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Same contract as in 0004 (the given months and the lifetime row; rows changed),
-- now one body per part.
CREATE OR REPLACE FUNCTION potato_refresh_totals(p_user uuid, p_months date[], p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RETURN potato_refresh_month_totals(p_user, p_months, p_now)
         + potato_refresh_lifetime_totals(p_user, p_now);
END $$;

-- The lifetime row after days were added: p_days check-ins more, p_runs runs more
-- (created +1, merged -1, extended 0), and a run that now has p_grown days. Exact when
-- the row was right: adding days only grows runs, so the longest is the greater of the
-- old longest and the grown run. A missing row, or one the change would take outside
-- its CHECKs (drift), is recomputed from the runs instead.
CREATE FUNCTION potato_user_totals_grow(p_user uuid, p_days integer, p_runs integer,
                                        p_grown integer, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_totals t
       SET total_days = t.total_days + p_days, run_count = t.run_count + p_runs,
           longest_run_days = greatest(t.longest_run_days, p_grown), updated_at = p_now
     WHERE t.user_id = p_user AND t.run_count + p_runs >= 0
       AND t.total_days + p_days >= greatest(t.longest_run_days, p_grown);
    IF NOT FOUND THEN
        PERFORM potato_refresh_lifetime_totals(p_user, p_now);
    END IF;
END $$;

-- The lifetime row after one day was unmarked from a run of p_shrunk days: one check-in
-- less, p_runs runs more (split +1, deleted -1, shrunk 0). The longest is read from the
-- runs only when the run that lost the day was a longest one. Missing or drifted rows
-- are recomputed from the runs.
CREATE FUNCTION potato_user_totals_shrink(p_user uuid, p_runs integer, p_shrunk integer,
                                          p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t user_totals;
    v_longest integer;
BEGIN
    SELECT * INTO t FROM user_totals WHERE user_id = p_user;
    IF t.user_id IS NULL THEN
        PERFORM potato_refresh_lifetime_totals(p_user, p_now);
        RETURN;
    END IF;
    IF p_shrunk >= t.longest_run_days THEN
        SELECT coalesce(max(day_count), 0) INTO v_longest FROM runs WHERE user_id = p_user;
    ELSE
        v_longest := t.longest_run_days;
    END IF;
    IF t.run_count + p_runs < 0 OR t.total_days - 1 < v_longest THEN
        PERFORM potato_refresh_lifetime_totals(p_user, p_now);
        RETURN;
    END IF;
    UPDATE user_totals
       SET total_days = t.total_days - 1, run_count = t.run_count + p_runs,
           longest_run_days = v_longest, updated_at = p_now
     WHERE user_id = p_user;
END $$;

-- MarkDay (0002) plus its totals: one month row and the lifetime row, incrementally.
-- The month step is inline: this is the hot path.
CREATE OR REPLACE FUNCTION potato_mark_day(p_user uuid, p_date date, p_mark_time timestamptz,
                                           p_zone text, p_source text, p_now timestamptz,
                                           p_request_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_zone text; v_date date; res record;
    v_first date; v_in_month integer;
BEGIN
    PERFORM pg_advisory_xact_lock(potato_lock_key(p_user));
    v_zone := potato_resolve_zone(p_user, p_zone, p_now);
    v_date := coalesce(p_date, (p_mark_time AT TIME ZONE v_zone)::date);
    PERFORM potato_check_date(v_date, v_zone, p_now);
    SELECT * INTO res FROM potato_apply_mark(p_user, v_date, v_zone, p_source, p_now,
                                             'mark', p_request_id);
    IF res.change <> 'none' THEN
        -- The month row, incrementally (exact when it was right: adding a day only joins
        -- stretches, and the stretch holding the day, the run clipped to the month, is
        -- the only new one). A day alone in its month (v_in_month = 1) may be the month's
        -- first: insert (1, 1) or add one day. Otherwise the row must exist; when it does
        -- not, or the increment would break a CHECK (drift), recompute the month.
        v_first := date_trunc('month', v_date)::date;
        v_in_month := least((res.run->>'end_date')::date, (v_first + interval '1 month')::date - 1)
                    - greatest((res.run->>'start_date')::date, v_first) + 1;
        IF v_in_month = 1 THEN
            INSERT INTO run_totals AS t (user_id, yyyymm, streak_days, total_days, updated_at)
            VALUES (p_user, potato_yyyymm(v_date), 1, 1, p_now)
            ON CONFLICT (user_id, yyyymm) DO UPDATE
               SET total_days = t.total_days + 1, updated_at = p_now
             WHERE t.total_days < 31;
        ELSE
            UPDATE run_totals t
               SET total_days = t.total_days + 1,
                   streak_days = greatest(t.streak_days, v_in_month), updated_at = p_now
             WHERE t.user_id = p_user AND t.yyyymm = potato_yyyymm(v_date)
               AND t.total_days < 31 AND greatest(t.streak_days, v_in_month) <= t.total_days + 1;
        END IF;
        IF NOT FOUND THEN
            PERFORM potato_refresh_month_totals(p_user, ARRAY[v_date], p_now);
        END IF;
        PERFORM potato_user_totals_grow(
            p_user, 1, CASE res.change WHEN 'created' THEN 1 WHEN 'merged' THEN -1 ELSE 0 END,
            (res.run->>'day_count')::integer, p_now);
    END IF;
    RETURN jsonb_build_object('change', res.change, 'local_date', v_date,
                              'time_zone', v_zone, 'run', res.run,
                              'events', to_jsonb(res.events));
END $$;

-- BackfillDays (0002) plus its totals: the months of the days it added, recomputed, and
-- the lifetime row. Runs only grow during a backfill, so the longest of the runs each
-- added day produced is the longest new run (the last day added to a final run reports
-- that run).
CREATE OR REPLACE FUNCTION potato_backfill_days(p_user uuid, p_dates date[], p_zone text,
                                                p_source text, p_now timestamptz,
                                                p_request_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_zone text; d date; res record;
    v_added int := 0;
    v_run_delta int := 0;
    v_grown int := 0;
    v_months date[] := ARRAY[]::date[];
    v_events text[] := ARRAY[]::text[];
    v_runs jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(potato_lock_key(p_user));
    v_zone := potato_resolve_zone(p_user, p_zone, p_now);
    FOR d IN SELECT DISTINCT x FROM unnest(p_dates) AS x ORDER BY x LOOP
        PERFORM potato_check_date(d, v_zone, p_now);
    END LOOP;
    FOR d IN SELECT DISTINCT x FROM unnest(p_dates) AS x ORDER BY x LOOP
        SELECT * INTO res FROM potato_apply_mark(p_user, d, v_zone, p_source, p_now,
                                                 'backfill', p_request_id);
        IF res.change <> 'none' THEN
            v_added := v_added + 1;
            v_events := v_events || res.events;
            v_run_delta := v_run_delta + CASE res.change WHEN 'created' THEN 1
                                                         WHEN 'merged' THEN -1 ELSE 0 END;
            v_grown := greatest(v_grown, (res.run->>'day_count')::integer);
            IF v_months[cardinality(v_months)] IS DISTINCT FROM date_trunc('month', d)::date THEN
                v_months := v_months || date_trunc('month', d)::date;
            END IF;
        END IF;
    END LOOP;
    IF v_added > 0 THEN
        PERFORM potato_refresh_month_totals(p_user, v_months, p_now);
        PERFORM potato_user_totals_grow(p_user, v_added, v_run_delta, v_grown, p_now);
    END IF;
    -- The runs holding the dates: one index probe per date, not a scan of the history.
    SELECT coalesce(jsonb_agg(potato_run_json(r) ORDER BY r.end_date DESC), '[]'::jsonb)
      INTO v_runs
      FROM runs r
     WHERE r.run_id IN (
           SELECT h.run_id
             FROM (SELECT DISTINCT x FROM unnest(p_dates) AS x) d
            CROSS JOIN LATERAL (SELECT run_id, start_date FROM runs
                                 WHERE user_id = p_user AND end_date >= d.x
                                 ORDER BY end_date LIMIT 1) h
            WHERE h.start_date <= d.x);
    RETURN jsonb_build_object('added_days', v_added, 'time_zone', v_zone,
                              'runs', v_runs, 'events', to_jsonb(v_events));
END $$;

-- UnmarkDay (0002) plus its totals: the month of the day, recomputed, and the lifetime
-- row. The branches are those of 0002; each now records its change and falls through
-- to the totals step.
CREATE OR REPLACE FUNCTION potato_unmark_day(p_user uuid, p_date date, p_now timestamptz,
                                             p_request_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    cur runs; a runs; b runs; latest runs;
    n int;
    v_change text;
    v_runs jsonb;
    v_events text[] := ARRAY[]::text[];
BEGIN
    PERFORM pg_advisory_xact_lock(potato_lock_key(p_user));
    -- No "future" check: a day marked in an eastern zone stays removable after
    -- the user travels west, where that date has not begun yet.
    IF p_date < DATE '2025-01-01' THEN
        PERFORM potato_check_date(p_date, 'UTC', p_now);
    END IF;
    DELETE FROM daily_checkins WHERE user_id = p_user AND checkin_date = p_date;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RETURN jsonb_build_object('removed', false, 'change', 'none',
                                  'runs', '[]'::jsonb, 'events', '[]'::jsonb);
    END IF;
    SELECT * INTO cur FROM runs
     WHERE user_id = p_user AND end_date >= p_date ORDER BY end_date LIMIT 1;
    IF cur.run_id IS NULL OR cur.start_date > p_date THEN
        RAISE EXCEPTION 'check-in % of user % has no run', p_date, p_user
            USING ERRCODE = 'PX004',
                  DETAIL = jsonb_build_object('user_id', p_user, 'local_date', p_date)::text;
    END IF;

    IF cur.start_date = cur.end_date THEN
        DELETE FROM runs WHERE run_id = cur.run_id;
        PERFORM potato_emit(p_user, 'run_deleted', 'unmark', potato_run_json(cur), NULL,
                            p_now, p_request_id);
        v_events := array_append(v_events, 'run_deleted');
        IF cur.active THEN
            SELECT * INTO latest FROM runs WHERE user_id = p_user
             ORDER BY end_date DESC LIMIT 1;
            IF latest.run_id IS NOT NULL THEN
                UPDATE runs SET active = true, updated_at = p_now
                 WHERE run_id = latest.run_id RETURNING * INTO a;
                PERFORM potato_emit(p_user, 'run_activated', 'unmark',
                    potato_run_json(latest), potato_run_json(a), p_now, p_request_id);
                v_events := array_append(v_events, 'run_activated');
            END IF;
        END IF;
        v_change := 'deleted'; v_runs := '[]'::jsonb;
    ELSIF p_date = cur.start_date OR p_date = cur.end_date THEN
        UPDATE runs SET start_date = CASE WHEN p_date = cur.start_date
                                          THEN p_date + 1 ELSE start_date END,
                        end_date = CASE WHEN p_date = cur.end_date
                                        THEN p_date - 1 ELSE end_date END,
                        day_count = day_count - 1, updated_at = p_now
         WHERE run_id = cur.run_id RETURNING * INTO a;
        PERFORM potato_emit(p_user, 'run_shrunk', 'unmark', potato_run_json(cur),
                            potato_run_json(a), p_now, p_request_id);
        v_change := 'shrunk'; v_runs := jsonb_build_array(potato_run_json(a));
        v_events := ARRAY['run_shrunk'];
    ELSE
        -- Split: the left piece keeps the run's identity; the right piece is
        -- new and inherits the active flag (it is the later of the two).
        UPDATE runs SET end_date = p_date - 1, day_count = p_date - start_date,
                        active = false, updated_at = p_now
         WHERE run_id = cur.run_id RETURNING * INTO a;
        INSERT INTO runs (user_id, start_date, end_date, day_count, active,
                          created_at, updated_at, last_extended_at)
        VALUES (p_user, p_date + 1, cur.end_date, cur.end_date - p_date, cur.active,
                p_now, p_now, cur.last_extended_at)
        RETURNING * INTO b;
        PERFORM potato_emit(p_user, 'run_split', 'unmark', potato_run_json(cur),
                            jsonb_build_array(potato_run_json(a), potato_run_json(b)),
                            p_now, p_request_id);
        v_change := 'split';
        v_runs := jsonb_build_array(potato_run_json(b), potato_run_json(a));
        v_events := ARRAY['run_split'];
    END IF;

    PERFORM potato_refresh_month_totals(p_user, ARRAY[p_date], p_now);
    PERFORM potato_user_totals_shrink(
        p_user, CASE v_change WHEN 'deleted' THEN -1 WHEN 'split' THEN 1 ELSE 0 END,
        cur.day_count, p_now);
    RETURN jsonb_build_object('removed', true, 'change', v_change,
                              'runs', v_runs, 'events', to_jsonb(v_events));
END $$;
