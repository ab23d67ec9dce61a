"""Bad input: INVALID_ARGUMENT with BadRequest field violations and ErrorInfo; never INTERNAL."""

from __future__ import annotations

import uuid

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potato.runs.v2 import runs_service_pb2 as pb
from potato.runs.v2 import runs_service_pb2_grpc
from potato.runs.v2.runs_service_pb2_grpc import RunsServiceStub
from support import ServerThread, rich_status

from .helpers import NY

U = "6f1c3a52-8a41-4d8e-9c3e-3b7c2a1d0e99"


def _mark(**kw: object) -> pb.MarkDayRequest:
    return pb.MarkDayRequest(**kw)  # type: ignore[arg-type]


CASES = [
    ("MarkDay", _mark(user_id="nope", local_date="2025-06-01", time_zone=NY),
     "INVALID_USER_ID", "user_id"),
    ("MarkDay", _mark(user_id="", local_date="2025-06-01", time_zone=NY),
     "INVALID_USER_ID", "user_id"),
    ("MarkDay", _mark(user_id=U, local_date="2025-13-01", time_zone=NY), "INVALID_DATE",
     "local_date"),
    ("MarkDay", _mark(user_id=U, local_date="2025-02-29", time_zone=NY), "INVALID_DATE",
     "local_date"),
    ("MarkDay", _mark(user_id=U, local_date="20250601", time_zone=NY), "INVALID_DATE",
     "local_date"),
    ("MarkDay", _mark(user_id=U, local_date="2025-06-01", time_zone="Mars/Olympus"),
     "INVALID_TIME_ZONE", "time_zone"),
    ("MarkDay", _mark(user_id=U, local_date="2025-06-01", time_zone="../../etc/passwd"),
     "INVALID_TIME_ZONE", "time_zone"),
    ("MarkDay", _mark(user_id=U, time_zone=NY), "MISSING_FIELD", "day"),
    ("MarkDay", _mark(user_id=U, local_date="2024-12-31", time_zone=NY), "DATE_BEFORE_LAUNCH",
     "local_date"),
    ("MarkDay", _mark(user_id=U, local_date="2099-01-01", time_zone=NY), "DATE_IN_FUTURE",
     "local_date"),
    ("UnmarkDay", pb.UnmarkDayRequest(user_id=U, local_date="2024-12-31"), "DATE_BEFORE_LAUNCH",
     "local_date"),
    ("UnmarkDay", pb.UnmarkDayRequest(user_id=U, local_date="yesterday"), "INVALID_DATE",
     "local_date"),
    ("BackfillDays", pb.BackfillDaysRequest(user_id=U, local_dates=[], time_zone=NY),
     "MISSING_FIELD", "local_dates"),
    ("BackfillDays", pb.BackfillDaysRequest(user_id=U, local_dates=["2025-06-01"] * 501,
                                            time_zone=NY), "TOO_MANY_DATES", "local_dates"),
    ("BackfillDays", pb.BackfillDaysRequest(user_id=U, local_dates=["2025-06-01", "x"],
                                            time_zone=NY), "INVALID_DATE", "local_dates[1]"),
    ("GetActiveRun", pb.GetActiveRunRequest(user_id="123"), "INVALID_USER_ID", "user_id"),
    ("ListRuns", pb.ListRunsRequest(user_id="123"), "INVALID_USER_ID", "user_id"),
]


@pytest.mark.parametrize(("method", "request_", "reason", "field"), CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
async def test_bad_input_gets_rich_invalid_argument(stub: RunsServiceStub, method: str,
                                                    request_: object, reason: str,
                                                    field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, method)(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, status = rich_status(err.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert info is not None and info.reason == reason and info.domain == "runs.potato.app"
    assert bad is not None and bad.field_violations[0].field == field
    assert bad.field_violations[0].reason == reason
    assert bad.field_violations[0].description


async def test_new_user_without_zone_gets_time_zone_required(stub: RunsServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MarkDay(pb.MarkDayRequest(user_id=str(uuid.uuid4()), local_date="2025-06-01"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad, _ = rich_status(err.value)
    assert info is not None and info.reason == "TIME_ZONE_REQUIRED"
    assert bad is not None and bad.field_violations[0].field == "time_zone"


async def test_future_date_in_stored_zone_is_checked_by_the_database(
        stub: RunsServiceStub, user_id: str) -> None:
    await stub.MarkDay(pb.MarkDayRequest(user_id=user_id, local_date="2025-06-01", time_zone=NY))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MarkDay(pb.MarkDayRequest(user_id=user_id, local_date="2099-06-01"))
    info, _, _ = rich_status(err.value)
    assert info is not None and info.reason == "DATE_IN_FUTURE"
    assert info.metadata["time_zone"] == NY


@settings(max_examples=60)
@given(user=st.one_of(st.text(max_size=40), st.uuids().map(str)),
       day=st.text(max_size=12), zone=st.one_of(st.none(), st.text(max_size=300)),
       source=st.text(max_size=80))
def test_fuzzed_mark_requests_never_fail_internally(server: ServerThread, user: str, day: str,
                                                    zone: str | None, source: str) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = runs_service_pb2_grpc.RunsServiceStub(channel)
        req = pb.MarkDayRequest(user_id=user, local_date=day, source=source)
        if zone is not None:
            req.time_zone = zone
        try:
            stub.MarkDay(req, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()  # type: ignore[attr-defined]


HOSTILE = [
    ("MarkDay", _mark(user_id=U, local_date="2025-06-01", time_zone="a" * 5000),
     "INVALID_TIME_ZONE", "time_zone"),
    ("MarkDay", _mark(user_id=U, local_date="2025-06-01", time_zone="é" * 300),
     "INVALID_TIME_ZONE", "time_zone"),
    # PostgreSQL reads these as fixed-offset abbreviations; the IANA data has DST.
    ("MarkDay", _mark(user_id=U, local_date="2025-06-01", time_zone="CET"),
     "INVALID_TIME_ZONE", "time_zone"),
    ("MarkDay", _mark(user_id=U, local_date="2025-06-01", time_zone="localtime"),
     "INVALID_TIME_ZONE", "time_zone"),
    ("MarkDay", _mark(user_id=U, local_date="2025-06-01", time_zone="posix/Europe/Paris"),
     "INVALID_TIME_ZONE", "time_zone"),
    ("MarkDay", _mark(user_id="{" + U + "}", local_date="2025-06-01", time_zone=NY),
     "INVALID_USER_ID", "user_id"),
    ("MarkDay", _mark(user_id="\U0001F954" * 700, local_date="2025-06-01", time_zone=NY),
     "INVALID_USER_ID", "user_id"),
    ("MarkDay", _mark(user_id="q" * 9000, local_date="2025-06-01", time_zone=NY),
     "INVALID_USER_ID", "user_id"),
    ("MarkDay", _mark(user_id=U, local_date="٢٠٢٥-٠٦-٠١", time_zone=NY),
     "INVALID_DATE", "local_date"),
    ("MarkDay", _mark(user_id=U, local_date="2025-06-01", time_zone=NY, source="a\x00b"),
     "INVALID_VALUE", "source"),
    ("BackfillDays", pb.BackfillDaysRequest(user_id=U, local_dates=["x" * 410] * 25,
                                            time_zone=NY), "INVALID_DATE", "local_dates[0]"),
    ("ListRuns", pb.ListRunsRequest(user_id=U, page_token="W" * 70000), "INVALID_PAGE_TOKEN",
     "page_token"),
]


@pytest.mark.parametrize(("method", "request_", "reason", "field"), HOSTILE,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(HOSTILE)])
async def test_hostile_input_is_a_small_ascii_invalid_argument(
        stub: RunsServiceStub, method: str, request_: object, reason: str, field: str) -> None:
    # Repeated: oversized trailers used to fail only some of the time.
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, method)(request_, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        info, bad, status = rich_status(err.value)
        assert info is not None and info.reason == reason
        assert bad is not None and bad.field_violations[0].field == field
        assert status.message.isascii() and status.ByteSize() < 4096


@pytest.mark.parametrize("when", [
    {"seconds": -62135596800},          # 0001-01-01T00:00:00Z
    {"seconds": 253402300799},          # 9999-12-31T23:59:59Z
    {"seconds": 1735430400 - 1},        # 2024-12-28T23:59:59Z: 2024 in every zone
])
async def test_extreme_mark_times_are_invalid_argument(stub: RunsServiceStub,
                                                       when: dict[str, int]) -> None:
    from google.protobuf import timestamp_pb2
    req = pb.MarkDayRequest(user_id=U, mark_time=timestamp_pb2.Timestamp(**when),
                            time_zone="Pacific/Kiritimati")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MarkDay(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, bad, _ = rich_status(err.value)
    assert bad is not None and bad.field_violations[0].field == "mark_time"


async def test_bytes_that_are_not_a_message_are_invalid_argument(
        channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/potato.runs.v2.RunsService/MarkDay",
                               request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    bad_utf8 = b"\x0a\x03\xff\xfe\xfd"   # field 1 (user_id), 3 bytes of invalid UTF-8
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(bad_utf8, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, _, _ = rich_status(err.value)
    assert info is not None and info.reason == "MALFORMED_REQUEST"
