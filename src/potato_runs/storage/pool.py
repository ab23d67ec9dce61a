"""The asyncpg pool: codecs and session settings for every connection."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                      command_timeout: float = 10.0) -> asyncpg.Pool:
    pool: Any = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        init=_init_connection,
        # The write path relies on READ COMMITTED + the per-user advisory lock;
        # pin it so a different database default cannot change the semantics.
        server_settings={"application_name": "potato-runs", "TimeZone": "UTC",
                         "default_transaction_isolation": "read committed"},
    )
    assert pool is not None
    return pool
