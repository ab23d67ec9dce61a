from __future__ import annotations

import asyncpg

from potato.runs.v2 import run_pb2
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub

from .helpers import mark, stored_runs


async def test_mark_creates_a_run(stub: RunsServiceStub, db: asyncpg.Connection, user_id: str) -> None:
    res = await mark(stub, user_id, "2025-06-15")
    assert res.change == run_pb2.RUN_CHANGE_CREATED
    assert await stored_runs(db, user_id) == [("2025-06-15", "2025-06-15", 1, True)]
