"""`potato-runs totals reconcile`: compare the stored totals with the facts and repair drift.

It asks the running server through AdminService.ReconcileTotals, batch after batch, by
default; --dsn (or --offline) works on the database directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import typer
from rich.markup import escape

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2 import admin_service_pb2_grpc
from potato_runs.cli._common import (
    AdminDataDirOpt,
    OfflineDsnOpt,
    OfflineOpt,
    TargetOpt,
    app,
    console,
    show,
    table,
    tls_options,
)
from potato_runs.cli.operators import RPC_BATCH_TIMEOUT, _admin, _bar, _offline, _remote

totals_app = typer.Typer(no_args_is_help=True,
                         help="Stored totals (run_totals, user_totals): reconciliation with "
                              "the check-in facts.")
app.add_typer(totals_app, name="totals")

EXAMPLES = 5


@dataclass
class _Summary:
    dry_run: bool
    users_checked: int = 0
    rows_drifted: int = 0
    rows_repaired: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def add(self, checked: int, drifted: int, repaired: int, users: list[str],
            failed: list[tuple[str, str]]) -> None:
        self.users_checked += checked
        self.rows_drifted += drifted
        self.rows_repaired += repaired
        self.examples.extend(users[:EXAMPLES - len(self.examples)])
        self.failed.extend(failed)

    def exit_code(self) -> int:
        """0: clean, or every drift repaired; 1: drift found by a dry run; 2: some users
        could not be repaired."""
        if self.failed:
            return 2
        return 1 if self.dry_run and self.rows_drifted else 0

    def as_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "users_checked": self.users_checked,
                "rows_drifted": self.rows_drifted, "rows_repaired": self.rows_repaired,
                "users_failed": len(self.failed), "seconds": round(self.seconds, 3),
                "example_user_ids": self.examples,
                "failed": [{"user_id": u, "error": e} for u, e in self.failed]}


@totals_app.command("reconcile")
@tls_options
def reconcile(dry_run: bool = typer.Option(False, "--dry-run",
                                           help="Report the drift, write nothing"),
              as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout"),
              batch: int = typer.Option(1000, "--batch", min=1, max=10_000,
                                        help="Users per batch"),
              target: str = TargetOpt, data_dir: Path = AdminDataDirOpt,
              dsn: str = OfflineDsnOpt, offline: bool = OfflineOpt) -> None:
    """Recompute every user's totals from the check-ins (set-based, in batches), compare
    them with the stored rows and repair the drift one user at a time under the user's
    lock. Exits 0 when nothing drifted or all drift was repaired, 1 when --dry-run found
    drift, 2 when it could not run or some users could not be repaired (listed)."""
    summary = _Summary(dry_run=dry_run)
    started = time.perf_counter()
    if _offline(dsn, offline):
        _reconcile_offline(summary, batch, dsn, data_dir)
    else:
        _reconcile_remote(summary, batch, target, data_dir)
    summary.seconds = time.perf_counter() - started
    if as_json:
        print(json.dumps(summary.as_json(), indent=2))
    else:
        _print(summary)
    raise typer.Exit(summary.exit_code())


def _reconcile_offline(summary: _Summary, batch: int, dsn: str | None,
                       data_dir: Path | None) -> None:
    def build(pool: asyncpg.Pool) -> Any:
        from potato_runs.clock import SystemClock
        from potato_runs.service.telemetry import Telemetry
        from potato_runs.service.totals_reconcile import TotalsReconciler
        from potato_runs.storage.totals_repo import TotalsRepository

        return TotalsReconciler(TotalsRepository(pool), SystemClock(), Telemetry())

    async def run(service: Any) -> None:
        total = await service.count_users()
        with _bar("reconcile", total, rows_drifted=0) as advance:
            def tick(step: Any) -> None:
                summary.add(step.users_checked, step.rows_drifted, step.rows_repaired,
                            [str(u) for u, _ in step.drifted],
                            [(str(u), e) for u, e in step.failed])
                advance(step.users_checked, rows_drifted=summary.rows_drifted)

            await service.reconcile_all(batch=batch, dry_run=summary.dry_run, progress=tick)

    _admin(dsn, data_dir, run, service=build)


def _reconcile_remote(summary: _Summary, batch: int, target: str | None,
                      data_dir: Path | None) -> None:
    def loop(stub: admin_service_pb2_grpc.AdminServiceStub) -> None:
        res = stub.ReconcileTotals(apb.ReconcileTotalsRequest(
            dry_run=summary.dry_run, page_size=batch), timeout=RPC_BATCH_TIMEOUT)
        with _bar("reconcile", res.total_users, rows_drifted=0) as advance:
            while True:
                summary.add(res.users_checked, res.rows_drifted, res.rows_repaired,
                            [d.user_id for d in res.drifted_users],
                            [(f.user_id, f.error) for f in res.failed_users])
                advance(res.users_checked, rows_drifted=summary.rows_drifted)
                if not res.next_page_token or res.users_checked == 0:
                    break
                res = stub.ReconcileTotals(apb.ReconcileTotalsRequest(
                    dry_run=summary.dry_run, page_size=batch,
                    page_token=res.next_page_token), timeout=RPC_BATCH_TIMEOUT)

    _remote(target, data_dir, loop)


def _print(s: _Summary) -> None:
    t = table("totals reconcile" + (" (dry run)" if s.dry_run else ""), "metric", "value",
              right=("value",))
    t.add_row("users checked", f"{s.users_checked:,}")
    t.add_row("rows drifted", f"{s.rows_drifted:,}")
    t.add_row("rows repaired", f"{s.rows_repaired:,}" + (" (dry run)" if s.dry_run else ""))
    t.add_row("users failed", f"{len(s.failed):,}")
    t.add_row("seconds", f"{s.seconds:.2f}")
    show(t)
    if s.examples:
        console.print(escape("example users: " + " ".join(s.examples)), highlight=False)
    if s.failed:
        f = table("users not repaired (run again for these)", "user", "error")
        for u, e in s.failed:
            f.add_row(u, escape(e))
        show(f)
    if s.rows_drifted == 0:
        console.print("[green]ok[/green]: the stored totals match the check-ins")
    elif s.dry_run:
        console.print("[yellow]drift found[/yellow]: run `potato-runs totals reconcile` "
                      "to repair it")
    elif not s.failed:
        console.print("[green]repaired[/green]: every drifted user was recomputed")
