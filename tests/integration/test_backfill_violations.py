"""BackfillDays reports every bad date of a request in one error: malformed dates (found
while parsing), dates before launch and dates in the future (found by the use case with
the user's zone), in request order; nothing is written."""

from __future__ import annotations

import sys
from pathlib import Path

import asyncpg
import grpc
import pytest

from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import rich_status

from .helpers import backfill, mark

MIXED = ["2025-04-02", "2025-13-01", "2099-01-01", "2024-12-31", "04/05/2025", "2026-11-22"]
EXPECTED = [("local_dates[1]", "INVALID_DATE"), ("local_dates[2]", "DATE_IN_FUTURE"),
            ("local_dates[3]", "DATE_BEFORE_LAUNCH"), ("local_dates[4]", "INVALID_DATE"),
            ("local_dates[5]", "DATE_IN_FUTURE")]   # the clock says 2026-11-21 12:00 UTC


@pytest.mark.parametrize("stored_zone", [True, False])
async def test_every_bad_date_is_reported_at_once(stub: RunsServiceStub, db: asyncpg.Connection,
                                                  user_id: str, stored_zone: bool) -> None:
    if stored_zone:   # the zone comes from the user's row (one extra read)
        await mark(stub, user_id, "2025-04-01", tz="UTC")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await backfill(stub, user_id, MIXED, tz=None if stored_zone else "UTC")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(err.value)
    assert bad is not None and info is not None
    assert [(v.field, v.reason) for v in bad.field_violations] == EXPECTED
    assert info.reason == "INVALID_DATE" and info.metadata["field_violations"] == "5"
    rows = await db.fetch("SELECT checkin_date FROM daily_checkins WHERE user_id = $1", user_id)
    assert len(rows) == (1 if stored_zone else 0)


async def test_a_bad_user_id_is_reported_with_the_malformed_dates(stub: RunsServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await backfill(stub, "nope", ["2025-13-01"], tz="UTC")
    _, bad, _ = rich_status(err.value)
    assert bad is not None
    assert [v.field for v in bad.field_violations] == ["user_id", "local_dates[0]"]
