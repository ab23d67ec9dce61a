"""Fuzz every RPC of every service the server registers (issue 8, item 8).

For each method (found by walking the descriptors, `fuzz/strategies.py`), hypothesis
builds batches of requests, valid and hostile, and sends each batch concurrently to a
real server on port 0 (its own database, `fuzz/conftest.py`); a second test sends raw
bytes as the request. Every answer is judged by `fuzz/harness.py` (never INTERNAL or
UNKNOWN, a rich status on every error, BadRequest when a field is at fault, well-formed
OK responses). After each method's examples the whole database is checked: no invariant
violation (AdminService.CheckInvariants), projection = rebuild (a dry-run
RebuildRunsBatch over every user finds no drift) and stored totals = computed totals.

Sizes follow POTATO_HYPOTHESIS_PROFILE: quick (CI: about 1,500 requests) or deep (at
least 100,000 requests, asserted by the last test when every method ran). The count is
printed at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import asyncpg
import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.harness import STATS, Fuzzer, Sent, metadata_for
from fuzz.strategies import METHODS, SERVICES, Method, garbage, requests
from potato.runs.v2 import admin_service_pb2 as admin_pb
from potato.runs.v2 import admin_service_pb2_grpc as admin_grpc
from support import ADMIN_METADATA, TOTALS_DRIFT, ServerThread

DEEP = os.environ.get("POTATO_HYPOTHESIS_PROFILE", "quick") == "deep"
BATCH = (2, 8) if DEEP else (1, 3)
"""Requests per example, sent concurrently (deep: 1000 examples x 22 methods x about 5)."""
GARBAGE_BATCH = (1, 3) if DEEP else (1, 2)
DEEP_MINIMUM = 100_000
FORCE_BATCH_CAP = 25

FUZZ_SETTINGS = settings(suppress_health_check=[
    HealthCheck.function_scoped_fixture,   # `checked_after` checks once, after all examples
    HealthCheck.data_too_large, HealthCheck.large_base_example, HealthCheck.too_slow])


def bound(method: Method, msg: Message) -> Message:
    """The one exclusion, bounded rather than skipped.

    RebuildRunsBatch with `force` replays every user of the page, each in its own locked
    transaction, on the admin pool's two connections: a page of 10,000 users (or 0, which
    means 500) over the fuzz population takes seconds per call, and the deep profile sends
    thousands. With force the page size is brought into 1..25; without force (set-based
    drift detection, nothing to replay) and negative sizes (refused) are sent as drawn."""
    if method.name == "RebuildRunsBatch":
        size = msg.page_size  # type: ignore[attr-defined]
        if msg.force and (size == 0 or size > FORCE_BATCH_CAP):  # type: ignore[attr-defined]
            msg.page_size = size % FORCE_BATCH_CAP + 1  # type: ignore[attr-defined]
    return msg


def _decoded(method: Method, payload: bytes) -> Message | None:
    try:
        return method.request.FromString(payload)
    except (DecodeError, UnicodeDecodeError, ValueError):
        return None


def assert_clean(server: ServerThread, fuzzer: Fuzzer) -> None:
    """No invariant violation, no user whose runs differ from a rebuild, no totals drift."""
    admin = admin_grpc.AdminServiceStub(fuzzer.channel)
    check = admin.CheckInvariants(admin_pb.CheckInvariantsRequest(limit=20),
                                  metadata=ADMIN_METADATA, timeout=600)
    assert list(check.violations) == [], check.violations
    token = ""
    while True:
        step = admin.RebuildRunsBatch(
            admin_pb.RebuildRunsBatchRequest(page_size=5000, page_token=token, dry_run=True),
            metadata=ADMIN_METADATA, timeout=600)
        assert list(step.drifted_users) == [] and list(step.failed_users) == [], step
        token = step.next_page_token
        if not token:
            break

    async def totals_drift() -> int:
        conn = await asyncpg.connect(server.dsn)
        try:
            return int(await conn.fetchval(TOTALS_DRIFT))
        finally:
            await conn.close()

    assert server.run(totals_drift()) == 0


@pytest.fixture
def checked_after(fuzz_server: ServerThread, fuzzer: Fuzzer,
                  request: pytest.FixtureRequest) -> Iterator[None]:
    """Runs the whole-database checks after a test's examples (a failure there is an error
    at teardown of the method that caused it: the write paths are checked before any later
    method's rebuilds or reconciliations could repair what they broke)."""
    yield None
    assert_clean(fuzz_server, fuzzer)
    STATS.methods_done.add(request.node.name)


@pytest.mark.parametrize("method", METHODS, ids=str)
@FUZZ_SETTINGS
@given(data=st.data())
def test_requests(method: Method, fuzzer: Fuzzer, checked_after: object,
                  data: st.DataObject) -> None:
    batch = []
    for _ in range(data.draw(st.integers(*BATCH), label="batch size")):
        msg = bound(method, data.draw(requests(method)))
        auth = metadata_for(method, data.draw(st.integers(0, 15), label="auth"))
        batch.append(Sent(method, msg.SerializeToString(), msg, auth))
    fuzzer.send(batch)


@pytest.mark.parametrize("method", METHODS, ids=str)
@FUZZ_SETTINGS
@given(data=st.data())
def test_raw_bytes(method: Method, fuzzer: Fuzzer, checked_after: object,
                   data: st.DataObject) -> None:
    batch = []
    for _ in range(data.draw(st.integers(*GARBAGE_BATCH), label="batch size")):
        payload = data.draw(garbage(method), label="payload")
        decoded = _decoded(method, payload)
        if decoded is not None and method.name == "RebuildRunsBatch":
            payload = bound(method, decoded).SerializeToString()
        auth = metadata_for(method, data.draw(st.integers(0, 15), label="auth"))
        batch.append(Sent(method, payload, decoded, auth))
    fuzzer.send(batch, garbage=True)


def test_every_registered_service_is_fuzzed(fuzz_server: ServerThread) -> None:
    """The server's reflection lists exactly our services besides health and reflection:
    a service registered later must join strategies.SERVICES."""
    with grpc.insecure_channel(fuzz_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(iter(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)))
    served = {s.name for s in answer.list_services_response.service}
    served -= {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
               "grpc.reflection.v1.ServerReflection"}
    # A server stream that never ends by itself does not fit this unary harness; its
    # request is fuzzed in tests/integration/test_run_events.py (raw bytes, bad fields).
    served -= {"potato.runs.v2.RunEventsService"}
    assert served == {s.full_name for s in SERVICES}


def test_deep_profile_sent_enough() -> None:
    """Last in the file: with the deep profile and every method fuzzed, at least
    100,000 requests went out."""
    if not DEEP:
        pytest.skip("the deep profile only (POTATO_HYPOTHESIS_PROFILE=deep)")
    if len(STATS.methods_done) < 2 * len(METHODS):
        pytest.skip("not every method was fuzzed in this run (-k?)")
    print(STATS.summary())
    assert STATS.requests >= DEEP_MINIMUM, STATS.summary()
