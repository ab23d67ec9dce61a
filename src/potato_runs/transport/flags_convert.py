"""Flag <-> proto, and the AIP-134 field mask of UpdateFlag."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import grpc

from potato.runs.v2 import admin_service_pb2
from potato_runs.domain import rules
from potato_runs.domain.errors import Reason, ValidationCollector
from potato_runs.domain.flags import FlagState, percent_to_basis_points
from potato_runs.service.flags import MAX_FLAG_USER_IDS, FlagUpdate, sanitize_actor
from potato_runs.transport.convert import _timestamp

UPDATABLE_PATHS = ("enabled", "rollout_percent", "shadow_percent", "allow_user_ids",
                   "deny_user_ids")
ACTOR_HEADER = "x-potato-actor"
MAX_PEER_CHARS = 100


def flag_to_proto(flag: FlagState) -> admin_service_pb2.Flag:
    return admin_service_pb2.Flag(
        name=flag.name, enabled=flag.enabled, rollout_percent=flag.rollout_percent,
        shadow_percent=flag.shadow_percent,
        allow_user_ids=sorted(str(u) for u in flag.allow_user_ids),
        deny_user_ids=sorted(str(u) for u in flag.deny_user_ids),
        update_time=_timestamp(flag.updated_at), update_reason=flag.update_reason)


def _percent(value: float, field: str, errors: ValidationCollector) -> int | None:
    bp = percent_to_basis_points(value)
    if bp is None:
        errors.add(field, Reason.INVALID_VALUE,
                   f"{field.rsplit('.', 1)[-1]} must be 0 to 100 in steps of 0.01 "
                   f"(got {value!r})")
    return bp


def _ids(values: Sequence[str], field: str, errors: ValidationCollector,
         ) -> frozenset[uuid.UUID] | None:
    if len(values) > MAX_FLAG_USER_IDS:
        errors.add(field, Reason.INVALID_VALUE,
                   f"at most {MAX_FLAG_USER_IDS} user ids (got {len(values)})")
        return None
    before = len(errors.violations)
    out = set()
    for i, value in enumerate(values):
        uid = rules.parse_user_id(value, errors, f"{field}[{i}]")
        if uid is not None:
            out.add(uid)
    return None if len(errors.violations) > before else frozenset(out)


def update_from_proto(request: admin_service_pb2.UpdateFlagRequest,
                      errors: ValidationCollector) -> FlagUpdate:
    """The fields to set. Mask paths among UPDATABLE_PATHS, "*" for all; an empty mask
    means the fields of `flag` that are set (non-default). An unknown path is refused."""
    flag = request.flag
    paths = list(request.update_mask.paths)
    if not paths:
        paths = [p for p in UPDATABLE_PATHS if _is_set(flag, p)]
        if not paths:
            errors.add("update_mask", Reason.MISSING_FIELD,
                       "nothing to update: name fields in update_mask (or set them in flag)")
    elif "*" in paths:
        if len(paths) > 1:
            errors.add("update_mask", Reason.INVALID_VALUE, '"*" must be the only path')
        paths = list(UPDATABLE_PATHS)
    unknown = [p for p in paths if p not in UPDATABLE_PATHS]
    for p in unknown:
        errors.add("update_mask.paths", Reason.INVALID_VALUE,
                   f"{rules.echo(p)} is not an updatable field; use "
                   f"{', '.join(UPDATABLE_PATHS)} or *")
    chosen = set(paths)
    return FlagUpdate(
        enabled=flag.enabled if "enabled" in chosen else None,
        rollout_basis_points=(_percent(flag.rollout_percent, "flag.rollout_percent", errors)
                              if "rollout_percent" in chosen else None),
        shadow_basis_points=(_percent(flag.shadow_percent, "flag.shadow_percent", errors)
                             if "shadow_percent" in chosen else None),
        allow_user_ids=(_ids(flag.allow_user_ids, "flag.allow_user_ids", errors)
                        if "allow_user_ids" in chosen else None),
        deny_user_ids=(_ids(flag.deny_user_ids, "flag.deny_user_ids", errors)
                       if "deny_user_ids" in chosen else None),
    )


def _is_set(flag: admin_service_pb2.Flag, path: str) -> bool:
    value = getattr(flag, path)
    return bool(len(value)) if path.endswith("_ids") else bool(value)


def actor(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who is calling: `x-potato-actor` (sanitized, bounded) or "admin-token", and the peer."""
    named = None
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_HEADER and isinstance(value, str):
            named = value
            break
    peer = sanitize_actor(context.peer() or "")[:MAX_PEER_CHARS]
    return f"{sanitize_actor(named)} ({peer})" if context.peer() else sanitize_actor(named)
