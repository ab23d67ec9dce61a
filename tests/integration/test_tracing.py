"""RPC spans, RPC metrics, asyncpg spans and JSON logs, on a real server (port 0) and a
real PostgreSQL, observed through in-memory SDK sinks."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs import logs
from potato_runs.app import App, Database, build_app
from potato_runs.clock import FixedClock
from potato_runs.config import Settings
from potato_runs.observability import build_providers
from potato_runs.storage.pool import create_pool
from support import ADMIN_METADATA, ADMIN_TOKEN, app_dsn

MARK = "/potato.runs.v2.RunsService/MarkDay"
Observed = tuple[App, InMemoryMetricReader, InMemorySpanExporter]


@pytest.fixture
async def start(pg_dsn: str) -> AsyncIterator[Callable[..., Any]]:
    """start(**settings) -> (app, metric reader, span exporter); stops what it started."""
    started: list[App] = []

    async def _start(**overrides: Any) -> Observed:
        reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
        providers = build_providers("none", extra_reader=reader, extra_spans=spans)
        dsn = app_dsn(pg_dsn)
        pool = await create_pool(dsn, min_size=1, max_size=4)
        app = await build_app(Settings(port=0, dsn=dsn, invariant_check_interval=0, **overrides),
                              clock=FixedClock(dt.datetime(2025, 7, 1, 12, tzinfo=dt.UTC)),
                              database=Database(dsn=dsn, pool=pool), providers=providers)
        started.append(app)
        return app, reader, spans

    yield _start
    for app in started:
        await app.stop(0)


async def calls(app: App, user: str) -> None:
    """Two good MarkDays, one refused (a date in the future), one GetActiveRun."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        for day in ("2025-06-15", "2025-06-16"):
            await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date=day, time_zone="UTC"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.MarkDay(pb.MarkDayRequest(user_id=user, local_date="2099-01-01"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await stub.GetActiveRun(pb.GetActiveRunRequest(user_id=user))


def finished(app: App, spans: InMemorySpanExporter) -> list[ReadableSpan]:
    assert app.providers.tracer_provider is not None
    app.providers.tracer_provider.force_flush()
    return list(spans.get_finished_spans())


def sql_spans(all_spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in all_spans if s.attributes and s.attributes.get("db.system") == "postgresql"]


async def test_rpc_span_by_the_conventions_parents_our_write_span(start: Any) -> None:
    app, _, spans = await start(otel_grpc_spans=True)
    user = str(uuid.uuid4())
    await calls(app, user)
    all_spans = finished(app, spans)

    servers = [s for s in all_spans if s.kind is SpanKind.SERVER]
    assert sorted(s.name for s in servers) == sorted([MARK, MARK, MARK,
                                                      "/potato.runs.v2.RunsService/GetActiveRun"])
    codes = sorted(s.attributes["rpc.grpc.status_code"] for s in servers
                   if s.name == MARK and s.attributes)
    assert codes == [0, 0, 3]
    ok = next(s for s in servers if s.name == MARK and s.attributes
              and s.attributes["rpc.grpc.status_code"] == 0)
    assert ok.attributes is not None
    assert {k: ok.attributes[k] for k in ("rpc.system", "rpc.service", "rpc.method")} == {
        "rpc.system": "grpc", "rpc.service": "potato.runs.v2.RunsService", "rpc.method": "MarkDay"}

    writes = [s for s in all_spans if s.name == "potato.runs.MarkDay"]
    assert len(writes) == 3   # the refused one too: the date is judged inside the use case
    server_ids = {s.context.span_id for s in servers if s.name == MARK}
    for write in writes:
        assert write.parent is not None and write.parent.span_id in server_ids
    pairs = {(w.context.trace_id, w.parent.span_id) for w in writes if w.parent is not None}
    assert {(s.context.trace_id, s.context.span_id) for s in servers if s.name == MARK} == pairs
    assert sql_spans(all_spans) == []   # asyncpg spans are off by default


async def test_a_stream_written_with_context_write_gets_one_span_for_its_life(start: Any) -> None:
    """WatchRunEvents is a coroutine that writes (transport/registration.py), not the async
    generator the library expects: the span must still wrap it, and the stream work."""
    from potato.runs.v2 import run_events_service_pb2 as epb
    from potato.runs.v2 import run_events_service_pb2_grpc

    app, reader, spans = await start(otel_grpc_spans=True, admin_token=ADMIN_TOKEN)
    user = str(uuid.uuid4())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        call = run_events_service_pb2_grpc.RunEventsServiceStub(ch).WatchRunEvents(
            epb.WatchRunEventsRequest(user_id=user), metadata=ADMIN_METADATA)
        await runs_service_pb2_grpc.RunsServiceStub(ch).MarkDay(
            pb.MarkDayRequest(user_id=user, local_date="2025-06-15", time_zone="UTC"))
        first = await call.read()
        assert first is not grpc.aio.EOF and first.event.user_id == user
        call.cancel()
    watch = "/potato.runs.v2.RunEventsService/WatchRunEvents"
    deadline = asyncio.get_running_loop().time() + 10
    while not [s for s in finished(app, spans) if s.name == watch]:
        assert asyncio.get_running_loop().time() < deadline, "no span for the stream"
        await asyncio.sleep(0.05)
    (span,) = [s for s in finished(app, spans) if s.name == watch]
    assert span.kind is SpanKind.SERVER and span.attributes is not None
    assert span.attributes["rpc.method"] == "WatchRunEvents"
    # A stream that lasts hours is not an RPC latency: rpc.server.duration skips it (the
    # SLIs built on that metric stay about calls), while the MarkDay above is recorded.
    data = reader.get_metrics_data()
    assert data is not None
    methods = [p.attributes["rpc.method"]
               for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
               if m.name == "rpc.server.duration" for p in m.data.data_points]
    assert "MarkDay" in methods and "WatchRunEvents" not in methods


async def test_health_gets_no_rpc_span(start: Any) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    app, _, spans = await start(otel_grpc_spans=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert [s for s in finished(app, spans) if s.kind is SpanKind.SERVER] == []


async def test_without_the_switch_there_is_no_rpc_span(start: Any) -> None:
    app, _, spans = await start()
    await calls(app, str(uuid.uuid4()))
    all_spans = finished(app, spans)
    assert [s for s in all_spans if s.kind is SpanKind.SERVER] == []
    assert len([s for s in all_spans if s.name == "potato.runs.MarkDay"]) == 3


async def test_rpc_duration_is_labelled_by_method_and_status(start: Any) -> None:
    app, reader, _ = await start()
    await calls(app, str(uuid.uuid4()))
    data = reader.get_metrics_data()
    assert data is not None
    counts = {(p.attributes["rpc.service"], p.attributes["rpc.method"],
               p.attributes["rpc.grpc.status_code"], p.attributes["rpc.system"]): p.count
              for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "rpc.server.duration" for p in m.data.data_points}
    runs = "potato.runs.v2.RunsService"
    assert counts == {(runs, "MarkDay", 0, "grpc"): 2, (runs, "MarkDay", 3, "grpc"): 1,
                      (runs, "GetActiveRun", 0, "grpc"): 1}
    unit = next(m.unit for rm in data.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics if m.name == "rpc.server.duration")
    assert unit == "s"


async def test_asyncpg_spans_only_when_switched_on(start: Any) -> None:
    app, _, spans = await start(otel_grpc_spans=True, otel_asyncpg_spans=True)
    await calls(app, str(uuid.uuid4()))
    all_spans = finished(app, spans)
    sql = sql_spans(all_spans)
    assert sql, "no asyncpg span with the switch on"
    assert all(s.kind is SpanKind.CLIENT for s in sql)
    by_id = {s.context.span_id: s for s in all_spans}
    writes = {s.context.span_id for s in all_spans if s.name == "potato.runs.MarkDay"}
    # Each good MarkDay's SQL runs under its write span, inside the RPC's trace.
    under_writes = [s for s in sql if s.parent is not None and s.parent.span_id in writes]
    assert len(under_writes) >= 2
    for s in under_writes:
        assert s.parent is not None
        parent = by_id[s.parent.span_id]
        assert parent.parent is not None and by_id[parent.parent.span_id].kind is SpanKind.SERVER
    await app.stop(0)   # uninstruments asyncpg: a server after it records no SQL span

    app2, _, spans2 = await start(otel_grpc_spans=True)
    await calls(app2, str(uuid.uuid4()))
    assert sql_spans(finished(app2, spans2)) == []


async def test_a_log_line_is_json_with_the_current_span_ids(start: Any) -> None:
    app, _, spans = await start()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("potato_runs.test_tracing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with app.providers.tracer().start_as_current_span("outer"):
            logger.info("inside %s", "a span", extra={"user": "u-1"})
        logger.warning("outside\nany span")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3   # one object per line, newlines escaped
    inside, outside, failed = (json.loads(line) for line in lines)
    span = next(s for s in finished(app, spans) if s.name == "outer")
    assert inside["trace_id"] == f"{span.context.trace_id:032x}"
    assert inside["span_id"] == f"{span.context.span_id:016x}"
    assert (inside["message"], inside["level"], inside["logger"], inside["user"]) == (
        "inside a span", "INFO", "potato_runs.test_tracing", "u-1")
    assert inside["time"].endswith("Z")
    assert "trace_id" not in outside and outside["message"] == "outside\nany span"
    assert "ValueError: boom" in failed["exception"]


def test_log_format_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolve("auto", Tty()) == "text"
    assert logs.resolve("auto", io.StringIO()) == "json"
    assert logs.resolve("text", io.StringIO()) == "text"
    assert Settings.from_env({"POTATO_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ValueError, match="POTATO_LOG_FORMAT"):
        Settings.from_env({"POTATO_LOG_FORMAT": "xml"})
    on = Settings.from_env({"POTATO_OTEL_GRPC_SPANS": "1", "POTATO_OTEL_ASYNCPG_SPANS": "true"})
    assert on.otel_grpc_spans and on.otel_asyncpg_spans


def test_serve_logging_writes_json_lines_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    """logs.configure, as `serve` calls it: the root logger's one handler, on stderr."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("INFO", "json")
        logging.getLogger("potato_runs.serve").warning("listening %s", "beyond loopback")
        logging.getLogger("potato_runs.serve").debug("below the level")
    finally:
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert [(e["level"], e["logger"], e["message"]) for e in lines] == [
        ("WARNING", "potato_runs.serve", "listening beyond loopback")]
