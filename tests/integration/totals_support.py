"""Helpers for the TotalsService tests: the flag through the real FlagStore, reads with
their source, and the stored totals made right until the write path keeps them."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
from google.protobuf import field_mask_pb2

from potato.runs.v2 import admin_service_pb2 as apb
from potato.runs.v2.admin_service_pb2_grpc import AdminServiceStub
from potato_runs.domain.flags import TOTALS_V2
from support import DEFAULT_NOW

from .v1_support import forget, read

__all__ = ["TOTALS_V2", "assert_stored_totals_right", "forget", "monthly", "read", "route"]


async def route(admin: AdminServiceStub, *, enabled: bool = True, shadow: float = 0.0,
                allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> None:
    """Sets ff.potato.totals_v2 through AdminService.UpdateFlag: the server's FlagStore
    reloads at once after a change made through it (no polling needed)."""
    flag = apb.Flag(name=TOTALS_V2, enabled=enabled, rollout_percent=0.0,
                    shadow_percent=shadow, allow_user_ids=list(allow), deny_user_ids=list(deny))
    await admin.UpdateFlag(apb.UpdateFlagRequest(
        flag=flag, update_mask=field_mask_pb2.FieldMask(paths=["*"]),
        reason="test_totals_service"), timeout=10)


async def assert_stored_totals_right(db: asyncpg.Connection, user: str,
                                     now: dt.datetime = DEFAULT_NOW) -> None:
    """The write path kept `user`'s stored totals right: recomputing every month from
    2025-01 to `now` and the lifetime row (in a transaction rolled back) changes no row."""
    months = []
    first = dt.date(2025, 1, 1)
    while first <= now.date():
        months.append(first)
        first = (first + dt.timedelta(days=32)).replace(day=1)
    tr = db.transaction()
    await tr.start()
    try:
        changed = await db.fetchval("SELECT potato_refresh_totals($1, $2::date[], $3)",
                                    uuid.UUID(user), months, now)
    finally:
        await tr.rollback()
    assert changed == 0, f"{changed} stored totals rows were not kept by the write path"


def monthly(res: Any) -> list[tuple[str, int, int]]:
    return [(m.month, m.total_days, m.streak_days) for m in res.monthly_totals]
