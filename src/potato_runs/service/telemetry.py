"""OpenTelemetry: the domain metrics (one home for their names), write spans and the run
events on them.

The names below are a contract: the dashboard and the alert rules in deploy/ read them
through Prometheus (docs/observability.md#metrics has the table and the exported names;
tests/integration/test_metrics.py scrapes them). Renaming one is a breaking change.

Per-call cost matters on the hot path (MarkDay, GetActiveRun): attribute dicts are
built once and reused, timing is a perf_counter pair, and the span events are built only
when the span records (never with the default no-op providers).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from potato_runs.domain.model import Run, RunChange
from potato_runs.domain.runs import RebuildPlan

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
"""Seconds; 0.05 is a boundary: the calc-latency SLO is "p95 < 50 ms"."""
LONG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Seconds, for rebuilds and reconciliations (a batch may take minutes)."""

WRITE = "write"
READ = "read"


class _Timed:
    """Records one operation's duration on exit: outcome ok, or error when it raised.
    A plain context manager (no generator): it sits on every call of the hot path."""

    __slots__ = ("_error", "_ok", "_record", "_started")

    def __init__(self, record: Callable[[float, Mapping[str, str]], None],
                 ok: Mapping[str, str], error: Mapping[str, str]) -> None:
        self._record = record
        self._ok = ok
        self._error = error
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._record(time.perf_counter() - self._started,
                     self._ok if exc_type is None else self._error)


def _run_attributes(prefix: str, runs: tuple[Run, ...]) -> dict[str, Any]:
    """A run event's runs as span-event attributes (homogeneous arrays: one entry per run)."""
    if not runs:
        return {}
    return {f"{prefix}.start_date": [r.start_date.isoformat() for r in runs],
            f"{prefix}.end_date": [r.end_date.isoformat() for r in runs],
            f"{prefix}.day_count": [r.day_count for r in runs]}


class Telemetry:
    def __init__(self, tracer: trace.Tracer | None = None,
                 meter: metrics.Meter | None = None, *, tracing: bool = True) -> None:
        """`tracing=False` (no tracer provider configured: app.py) skips the write spans'
        context work, a few µs of each write that a no-op tracer would still cost."""
        self._tracer = tracer or trace.get_tracer("potato_runs")
        self._tracing = tracing
        meter = meter or metrics.get_meter("potato_runs")
        self._events = meter.create_counter(
            "potato.runs.events", unit="{event}",
            description="Changes to the runs projection, by kind (a backfill counts its net "
                        "change)")
        self._operation = meter.create_histogram(
            "potato.runs.operation.duration", unit="s",
            description="Latency of a use case, database round trips included, by operation, "
                        "kind (write|read) and outcome (ok|error) (SLI: p95 of writes < 50 ms)",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        self._merges = meter.create_counter(
            "potato.runs.merges", unit="{merge}",
            description="Runs merged by a write (a day closed the gap between two runs)")
        self._violations = meter.create_gauge(
            "potato.runs.invariant.violations", unit="{violation}",
            description="Violations of each invariant found by the last check")
        self._rebuild_duration = meter.create_histogram(
            "potato.runs.rebuild.duration", unit="s",
            description="Duration of a rebuild (scope: user, batch or all)",
            explicit_bucket_boundaries_advisory=LONG_BUCKETS)
        self._rebuilt = meter.create_counter(
            "potato.runs.rebuild.changes", unit="{run}",
            description="Runs a rebuild added, removed or changed")
        self._rebuild_failures = meter.create_counter(
            "potato.runs.rebuild.failures", unit="{rebuild}",
            description="Rebuilds that failed (one user's, or a batch's drift scan)")
        self._flag_evaluations = meter.create_counter(
            "potato.flags.evaluations", unit="{evaluation}",
            description="Feature flag evaluations, by flag and variant served")
        self._shadow = meter.create_counter(
            "potato.shadow.comparisons", unit="{comparison}",
            description="Online shadow comparisons of legacy and projection answers, by "
                        "flag, method and result (match, mismatch, dropped, error)")
        self._reconcile_drift = meter.create_counter(
            "potato.totals.reconcile.drift", unit="{row}",
            description="Stored totals rows (months and lifetime) the reconciliation found "
                        "missing, extra or wrong")
        self._reconcile_repaired = meter.create_counter(
            "potato.totals.reconcile.repaired", unit="{row}",
            description="Stored totals rows the reconciliation rewrote")
        self._reconcile_duration = meter.create_histogram(
            "potato.totals.reconcile.duration", unit="s",
            description="Duration of a totals reconciliation (scope: batch or run)",
            explicit_bucket_boundaries_advisory=LONG_BUCKETS)
        self._pool_wait = meter.create_histogram(
            "potato.db.pool.wait", unit="s",
            description="Seconds a call waited for a pooled connection, by pool",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        self._pools: dict[str, Any] = {}
        meter.create_observable_gauge(
            "potato.db.pool.connections", callbacks=[self._observe_pools],
            unit="{connection}",
            description="Connections of each pool, by state (used: handed out; idle: open "
                        "and free)")
        # Series the alerts compute increase() over exist at 0 from the start, so the
        # first failure or drift is an increase (deploy/prometheus/rules.yml).
        self._rebuild_failures.add(0)
        for dry_run in (False, True):
            self._reconcile_drift.add(0, {"dry_run": dry_run})
        self._timers: dict[tuple[str, str], tuple[Mapping[str, str], Mapping[str, str]]] = {}
        self._kinds: dict[str, Mapping[str, str]] = {}
        self._flag_attrs: dict[tuple[str, str], Mapping[str, str]] = {}

    # -- latency ---------------------------------------------------------------
    def _attrs(self, operation: str, kind: str) -> tuple[Mapping[str, str], Mapping[str, str]]:
        attrs = self._timers.get((operation, kind))
        if attrs is None:
            attrs = self._timers[(operation, kind)] = (
                {"operation": operation, "kind": kind, "outcome": "ok"},
                {"operation": operation, "kind": kind, "outcome": "error"})
        return attrs

    def timed(self, operation: str, kind: str = READ) -> _Timed:
        """`with telemetry.timed("GetActiveRun"):` records potato.runs.operation.duration."""
        ok, error = self._attrs(operation, kind)
        return _Timed(self._operation.record, ok, error)

    @contextmanager
    def write_span(self, operation: str, user_id: uuid.UUID) -> Iterator[trace.Span]:
        """The span of a write use case (`potato.runs.<operation>`), and its duration in
        potato.runs.operation.duration (kind=write). Yields the span: the run events go
        on it (`add_run_events`)."""
        if not self._tracing:
            with self.timed(operation, WRITE):
                yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(
            f"potato.runs.{operation}",
            attributes={"potato.operation": operation, "enduser.id": str(user_id)},
        ) as span, self.timed(operation, WRITE):
            yield span

    @contextmanager
    def operator_span(self, operation: str, user_id: uuid.UUID) -> Iterator[trace.Span]:
        """A span for operator work (rebuilds): not in the calc-latency histogram, whose
        SLO is about callers' writes."""
        with self._tracer.start_as_current_span(
            f"potato.runs.{operation}",
            attributes={"potato.operation": operation, "enduser.id": str(user_id)},
        ) as span:
            yield span

    # -- run events -------------------------------------------------------------
    def record_events(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            attrs = self._kinds.get(kind)
            if attrs is None:
                attrs = self._kinds[kind] = {"kind": kind}
            self._events.add(1, attrs)
            if kind == "run_merged":
                self._merges.add(1)

    @staticmethod
    def add_run_events(span: trace.Span, changes: Iterable[RunChange],
                       request_id: str | None) -> None:
        """Each run event of a write as an OpenTelemetry event on the write's span: name =
        the kind; attributes = the runs before and after (start_date, end_date,
        day_count: arrays, one entry per run) and the request id (`x-request-id`)."""
        if not span.is_recording():
            return
        for change in changes:
            attrs: dict[str, Any] = {"potato.run_event.kind": change.kind,
                                     **_run_attributes("potato.run.before", change.before),
                                     **_run_attributes("potato.run.after", change.after)}
            if request_id:
                attrs["potato.request_id"] = request_id
            span.add_event(change.kind, attrs)

    # -- rebuilds and checks ----------------------------------------------------
    def record_rebuild(self, plan: RebuildPlan) -> None:
        self._rebuilt.add(len(plan.diff.added), {"change": "added"})
        self._rebuilt.add(len(plan.diff.removed), {"change": "removed"})
        self._rebuilt.add(len(plan.diff.changed), {"change": "changed"})

    def record_rebuild_duration(self, seconds: float, scope: str) -> None:
        self._rebuild_duration.record(seconds, {"scope": scope})

    def record_rebuild_failure(self) -> None:
        self._rebuild_failures.add(1)

    def record_violations(self, counts: Mapping[str, int]) -> None:
        """The last check's count per invariant code (every code, zeros included): every
        pass of the invariant monitor reports, incremental ones included."""
        for code, count in counts.items():
            self._violations.set(count, {"invariant": code})

    # -- flags, shadow, totals ---------------------------------------------------
    def record_flag(self, flag: str, variant: str) -> None:
        attrs = self._flag_attrs.get((flag, variant))
        if attrs is None:
            attrs = self._flag_attrs[(flag, variant)] = {"flag": flag, "variant": variant}
        self._flag_evaluations.add(1, attrs)

    def record_shadow(self, flag: str, method: str, result: str) -> None:
        self._shadow.add(1, {"flag": flag, "method": method, "result": result})

    def record_reconcile(self, *, rows_drifted: int, rows_repaired: int, seconds: float,
                         dry_run: bool, scope: str) -> None:
        """One batch (scope="batch": the counters and the duration) or one whole run
        (scope="run": the duration only; its batches counted the rows)."""
        attrs = {"dry_run": dry_run}
        if scope == "batch":
            self._reconcile_drift.add(rows_drifted, attrs)
            self._reconcile_repaired.add(rows_repaired, attrs)
        self._reconcile_duration.record(seconds, {**attrs, "scope": scope})

    # -- pools ---------------------------------------------------------------------
    def observe_pool(self, name: str, pool: Any) -> Callable[[float], None]:
        """Reports `pool` (an asyncpg pool) in potato.db.pool.connections under `name`;
        returns what records its acquire waits (storage/pool.observe_wait takes it)."""
        self._pools[name] = pool
        attrs = {"pool": name}
        record = self._pool_wait.record
        return lambda seconds: record(seconds, attrs)

    def _observe_pools(self, _options: CallbackOptions) -> Iterable[Observation]:
        for name, pool in list(self._pools.items()):
            size, idle = pool.get_size(), pool.get_idle_size()
            yield Observation(size - idle, {"pool": name, "state": "used"})
            yield Observation(idle, {"pool": name, "state": "idle"})
