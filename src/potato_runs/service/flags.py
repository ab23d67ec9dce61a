"""Feature flags: the in-memory store every evaluation reads, and the admin use cases.

`FlagStore` keeps every flag of `feature_flags` in memory and answers
`variant(flag, user_id)` through the OpenFeature SDK, with a provider of ours
(`SnapshotProvider`) over that snapshot: an evaluation never costs a database
round trip. The snapshot is refreshed

- when PostgreSQL NOTIFYs `potato_feature_flags` (the table's trigger, on every
  insert or update, whoever made it), received on a dedicated connection that is
  not from the pool and is reconnected with backoff when it drops;
- every `reload_interval` seconds (a fallback, and a liveness check of that
  connection);
- at once after an update made through this process.

`FlagService` holds the operator use cases: get, list, update (AIP-134 field mask)
and rollback, each change audited in `feature_flag_changes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagResolutionDetails
from openfeature.flag_evaluation import Reason as OFReason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.provider.no_op_provider import NoOpProvider

from potato_runs.clock import Clock
from potato_runs.domain.errors import DomainError, ErrorKind, Reason, ValidationCollector
from potato_runs.domain.flags import FlagState, Rule, Variant, resolve
from potato_runs.service.telemetry import Telemetry
from potato_runs.storage.errors import DB_FAILURES, map_db_error
from potato_runs.storage.flags_repo import NOTIFY_CHANNEL, FlagsRepository, load_flags

log = logging.getLogger(__name__)

DEFAULT_VARIANT = Variant.LEGACY.value
"""What an evaluation answers when anything goes wrong: legacy, the safe path."""
LOAD_TIMEOUT = 2.0
"""Seconds one reload may take before the connection is presumed dead."""
CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 5.0
RETRY_AFTER_FAILED_LOAD = 0.5
LISTEN_APPLICATION_NAME = "potato-runs-flags"
"""application_name of the LISTEN connection (find it in pg_stat_activity)."""

MAX_FLAG_USER_IDS = 10_000
"""Cap on allow_user_ids and deny_user_ids, each."""
MAX_REASON_CHARS = 500
MAX_ACTOR_CHARS = 128
ANONYMOUS_ACTOR = "admin-token"

_OF_REASON = {
    Rule.DISABLED: OFReason.DISABLED,
    Rule.DENY: OFReason.TARGETING_MATCH,
    Rule.ALLOW: OFReason.TARGETING_MATCH,
    Rule.ROLLOUT: OFReason.SPLIT,
    Rule.SHADOW: OFReason.SPLIT,
    Rule.DEFAULT: OFReason.DEFAULT,
}
_VARIANTS = {v.value: v for v in Variant}
_domains = itertools.count(1)


# --------------------------------------------------------------------------- evaluation
class SnapshotProvider(AbstractProvider):
    """An OpenFeature provider over a FlagStore's in-memory snapshot. String flags
    only: the value and the variant are the Variant (legacy, shadow or v2), and
    the targeting key is the user id."""

    _METADATA = Metadata(name="potato-runs-flags")

    def __init__(self, store: FlagStore) -> None:
        super().__init__()
        self._store = store

    def get_metadata(self) -> Metadata:
        return self._METADATA

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: EvaluationContext | None = None,
                               ) -> FlagResolutionDetails[str]:
        state = self._store.flags.get(flag_key)
        if state is None:
            return FlagResolutionDetails(value=default_value, reason=OFReason.ERROR,
                                         error_code=ErrorCode.FLAG_NOT_FOUND,
                                         error_message=f"no flag {flag_key!r}")
        if not state.enabled:   # the kill switch needs no user
            return FlagResolutionDetails(value=DEFAULT_VARIANT, variant=DEFAULT_VARIANT,
                                         reason=OFReason.DISABLED)
        key = evaluation_context.targeting_key if evaluation_context is not None else None
        if not key:
            return FlagResolutionDetails(value=default_value, reason=OFReason.ERROR,
                                         error_code=ErrorCode.TARGETING_KEY_MISSING,
                                         error_message="the targeting key (user id) is missing")
        try:
            user_id = uuid.UUID(key)
        except ValueError:
            return FlagResolutionDetails(value=default_value, reason=OFReason.ERROR,
                                         error_code=ErrorCode.INVALID_CONTEXT,
                                         error_message="the targeting key is not a UUID")
        variant, rule = resolve(state, user_id)
        return FlagResolutionDetails(value=variant.value, variant=variant.value,
                                     reason=_OF_REASON[rule])

    def _unsupported(self, default_value: Any) -> FlagResolutionDetails[Any]:
        return FlagResolutionDetails(value=default_value, reason=OFReason.ERROR,
                                     error_code=ErrorCode.TYPE_MISMATCH,
                                     error_message="potato-runs flags are string flags")

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: EvaluationContext | None = None,
                                ) -> FlagResolutionDetails[bool]:
        return self._unsupported(default_value)

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: EvaluationContext | None = None,
                                ) -> FlagResolutionDetails[int]:
        return self._unsupported(default_value)

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: EvaluationContext | None = None,
                              ) -> FlagResolutionDetails[float]:
        return self._unsupported(default_value)

    def resolve_object_details(self, flag_key: str, default_value: Any,
                               evaluation_context: EvaluationContext | None = None,
                               ) -> FlagResolutionDetails[Any]:
        return self._unsupported(default_value)


class FlagStore:
    """Every flag in memory, kept fresh from the table; a FlagEvaluator.

    Each store registers its provider under an OpenFeature domain of its own, so
    several stores (several Apps in one test process) never see each other's flags.
    """

    def __init__(self, dsn: str, pool: asyncpg.Pool, *, reload_interval: float = 5.0,
                 domain: str | None = None, telemetry: Telemetry | None = None) -> None:
        self._dsn = dsn
        self._telemetry = telemetry or Telemetry()
        self._pool = pool
        self._interval = reload_interval
        self.flags: Mapping[str, FlagState] = {}
        """The snapshot: replaced whole on each reload (readers never see half of one)."""
        self.domain = domain or f"potato-runs-{os.getpid()}-{next(_domains)}"
        self._provider = SnapshotProvider(self)
        api.set_provider_and_wait(self._provider, domain=self.domain)
        self._client = api.get_client(domain=self.domain)
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.reloads = 0
        """Completed reloads (for tests and diagnostics)."""
        self.connects = 0
        """LISTEN connections opened so far."""

    # -- evaluation (synchronous, in memory) -----------------------------------
    def variant(self, flag: str, user_id: uuid.UUID) -> Variant:
        details = self._client.get_string_details(
            flag, DEFAULT_VARIANT, EvaluationContext(targeting_key=str(user_id)))
        variant = _VARIANTS.get(details.value, Variant.LEGACY)
        self._telemetry.record_flag(flag, variant.value)   # potato.flags.evaluations
        return variant

    def details(self, flag: str, user_id: uuid.UUID | str) -> FlagEvaluationDetails[str]:
        """The full OpenFeature answer (value, variant, reason, error code)."""
        return self._client.get_string_details(
            flag, DEFAULT_VARIANT, EvaluationContext(targeting_key=str(user_id)))

    def get(self, name: str) -> FlagState | None:
        return self.flags.get(name)

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up."""
        return self._conn is not None and not self._conn.is_closed()

    @property
    def listen_pid(self) -> int | None:
        """The backend pid of the LISTEN connection, when it is up."""
        conn = self._conn
        return conn.get_server_pid() if conn is not None and not conn.is_closed() else None

    # -- refresh ---------------------------------------------------------------
    async def reload(self) -> None:
        """Reads every flag (on the LISTEN connection when it is up, so a busy pool
        cannot delay a change; else on the pool). Reloads run one at a time, so a
        snapshot never replaces a newer one. Raises a DomainError when the database
        cannot be read."""
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.is_closed():
                try:
                    self.flags = await load_flags(conn, LOAD_TIMEOUT)
                    self.reloads += 1
                    return
                except DB_FAILURES as exc:
                    # A connection that does not answer is presumed dead: drop it, the
                    # listener reconnects; this reload goes on over the pool.
                    log.warning("flag reload on the LISTEN connection failed (%s); "
                                "reconnecting", type(exc).__name__)
                    conn.terminate()
            try:
                self.flags = await load_flags(self._pool, LOAD_TIMEOUT)
            except DB_FAILURES as exc:
                raise map_db_error(exc) from exc
            self.reloads += 1

    async def _put(self, state: FlagState) -> None:
        async with self._lock:
            self.flags = {**self.flags, state.name: state}

    async def refresh_after_change(self, state: FlagState) -> None:
        """After a change made here: reload now (do not wait for NOTIFY); when the
        database cannot be read, take the committed state we were given."""
        try:
            await self.reload()
        except DomainError:
            await self._put(state)

    async def start(self) -> None:
        """LISTEN first, then the first load (so no change falls between them), then
        the background tasks. When the database cannot be read the store starts
        empty (everyone legacy) and keeps trying."""
        try:
            self._conn = await self._connect()
        except DB_FAILURES as exc:
            log.warning("feature flags: cannot LISTEN yet (%s); retrying in the background",
                        type(exc).__name__)
        try:
            await self.reload()
        except DomainError as exc:
            log.warning("feature flags not loaded (%s): every user is served legacy until "
                        "they are", exc)
            self._dirty.set()
        self._tasks = [asyncio.create_task(self._listen_loop(), name="flags-listen"),
                       asyncio.create_task(self._reload_loop(), name="flags-reload")]

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
        api.set_provider_and_wait(NoOpProvider(), domain=self.domain)   # answers legacy

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT, server_settings={
            "application_name": LISTEN_APPLICATION_NAME})
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self.connects += 1
        return conn

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._dirty.set()

    async def _listen_loop(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            conn = self._conn
            if conn is None or conn.is_closed():
                try:
                    conn = await self._connect()
                except DB_FAILURES as exc:
                    log.warning("feature flags: LISTEN connection failed (%s); retry in %.2fs",
                                type(exc).__name__, backoff)
                    await self._pause(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                self._conn = conn
                self._dirty.set()   # changes may have been missed while disconnected
            backoff = BACKOFF_FIRST
            lost = asyncio.Event()

            def on_lost(_c: Any, lost: asyncio.Event = lost) -> None:
                lost.set()

            conn.add_termination_listener(on_lost)
            if conn.is_closed():   # closed before the listener was added
                lost.set()
            await lost.wait()
            if self._conn is conn:
                self._conn = None
            log.warning("feature flags: the LISTEN connection was lost; reconnecting")

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _reload_loop(self) -> None:
        wait = self._interval
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), wait)
            self._dirty.clear()
            try:
                await self.reload()
                wait = self._interval
            except DomainError as exc:
                log.warning("feature flags: reload failed (%s); retrying", exc)
                wait = min(self._interval, RETRY_AFTER_FAILED_LOAD)


# --------------------------------------------------------------------------- use cases
@dataclass(frozen=True)
class FlagUpdate:
    """The fields an update sets (None: not in the mask), already parsed."""

    enabled: bool | None = None
    rollout_basis_points: int | None = None
    shadow_basis_points: int | None = None
    allow_user_ids: frozenset[uuid.UUID] | None = None
    deny_user_ids: frozenset[uuid.UUID] | None = None

    def apply(self, flag: FlagState) -> FlagState:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(flag, **changes)


def check_reason(reason: str, errors: ValidationCollector, field: str = "reason") -> str:
    """Required, at most MAX_REASON_CHARS, no control characters; returned stripped."""
    text = reason.strip()
    if not text:
        errors.add(field, Reason.MISSING_FIELD, "reason is required: say why (kept in the audit)")
    elif len(text) > MAX_REASON_CHARS:
        errors.add(field, Reason.INVALID_VALUE,
                   f"reason must be at most {MAX_REASON_CHARS} characters")
    elif any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        errors.add(field, Reason.INVALID_VALUE, "reason must not contain control characters")
    return text


def check_name(name: str, errors: ValidationCollector, field: str = "name") -> str:
    if not name:
        errors.add(field, Reason.MISSING_FIELD, "the flag name is required, e.g. ff.potato.runs_v2")
    return name


def sanitize_actor(value: str | None) -> str:
    """Who made a change, as a caller named itself: printable, bounded; else the token."""
    if not value:
        return ANONYMOUS_ACTOR
    text = "".join(c if c.isprintable() else "?" for c in value.strip())[:MAX_ACTOR_CHARS]
    return text or ANONYMOUS_ACTOR


def check_lists(flag: FlagState, errors: ValidationCollector, prefix: str = "flag.") -> None:
    """A user in both lists is refused (deny would silently win)."""
    both = flag.allow_user_ids & flag.deny_user_ids
    if both:
        shown = ", ".join(sorted(str(u) for u in both)[:3]) + (", ..." if len(both) > 3 else "")
        errors.add(f"{prefix}allow_user_ids", Reason.INVALID_VALUE,
                   f"{len(both)} user(s) are in both allow_user_ids and deny_user_ids: {shown}")


def not_found(name: str) -> DomainError:
    from potato_runs.domain.rules import echo

    return DomainError(ErrorKind.NOT_FOUND, Reason.FLAG_NOT_FOUND,
                       f"no flag named {echo(name)}; `potato-runs flags list` shows them",
                       {"name": name[:100]})


class FlagService:
    def __init__(self, repo: FlagsRepository, store: FlagStore, clock: Clock) -> None:
        self._repo = repo
        self._store = store
        self._clock = clock

    async def get(self, name: str, timeout: float | None = None) -> FlagState:
        errors = ValidationCollector()
        check_name(name, errors)
        errors.raise_if_any()
        flag = await self._repo.get(name, timeout)
        if flag is None:
            raise not_found(name)
        return flag

    async def list(self, timeout: float | None = None) -> list[FlagState]:
        return list((await self._repo.load_all(timeout)).values())

    async def update(self, name: str, update: FlagUpdate, *, actor: str, reason: str,
                     timeout: float | None = None,
                     errors: ValidationCollector | None = None) -> FlagState:
        """`errors` may hold the violations found while parsing `update`: they are
        reported together with these."""
        errors = errors or ValidationCollector()
        check_name(name, errors, "flag.name")
        reason = check_reason(reason, errors)
        errors.raise_if_any()

        def change(before: FlagState) -> FlagState:
            after = update.apply(before)
            merged = ValidationCollector()
            check_lists(after, merged)
            merged.raise_if_any()
            return after

        return await self._change(name, change, actor, reason, timeout)

    async def rollback(self, name: str, *, actor: str, reason: str,
                       timeout: float | None = None) -> FlagState:
        """Disables the flag (everyone legacy); the percentages and lists are kept."""
        errors = ValidationCollector()
        check_name(name, errors)
        reason = check_reason(reason, errors)
        errors.raise_if_any()
        return await self._change(name, lambda f: dataclasses.replace(f, enabled=False),
                                  actor, reason, timeout)

    async def _change(self, name: str, change: Any, actor: str, reason: str,
                      timeout: float | None) -> FlagState:
        now: dt.datetime = self._clock.now()
        after = await self._repo.update(name, change, actor=actor, reason=reason, now=now,
                                        timeout=timeout)
        if after is None:
            raise not_found(name)
        await self._store.refresh_after_change(after)
        return after
