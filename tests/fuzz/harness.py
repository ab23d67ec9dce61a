"""Sends fuzzed requests to a real server and judges every answer.

Requests go through one generic `unary_unary` per method with identity serializers, so
a message and raw garbage travel the same way, and the response bytes are decoded here
(a response that does not decode is reported as such, not as a client-side INTERNAL).

The rules every answer must follow:
- never INTERNAL or UNKNOWN (nor CANCELLED, UNIMPLEMENTED, DATA_LOSS: nothing cancels and
  every method exists);
- every error carries a google.rpc.Status in `grpc-status-details-bin` whose code is the
  call's, with a google.rpc.ErrorInfo (domain runs.potato.app, a known reason);
- INVALID_ARGUMENT other than MALFORMED_REQUEST (undecodable bytes, where no field is at
  fault) also carries a BadRequest whose violations name fields of the request;
- an OK response is well-formed (`check_response`).
"""

from __future__ import annotations

import collections
import datetime as dt
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from fuzz.strategies import OBSERVED, TODAY, Method
from potato_runs.domain.errors import Reason
from potato_runs.domain.model import LAUNCH_DATE
from potato_runs.domain.rules import EARLIEST_ADMIN_DATE, LATEST_ADMIN_DATE
from support import ADMIN_METADATA

ERROR_DOMAIN = "runs.potato.app"
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS}
KNOWN_REASONS = {r.value for r in Reason}
SERVER_MAX_MESSAGE = 4 * 2**20
"""gRPC's default receive limit, which the server keeps."""
CALL_TIMEOUT = 120.0
"""Generous: the fuzz judges status codes, not speed; a client-side expiry would hide them."""
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_MONTH = re.compile(r"^[0-9]{4}-[0-9]{2}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class Stats:
    """Every request the fuzz sent, by method and outcome (printed at the end)."""

    requests: int = 0
    garbage: int = 0
    seconds: float = 0.0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    per_method: collections.Counter[str] = field(default_factory=collections.Counter)
    methods_done: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (f"fuzz: {self.requests} requests ({self.garbage} of them raw bytes) in "
                f"{self.seconds:.1f} s of sending ({rate:.0f}/s); codes {dict(self.codes)}; "
                f"reasons {dict(self.reasons.most_common(12))}")


STATS = Stats()


@dataclass(frozen=True)
class Sent:
    method: Method
    payload: bytes
    request: Message | None
    """The message sent, or what the bytes decode to (None when they do not decode)."""
    metadata: tuple[tuple[str, str], ...]


def _violation(sent: Sent, text: str) -> AssertionError:
    req = repr(sent.request)[:600] if sent.request is not None else sent.payload[:200].hex()
    return AssertionError(f"{sent.method}: {text}\n  request: {req}\n  metadata: "
                          f"{[k for k, _ in sent.metadata]}")


def _status(exc: grpc.Call) -> tuple[status_pb2.Status | None, error_details_pb2.ErrorInfo | None,
                                     error_details_pb2.BadRequest | None]:
    raw = next((v for k, v in exc.trailing_metadata() or () if k == "grpc-status-details-bin"),
               None)
    if raw is None:
        return None, None, None
    status = status_pb2.Status.FromString(raw)
    info = bad = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return status, info, bad


def check_error(sent: Sent, exc: grpc.Call) -> str:
    """Judges a failed call; returns its ErrorInfo reason."""
    code = exc.code()
    if (code == grpc.StatusCode.RESOURCE_EXHAUSTED and len(sent.payload) > SERVER_MAX_MESSAGE
            and "larger than max" in (exc.details() or "")):
        return "MESSAGE_TOO_LARGE"   # refused by gRPC itself before any of our code runs
    if code in FORBIDDEN:
        raise _violation(sent, f"status {code.name}: {exc.details()}")
    status, info, bad = _status(exc)
    if status is None or info is None:
        raise _violation(sent, f"{code.name} without a google.rpc.Status/ErrorInfo: "
                               f"{exc.details()}")
    if status.code != code.value[0]:
        raise _violation(sent, f"status details say {status.code}, the call {code.name}")
    if info.domain != ERROR_DOMAIN or info.reason not in KNOWN_REASONS:
        raise _violation(sent, f"ErrorInfo {info.domain}/{info.reason} is not ours")
    if code == grpc.StatusCode.INVALID_ARGUMENT and info.reason != Reason.MALFORMED_REQUEST:
        if bad is None or not bad.field_violations:
            raise _violation(sent, f"INVALID_ARGUMENT {info.reason} without a BadRequest")
        desc = sent.method.request.DESCRIPTOR
        fields = set(desc.fields_by_name) | set(desc.oneofs_by_name) | {"request"}
        for v in bad.field_violations:
            root = re.split(r"[.\[]", v.field, maxsplit=1)[0]
            if root not in fields or not v.reason or v.reason not in KNOWN_REASONS:
                raise _violation(sent, f"field violation {v.field!r}/{v.reason!r} names no "
                                       f"field of the request")
    return info.reason


def _check_date(sent: Sent, where: str, value: str, lo: dt.date, hi: dt.date) -> dt.date:
    if not _DATE.match(value):
        raise _violation(sent, f"{where} = {value!r} is not YYYY-MM-DD")
    day = dt.date.fromisoformat(value)
    if not lo <= day <= hi:
        raise _violation(sent, f"{where} = {value} is outside {lo}..{hi}")
    return day


def check_response(sent: Sent, msg: Message, where: str = "") -> None:
    """Well-formed: dates are real dates no earlier than the launch and no later than
    tomorrow (a date marked east of UTC; a rebuilt range echoes the operator's range, so
    only its admin bounds apply), runs have day_count = end - start + 1, user ids
    are canonical UUIDs, counts are not negative, months are YYYY-MM; then per method."""
    late = TODAY + dt.timedelta(days=2)
    desc = msg.DESCRIPTOR
    if desc.name == "Run":
        start = _check_date(sent, f"{where}start_date", msg.start_date,
                            LAUNCH_DATE, late)
        end = _check_date(sent, f"{where}end_date", msg.end_date, LAUNCH_DATE, late)
        if msg.day_count != (end - start).days + 1 or end < start:
            raise _violation(sent, f"{where}run {start}..{end} has day_count "
                                   f"{msg.day_count}")
    for f, value in msg.ListFields():
        path = f"{where}{f.name}"
        values = list(value) if f.is_repeated else [value]
        for i, v in enumerate(values):
            at = f"{path}[{i}]" if f.is_repeated else path
            if f.type == f.TYPE_MESSAGE:
                check_response(sent, v, at + ".")
            elif f.type == f.TYPE_STRING:
                if f.name.startswith("rebuilt_") and v:   # the (widened) requested range
                    _check_date(sent, at, v, EARLIEST_ADMIN_DATE, LATEST_ADMIN_DATE)
                elif f.name.endswith("date") and v:
                    _check_date(sent, at, v, LAUNCH_DATE, late)
                elif (f.name.endswith("user_id") or f.name.endswith("user_ids")) and v:
                    if not _UUID.match(v):
                        raise _violation(sent, f"{at} = {v!r} is not a canonical UUID")
                elif f.name == "month" and not _MONTH.match(v):
                    raise _violation(sent, f"{at} = {v!r} is not YYYY-MM")
                elif f.name == "next_page_token" and (len(v) > 512 or not v.isascii()):
                    raise _violation(sent, f"{at} is not a short ASCII token")
            elif f.type in (f.TYPE_INT32, f.TYPE_INT64) and v < 0:
                raise _violation(sent, f"{at} = {v} is negative")
    if where or sent.request is None:
        return
    name, req = sent.method.name, sent.request
    runs = list(getattr(msg, "runs", ()))
    if name == "ListRuns" and runs:
        ends = [r.end_date for r in runs]
        if ends != sorted(ends, reverse=True) or len(set(ends)) != len(ends):
            raise _violation(sent, f"runs are not newest first: {ends}")
        if sum(r.active for r in runs) > 1:
            raise _violation(sent, "more than one active run")
        size = getattr(req, "page_size", 0) or getattr(req, "limit", 0)
        if 0 < size <= 500 and len(runs) > size:
            raise _violation(sent, f"{len(runs)} runs for page_size/limit {size}")
    if name == "RebuildUserRuns" and msg.rebuilt_from_date > msg.rebuilt_to_date:  # type: ignore[attr-defined]
        raise _violation(sent, "rebuilt_from_date is after rebuilt_to_date")
    if name == "BackfillDays" and msg.added_days > len(set(req.local_dates)):  # type: ignore[attr-defined]
        raise _violation(sent, f"added_days {msg.added_days} > the distinct dates sent")  # type: ignore[attr-defined]


class Fuzzer:
    """A synchronous channel to the server and the judge of every answer."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 * 2**20),
                             ("grpc.max_send_message_length", 64 * 2**20)])
        self._calls: dict[str, Any] = {}

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Method) -> Any:
        if method.path not in self._calls:
            self._calls[method.path] = self.channel.unary_unary(
                method.path, request_serializer=None, response_deserializer=None)
        return self._calls[method.path]

    def send(self, batch: Sequence[Sent], garbage: bool = False) -> None:
        """Sends the batch concurrently and judges every answer (the first broken rule
        raises, after every answer arrived)."""
        started = time.perf_counter()
        futures = [self._call(s.method).future(s.payload, timeout=CALL_TIMEOUT,
                                               metadata=s.metadata or None) for s in batch]
        failures: list[AssertionError] = []
        outcomes: list[tuple[str, str, str]] = []
        for sent, fut in zip(batch, futures, strict=True):
            try:
                raw = fut.result()
            except grpc.RpcError as exc:
                try:
                    reason = check_error(sent, exc)  # type: ignore[arg-type]
                    outcomes.append((str(sent.method), exc.code().name, reason))  # type: ignore[attr-defined]
                except AssertionError as err:
                    failures.append(err)
                continue
            try:
                response = sent.method.response.FromString(raw)
            except DecodeError as exc:
                failures.append(_violation(sent, f"the response does not decode: {exc}"))
                continue
            try:
                check_response(sent, response)
                OBSERVED.remember(sent.method, sent.request, response)
                outcomes.append((str(sent.method), "OK", ""))
            except AssertionError as err:
                failures.append(err)
        with STATS.lock:
            STATS.seconds += time.perf_counter() - started
            STATS.requests += len(batch)
            STATS.garbage += len(batch) if garbage else 0
            for method, code, reason in outcomes:
                STATS.codes[code] += 1
                STATS.per_method[method] += 1
                if reason:
                    STATS.reasons[reason] += 1
        if failures:
            raise failures[0]


def metadata_for(method: Method, auth: int) -> tuple[tuple[str, str], ...]:
    """AdminService calls carry the admin token, except one in 16 (none, or a wrong one:
    UNAUTHENTICATED must be as well-formed as any error); others carry nothing."""
    if not method.admin:
        return ()
    if auth == 7:   # mid-range values: hypothesis favours the ends of a range
        return ()
    if auth == 8:
        return (("authorization", "Bearer not-the-token-" + uuid.uuid4().hex),)
    return ADMIN_METADATA
