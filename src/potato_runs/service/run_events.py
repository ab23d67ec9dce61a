"""The run event stream (RunEventsService.WatchRunEvents) and the retention of run_events.

How a stream works (docs/observability.md, "Run event stream"):

- `EventHub` is one per server: one LISTEN connection (storage EventTail), one reader
  for every watcher. It keeps `settled`: every event id at or below it is settled, i.e.
  either visible in run_events or never going to be (rolled back, purged). On a
  notification (or every `poll` seconds, in case one was lost) it reads the events after
  `settled`, in id order, and hands each to the watchers whose filter matches, then
  advances `settled`. Event ids are drawn from a sequence when written but become
  visible when their transaction commits, in any order: seeing 102 but not 101 may mean
  101 is still being written. The writer of 101 drew it before 102 was drawn, hence
  before the read that saw 102, and it had its transaction id before it drew 101
  (migration 0009's trigger), holding the lock on that id until it ends. So after such a
  read the hub lists every transaction in progress (pg_locks), waits until they have all
  ended, reads again, hands out what appeared up to 102 and only then moves past 101:
  live delivery is in id order and never skips an event that later commits. (Not the
  snapshot's xip list: it leaves out transactions whose id is above the latest completed
  one, which the first version relied on and which lost events under load.)
- A new stream first replays from the table: pages of its events after its cursor, up
  to the hub's `settled`, on the serving pool; once a page comes back short and
  `settled` has not moved meanwhile, it registers with the hub at exactly that id (no
  await between the check and the registration: the hub runs on the same event loop), so
  the hub hands it precisely the events after it: no gap, no duplicate at the switch.
- Writers never wait for watchers: the hub reads on its own connection, and hands events
  to a watcher's bounded queue without waiting. A watcher whose queue is full (its
  client reads slower than events arrive) is dropped by the hub and its stream ends with
  RESOURCE_EXHAUSTED (WATCHER_TOO_SLOW); the client resumes from the last id it got.
  Memory per watcher is bounded by its queue and gRPC's flow-control window.

`RetentionPurge` (service/retention.py, wired in app.py) deletes events older than the
retention, batch by batch, and records
the largest id deleted (`run_events_retention.purged_through`): a cursor below it has
lost events and gets FAILED_PRECONDITION (CURSOR_EXPIRED); cursor 0 means "from the
oldest kept".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from potato_runs.deadline import Deadline
from potato_runs.domain.errors import DomainError, ErrorKind, Reason
from potato_runs.domain.run_events import RunEvent
from potato_runs.storage.errors import DB_FAILURES
from potato_runs.storage.run_events_repo import RunEventsRepository

log = logging.getLogger(__name__)

TAIL_PAGE = 1000
"""Events the hub reads per query."""
REPLAY_PAGE = 500
"""Events a stream reads per replay query."""
REPLAY_TIMEOUT = 10.0
"""Seconds one replay page may take."""
TAIL_TIMEOUT = 10.0
"""Seconds one read of the hub may take before its connection is presumed dead."""
START_TIMEOUT = 10.0
"""Seconds a stream waits for the hub's first settled id before UNAVAILABLE."""
POLL = 1.0
"""Seconds between the hub's reads when no notification came (a lost one, a reconnect)."""
COALESCE = 0.005
"""Seconds between two reads of the hub at least: under a write load, notifications a few
ms apart share one read (at most 200 reads/s), for at most that much more lag."""
LINGER = 60.0
"""Seconds the hub keeps listening with no stream open, before it closes its connection
(a server nobody watches pays for no reads)."""
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 5.0
WAIT_WARNING = 10.0
"""Seconds a gap may stay open before the hub logs which transactions hold it."""


class Tail(Protocol):
    """What the hub needs of its connection (storage.run_events_repo.EventTail)."""

    @property
    def closed(self) -> bool: ...

    @property
    def reads_settled(self) -> bool:
        """Whether after() returns only settled events (Citus: CitusEventTail)."""

    def terminate(self) -> None: ...

    async def head(self, timeout: float) -> int: ...

    async def after(self, settled: int, limit: int, timeout: float) -> list[RunEvent]: ...

    async def in_progress(self, timeout: float) -> list[int]: ...

    async def running(self, xids: Sequence[int], timeout: float) -> int: ...


TailFactory = Callable[[Callable[[], None], Callable[[], None]], Awaitable[Tail]]
"""connect(on_notify, on_lost) -> a Tail listening on potato_run_events."""


class Watcher:
    """One live stream as the hub sees it: a filter and a bounded queue. `ended` is set
    (with `error`) when the stream must stop: its queue overflowed, or the server is
    stopping."""

    def __init__(self, user_id: uuid.UUID | None, limit: int) -> None:
        self.user_id = user_id
        self.limit = limit
        self.queue: collections.deque[RunEvent] = collections.deque()
        self.wake = asyncio.Event()
        self.ended = asyncio.Event()
        self.error: DomainError | None = None
        self.skip_through = 0
        """Events up to this id are not this watcher's (it reads them from the table)."""
        self.live = False
        """Whether its stream hands out the queue (else it still replays from the table)."""
        self.dropped = False
        """The queue overflowed while the stream was still replaying: it replays on."""

    def offer(self, event: RunEvent) -> bool:
        """Queues the event; False (nothing queued) when the queue is full."""
        if event.event_id <= self.skip_through:
            return True
        if len(self.queue) >= self.limit:
            return False
        self.queue.append(event)
        self.wake.set()
        return True

    def overflowed(self) -> None:
        """The hub dropped this watcher for a full queue. A live stream ends
        (WATCHER_TOO_SLOW); one still replaying (its replay fell behind the live events,
        not its client) discards the queue and goes on replaying from the table."""
        self.queue.clear()
        if self.live:
            self.end(DomainError(
                ErrorKind.RESOURCE_EXHAUSTED, Reason.WATCHER_TOO_SLOW,
                f"the stream fell {self.limit} events behind (the client reads slower "
                f"than events arrive); resume from the last event_id received",
                {"queue_size": str(self.limit)}))
        else:
            self.dropped = True

    def end(self, error: DomainError) -> None:
        if self.error is None:
            self.error = error
        self.ended.set()
        self.wake.set()


class EventHub:
    """The server's one tail of run_events, fanned out to its watchers (module doc)."""

    def __init__(self, connect: TailFactory, *, poll: float = POLL, page: int = TAIL_PAGE,
                 coalesce: float = COALESCE, linger: float = LINGER) -> None:
        self._connect = connect
        self._poll = poll
        self._page = page
        self._coalesce = coalesce
        self._linger = linger
        self._idle_since = time.monotonic()
        self.streams = 0
        """Streams open (replaying or live)."""
        self._watchers: list[Watcher] = []
        self._dirty = asyncio.Event()
        self._ready = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._tail: Tail | None = None
        self.settled = 0
        """Every event id <= settled is visible or never will be; handed out up to it."""
        self.connects = 0
        self.gap_waits = 0
        self.too_slow = 0
        """Live watchers dropped for a full queue."""
        """Times the hub waited for transactions in progress to settle a gap."""

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def ensure_started(self, timeout: float = START_TIMEOUT) -> None:
        """Starts the hub on first use (LISTEN, then the first settled id) and waits
        until it is ready; UNAVAILABLE when it cannot be within `timeout`."""
        if self._stopping:
            raise _draining()
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.create_task(self._run(), name="run-events-hub")
        if self._ready.is_set():
            return
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise DomainError(ErrorKind.UNAVAILABLE, Reason.DATABASE_UNAVAILABLE,
                              "the run event stream cannot reach the database; retry "
                              "later") from None

    def register(self, watcher: Watcher, position: int) -> None:
        """Adds a watcher that has (or will have from the table) every event up to
        max(position, settled): the hub hands it the events after that. Synchronous, so
        the caller reads `settled` and registers with no event handed out in between."""
        watcher.skip_through = max(position, self.settled)
        if self._stopping:
            watcher.end(_draining())
            return
        self._watchers.append(watcher)

    def unregister(self, watcher: Watcher) -> None:
        with contextlib.suppress(ValueError):
            self._watchers.remove(watcher)

    async def stop(self) -> None:
        """Ends every stream with UNAVAILABLE (SERVER_DRAINING) and closes the tail."""
        self._stopping = True
        for watcher in self._watchers:
            watcher.end(_draining())
        self._watchers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._tail is not None:
            self._tail.terminate()
            self._tail = None

    # -- the tail --------------------------------------------------------------------
    def _on_notify(self) -> None:
        self._dirty.set()

    def _on_lost(self) -> None:
        self._dirty.set()   # the loop notices the closed tail and reconnects

    def attach(self) -> None:
        """A stream opens (before its replay): the hub keeps running while any is open."""
        self.streams += 1

    def detach(self) -> None:
        self.streams -= 1
        if self.streams == 0:
            self._idle_since = time.monotonic()

    async def _run(self) -> None:
        """Until stopped, or idle (no stream open) for `linger` seconds: then it closes
        its connection, and the next stream starts it again from the table's head."""
        backoff = BACKOFF_FIRST
        last_read = 0.0
        try:
            while not self._stopping:
                if self.streams == 0 and time.monotonic() - self._idle_since > self._linger:
                    log.info("run events: no stream for %.0fs; the tail stops", self._linger)
                    return
                try:
                    tail = self._tail
                    if tail is None or tail.closed:
                        if tail is not None:
                            log.warning("run events: the LISTEN connection was lost; "
                                        "reconnecting")
                        tail = self._tail = await self._connect(self._on_notify,
                                                                self._on_lost)
                        self.connects += 1
                        self._dirty.set()   # events may have committed while disconnected
                    if not self._ready.is_set():
                        head = await tail.head(TAIL_TIMEOUT)
                        await self._wait_done(tail, await tail.in_progress(TAIL_TIMEOUT))
                        self.settled = head
                        self._ready.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._dirty.wait(), self._poll)
                    # Notifications closer than `coalesce` share one read.
                    pause = last_read + self._coalesce - time.monotonic()
                    if pause > 0:
                        await asyncio.sleep(pause)
                    self._dirty.clear()
                    last_read = time.monotonic()
                    await self._advance(tail)
                    backoff = BACKOFF_FIRST
                except DB_FAILURES as exc:
                    log.warning("run events: the tail failed (%s); retry in %.2fs",
                                type(exc).__name__, backoff)
                    if self._tail is not None:
                        self._tail.terminate()
                        self._tail = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                except Exception:   # a bug: log it, start over on a new connection
                    log.exception("run events: the tail failed; retry in %.2fs", backoff)
                    if self._tail is not None:
                        self._tail.terminate()
                        self._tail = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            self._ready.clear()
            if self._tail is not None:
                self._tail.terminate()
                self._tail = None

    async def _advance(self, tail: Tail) -> None:
        """Hands out every event after `settled` that is settled now (module doc)."""
        while True:
            events = await tail.after(self.settled, self._page, TAIL_TIMEOUT)
            if tail.reads_settled:
                for event in events:
                    self._hand_out(event)
                if len(events) < self._page:
                    return
                continue
            i = 0
            while i < len(events) and events[i].event_id == self.settled + 1:
                self._hand_out(events[i])   # contiguous: nothing can come before it
                i += 1
            rest = events[i:]
            if rest:
                # A gap: wait for the transactions in progress now (a superset of those
                # that could still fill it), then hand out everything up to rest[-1].
                self.gap_waits += 1
                await self._wait_done(tail, await tail.in_progress(TAIL_TIMEOUT))
                await self._hand_out_through(tail, rest[-1].event_id)
            if len(events) < self._page:
                return

    async def _hand_out_through(self, tail: Tail, bound: int) -> None:
        """Hands out every visible event in (settled, bound] and settles through bound."""
        while True:
            events = await tail.after(self.settled, self._page, TAIL_TIMEOUT)
            within = [e for e in events if e.event_id <= bound]
            for event in within:
                self._hand_out(event)
            if len(within) < len(events) or len(events) < self._page:
                break
        self.settled = max(self.settled, bound)

    async def _wait_done(self, tail: Tail, xids: Sequence[int]) -> None:
        """Returns once none of `xids` is in progress."""
        if not xids:
            return
        started = time.monotonic()
        delay, warned = 0.001, False
        while await tail.running(xids, TAIL_TIMEOUT):
            if not warned and time.monotonic() - started > WAIT_WARNING:
                warned = True
                log.warning("run events: live delivery waits for a transaction that has "
                            "been open for over %.0fs (one of xids %s): events commit out "
                            "of order and the stream never skips one", WAIT_WARNING,
                            ", ".join(map(str, xids[:10])))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _hand_out(self, event: RunEvent) -> None:
        self.settled = event.event_id
        for watcher in tuple(self._watchers):
            if watcher.user_id is not None and watcher.user_id != event.user_id:
                continue
            if not watcher.offer(event):
                self.unregister(watcher)
                self.too_slow += watcher.live
                watcher.overflowed()


def _draining() -> DomainError:
    return DomainError(ErrorKind.UNAVAILABLE, Reason.SERVER_DRAINING,
                       "this server is shutting down; resume from the last event_id "
                       "received, on another replica")


def _expired(cursor: int, purged: int) -> DomainError:
    return DomainError(
        ErrorKind.FAILED_PRECONDITION, Reason.CURSOR_EXPIRED,
        f"events after {cursor} were deleted by the retention (through event {purged}); "
        f"resume with after_event_id {purged} (or 0: from the oldest kept) and rebuild "
        f"what the missing events fed from the current runs",
        {"oldest_event_id": str(purged), "after_event_id": str(cursor)})


class EventStream:
    """One client's stream: the replay from the table, then the hub's live events.
    `next()` returns events in id order and raises the DomainError that ends the stream;
    `ended` is set when the stream must end at once (the servicer races its writes
    against it, so a client that stopped reading is cut off even mid-write)."""

    def __init__(self, repo: RunEventsRepository, hub: EventHub, user_id: uuid.UUID | None,
                 cursor: int, queue_size: int, page: int) -> None:
        self._repo = repo
        self._hub = hub
        self._user_id = user_id
        self._cursor = cursor
        self._page = page
        self._buffer: collections.deque[RunEvent] = collections.deque()
        self._through: int | None = None
        """Set at registration: the replay reads up to it, the hub queues what follows."""
        self.watcher = Watcher(user_id, queue_size)
        self._closed = False

    @property
    def ended(self) -> asyncio.Event:
        return self.watcher.ended

    @property
    def live(self) -> bool:
        """Whether the replay is over and the stream follows the hub."""
        return self._live

    _live = False

    async def next(self) -> RunEvent:
        while True:
            if self.watcher.error is not None:
                raise self.watcher.error
            if self._buffer:
                return self._buffer.popleft()
            if not self._live:
                await self._replay_page()
                continue
            if self.watcher.queue:
                return self.watcher.queue.popleft()
            self.watcher.wake.clear()
            await self.watcher.wake.wait()

    async def _replay_page(self) -> None:
        """One page from the table. Once a page comes back short the stream registers
        with the hub at the hub's settled id S (synchronously, right after reading it):
        the hub queues every event after S, and the replay goes on through S, so the
        stream hands out the table's events up to S, then the queue's: no gap, no
        duplicate."""
        bound = self._hub.settled if self._through is None else self._through
        events, purged = await self._repo.page(self._cursor, bound, self._user_id,
                                               self._page, Deadline.after(REPLAY_TIMEOUT))
        if purged > self._cursor:
            raise _expired(self._cursor, purged)
        self._buffer.extend(events)
        if len(events) == self._page:
            self._cursor = events[-1].event_id
            return
        self._cursor = max(self._cursor, bound)   # every event up to bound is read
        if self._through is None:
            settled = self._hub.settled
            self._hub.register(self.watcher, self._cursor)   # no await since `settled`
            if settled > self._cursor:   # the hub moved on during the page: read up to it
                self._through = settled
                return
        elif self.watcher.dropped:   # live events overflowed the queue meanwhile
            self.watcher.dropped = False
            self._through = None     # replay on from `bound`, then register again
            return
        self._live = self.watcher.live = True

    def close(self) -> None:
        """Leaves the hub; the stream's attachment (RunEventsService.open) ends."""
        if not self._closed:
            self._closed = True
            self._hub.unregister(self.watcher)
            self._hub.detach()


class RunEventsService:
    """Opens streams (the cursor checked against the retention first)."""

    def __init__(self, repo: RunEventsRepository, hub: EventHub, *, queue_size: int,
                 page: int = REPLAY_PAGE) -> None:
        self._repo = repo
        self._hub = hub
        self._queue_size = queue_size
        self._page = page

    @property
    def hub(self) -> EventHub:
        return self._hub

    async def open(self, user_id: uuid.UUID | None, after: int) -> EventStream:
        """A stream of the events after `after` (0: the oldest kept), of one user or all.
        FAILED_PRECONDITION (CURSOR_EXPIRED) when the retention deleted some of them."""
        self._hub.attach()   # first: the hub cannot stop for idleness from here on
        try:
            await self._hub.ensure_started()
            purged = await self._repo.purged_through(Deadline.after(REPLAY_TIMEOUT))
            if after == 0:
                after = purged
            elif after < purged:
                raise _expired(after, purged)
        except BaseException:
            self._hub.detach()
            raise
        return EventStream(self._repo, self._hub, user_id, after, self._queue_size,
                           self._page)

    async def stop(self) -> None:
        await self._hub.stop()

