"""Spans from the OpenTelemetry instrumentation libraries, each behind a setting.

- RPC server spans: `opentelemetry-instrumentation-grpc`'s grpc.aio server interceptor
  (`POTATO_OTEL_GRPC_SPANS`, `serve --otel-grpc-spans`; default off). One SERVER span per
  call of our services, named by the library after the full method
  (`/potato.runs.v2.RunsService/MarkDay`), with `rpc.system`, `rpc.service`,
  `rpc.method` and `rpc.grpc.status_code`, continuing a caller's `traceparent`. Our own
  write span (`potato.runs.MarkDay`, service/telemetry.py) is its child: the interceptor
  makes its span current in the call's task. It is opt-in because it is a grpc.aio
  `ServerInterceptor`, whose chain grpc.aio runs in Python on every call
  (`scripts/bench_telemetry.py` measures its price per MarkDay; docs/observability.md).
  Health and reflection get no span.
- asyncpg spans: `opentelemetry-instrumentation-asyncpg` (`POTATO_OTEL_ASYNCPG_SPANS`,
  `serve --otel-asyncpg-spans`; default off): one CLIENT span per statement, children of
  the RPC span. The statement is recorded, never its parameters. The library patches
  asyncpg's classes, so it acts on the whole process; `AsyncpgSpans.stop()` undoes it.

Our server-streaming methods (`WatchRunEvents`) are coroutines that write with
`context.write` (transport/registration.py), where the library expects an async generator
(`async for` over the behaviour): `_Interceptor` gives such a coroutine the library's
unary path, which awaits it inside the span, so the span lasts the whole stream.
"""

from __future__ import annotations

import inspect
from typing import Any

import grpc
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
from opentelemetry.instrumentation.grpc.filters import any_of, health_check, negate, service_prefix
from opentelemetry.sdk.trace import TracerProvider

UNTRACED = any_of(health_check(), service_prefix("grpc.reflection."))
"""Calls that get no RPC span: health probes and reflection."""


def grpc_span_interceptor(
        tracer_provider: TracerProvider | None) -> grpc.aio.ServerInterceptor[Any, Any]:
    """The library's aio server interceptor on our tracer provider (None: the global one)."""
    made = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider, filter_=negate(UNTRACED))
    # Built by the library (its tracer, schema URL and filter), then given our subclass.
    made.__class__ = _Interceptor
    interceptor: grpc.aio.ServerInterceptor[Any, Any] = made
    return interceptor


class _Interceptor(OpenTelemetryAioServerInterceptor):
    """The library's interceptor, for streams written with context.write too."""

    def _intercept_aio_server_stream(self, behavior: Any, handler_call_details: Any) -> Any:
        if inspect.iscoroutinefunction(behavior):
            return self._intercept_aio_server_unary(  # type: ignore[no-untyped-call]
                behavior, handler_call_details)
        return super()._intercept_aio_server_stream(  # type: ignore[no-untyped-call]
            behavior, handler_call_details)


class AsyncpgSpans:
    """asyncpg instrumented on `tracer_provider` from start() to stop()."""

    def __init__(self, tracer_provider: TracerProvider | None) -> None:
        self._tracer_provider = tracer_provider
        self._instrumentor: Any = None

    def start(self) -> None:
        instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
        if instrumentor.is_instrumented_by_opentelemetry:   # another App in this process
            return
        instrumentor.instrument(tracer_provider=self._tracer_provider)
        self._instrumentor = instrumentor

    def stop(self) -> None:
        if self._instrumentor is not None:
            self._instrumentor.uninstrument()
            self._instrumentor = None
