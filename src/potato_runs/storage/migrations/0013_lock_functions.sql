-- 0013_lock_functions.sql: the user's lock and the runs checks' deferral as functions of
-- the user, for the admin paths that write a user in a transaction of several statements
-- (storage/admin_repo.py rebuild_user, storage/totals_repo.py repair).
--
-- On one PostgreSQL they are what those paths ran before: pg_advisory_xact_lock on
-- potato_lock_key, and SET CONSTRAINTS of the runs exclusion constraints (the only
-- deferrable constraints) to DEFERRED, then back to IMMEDIATE. On Citus
-- (storage/citus.py) they are registered with force_delegation: the first call of the
-- transaction runs on the worker that holds p_user and pins the transaction there, so
-- the lock is the one the delegated write functions take on that worker (a lock taken
-- on the coordinator would not keep them out), and the deferral applies to the shards
-- the transaction then writes (a SET CONSTRAINTS on the coordinator does not reach them).

CREATE FUNCTION potato_lock_user(p_user uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(potato_lock_key(p_user));
END $$;

-- p_deferred: the checks at commit (true), or now, for what is pending, and from then on.
CREATE FUNCTION potato_set_run_checks(p_user uuid, p_deferred boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_deferred THEN
        SET CONSTRAINTS ALL DEFERRED;
    ELSE
        SET CONSTRAINTS ALL IMMEDIATE;
    END IF;
END $$;
