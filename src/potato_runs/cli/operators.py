"""Operator commands: rebuild and check."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from potato_runs.cli._common import (
    CliError,
    DataDirOpt,
    DsnOpt,
    T,
    _plain_errors,
    _run,
    _settings,
    app,
    console,
    err_console,
)


def _parse_date(value: str | None, name: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{name} must be YYYY-MM-DD") from exc


async def _with_admin(dsn: str | None, data_dir: Path | None,
                      fn: Callable[[Any], Awaitable[T]]) -> T:
    from potato_runs.app import open_database
    from potato_runs.clock import SystemClock
    from potato_runs.service.admin_service import AdminService
    from potato_runs.service.telemetry import Telemetry
    from potato_runs.storage.admin_repo import AdminRepository

    # Never creates an embedded cluster nor migrates: operators work on what exists.
    settings = _settings(dsn=dsn, data_dir=data_dir)
    try:
        db = await open_database(settings, run_migrations=False, create_cluster=False)
    except asyncpg.InvalidCatalogNameError as exc:
        if settings.dsn is not None:
            raise
        raise CliError("schema not up to date; run `potato-runs migrate` (the embedded "
                       "cluster has no `potato` database yet)") from exc
    try:
        await _require_schema(db.pool)
        return await fn(AdminService(AdminRepository(db.pool), SystemClock(), Telemetry()))
    finally:
        await db.close()


async def _require_schema(pool: asyncpg.Pool) -> None:
    """Refuses a database whose schema is missing or behind this version's migrations."""
    from potato_runs.storage.migrate import migrations

    async with pool.acquire() as conn:
        done: dict[str, str] = {}
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is not None:
            done = {r["version"]: r["checksum"] for r in
                    await conn.fetch("SELECT version, checksum FROM schema_migrations")}
    changed = [m.version for m in migrations() if done.get(m.version, m.checksum) != m.checksum]
    if changed:
        raise CliError(f"schema does not match this version: migration {changed[0]} was "
                       f"changed after it was applied")
    pending = [m.version for m in migrations() if m.version not in done]
    if pending:
        raise CliError(f"schema not up to date; run `potato-runs migrate` "
                       f"(pending: {', '.join(pending)})")


def _admin(dsn: str | None, data_dir: Path | None, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Runs an operator routine; failures exit 2 with a plain message (1 means violations)."""
    with _plain_errors():
        return _run(_with_admin(dsn, data_dir, fn))
    raise AssertionError("unreachable")   # for type checkers: _plain_errors() re-raises


@app.command()
def rebuild(user: str = typer.Option(None, "--user", help="Rebuild one user"),
            all_users: bool = typer.Option(False, "--all", help="Rebuild every user"),
            from_date: str = typer.Option(None, "--from"), to_date: str = typer.Option(None, "--to"),
            batch: int = typer.Option(500, "--batch", min=1, max=100_000),
            force: bool = typer.Option(False, "--force",
                                       help="With --all: replay every user, not only drifted ones"),
            dry_run: bool = typer.Option(False, "--dry-run", help="Report the diff, write nothing"),
            as_json: bool = typer.Option(False, "--json"),
            dsn: str = DsnOpt, data_dir: Path = DataDirOpt) -> None:
    """Rebuild runs from the check-in facts (one user, a range, or everyone)."""
    if bool(user) == all_users:
        raise typer.BadParameter("give exactly one of --user ID or --all")
    if user:
        try:
            user_id = uuid.UUID(user)
        except ValueError as exc:
            raise typer.BadParameter("--user must be a UUID") from exc
        lo, hi = _parse_date(from_date, "--from"), _parse_date(to_date, "--to")
        if lo and hi and lo > hi:
            raise typer.BadParameter("--to is before --from")
        plan = _admin(dsn, data_dir, lambda s: s.rebuild_user(user_id, lo, hi, dry_run))
        d = plan.diff
        if as_json:
            print(json.dumps({
                "user_id": user, "dry_run": dry_run,
                "window": [x.isoformat() for x in plan.window] if plan.window else None,
                "added": [[r.start_date.isoformat(), r.end_date.isoformat()] for r in d.added],
                "removed": [[r.start_date.isoformat(), r.end_date.isoformat()] for r in d.removed],
                "changed": [{"before": [c.before.start_date.isoformat(), c.before.end_date.isoformat(),
                                        c.before.active],
                             "after": [c.after.start_date.isoformat(), c.after.end_date.isoformat(),
                                       c.after.active]} for c in d.changed]}, indent=2))
            return
        table = Table(title=f"rebuild {user}" + (" (dry run)" if dry_run else ""))
        for col in ("change", "start", "end", "days", "active"):
            table.add_column(col)
        for r in d.added:
            table.add_row("added", str(r.start_date), str(r.end_date), str(r.day_count), str(r.active))
        for r in d.removed:
            table.add_row("removed", str(r.start_date), str(r.end_date), str(r.day_count),
                          str(r.active))
        for c in d.changed:
            table.add_row("changed", f"{c.before.start_date} -> {c.after.start_date}",
                          f"{c.before.end_date} -> {c.after.end_date}",
                          f"{c.before.day_count} -> {c.after.day_count}",
                          f"{c.before.active} -> {c.after.active}")
        console.print(table if not d.empty else "no changes: the runs match the facts")
        if plan.window:
            console.print(f"range rebuilt: {plan.window[0]}..{plan.window[1]}")
        return
    if from_date or to_date:
        raise typer.BadParameter("--from/--to apply to --user only")

    async def run_all(service: Any) -> Any:
        total = await service.count_users()
        with Progress(TextColumn("[bold]rebuild"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("drifted: {task.fields[drifted]}"), TimeElapsedColumn(),
                      console=err_console, disable=as_json) as progress:
            task = progress.add_task("users", total=total, drifted=0)

            def tick(scanned: int, drifted: int) -> None:
                progress.update(task, advance=scanned, drifted=drifted)

            return await service.rebuild_all(batch=batch, dry_run=dry_run, force=force,
                                             progress=tick)

    report = _admin(dsn, data_dir, run_all)
    summary = {"users_scanned": report.users_scanned, "users_drifted": report.users_drifted,
               "users_rebuilt": report.users_rebuilt, "runs_added": report.runs_added,
               "runs_removed": report.runs_removed, "runs_changed": report.runs_changed,
               "users_failed": len(report.failed),
               "seconds": round(report.seconds, 3), "dry_run": dry_run, "force": force}
    if as_json:
        print(json.dumps({**summary, "failed": [{"user_id": str(u), "error": e}
                                                 for u, e in report.failed]}, indent=2))
    else:
        table = Table(title="rebuild --all" + (" (dry run)" if dry_run else ""))
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in summary.items():
            table.add_row(k, str(v))
        console.print(table)
        if report.failed:
            failed = Table(title="users not rebuilt (run again for these)")
            failed.add_column("user")
            failed.add_column("error")
            for u, e in report.failed:
                failed.add_row(str(u), e)
            console.print(failed)
    if report.failed:
        raise typer.Exit(2)   # the run went on, but it is not complete


@app.command()
def check(user: str = typer.Option(None, "--user", help="Check one user (default: everyone)"),
          limit: int = typer.Option(1000, "--limit", min=1),
          as_json: bool = typer.Option(False, "--json"),
          dsn: str = DsnOpt, data_dir: Path = DataDirOpt) -> None:
    """Report every invariant violation; exits 1 when there is any, 2 when the check cannot run."""
    user_id = None
    if user:
        try:
            user_id = uuid.UUID(user)
        except ValueError as exc:
            raise typer.BadParameter("--user must be a UUID") from exc
    violations, truncated = _admin(dsn, data_dir, lambda s: s.check(user_id, limit))
    if as_json:
        print(json.dumps({"ok": not violations, "truncated": truncated,
                          "violations": [{"code": v.code, "user_id": str(v.user_id),
                                          "detail": v.detail} for v in violations]}, indent=2))
    elif not violations:
        console.print("[green]ok[/green]: every invariant holds")
    else:
        table = Table(title=f"{len(violations)} invariant violation(s)"
                      + (" (truncated)" if truncated else ""))
        for col in ("code", "user", "detail"):
            table.add_column(col)
        for v in violations:
            table.add_row(v.code, str(v.user_id), v.detail)
        console.print(table)
    if violations:
        raise typer.Exit(1)

