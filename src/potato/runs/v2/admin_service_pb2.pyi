from potato.runs.v2 import run_pb2 as _run_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RebuildUserRunsRequest(_message.Message):
    __slots__ = ("user_id", "from_date", "to_date", "dry_run")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_DATE_FIELD_NUMBER: _ClassVar[int]
    TO_DATE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    from_date: str
    to_date: str
    dry_run: bool
    def __init__(self, user_id: _Optional[str] = ..., from_date: _Optional[str] = ..., to_date: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class RunRevision(_message.Message):
    __slots__ = ("before", "after")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    before: _run_pb2.Run
    after: _run_pb2.Run
    def __init__(self, before: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., after: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class RebuildUserRunsResponse(_message.Message):
    __slots__ = ("added", "removed", "changed", "rebuilt_from_date", "rebuilt_to_date", "dry_run")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REBUILT_FROM_DATE_FIELD_NUMBER: _ClassVar[int]
    REBUILT_TO_DATE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    removed: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    changed: _containers.RepeatedCompositeFieldContainer[RunRevision]
    rebuilt_from_date: str
    rebuilt_to_date: str
    dry_run: bool
    def __init__(self, added: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., changed: _Optional[_Iterable[_Union[RunRevision, _Mapping]]] = ..., rebuilt_from_date: _Optional[str] = ..., rebuilt_to_date: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CheckInvariantsRequest(_message.Message):
    __slots__ = ("user_id", "limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class InvariantViolation(_message.Message):
    __slots__ = ("code", "user_id", "detail")
    CODE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    code: str
    user_id: str
    detail: str
    def __init__(self, code: _Optional[str] = ..., user_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class CheckInvariantsResponse(_message.Message):
    __slots__ = ("violations", "truncated")
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    violations: _containers.RepeatedCompositeFieldContainer[InvariantViolation]
    truncated: bool
    def __init__(self, violations: _Optional[_Iterable[_Union[InvariantViolation, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...
