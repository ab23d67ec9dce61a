"""What SRE dashboards receive: spans with the run events, run-event counters and the
operation latency histogram."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.app import App, Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.observability import ObservabilityError, build_providers
from potato_runs.storage.pool import create_pool
from support import app_dsn


@pytest.fixture
async def observed(pg_dsn: str) -> AsyncIterator[tuple[App, InMemoryMetricReader,
                                                        InMemorySpanExporter]]:
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    providers = build_providers("none", extra_reader=reader, extra_spans=spans)
    dsn = app_dsn(pg_dsn)   # the least-privilege role, as every test server
    pool = await create_pool(dsn, min_size=1, max_size=4)
    app = await build_app(Settings(port=0, dsn=dsn, invariant_check_interval=0),
                          clock=FixedClock(dt.datetime(2025, 7, 1, 12, tzinfo=dt.UTC)),
                          database=Database(dsn=dsn, pool=pool), providers=providers)
    try:
        yield app, reader, spans
    finally:
        await app.stop(0)


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == name for p in m.data.data_points]


async def test_writes_emit_spans_event_counters_and_latency(observed: Any) -> None:
    app, reader, spans = observed
    user = str(uuid.uuid4())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        for day in ("2025-06-15", "2025-06-17", "2025-06-16", "2025-06-16"):
            await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date=day,
                                                 time_zone="America/New_York"))
        await stub.UnmarkDay(pb.UnmarkDayRequest(user_id=user, local_date="2025-06-16"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2099-01-01"))

    events = {p.attributes["kind"]: p.value for p in points(reader, "potato.runs.events")}
    assert events == {"run_created": 2, "run_deactivated": 1, "run_merged": 1, "run_split": 1}

    assert [p.value for p in points(reader, "potato.runs.merges")] == [1]
    latency = {(p.attributes["operation"], p.attributes["kind"], p.attributes["outcome"]): p.count
               for p in points(reader, "potato.runs.operation.duration")}
    assert latency == {("MarkDay", "write", "ok"): 4, ("UnmarkDay", "write", "ok"): 1,
                       ("MarkDay", "write", "error"): 1}
    assert not points(reader, "potato.runs.write.duration")   # replaced (issue 11)

    assert app.providers.tracer_provider is not None
    app.providers.tracer_provider.force_flush()
    names = [s.name for s in spans.get_finished_spans()]
    assert names.count("potato.runs.MarkDay") == 5 and names.count("potato.runs.UnmarkDay") == 1
    first = next(s for s in spans.get_finished_spans() if s.name == "potato.runs.MarkDay")
    assert first.attributes is not None and first.attributes["enduser.id"] == user


def test_unknown_exporter_is_refused() -> None:
    with pytest.raises(ObservabilityError):
        build_providers("zipkin")


async def test_run_events_are_events_on_the_write_span(observed: Any) -> None:
    """Each run event of a write is an OpenTelemetry event on its span: the kind, the runs
    before and after (start_date, end_date, day_count) and the request id."""
    app, _, spans = observed
    user = str(uuid.uuid4())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        for day in ("2025-06-15", "2025-06-17"):
            await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date=day,
                                                 time_zone="UTC"))
        await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2025-06-16"),
                           metadata=(("x-request-id", "merge-1"),))
        await stub.UnmarkDay(pb.UnmarkDayRequest(user_id=user, local_date="2025-06-16"))
        await stub.BackfillDays(pb.BackfillDaysRequest(
            user_id=user, local_dates=["2025-06-20", "2025-06-22"]),
            metadata=(("x-request-id", "fill-1"),))
    assert app.providers.tracer_provider is not None
    app.providers.tracer_provider.force_flush()
    finished = [s for s in spans.get_finished_spans()
                if s.attributes is not None and s.attributes.get("enduser.id") == user]
    merge = [e for s in finished for e in s.events if e.name == "run_merged"]
    assert len(merge) == 1
    attrs = dict(merge[0].attributes or {})
    assert attrs["potato.request_id"] == "merge-1"
    assert list(attrs["potato.run.before.start_date"]) == ["2025-06-15", "2025-06-17"]
    assert list(attrs["potato.run.before.end_date"]) == ["2025-06-15", "2025-06-17"]
    assert list(attrs["potato.run.after.start_date"]) == ["2025-06-15"]
    assert list(attrs["potato.run.after.end_date"]) == ["2025-06-17"]
    assert list(attrs["potato.run.after.day_count"]) == [3]
    # Two events of one MarkDay (read back by the write function): the deactivation
    # concerns the run before the new one.
    deactivated = [dict(e.attributes or {}) for s in finished if s.name == "potato.runs.MarkDay"
                   for e in s.events if e.name == "run_deactivated"]
    assert [(list(a["potato.run.before.start_date"]), list(a["potato.run.after.end_date"]))
            for a in deactivated] == [(["2025-06-15"], ["2025-06-15"])]
    split = [dict(e.attributes or {}) for s in finished for e in s.events
             if e.name == "run_split"]
    assert len(split) == 1 and "potato.request_id" not in split[0]
    assert list(split[0]["potato.run.before.start_date"]) == ["2025-06-15"]
    assert list(split[0]["potato.run.before.end_date"]) == ["2025-06-17"]
    assert list(split[0]["potato.run.after.start_date"]) == ["2025-06-15", "2025-06-17"]
    assert list(split[0]["potato.run.after.day_count"]) == [1, 1]
    backfill = next(s for s in finished if s.name == "potato.runs.BackfillDays")
    # The net change: the active run deactivated once, two runs created.
    assert [e.name for e in backfill.events] == ["run_deactivated", "run_created",
                                                 "run_created"]
    created = [dict(e.attributes or {}) for e in backfill.events if e.name == "run_created"]
    assert [list(a["potato.run.after.start_date"]) for a in created] == [["2025-06-20"],
                                                                        ["2025-06-22"]]
    assert all("potato.run.before.start_date" not in a for a in created)
    assert {a["potato.request_id"] for a in created} == {"fill-1"}
