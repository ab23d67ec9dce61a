import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Totals(_message.Message):
    __slots__ = ("total_days", "run_count", "longest_run_days", "current_streak_days", "update_time")
    TOTAL_DAYS_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    LONGEST_RUN_DAYS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STREAK_DAYS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    total_days: int
    run_count: int
    longest_run_days: int
    current_streak_days: int
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, total_days: _Optional[int] = ..., run_count: _Optional[int] = ..., longest_run_days: _Optional[int] = ..., current_streak_days: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MonthlyTotal(_message.Message):
    __slots__ = ("month", "total_days", "streak_days", "update_time")
    MONTH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DAYS_FIELD_NUMBER: _ClassVar[int]
    STREAK_DAYS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    month: str
    total_days: int
    streak_days: int
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, month: _Optional[str] = ..., total_days: _Optional[int] = ..., streak_days: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetTotalsRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetTotalsResponse(_message.Message):
    __slots__ = ("totals",)
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    totals: Totals
    def __init__(self, totals: _Optional[_Union[Totals, _Mapping]] = ...) -> None: ...

class ListMonthlyTotalsRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token", "start_month", "end_month")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    START_MONTH_FIELD_NUMBER: _ClassVar[int]
    END_MONTH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    start_month: str
    end_month: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., start_month: _Optional[str] = ..., end_month: _Optional[str] = ...) -> None: ...

class ListMonthlyTotalsResponse(_message.Message):
    __slots__ = ("monthly_totals", "next_page_token")
    MONTHLY_TOTALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    monthly_totals: _containers.RepeatedCompositeFieldContainer[MonthlyTotal]
    next_page_token: str
    def __init__(self, monthly_totals: _Optional[_Iterable[_Union[MonthlyTotal, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
