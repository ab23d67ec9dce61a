"""The event loop the service runs on.

uvloop (libuv, Cython) by default: grpc.aio supports any asyncio loop, and asyncpg was
written for it. `scripts/bench.py` measured what it buys, beside the standard loop, in
docs/architecture.md#performance. `POTATO_EVENT_LOOP=asyncio` is the switch back."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], loop: str = "uvloop") -> T:
    """`asyncio.run(coro)` on a new loop of the named kind (uvloop or asyncio)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
