"""The documented retry service config (gRFC A6) against the real load shedder.

A gRPC server serves `/potato.runs.v2.RunsService/GetActiveRun` through `LoadShedder`
with a limit of 1; a first call holds the only slot. A client with the service config
makes a second call: its first attempt is shed (RESOURCE_EXHAUSTED, OVERLOADED, with a
pushback), the slot is then freed, and grpc's retry after the pushback gets through. The
server counts every attempt it received and sees the retry's `grpc-previous-rpc-attempts`.
No database: what is tested is the client's retry of the shedder's answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from potato_runs.transport.service_config import CHANNEL_OPTIONS, SERVICE_CONFIG
from potato_runs.transport.shedding import LoadShedder
from support import rich_status

METHOD = "/potato.runs.v2.RunsService/GetActiveRun"
README = Path(__file__).resolve().parents[2] / "README.md"


class Echo:
    """Serves METHOD (raw bytes) behind a LoadShedder; `hold` keeps a call in flight."""

    def __init__(self) -> None:
        self.shedder = LoadShedder(1, pushback_ms=40)
        self.attempts: list[str | None] = []   # grpc-previous-rpc-attempts of each attempt
        self.release = asyncio.Event()

        async def behavior(request: bytes, context: Any) -> bytes:
            if request == b"hold":
                await self.release.wait()
            return request

        limited = self.shedder.intercept(METHOD, behavior)

        async def counted(request: bytes, context: Any) -> bytes:
            md = dict(context.invocation_metadata() or ())
            self.attempts.append(md.get("grpc-previous-rpc-attempts"))
            return await limited(request, context)   # type: ignore[no-any-return]

        self.handler = grpc.method_handlers_generic_handler(
            "potato.runs.v2.RunsService",
            {"GetActiveRun": grpc.unary_unary_rpc_method_handler(counted)})


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, str]]:
    e = Echo()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((e.handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield e, f"127.0.0.1:{port}"
    finally:
        e.release.set()
        await server.stop(0)


async def until(predicate: Callable[[], bool], bound: float = 10.0) -> None:
    """Polls `predicate` until it holds (fails after `bound` seconds)."""
    end = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.001)


async def _hold_the_slot(e: Echo, channel: grpc.aio.Channel) -> asyncio.Task[Any]:
    held = asyncio.ensure_future(channel.unary_unary(METHOD)(b"hold", timeout=30))
    await until(lambda: e.shedder.in_flight >= 1)   # the held call is in flight
    return held


async def test_a_client_with_the_service_config_retries_a_shed_call(
        echo: tuple[Echo, str]) -> None:
    e, target = echo
    async with grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as plain, \
            grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as retrying:
        held = await _hold_the_slot(e, plain)

        async def free_after_first_shed() -> None:
            await until(lambda: e.shedder.shed >= 1)   # the first attempt was refused
            e.release.set()

        freeing = asyncio.create_task(free_after_first_shed())
        answer = await retrying.unary_unary(METHOD)(b"ping", timeout=10)
        await freeing
        await held
    assert answer == b"ping"
    assert e.shedder.shed >= 1
    ours = e.attempts[1:]   # the first attempt recorded is the held call
    print(f"\nattempts seen by the server: {len(ours)} "
          f"(grpc-previous-rpc-attempts: {ours}); shed {e.shedder.shed}")
    assert len(ours) >= 2 and ours[0] is None and ours[-1] is not None


async def test_without_the_config_the_shed_call_fails_with_overloaded_and_a_pushback(
        echo: tuple[Echo, str]) -> None:
    e, target = echo
    async with grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as plain:
        held = await _hold_the_slot(e, plain)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await plain.unary_unary(METHOD)(b"ping", timeout=10)
        e.release.set()
        await held
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, _, _ = rich_status(err.value)
    assert info is not None and info.reason == "OVERLOADED"
    pushback = int(dict(err.value.trailing_metadata() or ())["grpc-retry-pushback-ms"])
    assert 20 <= pushback <= 60


async def test_a_call_whose_deadline_is_too_short_is_told_not_to_retry(
        echo: tuple[Echo, str]) -> None:
    e, target = echo
    async with grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as plain:
        held = await _hold_the_slot(e, plain)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            # 30 ms: less than twice the smallest jittered pushback (20 ms) whatever the
            # jitter, so the answer must be -1 (50 ms left it to chance).
            await plain.unary_unary(METHOD)(b"ping", timeout=0.03)
        e.release.set()
        await held
    if err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:   # else the deadline won
        assert dict(err.value.trailing_metadata() or ())["grpc-retry-pushback-ms"] == "-1"


def test_the_readme_shows_the_service_config_the_code_uses() -> None:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), re.S)
    assert any(json.loads(b) == SERVICE_CONFIG for b in blocks if '"methodConfig"' in b)
