"""Helpers for the v1 and shadow tests: flag states, reads with their source."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from potato.runs.v1 import runs_service_pb2 as v1
from potato.runs.v1.runs_service_pb2_grpc import RunsServiceStub as V1Stub
from potato_runs.domain.flags import RUNS_V2, FlagEvaluator, FlagState, StaticFlags
from support import ServerThread

READ_SOURCE = "potato-read-source"


def flags(*, enabled: bool = True, shadow: int = 0, allow: tuple[str, ...] = (),
          deny: tuple[str, ...] = ()) -> StaticFlags:
    """ff.potato.runs_v2 as a StaticFlags: `allow` users get v2, `deny` legacy, and a
    `shadow` share (basis points) of the rest shadow."""
    return StaticFlags(FlagState(
        RUNS_V2, enabled=enabled, shadow_basis_points=shadow,
        allow_user_ids=frozenset(uuid.UUID(u) for u in allow),
        deny_user_ids=frozenset(uuid.UUID(u) for u in deny)))


LEGACY = flags(enabled=False)
SHADOW_ALL = flags(shadow=10_000)


def projection_for(*users: str) -> StaticFlags:
    return flags(allow=users)


@contextlib.contextmanager
def using_flags(server: ServerThread, evaluator: FlagEvaluator) -> Iterator[None]:
    """The server's v1 reads evaluate ff.potato.runs_v2 with `evaluator` meanwhile."""
    assert server.app is not None and server.app.v1 is not None
    v1_service = server.app.v1
    before = v1_service.flags
    v1_service.flags = evaluator
    try:
        yield
    finally:
        v1_service.flags = before


async def read(method: Callable[..., Any], request: Any) -> tuple[Any, str]:
    """Calls a v1 read; returns the response and its one `potato-read-source`."""
    call = method(request, timeout=10)
    metadata = await call.initial_metadata()
    sources = [v for k, v in metadata if k == READ_SOURCE]
    assert len(sources) == 1, metadata
    return await call, sources[0]


def run_tuple(r: Any) -> tuple[str, str, int, bool]:
    return (r.start_date, r.end_date, r.day_count, r.active)


async def answers(stub: V1Stub, user: str, limit: int = 100) -> tuple[dict[str, Any], set[str]]:
    """The three v1 reads of one user, in one comparable shape, and their sources."""
    cur, s1 = await read(stub.GetCurrentRun, v1.GetCurrentRunRequest(user_id=user))
    lst, s2 = await read(stub.ListRuns, v1.ListRunsRequest(user_id=user, limit=limit))
    st, s3 = await read(stub.GetStats, v1.GetStatsRequest(user_id=user))
    return {
        "current": run_tuple(cur.run) if cur.HasField("run") else None,
        "current_streak_days": cur.current_streak_days,
        "runs": [run_tuple(r) for r in lst.runs],
        "stats": (st.total_days, st.longest_run_days, st.current_streak_days, st.run_count),
    }, {s1, s2, s3}


async def until(check: Callable[[], Awaitable[bool]], what: str, bound: float = 10.0) -> None:
    """Polls `check` (20 ms apart) until it holds; fails after `bound` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + bound
    while not await check():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def forget(db: Any, user: str) -> None:
    """Removes every row of a user (after a test damaged its projection)."""
    for table in ("shadow_mismatches", "run_totals", "user_totals", "run_events", "runs",
                  "daily_checkins", "users"):
        await db.execute(f"DELETE FROM {table} WHERE user_id = $1", uuid.UUID(user))
