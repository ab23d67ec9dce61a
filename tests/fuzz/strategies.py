"""Hypothesis strategies for every request message of every RPC we register, built by
walking the protobuf descriptors, so a new RPC or field is fuzzed without editing this
file.

Each field gets values chosen by its name and type: mostly values from the domain (user
ids from a small pool so writes merge with earlier ones, dates near today and near the
launch date, IANA zones, page tokens that earlier responses returned, small and huge page
sizes), and about one in four hostile ones (empty, long, non-ASCII, NUL, odd unicode,
0001-01-01 and 9999-12-31, negative and maximal numbers, unknown enum values, repeated
fields of 0..600 items with duplicates). `garbage` builds raw bytes sent as a request:
random bytes and valid encodings that were cut, flipped, or given invalid UTF-8, wrong
wire types and overlong varints.

Page tokens come from `OBSERVED`, which the harness fills with what responses returned;
a hypothesis replay of such an example can therefore draw a different token (the pool
depends on earlier calls), which a fuzz accepts.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from potato.runs.v1 import runs_service_pb2 as v1_pb
from potato.runs.v2 import admin_service_pb2, runs_service_pb2, totals_service_pb2
from potato_runs.domain.model import LAUNCH_DATE
from potato_runs.domain.rules import region_zones
from support import DEFAULT_NOW

SERVICES: tuple[ServiceDescriptor, ...] = (
    runs_service_pb2.DESCRIPTOR.services_by_name["RunsService"],
    totals_service_pb2.DESCRIPTOR.services_by_name["TotalsService"],
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
    v1_pb.DESCRIPTOR.services_by_name["RunsService"],
)
"""Every service the server registers besides health and reflection (the fuzz test checks
this list against the server's reflection, so a new service cannot be left out)."""
ADMIN_SERVICE = "potato.runs.v2.AdminService"

TODAY = DEFAULT_NOW.date()
LAUNCH = LAUNCH_DATE
SPAN_DAYS = (TODAY - LAUNCH).days
USERS = tuple(str(uuid.uuid5(uuid.NAMESPACE_URL, f"potato-fuzz-user-{i}")) for i in range(24))
"""A small pool, so writes land on users with history (merges, splits, pages)."""
REQUEST_IDS = tuple(str(uuid.uuid5(uuid.NAMESPACE_URL, f"potato-fuzz-rid-{i}")) for i in range(6))
"""A small pool, so request ids are reused: replays and ALREADY_EXISTS."""
KNOWN_FLAGS = ("ff.potato.runs_v2", "ff.potato.totals_v2")
MASK_PATHS = ("enabled", "rollout_percent", "shadow_percent", "allow_user_ids", "deny_user_ids")


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    path: str
    request: type[Message]
    response: type[Message]

    @property
    def admin(self) -> bool:
        return self.service == ADMIN_SERVICE

    def __str__(self) -> str:
        return f"{self.service.rsplit('.', 2)[-2]}.{self.service.rsplit('.', 1)[-1]}.{self.name}"


METHODS: tuple[Method, ...] = tuple(
    Method(service=s.full_name, name=m.name, path=f"/{s.full_name}/{m.name}",
           request=message_factory.GetMessageClass(m.input_type),
           response=message_factory.GetMessageClass(m.output_type))
    for s in SERVICES for m in s.methods)


@dataclass
class Observed:
    """What earlier responses returned, for later requests to reuse (real page tokens)."""

    tokens: list[str] = field(default_factory=list)
    continuations: dict[str, list[bytes]] = field(default_factory=dict)
    """Per method path: earlier requests with page_token set to the token they got back."""

    def remember(self, method: Method, request: Message | None, response: Message) -> None:
        token = getattr(response, "next_page_token", "")
        if not token:
            return
        self.tokens.append(token)
        del self.tokens[:-500]
        if request is not None and "page_token" in request.DESCRIPTOR.fields_by_name:
            follow = type(request)()
            follow.CopyFrom(request)
            follow.page_token = token   # type: ignore[attr-defined]
            pool = self.continuations.setdefault(method.path, [])
            pool.append(follow.SerializeToString())
            del pool[:-200]


OBSERVED = Observed()


# -- scalar values ------------------------------------------------------------------

def _iso(d: dt.date) -> str:
    return d.isoformat()


ODD_TEXT = ("", " ", "\x00", "a\x00b", "\t\n", "\u202e\u202d", "\ufeff", "\u200b", "\U0001f4a5",
            "\U0001d518\U0001d51e", "e\u0301", "\uffff", "\U0010ffff", "null", "' OR 1=1 --",
            "%s%n%x", "../../etc/passwd", "${jndi:x}", "-1", "NaN", "\\", '"', "\x7f",
            "\u0660\u0661", "\uff12\uff10\uff12\uff15")
HOSTILE_TEXT = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=80),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=200, max_size=2000),
    st.tuples(st.sampled_from(["a", "\u00e9", "\x00", "\U0001f4a5", "9"]),
              st.integers(1_000, 70_000)).map(lambda t: t[0] * t[1]),
)
"""Text no field should accept as-is (surrogates are excluded: they cannot be encoded)."""


_CALM: list[bool] = [False]
"""True while a message drawn as "calm" fills its fields: domain values only, so about
half the requests are valid as a whole (writes land, pages continue) instead of almost
every one failing on one of its several fields."""


def biased(domain: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any],
           one_in: int = 4) -> st.SearchStrategy[Any]:
    """Mostly `domain`, one draw in `one_in` from `hostile` (none in a calm message). The
    integer is drawn either way, so a replay draws the same kinds of values."""
    return st.integers(0, one_in - 1).flatmap(
        lambda i: hostile if i == 0 and not _CALM[-1] else domain)


DOMAIN_DATES = st.one_of(
    st.integers(-3, 3).map(lambda k: TODAY + dt.timedelta(days=k)),
    st.integers(-3, 3).map(lambda k: LAUNCH + dt.timedelta(days=k)),
    st.integers(0, 150).map(lambda k: TODAY - dt.timedelta(days=k)),
    st.integers(0, SPAN_DAYS).map(lambda k: LAUNCH + dt.timedelta(days=k)),
).map(_iso)
HOSTILE_DATES = st.one_of(
    st.sampled_from(["", "9999-12-31", "0001-01-01", "0000-01-01", "2025-02-29", "2028-02-29",
                     "2025-13-01", "2025-00-10", "2025-1-1", "20250101", "2025-01-01T00:00",
                     " 2025-01-01", "2025-01-01\x00", "\uff12\uff10\uff12\uff15-01-01",
                     "\u0662\u0660\u0662\u0665-01-01", "+2025-01-01", "2025-W01-1"]),
    st.dates().map(_iso),
    HOSTILE_TEXT,
)
DATES = biased(DOMAIN_DATES, HOSTILE_DATES)


def _run_of_dates(start: int, n: int, dupes: bool) -> list[str]:
    days = [_iso(LAUNCH + dt.timedelta(days=start + i)) for i in range(n)]
    return days + days[: n // 3] if dupes else days


DATE_LISTS = st.one_of(
    st.lists(DATES, max_size=8),
    st.tuples(st.integers(0, SPAN_DAYS), st.integers(0, 600), st.booleans()).map(
        lambda t: _run_of_dates(*t)),
    st.tuples(st.integers(0, 150), st.integers(1, 400)).map(      # recent: merges
        lambda t: [_iso(TODAY - dt.timedelta(days=t[0] + 2 * i)) for i in range(t[1])]),
)

UUIDS = biased(
    st.one_of(st.sampled_from(USERS), st.sampled_from(USERS).map(str.upper),
              st.uuids().map(str)),
    st.one_of(st.sampled_from(["", "00000000-0000-0000-0000-000000000000",
                               "ffffffff-ffff-ffff-ffff-ffffffffffff", "not-a-uuid"]),
              st.uuids().map(lambda u: "{" + str(u) + "}"),
              st.uuids().map(lambda u: u.urn), st.uuids().map(lambda u: u.hex),
              st.uuids().map(lambda u: f" {u}"), st.uuids().map(lambda u: f"{u}\x00"),
              st.uuids().map(lambda u: str(u).replace("1", "\u0661")),
              HOSTILE_TEXT))
REQUEST_ID_VALUES = biased(st.one_of(st.just(""), st.sampled_from(REQUEST_IDS),
                                     st.uuids().map(str)), UUIDS)
ZONE_NAMES = sorted(region_zones())
ZONES = biased(
    st.one_of(st.sampled_from(["UTC", "America/New_York", "Europe/Paris", "Asia/Kathmandu",
                               "Pacific/Kiritimati", "Pacific/Pago_Pago",
                               "Australia/Lord_Howe"]),
              st.sampled_from(ZONE_NAMES)),
    st.one_of(st.sampled_from(["", "CET", "EST", "EST5EDT", "localtime", "Factory", "posixrules",
                               "posix/Europe/Paris", "right/UTC", "america/new_york",
                               "America/New_York\x00", "Europe/Paris ", "+05:00", "UTC+5",
                               "Etc/GMT+14", "Etc/GMT-14", "/etc/passwd", "Europe/" * 20,
                               "Europe/Kyiv", "America/Ciudad_Juarez"]),
              HOSTILE_TEXT))


@st.composite
def _observed_token(draw: st.DrawFn) -> str:
    # The same draws whatever the pool holds: hypothesis requires a strategy to draw
    # the same kinds of values on replay (FlakyStrategyDefinition otherwise).
    pick, how, at = draw(st.integers(0, 10**6)), draw(st.integers(0, 5)), draw(st.integers(0, 999))
    if not OBSERVED.tokens:
        return ""
    token = OBSERVED.tokens[pick % len(OBSERVED.tokens)]
    if how == 0 and token:          # one character changed
        i = at % len(token)
        return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    if how == 1:
        return token[: len(token) // 2]
    return token


PAGE_TOKENS = biased(
    st.one_of(st.just(""), _observed_token()),
    st.one_of(st.sampled_from(["=", "====", "eyJ2IjoxfQ", "eyJ2IjoxLCJrIjoibW9udGhzIn0=",
                               "bnVsbA==", "W10=", "\x00", "A" * 300]),
              st.binary(max_size=64).map(lambda b: b.hex()), HOSTILE_TEXT))
MONTHS = biased(
    st.one_of(st.just(""), st.integers(-3, 27).map(   # months from 2024-10 to 2027-04
        lambda k: f"{2025 + k // 12:04d}-{k % 12 + 1:02d}")),
    st.one_of(st.sampled_from(["2025-13", "2025-00", "0000-01", "0001-01", "9999-12", "2025-1",
                               "2025-01-01", "\uff12\uff10\uff12\uff15-01", "202501"]),
              HOSTILE_TEXT))
FLAG_NAMES = biased(
    st.sampled_from([*KNOWN_FLAGS, "ff.fuzz.unknown"]),
    st.one_of(st.sampled_from(["", "FF.POTATO.RUNS_V2", "ff.", "ff..x", "ff.potato.runs_v2\x00",
                               "ff." + "a" * 300, "ff.potato.runs-v2"]), HOSTILE_TEXT))
FREE_TEXT = biased(st.one_of(st.sampled_from(["fuzz", "app", "import", ""]),
                           st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                   max_size=64)), HOSTILE_TEXT)
INT32_EDGES = (-(2**31), -1, 2**31 - 1, 2**31 - 2)
PAGE_SIZES = biased(st.one_of(st.sampled_from([0, 1, 2, 3, 10, 50, 499, 500, 501, 1000]),
                              st.integers(0, 600)),
                    st.sampled_from([*INT32_EDGES, 10_000, 10_001, -500]))
PERCENTS = biased(st.one_of(st.sampled_from([0.0, 0.01, 1.0, 33.33, 50.0, 99.99, 100.0]),
                            st.integers(0, 10_000).map(lambda bp: bp / 100)),
                  st.one_of(st.sampled_from([-0.0, -0.01, 0.005, 100.01, 1e308, 5e-324, math.nan,
                                             math.inf, -math.inf, 33.333]),
                            st.floats(allow_nan=True, allow_infinity=True)))
_MIN_TS, _MAX_TS = -62135596800, 253402300799   # 0001-01-01T00:00:00Z, 9999-12-31T23:59:59Z
_NOW_TS = int(DEFAULT_NOW.timestamp())
_LAUNCH_TS = int(dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp())


def _int_values(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    bits = 64 if f.type in (f.TYPE_INT64, f.TYPE_SINT64, f.TYPE_SFIXED64) else 32
    if f.type in (f.TYPE_UINT32, f.TYPE_FIXED32, f.TYPE_UINT64, f.TYPE_FIXED64):
        top = 2**bits - 1
        return st.one_of(st.integers(0, 1000), st.sampled_from([0, top]))
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if f.name in ("page_size", "limit"):
        return PAGE_SIZES
    if "hours" in f.name:
        return biased(st.sampled_from([0, 1, 24, 168, 2160]),
                      st.sampled_from([-1, 2161, *INT32_EDGES]))
    return biased(st.integers(0, 1000), st.one_of(st.sampled_from([lo, hi, -1]),
                                                  st.integers(lo, hi)))


def _timestamps(cls: type[Message]) -> st.SearchStrategy[Message]:
    seconds = biased(
        st.one_of(st.integers(_NOW_TS - 3 * 86400, _NOW_TS + 3 * 86400),
                  st.integers(_LAUNCH_TS - 3 * 86400, _LAUNCH_TS + 3 * 86400),
                  st.integers(_LAUNCH_TS, _NOW_TS)),
        st.one_of(st.sampled_from([_MIN_TS, _MAX_TS, _MIN_TS - 1, _MAX_TS + 1, 0, -(2**63),
                                   2**63 - 1]), st.integers(-(2**63), 2**63 - 1)))
    nanos = biased(st.integers(0, 999_999_999),
                   st.sampled_from([-1, 1_000_000_000, 2**31 - 1, -(2**31)]))
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)


def _field_masks(cls: type[Message]) -> st.SearchStrategy[Message]:
    path = biased(st.sampled_from([*MASK_PATHS, "*"]),
                  st.one_of(st.sampled_from(["name", "update_time", "flag.enabled", "",
                                             "enabled.x", "ENABLED", "allow_user_ids[0]"]),
                            HOSTILE_TEXT))
    return st.lists(path, max_size=8).map(lambda ps: cls(paths=ps))


def _strings(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    name = f.name
    if name == "request_id":
        return REQUEST_ID_VALUES
    if name.endswith("user_id") or name.endswith("user_ids"):
        return UUIDS
    if "date" in name:
        return DATES
    if name == "time_zone":
        return ZONES
    if name == "page_token":
        return PAGE_TOKENS
    if name.endswith("month"):
        return MONTHS
    if name in ("name", "flag"):
        return FLAG_NAMES
    if name == "paths":
        return _field_masks(message_factory.GetMessageClass(f.containing_type)).map(
            lambda m: m.paths[0] if m.paths else "")
    return FREE_TEXT


def _big_list(elem: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """0..600 items built from a few drawn ones (duplicates included): big lists cheaply."""
    return st.tuples(st.lists(elem, min_size=1, max_size=4), st.integers(0, 600)).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]])


def _scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = f.type
    if t == f.TYPE_STRING:
        return _strings(f)
    if t == f.TYPE_BYTES:
        return st.binary(max_size=256)
    if t == f.TYPE_BOOL:
        return st.booleans()
    if t in (f.TYPE_DOUBLE, f.TYPE_FLOAT):
        return PERCENTS if t == f.TYPE_DOUBLE else st.floats(width=32)
    if t == f.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        return biased(st.sampled_from(known),
                      st.sampled_from([max(known) + 1, -1, 2**31 - 1, -(2**31)]))
    if t == f.TYPE_MESSAGE:
        return message(f.message_type)
    return _int_values(f)


_FIELD_CACHE: dict[str, st.SearchStrategy[Any]] = {}


def _values(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    if f.full_name not in _FIELD_CACHE:
        _FIELD_CACHE[f.full_name] = _field_values(f)
    return _FIELD_CACHE[f.full_name]


def _field_values(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    if not f.is_repeated:
        return _scalar(f)
    if f.type == f.TYPE_STRING and "date" in f.name:
        return DATE_LISTS
    elem = _scalar(f)
    if f.type == f.TYPE_STRING:   # 600 strings of 70,000 characters would pass gRPC's 4 MiB
        elem = elem.map(lambda v: v[:2000])
    return st.one_of(st.lists(elem, max_size=6), _big_list(elem))


def _synthetic(oneof: Any) -> bool:
    """A proto3 `optional` field's oneof (named `_<field>`), not a real oneof."""
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


_CACHE: dict[str, st.SearchStrategy[Message]] = {}


def message(desc: Descriptor) -> st.SearchStrategy[Message]:
    """Any message of this type: each field set (most of the time) or left unset, one
    member (or none) of each real oneof, proto3 `optional` fields present or absent."""
    if desc.full_name in _CACHE:
        return _CACHE[desc.full_name]
    cls = message_factory.GetMessageClass(desc)
    if desc.full_name == "google.protobuf.Timestamp":
        return _CACHE.setdefault(desc.full_name, _timestamps(cls))
    if desc.full_name == "google.protobuf.FieldMask":
        return _CACHE.setdefault(desc.full_name, _field_masks(cls))
    oneofs = [o for o in desc.oneofs if not _synthetic(o)]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        _CALM.append(draw(st.booleans()))
        try:
            fill(draw, msg)
        finally:
            _CALM.pop()
        return msg

    def fill(draw: st.DrawFn, msg: Message) -> None:
        chosen = {draw(st.sampled_from([None, *o.fields])) for o in oneofs}
        for f in desc.fields:
            real_oneof = f.containing_oneof is not None and not _synthetic(f.containing_oneof)
            if real_oneof and f not in chosen:
                continue
            if not real_oneof and draw(st.integers(0, 9)) == 0:
                continue   # left unset
            value = draw(_values(f))
            target = getattr(msg, f.name) if f.is_repeated or f.type == f.TYPE_MESSAGE else None
            if f.is_repeated and f.type == f.TYPE_MESSAGE:
                for v in value:
                    target.add().CopyFrom(v)
            elif f.is_repeated:
                target.extend(value)
            elif f.type == f.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(msg, f.name, value)

    return _CACHE.setdefault(desc.full_name, build())


@st.composite
def _continuation(draw: st.DrawFn, method: Method) -> Message | None:
    pick = draw(st.integers(0, 10**6))   # drawn whatever the pool holds (see above)
    pool = OBSERVED.continuations.get(method.path)
    if not pool:
        return None
    return method.request.FromString(pool[pick % len(pool)])


def requests(method: Method) -> st.SearchStrategy[Message]:
    """Requests of a method: generated ones, and sometimes the next page of an earlier one
    (its real page token with the same request)."""
    generated = message(method.request.DESCRIPTOR)
    if "page_token" not in method.request.DESCRIPTOR.fields_by_name:
        return generated
    return st.tuples(generated, st.integers(0, 3), _continuation(method)).map(
        lambda t: t[2] if t[1] == 0 and t[2] is not None else t[0])


# -- raw bytes ----------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mutate(data: bytes, how: int, at: int, extra: bytes, number: int) -> bytes:
    i = at % (len(data) + 1)
    if how == 0:
        return data[:i]                                           # truncated
    if how == 1 and data:
        j = at % len(data)
        return data[:j] + bytes([data[j] ^ 0xFF]) + data[j + 1:]  # one byte flipped
    if how == 2:
        return data[:i] + extra + data[i:]                        # bytes inserted
    if how == 3:                                                  # invalid UTF-8 string
        bad = b"\xff\xfe\xc0\x80" + extra
        return data + _varint(number << 3 | 2) + _varint(len(bad)) + bad
    if how == 4:                                                  # wrong wire types
        return data + _varint(number << 3 | 0) + b"\x01" + _varint(number << 3 | 5) + b"\x00" * 4
    if how == 5:
        return data + b"\x08" + b"\xff" * 11                      # overlong varint
    if how == 6:
        return data + _varint(number << 3 | 2) + b"\xff\xff\xff\xff\x07" + extra  # length past end
    if how == 7:
        return data + _varint(number << 3 | 3) + extra            # unterminated group
    if how == 8:
        return data + _varint((2**29 - 1) << 3 | 0) + b"\x01"     # huge unknown field number
    return b"\x00" + data                                         # field number 0


def garbage(method: Method) -> st.SearchStrategy[bytes]:
    """Bytes sent as a request of `method` (through an identity serializer)."""
    numbers = [f.number for f in method.request.DESCRIPTOR.fields] or [1]
    mutated = st.tuples(message(method.request.DESCRIPTOR).map(lambda m: m.SerializeToString()),
                        st.integers(0, 9), st.integers(0, 10**6), st.binary(max_size=16),
                        st.sampled_from(numbers)).map(lambda t: _mutate(*t))
    return st.one_of(st.binary(max_size=64), st.binary(min_size=64, max_size=4096), mutated)

