"""Operator routines: rebuild from facts and invariant checks (set-based SQL)."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass

import asyncpg

from potato_runs.deadline import Deadline
from potato_runs.domain.model import Run
from potato_runs.domain.rollout import DiffBatch, ShadowStats, class_counts
from potato_runs.domain.runs import RebuildPlan, plan_rebuild
from potato_runs.domain.totals import first_day, months_of_runs
from potato_runs.storage.citus import is_distributed
from potato_runs.storage.errors import DB_FAILURES, map_db_error
from potato_runs.storage.pool import acquire
from potato_runs.storage.runs_repo import RUN_COLUMNS, run_from_record


def _run_json(r: Run) -> str:
    """The same shape as potato_run_json() in SQL; unknown values are null."""
    def ts(v: dt.datetime | None) -> str | None:
        return v.isoformat() if v is not None else None

    return json.dumps({"run_id": r.run_id, "start_date": r.start_date.isoformat(),
                       "end_date": r.end_date.isoformat(), "day_count": r.day_count,
                       "active": r.active, "created_at": ts(r.created_at),
                       "updated_at": ts(r.updated_at),
                       "last_extended_at": ts(r.last_extended_at)})


@dataclass(frozen=True)
class Violation:
    code: str
    user_id: uuid.UUID
    detail: str


# Each invariant is one set-based query. {u} is replaced by a user filter
# (`AND x.user_id = $1`) for a one-user check, which then runs on the indexes.
INVARIANT_QUERIES: dict[str, str] = {
    # Every offending pair is reported (a self-join per user, not just neighbours).
    "RUNS_OVERLAP": """
        SELECT r.user_id, format('run %s..%s overlaps run %s..%s', r.start_date, r.end_date,
                                 b.start_date, b.end_date) AS detail
          FROM runs r
          JOIN runs b ON b.user_id = r.user_id
                     AND (b.start_date, b.run_id) > (r.start_date, r.run_id)
                     AND b.start_date <= r.end_date AND r.start_date <= b.end_date
         WHERE true {u}""",
    "RUNS_NOT_MERGED": """
        SELECT r.user_id, format('run %s..%s touches run %s..%s but was not merged',
                                 r.start_date, r.end_date, b.start_date, b.end_date) AS detail
          FROM runs r
          JOIN runs b ON b.user_id = r.user_id AND b.start_date = r.end_date + 1
         WHERE true {u}""",
    "END_BEFORE_START": """
        SELECT user_id, format('run %s..%s ends before it starts', start_date, end_date)
          FROM runs r WHERE end_date < start_date {u}""",
    "DAY_COUNT_MISMATCH": """
        SELECT user_id, format('run %s..%s has day_count %s, dates give %s', start_date,
                               end_date, day_count, end_date - start_date + 1)
          FROM runs r WHERE day_count <> end_date - start_date + 1 {u}""",
    "MULTIPLE_ACTIVE_RUNS": """
        SELECT user_id, format('%s active runs', count(*))
          FROM runs r WHERE active {u} GROUP BY user_id HAVING count(*) > 1""",
    "ACTIVE_RUN_NOT_LATEST": """
        SELECT user_id,
               CASE WHEN active_end IS NULL THEN format('no active run; latest run ends %s', latest_end)
                    ELSE format('active run ends %s but the latest run ends %s', active_end, latest_end)
               END
          FROM (SELECT user_id, max(end_date) AS latest_end,
                       max(end_date) FILTER (WHERE active) AS active_end,
                       count(*) FILTER (WHERE active AND end_date = (SELECT max(end_date) FROM runs r2
                                                                      WHERE r2.user_id = r.user_id)) AS ok
                  FROM runs r WHERE true {u} GROUP BY user_id) x
         WHERE ok = 0""",
    "ACTIVE_END_NOT_LATEST_CHECKIN": """
        SELECT r.user_id, format('active run ends %s but the latest check-in is %s',
                                 r.end_date, coalesce(c.latest::text, 'none'))
          FROM runs r
          LEFT JOIN LATERAL (SELECT max(checkin_date) AS latest FROM daily_checkins c
                              WHERE c.user_id = r.user_id) c ON true
         WHERE r.active {u} AND c.latest IS DISTINCT FROM r.end_date""",
    # The two coverage checks are anti-joins on (user, day), which PostgreSQL runs as hash
    # anti joins (about 0.3 s per 100k check-ins for everyone; per-row probes were 10x
    # slower), and which Citus pushes down to the shards whole: they are correlated on
    # user_id (an EXCEPT between two distributed subqueries pulls both sides' rows to the
    # coordinator).
    "CHECKIN_NOT_COVERED": """
        SELECT c.user_id, format('check-in %s is in no run', c.checkin_date)
          FROM daily_checkins c
         WHERE NOT EXISTS (SELECT 1 FROM runs r
                            WHERE r.user_id = c.user_id
                              AND c.checkin_date BETWEEN r.start_date AND r.end_date {u}) {uc}""",
    "RUN_DAY_WITHOUT_CHECKIN": """
        SELECT DISTINCT r.user_id, format('run day %s has no check-in', d::date)
          FROM runs r
         CROSS JOIN LATERAL generate_series(r.start_date, r.end_date, interval '1 day') d
         WHERE NOT EXISTS (SELECT 1 FROM daily_checkins c
                            WHERE c.user_id = r.user_id AND c.checkin_date = d::date {uc}) {u}""",
}


def invariant_sql(code: str, one_user: bool, *, some_users: bool = False) -> str:
    """The query of `code` for everyone, one user ($1 uuid), or a set of users ($1 uuid[],
    `some_users`: the incremental invariant monitor; the same index scans as one user)."""
    sql = INVARIANT_QUERIES[code]
    if some_users:
        return sql.replace("{u}", "AND r.user_id = ANY($1::uuid[])").replace(
            "{uc}", "AND c.user_id = ANY($1::uuid[])")
    return sql.replace("{u}", "AND r.user_id = $1" if one_user else "").replace(
        "{uc}", "AND c.user_id = $1" if one_user else "")


BATCH_USERS_SQL = """
SELECT user_id FROM users WHERE ($1::uuid IS NULL OR user_id > $1) ORDER BY user_id LIMIT $2
"""
"""The users of one batch ($1: the last user of the previous batch or NULL, $2: size)."""

# The users whose runs differ from the facts, among the users $1 (uuid[]): per user, the
# runs the facts give (gaps and islands) and the stored runs, each as one sorted array,
# compared. Equal arrays are equal multisets of runs, what EXCEPT ALL both ways tested.
# Every part is grouped, partitioned and joined by user_id, so on Citus the whole query
# runs inside each shard (one task per shard, only drifted user ids come back).
DRIFT_SQL = """
SELECT coalesce(t.user_id, s.user_id) AS user_id
  FROM (SELECT user_id,
               array_agg(ROW(start_date, end_date, day_count, active)
                         ORDER BY start_date, end_date, day_count, active) AS runs
          FROM (SELECT user_id, s AS start_date, e AS end_date, e - s + 1 AS day_count,
                       e = max(e) OVER (PARTITION BY user_id) AS active
                  FROM (SELECT user_id, min(checkin_date) AS s, max(checkin_date) AS e
                          FROM (SELECT c.user_id, c.checkin_date,
                                       c.checkin_date - (row_number() OVER (
                                           PARTITION BY c.user_id
                                           ORDER BY c.checkin_date))::int AS grp
                                  FROM daily_checkins c
                                 WHERE c.user_id = ANY ($1::uuid[])) f
                         GROUP BY user_id, grp) i) target
         GROUP BY user_id) t
  FULL JOIN
       (SELECT r.user_id,
               array_agg(ROW(r.start_date, r.end_date, r.day_count, r.active)
                         ORDER BY r.start_date, r.end_date, r.day_count, r.active) AS runs
          FROM runs r WHERE r.user_id = ANY ($1::uuid[])
         GROUP BY r.user_id) s ON s.user_id = t.user_id
 WHERE t.runs IS DISTINCT FROM s.runs
 ORDER BY 1
"""


def current_streak_sql(end: str, days: str, zone: str, now: str) -> str:
    """The current-streak rule in SQL, equal to domain.rules.is_current/today_in: a run
    ending today or yesterday (or later) in the user's zone at `now` counts its days."""
    return (f"(CASE WHEN {end} >= (({now}) AT TIME ZONE ({zone}))::date - 1 "
            f"THEN {days} ELSE 0 END)")


# The population diff of the batch of users $1 (uuid[], picked by BATCH_USERS_SQL) at
# $2, the service clock's now. Legacy = gaps and islands over daily_checkins (what v1
# computed on read), projection = the stored runs. Set-based: hash and merge joins per
# batch, no per-user or per-row probes. Every CTE is joined on user_id and every window
# is partitioned by user_id; the result is grouped by class and aggregated in two
# phases: per class the users, the check-ins read (class '': every user of the batch)
# and the ids of the differing users (diff_batch sorts them, counts them, keeps the
# first examples). On Citus (POPULATION_DIFF_CITUS_SQL) the CTEs are inlined, so the
# whole query runs inside each shard (one task per shard) and a shard sends back a row
# per class; on PostgreSQL the CTEs used more than once are computed once.
POPULATION_DIFF_SQL = """
WITH batch AS (
    SELECT user_id, time_zone FROM users WHERE user_id = ANY ($1::uuid[])
), facts AS (
    SELECT c.user_id, c.checkin_date,
           c.checkin_date - (row_number() OVER (PARTITION BY c.user_id
                                                ORDER BY c.checkin_date))::int AS grp
      FROM daily_checkins c WHERE c.user_id = ANY ($1::uuid[])
), legacy AS (
    SELECT user_id, min(checkin_date) AS s, max(checkin_date) AS e FROM facts GROUP BY user_id, grp
), latest AS (                    -- the legacy latest run: what legacy calls active
    SELECT DISTINCT ON (user_id) user_id, s, e FROM legacy ORDER BY user_id, e DESC
), proj AS (
    SELECT r.user_id, r.run_id, r.start_date AS s, r.end_date AS e, r.day_count, r.active
      FROM runs r WHERE r.user_id = ANY ($1::uuid[])
), pairs AS (                     -- legacy runs with each projection run overlapping them
    SELECT l.user_id, l.s AS ls, l.e AS le, p.run_id, p.s AS ps, p.e AS pe, p.day_count
      FROM legacy l LEFT JOIN proj p
        ON p.user_id = l.user_id AND p.s <= l.e AND l.s <= p.e
), islands AS (
    SELECT user_id, ls, le, count(run_id) AS n,
           coalesce(bool_or(ps <= ls AND pe >= le), false) AS whole
      FROM pairs GROUP BY user_id, ls, le
), cover AS (                    -- days of an island its runs cover: the union of the
    SELECT user_id, ls,           -- clipped runs (only of islands no one run covers)
           sum(greatest(0, ce - greatest(cs - 1, coalesce(prev_ce, cs - 1)))) AS covered
      FROM (SELECT user_id, ls, cs, ce,
                   max(ce) OVER (PARTITION BY user_id, ls ORDER BY cs, ce
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_ce
              FROM (SELECT user_id, ls, greatest(ls, ps) AS cs, least(le, pe) AS ce FROM pairs
                     WHERE run_id IS NOT NULL AND NOT (ps <= ls AND pe >= le)) c) w
     GROUP BY user_id, ls
), partial_cover AS (
    SELECT i.user_id, i.ls, i.le, coalesce(c.covered, 0) AS covered
      FROM islands i LEFT JOIN cover c ON c.user_id = i.user_id AND c.ls = i.ls
     WHERE NOT i.whole
), matched AS (
    SELECT DISTINCT user_id, run_id FROM pairs WHERE run_id IS NOT NULL
), ordered AS (
    SELECT user_id, s, e, max(e) OVER (PARTITION BY user_id ORDER BY s, run_id
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_e
      FROM proj
), actives AS (
    SELECT user_id, count(*) AS n, min(s) AS s, max(e) AS e FROM proj WHERE active GROUP BY user_id
), proj_current AS (              -- the projection's answer: its active run (latest if several)
    SELECT DISTINCT ON (user_id) user_id, s, e FROM proj WHERE active
     ORDER BY user_id, e DESC, run_id DESC
), per_user AS (                 -- a row per user of the batch: its check-ins, its classes
    SELECT b.user_id, coalesce(k.n, 0) AS checkins,
           ARRAY[CASE WHEN pr.day_count_mismatch THEN 'day_count_mismatch' END,
                 CASE WHEN i.missing_run THEN 'missing_run' END,
                 CASE WHEN x.extra_run THEN 'extra_run' END,
                 CASE WHEN o.overlap THEN 'overlap' END,
                 CASE WHEN u.uncovered_day THEN 'uncovered_day' END,
                 CASE WHEN coalesce(a.n, 0) <> (l.user_id IS NOT NULL)::int
                        OR (a.n = 1 AND (a.s, a.e) IS DISTINCT FROM (l.s, l.e))
                      THEN 'active_mismatch' END,
                 CASE WHEN coalesce({legacy_streak}, 0) <> coalesce({proj_streak}, 0)
                      THEN 'current_streak_mismatch' END] AS classes
      FROM batch b
      LEFT JOIN (SELECT user_id, count(*) AS n FROM facts GROUP BY user_id) k USING (user_id)
      LEFT JOIN latest l USING (user_id)
      LEFT JOIN actives a USING (user_id)
      LEFT JOIN proj_current pc USING (user_id)
      LEFT JOIN (SELECT user_id, true AS day_count_mismatch FROM pairs
                  WHERE run_id IS NOT NULL AND (ps <> ls OR pe <> le OR day_count <> pe - ps + 1)
                  GROUP BY user_id) pr USING (user_id)
      LEFT JOIN (SELECT user_id, true AS missing_run FROM islands WHERE n = 0
                  GROUP BY user_id) i USING (user_id)
      LEFT JOIN (SELECT p.user_id, true AS extra_run
                   FROM proj p LEFT JOIN matched m USING (user_id, run_id)
                  WHERE m.run_id IS NULL GROUP BY p.user_id) x USING (user_id)
      LEFT JOIN (SELECT user_id, true AS overlap FROM ordered WHERE s <= prev_e + 1
                  GROUP BY user_id) o USING (user_id)
      LEFT JOIN (SELECT user_id, true AS uncovered_day FROM partial_cover
                  WHERE covered < le - ls + 1 GROUP BY user_id) u USING (user_id)
)
SELECT cls, count(*) AS users, sum(checkins)::bigint AS checkins,
       array_agg(user_id) FILTER (WHERE cls <> '') AS user_ids
  FROM per_user CROSS JOIN LATERAL unnest(array_prepend('', classes)) AS c(cls)
 WHERE cls IS NOT NULL
 GROUP BY cls
""".replace("{legacy_streak}", current_streak_sql("l.e", "l.e - l.s + 1", "b.time_zone", "$2::timestamptz")
            ).replace("{proj_streak}", current_streak_sql("pc.e", "pc.e - pc.s + 1", "b.time_zone",
                                                         "$2::timestamptz"))
# (The read paths compute day counts from the dates, as domain.model.Run does; a stored
# day_count that disagrees is a day_count_mismatch, not a different streak.)
POPULATION_DIFF_CITUS_SQL = re.sub(r"^(WITH |\), )(\w+) AS \(", r"\1\2 AS NOT MATERIALIZED (",
                                   POPULATION_DIFF_SQL, flags=re.MULTILINE)
"""Citus does not inline a CTE used more than once by itself: it would plan it apart (a
Distributed Subplan pulling its rows to the coordinator). Inlined, a shard recomputes
them; on PostgreSQL that would be 4x slower, hence two texts."""

SHADOW_STATS_SQL = """
SELECT method, result, sum(count)::bigint AS n
  FROM shadow_comparisons
 WHERE flag = $1 AND hour >= date_trunc('hour', $2::timestamptz - make_interval(hours => $3))
 GROUP BY method, result ORDER BY method, result
"""


class AdminRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._citus: bool | None = None
        """Whether the schema is distributed (asked once, by the first population diff)."""

    async def rebuild_user(self, user_id: uuid.UUID, from_date: dt.date | None,
                           to_date: dt.date | None, dry_run: bool, now: dt.datetime,
                           request_id: str | None, timeout: float = 60.0) -> RebuildPlan:
        """Deletes and replays one user's runs in [from, to] (widened), under the lock."""
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                async with conn.transaction():
                    await conn.execute("SELECT potato_lock_user($1)", user_id,
                                       timeout=budget.timeout())   # migration 0013
                    dates = [r["checkin_date"] for r in await conn.fetch(
                        "SELECT checkin_date FROM daily_checkins WHERE user_id = $1",
                        user_id, timeout=budget.timeout())]
                    stored = [run_from_record(r) for r in await conn.fetch(
                        f"SELECT {RUN_COLUMNS} FROM runs WHERE user_id = $1",
                        user_id, timeout=budget.timeout())]
                    plan = plan_rebuild(user_id, stored, dates, from_date, to_date)
                    if not dry_run and not plan.diff.empty:
                        await self._apply(conn, user_id, plan, now, request_id, budget)
                    return plan
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc

    async def _apply(self, conn: asyncpg.Connection, user_id: uuid.UUID, plan: RebuildPlan,
                     now: dt.datetime, request_id: str | None, budget: Deadline) -> None:
        """Writes a plan in at most six set-based statements (arrays, not row loops)."""
        diff = plan.diff
        await conn.execute("SELECT potato_set_run_checks($1, true)", user_id,
                           timeout=budget.timeout())   # the runs checks deferred (0013)
        events: list[tuple[str, str | None, str | None]] = []
        if diff.removed:
            await conn.execute(
                "DELETE FROM runs WHERE user_id = $2 AND run_id = ANY($1::bigint[])",
                [r.run_id for r in diff.removed], user_id, timeout=budget.timeout())
            events += [("run_deleted", _run_json(r), None) for r in diff.removed]
        # Deactivations before activations: the one-active index is not deferrable.
        for active in (False, True):
            revs = [c for c in diff.changed if c.after.active is active]
            if revs:
                await conn.execute(
                    """UPDATE runs r SET start_date = u.s, end_date = u.e, day_count = u.e - u.s + 1,
                                         active = $5, updated_at = $6
                         FROM unnest($1::bigint[], $2::date[], $3::date[]) AS u(id, s, e)
                        WHERE r.run_id = u.id AND r.user_id = $4""",
                    [c.before.run_id for c in revs], [c.after.start_date for c in revs],
                    [c.after.end_date for c in revs], user_id, active, now, timeout=budget.timeout())
                events += [("run_rebuilt", _run_json(c.before), _run_json(c.after)) for c in revs]
            added = [r for r in diff.added if r.active is active]
            if added:
                await conn.execute(
                    """INSERT INTO runs (user_id, start_date, end_date, day_count, active,
                                         created_at, updated_at, last_extended_at)
                       SELECT $1, u.s, u.e, u.e - u.s + 1, $4, $5, $5, NULL
                         FROM unnest($2::date[], $3::date[]) AS u(s, e)""",
                    user_id, [r.start_date for r in added], [r.end_date for r in added], active,
                    now, timeout=budget.timeout())
                events += [("run_created", None, _run_json(r)) for r in added]
        await conn.execute(
            """INSERT INTO run_events (user_id, kind, cause, before, after, occurred_at, request_id)
               SELECT $1, u.kind, 'rebuild', u.before::jsonb, u.after::jsonb, $5, $6
                 FROM unnest($2::text[], $3::text[], $4::text[]) AS u(kind, before, after)""",
            user_id, [e[0] for e in events], [e[1] for e in events], [e[2] for e in events],
            now, request_id, timeout=budget.timeout())
        await conn.execute("SELECT potato_set_run_checks($1, false)", user_id,
                           timeout=budget.timeout())
        # Stored totals in the same transaction, under the same lock: the months of the
        # runs before and after (removed, added, changed) and the lifetime row.
        spans = [(r.start_date, r.end_date) for r in (*diff.removed, *diff.added)] + [
            (r.start_date, r.end_date) for c in diff.changed for r in (c.before, c.after)]
        await conn.execute("SELECT potato_refresh_totals($1, $2::date[], $3)", user_id,
                           [first_day(m) for m in sorted(months_of_runs(spans))], now,
                           timeout=budget.timeout())

    async def drifted_users(self, after: uuid.UUID | None, batch: int,
                            timeout: float = 300.0) -> tuple[uuid.UUID | None, int, list[uuid.UUID]]:
        """One set-based pass over a batch of users: those whose runs differ from the facts."""
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                users = [r[0] for r in await conn.fetch(BATCH_USERS_SQL, after, batch,
                                                        timeout=budget.timeout())]
                if not users:
                    return None, 0, []
                drifted = [r[0] for r in await conn.fetch(DRIFT_SQL, users,
                                                          timeout=budget.timeout())]
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        return users[-1], len(users), drifted

    async def diff_batch(self, after: uuid.UUID | None, batch: int, now: dt.datetime,
                         timeout: float = 300.0) -> DiffBatch:
        """The population diff (legacy vs projection) of the `batch` users after `after`."""
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                if self._citus is None:
                    self._citus = await is_distributed(conn)
                sql = POPULATION_DIFF_CITUS_SQL if self._citus else POPULATION_DIFF_SQL
                async with conn.transaction(readonly=True):
                    # The planner's estimate for the (rare) partial-cover branch is huge, and
                    # JIT-compiling for it took 1.7 s of a 2 s batch; the sorts want memory.
                    await conn.execute("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'",
                                       timeout=budget.timeout())
                    users = [r[0] for r in await conn.fetch(BATCH_USERS_SQL, after, batch,
                                                            timeout=budget.timeout())]
                    rows = await conn.fetch(sql, users, now, timeout=budget.timeout()) \
                        if users else []
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        by_class = {r["cls"]: r for r in rows}
        everyone = by_class.pop("", None)
        ids = {name: sorted(uuid.UUID(str(u)) for u in r["user_ids"])
               for name, r in by_class.items()}
        return DiffBatch(users_scanned=len(users),
                         users_different=len(set[uuid.UUID]().union(*ids.values())),
                         checkins_scanned=int(everyone["checkins"]) if everyone else 0,
                         classes=class_counts((name, int(by_class[name]["users"]), ids[name])
                                              for name in sorted(ids)),
                         last_user=users[-1] if users else None)

    async def shadow_stats(self, flag: str, window_hours: int, now: dt.datetime,
                           timeout: float = 30.0) -> ShadowStats:
        """Online shadow comparisons of `flag` in the window, and the stored mismatches."""
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                rows = await conn.fetch(SHADOW_STATS_SQL, flag, now, window_hours,
                                        timeout=budget.timeout())
                stored = await conn.fetchval(
                    "SELECT count(*) FROM shadow_mismatches WHERE flag = $1", flag,
                    timeout=budget.timeout())
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        return ShadowStats(counts={(r["method"], r["result"]): int(r["n"]) for r in rows},
                           stored_mismatches=int(stored), window_hours=window_hours)

    async def user_ids(self, after: uuid.UUID | None, batch: int,
                       timeout: float = 60.0) -> list[uuid.UUID]:
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                rows = await conn.fetch(
                    "SELECT user_id FROM users WHERE ($1::uuid IS NULL OR user_id > $1) "
                    "ORDER BY user_id LIMIT $2", after, batch, timeout=budget.timeout())
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        return [r["user_id"] for r in rows]

    async def count_users(self, timeout: float = 60.0) -> int:
        budget = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=budget.timeout()) as conn:
                return int(await conn.fetchval("SELECT count(*) FROM users",
                                               timeout=budget.timeout()))
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc

    async def check(self, user_id: uuid.UUID | None, limit: int,
                    timeout: float = 600.0) -> tuple[list[Violation], bool]:
        """Runs every invariant query within one time budget; returns (violations, truncated)."""
        out: list[Violation] = []
        truncated = False
        deadline = Deadline.after(timeout)
        try:
            async with acquire(self._pool, timeout=deadline.timeout()) as conn:
                for code in INVARIANT_QUERIES:
                    sql = invariant_sql(code, user_id is not None)
                    sql = f"SELECT * FROM ({sql}) v LIMIT {int(limit) + 1}"
                    args = (user_id,) if user_id is not None else ()
                    rows = await conn.fetch(sql, *args, timeout=deadline.timeout())
                    for r in rows:
                        if len(out) >= limit:
                            truncated = True
                            break
                        out.append(Violation(code, r[0], str(r[1])))
        except DB_FAILURES as exc:
            raise map_db_error(exc) from exc
        return out, truncated
