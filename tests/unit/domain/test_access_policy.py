"""The access policy model and decision: the file format, its refusals, identification
and the per-role decision (pure: no server)."""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf.descriptor import ServiceDescriptor

from potato.runs.v1 import runs_service_pb2 as v1_pb2
from potato.runs.v2 import (
    admin_service_pb2,
    run_events_service_pb2,
    runs_service_pb2,
    totals_service_pb2,
)
from potato_runs.domain.access_policy import (
    ADMIN_TOKEN_NAME,
    METHOD_ROLES,
    Decision,
    Identity,
    PolicyError,
    Role,
    compile_rules,
    decide,
    parse_policy,
)

READER = b"reader-token-0123456789"
ADMIN = b"the-admin-token-0123456789"


def sha(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


POLICY = f"""
identities:
  - name: reporting
    token_sha256: {sha(READER)}
    roles: [runs.read]
  - name: web
    uri: spiffe://potato.test/web
    roles: [runs.read, runs.write]
  - name: ops
    dns: Ops.Potato.Test.
    roles: [admin]
  - name: web-by-dns
    dns: web.potato.test
    roles: [runs.read]
"""


def registered_services() -> list[ServiceDescriptor]:
    return [runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"],
            v1_pb2.DESCRIPTOR.services_by_name["RunsService"],
            totals_service_pb2.DESCRIPTOR.services_by_name["TotalsService"],
            admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
            run_events_service_pb2.DESCRIPTOR.services_by_name["RunEventsService"]]


def test_every_method_of_every_service_has_one_role() -> None:
    """A new RPC cannot be served unmapped (registration refuses it too)."""
    missing = [f"/{s.full_name}/{m.name}" for s in registered_services() for m in s.methods
               if f"/{s.full_name}/{m.name}" not in METHOD_ROLES]
    assert missing == []
    served = {f"/{s.full_name}/{m.name}" for s in registered_services() for m in s.methods}
    assert set(METHOD_ROLES) == served
    assert METHOD_ROLES["/potato.runs.v2.RunsService/MarkDay"] is Role.RUNS_WRITE
    assert METHOD_ROLES["/potato.runs.v2.RunsService/GetActiveRun"] is Role.RUNS_READ
    assert METHOD_ROLES["/potato.runs.v1.RunsService/UnmarkDay"] is Role.RUNS_WRITE
    assert METHOD_ROLES["/potato.runs.v2.TotalsService/GetTotals"] is Role.RUNS_READ
    assert METHOD_ROLES["/potato.runs.v2.RunEventsService/WatchRunEvents"] is Role.EVENTS_WATCH
    assert {role for name, role in METHOD_ROLES.items()
            if name.startswith("/potato.runs.v2.AdminService/")} == {Role.ADMIN}


def test_identification_by_token_uri_and_dns() -> None:
    rules = compile_rules(parse_policy(POLICY), ADMIN)
    reader = rules.identify(READER)
    assert reader is not None and reader.name == "reporting" and reader.credential == "token"
    assert rules.identify(b"someone-else") is None
    web = rules.identify(None, ["spiffe://potato.test/web"], [])
    assert web is not None and web.name == "web" and web.credential == "uri"
    ops = rules.identify(None, [], ["ops.potato.test"])   # DNS is case-insensitive
    assert ops is not None and ops.name == "ops" and ops.credential == "dns"
    assert rules.identify(None, ["spiffe://potato.test/other"], ["x.test"]) is None
    # Several names match: the earliest identity in the file wins.
    both = rules.identify(None, ["spiffe://potato.test/web"], ["web.potato.test"])
    assert both is not None and both.name == "web"
    # A known token wins over the certificate; an unknown token leaves the certificate.
    both_creds = rules.identify(READER, ["spiffe://potato.test/web"], [])
    assert both_creds is not None and both_creds.name == "reporting"
    cert = rules.identify(b"unknown", ["spiffe://potato.test/web"], [])
    assert cert is not None and cert.name == "web"
    assert rules.identify(b"unknown", ["spiffe://potato.test/other"], []) is None


def test_admin_token_keeps_admin_under_a_policy_unless_turned_off() -> None:
    admin = compile_rules(parse_policy(POLICY), ADMIN).identify(ADMIN)
    assert admin == Identity(ADMIN_TOKEN_NAME, frozenset({Role.ADMIN}), "token")
    off = compile_rules(parse_policy("admin_token: false\n" + POLICY), ADMIN)
    assert off.identify(ADMIN) is None
    # Without a policy the admin token also guards the event stream, as before.
    none = compile_rules(None, ADMIN).identify(ADMIN)
    assert none is not None and none.roles == {Role.ADMIN, Role.EVENTS_WATCH}
    assert compile_rules(None, None).identify(ADMIN) is None


def test_decide() -> None:
    reader = Identity("r", frozenset({Role.RUNS_READ}), "token")
    assert decide(reader, Role.RUNS_READ) is Decision.ALLOW
    assert decide(reader, Role.RUNS_WRITE) is Decision.PERMISSION_DENIED
    assert decide(None, Role.RUNS_READ) is Decision.UNAUTHENTICATED
    nobody = Identity("n", frozenset(), "dns")
    assert decide(nobody, Role.ADMIN) is Decision.PERMISSION_DENIED


def test_an_empty_policy_knows_only_the_admin_token() -> None:
    rules = compile_rules(parse_policy(""), ADMIN)
    assert rules.policy and rules.identities == 1 and not rules.has_certificates
    assert rules.identify(READER) is None


@pytest.mark.parametrize(("text", "problem"), [
    ("identities: [{name: a, token_sha256: " + sha(b"x") + ", roles: [runs.read]}]\n"
     "extra: 1", "extra: unknown key"),
    ("identities: [{name: a, dns: a.test, roles: [runs.read], color: red}]",
     "identities[0] ('a').color: unknown key"),
    ("identities: [{name: a, dns: a.test, roles: [runs.delete]}]",
     "identities[0] ('a').roles[0]: unknown role 'runs.delete'"),
    ("identities: [{name: a, dns: a.test, roles: [admin]}, {name: b, dns: A.test, "
     "roles: [admin]}]", "identities 'a' and 'b' have the same dns 'a.test'"),
    ("identities: [{name: a, uri: 'spiffe://x/y'}, {name: a, dns: b.test}]",
     "identity name 'a' appears twice"),
    ("identities: [{name: a, token_sha256: " + sha(b"x") + "}, {name: b, token_sha256: "
     + sha(b"x").upper() + "}]", "identities 'a' and 'b' have the same token_sha256"),
    ("identities: [{name: a, token_sha256: my-secret-token}]",
     "must be 64 hex digits"),
    ("identities: [{name: a, uri: 'spiffe://x/y', dns: b.test}]",
     "needs exactly one of token_sha256, uri, dns (has uri, dns)"),
    ("identities: [{name: a}]", "needs exactly one of token_sha256, uri, dns"),
    ("identities: [{name: admin-token, dns: b.test}]", "'admin-token' is reserved"),
    ("identities: [{name: a, uri: not-a-uri}]", "must be a URI"),
    ("identities: [{name: a, dns: a.test, roles: [admin, admin]}]", "lists a role twice"),
    ("- just\n- a list", "must be a mapping"),
    ("identities: [unclosed", "not valid YAML at line"),
    ("admin_token: maybe", "admin_token: Input should be a valid boolean"),
])
def test_invalid_policies_are_refused_in_one_line(text: str, problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(text)
    message = str(err.value)
    assert problem in message and "\n" not in message


def test_the_admin_token_cannot_be_a_policy_identity() -> None:
    policy = parse_policy(f"identities: [{{name: a, token_sha256: {sha(ADMIN)}, "
                          f"roles: [runs.read]}}]")
    with pytest.raises(PolicyError, match="hash of the server's admin token"):
        compile_rules(policy, ADMIN)
    assert compile_rules(policy, None).identify(ADMIN) is not None   # not known yet


def test_yaml_tags_are_not_executed() -> None:
    """safe_load: a python tag is a YAML error, never an object."""
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policy("identities: !!python/object/apply:os.system ['true']")
