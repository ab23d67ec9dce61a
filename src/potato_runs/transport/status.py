"""DomainError -> google.rpc.Status (AIP-193), mapped in this one place."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from potato_runs.domain.errors import DomainError, ErrorKind, Reason

ERROR_DOMAIN = "runs.potato.app"
log = logging.getLogger(__name__)

_CODES: dict[ErrorKind, tuple[grpc.StatusCode, int]] = {
    ErrorKind.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    ErrorKind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    ErrorKind.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, code_pb2.DEADLINE_EXCEEDED),
    ErrorKind.ABORTED: (grpc.StatusCode.ABORTED, code_pb2.ABORTED),
    ErrorKind.INTERNAL: (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL),
}


# Status details travel in trailers, and clients refuse trailers over 8 KiB
# (grpc.max_metadata_size) with RESOURCE_EXHAUSTED: a backfill of 500 bad dates
# must still reach the client as INVALID_ARGUMENT. So report the first
# violations only, say how many there were, and keep the message short.
MAX_FIELD_VIOLATIONS = 20
MAX_MESSAGE_CHARS = 1000


def to_status(err: DomainError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code, num = _CODES[err.kind]
    metadata = dict(err.metadata)
    message = err.message
    if len(err.violations) > MAX_FIELD_VIOLATIONS:
        metadata["field_violations"] = str(len(err.violations))
    if len(message) > MAX_MESSAGE_CHARS:
        message = (message[:MAX_MESSAGE_CHARS].rsplit("; ", 1)[0]
                   + f"; ... ({len(err.violations)} violations in all)")
    info = error_details_pb2.ErrorInfo(reason=err.reason.value, domain=ERROR_DOMAIN,
                                       metadata=metadata)
    details = []
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if err.violations:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=v.field, description=v.description, reason=v.reason.value)
            for v in err.violations[:MAX_FIELD_VIOLATIONS]
        ])
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    return code, status_pb2.Status(code=num, message=message, details=details)


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: DomainError) -> None:
    code, status = to_status(err)
    await context.abort(
        code, status.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def maps_errors(method: F) -> F:
    """Wraps a servicer method: DomainError -> rich status; anything else -> INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except DomainError as err:
            if err.kind is ErrorKind.INTERNAL:
                log.error("internal error in %s: %s", method.__name__, err)
            await abort(context, err)
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await abort(context, DomainError(ErrorKind.INTERNAL, Reason.INTERNAL,
                                             "internal error"))
        return None  # unreachable: abort raises

    return wrapper  # type: ignore[return-value]
