"""Who may call which method: roles, the method -> role table, the policy file model and
the decision. Pure: no gRPC, no I/O (transport/access.py reads the file and the call).

A caller is identified by a bearer token (the policy stores only its SHA-256) or, when
it sent no token the policy knows, by its client certificate's SAN URIs (e.g. a SPIFFE
id) and DNS names.
Every method needs exactly one role (METHOD_ROLES); a caller nobody knows is
UNAUTHENTICATED, a known caller without the role is PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Role(StrEnum):
    RUNS_READ = "runs.read"
    RUNS_WRITE = "runs.write"
    ADMIN = "admin"
    EVENTS_WATCH = "events.watch"


def _table(service: str, roles: Mapping[str, Role]) -> dict[str, Role]:
    return {f"/{service}/{method}": role for method, role in roles.items()}


METHOD_ROLES: Mapping[str, Role] = {
    **_table("potato.runs.v2.RunsService", {
        "MarkDay": Role.RUNS_WRITE, "UnmarkDay": Role.RUNS_WRITE,
        "BackfillDays": Role.RUNS_WRITE,
        "GetActiveRun": Role.RUNS_READ, "ListRuns": Role.RUNS_READ}),
    **_table("potato.runs.v1.RunsService", {
        "MarkDay": Role.RUNS_WRITE, "UnmarkDay": Role.RUNS_WRITE,
        "GetCurrentRun": Role.RUNS_READ, "ListRuns": Role.RUNS_READ,
        "GetStats": Role.RUNS_READ}),
    **_table("potato.runs.v2.TotalsService", {
        "GetTotals": Role.RUNS_READ, "ListMonthlyTotals": Role.RUNS_READ}),
    **_table("potato.runs.v2.AdminService", {
        name: Role.ADMIN for name in (
            "RebuildUserRuns", "CheckInvariants", "RebuildRunsBatch", "DiffPopulation",
            "GetShadowStats", "GetFlag", "ListFlags", "UpdateFlag", "RollbackFlag",
            "ReconcileTotals", "RebuildAllRuns")}),
    # The run event stream (service/run_events.py): without a policy, the admin token.
    **_table("potato.runs.v2.RunEventsService", {"WatchRunEvents": Role.EVENTS_WATCH}),
}
"""The one table: every method of every service we register -> the role it needs.
Registration refuses a method missing here (and a test checks every descriptor)."""

OPEN_WITHOUT_POLICY = frozenset({Role.RUNS_READ, Role.RUNS_WRITE})
"""Without a policy file, methods needing these roles are open to anyone (and unguarded);
the others (admin, events.watch) take the admin token, as before policies existed."""

ADMIN_TOKEN_NAME = "admin-token"
ANONYMOUS = "anonymous"
ADMIN_TOKEN_ROLES_WITHOUT_POLICY = frozenset({Role.ADMIN, Role.EVENTS_WATCH})
ADMIN_TOKEN_ROLES_WITH_POLICY = frozenset({Role.ADMIN})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class PolicyError(ValueError):
    """The policy file is unreadable or invalid; the message is one line naming the
    problem (and never a token)."""


# ------------------------------------------------------------------ the file (YAML)
class IdentityEntry(BaseModel):
    """One caller: a name (what the logs show), exactly one credential, its roles."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    token_sha256: str | None = None
    """Hex SHA-256 of the bearer token (`printf %s "$TOKEN" | sha256sum`); never the token."""
    uri: str | None = None
    """A SAN URI of the client certificate, e.g. spiffe://potato.example/ns/prod/sa/web."""
    dns: str | None = None
    """A SAN DNS name of the client certificate (case-insensitive, exact; no wildcards)."""
    roles: list[Role] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be 1-128 characters: letters, digits and . _ : @ / - "
                             "(starting with a letter or digit)")
        if value in (ADMIN_TOKEN_NAME, ANONYMOUS):
            raise ValueError(f"{value!r} is reserved")
        return value

    @field_validator("token_sha256")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not _HEX64.fullmatch(value):
            raise ValueError("must be 64 hex digits (the SHA-256 of the token), not the token")
        return value

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and ("://" not in value or any(c.isspace() for c in value)):
            raise ValueError("must be a URI such as spiffe://trust.domain/workload")
        return value

    @field_validator("dns")
    @classmethod
    def _dns(cls, value: str | None) -> str | None:
        return None if value is None else normalize_dns(value)

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, value: list[Role]) -> list[Role]:
        if len(set(value)) != len(value):
            raise ValueError("lists a role twice")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> IdentityEntry:
        given = [k for k in ("token_sha256", "uri", "dns") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("needs exactly one of token_sha256, uri, dns"
                             + (f" (has {', '.join(given)})" if given else ""))
        return self

    @property
    def credential(self) -> tuple[str, str]:
        for key in ("token_sha256", "uri", "dns"):
            value = getattr(self, key)
            if value is not None:
                return key, value
        raise AssertionError("validated: one credential")


class PolicyFile(BaseModel):
    """The policy file: `identities`, and whether the admin token keeps `admin`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    admin_token: bool = True
    """The server's admin token (POTATO_ADMIN_TOKEN or <data-dir>/admin.token, which the
    operator CLI sends) is the identity `admin-token` with the role `admin`; false turns
    that off, so that only the identities below can call AdminService."""
    identities: list[IdentityEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _no_duplicates(self) -> PolicyFile:
        names: set[str] = set()
        credentials: dict[tuple[str, str], str] = {}
        for entry in self.identities:
            if entry.name in names:
                raise ValueError(f"identity name {entry.name!r} appears twice")
            names.add(entry.name)
            key = entry.credential
            if key in credentials:
                what = "token_sha256" if key[0] == "token_sha256" else f"{key[0]} {key[1]!r}"
                raise ValueError(f"identities {credentials[key]!r} and {entry.name!r} have "
                                 f"the same {what}")
            credentials[key] = entry.name
        return self


def normalize_dns(name: str) -> str:
    return name.strip().rstrip(".").lower()


def token_digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


# ------------------------------------------------------------------ compiled rules
@dataclass(frozen=True)
class Identity:
    name: str
    roles: frozenset[Role]
    credential: str
    """How it was recognised: "token", "uri" or "dns" (for the logs)."""


class Decision(StrEnum):
    ALLOW = "allow"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"


@dataclass(frozen=True)
class AccessRules:
    """A policy ready to answer calls. `policy` is False without a policy file: then
    only the admin token is an identity (roles admin and events.watch) and methods in
    OPEN_WITHOUT_POLICY are not checked at all."""

    policy: bool
    tokens: tuple[tuple[bytes, Identity], ...]
    uris: Mapping[str, tuple[int, Identity]]
    dns: Mapping[str, tuple[int, Identity]]

    @property
    def identities(self) -> int:
        return len(self.tokens) + len(self.uris) + len(self.dns)

    @property
    def has_certificates(self) -> bool:
        return bool(self.uris or self.dns)

    def identify(self, token: bytes | None, uris: Iterable[str] = (),
                 dns: Iterable[str] = ()) -> Identity | None:
        """The caller's identity: the bearer token's when the token is known, else the
        client certificate's (a certificate stays valid whatever token came along, e.g.
        a stale one the CLI found), else None."""
        identity = self.by_token(token) if token is not None else None
        return identity if identity is not None else self.by_certificate(uris, dns)

    def by_token(self, token: bytes) -> Identity | None:
        """Compared by digest in constant time, against every entry (no early exit, so
        the time depends on the number of entries only)."""
        given = token_digest(token)
        found = None
        for digest, identity in self.tokens:
            if hmac.compare_digest(given, digest):
                found = identity
        return found

    def by_certificate(self, uris: Iterable[str], dns: Iterable[str]) -> Identity | None:
        """The identity of a SAN URI or DNS name; when several match, the earliest in
        the file wins."""
        best: tuple[int, Identity] | None = None
        for match in [self.uris.get(u) for u in uris] + \
                [self.dns.get(normalize_dns(d)) for d in dns]:
            if match is not None and (best is None or match[0] < best[0]):
                best = match
        return None if best is None else best[1]


def decide(identity: Identity | None, role: Role) -> Decision:
    if identity is None:
        return Decision.UNAUTHENTICATED
    return Decision.ALLOW if role in identity.roles else Decision.PERMISSION_DENIED


def compile_rules(policy: PolicyFile | None, admin_token: bytes | None) -> AccessRules:
    """The rules for a policy (None: no policy file) and the server's admin token (None:
    not known yet, nobody holds it)."""
    tokens: list[tuple[bytes, Identity]] = []
    if admin_token is not None and (policy is None or policy.admin_token):
        roles = ADMIN_TOKEN_ROLES_WITHOUT_POLICY if policy is None \
            else ADMIN_TOKEN_ROLES_WITH_POLICY
        tokens.append((token_digest(admin_token), Identity(ADMIN_TOKEN_NAME, roles, "token")))
    uris: dict[str, tuple[int, Identity]] = {}
    dns: dict[str, tuple[int, Identity]] = {}
    admin_digest = None if admin_token is None else token_digest(admin_token)
    for index, entry in enumerate(policy.identities if policy else ()):
        kind, value = entry.credential
        identity = Identity(entry.name, frozenset(entry.roles),
                            "token" if kind == "token_sha256" else kind)
        if kind == "token_sha256":
            digest = bytes.fromhex(value)
            if admin_digest is not None and hmac.compare_digest(digest, admin_digest):
                raise PolicyError(f"identity {entry.name!r}: token_sha256 is the hash of the "
                                  f"server's admin token, which is already the identity "
                                  f"{ADMIN_TOKEN_NAME!r}; give this client a token of its own")
            tokens.append((digest, identity))
        elif kind == "uri":
            uris[value] = (index, identity)
        else:
            dns[value] = (index, identity)
    return AccessRules(policy is not None, tuple(tokens), uris, dns)


def parse_policy(text: str) -> PolicyFile:
    """YAML text -> PolicyFile (yaml.safe_load), or PolicyError naming the first problem."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise PolicyError(f"not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError("must be a mapping with the key `identities`")
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
        raise PolicyError(f"{_where(err['loc'], data)}: {_message(err)}{more}") from None


def _message(err: Mapping[str, Any]) -> str:
    message = str(err["msg"])
    if err.get("type") == "extra_forbidden":
        return "unknown key"
    if err.get("type") == "enum":
        return f"unknown role {err.get('input')!r} (roles: " \
               f"{', '.join(r.value for r in Role)})"
    return message.removeprefix("Value error, ")


def _where(loc: Sequence[int | str], data: Any) -> str:
    """`identities[2] ('web').roles[0]`: the path of a problem, naming the identity."""
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int):
            parts[-1] += f"[{key}]"
            try:
                node = node[key]
            except (IndexError, KeyError, TypeError):
                node = None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                parts[-1] += f" ({node['name']!r})"
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "policy"
