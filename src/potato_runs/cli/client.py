"""Client commands: mark, unmark, backfill, active, runs (over gRPC)."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable
from typing import Any

import typer
from rich.markup import escape

from potato.runs.v2 import run_pb2, runs_service_pb2, runs_service_pb2_grpc
from potato_runs.cli._common import (
    T,
    TargetOpt,
    _with_metadata,
    app,
    call,
    console,
    show,
    table,
    tls_options,
)

UserArg = typer.Argument(..., help="User id (UUID, e.g. 2b1f7a8e-4c0d-4f6e-9a57-0e4c1d2b3a40)")


CLIENT_TOKEN_ENV = "POTATO_TOKEN"
"""The bearer token the client commands send, for a server with an access policy (the
admin token is for operator commands and has no runs role under a policy)."""


def _call(target: str | None, fn: Callable[[runs_service_pb2_grpc.RunsServiceStub], T]) -> T:
    """One RunsService call, with `authorization: Bearer $POTATO_TOKEN` when it is set;
    a failure prints one `error:` line, every field violation and a hint, and exits 1."""
    token = os.environ.get(CLIENT_TOKEN_ENV, "").strip()
    if not token:
        return call(target, runs_service_pb2_grpc.RunsServiceStub, fn)
    metadata = (("authorization", f"Bearer {token}"),)
    return call(target, lambda ch: _with_metadata(
        runs_service_pb2_grpc.RunsServiceStub(ch), metadata), fn)


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _change(value: int) -> str:
    return run_pb2.RunChange.Name(value).removeprefix("RUN_CHANGE_").lower()


def _runs_table(runs: Any, title: str) -> Any:
    t = table(title, "start", "end", "days", "active", right=("days",))
    for r in runs:
        t.add_row(r.start_date, r.end_date, str(r.day_count), "yes" if r.active else "")
    return t


def _say(text: str) -> None:
    console.print(escape(text), highlight=False)


@app.command()
@tls_options
def mark(user: str = UserArg,
         date: str = typer.Argument(None, help="Local date YYYY-MM-DD (default: today in the "
                                               "user's zone)"),
         tz: str = typer.Option(None, "--tz", help="IANA time zone to store for the user, e.g. "
                                                   "America/New_York (needed for a new user)"),
         target: str = TargetOpt) -> None:
    """Mark a day (today in the user's zone when no date is given)."""
    # A request_id per command (AIP-155): the channel's retries resend it, so a retried
    # mark answers with its original change, not NONE.
    req = runs_service_pb2.MarkDayRequest(user_id=user, source="cli",
                                          request_id=str(uuid.uuid4()))
    if date:
        req.local_date = date
    else:
        req.mark_time.FromDatetime(dt.datetime.now(dt.UTC))
    if tz:
        req.time_zone = tz
    res = _call(target, lambda s: s.MarkDay(req, timeout=10))
    _say(f"{res.local_date}: {_change(res.change)} -> run {res.run.start_date}.."
         f"{res.run.end_date} ({_days(res.run.day_count)})")


@app.command()
@tls_options
def unmark(user: str = UserArg,
           date: str = typer.Argument(..., help="Local date YYYY-MM-DD to unmark"),
           target: str = TargetOpt) -> None:
    """Remove the mark of a day (its run shrinks, splits or disappears)."""
    req = runs_service_pb2.UnmarkDayRequest(user_id=user, local_date=date,
                                            request_id=str(uuid.uuid4()))
    res = _call(target, lambda s: s.UnmarkDay(req, timeout=10))
    _say(f"{date}: {_change(res.change)}" + ("" if res.removed else " (was not marked)"))
    if res.runs:
        show(_runs_table(res.runs, "runs left"))


@app.command()
@tls_options
def backfill(user: str = UserArg,
             dates: list[str] = typer.Argument(..., help="Local dates YYYY-MM-DD (up to 500); "
                                                         "every bad one is reported at once"),
             tz: str = typer.Option(None, "--tz", help="IANA time zone of the dates, stored for "
                                                       "the user (needed for a new user)"),
             target: str = TargetOpt) -> None:
    """Mark many past days in one transaction (runs merge)."""
    req = runs_service_pb2.BackfillDaysRequest(user_id=user, local_dates=dates, source="cli",
                                               request_id=str(uuid.uuid4()))
    if tz:
        req.time_zone = tz
    res = _call(target, lambda s: s.BackfillDays(req, timeout=30))
    _say(f"added {res.added_days} day(s)")
    show(_runs_table(res.runs, "runs holding those dates"))


@app.command()
@tls_options
def active(user: str = UserArg, target: str = TargetOpt) -> None:
    """Show the user's active run and current streak."""
    res = _call(target, lambda s: s.GetActiveRun(
        runs_service_pb2.GetActiveRunRequest(user_id=user), timeout=10))
    if not res.HasField("run"):
        _say("no check-ins yet")
        return
    state = f"current streak: {_days(res.current_streak_days)}" if res.current else \
        "not current (the streak has ended)"
    _say(f"active run {res.run.start_date}..{res.run.end_date} "
         f"({_days(res.run.day_count)}) in {res.time_zone}; {state}")


@app.command()
@tls_options
def runs(user: str = UserArg,
         page_size: int = typer.Option(50, "--page-size", min=1, max=500,
                                       help="Runs per page (at most 500)"),
         all_pages: bool = typer.Option(False, "--all", help="Follow every page"),
         target: str = TargetOpt) -> None:
    """List the user's runs, newest first."""
    collected: list[Any] = []
    token = ""
    while True:
        req = runs_service_pb2.ListRunsRequest(user_id=user, page_size=page_size, page_token=token)
        res = _call(target, lambda s, r=req: s.ListRuns(r, timeout=10))  # type: ignore[misc]
        collected.extend(res.runs)
        token = res.next_page_token
        if not token or not all_pages:
            break
    if not collected:
        _say(f"no runs for {user}")
        return
    show(_runs_table(collected, f"runs of {user}"))
    if token:
        _say(f"more: --all, or next page token {token}")
