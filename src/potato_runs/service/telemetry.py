"""OpenTelemetry: write spans and run-event counters for SRE dashboards."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from opentelemetry import metrics, trace

from potato_runs.domain.runs import RebuildPlan


class Telemetry:
    def __init__(self, tracer: trace.Tracer | None = None,
                 meter: metrics.Meter | None = None) -> None:
        self._tracer = tracer or trace.get_tracer("potato_runs")
        meter = meter or metrics.get_meter("potato_runs")
        self._events = meter.create_counter(
            "potato.runs.events", unit="{event}",
            description="Changes to the runs projection, by kind")
        self._duration = meter.create_histogram(
            "potato.runs.write.duration", unit="ms",
            description="Latency of a write use case, database round trip included (SLI: p95 < 50 ms)")
        self._rebuilt = meter.create_counter(
            "potato.runs.rebuild.changes", unit="{run}",
            description="Runs a rebuild added, removed or changed")
        self._violations = meter.create_histogram(
            "potato.runs.invariant_violations", unit="{violation}",
            description="Violations found by one invariant check")
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
            description="Duration of a totals reconciliation (scope: batch or run)")

    @contextmanager
    def write_span(self, operation: str, user_id: uuid.UUID) -> Iterator[None]:
        started = time.perf_counter()
        outcome = "ok"
        with self._tracer.start_as_current_span(
            f"potato.runs.{operation}",
            attributes={"potato.operation": operation, "enduser.id": str(user_id)},
        ):
            try:
                yield
            except BaseException:
                outcome = "error"
                raise
            finally:
                self._duration.record((time.perf_counter() - started) * 1000,
                                      {"operation": operation, "outcome": outcome})

    def record_events(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            self._events.add(1, {"kind": kind})

    def record_rebuild(self, plan: RebuildPlan) -> None:
        self._rebuilt.add(len(plan.diff.added), {"change": "added"})
        self._rebuilt.add(len(plan.diff.removed), {"change": "removed"})
        self._rebuilt.add(len(plan.diff.changed), {"change": "changed"})

    def record_violations(self, count: int) -> None:
        self._violations.record(count)

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
