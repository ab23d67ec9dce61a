"""Python (zoneinfo) and PostgreSQL must give every accepted zone the same local dates.

A date is resolved in Python when the request carries the zone and in PostgreSQL
when the stored zone is used; if the two disagreed, one instant could become two
different check-ins. This compares them for every zone the service accepts.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from potato_runs.domain.rules import local_date_of, region_zones

INSTANTS = [dt.datetime(2025, m, d, h, 30, tzinfo=dt.UTC)
            for m, d in ((1, 15), (3, 30), (7, 1), (10, 26), (12, 31))
            for h in (0, 11, 23)]


async def test_python_and_postgres_agree_on_local_dates(db: asyncpg.Connection) -> None:
    zones = sorted(region_zones())
    rows = await db.fetch(
        """SELECT z, t, (t AT TIME ZONE z)::date AS d
             FROM unnest($1::text[]) z, unnest($2::timestamptz[]) t""", zones, INSTANTS)
    assert len(rows) == len(zones) * len(INSTANTS)
    disagree = [(r["z"], r["t"].isoformat(), r["d"], local_date_of(r["t"], r["z"]))
                for r in rows if r["d"] != local_date_of(r["t"], r["z"])]
    assert disagree == []


async def test_abbreviation_like_names_are_not_accepted() -> None:
    for name in ("CET", "EET", "MET", "WET", "EST", "EST5EDT", "localtime", "Factory"):
        assert name not in region_zones()
    assert {"America/New_York", "Europe/London", "Asia/Kathmandu", "UTC"} <= region_zones()
