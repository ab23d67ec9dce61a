-- 0008_backfill_net_events.sql: a backfill records its net change; every write returns
-- its run events with their before/after runs (issue 11).
--
-- 1. Net events of a backfill. potato_backfill_days (0005) applied its dates one by one
--    through potato_apply_mark, and each step wrote its events: N separate dates into an
--    empty user gave N run_created and N-1 run_deactivated, every intermediate state of
--    one request. That inflated run_events, the event counters and the merge rate. Now
--    the steps write no events (potato_apply_mark is called with a NULL cause, which
--    potato_emit skips), and once the dates are applied, still in the same statement and
--    under the same lock, the backfill compares the runs around the dates before and
--    after (potato_backfill_net_events) and writes only the difference:
--      * run_deactivated: the run that was active before is no longer active
--        (before = it as it was, after = the run that now holds its days);
--      * then, for each run around the dates now, in date order, by how many runs of
--        before it contains (runs only grow during a backfill, and every run of before
--        ends up inside exactly one run of after):
--          0 -> run_created  (before NULL, after the run),
--          1 -> run_extended (before the old run, after the run) when its dates changed,
--               nothing when they did not,
--          2+ -> run_merged  (before = the old runs in date order, after the run).
--    Kinds, cause ('backfill'), occurred_at and request_id are as before; a run_merged of
--    a backfill may hold more than two runs in `before`. Totals are unchanged (they are
--    computed from each step's change, not from the events).
-- 2. 'changes' in a write's result: the run events the call wrote, as
--    [{kind, before, after}] in event order, so the service can put them on the
--    request's span (service/telemetry.py) without another round trip. A backfill always
--    returns them (it computed them). MarkDay and UnmarkDay return them only when the call
--    wrote two events (run_deactivated + run_created, run_deleted + run_activated): the
--    second concerns another run, which the result does not show. They read them back
--    from run_events (the user's latest rows: the user's advisory lock is held, so they
--    are this call's; one backward index probe). A one-event call (the common case: a day
--    extends the streak) returns NULL and pays nothing: its before is the result's run
--    minus (MarkDay) or plus (UnmarkDay) the day, which storage/runs_repo.py derives.
--    Measured: the read-back costs ~30 us of backend CPU where it runs
--    (scripts/bench_metrics.py). The recorded response of a request id
--    (request_ids.response) does not keep them: a replay writes no events.

-- Steps of a backfill pass p_cause = NULL: nothing is written for them. PL/pgSQL, not
-- SQL as in 0002: it keeps its statement's plan between calls (a SQL function that is not
-- inlined is planned on every call), and it is on the hot path.
CREATE OR REPLACE FUNCTION potato_emit(p_user uuid, p_kind text, p_cause text, p_before jsonb,
                                       p_after jsonb, p_now timestamptz, p_request_id text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_cause IS NOT NULL THEN
        INSERT INTO run_events (user_id, kind, cause, before, after, occurred_at, request_id)
        VALUES (p_user, p_kind, p_cause, p_before, p_after, p_now, p_request_id);
    END IF;
END $$;

-- The last p_count run events of a user as [{kind, before, after}], oldest first; the
-- caller holds the user's lock and has just written them. PL/pgSQL for its cached plan.
CREATE FUNCTION potato_latest_changes(p_user uuid, p_count integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
BEGIN
    IF p_count = 0 THEN
        RETURN '[]'::jsonb;
    END IF;
    SELECT coalesce(jsonb_agg(jsonb_build_object('kind', e.kind, 'before', e.before,
                                                 'after', e.after) ORDER BY e.event_id),
                    '[]'::jsonb)
      INTO v
      FROM (SELECT event_id, kind, before, after FROM run_events
             WHERE user_id = p_user
             ORDER BY event_id DESC LIMIT p_count) e;
    RETURN v;
END $$;

-- A recorded response keeps what the caller got, not the telemetry of the first call.
CREATE OR REPLACE FUNCTION potato_request_record(p_user uuid, p_request uuid,
                                                 p_fingerprint bytea, p_response jsonb,
                                                 p_now timestamptz)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO request_ids (user_id, request_id, fingerprint, response, created_at)
    VALUES (p_user, p_request, p_fingerprint, p_response - 'changes', p_now)
$$;

-- The net run events of a backfill (see 1. above): p_before holds the runs that
-- intersected [p_lo, p_hi] (the dates widened by one day each side) before the dates were
-- applied, as potato_run_json objects; p_old_active the run that was active then. Writes
-- the events and returns them as [{kind, before, after}].
CREATE FUNCTION potato_backfill_net_events(p_user uuid, p_before jsonb, p_old_active runs,
                                           p_lo date, p_hi date, p_now timestamptz,
                                           p_request_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    a runs; holder runs;
    v_in jsonb; v_before jsonb; v_after jsonb; v_kind text;
    v_changes jsonb := '[]'::jsonb;
BEGIN
    IF p_old_active.run_id IS NOT NULL THEN
        SELECT * INTO holder FROM runs
         WHERE user_id = p_user AND end_date >= p_old_active.start_date
         ORDER BY end_date LIMIT 1;
        IF NOT holder.active THEN
            v_before := potato_run_json(p_old_active); v_after := potato_run_json(holder);
            PERFORM potato_emit(p_user, 'run_deactivated', 'backfill', v_before, v_after,
                                p_now, p_request_id);
            v_changes := v_changes || jsonb_build_array(jsonb_build_object(
                'kind', 'run_deactivated', 'before', v_before, 'after', v_after));
        END IF;
    END IF;
    FOR a IN SELECT * FROM runs
              WHERE user_id = p_user AND end_date >= p_lo AND start_date <= p_hi
              ORDER BY start_date LOOP
        SELECT coalesce(jsonb_agg(b ORDER BY (b->>'start_date')::date), '[]'::jsonb)
          INTO v_in
          FROM jsonb_array_elements(p_before) b
         WHERE (b->>'start_date')::date BETWEEN a.start_date AND a.end_date;
        v_after := potato_run_json(a);
        IF jsonb_array_length(v_in) = 0 THEN
            v_kind := 'run_created'; v_before := NULL;
        ELSIF jsonb_array_length(v_in) = 1 THEN
            v_before := v_in->0;
            CONTINUE WHEN (v_before->>'start_date')::date = a.start_date
                      AND (v_before->>'end_date')::date = a.end_date;
            v_kind := 'run_extended';
        ELSE
            v_kind := 'run_merged'; v_before := v_in;
        END IF;
        PERFORM potato_emit(p_user, v_kind, 'backfill', v_before, v_after, p_now,
                            p_request_id);
        v_changes := v_changes || jsonb_build_array(jsonb_build_object(
            'kind', v_kind, 'before', v_before, 'after', v_after));
    END LOOP;
    RETURN v_changes;
END $$;

-- BackfillDays (0005): the same steps and totals, the net events (see 1. above).
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
     WHERE r.run_id IN (
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

-- MarkDay (0005), unchanged but for 'changes' in its result.
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
                              'events', to_jsonb(res.events),
                              'changes', CASE WHEN cardinality(res.events) > 1 THEN
                                  potato_latest_changes(p_user, cardinality(res.events)) END);
END $$;

-- UnmarkDay (0005), unchanged but for 'changes' in its result.
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
                              'runs', v_runs, 'events', to_jsonb(v_events),
                              'changes', CASE WHEN cardinality(v_events) > 1 THEN
                                  potato_latest_changes(p_user, cardinality(v_events)) END);
END $$;
