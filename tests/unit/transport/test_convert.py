"""Proto conversion: the Timestamp built in one constructor equals protobuf's own
Timestamp.FromDatetime for every instant and offset the service can store."""

from __future__ import annotations

import datetime as dt
import uuid

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from potato.runs.v2 import run_pb2
from potato_runs.domain.model import Run
from potato_runs.transport.convert import _timestamp, fill_run

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m)))


@given(st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9998, 12, 31),
                    timezones=st.one_of(offsets, st.just(dt.UTC))))
def test_timestamp_equals_from_datetime(value: dt.datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value.astimezone(dt.UTC))
    assert _timestamp(value) == expected


def test_none_stays_none() -> None:
    assert _timestamp(None) is None


@given(st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2100, 1, 1),
                    timezones=st.just(dt.UTC)), st.booleans(), st.booleans())
def test_a_run_built_in_place_equals_the_one_built_by_fields(
        stamp: dt.datetime, active: bool, extended: bool) -> None:
    """fill_run (into a response's field) and the field-by-field constructor agree,
    None timestamps left unset."""
    run = Run(uuid.uuid4(), dt.date(2025, 3, 1), dt.date(2025, 3, 4), active, stamp, stamp,
              stamp if extended else None, 7)
    expected = run_pb2.Run(user_id=str(run.user_id), start_date="2025-03-01",
                           end_date="2025-03-04", day_count=4, active=active,
                           create_time=_timestamp(stamp), update_time=_timestamp(stamp),
                           last_extend_time=_timestamp(stamp) if extended else None)
    built = fill_run(run_pb2.Run(), run)
    assert built == expected
    assert built.HasField("last_extend_time") is extended
