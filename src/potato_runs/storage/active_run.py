"""The one SQL form of "the user's active run", for every read that joins it.

`runs WHERE user_id = $1 AND active` looks like a probe of the partial unique index
`runs_one_active_per_user`, but PostgreSQL 15 plans it (generic and custom plans alike)
as a scan of the GiST exclusion index `runs_no_touch` on `user_id` with `active` as a
filter: every run the user ever had is read to find one (608 rows removed for a user with
ten years of weekly runs; GiST cost estimates are generic and came out cheaper). The
active run is, by the projection's rule, the user's latest run, so the latest run by the
btree `runs_user_end_desc` (one index tuple) is taken when it is flagged active; only
when it is not (a projection the checker would report) does the second branch look for
the flagged one, so the answer is exactly the flagged run, as before, in constant time
for a correct projection (scripts/bench.py's flat reads;
tests/integration/test_active_run.py holds the plans to it)."""

from __future__ import annotations


def active_run_lateral(user: str, alias: str = "r") -> str:
    """A `LEFT JOIN LATERAL` giving the active run of the user whose id is the SQL
    expression `user` (`q.user_id`, `$1`) as `alias`, with every column of `runs`."""
    return f"""LEFT JOIN LATERAL (
        (SELECT * FROM (SELECT * FROM runs WHERE user_id = {user}
                         ORDER BY end_date DESC LIMIT 1) latest
          WHERE latest.active)
        UNION ALL
        (SELECT * FROM runs WHERE user_id = {user} AND active)
        LIMIT 1) {alias} ON true"""
