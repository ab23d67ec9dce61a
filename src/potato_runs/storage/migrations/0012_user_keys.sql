-- 0012_user_keys.sql: user_id in every key of the user-data tables, and in every
-- statement of the write functions (preparation for Citus, distributed by user_id).
--
-- Why. Citus distributes a table by one column (here user_id) and can enforce a primary
-- key, unique index or exclusion constraint only when it includes that column: each shard
-- checks its own rows. And a function delegated to the worker that holds a user's shard
-- (create_distributed_function ... distribution_arg_name => 'p_user') runs its statements
-- there, locally, only when each one names the user (user_id = p_user): a statement that
-- finds its row by run_id alone is routed to every shard. On single PostgreSQL nothing
-- changes: run_id and event_id stay globally unique (identity columns), so the added
-- filters select the same rows, and every query keeps an index (checked with EXPLAIN).
--
-- 1. runs: primary key (run_id) -> (user_id, run_id). No foreign key references
--    runs (run_id) or run_events (event_id) (pg_constraint: the only FKs point at users
--    (user_id)); DROP CONSTRAINT without CASCADE would refuse otherwise. runs_no_overlap,
--    runs_no_touch (EXCLUDE ... user_id WITH =) and runs_one_active_per_user (unique on
--    user_id) already include user_id: kept. The blue/green rebuild copies runs'
--    constraints from the catalog (storage/blue_green.py), so it follows this key.
-- 2. run_events: primary key (event_id) -> (user_id, event_id). The event stream
--    (storage/run_events_repo.py: page, tail, head), the invariant monitor's touched users
--    (0010, storage/invariant_repo.py) and the blue/green catch-up read across users by
--    `event_id > $1 ORDER BY event_id`, the retention purge in event_id order:
--    run_events_event_id, a plain (non-unique) btree on event_id, keeps them index scans
--    (EXPLAIN on a loaded database: the plans are those of 0011 with this index in place
--    of the old primary key). run_events_user
--    (user_id, event_id) of 0001 is dropped: the new primary key is the same index (same
--    columns, same order, now unique), and keeping both would add an index to every
--    event insert. run_events keeps three indexes, as before.
-- 3. The other tables holding user data, checked (already keyed by user_id):
--      users             PRIMARY KEY (user_id)
--      daily_checkins    PRIMARY KEY (user_id, checkin_date)
--      run_totals        PRIMARY KEY (user_id, yyyymm)
--      user_totals       PRIMARY KEY (user_id)
--      request_ids       PRIMARY KEY (user_id, request_id)
--      shadow_mismatches PRIMARY KEY (user_id, mismatch_id)
--      invariant_violations: no primary key or unique index (left as it is).
--    No user data, not distributed: feature_flags, feature_flag_changes,
--    shadow_comparisons, totals_reconcile_runs, run_events_retention,
--    invariant_check_runs, runs_rebuilds, schema_migrations.
-- 4. Write functions: in the current definitions (the latest CREATE OR REPLACE of
--    0002..0011), the statements that found a user's row by run_id alone now also say
--    user_id = p_user. Replaced here, bodies otherwise unchanged:
--      potato_apply_mark (0002): the DELETE and four UPDATEs of runs;
--      potato_unmark_day (0008): the DELETE and three UPDATEs of runs;
--      potato_backfill_days (0008): the final read of the runs holding the dates
--        (r.run_id IN (...) -> r.user_id = p_user AND r.run_id IN (...)).
--    Already naming the user in every statement, not replaced: potato_resolve_zone,
--    potato_emit, potato_mark_day, potato_backfill_net_events, potato_latest_changes,
--    potato_refresh_totals, potato_refresh_month_totals, potato_refresh_lifetime_totals,
--    potato_user_totals_grow, potato_user_totals_shrink, potato_request_replay,
--    potato_request_record, potato_*_once. potato_computed_month_totals and
--    potato_computed_user_totals read many users (user_id = ANY (p_users)): they are
--    reads of the reconciliation, not delegated writes.
--
-- The two primary keys and the new index are built in this migration's transaction,
-- under ACCESS EXCLUSIVE locks on runs and run_events: writes wait until it commits.

ALTER TABLE runs DROP CONSTRAINT runs_pkey;
ALTER TABLE runs ADD CONSTRAINT runs_pkey PRIMARY KEY (user_id, run_id);

ALTER TABLE run_events DROP CONSTRAINT run_events_pkey;
ALTER TABLE run_events ADD CONSTRAINT run_events_pkey PRIMARY KEY (user_id, event_id);
CREATE INDEX run_events_event_id ON run_events (event_id);
DROP INDEX run_events_user;

-- potato_apply_mark (0002): user_id = p_user in the DELETE and the UPDATEs of runs.
CREATE OR REPLACE FUNCTION potato_apply_mark(p_user uuid, p_date date, p_zone text, p_source text,
                                             p_now timestamptz, p_cause text,
                                             p_request_id text,
                                             OUT change text, OUT run jsonb, OUT events text[])
LANGUAGE plpgsql AS $$
DECLARE
    prev runs; nxt runs; latest runs; r runs;
    n int;
BEGIN
    events := ARRAY[]::text[];
    INSERT INTO daily_checkins (user_id, checkin_date, time_zone, source, created_at)
    VALUES (p_user, p_date, p_zone, coalesce(p_source, ''), p_now)
    ON CONFLICT (user_id, checkin_date) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        SELECT * INTO r FROM runs
         WHERE user_id = p_user AND end_date >= p_date
         ORDER BY end_date LIMIT 1;
        IF r.run_id IS NULL OR r.start_date > p_date THEN
            RAISE EXCEPTION 'check-in % of user % has no run', p_date, p_user
                USING ERRCODE = 'PX004',
                      DETAIL = jsonb_build_object('user_id', p_user, 'local_date', p_date)::text;
        END IF;
        change := 'none'; run := potato_run_json(r);
        RETURN;
    END IF;

    SELECT * INTO prev FROM runs WHERE user_id = p_user AND end_date = p_date - 1;
    -- The first run ending on or after the day: the next run, or (only if the
    -- projection is damaged) a run that already covers the new day.
    SELECT * INTO nxt FROM runs
     WHERE user_id = p_user AND end_date >= p_date ORDER BY end_date LIMIT 1;
    IF nxt.run_id IS NOT NULL AND nxt.start_date <= p_date THEN
        RAISE EXCEPTION 'new check-in % of user % is inside run %..%', p_date, p_user,
                        nxt.start_date, nxt.end_date
            USING ERRCODE = 'PX004',
                  DETAIL = jsonb_build_object('user_id', p_user, 'local_date', p_date)::text;
    END IF;
    IF nxt.start_date IS DISTINCT FROM p_date + 1 THEN
        nxt := NULL;
    END IF;

    IF prev.run_id IS NOT NULL AND nxt.run_id IS NOT NULL THEN
        -- The day closes the gap: prev absorbs nxt (prev keeps its identity).
        DELETE FROM runs WHERE user_id = p_user AND run_id = nxt.run_id;
        UPDATE runs SET end_date = nxt.end_date,
                        day_count = nxt.end_date - prev.start_date + 1,
                        active = nxt.active,
                        updated_at = p_now, last_extended_at = p_now
         WHERE user_id = p_user AND run_id = prev.run_id RETURNING * INTO r;
        PERFORM potato_emit(p_user, 'run_merged', p_cause,
            jsonb_build_array(potato_run_json(prev), potato_run_json(nxt)),
            potato_run_json(r), p_now, p_request_id);
        change := 'merged'; events := array_append(events, 'run_merged');
    ELSIF prev.run_id IS NOT NULL THEN
        UPDATE runs SET end_date = p_date, day_count = day_count + 1,
                        updated_at = p_now, last_extended_at = p_now
         WHERE user_id = p_user AND run_id = prev.run_id RETURNING * INTO r;
        PERFORM potato_emit(p_user, 'run_extended', p_cause, potato_run_json(prev),
                            potato_run_json(r), p_now, p_request_id);
        change := 'extended'; events := array_append(events, 'run_extended');
    ELSIF nxt.run_id IS NOT NULL THEN
        UPDATE runs SET start_date = p_date, day_count = day_count + 1,
                        updated_at = p_now, last_extended_at = p_now
         WHERE user_id = p_user AND run_id = nxt.run_id RETURNING * INTO r;
        PERFORM potato_emit(p_user, 'run_extended', p_cause, potato_run_json(nxt),
                            potato_run_json(r), p_now, p_request_id);
        change := 'extended'; events := array_append(events, 'run_extended');
    ELSE
        SELECT * INTO latest FROM runs WHERE user_id = p_user AND active;
        IF latest.run_id IS NULL OR latest.end_date < p_date THEN
            IF latest.run_id IS NOT NULL THEN
                UPDATE runs SET active = false, updated_at = p_now
                 WHERE user_id = p_user AND run_id = latest.run_id RETURNING * INTO prev;
                PERFORM potato_emit(p_user, 'run_deactivated', p_cause,
                    potato_run_json(latest), potato_run_json(prev), p_now, p_request_id);
                events := array_append(events, 'run_deactivated');
            END IF;
            INSERT INTO runs (user_id, start_date, end_date, day_count, active,
                              created_at, updated_at, last_extended_at)
            VALUES (p_user, p_date, p_date, 1, true, p_now, p_now, p_now) RETURNING * INTO r;
        ELSE
            INSERT INTO runs (user_id, start_date, end_date, day_count, active,
                              created_at, updated_at, last_extended_at)
            VALUES (p_user, p_date, p_date, 1, false, p_now, p_now, p_now) RETURNING * INTO r;
        END IF;
        PERFORM potato_emit(p_user, 'run_created', p_cause, NULL, potato_run_json(r),
                            p_now, p_request_id);
        change := 'created'; events := array_prepend('run_created', events);
    END IF;
    run := potato_run_json(r);
END $$;

-- potato_backfill_days (0008): user_id = p_user in the final read of runs.
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
    v_runs jsonb;
    v_lo date; v_hi date;
    v_before jsonb;
    v_old_active runs;
    v_changes jsonb := '[]'::jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(potato_lock_key(p_user));
    v_zone := potato_resolve_zone(p_user, p_zone, p_now);
    FOR d IN SELECT DISTINCT x FROM unnest(p_dates) AS x ORDER BY x LOOP
        PERFORM potato_check_date(d, v_zone, p_now);
    END LOOP;
    -- The runs the dates can change: those within one day of [first date, last date].
    SELECT min(x) - 1, max(x) + 1 INTO v_lo, v_hi FROM unnest(p_dates) AS x;
    SELECT coalesce(jsonb_agg(potato_run_json(r)), '[]'::jsonb) INTO v_before
      FROM runs r WHERE r.user_id = p_user AND r.end_date >= v_lo AND r.start_date <= v_hi;
    SELECT * INTO v_old_active FROM runs WHERE user_id = p_user AND active;
    FOR d IN SELECT DISTINCT x FROM unnest(p_dates) AS x ORDER BY x LOOP
        SELECT * INTO res FROM potato_apply_mark(p_user, d, v_zone, p_source, p_now,
                                                 NULL, p_request_id);
        IF res.change <> 'none' THEN
            v_added := v_added + 1;
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
        v_changes := potato_backfill_net_events(p_user, v_before, v_old_active, v_lo, v_hi,
                                                p_now, p_request_id);
    END IF;
    -- The runs holding the dates: one index probe per date, not a scan of the history.
    SELECT coalesce(jsonb_agg(potato_run_json(r) ORDER BY r.end_date DESC), '[]'::jsonb)
      INTO v_runs
      FROM runs r
     WHERE r.user_id = p_user AND r.run_id IN (
           SELECT h.run_id
             FROM (SELECT DISTINCT x FROM unnest(p_dates) AS x) d
            CROSS JOIN LATERAL (SELECT run_id, start_date FROM runs
                                 WHERE user_id = p_user AND end_date >= d.x
                                 ORDER BY end_date LIMIT 1) h
            WHERE h.start_date <= d.x);
    RETURN jsonb_build_object('added_days', v_added, 'time_zone', v_zone, 'runs', v_runs,
                              'events', (SELECT coalesce(jsonb_agg(c->'kind'), '[]'::jsonb)
                                           FROM jsonb_array_elements(v_changes) c),
                              'changes', v_changes);
END $$;

-- potato_unmark_day (0008): user_id = p_user in the DELETE and the UPDATEs of runs.
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
        DELETE FROM runs WHERE user_id = p_user AND run_id = cur.run_id;
        PERFORM potato_emit(p_user, 'run_deleted', 'unmark', potato_run_json(cur), NULL,
                            p_now, p_request_id);
        v_events := array_append(v_events, 'run_deleted');
        IF cur.active THEN
            SELECT * INTO latest FROM runs WHERE user_id = p_user
             ORDER BY end_date DESC LIMIT 1;
            IF latest.run_id IS NOT NULL THEN
                UPDATE runs SET active = true, updated_at = p_now
                 WHERE user_id = p_user AND run_id = latest.run_id RETURNING * INTO a;
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
         WHERE user_id = p_user AND run_id = cur.run_id RETURNING * INTO a;
        PERFORM potato_emit(p_user, 'run_shrunk', 'unmark', potato_run_json(cur),
                            potato_run_json(a), p_now, p_request_id);
        v_change := 'shrunk'; v_runs := jsonb_build_array(potato_run_json(a));
        v_events := ARRAY['run_shrunk'];
    ELSE
        -- Split: the left piece keeps the run's identity; the right piece is
        -- new and inherits the active flag (it is the later of the two).
        UPDATE runs SET end_date = p_date - 1, day_count = p_date - start_date,
                        active = false, updated_at = p_now
         WHERE user_id = p_user AND run_id = cur.run_id RETURNING * INTO a;
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
                              'runs', v_runs, 'events', to_jsonb(v_events),
                              'changes', CASE WHEN cardinality(v_events) > 1 THEN
                                  potato_latest_changes(p_user, cardinality(v_events)) END);
END $$;
