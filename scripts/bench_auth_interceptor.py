#!/usr/bin/env python
"""Why the AdminService token is a per-service guard and not a server interceptor.

grpc.aio runs a server-wide interceptor in Python for every RPC, protected or not.
This bench serves a unary echo method twice in one process, on two servers
alternating rounds: one with a pass-through `grpc.aio.ServerInterceptor` that does
what a token interceptor must do for a method it does not protect (look at the method
name, continue), and one without; it prints throughput, p50/p95 and the difference per
call at C calls in flight on one channel. That difference is what every MarkDay and
read would pay. `transport/access.AccessControl` instead wraps handlers when they are
registered, so a method it does not guard pays nothing.

`--access` measures that check itself: GetActiveRun served through
`registration.add_service` with `AccessControl.intercept` by a servicer that answers
without a database (so only gRPC and the check are timed), on servers alternating
rounds: no policy (the method is not wrapped) against a policy of `--identities`
tokens where the caller's token has runs.read (every call sends the same bearer header,
so only the check differs); and, over mTLS, no policy against a policy that recognises
the client certificate's SAN URI.

Usage: .venv/bin/python scripts/bench_auth_interceptor.py [--calls 20000] [--concurrency 32]
       [--rounds 3] [--access [--identities 20]]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- --access
TESTS = Path(__file__).resolve().parents[1] / "tests"   # tls_support: test certificates
READER = "bench-reader-token-0123456789"
SPIFFE = "spiffe://potato.bench/reader"


class _Servicer:
    """GetActiveRun without a database: an empty answer, so the check is what differs."""

    async def GetActiveRun(self, request: Any, context: Any) -> Any:
        from potato.runs.v2 import runs_service_pb2

        return runs_service_pb2.GetActiveRunResponse()

    def __getattr__(self, name: str) -> Any:   # the other methods (registered, not called)
        return self.GetActiveRun


def _policy(directory: Path, identities: int) -> Path:
    lines = ["identities:"]
    for i in range(identities - 2):
        digest = hashlib.sha256(f"other-token-{i}-0123456789".encode()).hexdigest()
        lines += [f"  - name: other-{i}", f"    token_sha256: {digest}",
                  "    roles: [runs.write]"]
    lines += ["  - name: reader", f"    token_sha256: {hashlib.sha256(READER.encode()).hexdigest()}",
              "    roles: [runs.read]",
              "  - name: reader-cert", f"    uri: {SPIFFE}", "    roles: [runs.read]"]
    path = directory / "policy.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class _Timer(_Servicer):
    """Times the check in place, with the real call's context: the guard that
    AccessControl.intercept builds around a no-op, called `n` times, against the no-op
    alone. The difference per call is the check, free of network and scheduling noise."""

    def __init__(self, access: Any, n: int, out: list[float]) -> None:
        self.access, self.n, self.out = access, n, out

    async def GetActiveRun(self, request: Any, context: Any) -> Any:
        async def noop(_request: Any, _context: Any) -> None:
            return None

        guarded = self.access.intercept("/potato.runs.v2.RunsService/GetActiveRun", noop)
        timings = {}
        for name, behavior in (("noop", noop), ("guarded", guarded)) * 2:
            t = time.perf_counter()
            for _ in range(self.n):
                await behavior(request, context)
            timings[name] = time.perf_counter() - t   # the second (warm) pass counts
        self.out.append((timings["guarded"] - timings["noop"]) / self.n * 1e6)
        return await super().GetActiveRun(request, context)


async def _access_server(policy: Path | None, credentials: Any = None,
                         servicer: Any = None) -> tuple[Any, int]:
    from potato.runs.v2 import runs_service_pb2
    from potato_runs.transport.access import AccessControl
    from potato_runs.transport.registration import add_service

    server = grpc.aio.server()
    access = AccessControl("bench-admin-token-0123456789", policy)
    if callable(servicer):
        servicer = servicer(access)
    add_service(server, servicer or _Servicer(),
                runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"],
                [access.intercept])
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials is not None
            else server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    return server, port


async def _access_round(channel: Callable[[], Any], calls: int, concurrency: int
                        ) -> tuple[float, list[float]]:
    from potato.runs.v2 import runs_service_pb2, runs_service_pb2_grpc

    async with channel() as ch:
        stub = runs_service_pb2_grpc.RunsServiceStub(ch)
        request = runs_service_pb2.GetActiveRunRequest(user_id="6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99")
        metadata = (("authorization", f"Bearer {READER}"),)
        await stub.GetActiveRun(request, metadata=metadata, timeout=10)   # connect
        lat: list[float] = []
        queue = iter(range(calls))

        async def worker() -> None:
            for _ in queue:
                t = time.perf_counter()
                await stub.GetActiveRun(request, metadata=metadata, timeout=10)
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls / (time.perf_counter() - t0), lat


def _report(pairs: dict[str, list[tuple[float, list[float]]]], base: str, check: str) -> None:
    per_call = {}
    for name in (base, check):
        rs = pairs[name]
        tput = statistics.median(r[0] for r in rs)
        lat = sorted(x for r in rs for x in r[1])
        per_call[name] = 1e6 / tput
        print(f"  {name:34s} {tput:8.0f} calls/s  p50 {lat[len(lat) // 2] * 1e3:6.2f} ms  "
              f"p95 {lat[int(len(lat) * 0.95)] * 1e3:6.2f} ms  ({1e6 / tput:.1f} µs/call)")
    extra = per_call[check] - per_call[base]
    print(f"  access check: {extra:+.1f} µs per call ({extra / per_call[base] * 100:+.1f} %)")


async def access_main(calls: int, concurrency: int, rounds: int, identities: int) -> None:
    sys.path.insert(0, str(TESTS))
    from tls_support import make_pki

    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        directory = Path(tmp)
        policy = _policy(directory, identities)
        pki = make_pki(directory / "pki")
        client = pki.issue_client("reader", uri=SPIFFE)
        server_pair = [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())]
        ca = pki.ca_cert.read_bytes()

        def mtls() -> Any:
            return grpc.ssl_server_credentials(server_pair, root_certificates=ca,
                                               require_client_auth=True)

        key, chain = client.pem()
        client_creds = grpc.ssl_channel_credentials(ca, key, chain)
        setups: dict[str, tuple[Path | None, Any]] = {
            "plaintext, no policy": (None, None),
            f"plaintext, policy ({identities} ids), token": (policy, None),
            "mTLS, no policy": (None, mtls()),
            f"mTLS, policy ({identities} ids), certificate": (policy, mtls()),
        }
        servers = {name: await _access_server(p, c) for name, (p, c) in setups.items()}
        channels = {name: _channel_for(servers[name][1], creds, client_creds)
                    for name, (_p, creds) in setups.items()}
        results: dict[str, list[tuple[float, list[float]]]] = {k: [] for k in setups}
        for _ in range(rounds):
            for name in setups:
                results[name].append(await _access_round(channels[name], calls, concurrency))
        names = list(setups)
        print(f"GetActiveRun without a database, {calls} calls x {rounds} rounds, "
              f"{concurrency} in flight:")
        _report(results, names[0], names[1])
        _report(results, names[2], names[3])
        for server, _ in servers.values():
            await server.stop(0)

        print(f"the check alone, timed in the handler with the call's real context "
              f"({MICRO_CALLS} checks, median of {rounds} calls):")
        for name in (names[1], names[3]):
            out: list[float] = []
            policy_file, creds = setups[name]
            server, port = await _access_server(
                policy_file, creds, lambda access, out=out: _Timer(access, MICRO_CALLS, out))
            for _ in range(rounds):
                await _access_round(_channel_for(port, creds, client_creds), 1, 1)
            await server.stop(0)
            print(f"  {name:34s} {statistics.median(out):6.2f} µs per allowed call")


MICRO_CALLS = 20_000


def _channel_for(port: int, creds: Any, client_creds: Any) -> Callable[[], Any]:
    if creds is None:
        return lambda: grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return lambda: grpc.aio.secure_channel(f"localhost:{port}", client_creds)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--access", action="store_true",
                    help="measure the access check (no policy vs a policy) instead")
    ap.add_argument("--identities", type=int, default=20,
                    help="identities in the --access policy (the caller's token is last)")
    a = ap.parse_args()
    if a.access:
        asyncio.run(access_main(a.calls, a.concurrency, a.rounds, a.identities))
    else:
        asyncio.run(main(a.calls, a.concurrency, a.rounds))
