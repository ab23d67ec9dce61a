"""Run events as the event stream hands them out (RunEventsService): pure data.

A row of `run_events` keeps its runs as JSON in the shape of SQL's potato_run_json()
(`before`/`after`: null, one run, or an array of runs for a merge's `before` and a
split's `after`); `runs_from_json` turns either into a tuple of domain Runs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from potato_runs.domain.model import Run

KINDS = ("run_created", "run_extended", "run_merged", "run_split", "run_shrunk",
         "run_deleted", "run_deactivated", "run_activated", "run_rebuilt")
"""The kinds run_events accepts (its CHECK constraint, migration 0001)."""
CAUSES = ("mark", "unmark", "backfill", "rebuild")


@dataclass(frozen=True)
class RunEvent:
    event_id: int
    user_id: uuid.UUID
    kind: str
    cause: str
    before: tuple[Run, ...]
    after: tuple[Run, ...]
    occurred_at: dt.datetime
    request_id: str | None


def _time(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else None


def _run(user_id: uuid.UUID, doc: Mapping[str, Any]) -> Run:
    return Run(user_id=user_id, start_date=dt.date.fromisoformat(doc["start_date"]),
               end_date=dt.date.fromisoformat(doc["end_date"]), active=bool(doc["active"]),
               created_at=_time(doc.get("created_at")), updated_at=_time(doc.get("updated_at")),
               last_extended_at=_time(doc.get("last_extended_at")), run_id=doc.get("run_id"))


def runs_from_json(user_id: uuid.UUID, doc: Any) -> tuple[Run, ...]:
    """null -> (), one run -> (run,), an array of runs -> the runs in their order."""
    if doc is None:
        return ()
    if isinstance(doc, list):
        return tuple(_run(user_id, d) for d in doc if d is not None)
    return (_run(user_id, doc),)
