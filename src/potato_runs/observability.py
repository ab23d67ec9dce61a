"""OpenTelemetry SDK wiring, chosen by configuration (called from the composition root).

`POTATO_OTEL_EXPORTER`:
- `none` (default): the API's no-op providers; instruments cost next to nothing.
- `console`: spans and metrics printed to stdout (metrics every
  `POTATO_OTEL_METRIC_INTERVAL` seconds), for development and for checking
  what a dashboard would receive.
- `otlp`: OTLP/gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT` (standard OTel variables); needs
  the optional package `opentelemetry-exporter-otlp-proto-grpc`.
"""

from __future__ import annotations

from dataclasses import dataclass

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


class ObservabilityError(RuntimeError):
    pass


@dataclass
class Providers:
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None

    def tracer(self) -> trace.Tracer:
        return (self.tracer_provider or trace.get_tracer_provider()).get_tracer("potato_runs")

    def meter(self) -> metrics.Meter:
        return (self.meter_provider or metrics.get_meter_provider()).get_meter("potato_runs")

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def _otlp() -> tuple[SpanExporter, MetricExporter]:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found]
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise ObservabilityError(
            "POTATO_OTEL_EXPORTER=otlp needs the package opentelemetry-exporter-otlp-proto-grpc "
            "(pip install opentelemetry-exporter-otlp-proto-grpc)") from exc
    return OTLPSpanExporter(), OTLPMetricExporter()


def build_providers(exporter: str, metric_interval: float = 60.0,
                    extra_reader: MetricReader | None = None,
                    extra_spans: SpanExporter | None = None) -> Providers:
    """SDK providers for the exporter; `extra_*` attach more sinks (tests use in-memory ones)."""
    if exporter not in EXPORTERS:
        raise ObservabilityError(f"unknown exporter {exporter!r}; use one of {EXPORTERS}")
    if exporter == "none" and extra_reader is None and extra_spans is None:
        return Providers()
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
    tracer_provider = TracerProvider(resource=resource)
    for e in span_exporters:
        tracer_provider.add_span_processor(BatchSpanProcessor(e))
    return Providers(tracer_provider=tracer_provider,
                     meter_provider=MeterProvider(resource=resource, metric_readers=readers))
