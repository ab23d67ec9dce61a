import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
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

class RebuildRunsBatchRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "dry_run", "force")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    dry_run: bool
    force: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., dry_run: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class RebuiltUser(_message.Message):
    __slots__ = ("user_id", "runs_added", "runs_removed", "runs_changed")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RUNS_ADDED_FIELD_NUMBER: _ClassVar[int]
    RUNS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    RUNS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    runs_added: int
    runs_removed: int
    runs_changed: int
    def __init__(self, user_id: _Optional[str] = ..., runs_added: _Optional[int] = ..., runs_removed: _Optional[int] = ..., runs_changed: _Optional[int] = ...) -> None: ...

class FailedUser(_message.Message):
    __slots__ = ("user_id", "error")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    error: str
    def __init__(self, user_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class RebuildRunsBatchResponse(_message.Message):
    __slots__ = ("users_scanned", "drifted_users", "failed_users", "next_page_token", "total_users")
    USERS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_USERS_FIELD_NUMBER: _ClassVar[int]
    FAILED_USERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_USERS_FIELD_NUMBER: _ClassVar[int]
    users_scanned: int
    drifted_users: _containers.RepeatedCompositeFieldContainer[RebuiltUser]
    failed_users: _containers.RepeatedCompositeFieldContainer[FailedUser]
    next_page_token: str
    total_users: int
    def __init__(self, users_scanned: _Optional[int] = ..., drifted_users: _Optional[_Iterable[_Union[RebuiltUser, _Mapping]]] = ..., failed_users: _Optional[_Iterable[_Union[FailedUser, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_users: _Optional[int] = ...) -> None: ...

class DiffPopulationRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class DiffClassCount(_message.Message):
    __slots__ = ("difference_class", "users", "example_user_ids")
    DIFFERENCE_CLASS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    difference_class: str
    users: int
    example_user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, difference_class: _Optional[str] = ..., users: _Optional[int] = ..., example_user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DiffPopulationResponse(_message.Message):
    __slots__ = ("users_scanned", "users_different", "classes", "checkins_scanned", "next_page_token", "total_users")
    USERS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    USERS_DIFFERENT_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CHECKINS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_USERS_FIELD_NUMBER: _ClassVar[int]
    users_scanned: int
    users_different: int
    classes: _containers.RepeatedCompositeFieldContainer[DiffClassCount]
    checkins_scanned: int
    next_page_token: str
    total_users: int
    def __init__(self, users_scanned: _Optional[int] = ..., users_different: _Optional[int] = ..., classes: _Optional[_Iterable[_Union[DiffClassCount, _Mapping]]] = ..., checkins_scanned: _Optional[int] = ..., next_page_token: _Optional[str] = ..., total_users: _Optional[int] = ...) -> None: ...

class GetShadowStatsRequest(_message.Message):
    __slots__ = ("flag", "window_hours")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    WINDOW_HOURS_FIELD_NUMBER: _ClassVar[int]
    flag: str
    window_hours: int
    def __init__(self, flag: _Optional[str] = ..., window_hours: _Optional[int] = ...) -> None: ...

class ShadowStat(_message.Message):
    __slots__ = ("method", "result", "count")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    method: str
    result: str
    count: int
    def __init__(self, method: _Optional[str] = ..., result: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class GetShadowStatsResponse(_message.Message):
    __slots__ = ("stats", "stored_mismatches")
    STATS_FIELD_NUMBER: _ClassVar[int]
    STORED_MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[ShadowStat]
    stored_mismatches: int
    def __init__(self, stats: _Optional[_Iterable[_Union[ShadowStat, _Mapping]]] = ..., stored_mismatches: _Optional[int] = ...) -> None: ...

class Flag(_message.Message):
    __slots__ = ("name", "enabled", "rollout_percent", "shadow_percent", "allow_user_ids", "deny_user_ids", "update_time", "update_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    DENY_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    enabled: bool
    rollout_percent: float
    shadow_percent: float
    allow_user_ids: _containers.RepeatedScalarFieldContainer[str]
    deny_user_ids: _containers.RepeatedScalarFieldContainer[str]
    update_time: _timestamp_pb2.Timestamp
    update_reason: str
    def __init__(self, name: _Optional[str] = ..., enabled: _Optional[bool] = ..., rollout_percent: _Optional[float] = ..., shadow_percent: _Optional[float] = ..., allow_user_ids: _Optional[_Iterable[str]] = ..., deny_user_ids: _Optional[_Iterable[str]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_reason: _Optional[str] = ...) -> None: ...

class GetFlagRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetFlagResponse(_message.Message):
    __slots__ = ("flag",)
    FLAG_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class ListFlagsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFlagsResponse(_message.Message):
    __slots__ = ("flags",)
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[Flag]
    def __init__(self, flags: _Optional[_Iterable[_Union[Flag, _Mapping]]] = ...) -> None: ...

class UpdateFlagRequest(_message.Message):
    __slots__ = ("flag", "update_mask", "reason")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    update_mask: _field_mask_pb2.FieldMask
    reason: str
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class UpdateFlagResponse(_message.Message):
    __slots__ = ("flag",)
    FLAG_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class RollbackFlagRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackFlagResponse(_message.Message):
    __slots__ = ("flag",)
    FLAG_FIELD_NUMBER: _ClassVar[int]
    flag: Flag
    def __init__(self, flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class ReconcileTotalsRequest(_message.Message):
    __slots__ = ("dry_run", "page_size", "page_token")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    page_size: int
    page_token: str
    def __init__(self, dry_run: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class DriftedTotals(_message.Message):
    __slots__ = ("user_id", "rows_drifted")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_DRIFTED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    rows_drifted: int
    def __init__(self, user_id: _Optional[str] = ..., rows_drifted: _Optional[int] = ...) -> None: ...

class ReconcileTotalsResponse(_message.Message):
    __slots__ = ("users_checked", "rows_drifted", "rows_repaired", "drifted_users", "next_page_token", "total_users", "failed_users")
    USERS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    ROWS_DRIFTED_FIELD_NUMBER: _ClassVar[int]
    ROWS_REPAIRED_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_USERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_USERS_FIELD_NUMBER: _ClassVar[int]
    FAILED_USERS_FIELD_NUMBER: _ClassVar[int]
    users_checked: int
    rows_drifted: int
    rows_repaired: int
    drifted_users: _containers.RepeatedCompositeFieldContainer[DriftedTotals]
    next_page_token: str
    total_users: int
    failed_users: _containers.RepeatedCompositeFieldContainer[FailedUser]
    def __init__(self, users_checked: _Optional[int] = ..., rows_drifted: _Optional[int] = ..., rows_repaired: _Optional[int] = ..., drifted_users: _Optional[_Iterable[_Union[DriftedTotals, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_users: _Optional[int] = ..., failed_users: _Optional[_Iterable[_Union[FailedUser, _Mapping]]] = ...) -> None: ...

class RebuildAllRunsRequest(_message.Message):
    __slots__ = ("blue_green", "validate_only", "confirm")
    BLUE_GREEN_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    blue_green: bool
    validate_only: bool
    confirm: str
    def __init__(self, blue_green: _Optional[bool] = ..., validate_only: _Optional[bool] = ..., confirm: _Optional[str] = ...) -> None: ...

class RebuildPhase(_message.Message):
    __slots__ = ("name", "seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    seconds: float
    def __init__(self, name: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class RebuildAllRunsResponse(_message.Message):
    __slots__ = ("rebuild_id", "validate_only", "facts", "users", "runs", "runs_kept", "users_changed", "catchup_users", "swap_attempts", "max_write_block_seconds", "phases", "old_table_dropped", "seconds")
    REBUILD_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    RUNS_KEPT_FIELD_NUMBER: _ClassVar[int]
    USERS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_USERS_FIELD_NUMBER: _ClassVar[int]
    SWAP_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_WRITE_BLOCK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    OLD_TABLE_DROPPED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    rebuild_id: int
    validate_only: bool
    facts: int
    users: int
    runs: int
    runs_kept: int
    users_changed: int
    catchup_users: _containers.RepeatedScalarFieldContainer[int]
    swap_attempts: int
    max_write_block_seconds: float
    phases: _containers.RepeatedCompositeFieldContainer[RebuildPhase]
    old_table_dropped: bool
    seconds: float
    def __init__(self, rebuild_id: _Optional[int] = ..., validate_only: _Optional[bool] = ..., facts: _Optional[int] = ..., users: _Optional[int] = ..., runs: _Optional[int] = ..., runs_kept: _Optional[int] = ..., users_changed: _Optional[int] = ..., catchup_users: _Optional[_Iterable[int]] = ..., swap_attempts: _Optional[int] = ..., max_write_block_seconds: _Optional[float] = ..., phases: _Optional[_Iterable[_Union[RebuildPhase, _Mapping]]] = ..., old_table_dropped: _Optional[bool] = ..., seconds: _Optional[float] = ...) -> None: ...
