"""Overload at 3x the server's limit, full size (POTATO_FAULTS=1 only; the small
default-suite variant is test_overload.py).

The server runs with POTATO_MAX_CONCURRENT_RPCS = load.SIZES.overload_limit and three
times as many callers keep a call in flight each (writes, large backfills among them, and
reads). Every call must end OK or RESOURCE_EXHAUSTED (never CANCELLED, INTERNAL or
UNKNOWN); every health probe sent meanwhile must answer SERVING; no acknowledged write is
lost and the checker is clean afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faults.load import (
    CHANNEL_OPTIONS,
    FULL,
    SIZES,
    ServerProcess,
    Workload,
    assert_clean,
    now,
    report,
    running,
    verify,
)

pytestmark = pytest.mark.skipif(not FULL, reason="full-size overload: POTATO_FAULTS=1")
ACCEPTABLE = {"OK", "RESOURCE_EXHAUSTED"}
HEALTH_NAMES = ("", "potato.runs.v2.RunsService")


async def test_overload_at_three_times_the_limit(fault_dsn: str, tmp_path: Path) -> None:
    limit = SIZES.overload_limit
    server = ServerProcess(fault_dsn, tmp_path, POTATO_MAX_CONCURRENT_RPCS=str(limit))
    probes: collections.Counter[str] = collections.Counter()
    probe_latency: list[float] = []
    try:
        await server.start()
        load = Workload(server.target, 3 * limit, 2, channels=6, backfill_size=(50, 90))

        async def probe(until: float) -> None:
            async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                i = 0
                while now() < until:
                    name = HEALTH_NAMES[i % len(HEALTH_NAMES)]
                    i += 1
                    t0 = now()
                    try:
                        res = await stub.Check(health_pb2.HealthCheckRequest(service=name),
                                               timeout=2)
                        probes[health_pb2.HealthCheckResponse.ServingStatus.Name(res.status)] += 1
                    except grpc.RpcError as exc:
                        probes[exc.code().name] += 1
                    probe_latency.append(now() - t0)
                    await asyncio.sleep(0.1)   # a probe every 100 ms, like a kubelet's, faster

        async with running(load):
            await load.calls.wait_ok_after(now())
            await probe(now() + SIZES.overload_seconds)
        assert await server.stop() == 0, server.log_tail()
        verdict = await verify(fault_dsn, load.model)
        alarms = server.alarms()
        shed = load.calls.latency.get("RESOURCE_EXHAUSTED", [])
        ok = load.calls.latency.get("OK", [])
        notes = (f"{3 * limit} callers, limit {limit}, {SIZES.overload_seconds:g} s; "
                 f"health probes: {dict(probes)}, p50 {statistics.median(probe_latency) * 1000:.1f} ms; "
                 f"RESOURCE_EXHAUSTED p50 "
                 f"{statistics.median(shed) * 1000 if shed else float('nan'):.1f} ms, "
                 f"OK p50 {statistics.median(ok) * 1000:.1f} ms")
        report("overload 3x limit", load.calls, verdict, "n/a (no outage)", notes)
        assert set(load.calls.codes) <= ACCEPTABLE, (load.calls.codes, load.calls.samples)
        assert load.calls.codes["RESOURCE_EXHAUSTED"] > 0, "the limit was never reached"
        assert set(probes) == {"SERVING"}, probes
        assert not alarms, alarms[:10]
        assert_clean(verdict, server)
    finally:
        await server.close()
