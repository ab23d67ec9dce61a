-- 0002_write_functions.sql: the write path as server-side functions.
--
-- Each public write (potato_mark_day, potato_unmark_day, potato_backfill_days)
-- is one statement sent by the service in autocommit mode, so it is its own
-- READ COMMITTED transaction, and its first action is the per-user
-- pg_advisory_xact_lock. One round trip per write (see ADR-0002).
--
-- Domain errors are raised with SQLSTATEs of class 'PX' and a JSON DETAIL;
-- the service maps them by SQLSTATE, never by message text:
--   PX001 date in the future      PX002 time zone required
--   PX003 date before 2025-01-01  PX004 projection inconsistent

CREATE FUNCTION potato_lock_key(p_user uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended('potato.runs:' || p_user::text, 0)
$$;

CREATE FUNCTION potato_run_json(r runs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN r.run_id IS NULL THEN NULL ELSE jsonb_build_object(
        'run_id', r.run_id,
        'start_date', r.start_date, 'end_date', r.end_date,
        'day_count', r.day_count, 'active', r.active,
        'created_at', r.created_at, 'updated_at', r.updated_at,
        'last_extended_at', r.last_extended_at) END
$$;

CREATE FUNCTION potato_emit(p_user uuid, p_kind text, p_cause text, p_before jsonb,
                            p_after jsonb, p_now timestamptz, p_request_id text)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO run_events (user_id, kind, cause, before, after, occurred_at, request_id)
    VALUES (p_user, p_kind, p_cause, p_before, p_after, p_now, p_request_id)
$$;

-- Resolves the zone for a write: the request's zone wins and is stored;
-- otherwise the stored zone; otherwise PX002.
CREATE FUNCTION potato_resolve_zone(p_user uuid, p_zone text, p_now timestamptz)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_zone text;
BEGIN
    IF p_zone IS NOT NULL THEN
        -- A zone PostgreSQL does not know fails (22023) at its first use, in
        -- potato_check_date, and the statement rolls back with this upsert.
        INSERT INTO users AS u (user_id, time_zone, updated_at)
        VALUES (p_user, p_zone, p_now)
        ON CONFLICT (user_id) DO UPDATE
            SET time_zone = EXCLUDED.time_zone, updated_at = EXCLUDED.updated_at
            WHERE u.time_zone IS DISTINCT FROM EXCLUDED.time_zone;
        RETURN p_zone;
    END IF;
    SELECT time_zone INTO v_zone FROM users WHERE user_id = p_user;
    IF v_zone IS NULL THEN
        RAISE EXCEPTION 'time_zone is required: user % has no stored zone', p_user
            USING ERRCODE = 'PX002',
                  DETAIL = jsonb_build_object('user_id', p_user)::text;
    END IF;
    RETURN v_zone;
END $$;

CREATE FUNCTION potato_check_date(p_date date, p_zone text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_today date := (p_now AT TIME ZONE p_zone)::date;
BEGIN
    IF p_date > v_today THEN
        RAISE EXCEPTION 'date % is after today (%) in %', p_date, v_today, p_zone
            USING ERRCODE = 'PX001',
                  DETAIL = jsonb_build_object('local_date', p_date, 'today', v_today,
                                              'time_zone', p_zone)::text;
    END IF;
    IF p_date < DATE '2025-01-01' THEN
        RAISE EXCEPTION 'date % is before 2025-01-01', p_date
            USING ERRCODE = 'PX003',
                  DETAIL = jsonb_build_object('local_date', p_date)::text;
    END IF;
END $$;

-- Applies one new check-in to the projection. The caller holds the user's
-- lock. Touches only the neighbouring runs (index lookups on end_date).
CREATE FUNCTION potato_apply_mark(p_user uuid, p_date date, p_zone text, p_source text,
                                  p_now timestamptz, p_cause text, p_request_id text,
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
        DELETE FROM runs WHERE run_id = nxt.run_id;
        UPDATE runs SET end_date = nxt.end_date,
                        day_count = nxt.end_date - prev.start_date + 1,
                        active = nxt.active,
                        updated_at = p_now, last_extended_at = p_now
         WHERE run_id = prev.run_id RETURNING * INTO r;
        PERFORM potato_emit(p_user, 'run_merged', p_cause,
            jsonb_build_array(potato_run_json(prev), potato_run_json(nxt)),
            potato_run_json(r), p_now, p_request_id);
        change := 'merged'; events := array_append(events, 'run_merged');
    ELSIF prev.run_id IS NOT NULL THEN
        UPDATE runs SET end_date = p_date, day_count = day_count + 1,
                        updated_at = p_now, last_extended_at = p_now
         WHERE run_id = prev.run_id RETURNING * INTO r;
        PERFORM potato_emit(p_user, 'run_extended', p_cause, potato_run_json(prev),
                            potato_run_json(r), p_now, p_request_id);
        change := 'extended'; events := array_append(events, 'run_extended');
    ELSIF nxt.run_id IS NOT NULL THEN
        UPDATE runs SET start_date = p_date, day_count = day_count + 1,
                        updated_at = p_now, last_extended_at = p_now
         WHERE run_id = nxt.run_id RETURNING * INTO r;
        PERFORM potato_emit(p_user, 'run_extended', p_cause, potato_run_json(nxt),
                            potato_run_json(r), p_now, p_request_id);
        change := 'extended'; events := array_append(events, 'run_extended');
    ELSE
        SELECT * INTO latest FROM runs WHERE user_id = p_user AND active;
        IF latest.run_id IS NULL OR latest.end_date < p_date THEN
            IF latest.run_id IS NOT NULL THEN
                UPDATE runs SET active = false, updated_at = p_now
                 WHERE run_id = latest.run_id RETURNING * INTO prev;
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

-- MarkDay: exactly one of p_date / p_mark_time is set.
CREATE FUNCTION potato_mark_day(p_user uuid, p_date date, p_mark_time timestamptz,
                                p_zone text, p_source text, p_now timestamptz,
                                p_request_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_zone text; v_date date; res record;
BEGIN
    PERFORM pg_advisory_xact_lock(potato_lock_key(p_user));
    v_zone := potato_resolve_zone(p_user, p_zone, p_now);
    v_date := coalesce(p_date, (p_mark_time AT TIME ZONE v_zone)::date);
    PERFORM potato_check_date(v_date, v_zone, p_now);
    SELECT * INTO res FROM potato_apply_mark(p_user, v_date, v_zone, p_source, p_now,
                                             'mark', p_request_id);
    RETURN jsonb_build_object('change', res.change, 'local_date', v_date,
                              'time_zone', v_zone, 'run', res.run,
                              'events', to_jsonb(res.events));
END $$;

-- BackfillDays: all dates in one transaction, oldest first.
CREATE FUNCTION potato_backfill_days(p_user uuid, p_dates date[], p_zone text,
                                     p_source text, p_now timestamptz, p_request_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_zone text; d date; res record;
    v_added int := 0;
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
        END IF;
    END LOOP;
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

-- UnmarkDay: the run shrinks at an edge, splits in the middle, or is deleted.
CREATE FUNCTION potato_unmark_day(p_user uuid, p_date date, p_now timestamptz,
                                  p_request_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    cur runs; a runs; b runs; latest runs;
    n int;
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
        RETURN jsonb_build_object('removed', true, 'change', 'deleted',
                                  'runs', '[]'::jsonb, 'events', to_jsonb(v_events));
    ELSIF p_date = cur.start_date OR p_date = cur.end_date THEN
        UPDATE runs SET start_date = CASE WHEN p_date = cur.start_date
                                          THEN p_date + 1 ELSE start_date END,
                        end_date = CASE WHEN p_date = cur.end_date
                                        THEN p_date - 1 ELSE end_date END,
                        day_count = day_count - 1, updated_at = p_now
         WHERE run_id = cur.run_id RETURNING * INTO a;
        PERFORM potato_emit(p_user, 'run_shrunk', 'unmark', potato_run_json(cur),
                            potato_run_json(a), p_now, p_request_id);
        RETURN jsonb_build_object('removed', true, 'change', 'shrunk',
                                  'runs', jsonb_build_array(potato_run_json(a)),
                                  'events', to_jsonb(ARRAY['run_shrunk']));
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
        RETURN jsonb_build_object('removed', true, 'change', 'split',
                                  'runs', jsonb_build_array(potato_run_json(b), potato_run_json(a)),
                                  'events', to_jsonb(ARRAY['run_split']));
    END IF;
END $$;
