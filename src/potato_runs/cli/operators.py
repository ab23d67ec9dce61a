"""Operator commands: check, rebuild and shadow diff.

They ask the running server through AdminService by default (--target, the admin
token from $POTATO_ADMIN_TOKEN or <data-dir>/admin.token); --dsn (or --offline)
works on the database directly, for when no server runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2 import admin_service_pb2_grpc
from potato_runs.cli._common import (
    AdminDataDirOpt,
    CliError,
    OfflineDsnOpt,
    OfflineOpt,
    T,
    TargetOpt,
    _plain_errors,
    _run,
    _settings,
    app,
    call,
    console,
    err_console,
    show,
    table,
    tls_options,
)
from potato_runs.domain import rollout
from potato_runs.domain.flags import RUNS_V2

shadow_app = typer.Typer(no_args_is_help=True,
                         help="Shadow reads of ff.potato.runs_v2: the population diff and the "
                              "GO / NO-GO verdict.")
app.add_typer(shadow_app, name="shadow")

RPC_BATCH_TIMEOUT = 600.0
"""Seconds the CLI gives one batch call (the server caps it at the same)."""
RPC_CHECK_TIMEOUT = 600.0
RPC_USER_TIMEOUT = 60.0


def _parse_date(value: str | None, name: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{name} must be YYYY-MM-DD") from exc


def _parse_user(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise typer.BadParameter("--user must be a UUID") from exc


# --------------------------------------------------------------------------- offline
async def _with_admin(dsn: str | None, data_dir: Path | None,
                      fn: Callable[[Any], Awaitable[T]],
                      service: Callable[[asyncpg.Pool], Any] | None = None) -> T:
    from potato_runs.app import open_database
    from potato_runs.clock import SystemClock
    from potato_runs.service.admin_service import AdminService
    from potato_runs.service.telemetry import Telemetry
    from potato_runs.storage.admin_repo import AdminRepository

    # Never creates an embedded cluster nor migrates: operators work on what exists.
    # `service` builds the use case fn gets from the pool (default: AdminService).
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
        return await fn(service(db.pool) if service is not None else
                        AdminService(AdminRepository(db.pool), SystemClock(), Telemetry()))
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


def _admin(dsn: str | None, data_dir: Path | None, fn: Callable[[Any], Awaitable[T]],
           service: Callable[[asyncpg.Pool], Any] | None = None) -> T:
    """Runs an operator routine offline; failures exit 2 with a plain message."""
    with _plain_errors():
        return _run(_with_admin(dsn, data_dir, fn, service))
    raise AssertionError("unreachable")   # for type checkers: _plain_errors() re-raises


# --------------------------------------------------------------------------- online
def _remote(target: str | None, data_dir: Path | None,
            fn: Callable[[admin_service_pb2_grpc.AdminServiceStub], T]) -> T:
    """AdminService calls over one channel to the running server; a failed call prints
    one `error:` line with a hint and exits 2 (the command could not run)."""
    with _plain_errors():
        return call(target, admin_service_pb2_grpc.AdminServiceStub, fn, admin=True,
                    data_dir=data_dir, exit_code=2)
    raise AssertionError("unreachable")


def _offline(dsn: str | None, offline: bool) -> bool:
    return offline or dsn is not None


@contextlib.contextmanager
def _bar(label: str, total: int | None, **fields: Any) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields advance(n, **fields)."""
    extra = [TextColumn(f"{k}: {{task.fields[{k}]}}") for k in fields]
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *extra,
                  TimeElapsedColumn(), console=err_console) as progress:
        task = progress.add_task(label, total=total, **fields)

        def advance(n: int, **values: Any) -> None:
            progress.update(task, advance=n, **values)

        yield advance


# --------------------------------------------------------------------------- rebuild
@dataclass
class _RunView:
    start_date: str
    end_date: str
    day_count: int
    active: bool


def _view(r: Any) -> _RunView:
    return _RunView(str(r.start_date), str(r.end_date), int(r.day_count), bool(r.active))


@app.command()
@tls_options
def rebuild(user: str = typer.Option(None, "--user", help="Rebuild one user (UUID)"),
            all_users: bool = typer.Option(False, "--all", help="Rebuild every user"),
            from_date: str = typer.Option(None, "--from",
                                          help="With --user: first date YYYY-MM-DD (widened to "
                                               "whole runs)"),
            to_date: str = typer.Option(None, "--to",
                                        help="With --user: last date YYYY-MM-DD (widened)"),
            batch: int = typer.Option(500, "--batch", min=1, max=10_000,
                                      help="With --all: users per batch"),
            force: bool = typer.Option(False, "--force",
                                       help="With --all: replay every user, not only drifted ones"),
            dry_run: bool = typer.Option(False, "--dry-run", help="Report the diff, write nothing"),
            blue_green: bool = typer.Option(
                False, "--blue-green",
                help="With --all: build a new runs table from the facts and swap it in "
                     "(needs the owner role: the server's --migrate-dsn or embedded cluster, "
                     "or --dsn of the owner offline); with --dry-run, only check that it can"),
            as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
            target: str = TargetOpt, data_dir: Path = AdminDataDirOpt,
            dsn: str = OfflineDsnOpt, offline: bool = OfflineOpt) -> None:
    """Rebuild runs from the check-in facts (one user, a range, or everyone).
    --all exits 2 when some users could not be rebuilt (they are listed)."""
    if bool(user) == all_users:
        raise typer.BadParameter("give exactly one of --user ID or --all")
    if blue_green:
        if user or force:
            raise typer.BadParameter("--blue-green goes with --all (and not --force: it "
                                     "rebuilds every user)")
        _rebuild_blue_green(dry_run, as_json, target, data_dir, dsn, offline)
        return
    if user:
        _rebuild_user(user, from_date, to_date, dry_run, as_json, target, data_dir, dsn, offline)
        return
    if from_date or to_date:
        raise typer.BadParameter("--from/--to apply to --user only")
    started = time.perf_counter()
    if _offline(dsn, offline):
        summary, failed = _rebuild_all_offline(batch, dry_run, force, dsn, data_dir)
    else:
        summary, failed = _rebuild_all_remote(batch, dry_run, force, target, data_dir)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary.update(dry_run=dry_run, force=force)
    if as_json:
        print(json.dumps({**summary, "failed": [{"user_id": u, "error": e} for u, e in failed]},
                         indent=2))
    else:
        t = table("rebuild --all" + (" (dry run)" if dry_run else ""), "metric", "value",
                  right=("value",))
        for k, v in summary.items():
            t.add_row(k, str(v))
        show(t)
        if failed:
            f = table("users not rebuilt (run again for these)", "user", "error")
            for u, e in failed:
                f.add_row(u, e)
            show(f)
    if failed:
        raise typer.Exit(2)   # the run went on, but it is not complete


def _rebuild_user(user: str, from_date: str | None, to_date: str | None, dry_run: bool,
                  as_json: bool, target: str | None, data_dir: Path | None, dsn: str | None,
                  offline: bool) -> None:
    user_id = _parse_user(user)
    lo, hi = _parse_date(from_date, "--from"), _parse_date(to_date, "--to")
    if lo and hi and lo > hi:
        raise typer.BadParameter("--to is before --from")
    if _offline(dsn, offline):
        plan = _admin(dsn, data_dir, lambda s: s.rebuild_user(user_id, lo, hi, dry_run))
        d = plan.diff
        added, removed = [_view(r) for r in d.added], [_view(r) for r in d.removed]
        changed = [(_view(c.before), _view(c.after)) for c in d.changed]
        window = [x.isoformat() for x in plan.window] if plan.window else None
    else:
        req = apb.RebuildUserRunsRequest(user_id=str(user_id), from_date=from_date or "",
                                         to_date=to_date or "", dry_run=dry_run)
        res = _remote(target, data_dir, lambda s: s.RebuildUserRuns(req, timeout=RPC_USER_TIMEOUT))
        added, removed = [_view(r) for r in res.added], [_view(r) for r in res.removed]
        changed = [(_view(c.before), _view(c.after)) for c in res.changed]
        window = [res.rebuilt_from_date, res.rebuilt_to_date] if res.rebuilt_from_date else None
    if as_json:
        print(json.dumps({
            "user_id": user, "dry_run": dry_run, "window": window,
            "added": [[r.start_date, r.end_date] for r in added],
            "removed": [[r.start_date, r.end_date] for r in removed],
            "changed": [{"before": [b.start_date, b.end_date, b.active],
                         "after": [a.start_date, a.end_date, a.active]} for b, a in changed]},
            indent=2))
        return
    if not (added or removed or changed):
        console.print("no changes: the runs match the facts")
    else:
        t = table(f"rebuild {user}" + (" (dry run)" if dry_run else ""),
                  "change", "start", "end", "days", "active")
        for label, rows in (("added", added), ("removed", removed)):
            for r in rows:
                t.add_row(label, r.start_date, r.end_date, str(r.day_count), str(r.active))
        for b, a in changed:
            t.add_row("changed", f"{b.start_date} -> {a.start_date}", f"{b.end_date} -> {a.end_date}",
                      f"{b.day_count} -> {a.day_count}", f"{b.active} -> {a.active}")
        show(t)
    if window:
        console.print(f"range rebuilt: {window[0]}..{window[1]}")


def _rebuild_all_offline(batch: int, dry_run: bool, force: bool, dsn: str | None,
                         data_dir: Path | None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    async def run_all(service: Any) -> Any:
        total = await service.count_users()
        with _bar("rebuild", total, drifted=0) as advance:
            return await service.rebuild_all(
                batch=batch, dry_run=dry_run, force=force,
                progress=lambda scanned, drifted: advance(scanned, drifted=drifted))

    report = _admin(dsn, data_dir, run_all)
    return ({"users_scanned": report.users_scanned, "users_drifted": report.users_drifted,
             "users_rebuilt": report.users_rebuilt, "runs_added": report.runs_added,
             "runs_removed": report.runs_removed, "runs_changed": report.runs_changed,
             "users_failed": len(report.failed)},
            [(str(u), e) for u, e in report.failed])


def _rebuild_all_remote(batch: int, dry_run: bool, force: bool, target: str | None,
                        data_dir: Path | None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    s: dict[str, Any] = dict.fromkeys(("users_scanned", "users_drifted", "users_rebuilt",
                                       "runs_added", "runs_removed", "runs_changed"), 0)
    failed: list[tuple[str, str]] = []

    def loop(stub: admin_service_pb2_grpc.AdminServiceStub) -> None:
        token = ""
        first = stub.RebuildRunsBatch(apb.RebuildRunsBatchRequest(
            page_size=batch, dry_run=dry_run, force=force), timeout=RPC_BATCH_TIMEOUT)
        with _bar("rebuild", first.total_users, drifted=0) as advance:
            res = first
            while True:
                s["users_scanned"] += res.users_scanned
                for d in res.drifted_users:
                    s["users_drifted"] += 1
                    s["users_rebuilt"] += 0 if dry_run else 1
                    s["runs_added"] += d.runs_added
                    s["runs_removed"] += d.runs_removed
                    s["runs_changed"] += d.runs_changed
                failed.extend((f.user_id, f.error) for f in res.failed_users)
                advance(res.users_scanned, drifted=s["users_drifted"])
                token = res.next_page_token
                if not token:
                    break
                res = stub.RebuildRunsBatch(apb.RebuildRunsBatchRequest(
                    page_size=batch, page_token=token, dry_run=dry_run, force=force),
                    timeout=RPC_BATCH_TIMEOUT)

    _remote(target, data_dir, loop)
    s["users_failed"] = len(failed)
    return s, failed


# --------------------------------------------------------------------------- blue/green
BLUE_GREEN_PHASES = ("build", "index", "catchup", "swap", "drop")


@contextlib.contextmanager
def _phases() -> Iterator[Callable[[str, int], None]]:
    """The blue/green progress on stderr: one step per phase, the phase and its rows."""
    with Progress(TextColumn("[bold]rebuild --blue-green"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("phase: {task.fields[phase]}"), TextColumn("{task.fields[rows]}"),
                  TimeElapsedColumn(), console=err_console) as progress:
        task = progress.add_task("blue-green", total=len(BLUE_GREEN_PHASES), phase="start",
                                 rows="")
        passes: list[int] = []

        def update(phase: str, rows: int) -> None:
            if phase == "pass":   # one catch-up pass: users recomputed
                passes.append(rows)
                progress.update(task, rows=f"catch-up users: {passes}")
            elif rows < 0:
                progress.update(task, phase=phase)
            else:
                label = {"build": "runs", "index": "constraints+indexes",
                         "swap": "users changed"}.get(phase)
                progress.update(task, advance=1 if phase in BLUE_GREEN_PHASES else 0,
                                rows=f"{label}: {rows:,}" if label else "")

        yield update


async def _with_owner(dsn: str | None, data_dir: Path | None,
                      fn: Callable[[Any], Awaitable[T]]) -> T:
    """Offline: the blue/green use case on the owner connection of --dsn (or of the
    embedded cluster: its superuser as potato_owner), like `migrate` connects."""
    from potato_runs.app import open_database
    from potato_runs.clock import SystemClock
    from potato_runs.service.blue_green import BlueGreenService

    settings = _settings(dsn=dsn, data_dir=data_dir)
    db = await open_database(settings, run_migrations=False, create_cluster=False)
    try:
        await _require_schema(db.pool)
        assert db.migrator is not None
        return await fn(BlueGreenService(db.migrator.connect, SystemClock()))
    finally:
        await db.close()


def _rebuild_blue_green(dry_run: bool, as_json: bool, target: str | None,
                        data_dir: Path | None, dsn: str | None, offline: bool) -> None:
    from potato_runs.storage.blue_green import CONFIRM

    if _offline(dsn, offline):
        async def run(service: Any) -> Any:
            if dry_run:
                return await service.rebuild_all(validate_only=True)
            with _phases() as update:
                return await service.rebuild_all(progress=update)

        with _plain_errors():
            r = _run(_with_owner(dsn, data_dir, run))
        report = r.as_dict()
    else:
        req = apb.RebuildAllRunsRequest(blue_green=True, validate_only=dry_run,
                                        confirm="" if dry_run else CONFIRM)

        def go(stub: admin_service_pb2_grpc.AdminServiceStub) -> apb.RebuildAllRunsResponse:
            with err_console.status("rebuild --blue-green: running on the server (build, "
                                    "index, catch-up, swap, drop)..."):
                res: apb.RebuildAllRunsResponse = stub.RebuildAllRuns(
                    req, timeout=RPC_BATCH_TIMEOUT)
                return res

        res = _remote(target, data_dir, go)
        report = {"rebuild_id": res.rebuild_id, "validate_only": res.validate_only,
                  "facts": res.facts, "users": res.users, "runs": res.runs,
                  "runs_kept": res.runs_kept, "users_changed": res.users_changed,
                  "catchup_users": list(res.catchup_users), "swap_attempts": res.swap_attempts,
                  "max_write_block_seconds": round(res.max_write_block_seconds, 4),
                  "phase_seconds": {p.name: round(p.seconds, 3) for p in res.phases},
                  "old_table_dropped": res.old_table_dropped, "seconds": res.seconds}
    if as_json:
        print(json.dumps(report, indent=2))
        return
    t = table("rebuild --all --blue-green" + (" (validate only)" if dry_run else ""),
              "metric", "value", right=("value",))
    for k, v in report.items():
        if k != "phase_seconds":
            t.add_row(k, str(v))
    show(t)
    phases = report.get("phase_seconds") or {}
    if isinstance(phases, dict) and phases:
        p = table("phases", "phase", "seconds", right=("seconds",))
        for name, secs in phases.items():
            p.add_row(str(name), f"{secs:.3f}")
        show(p)


# --------------------------------------------------------------------------- check
@app.command()
@tls_options
def check(user: str = typer.Option(None, "--user", help="Check one user (default: everyone)"),
          limit: int = typer.Option(1000, "--limit", min=1, max=10_000,
                                    help="Most violations to report"),
          as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
          target: str = TargetOpt, data_dir: Path = AdminDataDirOpt,
          dsn: str = OfflineDsnOpt, offline: bool = OfflineOpt) -> None:
    """Report every invariant violation; exits 1 when there is any, 2 when the check cannot run."""
    user_id = _parse_user(user) if user else None
    violations, truncated = _check(user_id, limit, target, data_dir, dsn, offline)
    if as_json:
        print(json.dumps({"ok": not violations, "truncated": truncated,
                          "violations": [{"code": c, "user_id": u, "detail": d}
                                         for c, u, d in violations]}, indent=2))
    elif not violations:
        console.print("[green]ok[/green]: every invariant holds")
    else:
        t = table(f"{len(violations)} invariant violation(s)" + (" (truncated)" if truncated else ""),
                  "code", "user", "detail")
        for c, u, d in violations:
            t.add_row(c, u, d)
        show(t)
    if violations:
        raise typer.Exit(1)


def _check(user_id: uuid.UUID | None, limit: int, target: str | None, data_dir: Path | None,
           dsn: str | None, offline: bool) -> tuple[list[tuple[str, str, str]], bool]:
    """(code, user, detail) of each violation, and whether the list was cut at `limit`."""
    spinner = err_console.status("checking every user..." if user_id is None
                                 else "checking one user...")
    with spinner:
        if _offline(dsn, offline):
            found, truncated = _admin(dsn, data_dir, lambda s: s.check(user_id, limit))
            return [(v.code, str(v.user_id), v.detail) for v in found], truncated
        req = apb.CheckInvariantsRequest(user_id=str(user_id) if user_id else "", limit=limit)
        res = _remote(target, data_dir, lambda s: s.CheckInvariants(req, timeout=RPC_CHECK_TIMEOUT))
        return [(v.code, v.user_id, v.detail) for v in res.violations], res.truncated


# --------------------------------------------------------------------------- shadow diff
@shadow_app.command("diff")
@tls_options
def shadow_diff(
        sample: int = typer.Option(None, "--sample", min=1,
                                   help="Diff only the first N users in user_id order (user ids "
                                        "are random v4 UUIDs, so that is a uniform sample)"),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout"),
        out: Path = typer.Option(None, "--out", help="Also write the JSON report to this file"),
        batch: int = typer.Option(1000, "--batch", min=1, max=10_000, help="Users per batch"),
        max_mismatch_rate: float = typer.Option(
            rollout.MAX_SHADOW_MISMATCH_RATE * 100, "--max-mismatch-rate", min=0, max=100,
            help="Gate: highest online shadow mismatch rate for GO, in percent"),
        min_comparisons: int = typer.Option(
            rollout.MIN_SHADOW_COMPARISONS, "--min-comparisons", min=0,
            help="Gate: fewest online shadow comparisons in the window for GO"),
        window_hours: int = typer.Option(
            rollout.SHADOW_WINDOW_HOURS, "--window-hours", min=1, max=24 * 90,
            help="Hours of online shadow comparisons the rate is computed over"),
        target: str = TargetOpt, data_dir: Path = AdminDataDirOpt,
        dsn: str = OfflineDsnOpt, offline: bool = OfflineOpt) -> None:
    """Compare legacy (computed from the check-ins) with the runs projection for every user
    (or a sample), then give the GO / NO-GO verdict for ff.potato.runs_v2 against the gates
    of docs/v2.md. Exits 0 for GO, 1 for NO-GO, 2 when it could not run."""
    started = time.perf_counter()
    if _offline(dsn, offline):
        diff, shadow, violations, truncated = _diff_offline(batch, sample, window_hours, dsn,
                                                            data_dir)
    else:
        diff, shadow, violations, truncated = _diff_remote(batch, sample, window_hours, target,
                                                           data_dir)
    seconds = time.perf_counter() - started
    verdict = rollout.verdict(diff, shadow, violations, violations_truncated=truncated,
                              max_mismatch_rate=max_mismatch_rate / 100,
                              min_comparisons=min_comparisons)
    report = _report(diff, shadow, violations, truncated, verdict, seconds)
    if out is not None:
        try:
            out.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            with _plain_errors():
                raise CliError(f"cannot write {out}: {exc.strerror or exc}") from exc
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(diff, shadow, verdict, seconds)
    raise typer.Exit(0 if verdict.go else 1)


def _diff_offline(batch: int, sample: int | None, window_hours: int, dsn: str | None,
                  data_dir: Path | None) -> tuple[rollout.PopulationDiff, rollout.ShadowStats,
                                                  int, bool]:
    async def run(service: Any) -> Any:
        total = await service.count_users()
        different = [0]

        def tick(b: rollout.DiffBatch) -> None:
            different[0] += b.users_different
            advance(b.users_scanned, different=different[0])

        with _bar("diff", min(total, sample) if sample else total, different=0) as advance:
            diff = await service.diff_population(batch=batch, sample=sample, progress=tick)
        diff.total_users = total
        with err_console.status("checking invariants..."):
            found, truncated = await service.check(None, 1000)
        shadow = await service.shadow_stats(RUNS_V2, window_hours)
        return diff, shadow, len(found), truncated

    result: tuple[rollout.PopulationDiff, rollout.ShadowStats, int, bool] = _admin(
        dsn, data_dir, run)
    return result


def _batch_from_proto(res: apb.DiffPopulationResponse) -> rollout.DiffBatch:
    return rollout.DiffBatch(
        users_scanned=res.users_scanned, users_different=res.users_different,
        checkins_scanned=res.checkins_scanned,
        classes=tuple(rollout.ClassCount(c.difference_class, c.users,
                                         tuple(uuid.UUID(u) for u in c.example_user_ids))
                      for c in res.classes),
        last_user=None)


def _diff_remote(batch: int, sample: int | None, window_hours: int, target: str | None,
                 data_dir: Path | None) -> tuple[rollout.PopulationDiff, rollout.ShadowStats,
                                                 int, bool]:
    diff = rollout.PopulationDiff(sample=sample)

    def loop(stub: admin_service_pb2_grpc.AdminServiceStub) -> tuple[int, bool,
                                                                     rollout.ShadowStats]:
        token = ""
        bar: Any = None
        with contextlib.ExitStack() as stack:
            while sample is None or diff.users_scanned < sample:
                size = batch if sample is None else min(batch, sample - diff.users_scanned)
                res = stub.DiffPopulation(apb.DiffPopulationRequest(page_size=size,
                                                                    page_token=token),
                                          timeout=RPC_BATCH_TIMEOUT)
                if bar is None:
                    diff.total_users = res.total_users
                    total = min(res.total_users, sample) if sample else res.total_users
                    bar = stack.enter_context(_bar("diff", total, different=0))
                diff.add(_batch_from_proto(res))
                bar(res.users_scanned, different=diff.users_different)
                token = res.next_page_token
                if not token or res.users_scanned == 0:
                    break
        with err_console.status("checking invariants..."):
            checked = stub.CheckInvariants(apb.CheckInvariantsRequest(limit=1000),
                                           timeout=RPC_CHECK_TIMEOUT)
        stats = stub.GetShadowStats(apb.GetShadowStatsRequest(flag=RUNS_V2,
                                                              window_hours=window_hours),
                                    timeout=30)
        shadow = rollout.ShadowStats(counts={(s.method, s.result): s.count for s in stats.stats},
                                     stored_mismatches=stats.stored_mismatches,
                                     window_hours=window_hours)
        return len(checked.violations), checked.truncated, shadow

    violations, truncated, shadow = _remote(target, data_dir, loop)
    return diff, shadow, violations, truncated


def _report(diff: rollout.PopulationDiff, shadow: rollout.ShadowStats, violations: int,
            truncated: bool, verdict: rollout.Verdict, seconds: float) -> dict[str, Any]:
    return {
        "verdict": verdict.label, "go": verdict.go,
        "gates": [{"name": g.name, "passed": g.passed, "figure": g.figure,
                   "threshold": g.threshold} for g in verdict.gates],
        "population": {
            "users_scanned": diff.users_scanned, "users_different": diff.users_different,
            "checkins_scanned": diff.checkins_scanned, "total_users": diff.total_users,
            "sample": diff.sample, "batches": diff.batches, "seconds": round(seconds, 3),
            "classes": {c: {"users": diff.counts.get(c, 0), "rate": diff.rate(c),
                            "example_user_ids": [str(u) for u in diff.examples.get(c, [])]}
                        for c in rollout.DIFF_CLASSES}},
        "shadow": {"flag": RUNS_V2, "window_hours": shadow.window_hours,
                   "compared": shadow.compared, "mismatch_rate": shadow.mismatch_rate,
                   "stored_mismatches": shadow.stored_mismatches,
                   "counts": [{"method": m, "result": r, "count": n}
                              for (m, r), n in sorted(shadow.counts.items())]},
        "invariants": {"violations": violations, "truncated": truncated},
    }


def _print_report(diff: rollout.PopulationDiff, shadow: rollout.ShadowStats,
                  verdict: rollout.Verdict, seconds: float) -> None:
    scope = (f"the first {diff.users_scanned:,} users (sample)" if diff.sample is not None
             else f"{diff.users_scanned:,} users")
    console.print(escape(f"population diff of {scope}, {diff.checkins_scanned:,} check-ins, "
                         f"in {seconds:.1f} s: {diff.users_different:,} users different"),
                  highlight=False)
    t = table("differences by class", "class", "users", "rate", "example users",
              right=("users", "rate"))
    for c in rollout.DIFF_CLASSES:
        n = diff.counts.get(c, 0)
        t.add_row(c, f"{n:,}", f"{diff.rate(c) * 100:.3f} %",
                  " ".join(str(u) for u in diff.examples.get(c, [])) or "-")
    show(t)
    g = table("gates", "gate", "result", "figure", "needs")
    for gate in verdict.gates:
        g.add_row(gate.name, "[green]pass[/green]" if gate.passed else "[red]FAIL[/red]",
                  escape(gate.figure), escape(gate.threshold))
    show(g)
    colour = "green" if verdict.go else "red"
    console.print(f"verdict: [bold {colour}]{verdict.label}[/bold {colour}]")
