"""The blue/green full rebuild as a use case (storage/blue_green.py has the protocol).

It needs a connection that acts as the schema's owner, because it runs DDL: the server's
migrate connection (app.Migrator: the embedded cluster's superuser as potato_owner, or
--migrate-dsn), or the operator's --dsn offline. The serving role (potato_app) never gets
DDL rights for it: without an owner connection the call is FAILED_PRECONDITION.
"""

from __future__ import annotations

import logging
import os
import socket

from potato_runs.clock import Clock
from potato_runs.domain.errors import DomainError, ErrorKind, Reason
from potato_runs.storage.blue_green import (
    OWNER_HINT,
    BlueGreenRebuild,
    BlueGreenReport,
    BlueGreenSettings,
    OwnerConnect,
    Progress,
)

log = logging.getLogger(__name__)


def no_owner_connection() -> DomainError:
    return DomainError(ErrorKind.FAILED_PRECONDITION, Reason.OWNER_CONNECTION_REQUIRED,
                       "this server has no owner connection: " + OWNER_HINT)


class BlueGreenService:
    def __init__(self, owner: OwnerConnect | None, clock: Clock,
                 settings: BlueGreenSettings | None = None) -> None:
        self._owner = owner
        self._clock = clock
        self._settings = settings or BlueGreenSettings()

    async def rebuild_all(self, *, validate_only: bool = False, request_id: str | None = None,
                          progress: Progress | None = None) -> BlueGreenReport:
        if self._owner is None:
            raise no_owner_connection()
        rebuild = BlueGreenRebuild(self._owner, now=self._clock.now(),
                                   replica=f"{socket.gethostname()}:{os.getpid()}",
                                   settings=self._settings, progress=progress,
                                   request_id=request_id)
        report = await rebuild.run(validate_only=validate_only)
        if not validate_only:
            log.info("blue/green rebuild %d: %d runs from %d check-ins, %d users changed, "
                     "writes held at most %.3f s, phases %s", report.rebuild_id, report.runs,
                     report.facts, report.users_changed, report.max_write_block_seconds,
                     report.phase_seconds)
        return report
