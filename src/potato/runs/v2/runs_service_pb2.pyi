import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from potato.runs.v2 import run_pb2 as _run_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MarkDayRequest(_message.Message):
    __slots__ = ("user_id", "local_date", "mark_time", "time_zone", "source", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_DATE_FIELD_NUMBER: _ClassVar[int]
    MARK_TIME_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    local_date: str
    mark_time: _timestamp_pb2.Timestamp
    time_zone: str
    source: str
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., local_date: _Optional[str] = ..., mark_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_zone: _Optional[str] = ..., source: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class MarkDayResponse(_message.Message):
    __slots__ = ("run", "local_date", "change", "time_zone")
    RUN_FIELD_NUMBER: _ClassVar[int]
    LOCAL_DATE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    local_date: str
    change: _run_pb2.RunChange
    time_zone: str
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., local_date: _Optional[str] = ..., change: _Optional[_Union[_run_pb2.RunChange, str]] = ..., time_zone: _Optional[str] = ...) -> None: ...

class UnmarkDayRequest(_message.Message):
    __slots__ = ("user_id", "local_date", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_DATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    local_date: str
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., local_date: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class UnmarkDayResponse(_message.Message):
    __slots__ = ("removed", "change", "runs")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    change: _run_pb2.RunChange
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    def __init__(self, removed: _Optional[bool] = ..., change: _Optional[_Union[_run_pb2.RunChange, str]] = ..., runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ...) -> None: ...

class BackfillDaysRequest(_message.Message):
    __slots__ = ("user_id", "local_dates", "time_zone", "source", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_DATES_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    local_dates: _containers.RepeatedScalarFieldContainer[str]
    time_zone: str
    source: str
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., local_dates: _Optional[_Iterable[str]] = ..., time_zone: _Optional[str] = ..., source: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class BackfillDaysResponse(_message.Message):
    __slots__ = ("added_days", "runs")
    ADDED_DAYS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    added_days: int
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    def __init__(self, added_days: _Optional[int] = ..., runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ...) -> None: ...

class GetActiveRunRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetActiveRunResponse(_message.Message):
    __slots__ = ("run", "current", "current_streak_days", "time_zone")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STREAK_DAYS_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    current: bool
    current_streak_days: int
    time_zone: str
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., current: _Optional[bool] = ..., current_streak_days: _Optional[int] = ..., time_zone: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
