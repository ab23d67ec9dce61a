"""transport/status.py: every domain error kind has its gRPC status (an unmapped kind
would raise inside the error mapping and reach the client as UNKNOWN)."""

from __future__ import annotations

import grpc

from potato_runs.domain.errors import ErrorKind
from potato_runs.transport import status


def test_every_error_kind_has_a_status_code() -> None:
    assert set(status._CODES) == set(ErrorKind)
    assert all(code is not grpc.StatusCode.UNKNOWN for code, _ in status._CODES.values())
