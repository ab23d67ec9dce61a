"""Client commands: mark, unmark, backfill, active, runs (over gRPC)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc
import typer
from rich.table import Table

from potato.runs.v2 import run_pb2, runs_service_pb2, runs_service_pb2_grpc
from potato_runs.cli._common import (
    T,
    TargetOpt,
    _target,
    app,
    console,
    err_console,
)


def _call(target: str | None, fn: Callable[[runs_service_pb2_grpc.RunsServiceStub], T]) -> T:
    with grpc.insecure_channel(_target(target)) as channel:
        try:
            return fn(runs_service_pb2_grpc.RunsServiceStub(channel))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            err_console.print(f"[red]{code.name if code else 'error'}[/red]: {detail}")
            raise typer.Exit(1) from exc


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _change(value: int) -> str:
    return run_pb2.RunChange.Name(value).removeprefix("RUN_CHANGE_").lower()


def _runs_table(runs: Any, title: str) -> Table:
    table = Table(title=title)
    for col in ("start", "end", "days", "active"):
        table.add_column(col)
    for r in runs:
        table.add_row(r.start_date, r.end_date, str(r.day_count), "yes" if r.active else "")
    return table


@app.command()
def mark(user: str = typer.Argument(..., help="User id (UUID)"),
         date: str = typer.Argument(None, help="Local date YYYY-MM-DD (default: today)"),
         tz: str = typer.Option(None, "--tz", help="IANA time zone to store for the user"),
         target: str = TargetOpt) -> None:
    """Mark a day (today in the user's zone when no date is given)."""
    req = runs_service_pb2.MarkDayRequest(user_id=user, source="cli")
    if date:
        req.local_date = date
    else:
        req.mark_time.FromDatetime(dt.datetime.now(dt.UTC))
    if tz:
        req.time_zone = tz
    res = _call(target, lambda s: s.MarkDay(req, timeout=10))
    console.print(f"{res.local_date}: {_change(res.change)} -> run {res.run.start_date}.."
                  f"{res.run.end_date} ({_days(res.run.day_count)})")


@app.command()
def unmark(user: str, date: str, target: str = TargetOpt) -> None:
    """Remove the mark of a day."""
    req = runs_service_pb2.UnmarkDayRequest(user_id=user, local_date=date)
    res = _call(target, lambda s: s.UnmarkDay(req, timeout=10))
    console.print(f"{date}: {_change(res.change)}" + ("" if res.removed else " (was not marked)"))
    if res.runs:
        console.print(_runs_table(res.runs, "runs left"))


@app.command()
def backfill(user: str, dates: list[str] = typer.Argument(..., help="Dates YYYY-MM-DD"),
             tz: str = typer.Option(None, "--tz"), target: str = TargetOpt) -> None:
    """Mark many past days in one transaction."""
    req = runs_service_pb2.BackfillDaysRequest(user_id=user, local_dates=dates, source="cli")
    if tz:
        req.time_zone = tz
    res = _call(target, lambda s: s.BackfillDays(req, timeout=30))
    console.print(f"added {res.added_days} day(s)")
    console.print(_runs_table(res.runs, "runs holding those dates"))


@app.command()
def active(user: str, target: str = TargetOpt) -> None:
    """Show the user's active run and current streak."""
    res = _call(target, lambda s: s.GetActiveRun(
        runs_service_pb2.GetActiveRunRequest(user_id=user), timeout=10))
    if not res.HasField("run"):
        console.print("no check-ins yet")
        return
    state = f"current streak: {_days(res.current_streak_days)}" if res.current else \
        "not current (the streak has ended)"
    console.print(f"active run {res.run.start_date}..{res.run.end_date} "
                  f"({_days(res.run.day_count)}) in {res.time_zone}; {state}")


@app.command()
def runs(user: str, page_size: int = typer.Option(50, "--page-size"),
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
    console.print(_runs_table(collected, f"runs of {user}"))
    if token:
        console.print(f"more: --all, or next page token {token}")

