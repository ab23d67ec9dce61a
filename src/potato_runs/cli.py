"""potato-runs: serve, migrate, operate and poke the service from a terminal."""

from __future__ import annotations

import os

# Before grpc is imported: the embedded cluster is driven with subprocesses, and
# gRPC's fork handlers only add noise about them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from potato.runs.v2 import run_pb2, runs_service_pb2, runs_service_pb2_grpc
from potato_runs.config import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Potato Runs: check-in facts and streak runs over gRPC.")
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

DsnOpt = typer.Option(None, "--dsn", help="PostgreSQL DSN (default: $POTATO_DSN, else embedded)")
DataDirOpt = typer.Option(None, "--data-dir", help="Embedded PostgreSQL data directory")
TargetOpt = typer.Option(None, "--target", help="host:port of a running server "
                         "(default: $POTATO_TARGET or 127.0.0.1:50051)")


class CliError(Exception):
    """A failure explained by its message alone (exit 2, no traceback)."""


def _check_dsn(dsn: str) -> None:
    """Refuses a malformed DSN up front: asyncpg reports some (a bad port, a broken
    IPv6 host) as bare ValueError/OverflowError. Messages never repeat the DSN, which
    may hold a password."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError('the scheme must be "postgresql" or "postgres"')
        if "," not in parts.netloc:   # one host (multi-host DSNs are left to asyncpg)
            _ = parts.port            # ValueError unless a number in 0..65535
    except ValueError as exc:
        raise CliError(f"invalid DSN: {exc}") from exc


def _settings(**overrides: Any) -> Settings:
    try:
        settings = Settings.from_env(**overrides)
    except ValueError as exc:
        raise CliError(f"invalid POTATO_* environment setting: {exc}") from exc
    if settings.dsn is not None:
        _check_dsn(settings.dsn)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):   # an OSError in 3.11, usually with no text
        return "timed out"
    return str(exc).strip() or type(exc).__name__


def _describe(exc: Exception) -> str | None:
    """The `error: ...` text for a failure an operator can act on; None for a bug."""
    from potato_runs.domain.errors import DomainError
    from potato_runs.observability import ObservabilityError

    if isinstance(exc, asyncpg.PostgresError):   # e.g. 28P01 (login refused), 3D000 (no database)
        return f"PostgreSQL refused ({exc.sqlstate}): {_reason(exc)}"
    if isinstance(exc, asyncpg.InterfaceError):  # e.g. an invalid DSN
        return f"cannot connect to PostgreSQL: {_reason(exc)}"
    if isinstance(exc, OSError):                 # refused, unreachable, timed out
        return f"cannot reach PostgreSQL: {_reason(exc)}"
    if isinstance(exc, (CliError, DomainError, ObservabilityError, RuntimeError)):
        # RuntimeError: EmbeddedPostgresError, MigrationError, "could not bind ..."
        return _reason(exc)
    return None


def _error(message: str) -> None:
    err_console.print("[red]error:[/red]", escape(message), soft_wrap=True, highlight=False)


@contextlib.contextmanager
def _plain_errors() -> Iterator[None]:
    """Known failures print one `error: ...` message and exit 2 (no traceback)."""
    try:
        yield
    except Exception as exc:
        message = _describe(exc)
        if message is None:
            raise
        _error(message)
        raise typer.Exit(2) from exc


# --------------------------------------------------------------------------- serve
@app.command()
def serve(host: str = typer.Option(None, help="Address to bind (default 127.0.0.1)"),
          port: int = typer.Option(None, min=0, max=65535,
                                   help="Port (default 50051; 0 picks a free one)"),
          dsn: str = DsnOpt, data_dir: Path = DataDirOpt) -> None:
    """Run the gRPC server (embedded PostgreSQL when no DSN is given).
    Exits 2 with `error: ...` when it cannot start."""
    from potato_runs.app import build_app

    with _plain_errors():
        settings = _settings(host=host, port=port, dsn=dsn, data_dir=data_dir)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        application = await build_app(settings)
        where = "embedded PostgreSQL in " + str(settings.data_dir) if settings.dsn is None \
            else "PostgreSQL at the given DSN"
        print(f"potato-runs serving on {settings.host}:{application.port} ({where})", flush=True)
        try:
            await stop.wait()
        finally:
            print("potato-runs shutting down", flush=True)
            await application.stop()

    with _plain_errors():
        _run(main())


@app.command()
def migrate(dsn: str = DsnOpt, data_dir: Path = DataDirOpt) -> None:
    """Apply pending schema migrations (creates the embedded cluster when needed).
    Exits 2 with `error: ...` when it cannot."""
    from potato_runs.app import open_database
    from potato_runs.storage.migrate import migrate as run_migrate

    async def main() -> list[str]:
        db = await open_database(_settings(dsn=dsn, data_dir=data_dir), run_migrations=False)
        try:
            # A connection of its own: no pool command_timeout (migrate() bounds its
            # statements), and closing it ends any session lock.
            conn = await asyncpg.connect(db.dsn)
            try:
                return await run_migrate(conn)
            finally:
                await conn.close()
        finally:
            await db.close()

    with _plain_errors():
        applied = _run(main())
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


# --------------------------------------------------------------------------- client commands
def _target(target: str | None) -> str:
    return target or os.environ.get("POTATO_TARGET") or "127.0.0.1:50051"


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


# --------------------------------------------------------------------------- operators
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
