-- 0007_request_ids.sql: idempotent retries of writes by request id (AIP-155, issue 8).
--
-- A write request may carry a request_id (a UUID the client picks once per logical write
-- and repeats on every retry; v2: the request field, v1: the `potato-request-id`
-- metadata). Not to be confused with run_events.request_id, the `x-request-id` tracing
-- header recorded for each event.
--
-- request_ids remembers, per user and request id, a fingerprint of the request and the
-- response the write gave. The primary key starts with user_id: the service is to be
-- distributed by user_id (Citus), and no write spans two users, so every statement on
-- this table, like every other write, stays on one user's shard.
--
--   fingerprint  sha256 (32 bytes) of the method and the request's canonical fields,
--                computed in Python from the validated command (service/request_ids.py),
--                not from the raw proto bytes, whose field order and unknown fields may
--                differ between two sendings of the same request;
--   response     the write function's jsonb result, exactly as it was returned: the
--                replay rebuilds the original response from it (the original `change`,
--                the runs as they were then, timestamps included);
--   created_at   the write's `now` (the service clock): the purge deletes rows older
--                than Settings.request_id_retention (24 h) in small batches
--                (service/request_id_purge.py).
CREATE TABLE request_ids (
    user_id     uuid        NOT NULL,
    request_id  uuid        NOT NULL,
    fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    response    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, request_id)
);
CREATE INDEX request_ids_created_at ON request_ids (created_at);

-- The recorded response of (p_user, p_request) when it was recorded with the same
-- fingerprint, with "replayed": true added; NULL when the id is unknown. The same id
-- with another fingerprint raises PX005 (ALREADY_EXISTS, REQUEST_ID_REUSED). The caller
-- holds the user's advisory lock, so no writer of this user can record the id between
-- this lookup and the caller's own record: concurrent retries of one id queue on the
-- lock, the first one writes, the others find its response.
CREATE FUNCTION potato_request_replay(p_user uuid, p_request uuid, p_fingerprint bytea)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r request_ids;
BEGIN
    SELECT * INTO r FROM request_ids WHERE user_id = p_user AND request_id = p_request;
    IF r.user_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF r.fingerprint <> p_fingerprint THEN
        RAISE EXCEPTION 'request id % of user % was used for another request', p_request, p_user
            USING ERRCODE = 'PX005',
                  DETAIL = jsonb_build_object('request_id', p_request)::text;
    END IF;
    RETURN r.response || jsonb_build_object('replayed', true);
END $$;

-- Records a write's response under its request id (the caller holds the lock and has
-- just looked the id up: a plain INSERT, never a conflict).
CREATE FUNCTION potato_request_record(p_user uuid, p_request uuid, p_fingerprint bytea,
                                      p_response jsonb, p_now timestamptz)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO request_ids (user_id, request_id, fingerprint, response, created_at)
    VALUES (p_user, p_request, p_fingerprint, p_response, p_now)
$$;

-- The writes with a request id: the lock, the lookup, the write (the unchanged function
-- of 0005, which takes the same lock again: an advisory lock is re-entrant within a
-- transaction) and the record, in one statement, hence one transaction and one round
-- trip. A write that fails records nothing (the whole statement rolls back), so its
-- retry runs it again. Calls without a request id still call the 0005 functions
-- directly: they pay nothing for this.
CREATE FUNCTION potato_mark_day_once(p_user uuid, p_date date, p_mark_time timestamptz,
                                     p_zone text, p_source text, p_now timestamptz,
                                     p_trace_id text, p_request uuid, p_fingerprint bytea)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(potato_lock_key(p_user));
    v := potato_request_replay(p_user, p_request, p_fingerprint);
    IF v IS NULL THEN
        v := potato_mark_day(p_user, p_date, p_mark_time, p_zone, p_source, p_now, p_trace_id);
        PERFORM potato_request_record(p_user, p_request, p_fingerprint, v, p_now);
    END IF;
    RETURN v;
END $$;

CREATE FUNCTION potato_unmark_day_once(p_user uuid, p_date date, p_now timestamptz,
                                       p_trace_id text, p_request uuid, p_fingerprint bytea)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(potato_lock_key(p_user));
    v := potato_request_replay(p_user, p_request, p_fingerprint);
    IF v IS NULL THEN
        v := potato_unmark_day(p_user, p_date, p_now, p_trace_id);
        PERFORM potato_request_record(p_user, p_request, p_fingerprint, v, p_now);
    END IF;
    RETURN v;
END $$;

CREATE FUNCTION potato_backfill_days_once(p_user uuid, p_dates date[], p_zone text,
                                          p_source text, p_now timestamptz, p_trace_id text,
                                          p_request uuid, p_fingerprint bytea)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(potato_lock_key(p_user));
    v := potato_request_replay(p_user, p_request, p_fingerprint);
    IF v IS NULL THEN
        v := potato_backfill_days(p_user, p_dates, p_zone, p_source, p_now, p_trace_id);
        PERFORM potato_request_record(p_user, p_request, p_fingerprint, v, p_now);
    END IF;
    RETURN v;
END $$;
