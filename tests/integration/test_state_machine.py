"""A hypothesis state machine that drives the real service (issue 3, item 3).

`RunsMachine` talks to the in-process gRPC server (real PostgreSQL behind it)
through *synchronous* stubs, because stateful rules cannot be coroutines; the
async admin calls (rebuild, check) and direct SQL go through
`server.run(coro)`, which runs them on the server's own event loop.

Rules: MarkDay by local date and by mark_time, UnmarkDay (of marked and of
arbitrary days), BackfillDays (scattered dates, a year of check-ins with gaps,
windows around month boundaries), zone changes by travel, malformed input,
rebuilds (full, partial, dry runs), damage-then-rebuild (raw SQL breaks the
projection, a full or partial rebuild must repair it), and moving the injected
clock (including onto 2028-02-29 / 2028-03-01, DST nights, year ends, and the
midnights of Kathmandu, Lord Howe, Kiritimati and Pago Pago).

The model lives only here: a set of dates and a zone. `model_runs` computes the
runs from the dates from scratch; it does not use `potato_runs.domain.runs`.
The model also predicts every rejection (future dates, dates before
2025-01-01, missing zone, malformed input), and a rejected call must write
nothing.

After every step (`check_everything`):
- the stored runs (SQL, and ListRuns over gRPC page by page) equal the model's
  (start, end, day_count, active), and the stored check-ins and zone too;
- GetActiveRun agrees with the model (run, current, current_streak_days);
- the stored totals (`run_totals`, `user_totals`) equal the computed ones (the SQL
  functions of migration 0004 over the facts), and those equal the independent model
  of tests/oracle.py (`expected_month_totals`, `expected_lifetime`);
- `admin.check(user, 1000)` finds no violation;
- a dry-run rebuild (`rebuild_user(user, None, None, True)`) has an empty diff;
- a step the model calls a no-op wrote no run_events row.

Each machine instance uses a fresh user id, so examples are independent.

Examples: the hypothesis profile from POTATO_HYPOTHESIS_PROFILE (tests/conftest.py):
"quick" (default, 25 examples) or "deep" (1000 examples); each example runs
up to STEPS steps (POTATO_STATEFUL_STEPS overrides it).

Replaying a failure:
- Hypothesis prints the failing steps as code (`state = RunsMachine()`,
  `state.mark(day=..., zone=...)`, ...) and, because the profiles set
  print_blob=True, a `@reproduce_failure('<version>', b'<blob>')` line. Paste
  that decorator onto `test_runs_state_machine` to replay exactly that example.
- Failing examples are saved in the example database (.hypothesis/ in the
  directory pytest runs from); simply re-running the test replays them first.
- `python -m pytest tests/integration/test_state_machine.py --hypothesis-seed=N`
  fixes the random seed (add `--hypothesis-show-statistics` for timings);
  with the same seed and an empty database the same examples are generated.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import grpc
import pytest
from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from oracle import Span
from oracle import as_strings as wire
from oracle import expected_lifetime as model_lifetime
from oracle import expected_month_totals as model_months
from oracle import expected_runs as model_runs

from potato.runs.v2 import run_pb2
from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from potato_runs.clock import FixedClock
from potato_runs.domain.errors import DomainError
from support import DEFAULT_NOW, ServerThread, rich_status

STEPS = int(os.environ.get("POTATO_STATEFUL_STEPS", "25"))

UTC = dt.UTC
ONE_DAY = dt.timedelta(days=1)
LAUNCH = dt.date(2025, 1, 1)
LEAP_DAY = dt.date(2028, 2, 29)
ZONES = ("America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu",
         "Pacific/Kiritimati", "Pacific/Pago_Pago")
PAGE_SIZES = (0, 7, 50, 500)
WRITES = (pb.MarkDayRequest, pb.UnmarkDayRequest, pb.BackfillDaysRequest)



# --------------------------------------------------------------------------- the model
def holding(dates: set[dt.date], days: Iterable[dt.date]) -> list[Span]:
    """The model's runs that hold any of `days`."""
    wanted = set(days)
    return [r for r in model_runs(dates)
            if any(r[0] <= d <= r[1] for d in wanted)]


def from_wire(run: run_pb2.Run) -> tuple[str, str, int, bool]:
    return (run.start_date, run.end_date, run.day_count, run.active)


# --------------------------------------------------------------------------- strategies
def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


MONTH_STARTS = [dt.date(y, m, 1) for y in range(2025, 2029) for m in range(1, 13)
                if dt.date(y, m, 1) <= dt.date(2028, 3, 1)]
SPECIAL_DATES = sorted(
    set(MONTH_STARTS) | {m - ONE_DAY for m in MONTH_STARTS}       # every month boundary
    | {dt.date(2028, 2, 28), dt.date(2028, 2, 29), dt.date(2028, 3, 1),
       dt.date(2024, 12, 31), dt.date(2024, 2, 29),               # before launch
       dt.date(2025, 3, 9), dt.date(2025, 11, 2), dt.date(2026, 3, 8), dt.date(2026, 11, 1),
       dt.date(2025, 3, 30), dt.date(2025, 10, 26), dt.date(2026, 3, 29), dt.date(2026, 10, 25),
       dt.date(2026, 4, 5), dt.date(2026, 10, 4),                  # Lord Howe DST
       DEFAULT_NOW.date(), DEFAULT_NOW.date() + ONE_DAY})

SPECIAL_INSTANTS = [
    DEFAULT_NOW,
    # Leap day 2028: on each side of the date line.
    utc(2028, 2, 29, 12), utc(2028, 3, 1, 12), utc(2028, 2, 29, 10, 30), utc(2028, 3, 1, 0, 30),
    utc(2028, 3, 1, 11, 30), utc(2028, 3, 2, 12),
    # Year ends.
    utc(2025, 12, 31, 23, 30), utc(2026, 1, 1, 10, 30), utc(2026, 12, 31, 12), utc(2027, 1, 1, 5, 30),
    utc(2027, 12, 31, 23, 59), utc(2025, 1, 1, 0, 30), utc(2025, 1, 1, 12),
    # New York DST (starts 07:00Z, ends 06:00Z) and London DST (01:00Z).
    utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30),
    utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30), utc(2026, 10, 25, 0, 30),
    utc(2026, 10, 25, 1, 30),
    # Lord Howe: DST ends 2026-04-04 15:00Z, starts 2026-10-03 15:30Z; midnight at 13:30Z.
    utc(2026, 4, 4, 14, 45), utc(2026, 4, 4, 15, 15), utc(2026, 10, 3, 15, 15),
    utc(2026, 10, 3, 15, 45), utc(2026, 7, 1, 13, 20), utc(2026, 7, 1, 13, 40),
    # Kathmandu midnight (18:15Z), Kiritimati midnight (10:00Z), Pago Pago midnight (11:00Z).
    utc(2026, 6, 30, 18, 10), utc(2026, 6, 30, 18, 20), utc(2026, 6, 30, 9, 59),
    utc(2026, 6, 30, 10, 1), utc(2026, 6, 30, 10, 59), utc(2026, 6, 30, 11, 1),
]

instants = st.one_of(
    st.sampled_from(SPECIAL_INSTANTS),
    st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2028, 3, 2, 23, 59),
                 timezones=st.just(UTC)),
)


@dataclass(frozen=True)
class Ago:
    """A day relative to "today" in the user's zone (negative: in the future)."""

    days: int


absolute_dates = st.one_of(st.sampled_from(SPECIAL_DATES),
                           st.dates(min_value=dt.date(2024, 12, 25),
                                    max_value=dt.date(2028, 3, 5)))
recent = st.one_of(st.integers(-2, 40), st.integers(-2, 400)).map(Ago)
day_specs = st.one_of(absolute_dates, recent)
zones = st.one_of(st.none(), st.sampled_from(ZONES))

# A year of check-ins with gaps: (run length, gap after it), walking back from an anchor.
year_patterns = st.lists(st.tuples(st.integers(1, 20), st.integers(1, 12)), min_size=1,
                         max_size=40)

BAD_DATES = ("2025-02-30", "2027-02-29", "2026-02-29", "2028-02-30", "2025-13-01", "2025-04-31",
             "20280229", "2028-2-29", "2028-02-29T00:00", "")
BAD_ZONES = ("../etc", "../../etc/passwd", "Mars/Olympus_Mons", "America/New_York ", "America",
             "/etc/localtime")


# What the steps did, over all examples of one test run (printed with -s).
OUTCOMES: Counter[str] = Counter()


def outcome(label: str) -> None:
    event(label)
    OUTCOMES[label] += 1


# --------------------------------------------------------------------------- the harness
@dataclass
class Harness:
    server: ServerThread
    clock: FixedClock
    stub: RunsServiceStub

    def run(self, coro: Any) -> Any:
        return self.server.run(coro, timeout=60)

    @property
    def app(self) -> Any:
        assert self.server.app is not None
        return self.server.app


def describe(err: grpc.RpcError | None) -> str:
    if err is None:
        return "no error"
    try:
        info, _, status = rich_status(err)
        return f"{err.code()} {info.reason if info else '?'}: {status.message}"
    except AssertionError:
        return f"{err.code()}: {err.details()}"


class RunsMachine(RuleBasedStateMachine):
    harness: ClassVar[Harness | None] = None

    def __init__(self) -> None:
        super().__init__()
        assert RunsMachine.harness is not None, "bind a Harness first"
        self.h = RunsMachine.harness
        self.uid = uuid.uuid4()
        self.user = str(self.uid)
        self.dates: set[dt.date] = set()
        self.zone: str | None = None
        self.quiet = True          # the step must not have written any run event
        self.events = 0
        self.steps = 0
        self.last_write: tuple[Any, Any, Any] | None = None
        """(method, request, response) of the last successful write: every write carries
        a fresh request_id, and retry_the_last_write sends it again (AIP-155)."""

    # ------------------------------------------------------------------ helpers
    def today(self, zone: str | None) -> dt.date:
        return self.h.clock.now().astimezone(ZoneInfo(zone or "UTC")).date()

    def resolve(self, spec: dt.date | Ago, zone: str | None) -> dt.date:
        if isinstance(spec, Ago):
            return self.today(zone) - dt.timedelta(days=spec.days)
        return spec

    def call(self, method: Any, request: Any) -> tuple[Any, grpc.RpcError | None]:
        write = isinstance(request, WRITES)
        if write and not request.request_id:
            request.request_id = str(uuid.uuid4())
        try:
            response = method(request, timeout=30)
        except grpc.RpcError as err:
            return None, err
        if write:
            self.last_write = (method, request, response)
        return response, None

    def expect_rejected(self, err: grpc.RpcError | None, reasons: set[str]) -> None:
        assert err is not None, f"expected INVALID_ARGUMENT {sorted(reasons)}, the call succeeded"
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, describe(err)
        info, _, _ = rich_status(err)
        assert info is not None and info.reason in reasons, (describe(err), sorted(reasons))
        outcome(f"rejected: {info.reason}")
        self.quiet = True

    def date_problems(self, days: Iterable[dt.date], zone: str | None) -> set[str]:
        """Why the model expects a write of `days` in `zone` (the effective one) to fail."""
        days = list(days)
        found = set()
        if any(d < LAUNCH for d in days):
            found.add("DATE_BEFORE_LAUNCH")
        if zone is None:
            found.add("TIME_ZONE_REQUIRED")
        elif any(d > self.today(zone) for d in days):
            found.add("DATE_IN_FUTURE")
        return found

    def note_clock(self) -> None:
        zone = self.zone or "UTC"
        note(f"  clock={self.h.clock.now().isoformat()} zone={self.zone} "
             f"today={self.today(zone).isoformat()}")

    # ------------------------------------------------------------------ clock
    @initialize(start=instants)
    def stand_clock(self, start: dt.datetime) -> None:
        OUTCOMES["example"] += 1
        self.h.clock.set(start)
        self.note_clock()

    @rule(instant=instants)
    def move_clock(self, instant: dt.datetime) -> None:
        self.h.clock.set(instant)
        self.quiet = True
        self.note_clock()

    @rule(hours=st.one_of(st.integers(-48, 48), st.integers(24, 24 * 60)))
    def advance_clock(self, hours: int) -> None:
        self.h.clock.advance(dt.timedelta(hours=hours))
        self.quiet = True
        self.note_clock()

    @rule()
    def stand_on_leap_day(self) -> None:
        """2028-02-29 12:00Z: the leap day is today in most zones (2028-03-01 in Kiritimati)."""
        self.h.clock.set(utc(2028, 2, 29, 12))
        self.quiet = True
        self.note_clock()

    # ------------------------------------------------------------------ marks
    def _mark(self, req: pb.MarkDayRequest, day: dt.date | None, zone: str | None) -> None:
        eff = zone or self.zone
        if eff is None:
            expected = {"TIME_ZONE_REQUIRED"}
        else:
            assert day is not None
            expected = self.date_problems([day], eff)
        resp, err = self.call(self.h.stub.MarkDay, req)
        if expected:
            self.expect_rejected(err, expected)
            return
        assert err is None, describe(err)
        assert day is not None and eff is not None
        left, right = day - ONE_DAY in self.dates, day + ONE_DAY in self.dates
        if day in self.dates:
            change = run_pb2.RUN_CHANGE_NONE
        elif left and right:
            change = run_pb2.RUN_CHANGE_MERGED
        elif left or right:
            change = run_pb2.RUN_CHANGE_EXTENDED
        else:
            change = run_pb2.RUN_CHANGE_CREATED
        self.dates.add(day)
        self.zone = eff
        assert resp.local_date == day.isoformat()
        assert resp.change == change, (run_pb2.RunChange.Name(resp.change),
                                       run_pb2.RunChange.Name(change))
        assert [from_wire(resp.run)] == [wire(r) for r in holding(self.dates, [day])]
        assert resp.run.user_id == self.user
        assert resp.time_zone == eff
        outcome(f"mark: {run_pb2.RunChange.Name(change)}")
        self.quiet = change == run_pb2.RUN_CHANGE_NONE

    @precondition(lambda self: self.last_write is not None)
    @rule()
    def retry_the_last_write(self) -> None:
        """The same request with the same request_id, whatever happened since (other
        writes, the clock moved, the zone changed): the original response, nothing
        written (the model and the events stay as they are)."""
        assert self.last_write is not None
        method, request, first = self.last_write
        again, err = self.call(method, request)
        assert err is None, describe(err)
        assert again == first, (again, first)
        outcome("retry: the original response")
        self.quiet = True

    @rule(day=day_specs, zone=zones)
    def mark(self, day: dt.date | Ago, zone: str | None) -> None:
        d = self.resolve(day, zone or self.zone)
        req = pb.MarkDayRequest(user_id=self.user, local_date=d.isoformat())
        if zone is not None:
            req.time_zone = zone
        self._mark(req, d, zone)

    @rule(minutes=st.one_of(st.integers(-3 * 24 * 60, 24 * 60), st.sampled_from([0, -1, 1])),
          zone=zones)
    def mark_at(self, minutes: int, zone: str | None) -> None:
        """MarkDay with mark_time: the server turns the instant into a local date."""
        instant = self.h.clock.now() + dt.timedelta(minutes=minutes)
        eff = zone or self.zone
        d = instant.astimezone(ZoneInfo(eff)).date() if eff else None
        req = pb.MarkDayRequest(user_id=self.user)
        req.mark_time.FromDatetime(instant)
        if zone is not None:
            req.time_zone = zone
        self._mark(req, d, zone)

    @precondition(lambda self: len(model_runs(self.dates)) >= 2)
    @rule(data=st.data(), zone=zones)
    def fill_a_gap(self, data: st.DataObject, zone: str | None) -> None:
        """Marks a day between two runs: a merge when the gap is one day, else an extension."""
        runs = model_runs(self.dates)
        i = data.draw(st.integers(0, len(runs) - 2), label="gap after run")
        first, last = runs[i][1] + ONE_DAY, runs[i + 1][0] - ONE_DAY
        day = data.draw(st.sampled_from(sorted({first, last})), label="day")
        req = pb.MarkDayRequest(user_id=self.user, local_date=day.isoformat())
        if zone is not None:
            req.time_zone = zone
        self._mark(req, day, zone)

    @rule(zone=st.sampled_from(ZONES))
    def travel(self, zone: str) -> None:
        """The user checks in "now" from another zone: the zone changes."""
        req = pb.MarkDayRequest(user_id=self.user, time_zone=zone)
        req.mark_time.FromDatetime(self.h.clock.now())
        self._mark(req, self.today(zone), zone)

    # ------------------------------------------------------------------ unmarks
    def _unmark(self, day: dt.date) -> None:
        expected = set()
        if day < LAUNCH:
            expected.add("DATE_BEFORE_LAUNCH")
        # Any later date is accepted: unmarking a day that is not marked is a no-op.
        resp, err = self.call(self.h.stub.UnmarkDay,
                              pb.UnmarkDayRequest(user_id=self.user, local_date=day.isoformat()))
        if expected:
            self.expect_rejected(err, expected)
            return
        assert err is None, describe(err)
        left, right = day - ONE_DAY in self.dates, day + ONE_DAY in self.dates
        if day not in self.dates:
            change = run_pb2.RUN_CHANGE_NONE
        elif left and right:
            change = run_pb2.RUN_CHANGE_SPLIT
        elif left or right:
            change = run_pb2.RUN_CHANGE_SHRUNK
        else:
            change = run_pb2.RUN_CHANGE_DELETED
        assert resp.removed is (day in self.dates)
        self.dates.discard(day)
        assert resp.change == change, (run_pb2.RunChange.Name(resp.change),
                                       run_pb2.RunChange.Name(change))
        pieces = holding(self.dates, [day - ONE_DAY, day + ONE_DAY]) if resp.removed else []
        assert sorted(from_wire(r) for r in resp.runs) == sorted(wire(r) for r in pieces)
        outcome(f"unmark: {run_pb2.RunChange.Name(change)}")
        self.quiet = change == run_pb2.RUN_CHANGE_NONE

    @rule(day=day_specs)
    def unmark(self, day: dt.date | Ago) -> None:
        self._unmark(self.resolve(day, self.zone))

    @precondition(lambda self: self.dates)
    @rule(data=st.data())
    def unmark_a_marked_day(self, data: st.DataObject) -> None:
        self._unmark(data.draw(st.sampled_from(sorted(self.dates)), label="marked day"))

    # ------------------------------------------------------------------ backfills
    def _backfill(self, days: list[dt.date], zone: str | None) -> None:
        eff = zone or self.zone
        req = pb.BackfillDaysRequest(user_id=self.user, local_dates=[d.isoformat() for d in days])
        if zone is not None:
            req.time_zone = zone
        expected = self.date_problems(days, eff)
        resp, err = self.call(self.h.stub.BackfillDays, req)
        if expected:
            self.expect_rejected(err, expected)
            return
        assert err is None, describe(err)
        added = set(days) - self.dates
        self.dates |= set(days)
        self.zone = eff
        assert resp.added_days == len(added)
        assert sorted(from_wire(r) for r in resp.runs) == sorted(
            wire(r) for r in holding(self.dates, days))
        outcome(f"backfill: {'added' if added else 'nothing new'}")
        self.quiet = not added

    @rule(days=st.lists(day_specs, min_size=1, max_size=12), zone=zones)
    def backfill(self, days: list[dt.date | Ago], zone: str | None) -> None:
        self._backfill([self.resolve(d, zone or self.zone) for d in days], zone)

    @rule(anchor=st.one_of(recent, absolute_dates), pattern=year_patterns, zone=zones)
    def backfill_a_year(self, anchor: dt.date | Ago, pattern: list[tuple[int, int]],
                        zone: str | None) -> None:
        """Up to a year of check-ins with gaps, ending on the anchor, in one call."""
        end = self.resolve(anchor, zone or self.zone)
        first = max(end - dt.timedelta(days=365), LAUNCH)
        days: list[dt.date] = []
        cur = end
        for length, gap in pattern:
            days += [cur - dt.timedelta(days=i) for i in range(length)
                     if cur - dt.timedelta(days=i) >= first]
            cur -= dt.timedelta(days=length + gap)
            if cur < first:
                break
        if days:
            self._backfill(days, zone)

    @rule(boundary=st.sampled_from(MONTH_STARTS), before=st.integers(1, 6),
          after=st.integers(0, 6), zone=zones)
    def backfill_across_a_month_boundary(self, boundary: dt.date, before: int, after: int,
                                         zone: str | None) -> None:
        self._backfill([boundary + dt.timedelta(days=i) for i in range(-before, after + 1)], zone)

    # ------------------------------------------------------------------ malformed input
    @rule(bad=st.sampled_from(BAD_DATES), which=st.sampled_from(["mark", "unmark", "backfill"]))
    def send_a_bad_date(self, bad: str, which: str) -> None:
        if which == "mark":
            _, err = self.call(self.h.stub.MarkDay, pb.MarkDayRequest(
                user_id=self.user, local_date=bad, time_zone=ZONES[0]))
        elif which == "unmark":
            _, err = self.call(self.h.stub.UnmarkDay,
                               pb.UnmarkDayRequest(user_id=self.user, local_date=bad))
        else:
            _, err = self.call(self.h.stub.BackfillDays, pb.BackfillDaysRequest(
                # The bad date first: violations come in request order, and 2025-06-01
                # is itself "in the future" while the clock stands before it.
                user_id=self.user, local_dates=[bad, "2025-06-01"], time_zone=ZONES[0]))
        self.expect_rejected(err, {"INVALID_DATE", "MISSING_FIELD"})

    @rule(bad=st.sampled_from(BAD_ZONES), day=recent)
    def send_a_bad_zone(self, bad: str, day: Ago) -> None:
        d = self.resolve(day, self.zone)
        _, err = self.call(self.h.stub.MarkDay, pb.MarkDayRequest(
            user_id=self.user, local_date=d.isoformat(), time_zone=bad))
        self.expect_rejected(err, {"INVALID_TIME_ZONE"})

    # ------------------------------------------------------------------ rebuilds
    @rule(lo=st.one_of(st.none(), day_specs), hi=st.one_of(st.none(), day_specs),
          dry_run=st.booleans())
    def rebuild(self, lo: dt.date | Ago | None, hi: dt.date | Ago | None, dry_run: bool) -> None:
        """A rebuild of a correct projection, whatever the range, changes nothing."""
        from_date = None if lo is None else self.resolve(lo, self.zone)
        to_date = None if hi is None else self.resolve(hi, self.zone)
        self.quiet = True
        try:
            plan = self.h.run(self.h.app.admin.rebuild_user(self.uid, from_date, to_date, dry_run))
        except DomainError as exc:
            assert from_date is not None and to_date is not None and from_date > to_date, exc
            assert exc.reason.value == "INVALID_RANGE"
            return
        assert not (from_date and to_date and from_date > to_date), "inverted range accepted"
        assert plan.diff.empty, plan.diff

    @precondition(lambda self: self.dates)
    @rule(kind=st.sampled_from(["drop_all", "drop_one", "deactivate", "shrink"]),
          data=st.data())
    def damage_then_rebuild(self, kind: str, data: st.DataObject) -> None:
        """Breaks the projection with raw SQL; the checker must see it and a
        (full or partial) rebuild must repair exactly the damage."""
        runs = model_runs(self.dates)
        victim = data.draw(st.sampled_from(runs), label="victim run")
        s, e, _, _ = victim
        pool = self.h.app.database.pool
        lo: dt.date | None = None
        hi: dt.date | None = None
        if kind == "drop_all":
            self.h.run(pool.execute("DELETE FROM runs WHERE user_id = $1", self.uid))
            codes = {"CHECKIN_NOT_COVERED"}
        elif kind == "deactivate":
            victim = runs[-1]
            self.h.run(pool.execute("UPDATE runs SET active = false WHERE user_id = $1 AND active",
                                    self.uid))
            codes = {"ACTIVE_RUN_NOT_LATEST"}
            # Any range at all recomputes the active flag, even one far from every run.
            lo = data.draw(st.one_of(st.none(), absolute_dates), label="from")
            hi = data.draw(st.one_of(st.none(), absolute_dates), label="to")
            if lo and hi and lo > hi:
                lo, hi = hi, lo
        else:
            if kind == "shrink" and s == e:
                kind = "drop_one"
            if kind == "drop_one":
                self.h.run(pool.execute(
                    "DELETE FROM runs WHERE user_id = $1 AND start_date = $2", self.uid, s))
            else:
                self.h.run(pool.execute(
                    "UPDATE runs SET end_date = end_date - 1, day_count = day_count - 1 "
                    "WHERE user_id = $1 AND start_date = $2", self.uid, s))
            codes = {"CHECKIN_NOT_COVERED"}
            # A partial range that meets the damaged run: it crosses the run, lies
            # inside it, or only touches it from outside (widening pulls it in).
            shape = data.draw(st.sampled_from(["inside", "around", "touch_before", "touch_after",
                                               "open_from", "open_to"]), label="range")
            span_days = (e - s).days
            inner = s + dt.timedelta(days=data.draw(st.integers(0, span_days), label="day"))
            k = dt.timedelta(days=data.draw(st.integers(0, 30), label="margin"))
            lo, hi = {
                "inside": (inner, inner),
                "around": (inner - k, inner + k),
                "touch_before": (s - ONE_DAY - k, s - ONE_DAY),
                "touch_after": (e + ONE_DAY, e + ONE_DAY + k),
                "open_from": (inner, None),
                "open_to": (None, inner),
            }[shape]
        note(f"  damage={kind} victim={wire(victim)} range=({lo}, {hi})")
        violations, _ = self.h.run(self.h.app.admin.check(self.uid, 1000))
        found = {v.code for v in violations}
        assert codes <= found, (codes, violations)

        dry = self.h.run(self.h.app.admin.rebuild_user(self.uid, lo, hi, True))
        still, _ = self.h.run(self.h.app.admin.check(self.uid, 1000))
        assert {v.code for v in still} == found, "a dry run wrote something"
        plan = self.h.run(self.h.app.admin.rebuild_user(self.uid, lo, hi, False))

        def shape_of(p: Any) -> tuple[list[Any], list[Any], list[Any]]:
            return (sorted(r.key() for r in p.diff.added), sorted(r.key() for r in p.diff.removed),
                    sorted((c.before.key(), c.after.key()) for c in p.diff.changed))

        assert shape_of(dry) == shape_of(plan)
        added, removed, changed = shape_of(plan)
        if kind == "drop_all":
            assert added == runs and removed == [] and changed == []
        elif kind == "deactivate":
            assert added == [] and removed == []
            assert [a for _, a in changed] == [runs[-1]]
        elif kind == "drop_one":
            assert added == [victim] and removed == [] and changed == []
        else:
            assert added == [] and removed == []
            assert [a for _, a in changed] == [victim]
        outcome(f"repaired: {kind}")
        self.quiet = False

    # ------------------------------------------------------------------ invariants
    @invariant()
    def check_everything(self) -> None:
        self.steps += 1
        OUTCOMES["step"] += 1
        expected = model_runs(self.dates)
        # Coverage of the calendar edges, for the statistics printed at the end.
        if LEAP_DAY in self.dates:
            OUTCOMES["state: 2028-02-29 marked"] += 1
        if any(s.year != e.year for s, e, _, _ in expected):
            OUTCOMES["state: a run crosses a year end"] += 1
        if any(s.month != e.month or s.year != e.year for s, e, _, _ in expected):
            OUTCOMES["state: a run crosses a month boundary"] += 1
        if len(self.dates) >= 100:
            OUTCOMES["state: 100+ check-ins"] += 1
        pool = self.h.app.database.pool

        rows = self.h.run(pool.fetch(
            "SELECT start_date, end_date, day_count, active FROM runs WHERE user_id = $1 "
            "ORDER BY start_date", self.uid))
        assert [tuple(r) for r in rows] == expected
        facts = self.h.run(pool.fetch(
            "SELECT checkin_date FROM daily_checkins WHERE user_id = $1 ORDER BY 1", self.uid))
        assert [r[0] for r in facts] == sorted(self.dates)
        zone = self.h.run(pool.fetchval("SELECT time_zone FROM users WHERE user_id = $1", self.uid))
        assert zone == self.zone

        # Over the wire: newest first, through the page tokens.
        size = PAGE_SIZES[self.steps % len(PAGE_SIZES)]
        listed: list[tuple[str, str, int, bool]] = []
        token = ""
        for _ in range(1000):
            page = self.h.stub.ListRuns(pb.ListRunsRequest(user_id=self.user, page_size=size,
                                                           page_token=token), timeout=30)
            listed += [from_wire(r) for r in page.runs]
            token = page.next_page_token
            if not token:
                break
        assert listed == [wire(r) for r in reversed(expected)]

        active = self.h.stub.GetActiveRun(pb.GetActiveRunRequest(user_id=self.user), timeout=30)
        assert active.time_zone == (self.zone or "")
        if expected:
            assert from_wire(active.run) == wire(expected[-1])
            today = self.today(self.zone)
            current = expected[-1][1] >= today - ONE_DAY   # later ends: travel west
            assert active.current is current
            assert active.current_streak_days == (expected[-1][2] if current else 0)
        else:
            assert not active.HasField("run")
            assert not active.current and active.current_streak_days == 0

        # Totals: stored (kept by every write) == computed (the SQL over the facts) ==
        # the model's (tests/oracle.py). A known user always has a lifetime row.
        stored_months, stored_life, computed_months, computed_life = self.h.run(
            self.totals(pool))
        assert computed_months == model_months(self.dates)
        assert stored_months == computed_months
        life = model_lifetime(self.dates)
        assert (computed_life or (0, 0, 0)) == life
        assert stored_life == (life if self.zone is not None else None)

        violations, truncated = self.h.run(self.h.app.admin.check(self.uid, 1000))
        assert violations == [] and not truncated

        plan = self.h.run(self.h.app.admin.rebuild_user(self.uid, None, None, True))
        assert plan.diff.empty, plan.diff

        events = self.h.run(pool.fetchval("SELECT count(*) FROM run_events WHERE user_id = $1",
                                          self.uid))
        if self.quiet:
            assert events == self.events, "a no-op or a rejected call wrote run events"
        else:
            assert events > self.events, "a change to the projection wrote no run event"
        self.events = events
        self.quiet = True      # until a step says it changed the projection

    async def totals(self, pool: Any) -> tuple[list[tuple[int, int, int]], Any,
                                               list[tuple[int, int, int]], Any]:
        async with pool.acquire() as conn:
            stored_months = [tuple(r) for r in await conn.fetch(
                "SELECT yyyymm, streak_days, total_days FROM run_totals WHERE user_id = $1 "
                "ORDER BY yyyymm", self.uid)]
            stored_life = await conn.fetchrow(
                "SELECT total_days, run_count, longest_run_days FROM user_totals "
                "WHERE user_id = $1", self.uid)
            computed_months = [tuple(r) for r in await conn.fetch(
                "SELECT yyyymm, streak_days, total_days FROM potato_computed_month_totals($1) "
                "ORDER BY yyyymm", [self.uid])]
            computed_life = await conn.fetchrow(
                "SELECT total_days, run_count, longest_run_days "
                "FROM potato_computed_user_totals($1)", [self.uid])
        return (stored_months, stored_life and tuple(stored_life), computed_months,
                computed_life and tuple(computed_life))

    def teardown(self) -> None:
        self.h.clock.set(DEFAULT_NOW)


def test_runs_state_machine(server: ServerThread, clock: FixedClock) -> None:
    # The clock jumps by days here: the request-id purge would forget the ids that
    # retry_the_last_write sends again. Paused meanwhile.
    assert server.app is not None and server.app.request_id_purge is not None
    purge = server.app.request_id_purge
    server.run(purge.stop())
    with contextlib.ExitStack() as resume:
        resume.callback(lambda: server.run(_start(purge)))
        _run_the_machine(server, clock)


async def _start(periodic: Any) -> None:
    periodic.start()   # on the server's loop


def _run_the_machine(server: ServerThread, clock: FixedClock) -> None:
    with grpc.insecure_channel(server.target) as channel:
        RunsMachine.harness = Harness(server=server, clock=clock, stub=RunsServiceStub(channel))
        OUTCOMES.clear()
        started = time.perf_counter()
        try:
            run_state_machine_as_test(RunsMachine, settings=settings(stateful_step_count=STEPS))
        finally:
            RunsMachine.harness = None
            print(f"\nstate machine: {OUTCOMES['example']} examples, {OUTCOMES['step']} steps, "
                  f"{time.perf_counter() - started:.1f} s")
            for label, count in sorted(OUTCOMES.items()):
                print(f"  {count:7d}  {label}")


@pytest.mark.parametrize("dates, expected", [
    ([], []),
    (["2028-02-28", "2028-03-01", "2028-02-29"], [("2028-02-28", "2028-03-01", 3, True)]),
    (["2025-12-31", "2026-01-02"], [("2025-12-31", "2025-12-31", 1, False),
                                    ("2026-01-02", "2026-01-02", 1, True)]),
    (["2025-06-30", "2025-07-01", "2025-06-30"], [("2025-06-30", "2025-07-01", 2, True)]),
])
def test_the_model_itself(dates: list[str], expected: list[tuple[str, str, int, bool]]) -> None:
    """The model is the yardstick; it gets a sanity check of its own."""
    assert [wire(r) for r in model_runs(dt.date.fromisoformat(d) for d in dates)] == expected


@pytest.mark.parametrize("count", [21, 500])
def test_a_backfill_of_many_bad_dates_is_still_invalid_argument(
        server: ServerThread, clock: FixedClock, count: int) -> None:
    """Found by the state machine: one violation per date made the status
    trailers larger than the client's 8 KiB limit, so the client saw
    RESOURCE_EXHAUSTED instead of INVALID_ARGUMENT."""
    user = str(uuid.uuid4())
    future = [(DEFAULT_NOW.date() + dt.timedelta(days=2 + i)).isoformat() for i in range(count)]
    with grpc.insecure_channel(server.target) as channel:
        stub = RunsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.BackfillDays(pb.BackfillDaysRequest(user_id=user, local_dates=future,
                                                     time_zone=ZONES[0]), timeout=30)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, describe(err)
    info, bad, _ = rich_status(err)
    assert info is not None and info.reason == "DATE_IN_FUTURE"
    assert bad is not None and 1 <= len(bad.field_violations) <= count
    assert bad.field_violations[0].field == "local_dates[0]"
    if len(bad.field_violations) < count:
        assert info.metadata["field_violations"] == str(count)
