import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from potato.runs.v2 import run_pb2 as _run_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_EVENT_KIND_UNSPECIFIED: _ClassVar[RunEventKind]
    RUN_EVENT_KIND_CREATED: _ClassVar[RunEventKind]
    RUN_EVENT_KIND_EXTENDED: _ClassVar[RunEventKind]
    RUN_EVENT_KIND_MERGED: _ClassVar[RunEventKind]
    RUN_EVENT_KIND_SPLIT: _ClassVar[RunEventKind]
    RUN_EVENT_KIND_SHRUNK: _ClassVar[RunEventKind]
    RUN_EVENT_KIND_DELETED: _ClassVar[RunEventKind]
    RUN_EVENT_KIND_DEACTIVATED: _ClassVar[RunEventKind]
    RUN_EVENT_KIND_ACTIVATED: _ClassVar[RunEventKind]
    RUN_EVENT_KIND_REBUILT: _ClassVar[RunEventKind]

class RunEventCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_EVENT_CAUSE_UNSPECIFIED: _ClassVar[RunEventCause]
    RUN_EVENT_CAUSE_MARK: _ClassVar[RunEventCause]
    RUN_EVENT_CAUSE_UNMARK: _ClassVar[RunEventCause]
    RUN_EVENT_CAUSE_BACKFILL: _ClassVar[RunEventCause]
    RUN_EVENT_CAUSE_REBUILD: _ClassVar[RunEventCause]
RUN_EVENT_KIND_UNSPECIFIED: RunEventKind
RUN_EVENT_KIND_CREATED: RunEventKind
RUN_EVENT_KIND_EXTENDED: RunEventKind
RUN_EVENT_KIND_MERGED: RunEventKind
RUN_EVENT_KIND_SPLIT: RunEventKind
RUN_EVENT_KIND_SHRUNK: RunEventKind
RUN_EVENT_KIND_DELETED: RunEventKind
RUN_EVENT_KIND_DEACTIVATED: RunEventKind
RUN_EVENT_KIND_ACTIVATED: RunEventKind
RUN_EVENT_KIND_REBUILT: RunEventKind
RUN_EVENT_CAUSE_UNSPECIFIED: RunEventCause
RUN_EVENT_CAUSE_MARK: RunEventCause
RUN_EVENT_CAUSE_UNMARK: RunEventCause
RUN_EVENT_CAUSE_BACKFILL: RunEventCause
RUN_EVENT_CAUSE_REBUILD: RunEventCause

class WatchRunEventsRequest(_message.Message):
    __slots__ = ("user_id", "after_event_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    after_event_id: int
    def __init__(self, user_id: _Optional[str] = ..., after_event_id: _Optional[int] = ...) -> None: ...

class WatchRunEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: RunEvent
    def __init__(self, event: _Optional[_Union[RunEvent, _Mapping]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "kind", "cause", "before", "after", "event_time", "request_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    user_id: str
    kind: RunEventKind
    cause: RunEventCause
    before: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    after: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    event_time: _timestamp_pb2.Timestamp
    request_id: str
    def __init__(self, event_id: _Optional[int] = ..., user_id: _Optional[str] = ..., kind: _Optional[_Union[RunEventKind, str]] = ..., cause: _Optional[_Union[RunEventCause, str]] = ..., before: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., after: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...
