"""The request key (AIP-155 request id + fingerprint) of each write command.

The fingerprint covers the write (MarkDay, UnmarkDay, BackfillDays) and every field of
its command that can change what it does, in a canonical form: a mark_time as UTC with
microseconds, a backfill's dates as a sorted set (their order and duplicates never change
the outcome). v1 writes build the same commands (v1 MarkDay with source "v1"), so a
request id names one write whichever contract carried it.
"""

from __future__ import annotations

import datetime as dt

from potato_runs.domain.request_ids import RequestKey, fingerprint
from potato_runs.service.commands import BackfillDays, MarkDay, UnmarkDay


def _iso(day: dt.date | None) -> str | None:
    return None if day is None else day.isoformat()


def mark_key(cmd: MarkDay) -> RequestKey | None:
    if cmd.request_id is None:
        return None
    instant = (None if cmd.mark_time is None
               else cmd.mark_time.astimezone(dt.UTC).isoformat(timespec="microseconds"))
    return RequestKey(cmd.request_id, fingerprint("MarkDay", {
        "user_id": str(cmd.user_id), "local_date": _iso(cmd.local_date),
        "mark_time": instant, "time_zone": cmd.time_zone, "source": cmd.source}))


def unmark_key(cmd: UnmarkDay) -> RequestKey | None:
    if cmd.request_id is None:
        return None
    return RequestKey(cmd.request_id, fingerprint("UnmarkDay", {
        "user_id": str(cmd.user_id), "local_date": cmd.local_date.isoformat()}))


def backfill_key(cmd: BackfillDays) -> RequestKey | None:
    if cmd.request_id is None:
        return None
    return RequestKey(cmd.request_id, fingerprint("BackfillDays", {
        "user_id": str(cmd.user_id),
        "local_dates": sorted({d.isoformat() for d in cmd.local_dates}),
        "time_zone": cmd.time_zone, "source": cmd.source}))
