import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunChange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_CHANGE_UNSPECIFIED: _ClassVar[RunChange]
    RUN_CHANGE_NONE: _ClassVar[RunChange]
    RUN_CHANGE_CREATED: _ClassVar[RunChange]
    RUN_CHANGE_EXTENDED: _ClassVar[RunChange]
    RUN_CHANGE_MERGED: _ClassVar[RunChange]
    RUN_CHANGE_SHRUNK: _ClassVar[RunChange]
    RUN_CHANGE_SPLIT: _ClassVar[RunChange]
    RUN_CHANGE_DELETED: _ClassVar[RunChange]
RUN_CHANGE_UNSPECIFIED: RunChange
RUN_CHANGE_NONE: RunChange
RUN_CHANGE_CREATED: RunChange
RUN_CHANGE_EXTENDED: RunChange
RUN_CHANGE_MERGED: RunChange
RUN_CHANGE_SHRUNK: RunChange
RUN_CHANGE_SPLIT: RunChange
RUN_CHANGE_DELETED: RunChange

class Run(_message.Message):
    __slots__ = ("user_id", "start_date", "end_date", "day_count", "active", "create_time", "update_time", "last_extend_time")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    DAY_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_EXTEND_TIME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    start_date: str
    end_date: str
    day_count: int
    active: bool
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    last_extend_time: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., day_count: _Optional[int] = ..., active: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_extend_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
