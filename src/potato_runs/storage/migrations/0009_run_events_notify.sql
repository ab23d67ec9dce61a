-- 0009_run_events_notify.sql: what the run event stream (RunEventsService.WatchRunEvents,
-- service/run_events.py) needs from run_events.
--
-- 1. No NOTIFY in the write transaction. A NOTIFY takes PostgreSQL's notification-queue
--    lock at commit and holds it through the commit's WAL flush, so every notifying
--    transaction of the cluster commits one after another (no group commit): a per-row
--    NOTIFY trigger here cut MarkDay throughput at 32 connections with fsync on from a
--    median of 1,360/s to 586/s (2.3x; scripts/bench_events.py repeats it). The server
--    that wrote therefore notifies after the commit, coalesced (storage/run_events_repo.py
--    EventNotifier: at most one `pg_notify('potato_run_events', '')` per 25 ms per
--    replica, outside any write transaction); the listener re-reads
--    run_events by `event_id > last settled id` on each wake-up and every second anyway,
--    so writes made elsewhere (an offline rebuild) arrive within that second.
-- 2. Transaction id before event id. Event ids come from a sequence, drawn at insert time,
--    and writes commit in any order: event 102 may be visible while 101 is still being
--    written. The stream delivers ids in order without skipping 101 by waiting, when it
--    sees such a gap, for every transaction in progress after it looked (their locks on
--    their own transaction ids, pg_locks). That is only sound if every transaction that
--    holds an unseen event id already had its transaction id when it drew the event id; the
--    statement trigger below assigns it (pg_current_xact_id) before any row of the
--    INSERT, hence before its identity default is evaluated. It costs nothing for the
--    write functions, which have written (and so hold an xid) before their first event.
--    The sequence keeps CACHE 1 (its default, stated here because the argument needs it):
--    ids are drawn in one global order.
-- 3. The retention watermark. The retention job (service/run_events.py RunEventsPurge)
--    deletes events older than POTATO_RUN_EVENTS_RETENTION in event_id order and records
--    the largest id it deleted: a cursor below it has lost events (CURSOR_EXPIRED).

ALTER TABLE run_events ALTER COLUMN event_id SET CACHE 1;

CREATE FUNCTION potato_run_events_xid_first() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN NULL;
END $$;

CREATE TRIGGER run_events_xid_first BEFORE INSERT ON run_events
    FOR EACH STATEMENT EXECUTE FUNCTION potato_run_events_xid_first();

-- One row: the largest event_id the retention job has deleted (0: none yet).
CREATE TABLE run_events_retention (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    purged_through bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz
);
INSERT INTO run_events_retention DEFAULT VALUES;
