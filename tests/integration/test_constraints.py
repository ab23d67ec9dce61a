"""The database refuses bad runs itself, whatever the application does."""

from __future__ import annotations

import asyncpg
import pytest

from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub

from .helpers import backfill, stored_runs

INSERT = """INSERT INTO runs (user_id, start_date, end_date, day_count, active)
            VALUES ($1, $2::text::date, $3::text::date, $4, $5)"""


@pytest.fixture
async def user_with_run(stub: RunsServiceStub, user_id: str) -> str:
    await backfill(stub, user_id, ["2025-05-10", "2025-05-11", "2025-05-12"], tz="UTC")
    return user_id


@pytest.mark.parametrize(("start", "end", "count", "active", "error", "constraint"), [
    ("2025-05-12", "2025-05-14", 3, False, asyncpg.ExclusionViolationError, "runs_no_overlap"),
    ("2025-05-13", "2025-05-14", 2, False, asyncpg.ExclusionViolationError, "runs_no_touch"),
    ("2025-05-20", "2025-05-21", 5, False, asyncpg.CheckViolationError, "runs_day_count_matches"),
    ("2025-05-21", "2025-05-20", 0, False, asyncpg.CheckViolationError, None),
    ("2025-05-20", "2025-05-20", 1, True, asyncpg.UniqueViolationError,
     "runs_one_active_per_user"),
])
async def test_bad_runs_are_refused_by_postgres(db: asyncpg.Connection, user_with_run: str,
                                                start: str, end: str, count: int, active: bool,
                                                error: type[Exception],
                                                constraint: str | None) -> None:
    before = await stored_runs(db, user_with_run)
    with pytest.raises(error) as err:
        await db.execute(INSERT, user_with_run, start, end, count, active)
    if constraint:
        assert err.value.constraint_name == constraint  # type: ignore[attr-defined]
    assert await stored_runs(db, user_with_run) == before


async def test_checkin_before_launch_is_refused(db: asyncpg.Connection,
                                                user_with_run: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as err:
        await db.execute("INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
                         "VALUES ($1, '2024-12-31', 'UTC')", user_with_run)
    assert err.value.constraint_name == "checkin_date_not_before_launch"


async def test_duplicate_checkin_is_refused(db: asyncpg.Connection, user_with_run: str) -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
                         "VALUES ($1, '2025-05-10', 'UTC')", user_with_run)
