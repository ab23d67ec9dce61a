"""storage/active_run.py: the active run is read in constant work, whatever the history,
and it is exactly the run flagged active (also when the projection is damaged).

Work is counted in buffers and rows from EXPLAIN ANALYZE of the generic plan the pooled
connections use, never in time."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from potato_runs.domain.reads import ReadSource
from potato_runs.domain.totals_answers import TotalsSource
from potato_runs.storage.read_paths import QUERIES as V1_QUERIES
from potato_runs.storage.runs_repo import ACTIVE_SQL
from potato_runs.storage.totals_reads import QUERIES as TOTALS_QUERIES
from support import fresh_database

READS = {
    "GetActiveRun": ACTIVE_SQL,
    "GetTotals (stored)": TOTALS_QUERIES[TotalsSource.STORED, "lifetime"],
    "v1 current (projection)": V1_QUERIES[ReadSource.PROJECTION, "current"],
    "v1 stats (projection)": V1_QUERIES[ReadSource.PROJECTION, "stats"],
}
WEEKS = 520   # ten years of weekly runs: six days on, one off


@pytest.fixture(scope="module")
def dsn(pg_dsn: str) -> str:
    """A population like a real one (thousands of users with a few runs each), so the
    planner weighs its indexes as it does in production: on a nearly empty table it
    picks the partial index by chance, and the test could not fail."""
    dsn = fresh_database(pg_dsn, "potato_active_run")

    async def populate() -> None:
        c = await asyncpg.connect(dsn)
        try:
            if not await c.fetchval("SELECT count(*) FROM runs"):
                users = [uuid.uuid4() for _ in range(3000)]
                await c.execute("INSERT INTO users (user_id, time_zone) "
                                "SELECT unnest($1::uuid[]), 'UTC'", users)
                await c.execute(
                    "INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
                    "SELECT u, DATE '2025-01-01' + g, 'UTC' FROM unnest($1::uuid[]) u, "
                    "generate_series(0, 19) g WHERE g % 7 <> 6", users)
                await c.execute(
                    "INSERT INTO runs (user_id, start_date, end_date, day_count, active) "
                    "SELECT u, DATE '2025-01-01' + w * 7, DATE '2025-01-01' + w * 7 + 5, 6, "
                    "w = 2 FROM unnest($1::uuid[]) u, generate_series(0, 2) w", users)
                await c.execute("VACUUM ANALYZE")
        finally:
            await c.close()

    asyncio.run(populate())
    return dsn


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(dsn)
    try:
        await c.execute("SET plan_cache_mode = force_generic_plan")   # as a pooled statement
        yield c
    finally:
        await c.close()


async def user_with_runs(conn: asyncpg.Connection, weeks: int) -> uuid.UUID:
    """A user whose facts are `weeks` runs of six days (and whose runs are built from
    them, the latest active), written set-based."""
    user = uuid.uuid4()
    await conn.execute("INSERT INTO users (user_id, time_zone) VALUES ($1, 'UTC')", user)
    await conn.execute(
        "INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
        "SELECT $1, DATE '2025-01-01' + g, 'UTC' FROM generate_series(0, $2 * 7 - 2) g "
        "WHERE g % 7 <> 6", user, weeks)
    await conn.execute(
        "INSERT INTO runs (user_id, start_date, end_date, day_count, active) "
        "SELECT $1, DATE '2025-01-01' + w * 7, DATE '2025-01-01' + w * 7 + 5, 6, w = $2 - 1 "
        "FROM generate_series(0, $2 - 1) w", user, weeks)
    await conn.execute("ANALYZE runs")
    return user


def plan_rows_read(plan: Any) -> int:
    """Rows every table scan of a JSON plan read (returned plus removed by its filter; a
    bitmap index scan's rows are its heap scan's)."""
    total = 0
    if "Scan" in plan["Node Type"] and plan["Node Type"] not in (
            "Subquery Scan", "Function Scan", "Bitmap Index Scan"):
        total += plan["Actual Rows"] * plan["Actual Loops"] + plan.get("Rows Removed by Filter", 0)
    for child in plan.get("Plans", ()):
        total += plan_rows_read(child)
    return total


@pytest.mark.parametrize("read", sorted(READS))
async def test_the_active_run_costs_the_same_for_ten_years_as_for_one_week(
        conn: asyncpg.Connection, read: str) -> None:
    sql = READS[read]
    short, long = await user_with_runs(conn, 1), await user_with_runs(conn, WEEKS)
    name = "q_" + uuid.uuid4().hex[:8]
    await conn.execute(f"PREPARE {name} AS {sql}")
    read_rows = {}
    for who, user in (("short", short), ("long", long)):
        out = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON, TIMING OFF) "
                                  f"EXECUTE {name}('{user}')")
        read_rows[who] = plan_rows_read(json.loads(out)[0]["Plan"])
    if read == "v1 stats (projection)":   # it sums every run: it must read them all
        assert read_rows["long"] >= WEEKS
        read_rows["long"] -= WEEKS
    if read_rows["long"] > read_rows["short"] + 1:
        plan = await conn.fetch(f"EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) "
                                f"EXECUTE {name}('{long}')")
        pytest.fail(f"{read_rows}\n" + "\n".join(r[0] for r in plan))


async def test_the_flagged_run_is_the_answer_even_when_it_is_not_the_latest(
        conn: asyncpg.Connection) -> None:
    """A damaged projection (the checker's ACTIVE_NOT_LATEST) reads as before: the run
    flagged active, not the latest one."""
    user = await user_with_runs(conn, 3)
    await conn.execute("UPDATE runs SET active = false WHERE user_id = $1", user)
    await conn.execute("UPDATE runs SET active = true "
                       "WHERE user_id = $1 AND start_date = DATE '2025-01-01'", user)
    rec = await conn.fetchrow(ACTIVE_SQL, user)
    assert rec["has_run"] and str(rec["start_date"]) == "2025-01-01"
    await conn.execute("UPDATE runs SET active = false WHERE user_id = $1", user)
    rec = await conn.fetchrow(ACTIVE_SQL, user)
    assert not rec["has_run"] and rec["time_zone"] == "UTC"
