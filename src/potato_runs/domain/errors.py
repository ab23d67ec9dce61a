"""One domain error base, mapped once to google.rpc.Status by the transport."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    """Stable machine-readable reasons (google.rpc.ErrorInfo.reason)."""

    INVALID_USER_ID = "INVALID_USER_ID"
    INVALID_DATE = "INVALID_DATE"
    INVALID_TIME_ZONE = "INVALID_TIME_ZONE"
    TIME_ZONE_REQUIRED = "TIME_ZONE_REQUIRED"
    DATE_IN_FUTURE = "DATE_IN_FUTURE"
    DATE_BEFORE_LAUNCH = "DATE_BEFORE_LAUNCH"
    TOO_MANY_DATES = "TOO_MANY_DATES"
    MISSING_FIELD = "MISSING_FIELD"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    INVALID_PAGE_SIZE = "INVALID_PAGE_SIZE"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    INVALID_RANGE = "INVALID_RANGE"
    INVALID_VALUE = "INVALID_VALUE"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CONTENTION = "CONTENTION"
    PROJECTION_INCONSISTENT = "PROJECTION_INCONSISTENT"
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    OVERLOADED = "OVERLOADED"
    SERVER_DRAINING = "SERVER_DRAINING"
    INVALID_REQUEST_ID = "INVALID_REQUEST_ID"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    INVALID_CURSOR = "INVALID_CURSOR"
    CURSOR_EXPIRED = "CURSOR_EXPIRED"
    WATCHER_TOO_SLOW = "WATCHER_TOO_SLOW"
    TOO_MANY_WATCHERS = "TOO_MANY_WATCHERS"
    OWNER_CONNECTION_REQUIRED = "OWNER_CONNECTION_REQUIRED"
    REBUILD_IN_PROGRESS = "REBUILD_IN_PROGRESS"
    DISTRIBUTED_SCHEMA = "DISTRIBUTED_SCHEMA"
    INTERNAL = "INTERNAL"


class ErrorKind(StrEnum):
    """The category a transport maps to a status code."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    ABORTED = "ABORTED"
    NOT_FOUND = "NOT_FOUND"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    reason: Reason
    description: str


@dataclass
class DomainError(Exception):
    """Base of every error the service reports on purpose."""

    kind: ErrorKind
    reason: Reason
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


def invalid_argument(
    violations: Sequence[FieldViolation], metadata: Mapping[str, str] | None = None
) -> DomainError:
    """One INVALID_ARGUMENT error for all violations; the first one names the reason."""
    if not violations:
        raise ValueError("invalid_argument needs at least one violation")
    first = violations[0]
    message = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return DomainError(
        kind=ErrorKind.INVALID_ARGUMENT,
        reason=first.reason,
        message=message,
        metadata=dict(metadata or {}),
        violations=tuple(violations),
    )


class ValidationCollector:
    """Collects every violation of a request before failing once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []
        self.metadata: dict[str, str] = {}

    def add(self, field_name: str, reason: Reason, description: str) -> None:
        self.violations.append(FieldViolation(field_name, reason, description))

    def raise_if_any(self) -> None:
        if self.violations:
            raise invalid_argument(self.violations, self.metadata)
