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
from potato_runs.transport.registration import Undecodable

ERROR_DOMAIN = "runs.potato.app"
log = logging.getLogger(__name__)

_CODES: dict[ErrorKind, tuple[grpc.StatusCode, int]] = {
    ErrorKind.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    ErrorKind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    ErrorKind.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, code_pb2.DEADLINE_EXCEEDED),
    ErrorKind.ABORTED: (grpc.StatusCode.ABORTED, code_pb2.ABORTED),
    ErrorKind.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    ErrorKind.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    ErrorKind.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    ErrorKind.RESOURCE_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   code_pb2.RESOURCE_EXHAUSTED),
    ErrorKind.ALREADY_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    ErrorKind.FAILED_PRECONDITION: (grpc.StatusCode.FAILED_PRECONDITION,
                                    code_pb2.FAILED_PRECONDITION),
    ErrorKind.INTERNAL: (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL),
}


# Status details travel in trailers: the message percent-encoded, the details
# base64-encoded. Clients refuse trailers over 8 KiB (grpc.max_metadata_size), at
# random between 8 and 16 KiB, with RESOURCE_EXHAUSTED. So the status is kept ASCII
# and under a byte budget, whatever the request held: a backfill of 500 bad dates
# still reaches the client as INVALID_ARGUMENT, with the first violations and
# ErrorInfo.metadata["field_violations"] giving the total.
MAX_FIELD_VIOLATIONS = 20
MAX_MESSAGE_CHARS = 1000
MAX_TEXT_CHARS = 200
MAX_DETAILS_BYTES = 3000


def _ascii(text: str, limit: int) -> str:
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _details(err: DomainError, metadata: dict[str, str],
             violations: int) -> list[any_pb2.Any]:
    info = error_details_pb2.ErrorInfo(reason=err.reason.value, domain=ERROR_DOMAIN,
                                       metadata=metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details = [packed]
    if violations:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=_ascii(v.field, 64), description=_ascii(v.description, MAX_TEXT_CHARS),
                reason=v.reason.value)
            for v in err.violations[:violations]
        ])
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    return details


def to_status(err: DomainError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code, num = _CODES[err.kind]
    metadata = {_ascii(k, 64): _ascii(v, MAX_TEXT_CHARS) for k, v in err.metadata.items()}
    shown = min(len(err.violations), MAX_FIELD_VIOLATIONS)
    if len(err.violations) > 1:
        metadata["field_violations"] = str(len(err.violations))
    details = _details(err, metadata, shown)
    while shown > 1 and sum(d.ByteSize() for d in details) > MAX_DETAILS_BYTES:
        shown -= 1
        details = _details(err, metadata, shown)
    message = _ascii(err.message, MAX_MESSAGE_CHARS)
    if shown < len(err.violations) and len(message) >= MAX_MESSAGE_CHARS:
        message = message.rsplit("; ", 1)[0] + f"; ... ({len(err.violations)} violations in all)"
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
            if isinstance(request, Undecodable):
                raise DomainError(ErrorKind.INVALID_ARGUMENT, Reason.MALFORMED_REQUEST,
                                  "the request is not a valid protobuf message of this method")
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
