"""RPC metrics by the OpenTelemetry semantic conventions: `rpc.server.duration`.

Why one interceptor of ours and not gRPC's own plugin (`grpcio-observability`, gRFC A66,
`grpc.server.call.duration`): that plugin does serve a grpc.aio server and labels its
registered methods by name (tried with grpcio-observability 1.85.0 on an aio server with
`add_registered_method_handlers`: `grpc.method="t.S/Echo"`, not `other`), but it pins
`grpcio` to its own exact version (1.85.0, the newest release), while our generated stubs
require grpcio >= 1.85.1 (`GRPC_GENERATED_VERSION`) and grpcio-status 1.85.3 requires
>= 1.85.3: it cannot be installed beside our gRPC stack, and would hold every grpcio
upgrade (security fixes included) until gRPC publishes the matching plugin. It is also
process-global (`register_global`: every channel and server in the process).
`opentelemetry-instrumentation-grpc` records no metrics
(open-telemetry/opentelemetry-python-contrib#3375).

So `RpcMetrics` is a `registration.HandlerInterceptor` (it wraps our methods when they are
registered: health and reflection are not counted, and no grpc.aio ServerInterceptor runs
per call). It is listed first in app.py, so it also times the calls the access check and
the load shedder refuse. Histogram `rpc.server.duration`, unit `s`, attributes
`rpc.system="grpc"`, `rpc.service` (e.g. `potato.runs.v2.RunsService`), `rpc.method`
(`MarkDay`) and `rpc.grpc.status_code` (the integer code, 0 = OK). Prometheus:
`rpc_server_duration_seconds_{bucket,count,sum}` (docs/observability.md). Buckets: 0.05 s
is an edge, so the p95 < 50 ms SLO reads one bucket. A server stream (`WatchRunEvents`)
is not recorded (`skip`, below): one point for a stream of hours would distort the SLIs.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Collection
from typing import Any

import grpc
from opentelemetry import metrics

from potato_runs.transport.registration import Behavior

METRIC = "rpc.server.duration"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds; the same edges as potato.runs.operation.duration (0.05: the latency SLO)."""


class RpcMetrics:
    """A `registration.HandlerInterceptor` recording one `rpc.server.duration` point per
    call. The status is what the client receives: the code the handler aborted with or set
    (`context.code()`), OK when it returned without one, UNKNOWN for an escaped exception
    (gRPC's answer), CANCELLED, or DEADLINE_EXCEEDED when the call was cancelled because
    its deadline passed. Attribute sets are built once per (method, code).

    Long-lived streams (`skip`, e.g. WatchRunEvents) are not recorded: one point for a
    stream that lasted hours would only distort the latency SLI built on this metric."""

    def __init__(self, meter: metrics.Meter, skip: Collection[str] = ()) -> None:
        self._skip = frozenset(skip)
        self._duration = meter.create_histogram(
            METRIC, unit="s", description="Duration of inbound RPCs of our services, by "
            "service, method and gRPC status code (OpenTelemetry RPC conventions)",
            explicit_bucket_boundaries_advisory=list(BUCKETS))
        self._attrs: dict[tuple[str, int], dict[str, Any]] = {}

    def _attributes(self, method: str, code: int) -> dict[str, Any]:
        attrs = self._attrs.get((method, code))
        if attrs is None:
            service, _, name = method.lstrip("/").partition("/")
            attrs = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name,
                     "rpc.grpc.status_code": code}
            self._attrs[(method, code)] = attrs
        return attrs

    def intercept(self, method: str, behavior: Behavior) -> Behavior:
        if method in self._skip:
            return behavior
        record = self._duration.record
        ok = grpc.StatusCode.OK.value[0]

        @functools.wraps(behavior)
        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = ok
            try:
                response = await behavior(request, context)
            except asyncio.CancelledError:
                remaining = context.time_remaining()
                code = (grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None
                        and remaining <= 0 else grpc.StatusCode.CANCELLED).value[0]
                raise
            except BaseException:
                set_code = context.code()
                code = (set_code if set_code is not None else grpc.StatusCode.UNKNOWN).value[0]
                raise
            else:
                set_code = context.code()
                if set_code is not None:
                    code = set_code.value[0]
                return response
            finally:
                record(time.perf_counter() - started, self._attributes(method, code))

        return timed
