#!/usr/bin/env python
"""Why the AdminService token is a per-service guard and not a server interceptor.

grpc.aio runs a server-wide interceptor in Python for every RPC, protected or not.
This bench serves a unary echo method twice in one process, on two servers
alternating rounds: one with a pass-through `grpc.aio.ServerInterceptor` that does
what a token interceptor must do for a method it does not protect (look at the method
name, continue), and one without; it prints throughput, p50/p95 and the difference per
call at C calls in flight on one channel. That difference is what every MarkDay and
read would pay. `transport/auth.AdminAuth` instead wraps the AdminService handlers
when they are registered, so other services pay nothing.

Usage: .venv/bin/python scripts/bench_auth_interceptor.py [--calls 20000] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc

METHOD = "/bench.Echo/Echo"
PROTECTED = "/potato.runs.v2.AdminService/"


class PassThrough(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        if (details.method or "").startswith(PROTECTED):
            raise AssertionError("not exercised here")
        return await continuation(details)


def _handler() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, _context: object) -> bytes:
        return request

    return grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo)})


async def _server(interceptor: bool) -> tuple[grpc.aio.Server, int]:
    interceptors = [PassThrough()] if interceptor else []
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _round(port: int, calls: int, concurrency: int) -> tuple[float, list[float]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(METHOD)
        lat: list[float] = []
        queue = iter(range(calls))

        async def worker() -> None:
            for _ in queue:
                t = time.perf_counter()
                await call(b"ping", timeout=10)
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls / (time.perf_counter() - t0), lat


async def main(calls: int, concurrency: int, rounds: int) -> None:
    servers = {name: await _server(name == "with interceptor")
               for name in ("without interceptor", "with interceptor")}
    results: dict[str, list[tuple[float, list[float]]]] = {k: [] for k in servers}
    for _ in range(rounds):
        for name, (_srv, port) in servers.items():
            results[name].append(await _round(port, calls, concurrency))
    per_call = {}
    for name, rs in results.items():
        tput = statistics.median(r[0] for r in rs)
        lat = sorted(x for r in rs for x in r[1])
        per_call[name] = 1e6 / tput
        print(f"{name:22s} {tput:8.0f} calls/s  p50 {lat[len(lat) // 2] * 1e3:6.2f} ms  "
              f"p95 {lat[int(len(lat) * 0.95)] * 1e3:6.2f} ms  ({1e6 / tput:.1f} µs/call)")
    extra = per_call["with interceptor"] - per_call["without interceptor"]
    print(f"interceptor cost: {extra:+.1f} µs per call "
          f"({extra / per_call['without interceptor'] * 100:+.1f} % of an echo call)")
    for srv, _ in servers.values():
        await srv.stop(0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    asyncio.run(main(a.calls, a.concurrency, a.rounds))
