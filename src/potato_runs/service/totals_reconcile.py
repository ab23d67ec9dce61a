"""Reconciliation of the stored totals with the facts: batch by batch (set-based scan),
then one short locked repair per drifted user; and the daily run of it, on one replica.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from potato_runs.clock import Clock
from potato_runs.deadline import Deadline
from potato_runs.domain.errors import DomainError, Reason
from potato_runs.service.periodic import Periodic
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.totals_repo import TotalsRepository

log = logging.getLogger(__name__)

BATCH_TIMEOUT = 600.0
"""Seconds one batch of reconcile_all may take."""
USER_REPAIR_TIMEOUT = 60.0
"""Seconds one user's repair may take within a batch."""
EXAMPLES = 5
"""Drifted user ids a log line and a report give as examples."""
CATCH_UP = dt.timedelta(hours=6)
"""How long after its time a day's run may still start (a replica that was down at
04:00 runs it when it comes back before 10:00); later, the day is skipped rather than
run at peak hours."""


@dataclass(frozen=True)
class ReconcileBatch:
    """One batch of the reconciliation (user_id order)."""

    users_checked: int
    last_user: uuid.UUID | None
    """The cursor for the next batch; None when the batch was empty."""
    drifted: tuple[tuple[uuid.UUID, int], ...]
    """Users whose stored totals differed from the facts, with the rows that differed."""
    rows_repaired: int
    failed: tuple[tuple[uuid.UUID, str], ...]
    """Users that could not be repaired (e.g. their lock stayed busy); the batch went on."""
    seconds: float = 0.0

    @property
    def rows_drifted(self) -> int:
        return sum(n for _, n in self.drifted)


@dataclass
class ReconcileReport:
    dry_run: bool = False
    users_checked: int = 0
    users_drifted: int = 0
    rows_drifted: int = 0
    rows_repaired: int = 0
    seconds: float = 0.0
    examples: list[uuid.UUID] = field(default_factory=list)
    """The first few drifted users (up to EXAMPLES)."""
    failed: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    def add(self, step: ReconcileBatch) -> None:
        self.users_checked += step.users_checked
        self.users_drifted += len(step.drifted)
        self.rows_drifted += step.rows_drifted
        self.rows_repaired += step.rows_repaired
        self.failed.extend(step.failed)
        self.examples.extend(u for u, _ in step.drifted[:EXAMPLES - len(self.examples)])

    @property
    def complete(self) -> bool:
        """Nothing left drifted: clean, or every drifted user repaired."""
        return not self.failed and (self.rows_drifted == 0 or not self.dry_run)


class TotalsReconciler:
    def __init__(self, repo: TotalsRepository, clock: Clock, telemetry: Telemetry) -> None:
        self._repo = repo
        self._clock = clock
        self._telemetry = telemetry

    async def reconcile_batch(self, after: uuid.UUID | None, size: int, *, dry_run: bool,
                              timeout: float = 300.0) -> ReconcileBatch:
        """Scans the `size` users after `after` (one set-based statement), then repairs
        each drifted user in a transaction of its own under its lock (unless dry_run).
        A user whose repair fails is listed in `failed` and the batch goes on; running
        out of `timeout` fails the whole batch (retry it: repairs are idempotent)."""
        started = time.perf_counter()
        budget = Deadline.after(timeout)
        scan = await self._repo.drift_batch(after, size, timeout=budget.timeout())
        repaired = 0
        failed: list[tuple[uuid.UUID, str]] = []
        if not dry_run:
            for user_id, _ in scan.drifted:
                try:
                    fix = await self._repo.repair_user(
                        user_id, self._clock.now(),
                        timeout=min(USER_REPAIR_TIMEOUT, budget.timeout()))
                except DomainError as exc:   # one user's failure does not stop the batch
                    if exc.reason is Reason.DEADLINE_EXCEEDED and budget.remaining() <= 0:
                        raise
                    failed.append((user_id, str(exc)))
                    continue
                repaired += fix.rows_repaired
                if fix.rows_still_drifted:
                    failed.append((user_id, (
                        f"{fix.rows_still_drifted} row(s) still differ from the check-ins: the "
                        f"user's runs drift from the facts; run `potato-runs rebuild --user "
                        f"{user_id}`, then reconcile again")))
        step = ReconcileBatch(users_checked=scan.users_checked, last_user=scan.last_user,
                              drifted=scan.drifted, rows_repaired=repaired,
                              failed=tuple(failed), seconds=time.perf_counter() - started)
        self._telemetry.record_reconcile(rows_drifted=step.rows_drifted,
                                         rows_repaired=repaired, seconds=step.seconds,
                                         dry_run=dry_run, scope="batch")
        if step.rows_drifted:
            log.warning("totals reconciliation%s: %d row(s) of %d user(s) drifted from the "
                        "facts, %d repaired, %d user(s) failed; e.g. %s",
                        " (dry run)" if dry_run else "", step.rows_drifted, len(step.drifted),
                        repaired, len(failed),
                        ", ".join(str(u) for u, _ in step.drifted[:EXAMPLES]))
        return step

    async def reconcile_all(self, *, batch: int = 1000, dry_run: bool = False,
                            progress: Callable[[ReconcileBatch], None] | None = None
                            ) -> ReconcileReport:
        """reconcile_batch over every user, batch after batch."""
        report = ReconcileReport(dry_run=dry_run)
        started = time.perf_counter()
        after: uuid.UUID | None = None   # no cursor yet: the nil UUID is a user id too
        while True:
            step = await self.reconcile_batch(after, batch, dry_run=dry_run,
                                              timeout=BATCH_TIMEOUT)
            if step.users_checked == 0 or step.last_user is None:
                break
            report.add(step)
            if progress:
                progress(step)
            after = step.last_user
        report.seconds = time.perf_counter() - started
        self._telemetry.record_reconcile(rows_drifted=report.rows_drifted,
                                         rows_repaired=report.rows_repaired,
                                         seconds=report.seconds, dry_run=dry_run, scope="run")
        return report

    async def count_users(self, timeout: float = 60.0) -> int:
        return await self._repo.count_users(timeout=timeout)


@dataclass(frozen=True)
class DailyOutcome:
    day: dt.date
    ran: bool
    """False when another replica had claimed the day."""
    report: ReconcileReport | None = None
    error: str | None = None


class DailyTotalsReconcile(Periodic):
    """Once a UTC day, at `at` (or at the first round within CATCH_UP after it, when no
    replica was up at that time): the replica that claims the day in totals_reconcile_runs runs the
    reconciliation; the others skip. Rounds every `poll` seconds read the injected clock,
    so a test drives it by setting the clock (or by calling `tick()`)."""

    name = "totals-reconcile"

    def __init__(self, reconciler: TotalsReconciler, repo: TotalsRepository, clock: Clock,
                 at: dt.time | None, replica: str, *, poll: float = 30.0,
                 batch: int = 1000, catch_up: dt.timedelta = CATCH_UP) -> None:
        super().__init__(poll if at is not None else 0)   # interval 0: disabled
        self._reconciler = reconciler
        self._repo = repo
        self._clock = clock
        self._at = at
        self._replica = replica
        self._batch = batch
        self._catch_up = catch_up
        self._done: dt.date | None = None
        """The last day this replica saw claimed (by itself or another): no more rounds
        hit the database until the next day."""
        self.last: DailyOutcome | None = None

    def due(self, now: dt.datetime) -> dt.date | None:
        """The UTC day whose run is due at `now`, or None."""
        if self._at is None:
            return None
        now = now.astimezone(dt.UTC)
        for day in (now.date(), now.date() - dt.timedelta(days=1)):   # a window may span midnight
            start = dt.datetime.combine(day, self._at, tzinfo=dt.UTC)
            if start <= now < start + self._catch_up and self._done != day:
                return day
        return None

    async def tick(self) -> DailyOutcome | None:
        """One round: claims and runs the day's reconciliation when it is due."""
        day = self.due(self._clock.now())
        if day is None:
            return None
        if not await self._repo.claim_day(day, self._replica, self._clock.now()):
            self._done = day
            log.info("totals reconciliation of %s: claimed by another replica", day)
            self.last = DailyOutcome(day, ran=False)
            return self.last
        self._done = day
        log.info("totals reconciliation of %s: started on %s", day, self._replica)
        report: ReconcileReport | None = None
        error: str | None = None
        try:
            report = await self._reconciler.reconcile_all(batch=self._batch)
        except DomainError as exc:
            error = str(exc)
            log.error("totals reconciliation of %s failed: %s (run `potato-runs totals "
                      "reconcile` by hand)", day, exc)
        r = report or ReconcileReport()
        await self._repo.finish_day(day, self._clock.now(), users_checked=r.users_checked,
                                    rows_drifted=r.rows_drifted, rows_repaired=r.rows_repaired,
                                    users_failed=len(r.failed), error=error)
        if report is not None:
            level = logging.INFO if report.rows_drifted == 0 and report.complete else logging.WARNING
            log.log(level, "totals reconciliation of %s: %d users checked, %d row(s) drifted, "
                    "%d repaired, %d user(s) failed in %.1f s%s", day, report.users_checked,
                    report.rows_drifted, report.rows_repaired, len(report.failed),
                    report.seconds,
                    f"; e.g. {', '.join(str(u) for u in report.examples)}"
                    if report.examples else "")
        self.last = DailyOutcome(day, ran=True, report=report, error=error)
        return self.last

    async def round(self) -> None:
        await self.tick()

    def on_failure(self) -> None:
        """The claim or the bookkeeping failed (e.g. the database is down): the next
        round tries again (a day is only skipped once it is claimed)."""
