from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Run(_message.Message):
    __slots__ = ("start_date", "end_date", "day_count", "active")
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    DAY_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    start_date: str
    end_date: str
    day_count: int
    active: bool
    def __init__(self, start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., day_count: _Optional[int] = ..., active: _Optional[bool] = ...) -> None: ...

class MarkDayRequest(_message.Message):
    __slots__ = ("user_id", "date", "time_zone")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    date: str
    time_zone: str
    def __init__(self, user_id: _Optional[str] = ..., date: _Optional[str] = ..., time_zone: _Optional[str] = ...) -> None: ...

class MarkDayResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class UnmarkDayRequest(_message.Message):
    __slots__ = ("user_id", "date")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    date: str
    def __init__(self, user_id: _Optional[str] = ..., date: _Optional[str] = ...) -> None: ...

class UnmarkDayResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class GetCurrentRunRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetCurrentRunResponse(_message.Message):
    __slots__ = ("run", "current_streak_days")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STREAK_DAYS_FIELD_NUMBER: _ClassVar[int]
    run: Run
    current_streak_days: int
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., current_streak_days: _Optional[int] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("user_id", "limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("total_days", "longest_run_days", "current_streak_days", "run_count")
    TOTAL_DAYS_FIELD_NUMBER: _ClassVar[int]
    LONGEST_RUN_DAYS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STREAK_DAYS_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    total_days: int
    longest_run_days: int
    current_streak_days: int
    run_count: int
    def __init__(self, total_days: _Optional[int] = ..., longest_run_days: _Optional[int] = ..., current_streak_days: _Optional[int] = ..., run_count: _Optional[int] = ...) -> None: ...
