"""Request ids of writes (AIP-155): parsing, and the fingerprint of a request.

A client picks a request id (a UUID) once per logical write and sends it again on every
retry of that write. The server remembers, per user and id, a fingerprint of the request
and the response it gave (storage: `request_ids`, migration 0007): the same id with the
same request replays the response, with a different request it is ALREADY_EXISTS
(REQUEST_ID_REUSED).

The fingerprint is computed from the validated command, not from the request bytes: two
sendings of one request may serialize differently (field order, unknown fields, a
default written or omitted), and must still be "the same request".
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from potato_runs.domain.errors import Reason, ValidationCollector
from potato_runs.domain.rules import UUID_SHAPE, canonical_uuid, echo

FINGERPRINT_VERSION = 1
"""Part of every fingerprint: a change of the canonical form bumps it, so an id recorded
under the old form is never mistaken for (or refused as) a request of the new one."""


@dataclass(frozen=True)
class RequestKey:
    """What the write path needs to make a write happen once: the id and the fingerprint
    of the request that first used it (32 bytes, sha256)."""

    request_id: uuid.UUID
    fingerprint: bytes


def parse_request_id(value: str, errors: ValidationCollector,
                     field: str = "request_id") -> uuid.UUID | None:
    """"" -> None (no request id); otherwise the canonical 8-4-4-4-12 hex form of a UUID
    (as for user ids: one id, one spelling), else INVALID_REQUEST_ID on `field`."""
    if not value:
        return None
    parsed = canonical_uuid(value)
    if parsed is None:
        errors.add(field, Reason.INVALID_REQUEST_ID,
                   f"{echo(value)} is not a UUID of the form {UUID_SHAPE}")
    return parsed


def fingerprint(method: str, fields: Mapping[str, str | list[str] | None]) -> bytes:
    """sha256 of the canonical JSON of the method and the request's fields (keys sorted,
    no whitespace, ASCII): equal for equal requests, whatever their wire form."""
    canonical = json.dumps({"v": FINGERPRINT_VERSION, "method": method, "fields": fields},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).digest()
