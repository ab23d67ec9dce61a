"""The AdminService bearer token, checked once for every call by an interceptor.

Every method under a protected prefix (`/potato.runs.v2.AdminService/`) needs the
metadata `authorization: Bearer <token>`; without it, or with another token, the
call is UNAUTHENTICATED (ErrorInfo reason UNAUTHENTICATED) before any servicer
code runs. Tokens are compared in constant time. Other services (RunsService,
health, reflection) pass through untouched.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from potato_runs.domain.errors import DomainError, ErrorKind, Reason
from potato_runs.transport.status import abort

SCHEME = "bearer"


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> bytes | None:
    """The token of the one `authorization: Bearer ...` header; None when there is
    none, several, or another scheme."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != SCHEME or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """`token` may be set after construction (the embedded cluster's token file exists
    only once the cluster has started); while it is None every protected call is
    refused."""

    def __init__(self, token: str | None, prefixes: Sequence[str]) -> None:
        self.token = token
        self._prefixes = tuple(prefixes)

    @property
    def token(self) -> str | None:
        return None if self._token is None else self._token.decode("utf-8")

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value.encode("utf-8") if value else None

    def allows(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        given = bearer_token(metadata)
        expected = self._token
        # compare_digest's time depends on the lengths only, never on the content.
        return given is not None and expected is not None and hmac.compare_digest(given, expected)

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any]]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method or ""
        if not method.startswith(self._prefixes) or self.allows(
                handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _denied(handler)


def _denied(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    missing = DomainError(
        ErrorKind.UNAUTHENTICATED, Reason.UNAUTHENTICATED,
        "AdminService calls need `authorization: Bearer <token>` with the server's admin token")

    async def deny(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await abort(context, missing)

    async def deny_stream(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, missing)
        yield  # pragma: no cover  (an async generator; abort raises)

    # The request is never decoded: raw bytes in, nothing out.
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)
