"""What SRE dashboards receive: spans, run-event counters and the write latency histogram."""

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

    latency = {(p.attributes["operation"], p.attributes["outcome"]): p.count
               for p in points(reader, "potato.runs.write.duration")}
    assert latency == {("MarkDay", "ok"): 4, ("UnmarkDay", "ok"): 1, ("MarkDay", "error"): 1}

    assert app.providers.tracer_provider is not None
    app.providers.tracer_provider.force_flush()
    names = [s.name for s in spans.get_finished_spans()]
    assert names.count("potato.runs.MarkDay") == 5 and names.count("potato.runs.UnmarkDay") == 1
    first = next(s for s in spans.get_finished_spans() if s.name == "potato.runs.MarkDay")
    assert first.attributes is not None and first.attributes["enduser.id"] == user


def test_unknown_exporter_is_refused() -> None:
    with pytest.raises(ObservabilityError):
        build_providers("zipkin")
