#!/usr/bin/env python
"""What telemetry costs per call: MarkDay and GetActiveRun with telemetry off, with the
OTLP path on, and with each tracing switch on top of it, in one run.

One embedded PostgreSQL (fsync on unless --fast), one database per configuration, one
server process per configuration (`python -m potato_runs.cli serve --dsn ...`), all
running at once; rounds alternate the order of the configurations. The OTLP path is real:
`POTATO_OTEL_EXPORTER=otlp` sends spans (BatchSpanProcessor) and metrics (every
--metric-interval s) over OTLP/gRPC to a collector stand-in, a separate process that
decodes every export request and counts what it got (printed at the end, so an exporter
that sent nothing shows). Needs the `otlp` extra: `.venv/bin/pip install -e '.[otlp]'`.

Configurations:
  off        POTATO_OTEL_EXPORTER=none: no-op providers, no rpc.server.duration
  otlp       write spans + domain metrics + rpc.server.duration, exported over OTLP
  prometheus the same metrics (no spans) on the /metrics endpoint (POTATO_METRICS_PORT=0)
  +grpc      otlp + RPC spans (POTATO_OTEL_GRPC_SPANS, the grpc.aio ServerInterceptor)
  +asyncpg   otlp + a span per SQL statement (POTATO_OTEL_ASYNCPG_SPANS)
  +both      otlp + both switches

Per configuration and method it prints the median over rounds of: throughput with
--concurrency calls in flight; p50 and p99 latency of sequential calls (one in flight,
--seq-calls); and the server process's CPU time per call (utime+stime from /proc over
the throughput load), which is the cost that does not depend on the client sharing the
machine's 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato_runs.storage.embedded import EmbeddedPostgres
from potato_runs.storage.migrate import ensure_database

HERE = Path(__file__).resolve().parents[1] / "src"
CONFIGS: dict[str, dict[str, str]] = {
    "off": {"POTATO_OTEL_EXPORTER": "none"},
    "otlp": {"POTATO_OTEL_EXPORTER": "otlp"},
    "prometheus": {"POTATO_OTEL_EXPORTER": "none", "POTATO_METRICS_PORT": "0"},
    "+grpc": {"POTATO_OTEL_EXPORTER": "otlp", "POTATO_OTEL_GRPC_SPANS": "1"},
    "+asyncpg": {"POTATO_OTEL_EXPORTER": "otlp", "POTATO_OTEL_ASYNCPG_SPANS": "1"},
    "+both": {"POTATO_OTEL_EXPORTER": "otlp", "POTATO_OTEL_GRPC_SPANS": "1",
              "POTATO_OTEL_ASYNCPG_SPANS": "1"},
}
COLLECTOR = r'''
import asyncio, sys
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as t, trace_service_pb2_grpc as tg
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as m, metrics_service_pb2_grpc as mg
got = {"spans": 0, "metric_requests": 0}
class Traces(tg.TraceServiceServicer):
    async def Export(self, request, context):
        got["spans"] += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return t.ExportTraceServiceResponse()
class Metrics(mg.MetricsServiceServicer):
    async def Export(self, request, context):
        got["metric_requests"] += 1
        return m.ExportMetricsServiceResponse()
async def main():
    server = grpc.aio.server()
    tg.add_TraceServiceServicer_to_server(Traces(), server)
    mg.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(got["spans"], got["metric_requests"], flush=True)
    await server.stop(0)
asyncio.run(main())
'''


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(src: Path, dsn: str, env_extra: dict[str, str], collector: str,
          interval: float) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(src), "POTATO_ADMIN_TOKEN": uuid.uuid4().hex,
           "GRPC_ENABLE_FORK_SUPPORT": "false", "POTATO_INVARIANT_CHECK_INTERVAL": "0",
           "POTATO_LOG_LEVEL": "WARNING", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector}",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "POTATO_OTEL_METRIC_INTERVAL": str(interval),
           **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "potato_runs.cli", "serve", "--port", "0",
                             "--dsn", dsn], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving on" in line, line
    return proc, line.split(" on ")[1].split()[0]


def requests(method: str, calls: int, users: list[str], seed: int) -> list[Any]:
    rng = random.Random(seed)
    if method == "MarkDay":
        return [pb.MarkDayRequest(
            user_id=rng.choice(users), time_zone="America/New_York",
            local_date=(dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(365))).isoformat())
            for _ in range(calls)]
    return [pb.GetActiveRunRequest(user_id=rng.choice(users)) for _ in range(calls)]


async def load(target: str, method: str, reqs: list[Any], concurrency: int,
               pid: int) -> tuple[float, float, list[float]]:
    """(calls/s, server CPU µs per call, per-call latencies in ms)."""
    async with grpc.aio.insecure_channel(target) as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        fn: Callable[..., Awaitable[Any]] = getattr(stub, method)
        it = iter(reqs)
        latencies: list[float] = []

        async def worker() -> None:
            for r in it:
                t0 = time.perf_counter()
                await fn(r, timeout=30)
                latencies.append((time.perf_counter() - t0) * 1000)

        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        return len(reqs) / elapsed, cpu / len(reqs) * 1e6, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000, help="calls per throughput round")
    ap.add_argument("--seq-calls", type=int, default=400, help="sequential calls per round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--metric-interval", type=float, default=5.0)
    ap.add_argument("--only", nargs="*", choices=list(CONFIGS), help="a subset of configurations")
    ap.add_argument("--fast", action="store_true", help="fsync off")
    ap.add_argument("--src", type=Path, default=HERE,
                    help="the servers' src/ directory (default: this checkout's)")
    args = ap.parse_args()
    configs = {k: v for k, v in CONFIGS.items() if not args.only or k in args.only}
    base = Path(tempfile.mkdtemp(prefix="potato-telemetry-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pg", fast_unsafe=args.fast)
    cluster.start()
    collector = subprocess.Popen([sys.executable, "-c", COLLECTOR], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    assert collector.stdout is not None and collector.stdin is not None
    collector_target = f"127.0.0.1:{collector.stdout.readline().strip()}"
    procs: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        for i, (name, extra) in enumerate(configs.items()):
            asyncio.run(ensure_database(cluster.dsn("postgres"), f"tel_{i}"))
            procs[name] = start(args.src.resolve(), cluster.dsn(f"tel_{i}"), extra, collector_target,
                                args.metric_interval)
        users = [str(uuid.uuid4()) for _ in range(args.users)]
        print(f"postgres: {'fsync off' if args.fast else 'durable'}; {args.rounds} rounds; "
              f"throughput: {args.calls} calls, {args.concurrency} in flight; latency: "
              f"{args.seq_calls} sequential calls; {args.users} users; metrics exported "
              f"every {args.metric_interval:g} s", flush=True)
        results: dict[tuple[str, str], dict[str, list[float]]] = {}
        order = list(configs)
        for method in ("MarkDay", "GetActiveRun"):
            for r in range(args.rounds):
                rotated = order[r % len(order):] + order[:r % len(order)]
                for name in rotated:
                    proc, target = procs[name]
                    reqs = requests(method, args.calls, users, seed=r * 7 + 1)
                    rate, cpu, _ = asyncio.run(load(target, method, reqs, args.concurrency,
                                                    proc.pid))
                    seq = requests(method, args.seq_calls, users, seed=r * 7 + 2)
                    _, _, lat = asyncio.run(load(target, method, seq, 1, proc.pid))
                    got = results.setdefault((method, name), {k: [] for k in
                                                              ("rate", "cpu", "p50", "p99")})
                    got["rate"].append(rate)
                    got["cpu"].append(cpu)
                    got["p50"].append(pct(lat, 0.5))
                    got["p99"].append(pct(lat, 0.99))
        print(f"\n{'method':13s} {'config':9s} {'calls/s':>8s} {'vs off':>7s} {'p50 ms':>7s} "
              f"{'p99 ms':>7s} {'CPU µs/call':>11s} {'+µs vs off':>10s}")
        for method in ("MarkDay", "GetActiveRun"):
            off = results.get((method, "off"))
            for name in configs:
                got = results[(method, name)]
                rate, cpu = statistics.median(got["rate"]), statistics.median(got["cpu"])
                rel = f"{rate / statistics.median(off['rate']):7.2f}" if off else "      -"
                extra = f"{cpu - statistics.median(off['cpu']):10.0f}" if off else "         -"
                print(f"{method:13s} {name:9s} {rate:8.0f} {rel} "
                      f"{statistics.median(got['p50']):7.2f} {statistics.median(got['p99']):7.2f} "
                      f"{cpu:11.0f} {extra}")
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(15)
        collector.stdin.write("\n")
        collector.stdin.flush()
        spans, metric_requests = collector.stdout.readline().split()
        print(f"\ncollector stand-in received {spans} spans and {metric_requests} metric exports")
        collector.wait(10)
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
