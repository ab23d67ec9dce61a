"""Maps asyncpg and connection errors to domain errors, by SQLSTATE only."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from potato_runs.domain.errors import (
    DomainError,
    ErrorKind,
    FieldViolation,
    Reason,
    invalid_argument,
)

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

CONNECTION_FAILURES = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                       asyncpg.PostgresConnectionError)
"""The connection itself failed (closed, killed, or its protocol state broken, e.g.
asyncpg's "cannot switch to state 12; another operation is in progress" after the
backend was terminated mid-call): the connection must not go back to the pool."""

DB_FAILURES = (asyncpg.PostgresError, OSError, asyncpg.InterfaceError,
               asyncpg.InternalClientError, TimeoutError)
"""What a database call can raise; map_db_error turns each into a DomainError."""
"""serialization_failure and deadlock_detected: the only ones worth retrying."""

_UNAVAILABLE_CLASSES = ("08", "53", "57P01", "57P02", "57P03", "58")


def _detail(exc: asyncpg.PostgresError) -> dict[str, str]:
    raw = getattr(exc, "detail", None)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def map_db_error(exc: BaseException, date_field: str = "local_date",
                 zone_given: bool = False) -> DomainError:
    """One place that turns a database failure into a domain error."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        code = str(exc.sqlstate or "")
        meta = _detail(exc)
        if code == "PX001":
            return invalid_argument(
                [FieldViolation(date_field, Reason.DATE_IN_FUTURE,
                                f"{meta.get('local_date')} is after today ({meta.get('today')}) "
                                f"in {meta.get('time_zone')}")], meta)
        if code == "PX002":
            return invalid_argument(
                [FieldViolation("time_zone", Reason.TIME_ZONE_REQUIRED,
                                "time_zone is required: the user has no stored zone")], meta)
        if code == "PX003":
            return invalid_argument(
                [FieldViolation(date_field, Reason.DATE_BEFORE_LAUNCH,
                                f"{meta.get('local_date')} is before 2025-01-01")], meta)
        if code == "PX004":
            return DomainError(ErrorKind.INTERNAL, Reason.PROJECTION_INCONSISTENT,
                               "the runs projection does not match the check-ins; "
                               "run `potato-runs check` and `potato-runs rebuild`", meta)
        if code == "PX005":
            return DomainError(ErrorKind.ALREADY_EXISTS, Reason.REQUEST_ID_REUSED,
                               f"request_id {meta.get('request_id')} was used for a different "
                               "request of this user; send a new request_id for a new write",
                               meta)
        if code in RETRYABLE_SQLSTATES:
            return DomainError(ErrorKind.ABORTED, Reason.CONTENTION,
                               "the write lost to concurrent writes; retry", {"sqlstate": code})
        if code == "55P03":
            return DomainError(ErrorKind.ABORTED, Reason.CONTENTION,
                               "the user's data is locked by another operation; retry",
                               {"sqlstate": code})
        if code == "25006":   # read-only transaction: a standby after a failover
            return DomainError(ErrorKind.UNAVAILABLE, Reason.DATABASE_UNAVAILABLE,
                               "the database is read-only", {"sqlstate": code})
        if code == "57014":
            return DomainError(ErrorKind.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED,
                               "the database statement ran out of time", {"sqlstate": code})
        if code.startswith(_UNAVAILABLE_CLASSES) or code in _UNAVAILABLE_CLASSES:
            return DomainError(ErrorKind.UNAVAILABLE, Reason.DATABASE_UNAVAILABLE,
                               "the database is unavailable", {"sqlstate": code})
        if code == "22023" and zone_given:
            # PostgreSQL's zone database lacks a zone Python's tzdata knows.
            return invalid_argument(
                [FieldViolation("time_zone", Reason.INVALID_TIME_ZONE,
                                "the time zone is not known to the database")],
                {"sqlstate": code})
        if code.startswith("22"):
            return invalid_argument(
                [FieldViolation("request", Reason.INVALID_VALUE,
                                "the database refused a value of the request")],
                {"sqlstate": code})
        return DomainError(ErrorKind.INTERNAL, Reason.INTERNAL,
                           "unexpected database error", {"sqlstate": code})
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return DomainError(ErrorKind.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED,
                           "the database did not answer before the deadline")
    if isinstance(exc, (OSError, ConnectionError, asyncpg.InterfaceError,
                        asyncpg.InternalClientError)):
        return DomainError(ErrorKind.UNAVAILABLE, Reason.DATABASE_UNAVAILABLE,
                           "the database is unreachable")
    return DomainError(ErrorKind.INTERNAL, Reason.INTERNAL, f"unexpected error: {type(exc).__name__}")


def with_write_outcome(err: DomainError, outcome: str) -> DomainError:
    """`err` with ErrorInfo metadata `write_outcome`: "not_applied" (the failure came
    before the write was sent) or "unknown" (the connection failed while the write was in
    flight: it may have committed). Every write is idempotent, so retrying is safe."""
    if err.kind not in (ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED):
        return err
    note = ("the write was not applied" if outcome == "not_applied" else
            "the write may or may not have been applied; it is idempotent, so retry it")
    return DomainError(err.kind, err.reason, f"{err.message}; {note}",
                       {**err.metadata, "write_outcome": outcome}, err.violations)
