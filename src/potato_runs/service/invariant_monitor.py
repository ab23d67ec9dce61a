"""The invariant monitor: incremental passes over the users touched since an earlier pass,
a full pass on a slower schedule, one pass at a time across replicas, and every replica's
`potato.runs.v2.Invariants` health set from the latest stored result.

Why this shape: the full check reads every table; run in every replica every 5 minutes it
cost the database (replicas x population) scans for a status that changes only when
someone writes. Every write that changes facts or runs writes run_events in its
transaction, so the users with events after an earlier pass are the only ones whose
invariants can have changed through the service; damage from outside the service (manual
SQL, a restore) shows in the full pass.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from potato_runs.clock import Clock
from potato_runs.deadline import Deadline
from potato_runs.domain.errors import DomainError
from potato_runs.service.periodic import Periodic
from potato_runs.storage.invariant_repo import (
    InvariantChecksRepository,
    MonitorSession,
    PassRecord,
)

log = logging.getLogger(__name__)

WRITE_GRACE = dt.timedelta(minutes=2)
"""Longer than any write transaction takes between taking an event id and committing
(calls are capped at 30 s, rebuilds at 60 s, lock waits at 5 s), plus clock skew between
replicas: see MonitorSession.incremental_base."""
READ_POLL = 30.0
"""Most seconds between a replica's reads of the stored result (each round also runs a
pass when one is due)."""
PASS_TIMEOUT = 600.0
"""Seconds one pass may take (the admin pool's statement cap)."""
MAX_INCREMENTAL_USERS = 100_000
"""Beyond this many touched users an incremental pass becomes a full one (set-based over
everyone is then cheaper than index probes per user)."""
RETENTION = dt.timedelta(days=2)
"""Stored passes older than this (and than two full intervals) are purged by full passes."""
EXAMPLES = 3


class Scope(enum.StrEnum):
    AUTO = "auto"
    FULL = "full"
    INCREMENTAL = "incremental"


class Health(enum.Enum):
    SERVING = "serving"
    NOT_SERVING = "not_serving"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class InvariantStatus:
    """What the latest stored pass says, as this replica reads it."""

    health: Health
    violations: dict[str, int] = field(default_factory=dict)
    record: PassRecord | None = None
    reason: str = ""

    @property
    def total(self) -> int:
        return sum(self.violations.values())


@dataclass(frozen=True)
class PassResult:
    record: PassRecord
    users: tuple[uuid.UUID, ...] | None = None
    """The users an incremental pass checked; None for a full pass (everyone)."""


class InvariantMonitor(Periodic):
    """Every round (at most READ_POLL seconds apart): when a pass is due and this replica
    gets the lock, run it (full every `full_interval` seconds, incremental every
    `interval`) and store its result; then, in every replica, report the latest stored
    result. It is UNKNOWN when it is older than `stale_after` (default: three
    incremental intervals), when the pass failed, or when none was stored yet.

    Tests drive it with an injected clock and by calling `tick`, `run_pass` and
    `refresh` directly (the loop is not started)."""

    name = "invariant-monitor"

    def __init__(self, repo: InvariantChecksRepository, clock: Clock, *, interval: float,
                 full_interval: float, report: Callable[[InvariantStatus], None],
                 replica: str, grace: dt.timedelta = WRITE_GRACE,
                 stale_after: float | None = None, poll: float = READ_POLL,
                 max_incremental_users: int = MAX_INCREMENTAL_USERS,
                 run_passes: bool = True) -> None:
        super().__init__(min(interval, poll) if interval > 0 else 0)   # 0: disabled
        self._repo = repo
        self._clock = clock
        self._pass_interval = dt.timedelta(seconds=interval)
        self._full_interval = dt.timedelta(seconds=full_interval)
        self._report = report
        self._replica = replica
        self._grace = grace
        self._stale_after = dt.timedelta(seconds=stale_after if stale_after is not None
                                         else 3 * interval)
        self._max_incremental = max_incremental_users
        self._run_passes = run_passes   # False: only report what another process stored
        self.last_status: InvariantStatus | None = None

    # ------------------------------------------------------------------ scheduling
    def _due(self, latest: PassRecord | None, now: dt.datetime) -> bool:
        return latest is None or latest.started_at <= now - self._pass_interval

    async def tick(self) -> InvariantStatus:
        """One round: a pass when one is due (and the lock is free; never with
        run_passes=False, e.g. workers 1.. of a `serve --workers N` group), then the report."""
        latest = await self._repo.latest()
        if self._run_passes and self._due(latest, self._clock.now()):
            try:
                await self.run_pass(Scope.AUTO, only_if_due=True)
            except DomainError:
                pass   # stored as a failed pass when it could be: the report says UNKNOWN
        return await self.refresh()

    async def round(self) -> None:
        await self.tick()

    def on_failure(self) -> None:
        """The round could not read or run (e.g. the database is down): unknown."""
        self._set(InvariantStatus(Health.UNKNOWN, reason="the monitor could not run"))

    # ------------------------------------------------------------------ the pass
    async def run_pass(self, scope: Scope = Scope.AUTO, *,
                       only_if_due: bool = False) -> PassResult | None:
        """One pass under the lock; None when another replica holds it (or, with
        `only_if_due`, when a pass that started within the interval is stored: another
        replica just ran it). A failed pass is stored too (its error makes health
        UNKNOWN) and re-raised."""
        async with self._repo.exclusive() as session:
            if session is None:
                log.debug("invariant pass: another replica holds the lock")
                return None
            now = self._clock.now()
            if only_if_due and not self._due(await session.latest(), now):
                return None
            return await self._run_locked(session, scope, now)

    async def _run_locked(self, session: MonitorSession, scope: Scope,
                          started: dt.datetime) -> PassResult:
        base: int | None = None
        if scope is not Scope.FULL:
            full = await session.latest_full()
            full_due = full is None or full.started_at <= started - self._full_interval
            if scope is Scope.INCREMENTAL or not full_due:
                base = await session.incremental_base(self._grace)
        kind = Scope.FULL if base is None else Scope.INCREMENTAL
        high = base or 0
        users: list[uuid.UUID] | None = None
        checked = 0
        clock_started = time.perf_counter()
        budget = Deadline.after(PASS_TIMEOUT)
        try:
            if base is not None:
                high, users = await session.touched_users(base, timeout=budget.timeout())
                if len(users) > self._max_incremental:
                    log.info("invariant pass: %d users touched since event %d; running a "
                             "full pass instead", len(users), base)
                    kind, users = Scope.FULL, None
            if users is None:
                high = await session.high_event_id(timeout=budget.timeout())
                checked = await session.count_users(timeout=budget.timeout())
            else:
                checked = len(users)
            counts = await session.check(users, started, budget)
        except DomainError as exc:
            log.warning("invariant %s pass could not run: %s", kind.value, exc)
            try:
                await session.record(
                    scope=kind.value, replica=self._replica, started_at=started,
                    finished_at=self._clock.now(),
                    after_event_id=base if kind is Scope.INCREMENTAL else None,
                    high_event_id=high, users_checked=0, violations={}, error=str(exc)[:500])
            except DomainError:
                pass   # the database is gone: the report says UNKNOWN all the same
            raise
        record = await session.record(
            scope=kind.value, replica=self._replica, started_at=started,
            finished_at=self._clock.now(),
            after_event_id=base if kind is Scope.INCREMENTAL else None, high_event_id=high,
            users_checked=checked, violations=counts, error=None)
        seconds = time.perf_counter() - clock_started
        if kind is Scope.FULL:
            await session.purge(started - max(RETENTION, 2 * self._full_interval))
        if record.total:
            examples = await session.examples(EXAMPLES)
            log.error("invariant %s pass: %d open violation(s) %s after checking %d user(s) "
                      "in %.2f s; e.g. %s (all: SELECT * FROM invariant_violations; repair: "
                      "potato-runs rebuild --user ID)", kind.value, record.total,
                      record.violations, checked, seconds,
                      "; ".join(f"{c} {u} {d}" for c, u, d in examples))
        else:
            log.info("invariant %s pass: clean, %d user(s) checked in %.2f s", kind.value,
                     checked, seconds)
        return PassResult(record, tuple(users) if users is not None else None)

    # ------------------------------------------------------------------ health
    def status_of(self, latest: PassRecord | None, now: dt.datetime) -> InvariantStatus:
        if latest is None:
            return InvariantStatus(Health.UNKNOWN, reason="no invariant pass stored yet")
        if latest.error is not None:
            return InvariantStatus(Health.UNKNOWN, record=latest,
                                   reason=f"the last pass failed: {latest.error}")
        if latest.finished_at < now - self._stale_after:
            return InvariantStatus(Health.UNKNOWN, latest.violations, latest,
                                   reason=f"the last pass finished at {latest.finished_at}")
        health = Health.NOT_SERVING if latest.total else Health.SERVING
        return InvariantStatus(health, latest.violations, latest)

    async def refresh(self) -> InvariantStatus:
        """Reads the latest stored pass and reports it (every replica does)."""
        try:
            latest = await self._repo.latest()
        except DomainError as exc:
            status = InvariantStatus(Health.UNKNOWN, reason=f"cannot read the result: {exc}")
        else:
            status = self.status_of(latest, self._clock.now())
        self._set(status)
        return status

    def _set(self, status: InvariantStatus) -> None:
        previous = self.last_status
        self.last_status = status
        if previous is None or previous.health is not status.health:
            log.log(logging.INFO if status.health is Health.SERVING else logging.WARNING,
                    "potato.runs.v2.Invariants: %s%s", status.health.name,
                    f" ({status.reason})" if status.reason else "")
        self._report(status)

    async def check_once(self) -> int:
        """A full pass now (unless another replica is running one), then the report:
        the open violations, or -1 when they are unknown."""
        try:
            await self.run_pass(Scope.FULL)
        except DomainError:
            pass   # stored as a failed pass when it could be; the report says UNKNOWN
        status = await self.refresh()
        return -1 if status.health is Health.UNKNOWN else status.total
