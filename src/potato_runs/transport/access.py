"""Access control: the one server interceptor that decides who may call which method.

`AccessControl.intercept` is a registration.HandlerInterceptor: applied once per method
when a service is registered, it looks the method's role up in
domain/access_policy.METHOD_ROLES (a method missing there refuses to register) and
wraps the handler in a check of the caller's identity:

- a bearer token (`authorization: Bearer <token>`), matched by SHA-256 in constant time
  against the server's admin token and the policy's `token_sha256` entries; or, when no
  token or an unknown one was sent,
- the verified client certificate (mTLS): its SAN URIs (`peer_uri` in gRPC's auth
  context, e.g. a SPIFFE id) and SAN DNS names (`peer_dns`). gRPC fills these only for
  a certificate the handshake verified against the client CA.

Nobody recognised: UNAUTHENTICATED; recognised without the method's role:
PERMISSION_DENIED; both with an ErrorInfo reason, before any servicer code runs.

Without a policy file the server behaves as before policies existed: RunsService (v1,
v2) and TotalsService are open and their handlers are returned unwrapped (they pay
nothing), AdminService takes the admin token. Health and reflection are registered by
their libraries, never through add_service, and so are always open.

Why not a grpc.aio.ServerInterceptor: grpc.aio runs that chain in Python on every RPC
(50-63 µs per call, scripts/bench_auth_interceptor.py), where this check costs a
method only when it guards it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from potato_runs.domain.access_policy import (
    ANONYMOUS,
    METHOD_ROLES,
    OPEN_WITHOUT_POLICY,
    AccessRules,
    Decision,
    Identity,
    PolicyError,
    PolicyFile,
    Role,
    compile_rules,
    decide,
    parse_policy,
)
from potato_runs.domain.errors import DomainError, ErrorKind, Reason
from potato_runs.transport.status import abort

log = logging.getLogger("potato_runs.access")

SCHEME = "bearer"
Behavior = Callable[[Any, Any], Awaitable[Any]]


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


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]
                      ) -> tuple[list[str], list[str]]:
    """The SAN URIs and DNS names of a verified client certificate ([] without TLS)."""
    if list(auth_context.get("transport_security_type", ())) != [b"ssl"]:
        return [], []
    return ([v.decode("utf-8", "replace") for v in auth_context.get("peer_uri", ())],
            [v.decode("utf-8", "replace") for v in auth_context.get("peer_dns", ())])


def read_policy(path: Path) -> PolicyFile:
    """The policy file at `path`, or PolicyError("access policy <path>: <problem>")."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(f"access policy {path}: cannot read it: {reason}") from None
    try:
        return parse_policy(text)
    except PolicyError as exc:
        raise PolicyError(f"access policy {path}: {exc}") from None


class AccessControl:
    """Identities, roles and the per-method check, for every service we register.

    `admin_token` may be set after construction (the embedded cluster's token file
    exists only once the cluster has started); until then nobody holds it.
    `reload()` re-reads the policy file (SIGHUP); a file that no longer parses keeps
    the rules in force. The rules are one immutable object swapped whole, so a call
    sees either the old policy or the new one."""

    def __init__(self, admin_token: str | None, policy_path: Path | None = None) -> None:
        self.policy_path = policy_path
        self._policy = read_policy(policy_path) if policy_path is not None else None
        self._admin_token = admin_token.encode("utf-8") if admin_token else None
        self._rules = self._compile(self._policy, self._admin_token)

    @property
    def rules(self) -> AccessRules:
        return self._rules

    @property
    def admin_token(self) -> str | None:
        return None if self._admin_token is None else self._admin_token.decode("utf-8")

    @admin_token.setter
    def admin_token(self, value: str | None) -> None:
        """Raises PolicyError when a policy identity has this token's hash."""
        token = value.encode("utf-8") if value else None
        self._rules = self._compile(self._policy, token)
        self._admin_token = token

    def reload(self) -> bool:
        """Re-reads the policy file; True when the new policy is in force. On failure it
        logs one error and keeps the old one. Without a policy file it does nothing."""
        if self.policy_path is None:
            return False
        try:
            policy = read_policy(self.policy_path)
            rules = self._compile(policy, self._admin_token)
        except PolicyError as exc:
            log.error("%s; keeping the policy in force", exc)
            return False
        self._policy, self._rules = policy, rules
        log.info("access policy reloaded from %s: %d identities", self.policy_path,
                 len(policy.identities))
        return True

    def _compile(self, policy: PolicyFile | None, token: bytes | None) -> AccessRules:
        try:
            return compile_rules(policy, token)
        except PolicyError as exc:
            raise PolicyError(f"access policy {self.policy_path}: {exc}") from None

    def intercept(self, method: str, behavior: Behavior) -> Behavior:
        """A registration.HandlerInterceptor: `behavior` behind the check of its role."""
        role = METHOD_ROLES.get(method)
        if role is None:
            raise ValueError(f"{method} has no role in domain/access_policy.METHOD_ROLES: "
                             f"add it there before serving it")
        if self._policy is None and role in OPEN_WITHOUT_POLICY:
            return behavior   # open: no check, no cost

        @functools.wraps(behavior)
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            rules = self._rules
            token = bearer_token(context.invocation_metadata())  # type: ignore[arg-type]
            identity = rules.by_token(token) if token is not None else None
            uris: list[str] = []
            dns: list[str] = []
            if identity is None and rules.has_certificates:
                uris, dns = certificate_names(context.auth_context())
                identity = rules.by_certificate(uris, dns)
            decision = decide(identity, role)
            if decision is Decision.ALLOW:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("allow %s to %s (%s)", _name(identity), method, context.peer())
                return await behavior(request, context)
            self._deny(identity, role, method, context, token is not None, uris, dns)
            await abort(context, self._error(decision, identity, role, method))
            return None   # unreachable: abort raises

        return guarded

    def _deny(self, identity: Identity | None, role: Role, method: str,
              context: grpc.aio.ServicerContext[Any, Any], sent_token: bool,
              uris: list[str], dns: list[str]) -> None:
        """One log line per denial: who (the policy's name, or anonymous with what it
        presented, never a token), which method, from where."""
        if identity is None:
            presented = [f"a certificate with no known name (uri {uris}, dns {dns})"
                         ] if uris or dns else []
            if sent_token:
                presented.insert(0, "an unknown bearer token")
            presented = presented or ["no credentials"]
            log.info("unauthenticated: %s called %s from %s with %s", ANONYMOUS, method,
                     context.peer(), " and ".join(presented))
        else:
            log.warning("permission denied: %s (by %s) lacks %s for %s, from %s",
                        identity.name, identity.credential, role.value, method,
                        context.peer())

    def _error(self, decision: Decision, identity: Identity | None, role: Role,
               method: str) -> DomainError:
        metadata = {"method": method, "role": role.value}
        if decision is Decision.PERMISSION_DENIED:
            assert identity is not None
            return DomainError(ErrorKind.PERMISSION_DENIED, Reason.PERMISSION_DENIED,
                               f"{identity.name} lacks the role {role.value} that {method} "
                               f"needs", metadata)
        if self._policy is None:
            message = (f"{method} needs `authorization: Bearer <token>` with the server's "
                       f"admin token")
        else:
            message = (f"{method} needs the role {role.value}: send `authorization: Bearer "
                       f"<token>` or a client certificate that the access policy knows")
        return DomainError(ErrorKind.UNAUTHENTICATED, Reason.UNAUTHENTICATED, message,
                           metadata)


def _name(identity: Identity | None) -> str:
    return ANONYMOUS if identity is None else identity.name
