"""Concurrency tests (issue 3, item 4): many writers, one real server, one real Postgres.

Writers call the real gRPC server over grpc.aio from the test's own event loop
(the server runs on its own loop in a background thread), all at once through
asyncio.gather. Every RPC error is recorded. Afterwards:

- no client saw INTERNAL, UNKNOWN or ABORTED, nor SQLSTATE 23P01 / 23505 / 40P01
  anywhere in the status (message or ErrorInfo metadata); every request here is
  valid, so in fact no call may fail at all;
- the invariant checker finds nothing;
- a dry-run rebuild finds nothing to change (the projection equals a rebuild);
- the stored runs equal the islands of the stored check-ins, computed here
  independently of the production code.

The repository's transparent retry of 40001/40P01 is switched off for these
tests, so a deadlock on the server could not hide behind a retry: it would
reach the client as ABORTED with sqlstate 40P01.

Op sequences are random but seeded: the seed is printed (run with `-s`), and
POTATO_CONCURRENCY_SEED=<seed> replays the same sequences (the interleaving
itself is up to the scheduler). POTATO_SLOW=1 raises the op counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from oracle import expected_runs

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.storage.runs_repo import RetryPolicy

T = TypeVar("T")

SLOW = os.environ.get("POTATO_SLOW") == "1"
SEED = int(os.environ.get("POTATO_CONCURRENCY_SEED") or random.SystemRandom().randrange(2**31))

# The minimum is 32 writers x 200 ops on one user; never go below it.
ONE_USER_WRITERS = 32
ONE_USER_OPS = 1000 if SLOW else 200
MANY_USERS = 200
MANY_WRITERS = 8
MANY_OPS = 200 if SLOW else 12

ZONES = ("America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu",
         "Pacific/Kiritimati", "Pacific/Pago_Pago")
# DEFAULT_NOW is 2026-11-21 12:00 UTC: 2026-11-21 is today or past in every zone above.
LAST_DAY = dt.date(2026, 11, 21)
ONE_DAY = dt.timedelta(days=1)
FORBIDDEN_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
FORBIDDEN_SQLSTATES = ("23P01", "23505", "40P01")
# The 1,600 writers of the many-users test all run at once, but at most this many
# calls are in flight: grpc core's server cancels calls beyond its pending-request
# limit (grpc.server.max_pending_requests, default 1000) with CANCELLED when
# more arrive at once than the Python server accepts. That is load shedding by
# the transport, not the write path under test; see the report of this test.
MAX_IN_FLIGHT = int(os.environ.get("POTATO_MAX_IN_FLIGHT") or 800)
CALL_TIMEOUT = 30.0  # the server caps deadlines at 30 s; this is no timed assertion


# --------------------------------------------------------------------------- model (test-only)
# --------------------------------------------------------------------------- error capture
@dataclass
class Outcome:
    ok: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)


def describe_error(op: str, exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    """Everything a client can see of a failed call, including ErrorInfo metadata."""
    info: dict[str, Any] = {"op": op, "code": exc.code().name, "details": exc.details() or ""}
    trailers = exc.trailing_metadata() or ()
    raw = next((v for k, v in trailers if k == "grpc-status-details-bin"), None)
    if raw is not None:
        status = status_pb2.Status.FromString(raw)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                ei = error_details_pb2.ErrorInfo()
                detail.Unpack(ei)
                info["reason"] = ei.reason
                info["metadata"] = dict(ei.metadata)
    return info


def forbidden(err: dict[str, Any]) -> bool:
    if err["code"] in {c.name for c in FORBIDDEN_CODES}:
        return True
    text = err["details"] + " " + " ".join(f"{k}={v}" for k, v in err.get("metadata", {}).items())
    return any(s in text for s in FORBIDDEN_SQLSTATES)


# --------------------------------------------------------------------------- writers
def window(days: int) -> list[dt.date]:
    return [LAST_DAY - ONE_DAY * i for i in range(days)][::-1]


async def writer(stub: RunsServiceStub, user: str, rng: random.Random, ops: int,
                 days: list[dt.date], out: Outcome, gate: asyncio.Semaphore | None = None) -> None:
    """A random but seeded sequence of marks, unmarks and backfills on one user."""
    for _ in range(ops):
        async with gate or contextlib.nullcontext():
            await one_op(stub, user, rng, days, out)


async def one_op(stub: RunsServiceStub, user: str, rng: random.Random, days: list[dt.date],
                 out: Outcome) -> None:
    roll = rng.random()
    zone = rng.choice(ZONES) if rng.random() < 0.1 else None
    try:
        if roll < 0.45:
            day = rng.choice(days)
            req = pb.MarkDayRequest(user_id=user, local_date=day.isoformat())
            if zone:
                req.time_zone = zone
            out.kinds["mark"] += 1
            res = await stub.MarkDay(req, timeout=CALL_TIMEOUT)
            s, e = dt.date.fromisoformat(res.run.start_date), dt.date.fromisoformat(res.run.end_date)
            if not (s <= day <= e) or res.local_date != day.isoformat():
                out.anomalies.append(f"mark {day}: run {s}..{e} does not hold the day")
        elif roll < 0.80:
            day = rng.choice(days)
            out.kinds["unmark"] += 1
            ures = await stub.UnmarkDay(pb.UnmarkDayRequest(user_id=user,
                                                            local_date=day.isoformat()),
                                        timeout=CALL_TIMEOUT)
            for r in ures.runs:
                if r.start_date <= day.isoformat() <= r.end_date:
                    out.anomalies.append(f"unmark {day}: piece {r.start_date}..{r.end_date} "
                                         "still holds the day")
        else:
            if rng.random() < 0.5:
                first = rng.randrange(len(days))
                picked = days[first:first + rng.randint(1, 10)]
            else:
                picked = rng.sample(days, rng.randint(1, 8))
            req_b = pb.BackfillDaysRequest(user_id=user,
                                           local_dates=[d.isoformat() for d in picked])
            if zone:
                req_b.time_zone = zone
            out.kinds["backfill"] += 1
            bres = await stub.BackfillDays(req_b, timeout=CALL_TIMEOUT)
            held = {d.isoformat() for d in picked}
            for r in bres.runs:
                if not any(r.start_date <= d <= r.end_date for d in held):
                    out.anomalies.append(f"backfill: run {r.start_date}..{r.end_date} "
                                         "holds none of the dates")
        out.ok += 1
    except grpc.aio.AioRpcError as exc:
        out.errors.append(describe_error(
            "mark" if roll < 0.45 else "unmark" if roll < 0.80 else "backfill", exc))


# --------------------------------------------------------------------------- helpers
async def on_server(server: Any, coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine on the server's loop without blocking the test's loop."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, server.loop))


@pytest.fixture
def no_retries(server: Any) -> Iterator[None]:
    """Switches off the repository's retry of 40001/40P01 so none can be hidden."""
    repo = server.app.runs._repo
    saved = repo._retry
    repo._retry = RetryPolicy(attempts=1)
    try:
        yield
    finally:
        repo._retry = saved


async def stored_state(db: asyncpg.Connection, users: list[uuid.UUID]
                       ) -> tuple[dict[uuid.UUID, list[Any]], dict[uuid.UUID, list[dt.date]]]:
    runs: dict[uuid.UUID, list[Any]] = {u: [] for u in users}
    dates: dict[uuid.UUID, list[dt.date]] = {u: [] for u in users}
    for r in await db.fetch("SELECT user_id, start_date, end_date, day_count, active FROM runs "
                            "WHERE user_id = ANY($1::uuid[]) ORDER BY user_id, start_date", users):
        runs[r[0]].append((r[1], r[2], r[3], r[4]))
    for r in await db.fetch("SELECT user_id, checkin_date FROM daily_checkins "
                            "WHERE user_id = ANY($1::uuid[]) ORDER BY 1, 2", users):
        dates[r[0]].append(r[1])
    return runs, dates


async def auditor(server: Any, user: uuid.UUID, done: asyncio.Event, found: list[str]) -> int:
    """While writers run: under the lock a rebuild must find nothing to change, and
    the checker (one statement, one snapshot per invariant) must find nothing."""
    rounds = 0
    while not done.is_set():
        plan = await on_server(server, server.app.admin.rebuild_user(user, None, None, True))
        if not plan.diff.empty:
            found.append(f"mid-flight rebuild diff: {plan.diff}")
        violations, _ = await on_server(server, server.app.admin.check(user))
        found.extend(f"mid-flight {v.code}: {v.detail}" for v in violations)
        rounds += 1
    return rounds


def report(title: str, users: int, writers: int, outcome: Outcome, seconds: float,
           violations: int, extra: str = "") -> None:
    ops = outcome.ok + len(outcome.errors)
    print(f"\n[{title}] seed={SEED} slow={SLOW} users={users} writers={writers} "
          f"operations={ops} ({dict(outcome.kinds)}) errors={len(outcome.errors)} "
          f"wall={seconds:.2f}s ops/s={ops / seconds:.0f} violations={violations}{extra}")


def assert_no_client_errors(outcome: Outcome) -> None:
    bad = [e for e in outcome.errors if forbidden(e)]
    assert not bad, f"constraint/deadlock/internal errors reached clients (seed {SEED}): {bad[:10]}"
    # Every request in these tests is valid, so no call may fail at all.
    assert not outcome.errors, f"valid calls failed (seed {SEED}): {outcome.errors[:10]}"
    assert not outcome.anomalies, f"responses contradict the request (seed {SEED}): " \
                                  f"{outcome.anomalies[:10]}"


# --------------------------------------------------------------------------- tests
async def test_32_writers_on_one_user(server: Any, stub: RunsServiceStub, db: asyncpg.Connection,
                                      clock: Any, no_retries: None) -> None:
    user = uuid.uuid4()
    days = window(75)  # a narrow window: every op lands next to another's run
    await stub.MarkDay(pb.MarkDayRequest(user_id=str(user), local_date=days[0].isoformat(),
                                         time_zone=ZONES[0]), timeout=CALL_TIMEOUT)
    outcome = Outcome()
    done = asyncio.Event()
    mid_flight: list[str] = []
    audit = asyncio.create_task(auditor(server, user, done, mid_flight))
    started = time.perf_counter()
    try:
        await asyncio.gather(*(
            writer(stub, str(user), random.Random(f"{SEED}:one:{w}"), ONE_USER_OPS, days, outcome)
            for w in range(ONE_USER_WRITERS)))
    finally:
        done.set()
    seconds = time.perf_counter() - started
    audit_rounds = await audit

    violations, _ = await on_server(server, server.app.admin.check(user))
    plan = await on_server(server, server.app.admin.rebuild_user(user, None, None, True))
    runs, dates = await stored_state(db, [user])
    report("one user", 1, ONE_USER_WRITERS, outcome, seconds, len(violations),
           f" mid-flight audits={audit_rounds} final runs={len(runs[user])} "
           f"check-ins={len(dates[user])}")

    assert_no_client_errors(outcome)
    assert outcome.ok >= ONE_USER_WRITERS * 200
    assert not mid_flight, mid_flight[:10]
    assert violations == [], violations[:10]
    assert plan.diff.empty, plan.diff
    assert runs[user] == expected_runs(dates[user])


async def test_200_users_with_8_writers_each(server: Any, stub: RunsServiceStub,
                                             db: asyncpg.Connection, clock: Any,
                                             no_retries: None) -> None:
    users = [uuid.uuid4() for _ in range(MANY_USERS)]
    days = window(40)
    await asyncio.gather(*(
        stub.MarkDay(pb.MarkDayRequest(user_id=str(u), local_date=days[0].isoformat(),
                                       time_zone=ZONES[i % len(ZONES)]), timeout=CALL_TIMEOUT)
        for i, u in enumerate(users)))
    outcome = Outcome()
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    started = time.perf_counter()
    await asyncio.gather(*(
        writer(stub, str(u), random.Random(f"{SEED}:many:{i}:{w}"), MANY_OPS, days, outcome,
               gate)
        for i, u in enumerate(users) for w in range(MANY_WRITERS)))
    seconds = time.perf_counter() - started

    mine = set(users)
    everyone, _ = await on_server(server, server.app.admin.check(None, 10_000))
    violations = [v for v in everyone if v.user_id in mine]
    drift = await on_server(server, server.app.admin.rebuild_all(batch=64, dry_run=True))
    drifted = [u for u in drift.drifted if u in mine]
    plans = [await on_server(server, server.app.admin.rebuild_user(u, None, None, True))
             for u in users]
    runs, dates = await stored_state(db, users)
    report("many users", MANY_USERS, MANY_USERS * MANY_WRITERS, outcome, seconds,
           len(violations), f" drifted={len(drifted)} (of {drift.users_scanned} scanned) "
           f"violations elsewhere in the database={len(everyone) - len(violations)} "
           f"max in flight={MAX_IN_FLIGHT}")

    assert_no_client_errors(outcome)
    assert outcome.ok >= MANY_USERS * MANY_WRITERS * MANY_OPS
    assert violations == [], violations[:10]
    assert drifted == []
    assert [u for u, p in zip(users, plans, strict=True) if not p.diff.empty] == []
    wrong = [u for u in users if runs[u] != expected_runs(dates[u])]
    assert wrong == [], f"{len(wrong)} users' runs are not the islands of their check-ins"
    assert sum(len(d) for d in dates.values()) > 0
