"""OpenTelemetry SDK wiring, chosen by configuration (called from the composition root).

`POTATO_OTEL_EXPORTER`:
- `none` (default): the API's no-op providers; instruments cost next to nothing.
- `console`: spans and metrics printed to stdout (metrics every
  `POTATO_OTEL_METRIC_INTERVAL` seconds), for development and for checking
  what a dashboard would receive.
- `otlp`: OTLP/gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT` (standard OTel variables); needs
  the optional package `opentelemetry-exporter-otlp-proto-grpc`.

Independently, `POTATO_METRICS_PORT` (`serve --metrics-port`) serves the metrics at
`/metrics` for Prometheus to scrape (`MetricsEndpoint`: opentelemetry-exporter-prometheus's
PrometheusMetricReader on a registry of its own, behind prometheus_client's HTTP server
thread). It is one more metric reader: OTLP or the console can run beside it. Metrics
alone (no span exporter) keep the no-op tracer: no span is recorded for nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from potato_runs import __version__

EXPORTERS = ("none", "console", "otlp")

log = logging.getLogger(__name__)


class ObservabilityError(RuntimeError):
    pass


@dataclass
class MetricsEndpoint:
    """`/metrics` over HTTP (Prometheus text format) on `host:port`, fed by `reader`."""

    reader: MetricReader
    host: str
    port: int
    """The bound port (the one picked when 0 was asked)."""
    _server: Any = field(repr=False, default=None)
    _thread: Any = field(repr=False, default=None)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start_metrics_endpoint(host: str, port: int) -> MetricsEndpoint:
    """Starts the Prometheus endpoint (port 0 picks a free one); ObservabilityError when
    the address cannot be bound. A registry per endpoint: several servers in one process
    (tests) never see each other's metrics."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        reader.shutdown()
        raise ObservabilityError(f"could not bind the metrics endpoint {host}:{port}: "
                                 f"{exc.strerror or exc}") from exc
    bound = int(server.server_port)
    log.info("metrics for Prometheus on http://%s:%d/metrics", host, bound)
    return MetricsEndpoint(reader, host, bound, server, thread)


@dataclass
class Providers:
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    metrics_endpoint: MetricsEndpoint | None = None

    def tracer(self) -> trace.Tracer:
        return (self.tracer_provider or trace.get_tracer_provider()).get_tracer("potato_runs")

    def meter(self) -> metrics.Meter:
        return (self.meter_provider or metrics.get_meter_provider()).get_meter("potato_runs")

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()


def _otlp() -> tuple[SpanExporter, MetricExporter]:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise ObservabilityError(
            "POTATO_OTEL_EXPORTER=otlp needs the package opentelemetry-exporter-otlp-proto-grpc "
            "(pip install opentelemetry-exporter-otlp-proto-grpc)") from exc
    return OTLPSpanExporter(), OTLPMetricExporter()


def build_providers(exporter: str, metric_interval: float = 60.0,
                    extra_reader: MetricReader | None = None,
                    extra_spans: SpanExporter | None = None,
                    metrics_endpoint: MetricsEndpoint | None = None) -> Providers:
    """SDK providers for the exporter; `extra_*` attach more sinks (tests use in-memory ones);
    `metrics_endpoint` (start_metrics_endpoint) adds its Prometheus reader and is closed
    by Providers.shutdown."""
    if exporter not in EXPORTERS:
        if metrics_endpoint is not None:
            metrics_endpoint.close()
        raise ObservabilityError(f"unknown exporter {exporter!r}; use one of {EXPORTERS}")
    if exporter == "none" and extra_reader is None and extra_spans is None:
        if metrics_endpoint is None:
            return Providers()
        resource = Resource.create({"service.name": "potato-runs",
                                    "service.version": __version__})
        return Providers(meter_provider=MeterProvider(resource=resource,
                                                      metric_readers=[metrics_endpoint.reader]),
                         metrics_endpoint=metrics_endpoint)
    resource = Resource.create({"service.name": "potato-runs", "service.version": __version__})
    span_exporters: list[SpanExporter] = []
    readers: list[MetricReader] = []
    if exporter == "console":
        span_exporters.append(ConsoleSpanExporter())
        readers.append(PeriodicExportingMetricReader(
            ConsoleMetricExporter(), export_interval_millis=metric_interval * 1000))
    elif exporter == "otlp":
        spans, metric_exporter = _otlp()
        span_exporters.append(spans)
        readers.append(PeriodicExportingMetricReader(
            metric_exporter, export_interval_millis=metric_interval * 1000))
    if extra_spans is not None:
        span_exporters.append(extra_spans)
    if extra_reader is not None:
        readers.append(extra_reader)
    if metrics_endpoint is not None:
        readers.append(metrics_endpoint.reader)
    tracer_provider = TracerProvider(resource=resource)
    for e in span_exporters:
        tracer_provider.add_span_processor(BatchSpanProcessor(e))
    return Providers(tracer_provider=tracer_provider,
                     meter_provider=MeterProvider(resource=resource, metric_readers=readers),
                     metrics_endpoint=metrics_endpoint)
