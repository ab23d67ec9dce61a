"""SIGTERM under load: a graceful drain.

A call is held in flight on purpose (its user's write lock is held by the test), then
the server gets SIGTERM at a random moment of the load. New calls must get UNAVAILABLE
while the held call is still running; the held call and every other call in flight must
finish (OK, not CANCELLED); the process must exit 0 within the grace period; a restarted
server answers again, and no acknowledged write is lost. Rounds: load.SIZES (1 by
default, 3 with POTATO_FAULTS=1).

A call that reaches the server in the instant its listener stops can end CANCELLED
(without trailers) instead of UNAVAILABLE: grpc core kills calls it received but had not
yet handed to the server's handlers when `server.stop()` begins. Such calls are counted
and reported; the test asserts that they happen only inside the shutdown window
(between SIGTERM and the exit), and that every other new call got UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import random
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc

from faults.load import (
    CHANNEL_OPTIONS,
    SEED,
    SIZES,
    ServerProcess,
    Workload,
    assert_clean,
    now,
    report,
    running,
    seconds,
    verify,
)
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc as pb_grpc
from potato_runs.config import Settings

ACCEPTABLE = {"OK", "UNAVAILABLE"}
RACING_SHUTDOWN = "CANCELLED"
"""What grpc core answers to a call caught between arrival and dispatch by server.stop."""
GRACE = Settings().grace_period
"""`serve`'s grace period (not configurable from the environment): the bound on exit."""
WAITERS = """SELECT count(*) FROM pg_locks
              WHERE locktype = 'advisory' AND NOT granted
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
"""Sessions of this database waiting for an advisory lock. Not joined with
pg_stat_activity, which is a snapshot taken once per transaction."""


async def until(cond: Callable[[], Awaitable[bool]], bound: float, what: str) -> None:
    """Polls the async `cond` (10 ms) until it holds, for at most `bound` seconds."""
    deadline = now() + bound
    while not await cond():
        assert now() < deadline, what
        await asyncio.sleep(0.01)


async def drain_once(server: ServerProcess, db: asyncpg.Connection, held_user: str,
                     day: dt.date, codes: collections.Counter[str]) -> tuple[float, float]:
    """One SIGTERM with a call held in flight (its user's lock is held by `db`); returns
    the moments of the SIGTERM and of the exit. `codes` gets the codes of the new calls sent
    during the drain."""
    request = pb.MarkDayRequest(user_id=held_user, local_date=day.isoformat(), time_zone="UTC")

    async def refused() -> bool:
        async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as fresh:
            try:
                await pb_grpc.RunsServiceStub(fresh).GetActiveRun(
                    pb.GetActiveRunRequest(user_id=held_user), timeout=2)
                codes["OK"] += 1
                return False
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
                return exc.code() == grpc.StatusCode.UNAVAILABLE

    async def waiting() -> bool:
        return bool(await db.fetchval(WAITERS))

    async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.RunsServiceStub(ch)

        async def mark() -> pb.MarkDayResponse:
            return await stub.MarkDay(request, timeout=30)

        lock = db.transaction()
        await lock.start()
        held: asyncio.Task[pb.MarkDayResponse] | None = None
        try:
            await db.execute("SELECT pg_advisory_xact_lock(potato_lock_key($1))",
                             uuid.UUID(held_user))
            held = asyncio.create_task(mark())
            await until(waiting, 10, "the held MarkDay never waited for the lock")
            signalled = now()
            server.signal(signal.SIGTERM)
            line = await server.read_line(10)
            assert "shutting down" in line, (line, server.log_tail())
            await until(refused, GRACE, "new calls were not refused during the drain")
            assert not held.done(), "the held call ended before it was released"
        finally:
            await lock.rollback()   # releases the lock: the held call goes on
            if held is not None and sys.exc_info()[0] is not None:   # failing: no stray task
                held.cancel()
                with contextlib.suppress(BaseException):
                    await held
        answer = await held
        assert answer.local_date == day.isoformat()
    assert await server.wait_exit(GRACE + 30) == 0, server.log_tail()
    return signalled, now()


async def test_sigterm_drains_in_flight_calls_and_loses_nothing(fault_dsn: str,
                                                                tmp_path: Path) -> None:
    server = ServerProcess(fault_dsn, tmp_path)
    rng = random.Random(SEED)
    windows: list[tuple[float, float]] = []
    recoveries: list[float] = []
    shutdown_codes: collections.Counter[str] = collections.Counter()
    try:
        await server.start()
        load = Workload(server.target, SIZES.workers, SIZES.users_per_worker)
        db = await asyncpg.connect(fault_dsn)
        try:
            async with running(load):
                for round_ in range(SIZES.sigterm_rounds):
                    await load.calls.wait_ok_after(now())
                    await asyncio.sleep(rng.uniform(*SIZES.load_before_fault))   # the moment
                    held_user = str(uuid.uuid4())
                    day = dt.date(2025, 6, 1) + dt.timedelta(days=round_)
                    windows.append(await drain_once(server, db, held_user, day,
                                                    shutdown_codes))
                    load.model.users.add(held_user)
                    load.model.record(held_user, [day], True, "ok")
                    load.calls.acked_writes += 1
                    restarted = now()
                    await server.start()
                    recoveries.append(await load.calls.wait_ok_after(restarted))
        finally:
            await db.close()
        assert await server.stop() == 0, server.log_tail()
        verdict = await verify(fault_dsn, load.model)
        alarms = server.alarms()
        probes = ", ".join(f"{k}={v}" for k, v in shutdown_codes.most_common())
        exits = [end - start for start, end in windows]
        racing = [(s, e) for s, e, code in load.calls.failures if code == RACING_SHUTDOWN]
        outside = [(s, e) for s, e in racing
                   if not any(start <= e <= end + 1.0 for start, end in windows)]
        # (+1 s: the worker sees its answer a scheduling step after the exit is seen)
        report(f"SIGTERM x{SIZES.sigterm_rounds}", load.calls, verdict,
               f"restart to first OK: {seconds(recoveries)}",
               f"held call OK each time; new calls during drain: {probes}; "
               f"{RACING_SHUTDOWN} racing server.stop: {len(racing)}; "
               f"SIGTERM to exit 0: {seconds(exits)} (grace {GRACE:g} s)")
        assert set(load.calls.codes) <= ACCEPTABLE | {RACING_SHUTDOWN}, (
            load.calls.codes, load.calls.samples)
        assert not outside, f"{RACING_SHUTDOWN} outside a shutdown: {outside}"
        assert set(shutdown_codes) <= ACCEPTABLE | {RACING_SHUTDOWN}, shutdown_codes
        assert max(exits) <= GRACE, exits
        assert not alarms, alarms[:10]
        assert_clean(verdict, server)
    finally:
        await server.close()
