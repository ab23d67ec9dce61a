"""The AdminService bearer token, checked for every AdminService call.

Every AdminService method needs the metadata `authorization: Bearer <token>`; without
it, or with another token, the call is UNAUTHENTICATED (ErrorInfo reason
UNAUTHENTICATED) before any servicer code runs. Tokens are compared in constant time.
Other services (both RunsServices, health, reflection) are not guarded and pay nothing.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from potato_runs.domain.errors import DomainError, ErrorKind, Reason
from potato_runs.transport.status import abort

SCHEME = "bearer"
ADMIN_SERVICE = "potato.runs.v2.AdminService"


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


class AdminAuth:
    """The bearer-token check of one service, applied to each of its handlers when the
    service is registered (`registration.add_service(..., [auth.intercept])`).

    It is an interceptor scoped to the AdminService: a server-wide
    `grpc.aio.ServerInterceptor` runs in Python for every RPC, and measured 63 µs per
    call on an echo method (`scripts/bench_auth_interceptor.py`), a cost MarkDay and the
    reads would pay for a check that never applies to them. Here they pay nothing.

    `token` may be set after construction (the embedded cluster's token file exists only
    once the cluster has started); while it is None every call is refused."""

    def __init__(self, token: str | None) -> None:
        self.token = token

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

    def intercept(self, method: str, behavior: Callable[[Any, Any], Awaitable[Any]]
                  ) -> Callable[[Any, Any], Awaitable[Any]]:
        """A registration.HandlerInterceptor: AdminService methods answer UNAUTHENTICATED
        before they run when the token is wrong; other methods are left as they are."""
        if not method.startswith(f"/{ADMIN_SERVICE}/"):
            return behavior

        @functools.wraps(behavior)
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if not self.allows(context.invocation_metadata()):  # type: ignore[arg-type]
                await abort(context, UNAUTHENTICATED)
            return await behavior(request, context)

        return guarded


UNAUTHENTICATED = DomainError(
    ErrorKind.UNAUTHENTICATED, Reason.UNAUTHENTICATED,
    "AdminService calls need `authorization: Bearer <token>` with the server's admin token")
